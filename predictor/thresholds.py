"""The threshold rule and what counts as a valid threshold: pure functions on arrays.

Every router in the project decides the same way: per query, the smallest scale whose score reaches a threshold,
else the largest (:func:`route_by_threshold`). A scale predictor's scores are probabilities that the scale is
enough; the confidence cascade's are the answers' mean token log-probabilities; ``AdaptiveM3`` adds a per-query
mask of the scales within its token cap.

For probabilities, a threshold is valid in ``[0, 1]`` (:func:`check_threshold`): ``predict``, calibration and
``AdaptiveM3`` all use this one check. :func:`clip_probabilities` keeps every scale below the largest strictly
under 1, so the two ends of the range always mean the two ends of the curve: threshold 0 routes every query to
the smallest scale, threshold 1 every query to the largest. Calibration therefore never needs a threshold above 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.5
BELOW_ONE = float(np.nextafter(1.0, 0.0))  # the largest float under 1: "almost sure", never "sure"


def route_by_threshold(
    scores: np.ndarray, scales: Sequence[int], threshold: float, allowed: np.ndarray | None = None
) -> np.ndarray:
    """``(n,)`` chosen scales: per row, the smallest scale whose score is ``>= threshold``, else the largest.

    ``allowed`` (``(n, scales)`` bool, optional) restricts each row to some scales (e.g. those within a token
    cap): the smallest allowed scale that reaches the threshold, else the largest allowed one. Monotone in the
    threshold: a higher threshold never picks a smaller scale. Any real threshold works here (the cascade's are
    log-probabilities); a threshold above every score routes to the largest (allowed) scale.
    """
    scores = np.asarray(scores)
    scales = np.asarray(scales)
    if scores.ndim != 2 or scores.shape[1] != len(scales):
        raise ValueError(f"scores must be (n, {len(scales)} scales), got shape {scores.shape}")
    reaches = scores >= threshold
    if allowed is None:
        fallback = np.full(len(scores), len(scales) - 1)
    else:
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != scores.shape:
            raise ValueError(f"allowed must have the scores' shape {scores.shape}, got {allowed.shape}")
        empty = np.flatnonzero(~allowed.any(axis=1))
        if empty.size:
            raise ValueError(f"row(s) {empty.tolist()} allow no scale")
        reaches &= allowed
        fallback = len(scales) - 1 - allowed[:, ::-1].argmax(axis=1)  # the largest allowed scale
    index = np.where(reaches.any(axis=1), reaches.argmax(axis=1), fallback)
    return scales[index]


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float, or ``ValueError`` unless it is a valid probability threshold: in ``[0, 1]``."""
    value = float(threshold)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return value


def clip_probabilities(proba: np.ndarray) -> np.ndarray:
    """``proba`` clipped to ``[0, 1]`` with every scale but the largest at most :data:`BELOW_ONE`.

    A cumulative sum of class probabilities can round above 1, and a saturated sigmoid rounds to exactly 1;
    either would let a scale below the largest pass threshold 1, and calibration would then need a threshold
    above 1 to route everything to the largest scale. The change is at most one float step.
    """
    proba = np.clip(np.asarray(proba, dtype=np.float64), 0.0, 1.0)
    proba[:, :-1] = np.minimum(proba[:, :-1], BELOW_ONE)
    return proba


def candidate_thresholds(proba: np.ndarray, max_quantiles: int = 400) -> np.ndarray:
    """Valid thresholds that trace a router's whole curve: an even grid over ``[0, 1]`` (0 routes every query to
    the smallest scale, 1 to the largest) and quantiles of the probabilities, sorted and unique."""
    values = np.asarray(proba, dtype=np.float64).ravel()
    quantiles = np.quantile(values, np.linspace(0, 1, max_quantiles)) if values.size else np.zeros(0)
    return np.unique(np.clip(np.concatenate([np.linspace(0, 1, 101), quantiles]), 0.0, 1.0))
