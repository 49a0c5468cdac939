"""Routing evaluation on a test oracle: every predictor and baseline as an accuracy / mean-tokens curve, summarised.

:func:`evaluate_routing` sweeps each router and keeps every operating point: a predictor by both per-query rules
(:mod:`predictor.thresholds`: its threshold, as ``NAME``, and its price, as ``NAME (price)``), the cascade's
confidence cut-off, and the token budget of random routing, of the fixed-scale hull and of the oracle knapsack (the
batch knapsack on the TRUE per-query correctness: the most any routing of these queries gets from each budget).
:func:`summarize_routing` turns the points into APGR, CPT(50/80/95 %), the cheapest point that matches full-scale
accuracy, the mean tokens to reach full - 0.01 and full - 0.02, under-/over-selection against the oracle labels,
the accuracy of the cascade and of random routing at the same mean tokens, and each predictor at the operating
points chosen on calibration data (its own, the certified ones, those fitted to token budgets);
:func:`family_rows` and :func:`budget_rows` break them down per question family and per token budget (with the
batch knapsack routing of each predictor at every budget); :func:`scorecard_rows` gathers what a routing claim rests
on. Everything here is pure (no files); :mod:`routing_study.report` writes it as markdown, CSV, JSON and a plot, and
:mod:`predictor.calibration` chooses a predictor's threshold or price on calibration data.

Accuracy of a routing is the mean over samples of ``correct_{chosen scale}`` (``accuracy="correct"``, the
default) or of ``score_{chosen scale}`` (``"score"``); its cost is the mean visual tokens processed: those of the
chosen scale, plus, for a probe predictor, its probe's when the chosen scale is another
(:func:`predictor.costs.routing_costs`). The confidence cascade appears twice: costed at its final scale (as it is
usually reported) and at the tokens it processed (every scale it tried), the fair comparison for probes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from predictor.base import ScalePredictor
from predictor.budget import budget_routing
from predictor.calibration import (
    CalibratedRouter,
    CertifiedRouter,
    certified_point,
    operating_point_of,
    saved_certificate,
    unwrapped,
)
from predictor.costs import probe_scale_of, routing_costs
from predictor.data import OracleSet, accuracy_values, as_oracle_set
from predictor.risk_control import Certificate
from predictor.routing_metrics import (
    Curve,
    apgr,
    auc,
    cpt,
    operating_point,
    routing_point,
    selection_rates,
    tokens_for_accuracy,
)
from predictor.thresholds import RULES, candidate_prices, candidate_thresholds, route_by_rule

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
ORACLE_KNAPSACK = "oracle knapsack"
BELOW_FULL = (0.01, 0.02)  # the scorecard's accuracy targets: full-scale accuracy minus these
KNAPSACK_BATCH = None  # budget routing in the equal-budget table: the test set as one batch (a mean over all, as the
# sweep's); with batches of b queries each leaves at most one query's worth of its budget unused
SINGLE_POINT_KINDS = ("fixed", "oracle", "classifier")
RULE_SUFFIX = {"threshold": "", "price": " (price)"}  # how a predictor's sweep by each rule is named


def rule_name(name: str, rule: str) -> str:
    """The name of predictor ``name``'s sweep by ``rule``: ``mlp`` (threshold) or ``mlp (price)``."""
    return name + RULE_SUFFIX[rule]


@dataclass
class RouterResult:
    """All operating points of one router: ``points[i]`` has ``param`` (threshold, price, cut-off or token budget),
    ``tokens``, ``accuracy`` and ``processed_tokens``; ``routings[i]`` is its routing (scales or weights)."""

    name: str
    kind: str  # predictor | classifier | cascade | cascade-processed | random | hull | fixed | oracle | oracle-knapsack
    points: list[dict]
    routings: list[np.ndarray]
    description: str = ""
    calibrated_index: int | None = None  # predictors: the point at their own (validation-chosen) operating point
    costs: np.ndarray | None = field(default=None, repr=False)  # (n, scales) tokens processed, if not the oracle's
    proba: np.ndarray | None = field(default=None, repr=False)  # predictors: (n, scales) estimates (budget routing)
    certified_index: int | None = None  # predictors: the point at a certified threshold or price
    certificate: Certificate | None = None
    rule: str | None = None  # predictors: the rule swept, "threshold" or "price"
    base: str | None = None  # predictors: the predictor's name (the same for both rules)
    budget_indices: dict[float, int] = field(default_factory=dict)  # predictors: share -> point fitted to that budget

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


def router_list(routers) -> list:
    """``routers`` as a list: one router, a list or tuple of them, or None (none)."""
    return [] if routers is None else list(routers) if isinstance(routers, (list, tuple)) else [routers]


