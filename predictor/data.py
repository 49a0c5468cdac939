"""Oracle data as the predictors see it: one :class:`OracleSet` per oracle table, query batches and grouped splits.

An :class:`OracleSet` wraps the table that :func:`oracle_data.load_oracle` returns (or one passed in directly:
a ``pyarrow.Table`` or a pandas ``DataFrame`` in the same schema) with its scales, its manifest and the folder
its images are relative to. It hands out the per-scale matrices (``correct``, ``scores``, ``tokens``,
``confidences``, shape ``(samples, scales)``), the oracle labels and the predictor inputs as :class:`Queries`.

Image features are computed once per distinct image file and cached on the set (subsets share the cache), so
tuning trials do not decode the images again.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image
from tqdm.auto import tqdm

from m3.images import not_a_file_error, open_rgb

from .features import IMAGE_FEATURE_NAMES, image_features

ORACLE_COLUMNS = {"paper": "oracle_scale", "monotone": "oracle_monotone_scale"}
ACCURACY_KINDS = ("correct", "score")  # what a routing's accuracy averages: correct_{s} or score_{s}
_PER_SCALE = re.compile(r"^correct_(\d+)$")


@dataclass
class Queries:
    """A batch of routing queries: what a predictor sees before any answer is generated.

    ``embeddings`` is the model's scale-1 visual token per query (``(n, D)``; needed by predictors that use
    it); image features come from ``image_features`` (``(n, k)``, precomputed) or are computed from
    ``images`` (PIL images or file paths). Probe predictors also read the model's answer at their probe scale:
    ``probe_confidence`` (``(n,)``, its mean token log-probability) and ``probe_hidden`` (``(n, D)``, the LLM's last
    hidden state at the prompt's last position; see :func:`m3.inference.generate_at_scale`).
    """

    questions: list[str]
    embeddings: np.ndarray | None = None
    images: Sequence | None = None
    image_features: np.ndarray | None = None
    probe_confidence: np.ndarray | None = None
    probe_hidden: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.questions = [str(q) for q in self.questions]
        n = len(self.questions)
        if self.embeddings is not None:
            self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
            if self.embeddings.ndim != 2 or len(self.embeddings) != n:
                raise ValueError(f"embeddings must have shape ({n}, D), got {self.embeddings.shape}")
        if self.images is not None and len(self.images) != n:
            raise ValueError(f"{len(self.images)} images for {n} questions")
        if self.probe_confidence is not None:
            self.probe_confidence = np.asarray(self.probe_confidence, dtype=np.float64).reshape(-1)
            if len(self.probe_confidence) != n:
                raise ValueError(f"probe_confidence must have shape ({n},), got {self.probe_confidence.shape}")
        if self.probe_hidden is not None:
            self.probe_hidden = np.asarray(self.probe_hidden, dtype=np.float32)
            if self.probe_hidden.ndim != 2 or len(self.probe_hidden) != n:
                raise ValueError(f"probe_hidden must have shape ({n}, D), got {self.probe_hidden.shape}")
        if self.image_features is not None:
            self.image_features = np.asarray(self.image_features, dtype=np.float64)
            if self.image_features.shape != (n, len(IMAGE_FEATURE_NAMES)):
                raise ValueError(
                    f"image_features must have shape ({n}, {len(IMAGE_FEATURE_NAMES)}), got {self.image_features.shape}"
                )

    def __len__(self) -> int:
        return len(self.questions)

    def image_feature_matrix(self) -> np.ndarray:
        """``(n, k)`` image features: the precomputed ones, else computed from ``images``."""
        if self.image_features is not None:
            return self.image_features
        if self.images is None:
            raise ValueError("these queries have neither images nor image_features, but the predictor needs them")
        return np.stack([image_features(_open_rgb(image)) for image in self.images]) if len(self) else _no_images()


def _no_images() -> np.ndarray:
    return np.zeros((0, len(IMAGE_FEATURE_NAMES)))


def _open_rgb(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    path = Path(image)
    if not path.is_file():
        raise not_a_file_error(path, f"image file {path}")
    return open_rgb(path)


def scales_from_columns(names: Sequence[str]) -> list[int]:
    """The scales of an oracle table, read from its ``correct_{s}`` columns."""
    return sorted(int(m.group(1)) for name in names if (m := _PER_SCALE.match(name)))


@dataclass
class OracleSet:
    """An oracle table with its scales, manifest (None when the table came without one) and image folder."""

    table: pa.Table
    scales: list[int]
    manifest: dict | None = None
    image_root: Path | None = None
    source: str = "table"
    _image_cache: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return self.table.num_rows

    # ---- per-sample columns
    def column(self, name: str) -> np.ndarray:
        if name not in self.table.column_names:
            raise KeyError(f"the oracle table from {self.source} has no column {name!r}")
        return self.table.column(name).to_numpy(zero_copy_only=False)

    def _matrix(self, prefix: str, dtype) -> np.ndarray:
        if not len(self):
            return np.zeros((0, len(self.scales)), dtype=dtype)
        return np.stack([self.column(f"{prefix}_{s}").astype(dtype) for s in self.scales], axis=1)

    def correct(self) -> np.ndarray:
        """``(n, scales)`` bool: the answer at each scale is correct (score >= 0.5)."""
        return self._matrix("correct", bool)

    def scores(self) -> np.ndarray:
        """``(n, scales)`` float: the metric score at each scale."""
        return self._matrix("score", np.float64)

    def tokens(self) -> np.ndarray:
        """``(n, scales)`` float: the visual tokens the LLM saw at each scale."""
        return self._matrix("tokens", np.float64)

    def confidences(self) -> np.ndarray:
        """``(n, scales)`` float: mean log-probability of the answer at each scale."""
        return self._matrix("confidence", np.float64)

    def oracle_labels(self, kind: str = "paper") -> np.ndarray:
        """``(n,)`` the oracle scale: ``"paper"`` (fewest correct tokens) or ``"monotone"``."""
        if kind not in ORACLE_COLUMNS:
            raise ValueError(f"unknown oracle {kind!r}; expected one of {sorted(ORACLE_COLUMNS)}")
        return self.column(ORACLE_COLUMNS[kind]).astype(np.int64)

    @property
    def groups(self) -> np.ndarray:
        """The image id of every sample: the unit of a split."""
        return self.column("image_id").astype(object)

    @property
    def families(self) -> np.ndarray:
        """Question family per sample; ``"(none)"`` where the data names none."""
        if "family" not in self.table.column_names:
            return np.full(len(self), "(none)", dtype=object)
        return np.array(["(none)" if f is None else f for f in self.table.column("family").to_pylist()], dtype=object)

    @property
    def embedding_dim(self) -> int | None:
        if self.manifest is not None and self.manifest.get("model", {}).get("embedding_dim") is not None:
            return int(self.manifest["model"]["embedding_dim"])
        if "embedding" not in self.table.column_names or not len(self):
            return None
        return len(self.table.column("embedding")[0].as_py())

    def embeddings(self) -> np.ndarray:
        """``(n, D)`` float32: the scale-1 visual token per sample."""
        return self._vectors("embedding", self.embedding_dim or 0)

    def hidden(self, scale: int) -> np.ndarray:
        """``(n, D)`` float32: the LLM's last hidden state when answering at ``scale`` (the ``hidden_{scale}``
        column, recorded for the probe scales of the build)."""
        name = f"hidden_{int(scale)}"
        if name not in self.table.column_names:
            recorded = [c.removeprefix("hidden_") for c in self.table.column_names if c.startswith("hidden_")]
            raise ValueError(
                f"the oracle from {self.source} records no hidden state at scale {scale} (it has it at "
                f"{', '.join(recorded) or 'no scale'}); rebuild it with --hidden-scales including {scale}"
            )
        dim = len(self.table.column(name)[0].as_py()) if len(self) else 0
        return self._vectors(name, dim)

    def _vectors(self, name: str, dim: int) -> np.ndarray:
        values = self.table.column(name).combine_chunks()
        flat = values.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        if flat.size != len(self) * dim:
            raise ValueError(f"the oracle table from {self.source} has {name} vectors of different lengths")
        return flat.reshape(len(self), dim)

    def image_paths(self) -> list[Path]:
        """Each sample's image file, resolved against the image root."""
        paths = []
        for image in self.column("image"):
            path = Path(image)
            if not path.is_absolute():
                if self.image_root is None:
                    raise ValueError(
                        f"the oracle table from {self.source} has relative image paths ({image!r}) and no image root; "
                        "pass image_root=..."
                    )
                path = self.image_root / path
            paths.append(path)
        return paths

    def image_features(self, progress: bool = True) -> np.ndarray:
        """``(n, k)`` cheap image features (see :func:`predictor.features.image_features`), cached per file."""
        from oracle_data import dataset_image_reader

        read = dataset_image_reader(self.manifest)  # oracles built from a Hugging Face dataset read its rows
        paths = self.image_paths() if read is None else self.column("image").tolist()
        todo = [p for p in dict.fromkeys(paths) if p not in self._image_cache]
        for path in tqdm(todo, desc="image features", unit="image", disable=not progress or len(todo) < 200):
            self._image_cache[path] = image_features(_open_rgb(path) if read is None else read(path))
        return np.stack([self._image_cache[p] for p in paths]) if paths else _no_images()

    def queries(
        self,
        embeddings: bool = True,
        images: bool = True,
        progress: bool = True,
        probe_scale: int | None = None,
        probe_hidden: bool = False,
    ) -> Queries:
        """The predictor inputs of every sample (only the blocks asked for are read or computed); with
        ``probe_scale``, the answer's confidence there (and with ``probe_hidden`` its hidden state), as a probe
        predictor sees them."""
        if probe_scale is not None and int(probe_scale) not in self.scales:
            raise ValueError(f"probe scale {probe_scale} is not among the oracle's scales {self.scales}")
        return Queries(
            questions=self.column("question").tolist(),
            embeddings=self.embeddings() if embeddings else None,
            image_features=self.image_features(progress) if images else None,
            probe_confidence=None if probe_scale is None else self.column(f"confidence_{int(probe_scale)}"),
            probe_hidden=self.hidden(probe_scale) if probe_scale is not None and probe_hidden else None,
        )

    def take(self, indices) -> OracleSet:
        """The samples at ``indices`` (same scales, manifest and image cache)."""
        indices = np.asarray(indices, dtype=np.int64)
        return OracleSet(
            self.table.take(pa.array(indices)),
            self.scales,
            self.manifest,
            self.image_root,
            self.source,
            self._image_cache,
        )

    def fingerprint(self) -> dict:
        """What identifies the model behind these labels: scales, embedding size and the manifest's model entry."""
        model = (self.manifest or {}).get("model", {})
        return {
            "scales": list(self.scales),
            "embedding_dim": self.embedding_dim,
            "model_path": model.get("path"),
            "model_fingerprint": model.get("fingerprint"),
            "model_type": model.get("model_type"),
            "grid_tokens": model.get("grid_tokens"),
            "text_hidden_size": model.get("text_hidden_size"),
            "oracle_data": (self.manifest or {}).get("data", {}).get("path"),
        }


