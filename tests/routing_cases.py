"""Hand-made routing cases for tests: an oracle table from a correctness matrix, and a router with known
probabilities."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from sklearn.base import BaseEstimator

from oracle_data import oracle_schema

SCALES = [1, 9, 36, 144, 576]


def oracle_table(correct: np.ndarray, confidences: np.ndarray | None = None, families=None) -> pa.Table:
    """An oracle table (no manifest) from an ``(n, 5)`` correctness matrix, one image per query; scale s costs s."""
    correct = np.asarray(correct, dtype=bool)
    confidences = np.where(correct, -0.1, -2.0) if confidences is None else confidences
    rows = []
    for i in range(len(correct)):
        row = {
            "sample_id": f"q{i}", "image_id": f"img{i}", "image": f"img{i}.png", "question": "what is it ?",
            "family": None if families is None else families[i], "metric": "exact_match", "answers": ["a"],
            "choices": None, "embedding": [0.0, 1.0],
        }  # fmt: skip
        for j, scale in enumerate(SCALES):
            ok = bool(correct[i, j])
            row.update({
                f"answer_{scale}": "a" if ok else "b", f"score_{scale}": float(ok), f"correct_{scale}": ok,
                f"confidence_{scale}": float(confidences[i, j]), f"tokens_{scale}": scale, f"eos_{scale}": True,
            })  # fmt: skip
        first = int(np.argmax(correct[i])) if correct[i].any() else 0
        monotone = next((j for j in range(5) if correct[i, j:].all()), 0)
        row.update(
            oracle_scale=SCALES[first], oracle_none_correct=not correct[i].any(),
            oracle_monotone_scale=SCALES[monotone], oracle_monotone_unreachable=not correct[i, -1],
        )  # fmt: skip
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=oracle_schema(SCALES))


class KnownRouter(BaseEstimator):
    """A fitted 'predictor' with given per-query probabilities (by sample id): what evaluate_routing, the
    calibrated and the certified routers need (``scales_``, ``threshold_``, ``predict_proba``)."""

    def __init__(self, proba: np.ndarray, threshold: float = 0.5) -> None:
        self.proba, self.threshold = proba, threshold
        self.by_id_ = {f"q{i}": row for i, row in enumerate(np.asarray(proba, dtype=np.float64))}
        self.scales_, self.threshold_, self.target = SCALES, threshold, "correct"

    def fit(self, X=None, y=None) -> KnownRouter:
        return self  # already "fitted": its probabilities are given

    def predict_proba(self, X) -> np.ndarray:
        return np.stack([self.by_id_[i] for i in X.column("sample_id")])
