"""Certified routing thresholds and prices: Learn-then-Test (Angelopoulos et al., 2021) on the paired accuracy drop.

A router at threshold (or price) ``t`` sends each query to a scale; against always answering at the largest scale, the
*paired loss* of a query is ``correct_largest - correct_routed`` (-1, 0 or 1). We want the cheapest threshold whose
expected loss (the drop in accuracy below always-largest) is at most ``epsilon``, with probability at least
``1 - delta`` over the draw of the ``n`` labelled calibration queries.

Learn-then-Test turns that into hypothesis tests: for each candidate threshold, ``H0: drop > epsilon``, rejected
with a valid p-value; candidates are tested in a fixed order, strictest first (fixed-sequence testing), and we
stop at the first one not rejected. Every rejected candidate is certified; the family-wise error is at most
``delta``. Always-largest itself has a loss of exactly 0 and needs no test.

Three valid p-values are offered (:data:`P_VALUES`):

* ``binomial``: an exact binomial test on *loss events* (largest right, routed wrong). It ignores gains (largest
  wrong, routed right), so it bounds the drop from above and stays valid; simple and exact.
* ``berger_boos``: an exact test on the paired loss itself (losses minus gains), whose null distribution depends
  on the unknown gain rate; Berger & Boos (1994): maximise the p-value over a ``1 - gamma`` Clopper-Pearson
  interval for the gain rate and add ``gamma``. It credits gains, which an M3 model has (a coarse scale is
  sometimes right where the full one is wrong), so it can certify cheaper thresholds.
* ``betting``: a test martingale on the paired loss (Waudby-Smith & Ramdas, 2023; aGRAPA bets) with Ville's
  inequality; variance-adaptive, valid at any sample size.

``auto`` picks ``berger_boos`` or ``binomial`` from ``(n, epsilon, delta)`` only (:func:`resolve_p_value`), so the
choice stays valid: Berger-Boos pays for its nuisance interval, which at small ``n`` is so wide that it cannot
certify even a candidate with no loss at all, where the binomial test can.

Everything here is a pure function of arrays; the estimator wrapper lives with the predictors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

P_VALUES = ("binomial", "berger_boos", "betting")
P_VALUE_CHOICES = (*P_VALUES, "auto")  # "auto": binomial or berger_boos, chosen from (n, epsilon, delta) alone
DEFAULT_P_VALUE = "auto"  # measured: Berger-Boos certifies the fewest tokens at n = 500 and more, binomial at n = 200
BERGER_BOOS_GAMMA_SHARE = 0.1  # gamma = this share of delta: the nuisance interval's miss probability
NUISANCE_GRID = 64


def paired_outcomes(correct: np.ndarray, routed_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(losses, gains)`` booleans per query: largest scale right and routed scale wrong, and the reverse.

    ``correct``: ``(n, scales)`` correctness, columns in increasing scale order (the last one is the largest);
    ``routed_index``: ``(n,)`` or ``(m, n)`` column index each query is routed to (``m`` candidate routers).
    """
    correct = np.asarray(correct, dtype=bool)
    routed_index = np.asarray(routed_index, dtype=np.int64)
    largest = correct[:, -1]
    routed = np.take_along_axis(correct, routed_index.reshape(-1, correct.shape[0]).T, axis=1).T
    routed = routed.reshape(routed_index.shape)
    return largest & ~routed, ~largest & routed


# ----------------------------------------------------------------------------------------------------
# p-values for H0: E[loss - gain] > epsilon


def binomial_p_value(losses: int, n: int, epsilon: float) -> float:
    """Exact p-value of ``H0: P(loss event) > epsilon`` from ``losses`` events in ``n`` queries:
    ``P(Binomial(n, epsilon) <= losses)``. The drop is at most the loss-event rate, so rejecting this rejects
    ``drop > epsilon`` too."""
    _check_epsilon(epsilon)
    if n == 0:
        return 1.0
    return float(stats.binom.cdf(losses, n, epsilon))


def _lower_tail_of_difference(n: int, loss_rates: np.ndarray, gain_rates: np.ndarray, observed: int) -> np.ndarray:
    """``P(L - G <= observed)`` for ``(L, G, rest) ~ Multinomial(n; loss_rate, gain_rate, rest)``, one value per
    ``(loss_rate, gain_rate)`` pair: ``sum_g P(G = g) * P(L <= observed + g | G = g)``, with
    ``L | G = g ~ Binomial(n - g, loss_rate / (1 - gain_rate))``."""
    gains = np.arange(n + 1)[None, :]
    gain_rates, loss_rates = np.asarray(gain_rates)[:, None], np.asarray(loss_rates)[:, None]
    weight = stats.binom.pmf(gains, n, gain_rates)
    conditional = np.clip(loss_rates / np.maximum(1.0 - gain_rates, 1e-300), 0.0, 1.0)
    tail = stats.binom.cdf(observed + gains, n - gains, conditional)
    return np.clip((weight * tail).sum(axis=1), 0.0, 1.0)