def _is_dataframe(obj) -> bool:
    return type(obj).__module__.split(".")[0] == "pandas" and hasattr(obj, "columns")


def as_oracle_set(data, image_root: str | os.PathLike | None = None) -> OracleSet:
    """An :class:`OracleSet` from an oracle folder, a ``pyarrow.Table``, a pandas ``DataFrame``, a
    ``datasets.Dataset`` or an OracleSet.

    The manifest comes from the folder, or from the table's ``manifest`` schema metadata (which
    :func:`oracle_data.load_oracle` sets). ``image_root`` overrides the manifest's ``data.image_root``.
    """
    from oracle_data import load_oracle

    if isinstance(data, OracleSet):
        if image_root is not None:
            return OracleSet(data.table, data.scales, data.manifest, Path(image_root), data.source, data._image_cache)
        return data
    if isinstance(data, (str, os.PathLike)):
        table, source = load_oracle(data), str(data)
    elif isinstance(data, pa.Table):
        table, source = data, "a pyarrow table"
    elif _is_dataframe(data) or type(data).__module__.split(".")[0] == "datasets":
        from oracle_data import oracle_table

        table, source = oracle_table(data), f"a {type(data).__name__}"  # the manifest from df.attrs / dataset.info
    else:
        raise TypeError(
            "expected an oracle folder, a pyarrow.Table, a pandas DataFrame, a datasets.Dataset or an OracleSet, "
            f"got {type(data).__name__}"
        )
    metadata = table.schema.metadata or {}
    manifest = json.loads(metadata[b"manifest"]) if b"manifest" in metadata else None
    scales = list(manifest["model"]["scales"]) if manifest else scales_from_columns(table.column_names)
    if not scales:
        raise ValueError(f"{source} has no correct_{{s}} columns: not an oracle table")
    missing = [
        name
        for name in ("image_id", "question", *(f"{p}_{s}" for s in scales for p in ("correct", "tokens")))
        if name not in table.column_names
    ]
    if missing:
        raise ValueError(f"{source} lacks oracle column(s) {missing}")
    root = image_root if image_root is not None else (manifest or {}).get("data", {}).get("image_root")
    return OracleSet(table, scales, manifest, None if root is None else Path(root), source)


