"""Routing baselines, as pure functions on the oracle's per-scale matrices ``(samples, scales)``.

* **fixed scale**: every query at one scale;
* **random routing at matched mean tokens**: each query goes to one of the two scales whose mean tokens bracket
  the target, at random, with the mix that gives the target mean; returned as exact expected weights;
* **the fixed-scale hull**: the best mix of ANY two fixed scales at the same mean tokens, i.e. the upper concave
  envelope of the fixed points: the strongest router that does not look at the query. It equals random routing
  only while the fixed curve is concave (a scale below the envelope is skipped);
* **confidence cascade**: answer at the smallest scale and escalate while the answer's confidence (mean token
  log-probability) is below a cut-off ``c``; the last scale answers regardless. It pays for every scale it tries
  (:func:`cascade_processed_tokens`), which the usual "tokens of the chosen scale" cost leaves out;
* **oracles**: the label columns (``oracle_scale``, ``oracle_monotone_scale``) as routings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from predictor.thresholds import route_by_threshold


def fixed_routing(n: int, scale: int) -> np.ndarray:
    """``(n,)``: every query at ``scale``."""
    return np.full(n, int(scale), dtype=np.int64)


def random_routing_weights(tokens: np.ndarray, target_tokens: float) -> np.ndarray:
    """``(n, scales)`` weights of the random router whose expected mean tokens equal ``target_tokens``.

    It mixes the two scales whose mean tokens bracket the target (clipped to the smallest / largest scale).
    Its accuracy is the linear interpolation of the fixed-scale points.
    """
    means = tokens.mean(axis=0) if len(tokens) else np.zeros(tokens.shape[1])
    if np.any(np.diff(means) <= 0):
        raise ValueError(f"mean tokens per scale must increase with the scale, got {means.tolist()}")
    weights = np.zeros(tokens.shape[1])
    target = float(np.clip(target_tokens, means[0], means[-1]))
    upper = int(np.searchsorted(means, target, side="left"))
    if upper == 0 or means[upper] == target:
        weights[upper] = 1.0
    else:
        share = (target - means[upper - 1]) / (means[upper] - means[upper - 1])
        weights[upper - 1], weights[upper] = 1 - share, share
    return np.tile(weights, (len(tokens), 1))


def fixed_hull_scales(tokens: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Indices of the scales on the upper concave envelope of the fixed points (mean tokens, mean accuracy),
    cheapest first: the scales the fixed-scale hull mixes. The first and the last scale are always on it."""
    points = np.stack([tokens.mean(axis=0), values.mean(axis=0)], axis=1) if len(tokens) else None
    if points is None:
        return np.arange(tokens.shape[1])
    hull: list[int] = []
    for index in range(len(points)):  # Andrew's monotone chain, upper half (x increases with the scale)
        while len(hull) >= 2:
            (x0, y0), (x1, y1), (x2, y2) = points[hull[-2]], points[hull[-1]], points[index]
            if (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0) >= 0:  # the middle point is not above the chord
                hull.pop()
            else:
                break
        hull.append(index)
    return np.asarray(hull)


def fixed_hull_weights(tokens: np.ndarray, values: np.ndarray, target_tokens: float) -> np.ndarray:
    """``(n, scales)`` weights of the fixed-scale hull at ``target_tokens`` mean tokens: the mix of the two hull
    scales (:func:`fixed_hull_scales`) whose mean tokens bracket the target. Query-blind, like random routing, but
    with the best pair of fixed scales rather than the adjacent pair."""
    on_hull = fixed_hull_scales(tokens, values)
    weights = np.zeros(tokens.shape[1])
    weights[on_hull] = random_routing_weights(tokens[:, on_hull], target_tokens)[0] if len(tokens) else 0.0
    return np.tile(weights, (len(tokens), 1))


def cascade_routing(confidences: np.ndarray, scales: Sequence[int], cutoff: float) -> np.ndarray:
    """``(n,)`` scales: the first scale whose answer has confidence ``>= cutoff``, else the largest (the threshold
    rule on confidences instead of probabilities)."""
    return route_by_threshold(confidences, scales, cutoff)


def cascade_processed_tokens(confidences: np.ndarray, tokens: np.ndarray, scales: Sequence[int], cutoff: float):
    """``(n,)`` visual tokens the cascade actually processed: every scale it tried, up to the one it stopped at."""
    chosen = np.searchsorted(np.asarray(scales), cascade_routing(confidences, scales, cutoff))
    tried = np.arange(len(scales))[None, :] <= chosen[:, None]
    return (tokens * tried).sum(axis=1)


def cascade_cutoffs(confidences: np.ndarray, max_quantiles: int = 300) -> np.ndarray:
    """Cut-offs that trace the cascade's whole curve: below every confidence (all stop at the smallest scale),
    quantiles of the confidences, and above every confidence (all escalate to the largest)."""
    values = np.asarray(confidences, dtype=np.float64).ravel()
    if not values.size:
        return np.array([-np.inf, np.inf])
    quantiles = np.quantile(values, np.linspace(0, 1, max_quantiles))
    return np.unique(np.concatenate([[-np.inf], quantiles, [values.max() + 1.0]]))