def _rule_sweep(rule: str, proba: np.ndarray, costs: np.ndarray, scales, marked: list[tuple[str, float]]) -> list:
    """``[(routing, value)]`` of ``rule`` over its candidates and the ``marked`` operating points of that rule, in
    increasing value; a price sweep keeps one price per distinct routing (and every marked one). A marked point of
    the other rule (a certificate that certified nothing: threshold 1, every query at the largest scale) is appended
    with value None."""
    own = [value for point_rule, value in marked if point_rule == rule]
    values = candidate_thresholds(proba) if rule == "threshold" else candidate_prices(proba, costs)
    sweep, previous = [], None
    for value in np.unique(np.concatenate([values, own])):
        routing = route_by_rule(proba, scales, rule, value, costs)
        if rule == "price" and previous is not None and value not in own and np.array_equal(routing, previous):
            continue
        sweep.append((routing, float(value)))
        previous = routing
    for point_rule, value in marked:
        if point_rule != rule and not any(param is None for _, param in sweep):
            sweep.append((route_by_rule(proba, scales, point_rule, value, costs), None))
    return sweep


def _index_of(sweep: list, point: tuple[str, float], rule: str) -> int:
    """Where an operating point lies in a sweep of ``rule`` (the appended None point for the other rule)."""
    point_rule, value = point
    for index, (_, param) in enumerate(sweep):
        if (param is None) if point_rule != rule else (param is not None and param == value):
            return index
    raise ValueError(f"operating point {point} is not in the {rule} sweep")


