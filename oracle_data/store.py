"""Oracle files on disk: Parquet shards, the JSON manifest, build identity checks and :func:`load_oracle`.

Layout of an output folder::

    OUT/manifest.json               what was built from what, the shard list, and whether the build is complete
    OUT/shards/shard-000000.parquet one shard per group of samples (see ``datasets.image_runs``), in data order

Shards and the manifest are written to a temporary name and renamed (``os.replace``), so a reader - or a build
killed at any moment - never sees a partial file. A shard's existence means its samples are done: a rerun
skips them, so a killed build loses nothing and duplicates nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from m3.files import DamagedFileError, atomic_write, read_json
from m3.fingerprint import file_sha256, model_fingerprint  # noqa: F401 (the manifest's hashes, used as store.*)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: the probe columns hidden_{s} (the LLM's last hidden state at the smallest scales)
OLD_SCHEMA_HINTS = {
    1: "built before the probe columns hidden_{s}: rebuild it with scripts/build_oracle.py into a fresh --out"
}
MANIFEST_NAME = "manifest.json"
SHARD_DIR = "shards"
MANIFEST_FIX = "its shards cannot be matched to a build without it: delete the folder and build the oracle again"
SHARD_FIX = "rerun the same build command: it rebuilds damaged shards"
SHARD_ERRORS = (pa.ArrowException, OSError)  # what pyarrow raises on a truncated or overwritten Parquet file
# manifest entries that must be equal for a rerun to add to an existing build
IDENTITY_KEYS = (
    ("schema_version",),
    ("model", "path"),
    ("model", "fingerprint"),
    ("model", "scales"),
    ("data", "path"),
    ("data", "sha256"),
    ("data", "format"),
    ("data", "image_root"),
    ("data", "num_samples"),
    ("data", "split"),
    ("data", "config"),
    ("data", "columns"),
    ("metric",),
    ("settings",),
)


class OracleMismatchError(ValueError):
    """An output folder already holds (part of) an oracle built from another model, data file or settings."""


def per_scale_columns(scale: int) -> dict[str, pa.DataType]:
    return {
        f"answer_{scale}": pa.string(),
        f"score_{scale}": pa.float64(),
        f"correct_{scale}": pa.bool_(),
        f"confidence_{scale}": pa.float64(),
        f"tokens_{scale}": pa.int32(),
        f"eos_{scale}": pa.bool_(),
    }


def default_hidden_scales(scales: Sequence[int]) -> list[int]:
    """The scales whose last hidden state a build records by default: the two smallest (the cheap probes)."""
    return sorted(int(s) for s in scales)[:2]


def hidden_scales_of(manifest: dict) -> list[int]:
    """The scales with a ``hidden_{s}`` column in the build a manifest describes."""
    return [int(s) for s in (manifest.get("settings") or {}).get("hidden_scales") or ()]


def oracle_schema(scales: Sequence[int], hidden_scales: Sequence[int] = ()) -> pa.Schema:
    """The Arrow schema of an oracle table for ``scales``, with a ``hidden_{s}`` column for every scale in
    ``hidden_scales`` (see :func:`load_oracle` for the meaning of columns)."""
    fields = [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("family", pa.string()),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("answers", pa.list_(pa.string()), nullable=False),
        pa.field("choices", pa.list_(pa.string())),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
    for scale in scales:
        fields += [pa.field(name, kind, nullable=False) for name, kind in per_scale_columns(scale).items()]
    unknown = sorted(set(hidden_scales) - set(scales))
    if unknown:
        raise ValueError(f"hidden_scales {unknown} are not among the scales {list(scales)}")
    fields += [pa.field(f"hidden_{scale}", pa.list_(pa.float32()), nullable=False) for scale in sorted(hidden_scales)]
    fields += [
        pa.field("oracle_scale", pa.int32(), nullable=False),
        pa.field("oracle_none_correct", pa.bool_(), nullable=False),
        pa.field("oracle_monotone_scale", pa.int32(), nullable=False),
        pa.field("oracle_monotone_unreachable", pa.bool_(), nullable=False),
    ]
    return pa.schema(fields)


# ----------------------------------------------------------------------------------------------------
# atomic writes, manifest


def manifest_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / MANIFEST_NAME


def write_manifest(out_dir: str | os.PathLike, manifest: dict) -> None:
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write(manifest_path(out_dir), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_manifest(out_dir: str | os.PathLike) -> dict:
    """The manifest of an oracle folder; raises naming the folder if there is none or its version is unknown."""
    path = manifest_path(out_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} holds no oracle ({MANIFEST_NAME} is missing); build one first")
    manifest = _read_manifest_file(path)
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        hint = f" ({OLD_SCHEMA_HINTS[version]})" if version in OLD_SCHEMA_HINTS else ""
        raise ValueError(f"{path}: schema version {version!r}, this code reads version {SCHEMA_VERSION}{hint}")
    return manifest


def _read_manifest_file(path: Path) -> dict:
    manifest = read_json(path, MANIFEST_FIX)
    if not isinstance(manifest, dict):
        raise DamagedFileError(path, f"a JSON {type(manifest).__name__}, not an object", MANIFEST_FIX)
    return manifest


def _get(manifest: dict, key: tuple[str, ...]):
    value = manifest
    for part in key:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def check_same_build(existing: dict, new: dict, out_dir: str | os.PathLike) -> None:
    """Raise :class:`OracleMismatchError` listing every identity entry on which two manifests differ."""
    differences = [
        f"  {'.'.join(key)}: {json.dumps(_get(existing, key))} there, {json.dumps(_get(new, key))} now"
        for key in IDENTITY_KEYS
        if _get(existing, key) != _get(new, key)
    ]
    if differences:
        raise OracleMismatchError(
            f"{out_dir} already holds an oracle built from a different model, data file or settings; refusing to "
            "mix them. Use a fresh --out folder (or delete this one). Differences:\n" + "\n".join(differences)
        )


def open_build(out_dir: str | os.PathLike, manifest: dict, create: bool) -> dict:
    """Check ``manifest`` against the folder's (if any); with ``create``, write it there if there is none.

    Returns the manifest to continue from (the existing one, if the build is being resumed).
    """
    out_dir = Path(out_dir)
    path = manifest_path(out_dir)
    if path.is_file():
        existing = _read_manifest_file(path)
        if existing.get("schema_version") != SCHEMA_VERSION:
            version = existing.get("schema_version")
            hint = f" ({OLD_SCHEMA_HINTS[version]})" if version in OLD_SCHEMA_HINTS else ""
            raise OracleMismatchError(
                f"{path} has schema version {version!r}, not {SCHEMA_VERSION}{hint}; use a fresh --out"
            )
        check_same_build(existing, manifest, out_dir)
        return existing
    if out_dir.is_dir() and any(out_dir.glob(f"{SHARD_DIR}/*.parquet")):
        raise OracleMismatchError(f"{out_dir} holds oracle shards but no {MANIFEST_NAME}; use a fresh --out folder")
    if create:
        (out_dir / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        write_manifest(out_dir, manifest)
    return manifest


def remove_stale_temporaries(out_dir: str | os.PathLike) -> int:
    """Delete the temporary files a killed build left behind (only ours: ``.*.tmp`` in the folder and shards)."""
    out_dir = Path(out_dir)
    stale = [*out_dir.glob(".*.tmp"), *(out_dir / SHARD_DIR).glob(".*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


# ----------------------------------------------------------------------------------------------------
# shards


def shard_file(index: int) -> str:
    """Shard path relative to the output folder: the index is the shard's group number in the data order."""
    return f"{SHARD_DIR}/shard-{index:06d}.parquet"


