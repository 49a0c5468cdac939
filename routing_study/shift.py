"""Routing under a distribution shift: routers fitted (and thresholded) on one oracle, run on another.

A certificate holds only for data exchangeable with its calibration set. Under a shift the honest recipe is to
label a few queries of the new data and certify again: :func:`evaluate_shift` draws ``n_calibration`` labelled
queries of the shifted oracle (whole images), certifies every router on them by each rule (:class:`CertifiedRouter`:
a threshold and a price), and evaluates every router and baseline on the REST of the shifted oracle, where each
predictor is shown, per rule, at

* its operating point from the train data (the calibrated one, or the certified one it was saved with),
* the threshold or price certified on train data (``train_certified``, when given),
* the threshold or price certified on the labelled shifted queries.

Everything is pure (no files); :func:`shift_markdown` renders the comparison, and the routing report of
:func:`routing_study.report.write_evaluation` the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m3.markdown import markdown_table
from predictor.calibration import (
    CalibratedRouter,
    CertifiedRouter,
    certificate_at,
    certified_point,
    operating_point_of,
    saved_certificate,
    unwrapped,
)
from predictor.data import OracleSet, as_oracle_set, grouped_sample
from predictor.risk_control import DEFAULT_P_VALUE
from predictor.routing_metrics import routing_point
from predictor.thresholds import RULES, route_by_rule

from .evaluation import RoutingEvaluation, evaluate_routing, router_list

DEFAULT_SHIFT_CALIBRATION = 200


@dataclass
class ShiftEvaluation:
    """The routing evaluation on the held-out part of a shifted oracle, its labelled calibration part, the routers
    certified there, and one row per predictor comparing its operating points."""

    evaluation: RoutingEvaluation
    calibration: OracleSet
    certified: dict[str, list[CertifiedRouter]]  # per router, one per rule
    rows: list[dict]
    max_drop: float
    delta: float


def evaluate_shift(
    shift,
    routers: dict,
    n_calibration: int = DEFAULT_SHIFT_CALIBRATION,
    max_drop: float = 0.02,
    delta: float = 0.1,
    p_value: str = DEFAULT_P_VALUE,
    train_certified: dict[str, CertifiedRouter | list[CertifiedRouter]] | None = None,
    seed: int = 0,
    accuracy: str = "correct",
    budgeted: dict[str, list[CalibratedRouter]] | None = None,
    rules=RULES,
) -> ShiftEvaluation:
    """Certify every router by each of ``rules`` on ``n_calibration`` labelled queries of the shifted oracle ``shift``
    (whole images, drawn with ``seed``) and evaluate everything on the rest. ``routers``: fitted predictors or
    calibrated routers (their own operating point is the train one); ``train_certified``: routers certified on train
    data, by name (one, or one per rule); ``budgeted``: routers fitted to token budgets on train data, marked too."""
    data = as_oracle_set(shift)
    calibration_rows, rest_rows = grouped_sample(data, n_calibration, seed)
    calibration, rest = data.take(calibration_rows), data.take(rest_rows)
    certified = {
        name: [
            CertifiedRouter(unwrapped(router), max_drop=max_drop, delta=delta, p_value=p_value, rule=rule).fit(
                calibration
            )
            for rule in rules
        ]
        for name, router in routers.items()
    }
    evaluation = evaluate_routing(rest, routers, accuracy, certified=certified, budgeted=budgeted, rules=rules)
    rows = shift_rows(evaluation, routers, certified, train_certified or {})
    return ShiftEvaluation(evaluation, calibration, certified, rows, max_drop, delta)


def shift_rows(
    evaluation: RoutingEvaluation,
    routers: dict,
    certified: dict[str, CertifiedRouter | list[CertifiedRouter]],
    train_certified: dict[str, CertifiedRouter | list[CertifiedRouter]],
) -> list[dict]:
    """Per predictor, rule and operating point (train, certified on train, certified on shift): the rule and its value
    (``value``; ``threshold`` too for the threshold rule), tokens processed, accuracy and drop below the largest scale
    on the evaluation data, and the certificate's eps. A certificate that certified nothing routes at threshold 1
    (the largest scale) whatever its rule."""
    strong = evaluation.strong[1]
    rows = []
    for name, router in routers.items():
        own_rule, own_value = operating_point_of(router)
        for result in (r for r in evaluation.routers if r.base == name and r.kind == "predictor"):
            rule = result.rule
            costs = evaluation.tokens if result.costs is None else result.costs
            points = []
            if own_rule == rule:
                certificate = certificate_at(saved_certificate(router), own_value, rule)
                points.append((f"train {rule}", (rule, own_value), certificate))
            menus = (("certified on train", train_certified.get(name)), ("certified on shift", certified[name]))
            for where, menu in menus:
                for chosen in (c for c in router_list(menu) if c.rule == rule):
                    points.append((where, certified_point(chosen.certificate_), chosen.certificate_))
            for where, (point_rule, value), certificate in points:
                routing = route_by_rule(result.proba, evaluation.scales, point_rule, value, costs)
                tokens, accuracy = routing_point(routing, evaluation.values, costs, evaluation.scales)
                row = {
                    "router": name,
                    "rule": rule,
                    "threshold_from": where,
                    "value": float(value),
                    "threshold": float(value) if point_rule == "threshold" else None,
                    "tokens": tokens,
                    "accuracy": accuracy,
                    "drop": strong - accuracy,
                    "epsilon": None if certificate is None else certificate.epsilon,
                    "delta": None if certificate is None else certificate.delta,
                    "n": None if certificate is None else certificate.n,
                    "certified_anything": None if certificate is None else certificate.threshold is not None,
                }
                row["within_epsilon"] = (
                    None if certificate is None else bool(row["drop"] <= certificate.epsilon + 1e-12)
                )
                rows.append(row)
    return rows


def shift_markdown(shift: ShiftEvaluation, title: str = "") -> str:
    """The operating-point comparison under the shift, as markdown."""
    evaluation = shift.evaluation
    strong_tokens, strong = evaluation.strong
    rest = evaluation.data
    lines = [
        f"# Routing under a shift{': ' + title if title else ''}",
        "",
        f"- shifted data: {rest.source}; {len(shift.calibration)} labelled queries "
        f"({len(set(shift.calibration.groups.tolist()))} images) certify the thresholds, the other {len(rest)} "
        f"({len(set(rest.groups.tolist()))} images) evaluate every router",
        f"- largest scale on the evaluation part: accuracy {strong:.3f} at {strong_tokens:.1f} tokens; "
        f"certificates: drop <= {shift.max_drop:g} with probability >= {1 - shift.delta:g}",
        "- tokens = mean visual tokens processed (a probe predictor's probe included); drop = the largest scale's "
        "accuracy minus the router's, on the evaluation part",
        "",
    ]
    rows = []
    for row in shift.rows:
        certificate = "-" if row["epsilon"] is None else f"eps {row['epsilon']:g}, delta {row['delta']:g}, n {row['n']}"
        if row["certified_anything"] is False:
            certificate += " (nothing: largest scale)"
        within = "-" if row["within_epsilon"] is None else "yes" if row["within_epsilon"] else "**no**"
        value = "largest scale" if row["certified_anything"] is False else f"{row['value']:.4f}"
        rows.append(
            [
                row["router"], row["rule"], row["threshold_from"], value, f"{row['tokens']:.1f}",
                f"{100 * row['tokens'] / strong_tokens:.1f}", f"{row['accuracy']:.3f}", f"{row['drop']:.3f}",
                certificate, within,
            ]
        )  # fmt: skip
    headers = [
        "router", "rule", "chosen on", "threshold or price", "tokens", "% of largest", "accuracy", "drop",
        "certificate", "within eps",
    ]  # fmt: skip
    lines.append(markdown_table(headers, rows, "lllrrrrrll"))
    return "\n".join(lines) + "\n"


def shift_summary(shift: ShiftEvaluation) -> dict:
    """JSON-ready: the rows and the setup."""
    return {
        "evaluation_data": shift.evaluation.data.source,
        "n_evaluation": len(shift.evaluation.data),
        "n_calibration": len(shift.calibration),
        "max_drop": shift.max_drop,
        "delta": shift.delta,
        "strong_accuracy": shift.evaluation.strong[1],
        "rows": [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in shift.rows],
    }