def predictor_routers(
    name: str,
    predictor: Router,
    data: OracleSet,
    values,
    tokens,
    certified=None,
    budgeted=None,
    rules: Sequence[str] = RULES,
) -> list[RouterResult]:
    """The sweeps of a predictor by each of ``rules`` (and, for an oracle classifier, its argmax point). In the sweep
    of each rule: the predictor's own operating point (its rule and value; a plain predictor's threshold) is marked as
    calibrated; the point of a :class:`CertifiedRouter` of that rule in ``certified`` (one, or a list; else the
    predictor's own certificate) as certified; and each :class:`CalibratedRouter` of that rule with a ``budget`` in
    ``budgeted`` (a list) at its budget's share of the largest scale's tokens. A probe predictor's tokens include
    its probe's."""
    scales = data.scales
    probe = probe_scale_of(predictor)
    costs = routing_costs(tokens, scales, probe)
    proba = predictor.predict_proba(data)
    own = operating_point_of(predictor)
    certificates = [router.certificate_ for router in router_list(certified)] or router_list(
        saved_certificate(predictor)
    )
    largest = float(costs[:, -1].mean()) if len(costs) else float(scales[-1])
    budget_points = [(router.budget / largest, operating_point_of(router)) for router in router_list(budgeted)]
    estimator = unwrapped(predictor)
    target = getattr(predictor, "target", "correct")
    scoring, kept_costs = Scoring(values, costs, scales), None if probe is None else costs
    routers = []
    for rule in rules:
        mine = [c for c in certificates if c.rule == rule]
        certificate = mine[0] if mine else None
        budgets = [(share, point) for share, point in budget_points if point[0] == rule]
        marked = ([own] if own[0] == rule else []) + [point for _, point in budgets]
        marked += [certified_point(certificate)] if certificate is not None else []
        sweep = _rule_sweep(rule, proba, costs, scales, marked)
        described = f"{type(estimator).__name__}(target={target!r}), {rule} rule swept"
        if probe is not None:
            described += f"; probes the model at scale {probe} first (cost counts it)"
        routers.append(
            _sweep(
                rule_name(name, rule), "predictor", sweep, scoring, described,
                calibrated_index=_index_of(sweep, own, rule) if own[0] == rule else None,
                costs=kept_costs,
                proba=proba,
                certified_index=None if certificate is None else _index_of(sweep, certified_point(certificate), rule),
                certificate=certificate,
                rule=rule,
                base=name,
                budget_indices={share: _index_of(sweep, point, rule) for share, point in budgets},
            )
        )  # fmt: skip
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
    """Fixed scales, both oracles, random routing, the fixed-scale hull and the oracle knapsack at matched mean
    tokens, and the confidence cascade."""
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
    routers.append(
        _sweep(
            ORACLE_KNAPSACK, "oracle-knapsack", oracle_knapsack_sweep(values, tokens, scales, budgets), scoring,
            "the batch knapsack on the TRUE per-query accuracy: the best routing of these queries within each budget",
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


def oracle_knapsack_sweep(values: np.ndarray, tokens: np.ndarray, scales, budgets) -> list:
    """``[(routing, budget)]`` of the batch knapsack (:func:`predictor.budget.budget_routing`) on the true per-query
    ``values`` at each mean-token budget it can pay (never over it): the most any routing gets from that budget."""
    sweep = []
    for budget in budgets:
        routing = budget_routing(values, tokens, scales, float(budget))
        if routing is not None:
            sweep.append((routing, float(budget)))
    return sweep


def evaluate_routing(
    test,
    predictors: dict[str, Router],
    accuracy: str = "correct",
    certified: dict[str, CertifiedRouter | list[CertifiedRouter]] | None = None,
    budgeted: dict[str, list[CalibratedRouter]] | None = None,
    rules: Sequence[str] = RULES,
) -> RoutingEvaluation:
    """Every baseline and every predictor (or calibrated router) on the test oracle ``test`` (folder, table or
    OracleSet), each predictor swept by each of ``rules``. ``certified`` maps predictor names to
    :class:`CertifiedRouter` (one, or one per rule) whose operating points are marked too; ``budgeted`` to
    :class:`CalibratedRouter` fitted to token budgets on calibration data (:func:`predictor.training.budget_routers`),
    marked at their budget's share of the largest scale's tokens."""
    data = as_oracle_set(test)
    values = accuracy_values(data, accuracy)
    certified, budgeted = dict(certified or {}), dict(budgeted or {})
    unknown = sorted((set(certified) | set(budgeted)) - set(predictors))
    if unknown:
        raise ValueError(f"certified or budgeted routers {unknown} name no predictor; have {sorted(predictors)}")
    for name, predictor in predictors.items():
        if list(predictor.scales_) != list(data.scales):
            raise ValueError(
                f"predictor {name!r} routes over scales {predictor.scales_}, the test data has {data.scales}"
            )
    tokens = data.tokens()
    routers = baseline_routers(data, values, tokens)
    for name, predictor in predictors.items():
        routers += predictor_routers(
            name, predictor, data, values, tokens, certified.get(name), budgeted.get(name), rules
        )
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


def tokens_to_reach(router: RouterResult, evaluation: RoutingEvaluation, target: float) -> float:
    """The fewest mean tokens at which a router's curve (mixing two operating points at random, and falling back to
    the smallest or largest scale) reaches ``target`` accuracy; NaN if never. A single-point router: its tokens if
    it reaches the target."""
    if router.single_point:
        point = router.points[0]
        return point["tokens"] if point["accuracy"] >= target - 1e-12 else float("nan")
    curve = router.curve().extended(*evaluation.weak, *evaluation.strong)
    return tokens_for_accuracy(curve, target - 1e-12)


def summarize_routing(evaluation: RoutingEvaluation) -> list[dict]:
    """One row per router: APGR, AUC, CPT(50/80/95), the cheapest point matching full-scale accuracy (tokens,
    share of the largest scale's tokens, accuracy, parameter), the tokens to reach full - 0.01 and full - 0.02
    (``tokens_to_full_minus_0.01``), under/over-selection there, the cascade's and the random router's accuracy at
    the same mean tokens, and (predictors: ``rule`` and ``base``) the points at their own operating point
    (``calibrated_*``), at the certified one (``certified_*``, with the certificate) and fitted to token budgets
    (``budget_{share}_*``)."""
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
            **{f"tokens_to_full_minus_{d:g}": tokens_to_reach(router, evaluation, strong[1] - d) for d in BELOW_FULL},
            "rule": router.rule,
            "base": router.base,
            "description": router.description,
        }
        if router.calibrated_index is not None:
            calibrated = router.points[router.calibrated_index]
            row.update(
                calibrated_value=calibrated["param"],
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
                certified_value=point["param"],
                certified_tokens=point["tokens"],
                certified_accuracy=point["accuracy"],
                certified_drop=drop,
                certified_holds=bool(drop <= certificate.epsilon + 1e-12),
                certified_random_accuracy=float(random.at(point["tokens"])),
                certified_hull_accuracy=float(hull.at(point["tokens"])),
                **{f"certificate_{key}": value for key, value in certificate.to_dict().items()},
            )
        for share, index in sorted(router.budget_indices.items()):
            point = router.points[index]
            row[f"budget_{share:g}_value"], row[f"budget_{share:g}_tokens"] = point["param"], point["tokens"]
            row[f"budget_{share:g}_accuracy"] = point["accuracy"]
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
    rows, knapsacks = [], set()
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
        if router.kind == "predictor" and router.proba is not None and router.base not in knapsacks:
            knapsacks.add(router.base)  # once per predictor, whatever rules it is swept by
            rows.append(knapsack_row(evaluation, router, shares, knapsack_batch))
    return rows


def knapsack_row(evaluation: RoutingEvaluation, router: RouterResult, shares, batch_size: int | None) -> dict:
    """The budget-routing row of one predictor: accuracy (and mean tokens used) at each budget share."""
    costs = evaluation.tokens if router.costs is None else router.costs
    row = {"router": f"{router.base or router.name} (knapsack)", "kind": "knapsack", "base": router.base}
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


SCORECARD_SHARES = (0.05, 0.1, 0.25)  # the token budgets a scorecard reads every router at (shares of the largest)
SCORECARD_BASELINES = ("fixed-scale hull", "random", "confidence cascade", "confidence cascade (tokens processed)")


def _ratio(value: float, base_value: float | None) -> float:
    return value / base_value if base_value and not math.isnan(base_value) else float("nan")


def scorecard_rows(
    evaluation: RoutingEvaluation, reference: str = "question-only", shares=SCORECARD_SHARES
) -> list[dict]:
    """What a routing claim rests on: one row per baseline (the fixed-scale hull, random routing, the confidence
    cascade), per predictor and rule (reference routers included) and for the oracle knapsack.

    Every row: accuracy on the curve at each share of the largest scale's tokens (``accuracy_at_{share}``) with the
    share of the hull-to-oracle-knapsack gap it recovers there (``gap_at_{share}`` = (router - hull) / (oracle
    knapsack - hull); the oracle knapsack is the batch knapsack on the true correctness at exactly that budget),
    whether the curve lies above the hull from 5 to 50 % of the tokens, and the tokens to reach full - 0.01 and
    full - 0.02. Predictors also get, against the ``reference`` router by the SAME rule (what a router gains by
    looking at the image), the token ratios and, at the operating points chosen on calibration data (no test
    labels): the certified point's tokens and accuracy, each budget-fitted point's, and the batch knapsack's
    accuracy at each budget (``knapsack_{share}``)."""
    summary = {row["router"]: row for row in summarize_routing(evaluation)}
    knapsack = {row["base"]: row for row in budget_rows(evaluation, shares) if row["kind"] == "knapsack"}
    strong_tokens, strong = evaluation.strong
    hull = evaluation.router(HULL).curve()
    oracle = {}
    for share in shares:
        routing = budget_routing(evaluation.values, evaluation.tokens, evaluation.scales, share * strong_tokens)
        oracle[share] = (
            float("nan") if routing is None else routing_point(routing, evaluation.values, evaluation.tokens,
                                                               evaluation.scales)[1]
        )  # fmt: skip
    names = [n for n in SCORECARD_BASELINES if n in summary]
    names += [r.name for r in evaluation.routers if r.kind == "predictor"] + [ORACLE_KNAPSACK]
    card = []
    for name in names:
        row, router = summary[name], evaluation.router(name)
        curve = router.curve().extended(*evaluation.weak, *evaluation.strong)
        entry = {"router": name, "kind": row["kind"], "rule": row["rule"], "base": row["base"]}
        for share in shares:
            accuracy = oracle[share] if name == ORACLE_KNAPSACK else float(curve.at(share * strong_tokens))
            floor, top = float(hull.at(share * strong_tokens)), oracle[share]
            entry[f"accuracy_at_{share:g}"] = accuracy
            entry[f"gap_at_{share:g}"] = (accuracy - floor) / (top - floor) if top - floor > 1e-12 else float("nan")
        entry["hull_margin_min"] = row.get("hull_margin_min", float("nan")) if name != HULL else float("nan")
        entry["above_hull"] = None if math.isnan(entry["hull_margin_min"]) else bool(entry["hull_margin_min"] > 0)
        base_row = summary.get(rule_name(reference, row["rule"])) if row["kind"] == "predictor" else None
        for below in BELOW_FULL:
            key = f"tokens_to_full_minus_{below:g}"
            entry[key] = row[key]
            entry[f"{key}_vs_reference"] = _ratio(row[key], (base_row or {}).get(key))
        if row["kind"] == "predictor":
            entry["certified_tokens"] = row.get("certified_tokens", float("nan"))
            entry["certified_accuracy"] = row.get("certified_accuracy", float("nan"))
            entry["certified_drop"] = row.get("certified_drop", float("nan"))
            entry["certified_tokens_vs_reference"] = _ratio(
                entry["certified_tokens"], (base_row or {}).get("certified_tokens")
            )
            for share in shares:
                for what in ("tokens", "accuracy"):
                    entry[f"budget_{share:g}_{what}"] = row.get(f"budget_{share:g}_{what}", float("nan"))
                entry[f"knapsack_{share:g}"] = knapsack.get(row["base"], {}).get(f"accuracy_at_{share:g}", math.nan)
        card.append(entry)
    return card