def write_shard(out_dir: str | os.PathLike, index: int, rows: Sequence[dict], schema: pa.Schema) -> Path:
    """Write one shard atomically; ``rows`` are dicts with exactly the schema's columns."""
    table = pa.Table.from_pylist(list(rows), schema=schema)
    path = Path(out_dir) / shard_file(index)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def shard_sample_ids(out_dir: str | os.PathLike, index: int) -> list[str] | None:
    """The sample ids of shard ``index``, or None if it has not been written - or is damaged: then it is deleted,
    with a warning, and the build writes it again (every column is read, so a damaged one is found here)."""
    path = Path(out_dir) / shard_file(index)
    if not path.is_file():
        return None
    try:
        return pq.read_table(path).column("sample_id").to_pylist()
    except SHARD_ERRORS as error:
        logger.warning("%s is damaged (%s); rebuilding it", path, " ".join(str(error).split()))
        path.unlink(missing_ok=True)
        return None


def _shard_rows(path: Path) -> int | None:
    """Rows of a shard from its Parquet footer; None when the footer cannot be read (a damaged file)."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except SHARD_ERRORS:
        return None


def shard_entry(index: int, rows: int) -> dict:
    return {"index": index, "file": shard_file(index), "rows": rows}


def shard_entries(out_dir: str | os.PathLike, num_shards: int) -> list[dict]:
    """Manifest entries (``index``, ``file``, ``rows``) of the shards on disk, read from their Parquet footers (a
    shard whose footer is damaged counts as missing)."""
    entries = []
    for index in range(num_shards):
        path = Path(out_dir) / shard_file(index)
        if path.is_file() and (rows := _shard_rows(path)) is not None:
            entries.append(shard_entry(index, rows))
    return entries


def update_manifest(
    out_dir: str | os.PathLike, manifest: dict, entries: list[dict] | None = None, complete: bool = False
) -> dict:
    """Rewrite the manifest with a shard list (default: scanned from disk), its row count and completion state."""
    entries = (
        shard_entries(out_dir, manifest["num_shards"])
        if entries is None
        else sorted(entries, key=lambda entry: entry["index"])
    )
    manifest = dict(manifest)
    manifest["shards"] = entries
    manifest["num_rows"] = sum(entry["rows"] for entry in entries)
    manifest["complete"] = complete
    manifest["build"] = dict(manifest.get("build", {}), updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_manifest(out_dir, manifest)
    return manifest


# ----------------------------------------------------------------------------------------------------
# reading


def load_oracle(out_dir: str | os.PathLike, allow_incomplete: bool = False) -> pa.Table:
    """The oracle table of a build folder, one row per sample in data order, after checking the manifest.

    Raises if the build is incomplete (unless ``allow_incomplete``), a listed shard is missing or has another
    row count, or a sample id appears twice. ``table.to_pandas()`` or ``table.column(name).to_numpy()`` give
    arrays; the manifest is in ``table.schema.metadata[b"manifest"]`` (JSON) and :func:`read_manifest`.

    Columns (``{s}`` stands for every scale of the build, e.g. 1, 9, 36, 144, 576):

    - ``sample_id`` (str), ``image_id`` (str), ``image`` (str, the path as written in the data file; resolve it
      against the manifest's ``data.image_root``), ``question`` (str, without the options block),
      ``family`` (str or null), ``metric`` (str), ``answers`` (list<str>), ``choices`` (list<str> or null);
    - ``embedding`` (list<float32>, length = the text hidden size): the image's visual token at scale 1, i.e.
      the mean of its projected 24x24 grid. LLaVA-NeXT: the base (whole-image) crop's scale-1 token;
    - ``answer_{s}`` (str, greedy answer), ``score_{s}`` (float, under the sample's metric), ``correct_{s}``
      (bool, ``score_{s} >= 0.5``), ``confidence_{s}`` (float, mean log-probability of the generated tokens up to
      and including EOS), ``tokens_{s}`` (int, visual tokens the LLM saw), ``eos_{s}`` (bool, False when the
      answer was cut at ``max_new_tokens``);
    - ``hidden_{s}`` (list<float32>, length = the text hidden size), for the scales in the manifest's
      ``settings.hidden_scales`` (by default the two smallest): the LLM's last hidden state (the input of its output
      layer) at the prompt's last position when answering at scale s, what probe predictors read;
    - ``oracle_scale`` (int): the paper's oracle, the smallest scale that is correct (the smallest scale when
      none is, flagged by ``oracle_none_correct``); ``oracle_monotone_scale`` (int): the smallest s with every
      scale >= s correct (the smallest scale when the largest is wrong, flagged by
      ``oracle_monotone_unreachable``).
    """
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    if not manifest.get("complete") and not allow_incomplete:
        done = manifest.get("num_rows", 0)
        raise ValueError(
            f"the oracle in {out_dir} is incomplete ({done} of {manifest['data']['num_samples']} samples in the "
            "manifest); rerun the same build command to finish it, or pass allow_incomplete=True"
        )
    entries = manifest["shards"] if manifest.get("complete") else shard_entries(out_dir, manifest["num_shards"])
    schema = oracle_schema(manifest["model"]["scales"], hidden_scales_of(manifest))
    tables = []
    for entry in entries:
        path = out_dir / entry["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{out_dir}: shard {entry['file']} listed in the manifest is missing")
        try:
            table = pq.read_table(path, schema=schema)
        except SHARD_ERRORS as error:
            raise DamagedFileError(path, str(error), SHARD_FIX) from None
        if table.num_rows != entry["rows"]:
            raise ValueError(f"{path}: {table.num_rows} rows, the manifest says {entry['rows']}")
        tables.append(table)
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    ids = table.column("sample_id").to_pylist()
    if len(set(ids)) != len(ids):
        raise ValueError(f"{out_dir}: some sample ids appear in more than one row")
    if manifest.get("complete") and table.num_rows != manifest["data"]["num_samples"]:
        raise ValueError(f"{out_dir}: {table.num_rows} rows, the manifest expects {manifest['data']['num_samples']}")
    return table.replace_schema_metadata({"manifest": json.dumps(manifest)})


def compare_oracles(first: str | os.PathLike, second: str | os.PathLike) -> tuple[list[str], float]:
    """How two builds of one model on one data set differ (e.g. on 1 and on 2 processes): ``(cells, largest)``,
    ``cells`` naming every ``sample_id.column`` that differs outside the float columns (ids, answers, scores,
    labels), ``largest`` the largest absolute difference in the float ones (confidences, embeddings, hidden
    states). Those may differ in the last bits: what a process computed before can change which kernels run."""
    a, b = load_oracle(first), load_oracle(second)
    if a.num_rows != b.num_rows or a.schema.names != b.schema.names:
        return [f"{a.num_rows} rows x {a.num_columns} columns against {b.num_rows} x {b.num_columns}"], 0.0
    ids = a.column("sample_id").to_pylist()
    cells, largest = [], 0.0
    for name, kind in zip(a.schema.names, a.schema.types):
        floats = pa.types.is_floating(kind) or (pa.types.is_list(kind) and pa.types.is_floating(kind.value_type))
        x, y = a.column(name).to_pylist(), b.column(name).to_pylist()
        for sample_id, one, other in zip(ids, x, y):
            if floats and one is not None and other is not None:
                pairs = zip(one, other) if isinstance(one, list) else [(one, other)]
                largest = max([largest, *(abs(u - v) for u, v in pairs)])
            elif one != other:
                cells.append(f"{sample_id}.{name}")
    return cells, largest


ORACLE_DATASET_NAME = "m3_oracle"


def load_oracle_dataframe(out_dir: str | os.PathLike, allow_incomplete: bool = False):
    """The oracle table (:func:`load_oracle`) as a pandas ``DataFrame``, its manifest in ``df.attrs["manifest"]``."""
    table = load_oracle(out_dir, allow_incomplete)
    frame = table.to_pandas()
    frame.attrs["manifest"] = json.loads(table.schema.metadata[b"manifest"])
    return frame


def load_oracle_dataset(out_dir: str | os.PathLike, allow_incomplete: bool = False):
    """The oracle table (:func:`load_oracle`) as a ``datasets.Dataset`` (in memory: nothing is copied to the datasets
    cache). The manifest is ``json.loads(dataset.info.description)``; ``dataset.info.dataset_name`` is
    ``"m3_oracle"``."""
    import datasets
    from datasets.table import InMemoryTable

    table = load_oracle(out_dir, allow_incomplete)
    info = datasets.DatasetInfo(
        description=table.schema.metadata[b"manifest"].decode(), dataset_name=ORACLE_DATASET_NAME
    )
    return datasets.Dataset(InMemoryTable(table.replace_schema_metadata(None)), info=info)


def oracle_table(data) -> pa.Table:
    """A ``pyarrow.Table`` of an oracle given as a table, a pandas ``DataFrame`` or a ``datasets.Dataset``, with the
    manifest (from the table's metadata, ``df.attrs`` or the dataset's info) as schema metadata when there is one."""
    manifest = None
    module = type(data).__module__.split(".")[0]
    if isinstance(data, pa.Table):
        return data
    if module == "pandas":
        manifest = data.attrs.get("manifest")
        table = pa.Table.from_pandas(data, preserve_index=False)
    elif module == "datasets":
        if data.info.dataset_name == ORACLE_DATASET_NAME and data.info.description:
            manifest = json.loads(data.info.description)
        table = data.with_format("arrow")[:]
    else:
        raise TypeError(
            f"expected a pyarrow.Table, a pandas DataFrame or a datasets.Dataset, got {type(data).__name__}"
        )
    return table.replace_schema_metadata(None if manifest is None else {"manifest": json.dumps(manifest)})