@lru_cache(maxsize=65536)
def berger_boos_p_value(losses: int, gains: int, n: int, epsilon: float, gamma: float) -> float:
    """Exact p-value of ``H0: P(loss) - P(gain) >= epsilon`` from the counts of losses and gains in ``n`` queries.

    The statistic is ``losses - gains`` (small values speak against H0). Its null distribution at the boundary
    ``P(loss) = P(gain) + epsilon`` depends on the gain rate; the p-value is the largest tail probability over a
    ``1 - gamma`` Clopper-Pearson interval for the gain rate, plus ``gamma`` (Berger & Boos, 1994). Larger loss
    rates only make the statistic larger, so the boundary is the worst case. (Cached: neighbouring thresholds
    often route alike.)
    """
    _check_epsilon(epsilon)
    if n == 0:
        return 1.0
    if not 0 < gamma < 1:
        raise ValueError(f"gamma must be in (0, 1), got {gamma}")
    low = 0.0 if gains == 0 else stats.beta.ppf(gamma / 2, gains, n - gains + 1)
    high = 1.0 if gains == n else stats.beta.ppf(1 - gamma / 2, gains + 1, n - gains)
    high = min(high, (1.0 - epsilon) / 2)  # P(loss) + P(gain) <= 1 at the boundary
    if low > high:
        return 1.0
    grid = np.unique(np.concatenate([np.linspace(low, high, NUISANCE_GRID), [low, high]]))
    worst = _lower_tail_of_difference(n, grid + epsilon, grid, losses - gains).max()
    return float(min(1.0, worst + gamma))


def betting_p_value(paired: np.ndarray, epsilon: float, max_bet: float = 0.75, seed: int = 0) -> float:
    """p-value of ``H0: E[paired] > epsilon`` for paired losses in [-1, 1], from a test martingale.

    ``Y = (1 - paired) / 2`` lies in [0, 1] and H0 says ``E[Y] < m = (1 - epsilon) / 2``. The capital
    ``K_t = prod(1 + b_i (Y_i - m))`` with predictable bets ``b_i`` in ``[0, max_bet / m]`` (aGRAPA: the running
    mean's excess over ``m`` divided by the running second moment) is a nonnegative supermartingale under H0,
    so ``P(sup K_t >= 1 / alpha) <= alpha`` (Ville) and ``1 / max K_t`` is a valid p-value. The order of the
    queries is a seeded permutation, fixed before looking at the losses.
    """
    _check_epsilon(epsilon)
    values = np.asarray(paired, dtype=np.float64)
    if values.size == 0:
        return 1.0
    order = np.random.default_rng(seed).permutation(values.size)
    y = (1.0 - values[order]) / 2.0
    m = (1.0 - epsilon) / 2.0
    capital, best = 1.0, 1.0
    total, squares = 0.5, 0.25  # a prior pseudo-observation at 1/2 keeps the first bets small
    for count, value in enumerate(y, start=1):
        mean = total / count
        excess = mean - m
        variance = squares / count - mean * mean
        bet = 0.0 if excess <= 0 else min(excess / (variance + excess * excess), max_bet / m)
        capital *= 1.0 + bet * (value - m)
        best = max(best, capital)
        total += value
        squares += value * value
    return float(min(1.0, 1.0 / best))


def p_value(method: str, losses: np.ndarray, gains: np.ndarray, epsilon: float, delta: float, seed: int = 0) -> float:
    """The ``method`` p-value (:data:`P_VALUES`) of ``H0: drop > epsilon`` for one candidate router's outcomes."""
    losses, gains = np.asarray(losses, dtype=bool), np.asarray(gains, dtype=bool)
    n = losses.size
    if method == "binomial":
        return binomial_p_value(int(losses.sum()), n, epsilon)
    if method == "berger_boos":
        gamma = BERGER_BOOS_GAMMA_SHARE * delta
        return berger_boos_p_value(int(losses.sum()), int(gains.sum()), n, float(epsilon), float(gamma))
    if method == "betting":
        return betting_p_value(losses.astype(np.float64) - gains.astype(np.float64), epsilon, seed=seed)
    raise ValueError(f"unknown p-value {method!r}; choose one of {P_VALUES}")


