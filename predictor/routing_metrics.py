"""Routing metrics (RouteLLM / RouterBench protocol, adapted to token scales): pure functions on arrays.

A *routing* says, for every sample, which scale answers it. It is either an array of chosen scales ``(n,)`` or a
weight matrix ``(n, scales)`` whose rows sum to 1 (a random router's expected outcome, computed exactly). Its
accuracy is the mean over samples of the per-scale value (``correct_{s}`` or ``score_{s}``) at the chosen scale;
its cost is the mean of ``tokens_{s}`` at the chosen scale.

Sweeping a router's parameter gives points ``(mean tokens, accuracy)``; a :class:`Curve` is those points sorted by
tokens and read by linear interpolation (mixing two operating points at random reaches any point between them).
On the token interval ``[weak, strong]`` (the mean tokens of the smallest and of the largest scale):

* ``AUC`` is the mean accuracy over the interval (a fixed model's AUC is its accuracy);
* ``APGR = (AUC_router - acc_weak) / (acc_strong - acc_weak)``; on a linear token axis most of the interval lies
  where every router is already near the strong accuracy, so a log-token variant (each doubling of tokens weighs
  the same) is offered beside it;
* ``CPT(x)`` is the fewest mean tokens at which the curve recovers the fraction ``x`` of the weak-to-strong gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def as_weights(routing, scales: Sequence[int]) -> np.ndarray:
    """``(n, scales)`` weights of a routing given as chosen scales ``(n,)`` (one-hot) or as weights already."""
    routing = np.asarray(routing)
    scales = list(scales)
    if routing.ndim == 2:
        if routing.shape[1] != len(scales):
            raise ValueError(f"routing weights must have {len(scales)} columns (one per scale), got {routing.shape}")
        return routing.astype(np.float64)
    unknown = sorted(set(routing.tolist()) - set(scales))
    if unknown:
        raise ValueError(f"routing picks scale(s) {unknown} that are not among the scales {scales}")
    index = np.searchsorted(np.asarray(scales), routing)
    weights = np.zeros((len(routing), len(scales)))
    weights[np.arange(len(routing)), index] = 1.0
    return weights


def routing_point(routing, values: np.ndarray, tokens: np.ndarray, scales: Sequence[int]) -> tuple[float, float]:
    """``(mean tokens, accuracy)`` of a routing; ``values`` and ``tokens`` are ``(n, scales)``."""
    weights = as_weights(routing, scales)
    if weights.shape != values.shape or weights.shape != tokens.shape:
        raise ValueError(f"routing {weights.shape}, values {values.shape} and tokens {tokens.shape} must match")
    if not len(weights):
        return float("nan"), float("nan")
    return float((weights * tokens).sum(1).mean()), float((weights * values).sum(1).mean())


def selection_rates(routing, oracle_scales: np.ndarray, scales: Sequence[int]) -> dict[str, float]:
    """Share of samples routed below (``under``: too few tokens), at (``exact``) and above (``over``) their
    oracle label."""
    weights = as_weights(routing, scales)
    oracle_index = np.searchsorted(np.asarray(scales), np.asarray(oracle_scales))
    columns = np.arange(len(scales))[None, :]
    below = (weights * (columns < oracle_index[:, None])).sum(1)
    above = (weights * (columns > oracle_index[:, None])).sum(1)
    if not len(weights):
        return {"under": float("nan"), "exact": float("nan"), "over": float("nan")}
    return {"under": float(below.mean()), "exact": float(1 - below.mean() - above.mean()), "over": float(above.mean())}


@dataclass(frozen=True)
class Curve:
    """Accuracy against mean tokens, sorted by tokens; where several points share a token count, the best."""

    tokens: np.ndarray
    accuracy: np.ndarray

    @classmethod
    def from_points(cls, tokens, accuracy) -> Curve:
        tokens = np.asarray(tokens, dtype=np.float64)
        accuracy = np.asarray(accuracy, dtype=np.float64)
        if tokens.shape != accuracy.shape or tokens.ndim != 1 or not len(tokens):
            raise ValueError(f"a curve needs equally long, non-empty 1-D tokens and accuracy, got {tokens.shape}")
        order = np.lexsort((-accuracy, tokens))
        tokens, accuracy = tokens[order], accuracy[order]
        keep = np.ones(len(tokens), bool)
        keep[1:] = tokens[1:] != tokens[:-1]  # first of each token count = its best accuracy
        return cls(tokens[keep], accuracy[keep])

    def at(self, tokens) -> np.ndarray:
        """Accuracy at ``tokens`` by linear interpolation (flat beyond the curve's ends)."""
        return np.interp(tokens, self.tokens, self.accuracy)

    def extended(self, low: float, low_accuracy: float, high: float, high_accuracy: float) -> Curve:
        """The curve with the fixed weak / strong points added where it does not reach ``low`` / ``high``.

        A router can always fall back to the smallest or the largest scale, so these points are reachable.
        """
        tokens, accuracy = list(self.tokens), list(self.accuracy)
        if self.tokens[0] > low:
            tokens.insert(0, low)
            accuracy.insert(0, low_accuracy)
        if self.tokens[-1] < high:
            tokens.append(high)
            accuracy.append(high_accuracy)
        return Curve.from_points(tokens, accuracy)


def auc(curve: Curve, low: float, high: float, log_tokens: bool = False) -> float:
    """Mean accuracy of the piecewise-linear curve over ``[low, high]`` mean tokens (exact trapezoids).

    With ``log_tokens`` the mean is taken over log tokens (each doubling of tokens weighs the same), on a dense
    geometric grid; the curve is still interpolated linearly in tokens."""
    if not high > low or (log_tokens and low <= 0):
        raise ValueError(f"the token interval must have high > low (> 0 for log tokens), got [{low}, {high}]")
    inside = curve.tokens[(curve.tokens > low) & (curve.tokens < high)]
    grid = np.concatenate([[low], inside, [high]])
    if log_tokens:
        grid = np.log(np.unique(np.concatenate([grid, np.geomspace(low, high, 4097)])))
        values = curve.at(np.exp(grid))
    else:
        values = curve.at(grid)
    return float(((values[1:] + values[:-1]) / 2 * np.diff(grid)).sum() / (grid[-1] - grid[0]))


def apgr(curve: Curve, weak: tuple[float, float], strong: tuple[float, float], log_tokens: bool = False) -> float:
    """Average performance gap recovered; ``weak``/``strong`` are ``(mean tokens, accuracy)`` of the smallest and
    largest scale. NaN when the largest scale is not more accurate than the smallest (no gap to recover).
    ``log_tokens`` averages over log tokens instead (see :func:`auc`)."""
    (low, weak_acc), (high, strong_acc) = weak, strong
    if strong_acc <= weak_acc:
        return float("nan")
    curve = curve.extended(low, weak_acc, high, strong_acc)
    return (auc(curve, low, high, log_tokens) - weak_acc) / (strong_acc - weak_acc)


def tokens_for_accuracy(curve: Curve, target: float) -> float:
    """The fewest mean tokens at which the interpolated curve reaches ``target`` accuracy (NaN if never)."""
    tokens, accuracy = curve.tokens, curve.accuracy
    if accuracy[0] >= target:
        return float(tokens[0])
    for i in range(1, len(tokens)):
        if accuracy[i] >= target:
            t0, t1, a0, a1 = tokens[i - 1], tokens[i], accuracy[i - 1], accuracy[i]
            return float(t0 + (target - a0) / (a1 - a0) * (t1 - t0)) if a1 > a0 else float(t1)
    return float("nan")


def cpt(curve: Curve, fraction: float, weak: tuple[float, float], strong: tuple[float, float]) -> float:
    """Call-performance threshold: mean tokens needed to recover ``fraction`` (e.g. 0.8) of the weak-to-strong
    accuracy gap. NaN when there is no gap, or the curve never gets there."""
    (low, weak_acc), (high, strong_acc) = weak, strong
    if strong_acc <= weak_acc:
        return float("nan")
    target = weak_acc + fraction * (strong_acc - weak_acc)
    return tokens_for_accuracy(curve.extended(low, weak_acc, high, strong_acc), target - 1e-12)


def cheapest_point_reaching(points: Sequence[dict], target: float, tolerance: float = 1e-12) -> dict | None:
    """Among realised operating points (dicts with ``tokens`` and ``accuracy``), the one with the fewest tokens whose
    accuracy is at least ``target``; None if none is."""
    reaching = [p for p in points if p["accuracy"] >= target - tolerance]
    return min(reaching, key=lambda p: (p["tokens"], -p["accuracy"])) if reaching else None


def operating_point(points: Sequence[dict], target: float) -> dict:
    """The cheapest point reaching ``target`` accuracy (:func:`cheapest_point_reaching`), else the most accurate
    point (the fewer tokens on a tie): where a router is run when it should match ``target``."""
    best = cheapest_point_reaching(points, target)
    return best if best is not None else max(points, key=lambda p: (p["accuracy"], -p["tokens"]))
