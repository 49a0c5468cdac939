"""Predictor inputs: cheap image features, question features and the :class:`FeatureBuilder` that stacks them.

Six blocks (:data:`BLOCKS`, in feature order), each optional:

* **embedding**: the model's scale-1 visual token (the oracle's ``embedding`` column), standardised;
* **question**: length, question word and a few flags (:func:`question_features`);
* **tfidf**: TF-IDF of the question's word 1-2-grams (scikit-learn's ``TfidfVectorizer``), on with ``question``;
* **image**: statistics of the picture alone (:func:`image_features`): size, aspect, brightness, contrast,
  colourfulness, chroma, edge density, luma entropy and zlib-compressed bytes per pixel;
* **probe_confidence**: a probe answer's mean token log-probability at a cheap scale, and its probability;
* **probe_hidden**: the LLM's last hidden state for that probe answer, standardised.

The builder is fitted on training data only and saved as JSON (vocabulary, idf weights and standardisation
statistics): no pickle.
"""

from __future__ import annotations

import json
import math
import os
import re
import zlib
from array import array
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from m3.files import DamagedFileError, read_json
from m3.images import to_rgb

IMAGE_FEATURE_NAMES = (
    "image_width",
    "image_height",
    "image_log_pixels",
    "image_aspect_ratio",
    "image_mean_luma",
    "image_luma_contrast",
    "image_colourfulness",
    "image_chroma",
    "image_edge_density",
    "image_mean_edge",
    "image_luma_entropy",
    "image_compressed_bytes_per_pixel",
)
MAX_SIDE = 64  # statistics are taken on the image box-reduced by an integer factor to at most this side: cost
EDGE_THRESHOLD = 32  # FIND_EDGES response (0-255 levels) that counts as an edge: above mild sensor / JPEG noise
ENTROPY_BINS = 64

WH_WORDS = ("what", "where", "which", "who", "when", "why", "how")
YES_NO_WORDS = tuple("is are was were does do did can could will would should has have".split())
QUESTION_FEATURE_NAMES = (
    "question_words",
    "question_chars",
    *(f"question_starts_{word}" for word in WH_WORDS),
    "question_yes_no",
    "question_other_start",
    "question_how_many",
    "question_has_digit",
)
TOKEN_PATTERN = r"(?u)\b\w+\b"  # single letters count (a, b, c options; "x")
_WORDS = re.compile(TOKEN_PATTERN)
BLOCKS = ("embedding", "question", "tfidf", "image", "probe_confidence", "probe_hidden")
PROBE_CONFIDENCE_NAMES = ("probe_log_prob", "probe_prob")  # the probe answer's mean token log-probability, and exp
FEATURES_FORMAT = 2  # 2: the standard deviations are saved as "std" (format 1 called them "scale")


def _moment_matrix() -> np.ndarray:
    """``(256, 5)``: per grey level, the weights that turn a histogram into count, sum, sum of squares, sum of
    |level - 128| and the count above :data:`EDGE_THRESHOLD` with ONE matrix product (numpy calls on tiny
    arrays cost microseconds each; routing has a budget of a fraction of a millisecond)."""
    levels = np.arange(256.0)
    return np.stack(
        [np.ones(256), levels, levels * levels, np.abs(levels - 128), (levels > EDGE_THRESHOLD).astype(float)], axis=1
    )


def _mean_std(count: float, total: float, squares: float) -> tuple[float, float]:
    mean = total / count
    return mean, math.sqrt(max(squares / count - mean * mean, 0.0))