def resolve_p_value(method: str, n: int, epsilon: float, delta: float) -> str:
    """``method``, or for ``"auto"`` the one to use with ``n`` calibration queries: ``berger_boos`` when its p-value
    for the best possible evidence (no loss, no gain) is at most ``delta / 2`` (room left to credit gains), else
    ``binomial``. It looks at no label, so the test chosen is as valid as either."""
    if method != "auto":
        return method
    gamma = BERGER_BOOS_GAMMA_SHARE * delta
    return "berger_boos" if berger_boos_p_value(0, 0, int(n), float(epsilon), float(gamma)) <= delta / 2 else "binomial"


def _check_epsilon(epsilon: float) -> None:
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon (the tolerated accuracy drop) must be in (0, 1), got {epsilon}")


# ----------------------------------------------------------------------------------------------------
# fixed-sequence testing over candidate thresholds


@dataclass(frozen=True)
class Certificate:
    """What a certified threshold (or price) guarantees, and on what evidence.

    With probability at least ``1 - delta`` over the draw of the ``n`` calibration queries, routing by ``rule``
    (:data:`predictor.thresholds.RULES`) at ``threshold`` (the certified value: a threshold, or a price for the
    priced rule) loses at most ``epsilon`` accuracy against always answering at the largest scale, for queries
    exchangeable with the calibration set. ``threshold`` is None when no candidate was certified: the router then
    answers everything at the largest scale, which trivially meets the bound.
    """

    epsilon: float
    delta: float
    n: int
    threshold: float | None
    p_value_method: str
    p_value: float | None  # the certified candidate's p-value
    calibration_drop: float | None  # its empirical drop on the calibration set
    calibration_tokens: float | None  # its mean visual tokens on the calibration set
    tested: int  # candidates tested before the first non-rejection
    data_sha256: str | None = None  # identifies the calibration data
    rule: str = "threshold"  # the routing rule whose value was certified (saved before prices: "threshold")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict) -> Certificate:
        return cls(**state)


def fixed_sequence(p_values: Sequence[float], delta: float) -> int:
    """How many leading hypotheses fixed-sequence testing rejects at level ``delta``: test in order, stop at the
    first p-value above ``delta``. The family-wise error rate is at most ``delta``."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    for index, value in enumerate(p_values):
        if value > delta:
            return index
    return len(p_values)


def certify(
    correct: np.ndarray,
    routed_index: np.ndarray,
    thresholds: Sequence[float],
    tokens: np.ndarray,
    epsilon: float,
    delta: float,
    method: str = DEFAULT_P_VALUE,
    seed: int = 0,
    data_sha256: str | None = None,
    rule: str = "threshold",
) -> Certificate:
    """Learn-then-Test: the cheapest of the candidate ``thresholds`` certified to lose at most ``epsilon``.

    ``routed_index[j]`` is the ``(n,)`` routing (column indices of ``correct``) at ``thresholds[j]``; the
    candidates must come ordered strictest first (most tokens first), fixed before looking at the labels (e.g.
    decreasing thresholds, or increasing prices for ``rule="price"``: the candidates are then prices). ``tokens``:
    ``(n, scales)`` visual tokens, for the reported cost. Testing runs the sequence in that order, stops at the
    first non-rejection and returns the last certified candidate.
    """
    if method not in P_VALUE_CHOICES:
        raise ValueError(f"unknown p-value {method!r}; choose one of {P_VALUE_CHOICES}")
    correct = np.asarray(correct, dtype=bool)
    method = resolve_p_value(method, correct.shape[0], epsilon, delta)
    routed_index = np.asarray(routed_index, dtype=np.int64)
    if routed_index.ndim != 2 or routed_index.shape != (len(thresholds), correct.shape[0]):
        raise ValueError(
            f"routed_index must be (candidates, n) = ({len(thresholds)}, {correct.shape[0]}), got {routed_index.shape}"
        )
    losses, gains = paired_outcomes(correct, routed_index)
    p_values = []
    for index in range(len(thresholds)):
        if index and np.array_equal(routed_index[index], routed_index[index - 1]):
            p_values.append(p_values[-1])  # the same routing as the previous candidate: the same evidence
        else:
            p_values.append(p_value(method, losses[index], gains[index], epsilon, delta, seed))
        if p_values[-1] > delta:
            break
    certified = fixed_sequence(p_values, delta)
    n = correct.shape[0]
    if certified == 0:
        return Certificate(epsilon, delta, n, None, method, None, None, None, len(p_values), data_sha256, rule)
    best = certified - 1
    drop = float((losses[best].astype(float) - gains[best].astype(float)).mean()) if n else None
    cost = float(np.take_along_axis(np.asarray(tokens, dtype=float), routed_index[best][:, None], axis=1).mean())
    return Certificate(
        epsilon, delta, n, float(thresholds[best]), method, float(p_values[best]), drop, cost, len(p_values),
        data_sha256, rule,
    )  # fmt: skip