def check_matching_oracles(train: str | os.PathLike, test: str | os.PathLike) -> None:
    """Refuse a training and a test oracle folder of other scales or embedding sizes from their manifests alone,
    before anything is fitted on the first (a predictor of one cannot route the other)."""
    from oracle_data import read_manifest

    first, second = read_manifest(train)["model"], read_manifest(test)["model"]
    for key in ("scales", "embedding_dim"):
        if first.get(key) != second.get(key):
            raise ValueError(
                f"the training oracle {train} has {key} {first.get(key)}, the test oracle {test} has "
                f"{second.get(key)}: predictors fitted on one cannot route the other; build both with the same model "
                "and --scales"
            )


def accuracy_values(data: OracleSet, accuracy: str = "correct") -> np.ndarray:
    """``(n, scales)`` per-scale values a routing's accuracy averages: ``correct_{s}`` (0/1) or ``score_{s}``."""
    if accuracy not in ACCURACY_KINDS:
        raise ValueError(f"accuracy must be one of {ACCURACY_KINDS}, got {accuracy!r}")
    return data.correct().astype(np.float64) if accuracy == "correct" else data.scores()


def to_queries(
    data,
    embeddings: bool,
    images: bool,
    image_root=None,
    progress: bool = True,
    probe_scale: int | None = None,
    probe_hidden: bool = False,
) -> Queries:
    """:class:`Queries` from anything :func:`as_oracle_set` reads, or a Queries object passed through."""
    if isinstance(data, Queries):
        return data
    return as_oracle_set(data, image_root).queries(embeddings, images, progress, probe_scale, probe_hidden)


