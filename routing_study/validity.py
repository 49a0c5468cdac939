"""Does a certificate keep its promise, and what does it cost? Resplit studies of Learn-then-Test routers.

A labelled oracle (queries the routers were not fitted on) is split at random, by image, into ``n`` calibration
queries and the rest, many times. On every split each router is certified on the calibration part
(:func:`predictor.risk_control.certify`) and run on the rest at its certified threshold; the study records the
test drop below always-largest and the visual tokens processed.

* **validity** (:func:`validity_rows`): the share of splits whose test drop exceeds ``epsilon`` should be at most
  ``delta``; with a finite number of splits it is compared with ``delta`` plus binomial slack (the 99 % quantile of
  Binomial(splits, delta) / splits). The test part is finite too, so its drop is noisy: the share slightly
  overstates the true miss rate.
* **efficiency** (:func:`efficiency_rows`): mean tokens at the certified threshold against ``epsilon``.

Routers are :class:`Candidates`: a fixed, ordered list of candidate routings (strictest first), computed once
for every query: a learned or question-only router's threshold grid (:func:`threshold_candidates`), or the fixed
scales below the largest, largest first (:func:`fixed_scale_candidates`: the best certified fixed scale).
Everything here is pure; ``scripts/certify_validity.py`` writes the tables and the plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from predictor.calibration import CERTIFIED_GRID
from predictor.data import grouped_sample
from predictor.risk_control import DEFAULT_P_VALUE, certify
from predictor.thresholds import route_by_threshold

EFFICIENCY_EPSILONS = tuple(np.round(np.arange(0.01, 0.1001, 0.01), 2).tolist())
SLACK_QUANTILE = 0.99


@dataclass
class Candidates:
    """One router's candidate routings for Learn-then-Test, fixed before looking at any label.

    ``routed[j]``: ``(N,)`` column index (scale) of every query under the ``j``-th candidate, strictest first;
    ``labels[j]``: its parameter (a threshold, or a scale); ``costs``: ``(N, scales)`` visual tokens processed.
    """

    name: str
    kind: str  # learned | question-only | attribute | fixed
    routed: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    costs: np.ndarray = field(repr=False)

    def routing(self, label) -> np.ndarray:
        """``(N,)`` column indices at the candidate ``label`` (the largest scale when ``label`` is None)."""
        if label is None:
            return np.full(self.routed.shape[1], self.costs.shape[1] - 1)
        return self.routed[int(np.flatnonzero(self.labels == label)[0])]


def threshold_candidates(
    name: str, kind: str, proba: np.ndarray, scales: Sequence[int], costs: np.ndarray, grid=CERTIFIED_GRID
) -> Candidates:
    """A threshold router's candidates: the threshold rule on ``proba`` at every threshold of ``grid`` (decreasing:
    strictest first), as :class:`predictor.calibration.CertifiedRouter` tests them."""
    scale_array = np.asarray(scales)
    routed = np.stack([np.searchsorted(scale_array, route_by_threshold(proba, scales, t)) for t in grid])
    return Candidates(name, kind, routed.astype(np.int8), np.asarray(grid, dtype=np.float64), np.asarray(costs))


def fixed_scale_candidates(scales: Sequence[int], costs: np.ndarray, name: str = "fixed scale") -> Candidates:
    """Every fixed scale below the largest, largest first: certifying them in this order gives the cheapest fixed
    scale that keeps the promise (the best certified fixed scale)."""
    n = len(costs)
    order = list(range(len(scales) - 2, -1, -1))
    routed = np.stack([np.full(n, column) for column in order]) if order else np.zeros((0, n))
    labels = np.asarray([scales[c] for c in order], dtype=np.float64)
    return Candidates(name, "fixed", routed.astype(np.int8), labels, np.asarray(costs))


def resplits(groups, n_calibration: int, count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` random ``(calibration, test)`` index splits by image, about ``n_calibration`` queries calibrating."""
    return [grouped_sample(groups, n_calibration, seed + r) for r in range(count)]


def resplit_records(
    correct: np.ndarray,
    routers: Sequence[Candidates],
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    settings: Sequence[tuple[float, str]],
    delta: float,
) -> list[dict]:
    """One record per split, router and ``(epsilon, p-value method)`` setting: the certified label, the test drop
    (largest scale's test accuracy minus the router's) and the mean tokens processed on the test part."""
    correct = np.asarray(correct, dtype=bool)
    records = []
    for index, (calibration, test) in enumerate(splits):
        largest = correct[test, -1].mean()
        for router in routers:
            cal_routed = router.routed[:, calibration]
            for epsilon, method in settings:
                certificate = certify(
                    correct[calibration], cal_routed, router.labels, router.costs[calibration], epsilon, delta, method
                )
                routed = router.routing(certificate.threshold)[test]
                records.append(
                    {
                        "split": index,
                        "router": router.name,
                        "kind": router.kind,
                        "epsilon": float(epsilon),
                        "method": method,
                        "n": len(calibration),
                        "label": certificate.threshold,
                        "certified": certificate.threshold is not None,
                        "test_drop": float(largest - correct[test, routed].mean()),
                        "test_tokens": float(router.costs[test, routed].mean()),
                    }
                )
    return records


