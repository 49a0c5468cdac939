"""Routing evaluation on a test oracle: every predictor and baseline as an accuracy / mean-tokens curve, summarised.

:func:`evaluate_routing` sweeps each router (a predictor's threshold, the cascade's confidence cut-off, the random
router's token budget) and keeps every operating point; :func:`summarize_routing` turns the points into APGR,
CPT(50/80/95 %), the cheapest point that matches full-scale accuracy, under-/over-selection against the oracle
labels, the accuracy of the cascade and of random routing at the same mean tokens, and each predictor at its
calibrated and certified thresholds; :func:`family_rows` and :func:`budget_rows` break them down per question
family and per token budget (with the knapsack routing of each predictor at every budget). Everything here is
pure (no files); :mod:`routing_study.report` writes it as markdown, CSV, JSON and a plot, and
:mod:`predictor.calibration` chooses a predictor's threshold on calibration data.

Accuracy of a routing is the mean over samples of ``correct_{chosen scale}`` (``accuracy="correct"``, the
default) or of ``score_{chosen scale}`` (``"score"``); its cost is the mean visual tokens processed: those of the
chosen scale, plus, for a probe predictor, its probe's when the chosen scale is another
(:func:`predictor.costs.routing_costs`). The confidence cascade appears twice: costed at its final scale (as it is
usually reported) and at the tokens it processed (every scale it tried), the fair comparison for probes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from predictor.base import ScalePredictor
from predictor.budget import budget_routing
from predictor.calibration import CalibratedRouter, CertifiedRouter, certified_threshold, saved_certificate
from predictor.costs import probe_scale_of, routing_costs
from predictor.data import OracleSet, accuracy_values, as_oracle_set
from predictor.risk_control import Certificate
from predictor.routing_metrics import Curve, apgr, auc, cpt, operating_point, routing_point, selection_rates
from predictor.thresholds import candidate_thresholds, route_by_threshold

from .baselines import (
    cascade_cutoffs,
    cascade_processed_tokens,
    cascade_routing,
    fixed_hull_weights,
    fixed_routing,
    random_routing_weights,
)

Router = ScalePredictor | CalibratedRouter  # what evaluate_routing (and AdaptiveM3) route with
CPT_FRACTIONS = (0.5, 0.8, 0.95)
BUDGET_SHARES = (0.02, 0.05, 0.1, 0.15, 0.25, 0.5)  # token budgets, as shares of the largest scale's tokens
HULL_RANGE = (0.05, 0.5)  # where a router's curve is compared with the fixed-scale hull (shares of the largest scale)
HULL = "fixed-scale hull"
KNAPSACK_BATCH = None  # budget routing in the equal-budget table: the test set as one batch (a mean over all, as the
# sweep's); with batches of b queries each leaves at most one query's worth of its budget unused
SINGLE_POINT_KINDS = ("fixed", "oracle", "classifier")


@dataclass
class RouterResult:
    """All operating points of one router: ``points[i]`` has ``param`` (threshold, cut-off or token budget),
    ``tokens``, ``accuracy`` and ``processed_tokens``; ``routings[i]`` is its routing (scales or weights)."""

    name: str
    kind: str  # predictor | classifier | cascade | cascade-processed | random | hull | fixed | oracle
    points: list[dict]
    routings: list[np.ndarray]
    description: str = ""
    calibrated_index: int | None = None  # predictors: the point at their own (validation-chosen) threshold
    costs: np.ndarray | None = field(default=None, repr=False)  # (n, scales) tokens processed, if not the oracle's
    proba: np.ndarray | None = field(default=None, repr=False)  # predictors: (n, scales) estimates (budget routing)
    certified_index: int | None = None  # predictors: the point at a certified threshold
    certificate: Certificate | None = None

    @property
    def single_point(self) -> bool:
        return self.kind in SINGLE_POINT_KINDS

    def curve(self) -> Curve:
        return Curve.from_points([p["tokens"] for p in self.points], [p["accuracy"] for p in self.points])


@dataclass
class RoutingEvaluation:
    """Routers evaluated on one test oracle, with what is needed to summarise them."""

    data: OracleSet
    accuracy: str
    routers: list[RouterResult]
    values: np.ndarray = field(repr=False)  # (n, scales) correct or score
    tokens: np.ndarray = field(repr=False)  # (n, scales)

    @property
    def scales(self) -> list[int]:
        return list(self.data.scales)

    def router(self, name: str) -> RouterResult:
        for router in self.routers:
            if router.name == name:
                return router
        raise KeyError(f"no router named {name!r}; have {[r.name for r in self.routers]}")

    @property
    def weak(self) -> tuple[float, float]:
        point = self.router(f"fixed {self.scales[0]}").points[0]
        return point["tokens"], point["accuracy"]

    @property
    def strong(self) -> tuple[float, float]:
        point = self.router(f"fixed {self.scales[-1]}").points[0]
        return point["tokens"], point["accuracy"]


@dataclass(frozen=True)
class Scoring:
    """What a routing is scored on: per query and scale, the accuracy values and the visual tokens it costs."""

    values: np.ndarray
    tokens: np.ndarray
    scales: list[int]


def _point(routing, scoring: Scoring, param, processed=None) -> dict:
    mean_tokens, accuracy = routing_point(routing, scoring.values, scoring.tokens, scoring.scales)
    return {
        "param": None if param is None else float(param),
        "tokens": mean_tokens,
        "accuracy": accuracy,
        "processed_tokens": mean_tokens if processed is None else float(processed),
    }


def _sweep(name, kind, sweep, scoring: Scoring, description="", processed=None, **fields) -> RouterResult:
    """One router's result, built whole: each ``(routing, param)`` of ``sweep`` scored on ``scoring`` (``processed``:
    the tokens each point processed, where they differ), the other :class:`RouterResult` fields from ``fields``."""
    points = [
        _point(routing, scoring, param, None if processed is None else processed[i])
        for i, (routing, param) in enumerate(sweep)
    ]
    return RouterResult(name, kind, points, [routing for routing, _ in sweep], description, **fields)


def predictor_routers(
    name: str, predictor: Router, data: OracleSet, values, tokens, certified: CertifiedRouter | None = None
) -> list[RouterResult]:
    """The threshold sweep of a predictor (and, for an oracle classifier, its argmax point); the point at its own
    threshold (``threshold_``) is marked as calibrated, and the point at a certified threshold as certified: that of
    ``certified`` (a :class:`CertifiedRouter` around the same predictor), else its own when it carries a certificate.
    A probe predictor's tokens include its probe's."""
    scales = data.scales
    probe = probe_scale_of(predictor)
    costs = routing_costs(tokens, scales, probe)
    proba = predictor.predict_proba(data)
    threshold = getattr(predictor, "threshold_", 0.5)
    certificate = certified.certificate_ if certified is not None else saved_certificate(predictor)
    at = None if certificate is None else certified_threshold(certificate)
    marked = [threshold] + ([at] if certificate is not None else [])  # a certificate holds at its threshold only
    thresholds = np.unique(np.concatenate([candidate_thresholds(proba), marked]))
    sweep = [(route_by_threshold(proba, scales, t), t) for t in thresholds]
    estimator = predictor.predictor if isinstance(predictor, CalibratedRouter) else predictor
    target = getattr(predictor, "target", "correct")
    described = f"{type(estimator).__name__}(target={target!r}), threshold swept"
    if probe is not None:
        described += f"; probes the model at scale {probe} first (cost counts it)"
    scoring, kept_costs = Scoring(values, costs, scales), None if probe is None else costs
    routers = [
        _sweep(
            name, "predictor", sweep, scoring, described,
            calibrated_index=int(np.flatnonzero(thresholds == threshold)[0]),
            costs=kept_costs,
            proba=proba,
            certified_index=None if certificate is None else int(np.flatnonzero(thresholds == at)[0]),
            certificate=certificate,
        )
    ]  # fmt: skip
    if target == "oracle":
        labels = np.asarray(scales)[predictor.predict_label_proba(data).argmax(axis=1)]
        routers.append(
            _sweep(
                f"{name} argmax", "classifier", [(labels, None)], scoring, "most probable oracle label",
                costs=kept_costs,
            )
        )  # fmt: skip
    return routers


def baseline_routers(data: OracleSet, values, tokens, random_points_per_segment: int = 20) -> list[RouterResult]:
    """Fixed scales, both oracles, random routing and the fixed-scale hull at matched mean tokens, and the
    confidence cascade."""
    scales, n = data.scales, len(data)
    scoring = Scoring(values, tokens, scales)
    routers = [
        _sweep(f"fixed {s}", "fixed", [(fixed_routing(n, s), None)], scoring, f"every query at {s}") for s in scales
    ]
    routers += [
        _sweep(
            "oracle (paper)", "oracle", [(data.oracle_labels("paper"), None)], scoring,
            "fewest tokens that answer correctly (smallest scale when none does)",
        ),
        _sweep(
            "oracle (monotone)", "oracle", [(data.oracle_labels("monotone"), None)], scoring,
            "smallest scale with every larger scale correct (smallest scale when the largest is wrong)",
        ),
    ]  # fmt: skip
    means = tokens.mean(axis=0)
    budgets = np.unique(
        np.concatenate([np.linspace(lo, hi, random_points_per_segment + 1) for lo, hi in zip(means[:-1], means[1:])])
    )
    routers.append(
        _sweep(
            "random", "random", [(random_routing_weights(tokens, b), b) for b in budgets], scoring,
            "random scale per query at the same mean tokens (expected value: mixes the two bracketing scales)",
        )
    )  # fmt: skip
    routers.append(
        _sweep(
            HULL, "hull", [(fixed_hull_weights(tokens, values, b), b) for b in budgets], scoring,
            "the best mix of two fixed scales at the same mean tokens (upper concave envelope of the fixed points)",
        )
    )  # fmt: skip
    confidences = data.confidences()
    cutoffs = cascade_cutoffs(confidences)
    processed = [cascade_processed_tokens(confidences, tokens, scales, c).mean() for c in cutoffs]
    cascade = [(cascade_routing(confidences, scales, c), c) for c in cutoffs]
    routers.append(
        _sweep(
            "confidence cascade", "cascade", cascade, scoring,
            "escalate while the answer's mean log-probability is below c (c swept); cost = tokens of the final scale",
            processed,
        )
    )  # fmt: skip
    # the same cascade costed at what it processed: every scale it tried (cumulative tokens up to each scale)
    cumulative = np.cumsum(tokens, axis=1)
    routers.append(
        _sweep(
            "confidence cascade (tokens processed)", "cascade-processed", cascade, Scoring(values, cumulative, scales),
            "the confidence cascade, cost = every scale it tried (the equal-cost comparison for probes)",
            costs=cumulative,
        )
    )  # fmt: skip
    return routers


def evaluate_routing(
    test, predictors: dict[str, Router], accuracy: str = "correct", certified: dict[str, CertifiedRouter] | None = None
) -> RoutingEvaluation:
    """Every baseline and every predictor (or calibrated router) on the test oracle ``test`` (folder, table or
    OracleSet); ``certified`` maps predictor names to a :class:`CertifiedRouter` whose threshold is marked too."""
    data = as_oracle_set(test)
    values = accuracy_values(data, accuracy)
    certified = dict(certified or {})
    unknown = sorted(set(certified) - set(predictors))
    if unknown:
        raise ValueError(f"certified routers {unknown} name no predictor; have {sorted(predictors)}")
    for name, predictor in predictors.items():
        if list(predictor.scales_) != list(data.scales):
            raise ValueError(
                f"predictor {name!r} routes over scales {predictor.scales_}, the test data has {data.scales}"
            )
    tokens = data.tokens()
    routers = baseline_routers(data, values, tokens)
    for name, predictor in predictors.items():
        routers += predictor_routers(name, predictor, data, values, tokens, certified.get(name))
    return RoutingEvaluation(data, accuracy, routers, values, tokens)


# ----------------------------------------------------------------------------------------------------
# summaries


def operating_index(router: RouterResult, target: float) -> int:
    """The cheapest point reaching ``target`` accuracy, else the most accurate point."""
    return operating_point([dict(p, index=i) for i, p in enumerate(router.points)], target)["index"]


def _router_metrics(router: RouterResult, weak, strong) -> dict:
    if router.single_point:
        point = router.points[0]
        gap = strong[1] - weak[1]
        value = (point["accuracy"] - weak[1]) / gap if gap > 0 else float("nan")
        cpts = {
            f: point["tokens"] if gap > 0 and point["accuracy"] >= weak[1] + f * gap - 1e-12 else float("nan")
            for f in CPT_FRACTIONS
        }
        flat = {"auc": point["accuracy"], "apgr": value, "apgr_log": value}
        return {**flat, **{f"cpt{round(100 * f)}": v for f, v in cpts.items()}}
    curve = router.curve()
    extended = curve.extended(weak[0], weak[1], strong[0], strong[1])
    metrics = {
        "auc": auc(extended, weak[0], strong[0]),
        "apgr": apgr(curve, weak, strong),
        "apgr_log": apgr(curve, weak, strong, log_tokens=True),
    }
    for fraction in CPT_FRACTIONS:
        metrics[f"cpt{round(100 * fraction)}"] = cpt(curve, fraction, weak, strong)
    return metrics


def _at_point(evaluation: RoutingEvaluation, router: RouterResult, index: int, mask=None) -> dict:
    data, scales = evaluation.data, evaluation.scales
    routing = router.routings[index]
    values, tokens = evaluation.values, evaluation.tokens if router.costs is None else router.costs
    paper, monotone = data.oracle_labels("paper"), data.oracle_labels("monotone")
    if mask is not None:
        routing = routing[mask]
        values, tokens, paper, monotone = values[mask], tokens[mask], paper[mask], monotone[mask]
    mean_tokens, accuracy = routing_point(routing, values, tokens, scales)
    paper_rates = selection_rates(routing, paper, scales)
    monotone_rates = selection_rates(routing, monotone, scales)
    return {
        "tokens": mean_tokens,
        "accuracy": accuracy,
        "under": paper_rates["under"],
        "over": paper_rates["over"],
        "under_monotone": monotone_rates["under"],
        "over_monotone": monotone_rates["over"],
    }


def summarize_routing(evaluation: RoutingEvaluation) -> list[dict]:
    """One row per router: APGR, AUC, CPT(50/80/95), the cheapest point matching full-scale accuracy (tokens,
    share of the largest scale's tokens, accuracy, parameter), under/over-selection there, the cascade's and the
    random router's accuracy at the same mean tokens, and (predictors) the point at their calibrated threshold."""
    weak, strong = evaluation.weak, evaluation.strong
    cascade = evaluation.router("confidence cascade").curve()
    random = evaluation.router("random").curve()
    hull = evaluation.router(HULL).curve()
    rows = []
    for router in evaluation.routers:
        index = operating_index(router, strong[1])
        point = router.points[index]
        at = _at_point(evaluation, router, index)
        best = max(router.points, key=lambda p: (p["accuracy"], -p["tokens"]))
        row = {
            "router": router.name,
            "kind": router.kind,
            **_router_metrics(router, weak, strong),
            "best_accuracy": best["accuracy"],
            "tokens_at_best": best["tokens"],
            "matches_full": bool(point["accuracy"] >= strong[1] - 1e-12),
            "tokens_at_match": point["tokens"],
            "token_share_at_match": point["tokens"] / strong[0],
            "accuracy_at_match": point["accuracy"],
            "param_at_match": point["param"],
            "processed_tokens_at_match": point["processed_tokens"],
            "under": at["under"],
            "over": at["over"],
            "under_monotone": at["under_monotone"],
            "over_monotone": at["over_monotone"],
            "cascade_accuracy_same_tokens": float(cascade.at(point["tokens"])),
            "random_accuracy_same_tokens": float(random.at(point["tokens"])),
            "hull_accuracy_same_tokens": float(hull.at(point["tokens"])),
            **({} if router.single_point else hull_margin(router, hull, strong[0])),
            "description": router.description,
        }
        if router.calibrated_index is not None:
            calibrated = router.points[router.calibrated_index]
            row.update(
                calibrated_threshold=calibrated["param"],
                calibrated_tokens=calibrated["tokens"],
                calibrated_accuracy=calibrated["accuracy"],
                calibrated_cascade_accuracy=float(cascade.at(calibrated["tokens"])),
                calibrated_random_accuracy=float(random.at(calibrated["tokens"])),
                calibrated_hull_accuracy=float(hull.at(calibrated["tokens"])),
            )
        if router.certified_index is not None:
            point, certificate = router.points[router.certified_index], router.certificate
            drop = strong[1] - point["accuracy"]
            row.update(
                certified_threshold=point["param"],
                certified_tokens=point["tokens"],
                certified_accuracy=point["accuracy"],
                certified_drop=drop,
                certified_holds=bool(drop <= certificate.epsilon + 1e-12),
                certified_random_accuracy=float(random.at(point["tokens"])),
                certified_hull_accuracy=float(hull.at(point["tokens"])),
                **{f"certificate_{key}": value for key, value in certificate.to_dict().items()},
            )
        rows.append(row)
    return rows


def hull_margin(router: RouterResult, hull: Curve, largest_tokens: float, span=HULL_RANGE, points: int = 91) -> dict:
    """How far ``router``'s curve lies above the fixed-scale hull over ``span`` (shares of the largest scale's
    tokens): the smallest and the mean accuracy margin on an even grid of token counts, and the share of the grid
    where the router is strictly above. A per-query router worth running has a positive minimum."""
    grid = np.linspace(span[0] * largest_tokens, span[1] * largest_tokens, points)
    curve = router.curve()
    margins = np.asarray(curve.at(grid) - hull.at(grid), dtype=np.float64)
    return {
        "hull_margin_min": float(margins.min()),
        "hull_margin_mean": float(margins.mean()),
        "hull_share_above": float((margins > 0).mean()),
    }


def budget_rows(
    evaluation: RoutingEvaluation, shares=BUDGET_SHARES, knapsack_batch: int | None = KNAPSACK_BATCH
) -> list[dict]:
    """Accuracy of every swept router (not the single-point ones) at equal mean-token budgets: the interpolated
    curve at each share of the largest scale's tokens (reachable by mixing two operating points). Each predictor
    also gets a ``"<name> (knapsack)"`` row: per batch of ``knapsack_batch`` queries (None: the test set at once), the
    scales that maximise its expected correct answers within the budget (:func:`predictor.budget.budget_routing`; never
    over it; NaN where the budget cannot pay every query's cheapest scale)."""
    strong_tokens = evaluation.strong[0]
    rows = []
    for router in evaluation.routers:
        if router.single_point:
            continue
        curve = router.curve().extended(*evaluation.weak, *evaluation.strong)
        rows.append(
            {
                "router": router.name,
                "kind": router.kind,
                **{f"accuracy_at_{share:g}": float(curve.at(share * strong_tokens)) for share in shares},
            }
        )
        if router.kind == "predictor" and router.proba is not None:
            rows.append(knapsack_row(evaluation, router, shares, knapsack_batch))
    return rows


def knapsack_row(evaluation: RoutingEvaluation, router: RouterResult, shares, batch_size: int | None) -> dict:
    """The budget-routing row of one predictor: accuracy (and mean tokens used) at each budget share."""
    costs = evaluation.tokens if router.costs is None else router.costs
    row = {"router": f"{router.name} (knapsack)", "kind": "knapsack"}
    for share in shares:
        budget = share * evaluation.strong[0]
        routing = budget_routing(router.proba, costs, evaluation.scales, budget, batch_size)
        if routing is None:
            row[f"accuracy_at_{share:g}"], row[f"tokens_at_{share:g}"] = float("nan"), float("nan")
            continue
        mean_tokens, accuracy = routing_point(routing, evaluation.values, costs, evaluation.scales)
        row[f"accuracy_at_{share:g}"], row[f"tokens_at_{share:g}"] = accuracy, mean_tokens
    return row


def family_rows(evaluation: RoutingEvaluation) -> list[dict]:
    """Per router and question family: accuracy, mean tokens and under/over-selection at the router's operating
    point (the cheapest one matching overall full-scale accuracy), and the family's APGR on its own samples."""
    families = evaluation.data.families
    strong_acc = evaluation.strong[1]
    rows = []
    for family in sorted(set(families.tolist())):
        mask = families == family
        values, tokens = evaluation.values[mask], evaluation.tokens[mask]
        weak = (float(tokens[:, 0].mean()), float(values[:, 0].mean()))
        strong = (float(tokens[:, -1].mean()), float(values[:, -1].mean()))
        for router in evaluation.routers:
            index = operating_index(router, strong_acc)
            costs = tokens if router.costs is None else router.costs[mask]
            if router.single_point:
                family_apgr = _router_metrics(_subset(router, mask, values, costs, evaluation.scales), weak, strong)
            else:
                family_apgr = {
                    "apgr": apgr(_subset(router, mask, values, costs, evaluation.scales).curve(), weak, strong)
                }
            rows.append(
                {
                    "family": family,
                    "n": int(mask.sum()),
                    "router": router.name,
                    "kind": router.kind,
                    **_at_point(evaluation, router, index, mask),
                    "apgr": family_apgr["apgr"],
                }
            )
    return rows


def _subset(router: RouterResult, mask, values, tokens, scales) -> RouterResult:
    routings = [r[mask] for r in router.routings]
    points = [_point(r, Scoring(values, tokens, scales), p["param"]) for r, p in zip(routings, router.points)]
    return RouterResult(router.name, router.kind, points, routings)


SCORECARD_SHARES = (0.05, 0.1, 0.25)  # the batch budgets a scorecard compares knapsack routing at


def scorecard_rows(
    evaluation: RoutingEvaluation, reference: str = "question-only", shares=SCORECARD_SHARES
) -> list[dict]:
    """What a routing claim rests on, one row per predictor (reference routers included), each against the
    ``reference`` router (the question-only one: what a router gains by looking at the image): tokens to match
    full-scale accuracy on the test curve, tokens at the certified threshold, whether the per-query curve lies above
    the fixed-scale hull from 5 to 50 % of the tokens, and knapsack accuracy at equal batch budgets."""
    rows = summarize_routing(evaluation)
    knapsack = {row["router"]: row for row in budget_rows(evaluation, shares) if row["kind"] == "knapsack"}
    by_name = {row["router"]: row for row in rows}
    base = by_name.get(reference)
    base_knapsack = knapsack.get(f"{reference} (knapsack)")

    def ratio(value, base_value):
        return value / base_value if base_value else float("nan")

    card = []
    for row in rows:
        if row["kind"] != "predictor":
            continue
        match = row["tokens_at_match"] if row["matches_full"] else float("nan")
        base_match = base["tokens_at_match"] if base and base["matches_full"] else float("nan")
        entry = {
            "router": row["router"],
            "tokens_to_match": match,
            "tokens_to_match_vs_reference": ratio(match, base_match),
            "certified_tokens": row.get("certified_tokens", float("nan")),
            "certified_accuracy": row.get("certified_accuracy", float("nan")),
            "certified_drop": row.get("certified_drop", float("nan")),
            "certified_tokens_vs_reference": ratio(
                row.get("certified_tokens", float("nan")), (base or {}).get("certified_tokens", float("nan"))
            ),
            "hull_margin_min": row["hull_margin_min"],
            "above_hull": bool(row["hull_margin_min"] > 0),
        }
        own = knapsack.get(f"{row['router']} (knapsack)", {})
        for share in shares:
            key = f"accuracy_at_{share:g}"
            entry[f"knapsack_{share:g}"] = own.get(key, float("nan"))
            entry[f"knapsack_{share:g}_vs_reference"] = own.get(key, float("nan")) - (base_knapsack or {}).get(
                key, float("nan")
            )
        card.append(entry)
    return card


def best_predictor(rows: list[dict], names) -> str:
    """Of the routers ``names`` in :func:`summarize_routing`'s ``rows``: the one needing the fewest mean tokens to
    match full-scale accuracy on the test curve (APGR is not discriminative when a small scale already closes most
    of the gap); on a tie, or when none matches, the higher APGR. The first name when no row is among them."""
    names = list(names)
    by_router = {row["router"]: row for row in rows}

    def key(name: str) -> tuple[float, float]:
        row = by_router[name]
        tokens = row["tokens_at_match"] if row["matches_full"] else float("inf")
        return tokens, -(float("-inf") if row["apgr"] is None or math.isnan(row["apgr"]) else row["apgr"])

    candidates = [name for name in names if name in by_router]
    return min(candidates, key=key) if candidates else names[0]
