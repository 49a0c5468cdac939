"""The two per-query routing rules and what counts as a valid threshold or price: pure functions on arrays.

Every router in the project decides with one of two rules, per query and from a score per scale:

* the **threshold rule** (:func:`route_by_threshold`): the smallest scale whose score reaches a threshold, else the
  largest. A scale predictor's scores are probabilities that the scale is enough; the confidence cascade's are the
  answers' mean token log-probabilities; ``AdaptiveM3`` adds a per-query mask of the scales within its token cap.
* the **priced rule** (:func:`route_by_price`): the scale that maximises ``P(correct at s) - price * tokens_s /
  tokens_largest``, the per-query form of the batch knapsack (:mod:`predictor.budget`): each token has a price in
  accuracy, and a query buys a larger scale only while the gain in P(correct) pays for it. Unlike the threshold
  rule it does not send a query that no scale answers to the largest scale.

:func:`route_by_rule` routes by either, named (:data:`RULES`); :func:`operating_rule` says which rule and value a
router uses when a caller passes a threshold, a price or neither. Each rule has one validity check
(:func:`check_threshold`, :func:`check_price`), which ``predict``, calibration and ``AdaptiveM3`` all use.

For probabilities, a threshold is valid in ``[0, 1]``. :func:`clip_probabilities` keeps every scale below the
largest strictly under 1, so the two ends of the range always mean the two ends of the curve: threshold 0 routes
every query to the smallest scale, threshold 1 every query to the largest. Calibration therefore never needs a
threshold above 1. A price is valid from 0 (the most probable scale) up; a high price routes every query to the
smallest scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.5
BELOW_ONE = float(np.nextafter(1.0, 0.0))  # the largest float under 1: "almost sure", never "sure"
RULES = ("threshold", "price")
TIE_TOLERANCE = 1e-12  # priced values this close to the best are ties, won by the smaller scale (rounding-proof)
# candidate prices, cheapest routing last, fixed before any data: 0, then geometric up to a price at which every
# query with probabilities in [0, 1] goes to the smallest scale (each extra token costs more than any gain)
PRICE_GRID = np.concatenate([[0.0], np.geomspace(1e-4, 1e3, 1000)])


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
        allowed = _check_allowed(allowed, scores.shape)
        reaches &= allowed
        fallback = len(scales) - 1 - allowed[:, ::-1].argmax(axis=1)  # the largest allowed scale
    index = np.where(reaches.any(axis=1), reaches.argmax(axis=1), fallback)
    return scales[index]


def route_by_price(
    scores: np.ndarray,
    scales: Sequence[int],
    price: float,
    tokens: np.ndarray | Sequence[int] | None = None,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """``(n,)`` chosen scales: per row, the scale maximising ``score_s - price * tokens_s / tokens_largest``.

    ``tokens``: the visual tokens each scale costs, ``(scales,)`` or ``(n, scales)`` (a probe predictor's costs,
    which need not grow with the scale: the probed scale reuses the probe's answer; LLaVA-NeXT counts; default: the
    scales themselves), all positive; each row is divided by its last column (the largest scale), so ``price`` is
    accuracy per share of the largest scale's tokens. Ties (within :data:`TIE_TOLERANCE`) go to the fewest tokens,
    then to the smaller scale. ``allowed`` (``(n, scales)`` bool) restricts each row to some
    scales, as in :func:`route_by_threshold`. Price 0 picks the most probable scale; a higher price never picks a
    scale with more tokens (monotone), and a price above every gain per token picks the smallest (allowed) scale.
    """
    scores = np.asarray(scores, dtype=np.float64)
    scales = np.asarray(scales)
    if scores.ndim != 2 or scores.shape[1] != len(scales):
        raise ValueError(f"scores must be (n, {len(scales)} scales), got shape {scores.shape}")
    price = check_price(price)
    cost = np.broadcast_to(np.asarray(scales if tokens is None else tokens, dtype=np.float64), scores.shape)
    if not (cost > 0).all():
        raise ValueError("tokens must be positive in every row")
    value = scores - price * (cost / cost[:, -1:])
    if allowed is not None:
        allowed = _check_allowed(allowed, scores.shape)
        value = np.where(allowed, value, -np.inf)
    ties = value >= value.max(axis=1, keepdims=True) - TIE_TOLERANCE
    return scales[np.where(ties, cost, np.inf).argmin(axis=1)]  # the cheapest tie; equal costs: the smaller scale


def route_by_rule(
    scores: np.ndarray,
    scales: Sequence[int],
    rule: str,
    value: float,
    tokens: np.ndarray | Sequence[int] | None = None,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """``(n,)`` chosen scales by the named ``rule`` (:data:`RULES`) at ``value`` (a threshold or a price);
    ``tokens`` is what the priced rule weighs (the threshold rule ignores it)."""
    if rule == "threshold":
        return route_by_threshold(scores, scales, value, allowed)
    if rule == "price":
        return route_by_price(scores, scales, value, tokens, allowed)
    raise ValueError(f"unknown routing rule {rule!r}; choose one of {RULES}")


def operating_rule(
    rule: str, threshold: float | None, price: float | None, *, at_threshold=None, at_price=None
) -> tuple[str, float]:
    """``(rule, value)`` a router routes at: ``at_threshold`` or ``at_price`` when a caller passes one (not both),
    else its own ``rule`` with its ``threshold`` or ``price``. The value is checked (:func:`check_threshold`,
    :func:`check_price`)."""
    if at_threshold is not None and at_price is not None:
        raise ValueError("pass a threshold or a price, not both: they are two routing rules")
    if at_threshold is not None:
        return "threshold", check_threshold(at_threshold)
    if at_price is not None:
        return "price", check_price(at_price)
    if rule == "price":
        return "price", check_price(price)
    if rule != "threshold":
        raise ValueError(f"unknown routing rule {rule!r}; choose one of {RULES}")
    return "threshold", check_threshold(threshold)


def check_price(price: float) -> float:
    """``price`` as a float, or ``ValueError`` unless it is a valid price: finite and at least 0."""
    try:
        value = float(price)
    except (TypeError, ValueError):
        raise ValueError(f"price must be a number >= 0, got {price!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"price must be a finite number >= 0, got {price}")
    return value


def _check_allowed(allowed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    allowed = np.asarray(allowed, dtype=bool)
    if allowed.shape != shape:
        raise ValueError(f"allowed must have the scores' shape {shape}, got {allowed.shape}")
    empty = np.flatnonzero(~allowed.any(axis=1))
    if empty.size:
        raise ValueError(f"row(s) {empty.tolist()} allow no scale")
    return allowed


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


def candidate_prices(proba: np.ndarray, tokens: np.ndarray | Sequence[int], max_quantiles: int = 400) -> np.ndarray:
    """Prices that trace the priced rule's whole curve: :data:`PRICE_GRID` and quantiles of the gains per token
    between scales (where a query's choice changes), sorted and unique. ``tokens``: ``(scales,)`` or ``(n, scales)``,
    as in :func:`route_by_price`."""
    proba = np.asarray(proba, dtype=np.float64)
    cost = np.broadcast_to(np.asarray(tokens, dtype=np.float64), proba.shape)
    cost = cost / cost[:, -1:]
    rows, columns = np.triu_indices(proba.shape[1], k=1)
    slopes = (proba[:, columns] - proba[:, rows]) / (cost[:, columns] - cost[:, rows])
    slopes = slopes[np.isfinite(slopes) & (slopes > 0)]
    quantiles = np.quantile(slopes, np.linspace(0, 1, max_quantiles)) if slopes.size else np.zeros(0)
    return np.unique(np.concatenate([PRICE_GRID, quantiles]))