def binomial_bound(delta: float, count: int, quantile: float = SLACK_QUANTILE) -> float:
    """``delta`` plus binomial slack: the ``quantile`` of Binomial(count, delta) over ``count``. A valid procedure's
    share of misses over ``count`` independent splits stays under it with probability ``quantile``."""
    return float(stats.binom.ppf(quantile, count, delta) / count)


def validity_rows(records: Sequence[dict], delta: float) -> list[dict]:
    """Per router, p-value method and epsilon: the share of splits whose test drop exceeds epsilon, against
    ``delta`` plus binomial slack, with the mean test drop and tokens."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((record["router"], record["kind"], record["method"], record["epsilon"]), []).append(record)
    rows = []
    for (router, kind, method, epsilon), group in groups.items():
        drops = np.array([r["test_drop"] for r in group])
        share = float((drops > epsilon + 1e-12).mean())
        bound = binomial_bound(delta, len(group))
        rows.append(
            {
                "router": router,
                "kind": kind,
                "method": method,
                "epsilon": epsilon,
                "delta": delta,
                "n": int(np.median([r["n"] for r in group])),
                "splits": len(group),
                "exceed_share": share,
                "bound": bound,
                "valid": share <= bound,
                "mean_test_drop": float(drops.mean()),
                "mean_tokens": float(np.mean([r["test_tokens"] for r in group])),
                "certified_share": float(np.mean([r["certified"] for r in group])),
            }
        )
    return rows


def efficiency_rows(records: Sequence[dict]) -> list[dict]:
    """Per router, method and epsilon: mean tokens processed at the certified threshold (and its spread), the
    mean test drop and the share of splits that certified anything cheaper than the largest scale."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((record["router"], record["kind"], record["method"], record["epsilon"]), []).append(record)
    rows = []
    for (router, kind, method, epsilon), group in sorted(groups.items(), key=lambda item: item[0]):
        tokens = np.array([r["test_tokens"] for r in group])
        rows.append(
            {
                "router": router,
                "kind": kind,
                "method": method,
                "epsilon": epsilon,
                "splits": len(group),
                "mean_tokens": float(tokens.mean()),
                "tokens_p10": float(np.quantile(tokens, 0.1)),
                "tokens_p90": float(np.quantile(tokens, 0.9)),
                "mean_test_drop": float(np.mean([r["test_drop"] for r in group])),
                "certified_share": float(np.mean([r["certified"] for r in group])),
            }
        )
    return rows


def study_settings(
    validity_epsilons: Sequence[float],
    methods: Sequence[str],
    efficiency_epsilons: Sequence[float] = EFFICIENCY_EPSILONS,
    efficiency_method: str = DEFAULT_P_VALUE,
) -> list[tuple[float, str]]:
    """The ``(epsilon, method)`` pairs a study certifies: every method at the validity epsilons, and the efficiency
    method along the epsilon grid (no pair twice)."""
    pairs = [(float(e), m) for e in validity_epsilons for m in methods]
    pairs += [(float(e), efficiency_method) for e in efficiency_epsilons]
    return list(dict.fromkeys(pairs))


def router_candidates(data, routers: dict, include_fixed: bool = True) -> list[Candidates]:
    """:class:`Candidates` of every router (fitted predictors, calibrated routers or reference routers: their
    threshold grid on ``data``, costs with their probes) and, with ``include_fixed``, of the fixed scales."""
    from predictor.costs import probe_scale_of, routing_costs
    from predictor.reference import ReferenceRouter, reference_kind

    tokens = data.tokens()
    candidates = []
    for name, router in routers.items():
        inner = getattr(router, "predictor", router)
        kind = reference_kind(inner) if isinstance(inner, ReferenceRouter) else "learned"
        costs = routing_costs(tokens, data.scales, probe_scale_of(router))
        candidates.append(threshold_candidates(name, kind, router.predict_proba(data), data.scales, costs))
    if include_fixed:
        candidates.append(fixed_scale_candidates(data.scales, tokens, "best certified fixed scale"))
    return candidates


def validity_study(
    oracle,
    routers: dict,
    n_calibration: int = 500,
    count: int = 200,
    validity_epsilons: Sequence[float] = (0.02, 0.05),
    delta: float = 0.1,
    methods: Sequence[str] = ("binomial", "berger_boos", "betting"),
    efficiency_epsilons: Sequence[float] = EFFICIENCY_EPSILONS,
    efficiency_method: str = DEFAULT_P_VALUE,
    seed: int = 0,
) -> tuple[list[dict], list[dict]]:
    """``(validity rows, efficiency rows)`` of the routers on ``count`` resplits of ``oracle`` (folder, table or
    OracleSet) into ``n_calibration`` queries (whole images) and the rest (see :func:`resplit_records`)."""
    from predictor.data import as_oracle_set

    data = as_oracle_set(oracle)
    candidates = router_candidates(data, routers)
    splits = resplits(data, n_calibration, count, seed)
    settings = study_settings(validity_epsilons, methods, efficiency_epsilons, efficiency_method)
    records = resplit_records(data.correct(), candidates, splits, settings, delta)
    chosen = set(map(float, validity_epsilons))
    validity = validity_rows([r for r in records if r["epsilon"] in chosen and r["method"] in methods], delta)
    efficiency = efficiency_rows([r for r in records if r["method"] == efficiency_method])
    return validity, efficiency