_MOMENTS = _moment_matrix()
_ENTROPY_BINS = np.kron(np.eye(ENTROPY_BINS), np.ones((256 // ENTROPY_BINS, 1)))  # (256, 64): level -> bin


def image_features(image: Image.Image) -> np.ndarray:
    """The :data:`IMAGE_FEATURE_NAMES` statistics of one image, ``float64``; about 0.2 ms on one CPU core.

    They describe how much detail the picture holds (edges, entropy, compressibility, colour), which is what
    decides how coarse a pooling still answers, without running any model. The image is first box-reduced by an
    integer factor to at most :data:`MAX_SIDE` pixels a side (96 px -> 48 px), so the cost hardly depends on its
    size; the size and aspect features keep the original. Everything else comes from PIL's C code and 256-bin
    histograms (routing must cost far less than answering):

    - mean luma and contrast (its standard deviation), of the grey image (ITU-R 601 luma);
    - colourfulness: Hasler & Suesstrunk's formula on the chroma opponents Cb and Cr of YCbCr,
      ``hypot(std Cb, std Cr) + 0.3 * hypot(mean Cb, mean Cr)`` (centred at 128); chroma: mean |Cb| + |Cr|;
    - edges: PIL's ``FIND_EDGES`` (3x3 Laplacian) response; density = share above :data:`EDGE_THRESHOLD`;
    - entropy: of the 64-bin luma histogram, in bits;
    - compressed size: zlib (level 1) bytes per pixel of the grey image (a cheap detail measure).
    """
    width, height = image.size
    factor = -(-max(width, height) // MAX_SIDE)  # ceil
    if factor > 1:
        image = image.reduce(factor)
    if image.mode != "RGB":
        image = to_rgb(image)
    grey = image.convert("L")
    edges = grey.filter(ImageFilter.FIND_EDGES)
    if min(grey.size) > 2:  # PIL leaves the 1-pixel border unfiltered (a copy of the image): not edges
        edges = edges.crop((1, 1, grey.size[0] - 1, grey.size[1] - 1))
    # rows: luma, edge response, Cb, Cr (YCbCr's histogram is its three bands' one after the other)
    counts = array("I", grey.histogram() + edges.histogram() + image.convert("YCbCr").histogram()[256:])
    histograms = np.frombuffer(counts, dtype=np.uint32).reshape(4, 256).astype(np.float64)
    # per row: count, sum, sum of squares, sum of |level - 128|, count above the edge threshold
    (n, luma_sum, luma_squares, _, _), (edge_n, edge_sum, _, _, edge_count), cb, cr = (histograms @ _MOMENTS).tolist()
    mean_luma, contrast = _mean_std(n, luma_sum, luma_squares)
    (cb_mean, cb_std), (cr_mean, cr_std) = _mean_std(*cb[:3]), _mean_std(*cr[:3])
    colourfulness = math.hypot(cb_std, cr_std) + 0.3 * math.hypot(cb_mean - 128, cr_mean - 128)
    chroma = (cb[3] + cr[3]) / n
    p = histograms[0] @ _ENTROPY_BINS / n
    p = p[p > 0]
    entropy = float(-(p * np.log2(p)).sum())
    compressed = len(zlib.compress(grey.tobytes(), 1)) / n
    return np.array(
        [
            width,
            height,
            math.log(width * height),
            width / height,
            mean_luma / 255.0,
            contrast / 255.0,
            colourfulness / 255.0,
            chroma / 255.0,
            edge_count / edge_n,
            edge_sum / edge_n / 255.0,
            entropy,
            compressed,
        ],
        dtype=np.float64,
    )


def question_features(question: str) -> np.ndarray:
    """The :data:`QUESTION_FEATURE_NAMES` of one question: length, first word (wh-word, yes/no, other), counting."""
    words = _WORDS.findall(question.lower())
    first = words[0] if words else ""
    wh = [float(first == word) for word in WH_WORDS]
    yes_no = float(first in YES_NO_WORDS)
    return np.array(
        [
            len(words),
            len(question),
            *wh,
            yes_no,
            float(not any(wh) and not yes_no),
            float("how many" in " ".join(words)),
            float(any(ch.isdigit() for ch in question)),
        ],
        dtype=np.float64,
    )


def tfidf_vectorizer(ngram_range: tuple[int, int], max_features: int | None, vocabulary=None, idf=None):
    """The scikit-learn ``TfidfVectorizer`` the builder fits (word n-grams, sublinear tf, l2 norm); with
    ``vocabulary`` and ``idf`` it is rebuilt from saved values."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(
        lowercase=True,
        token_pattern=TOKEN_PATTERN,
        ngram_range=tuple(ngram_range),
        max_features=max_features,
        sublinear_tf=True,
        vocabulary=vocabulary,
        dtype=np.float64,
    )
    if idf is not None:
        vectorizer.idf_ = np.asarray(idf, dtype=np.float64)
    return vectorizer


def word_ngrams(text: str, ngram_range: tuple[int, int]) -> list[str]:
    """The terms scikit-learn's word analyzer makes of ``text`` (lowercase, :data:`TOKEN_PATTERN`, n-grams)."""
    words = _WORDS.findall(text.lower())
    low, high = ngram_range
    terms = list(words) if low == 1 else []
    for n in range(max(low, 2), min(high, len(words)) + 1):
        terms += [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    return terms


def tfidf_rows(questions, index: dict[str, int], idf: np.ndarray, ngram_range: tuple[int, int]) -> np.ndarray:
    """``(n, len(index))`` TF-IDF rows equal to the fitted ``TfidfVectorizer.transform`` (1 + log tf, times idf,
    l2-normalised), without its per-call overhead: routing one query must cost far less than answering it."""
    rows = np.zeros((len(questions), len(index)))
    for i, question in enumerate(questions):
        counts: dict[int, int] = {}
        for term in word_ngrams(question, ngram_range):
            column = index.get(term)
            if column is not None:
                counts[column] = counts.get(column, 0) + 1
        if counts:
            columns = np.fromiter(counts, dtype=np.int64, count=len(counts))
            values = (np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts))) + 1.0) * idf[columns]
            rows[i, columns] = values / np.sqrt(values @ values)
    return rows


class FeatureBuilder(BaseEstimator):
    """Queries -> one float32 feature matrix; fitted on training data, saved as JSON (a scikit-learn estimator:
    ``get_params``, ``clone`` and ``NotFittedError`` work as usual).

    ``use_embedding`` / ``use_question`` / ``use_image`` select the blocks; ``tfidf_max_features`` caps the
    question vocabulary (0 turns TF-IDF off). ``use_probe_confidence`` / ``use_probe_hidden`` add what a probe
    answer at a cheap scale says (its mean token log-probability and probability; the LLM's last hidden state).
    Dense blocks are standardised with the training mean and standard deviation (the MLP needs it; LightGBM does
    not mind).
    """

    def __init__(
        self,
        use_embedding: bool = True,
        use_question: bool = True,
        use_image: bool = True,
        tfidf_max_features: int = 256,
        ngram_range: tuple[int, int] = (1, 2),
        use_probe_confidence: bool = False,
        use_probe_hidden: bool = False,
    ) -> None:
        self.use_embedding = use_embedding
        self.use_question = use_question
        self.use_image = use_image
        self.tfidf_max_features = tfidf_max_features
        self.ngram_range = tuple(ngram_range)
        self.use_probe_confidence = use_probe_confidence
        self.use_probe_hidden = use_probe_hidden

    # ---- fitting
    def fit(self, queries) -> FeatureBuilder:
        """Learn the TF-IDF vocabulary and idf weights and the standardisation statistics from ``queries``."""
        blocks = (self.use_embedding, self.use_question, self.use_image, self.use_probe_confidence)
        if not (any(blocks) or self.use_probe_hidden):
            raise ValueError(
                "a FeatureBuilder needs at least one of use_embedding, use_question, use_image, use_probe_confidence, "
                "use_probe_hidden"
            )
        if len(queries) == 0:
            raise ValueError("cannot fit a FeatureBuilder on 0 queries")
        self.embedding_dim_ = None
        if self.use_embedding:
            if queries.embeddings is None:
                raise ValueError("use_embedding=True but the queries carry no embeddings")
            self.embedding_dim_ = int(queries.embeddings.shape[1])
        self.probe_hidden_dim_ = None
        if self.use_probe_hidden:
            if queries.probe_hidden is None:
                raise ValueError("use_probe_hidden=True but the queries carry no probe hidden states")
            self.probe_hidden_dim_ = int(queries.probe_hidden.shape[1])
        self.vocabulary_: list[str] = []
        self.idf_ = np.zeros(0)
        self._index = None
        if self.use_question and self.tfidf_max_features:
            vectorizer = tfidf_vectorizer(self.ngram_range, self.tfidf_max_features).fit(queries.questions)
            self.vocabulary_ = vectorizer.get_feature_names_out().tolist()
            self.idf_ = vectorizer.idf_.astype(np.float64)
        dense = self._dense(queries)
        self.mean_ = dense.mean(axis=0)
        std = dense.std(axis=0)
        self.std_ = np.where(std > 1e-12, std, 1.0)  # constant columns are only centred
        self.feature_names_ = self._names()
        return self

    def _check_fitted(self) -> None:
        """scikit-learn's ``NotFittedError`` unless :meth:`fit` (or loading) has run (one lookup when fitted)."""
        if not hasattr(self, "feature_names_"):
            check_is_fitted(
                self, "feature_names_", msg="This FeatureBuilder is not fitted yet; call fit(queries) first."
            )

    def _names(self) -> list[str]:
        names = []
        if self.use_embedding:
            names += [f"embedding_{i}" for i in range(self.embedding_dim_)]
        if self.use_question:
            names += [*QUESTION_FEATURE_NAMES, *(f"tfidf[{term}]" for term in self.vocabulary_)]
        if self.use_image:
            names += list(IMAGE_FEATURE_NAMES)
        if self.use_probe_confidence:
            names += list(PROBE_CONFIDENCE_NAMES)
        if self.use_probe_hidden:
            names += [f"probe_hidden_{i}" for i in range(self.probe_hidden_dim_)]
        return names

    def _dense(self, queries) -> np.ndarray:
        """The blocks that get standardised, side by side: every block but TF-IDF, in :data:`BLOCKS` order."""
        n = len(queries)
        parts = []
        if self.use_embedding:
            missing = "this predictor uses the scale-1 embedding, but the queries carry none"
            dim = getattr(self, "embedding_dim_", None)
            parts.append(_model_matrix(queries.embeddings, dim, "embeddings", missing))
        if self.use_question:
            parts.append(
                np.stack([question_features(q) for q in queries.questions])
                if n
                else np.zeros((0, len(QUESTION_FEATURE_NAMES)))
            )
        if self.use_image:
            parts.append(queries.image_feature_matrix())
        if self.use_probe_confidence:
            if queries.probe_confidence is None:
                raise ValueError("this predictor reads a probe answer's confidence, but the queries carry none")
            parts.append(np.stack([queries.probe_confidence, np.exp(queries.probe_confidence)], axis=1))
        if self.use_probe_hidden:
            missing = "this predictor reads a probe answer's hidden state, but the queries carry none"
            dim = getattr(self, "probe_hidden_dim_", None)
            parts.append(_model_matrix(queries.probe_hidden, dim, "hidden states", missing))
        return np.concatenate(parts, axis=1) if parts else np.zeros((n, 0))

    # ---- transforming
    def transform(self, queries) -> np.ndarray:
        """``(n, n_features)`` float32 in the order of ``feature_names_``."""
        self._check_fitted()
        dense = (self._dense(queries) - self.mean_) / self.std_
        emb = self.embedding_dim_ or 0
        q = len(QUESTION_FEATURE_NAMES) if self.use_question else 0
        blocks = [dense[:, : emb + q]]
        if self.use_question and self.vocabulary_:
            blocks.append(tfidf_rows(queries.questions, self._term_index(), self.idf_, self.ngram_range))
        blocks.append(dense[:, emb + q :])
        features = np.concatenate(blocks, axis=1).astype(np.float32)
        if not np.isfinite(features).all():  # ~1 us per query; NaN would route silently (LightGBM: as missing)
            raise ValueError(self._non_finite_message(features))
        return features

    def _non_finite_message(self, features: np.ndarray) -> str:
        """Which query and which feature blocks are not finite, and the likely cause."""
        row = int(np.flatnonzero(~np.isfinite(features).all(axis=1))[0])
        columns = np.flatnonzero(~np.isfinite(features[row]))
        blocks = sorted({_block_of(self.feature_names_[column]) for column in columns})
        if "embedding" in blocks:
            cause = "the model's scale-1 embedding is not finite: check the model's weights"
        elif "probe" in blocks:
            cause = "the probe answer's confidence or hidden state is not finite: check the model's weights"
        else:
            cause = "check the question and image"
        return f"query {row}: the {' and '.join(blocks)} features are not finite (NaN or infinity); {cause}"

    def _term_index(self) -> dict[str, int]:
        if getattr(self, "_index", None) is None:
            self._index = {term: column for column, term in enumerate(self.vocabulary_)}
        return self._index

    def fit_transform(self, queries) -> np.ndarray:
        return self.fit(queries).transform(queries)

    @property
    def n_features_(self) -> int:
        self._check_fitted()
        return len(self.feature_names_)

    # ---- JSON round trip
    def to_dict(self) -> dict:
        self._check_fitted()
        return {
            "format": FEATURES_FORMAT,
            "params": {
                "use_embedding": self.use_embedding,
                "use_question": self.use_question,
                "use_image": self.use_image,
                "tfidf_max_features": self.tfidf_max_features,
                "ngram_range": list(self.ngram_range),
                "use_probe_confidence": self.use_probe_confidence,
                "use_probe_hidden": self.use_probe_hidden,
            },
            "embedding_dim": self.embedding_dim_,
            "probe_hidden_dim": self.probe_hidden_dim_,
            "vocabulary": self.vocabulary_,
            "idf": self.idf_.tolist(),
            "mean": self.mean_.tolist(),
            "std": self.std_.tolist(),
            "feature_names": self.feature_names_,
        }

    @classmethod
    def from_dict(cls, state: dict) -> FeatureBuilder:
        if state.get("format") != FEATURES_FORMAT:
            raise ValueError(
                f"FeatureBuilder format {state.get('format')!r}; this code reads format {FEATURES_FORMAT} (format 1 "
                "predates the scale -> std rename: refit the features)"
            )
        builder = cls(**state["params"])
        builder.embedding_dim_ = state["embedding_dim"]
        builder.probe_hidden_dim_ = state.get("probe_hidden_dim")  # absent in files saved before probes existed
        builder.vocabulary_ = list(state["vocabulary"])
        builder.idf_ = np.asarray(state["idf"], dtype=np.float64)
        builder.mean_ = np.asarray(state["mean"], dtype=np.float64)
        builder.std_ = np.asarray(state["std"], dtype=np.float64)
        builder.feature_names_ = list(state["feature_names"])
        return builder

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict()) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureBuilder:
        """Read a saved builder; a damaged file gives :class:`m3.files.DamagedFileError` naming it."""
        fix = "fit and save the predictor again"
        state = read_json(path, fix)
        try:
            builder = cls.from_dict(state)
        except (KeyError, TypeError, AttributeError) as error:
            raise DamagedFileError(path, f"entry {error} is missing or malformed", fix) from None
        if len(builder.feature_names_) != len(builder.mean_) + len(builder.vocabulary_):
            raise DamagedFileError(path, "its feature names and statistics do not agree", fix)
        return builder


def _block_of(feature_name: str) -> str:
    """The block a feature name belongs to: embedding, question (statistics and TF-IDF), image or probe."""
    if feature_name.startswith("embedding_"):
        return "embedding"
    if feature_name.startswith("probe_"):
        return "probe"
    return "image" if feature_name in IMAGE_FEATURE_NAMES else "question"


def _model_matrix(values, fitted_dim: int | None, what: str, missing: str) -> np.ndarray:
    """A block read from the model (embeddings, hidden states) as float64, refused when absent or when its width
    differs from the one the features were fitted on (a predictor built for another model)."""
    if values is None:
        raise ValueError(missing)
    if fitted_dim is not None and values.shape[1] != fitted_dim:
        raise ValueError(
            f"the features were fitted on {fitted_dim}-dimensional {what}, these queries have {values.shape[1]}: "
            "the predictor was built for another model"
        )
    return values.astype(np.float64)