def grouped_split(groups, test_size: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, test_indices)`` with every group (image id) wholly on one side.

    ``groups`` is an :class:`OracleSet` (split by image id) or one group label per sample. ``test_size`` is the
    fraction of groups held out (scikit-learn's ``GroupShuffleSplit``).
    """
    from sklearn.model_selection import GroupShuffleSplit

    labels = groups.groups if isinstance(groups, OracleSet) else np.asarray(groups, dtype=object)
    if len(set(labels.tolist())) < 2:
        raise ValueError(f"a grouped split needs at least 2 distinct images, got {len(set(labels.tolist()))}")
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train, test = next(splitter.split(np.zeros(len(labels)), groups=labels))
    return np.sort(train), np.sort(test)


def split_oracle(data: OracleSet, test_size: float = 0.2, seed: int = 0) -> tuple[OracleSet, OracleSet]:
    """Two :class:`OracleSet` s with no image in both (see :func:`grouped_split`)."""
    train, test = grouped_split(data, test_size, seed)
    return data.take(train), data.take(test)


def grouped_sample(groups, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(sample_indices, rest_indices)``: whole groups (images) drawn at random until at least ``n`` samples are
    in the sample, the rest on the other side; a labelled calibration set of about ``n`` queries with no image on
    both sides. ``groups`` is an :class:`OracleSet` or one group label per sample."""
    labels = groups.groups if isinstance(groups, OracleSet) else np.asarray(groups, dtype=object)
    if not 0 < n < len(labels):
        raise ValueError(f"the sample size must be in (0, {len(labels)}) (the number of samples), got {n}")
    unique, inverse = np.unique(labels.astype(str), return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(unique))
    sizes = np.bincount(inverse, minlength=len(unique))[order]
    chosen = order[: int(np.searchsorted(np.cumsum(sizes), n)) + 1]
    inside = np.isin(inverse, chosen)
    if inside.all():
        raise ValueError(f"drawing {n} samples by image leaves none for the rest (only {len(unique)} images)")
    return np.flatnonzero(inside), np.flatnonzero(~inside)
