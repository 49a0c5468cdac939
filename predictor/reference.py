"""Reference routers: the best scale per group of queries, read off a train oracle. No model, no features.

They bound what a learned scale predictor should beat and say how much of the routing signal lies where:

* **question-only** (``grouping="family"`` or ``"question"``): one group per question family (or question text).
  On a benchmark where the question template fixes the needed scale, this is already a strong router.
* **attribute** (``grouping="attribute"``): what the generator drew decides: its own difficulty attributes (object
  sizes, gaps, how much of a clean pooled cell a square fills; :data:`m3.data.granularity.DIFFICULTY_ATTRIBUTES`)
  within each family. The attributes are what the image decides, so the gap between the two routers measures how
  much the image tells.

The family and question groupings estimate, per group and per scale, the train accuracy (``predict_proba``:
``(n, scales)``; groups unseen in training fall back to the overall rate). The attribute grouping does the same per
bucket of every attribute (``estimator="buckets"``: quantile buckets, fine for one or two attributes), or, by
default, with gradient-boosted trees per family on the attributes and ``log2(scale)`` (``estimator="boosted"``,
LightGBM, non-decreasing in the scale): many attributes at once would leave most bucket combinations empty. Both
route with the threshold rule every predictor here uses: the smallest scale whose estimate reaches the threshold,
else the largest. Sweeping the threshold traces the accuracy/token
curve (:func:`threshold_sweep`); :func:`tokens_to_match` reads off the mean tokens at a target accuracy.

Attributes are joined to the oracle rows by ``sample_id`` from the data file the oracle was built from (the
manifest's ``data.path``; granularity records carry an ``attributes`` dict), see :func:`sample_attributes`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from .data import as_oracle_set
from .routing_metrics import Curve, cheapest_point_reaching, routing_point, tokens_for_accuracy
from .thresholds import route_by_threshold

GROUPINGS = ("family", "question", "attribute")
ESTIMATORS = ("boosted", "buckets")
# the attribute grouping's trees: small, since a family has a few hundred to a few thousand train rows
BOOSTED_PARAMS = dict(
    objective="binary", learning_rate=0.05, num_leaves=15, min_data_in_leaf=10, lambda_l2=1.0, verbose=-1,
    num_threads=1, seed=0, deterministic=True,
)  # fmt: skip
BOOSTED_ROUNDS = 200


def sample_attributes(oracle, data_path: str | Path | None = None) -> list[dict]:
    """The ``attributes`` dict of every oracle row (``{}`` where the record has none), in row order.

    Rows are joined by ``sample_id`` to the records of ``data_path`` (default: the oracle manifest's
    ``data.path``), a LLaVA-format JSON list whose records carry ``id`` and ``attributes``.
    """
    oracle = as_oracle_set(oracle)
    if data_path is None:
        data_path = ((oracle.manifest or {}).get("data") or {}).get("path")
        if data_path is None:
            raise ValueError(f"the oracle from {oracle.source} names no data file; pass data_path=...")
    path = Path(data_path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} (named by the oracle from {oracle.source}) does not exist")
    records = json.loads(path.read_text(encoding="utf-8"))
    by_id = {str(record.get("id")): record.get("attributes") or {} for record in records}
    ids = oracle.column("sample_id").tolist()
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} oracle sample(s) are not in {path}, e.g. {missing[:3]}")
    return [by_id[i] for i in ids]


class ReferenceRouter(BaseEstimator):
    """Per-group, per-scale train accuracy as the routing estimate (scikit-learn conventions).

    Parameters:
        grouping: ``"family"`` / ``"question"`` (question-only) or ``"attribute"`` (difficulty attributes).
        attributes: for ``"attribute"``, the attribute names per family (default:
            :data:`m3.data.granularity.DIFFICULTY_ATTRIBUTES`); a family not named is one group.
        estimator: for ``"attribute"``: ``"boosted"`` (trees on the attribute values) or ``"buckets"``.
        n_bins: ``"buckets"``: quantile buckets per attribute, edges fitted on the train rows of the family.
        min_count: groups with fewer train rows use the overall rate instead of their own.
        data_path: the data file holding the attributes (default: the oracle manifest's ``data.path``).
    """

    def __init__(
        self,
        grouping: str = "family",
        attributes: Mapping[str, Sequence[str]] | None = None,
        estimator: str = "boosted",
        n_bins: int = 4,
        min_count: int = 1,
        data_path: str | Path | None = None,
    ):
        self.grouping = grouping
        self.attributes = attributes
        self.estimator = estimator
        self.n_bins = n_bins
        self.min_count = min_count
        self.data_path = data_path

    # ---- grouping
    def _attribute_names(self) -> Mapping[str, Sequence[str]]:
        if self.attributes is not None:
            return self.attributes
        from m3.data.granularity import DIFFICULTY_ATTRIBUTES

        return DIFFICULTY_ATTRIBUTES

    def _raw_groups(self, oracle) -> tuple[np.ndarray, list[dict] | None]:
        if self.grouping == "family":
            return oracle.families, None
        if self.grouping == "question":
            return oracle.column("question").astype(object), None
        return oracle.families, sample_attributes(oracle, self.data_path)

    def _boosted(self) -> bool:
        return self.grouping == "attribute" and self.estimator == "boosted"

    def _keys(self, families: np.ndarray, attributes: list[dict] | None) -> list[tuple]:
        """The group key of every row: ``(family,)`` or ``(family, bucket, ...)``."""
        if attributes is None or self._boosted():
            return [(f,) for f in families.tolist()]
        keys = []
        for family, values in zip(families.tolist(), attributes):
            key = [family]
            for name, edges in self.bin_edges_.get(family, {}).items():
                if name not in values:
                    raise KeyError(f"a {family!r} row has no attribute {name!r} (it has {sorted(values)})")
                key.append(int(np.searchsorted(edges, float(values[name]), side="right")))
            keys.append(tuple(key))
        return keys

    def _fit_bins(self, families: np.ndarray, attributes: list[dict]) -> dict[str, dict[str, np.ndarray]]:
        """Inner quantile edges per (family, attribute): ``n_bins`` about equally full buckets (fewer when ties)."""
        names = self._attribute_names()
        edges: dict[str, dict[str, np.ndarray]] = {}
        for family in sorted(set(families.tolist())):
            rows = [values for f, values in zip(families.tolist(), attributes) if f == family]
            edges[family] = {}
            for name in names.get(family, ()):
                values = np.array([float(v[name]) for v in rows if name in v])
                if not len(values):
                    raise KeyError(f"no {family!r} row has the attribute {name!r}")
                inner = np.quantile(values, np.linspace(0, 1, self.n_bins + 1)[1:-1])
                edges[family][name] = np.unique(inner)
        return edges

    # ---- estimator
    def _attribute_matrix(self, family: str, attributes: list[dict]) -> np.ndarray:
        """``(rows, attributes)`` float values of ``family``'s attributes; text values (colours) become the codes
        fitted in :meth:`fit` (-1: unseen), which the trees treat as categories."""
        columns = []
        for name in self._attribute_names().get(family, ()):
            missing = [values for values in attributes if name not in values]
            if missing:
                raise KeyError(f"a {family!r} row has no attribute {name!r} (it has {sorted(missing[0])})")
            raw = [values[name] for values in attributes]
            if name in self.categories_.get(family, {}):
                codes = self.categories_[family][name]
                columns.append([float(codes.get(str(value), -1)) for value in raw])
            else:
                columns.append([float(value) for value in raw])
        return np.array(columns, dtype=np.float64).T.reshape(len(attributes), len(columns))

    def _fit_boosted(self, families: np.ndarray, attributes: list[dict], correct: np.ndarray) -> None:
        """One LightGBM booster per family with attributes, on (row, scale) pairs: the attributes and
        ``log2(scale)``, the estimate constrained to never fall as the scale grows."""
        import lightgbm as lgb

        self.boosters_, self.categories_ = {}, {}
        log_scales = np.log2(self.scales_)
        for family in sorted(set(families.tolist())):
            names = list(self._attribute_names().get(family, ()))
            rows = [values for f, values in zip(families.tolist(), attributes) if f == family]
            if not names:
                continue
            self.categories_[family] = {
                name: {value: code for code, value in enumerate(sorted({str(v[name]) for v in rows if name in v}))}
                for name in names
                if any(isinstance(v.get(name), str) for v in rows)
            }
            base = self._attribute_matrix(family, rows)
            features = np.hstack([np.repeat(base, len(log_scales), axis=0), np.tile(log_scales, len(rows))[:, None]])
            labels = correct[families == family].reshape(-1)
            if labels.min() == labels.max():
                continue  # every pair alike: the family's group rate says it
            categorical = [i for i, name in enumerate(names) if name in self.categories_[family]]
            params = {**BOOSTED_PARAMS, "monotone_constraints": [0] * len(names) + [1]}
            data = lgb.Dataset(features, labels, categorical_feature=categorical or "auto", free_raw_data=True)
            self.boosters_[family] = lgb.train(params, data, num_boost_round=BOOSTED_ROUNDS)

    def fit(self, oracle) -> ReferenceRouter:
        """Learn the per-group, per-scale accuracy of a train oracle (anything :func:`as_oracle_set` reads)."""
        if self.grouping not in GROUPINGS:
            raise ValueError(f"unknown grouping {self.grouping!r}; expected one of {GROUPINGS}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; expected one of {ESTIMATORS}")
        if self.n_bins < 1 or self.min_count < 1:
            raise ValueError(f"n_bins and min_count must be >= 1, got {self.n_bins} and {self.min_count}")
        oracle = as_oracle_set(oracle)
        if not len(oracle):
            raise ValueError("cannot fit a reference router on an empty oracle")
        correct = oracle.correct().astype(np.float64)
        families, attributes = self._raw_groups(oracle)
        bucketed = attributes is not None and not self._boosted()
        self.bin_edges_ = self._fit_bins(families, attributes) if bucketed else {}
        keys = self._keys(families, attributes)
        self.scales_ = list(oracle.scales)
        self.boosters_, self.categories_ = {}, {}
        if self._boosted():
            self._fit_boosted(families, attributes, correct)
        self.overall_rate_ = correct.mean(axis=0)
        self.group_rates_: dict[tuple, np.ndarray] = {}
        self.group_counts_: dict[tuple, int] = {}
        for key in dict.fromkeys(keys):
            rows = np.array([k == key for k in keys])
            self.group_counts_[key] = int(rows.sum())
            if rows.sum() >= self.min_count:
                self.group_rates_[key] = correct[rows].mean(axis=0)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "group_rates_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(train_oracle) first")

    def predict_proba(self, oracle) -> np.ndarray:
        """``(n, scales)``: each row's group accuracy per scale on the train oracle (unseen group: overall rate)."""
        self._check_fitted()
        oracle = as_oracle_set(oracle)
        if list(oracle.scales) != self.scales_:
            raise ValueError(f"the oracle has scales {oracle.scales}, the router was fitted on {self.scales_}")
        families, attributes = self._raw_groups(oracle)
        keys = self._keys(families, attributes)
        if not keys:
            return np.zeros((0, len(self.scales_)))
        proba = np.stack([self.group_rates_.get(key, self.overall_rate_) for key in keys])
        log_scales = np.log2(self.scales_)
        for family, booster in self.boosters_.items():
            rows = np.flatnonzero(families == family)
            if not rows.size:
                continue
            base = self._attribute_matrix(family, [attributes[i] for i in rows])
            features = np.hstack([np.repeat(base, len(log_scales), axis=0), np.tile(log_scales, len(rows))[:, None]])
            proba[rows] = booster.predict(features).reshape(len(rows), len(log_scales))
        return proba

    def predict(self, oracle, threshold: float = 0.5) -> np.ndarray:
        """``(n,)`` scales: the smallest whose estimated accuracy reaches ``threshold``, else the largest."""
        return route_by_threshold(self.predict_proba(oracle), self.scales_, threshold)


def reference_kind(router: ReferenceRouter) -> str:
    """How tables name a reference router: ``question-only`` (family or question groups) or ``attribute``."""
    return "attribute" if router.grouping == "attribute" else "question-only"


def threshold_sweep(proba: np.ndarray, correct: np.ndarray, tokens: np.ndarray, scales: Sequence[int]) -> list[dict]:
    """The realised operating points ``{"threshold", "tokens", "accuracy"}`` of the threshold rule on ``proba``.

    Every distinct estimate is tried as a threshold (plus 0 and one above 1): a per-group router has few distinct
    values, so this is its whole curve. ``correct`` and ``tokens`` are the test oracle's ``(n, scales)`` matrices.
    """
    thresholds = np.unique(np.concatenate([[0.0], np.asarray(proba, dtype=np.float64).ravel(), [1.0 + 1e-9]]))
    points = []
    for threshold in thresholds:
        routing = route_by_threshold(proba, scales, float(threshold))
        mean_tokens, accuracy = routing_point(routing, np.asarray(correct, np.float64), tokens, scales)
        points.append({"threshold": float(threshold), "tokens": mean_tokens, "accuracy": accuracy})
    return points


def tokens_to_match(points: Sequence[dict], target: float) -> dict:
    """Mean tokens at which a sweep reaches ``target`` accuracy: ``interpolated`` (on the curve, mixing two
    operating points at random, as CPT reads it) and ``realised`` (the cheapest single threshold; None if none)."""
    curve = Curve.from_points([p["tokens"] for p in points], [p["accuracy"] for p in points])
    return {
        "target": float(target),
        "interpolated": tokens_for_accuracy(curve, target - 1e-12),
        "realised": cheapest_point_reaching(points, target),
    }


def compare_reference_routers(
    train_oracle,
    test_oracle,
    groupings: Sequence[str] = ("family", "attribute"),
    n_bins: int = 4,
    attributes: Mapping[str, Sequence[str]] | None = None,
    estimator: str = "boosted",
) -> dict:
    """Fit each grouping on ``train_oracle`` and read, on ``test_oracle``, the tokens at full-scale accuracy
    (the largest scale's test accuracy): ``{"full_scale_accuracy", "routers": {grouping: {...}}}``."""
    test = as_oracle_set(test_oracle)
    correct, tokens = test.correct(), test.tokens()
    full = float(correct[:, -1].mean())
    results = {"full_scale_accuracy": full, "routers": {}}
    for name in groupings:
        router = ReferenceRouter(grouping=name, attributes=attributes, estimator=estimator, n_bins=n_bins)
        router.fit(train_oracle)
        points = threshold_sweep(router.predict_proba(test), correct, tokens, router.scales_)
        match = tokens_to_match(points, full)
        results["routers"][name] = {"groups": len(router.group_rates_), **match, "points": points}
    return results
