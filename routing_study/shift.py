"""Routing under a distribution shift: routers fitted (and thresholded) on one oracle, run on another.

A certificate holds only for data exchangeable with its calibration set. Under a shift the honest recipe is to
label a few queries of the new data and certify again: :func:`evaluate_shift` draws ``n_calibration`` labelled
queries of the shifted oracle (whole images), certifies every router on them (:class:`CertifiedRouter`), and
evaluates every router and baseline on the REST of the shifted oracle, where each predictor is shown at

* its threshold from the train data (the calibrated one, or the certified one it was saved with),
* the threshold certified on train data (``train_certified``, when given),
* the threshold certified on the labelled shifted queries.

Everything is pure (no files); :func:`shift_markdown` renders the comparison, and the routing report of
:func:`routing_study.report.write_evaluation` the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m3.markdown import markdown_table
from predictor.calibration import CalibratedRouter, CertifiedRouter, certificate_at, saved_certificate
from predictor.data import OracleSet, as_oracle_set, grouped_sample
from predictor.risk_control import DEFAULT_P_VALUE
from predictor.routing_metrics import routing_point
from predictor.thresholds import route_by_threshold

from .evaluation import RoutingEvaluation, evaluate_routing

DEFAULT_SHIFT_CALIBRATION = 200


@dataclass
class ShiftEvaluation:
    """The routing evaluation on the held-out part of a shifted oracle, its labelled calibration part, the routers
    certified there, and one row per predictor comparing its operating points."""

    evaluation: RoutingEvaluation
    calibration: OracleSet
    certified: dict[str, CertifiedRouter]
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
    train_certified: dict[str, CertifiedRouter] | None = None,
    seed: int = 0,
    accuracy: str = "correct",
) -> ShiftEvaluation:
    """Certify every router on ``n_calibration`` labelled queries of the shifted oracle ``shift`` (whole images, drawn
    with ``seed``) and evaluate everything on the rest. ``routers``: fitted predictors or calibrated routers (their
    own ``threshold_`` is the train threshold); ``train_certified``: routers certified on train data, by name."""
    data = as_oracle_set(shift)
    calibration_rows, rest_rows = grouped_sample(data, n_calibration, seed)
    calibration, rest = data.take(calibration_rows), data.take(rest_rows)
    certified = {
        name: CertifiedRouter(_unwrap(router), max_drop=max_drop, delta=delta, p_value=p_value).fit(calibration)
        for name, router in routers.items()
    }
    evaluation = evaluate_routing(rest, routers, accuracy, certified=certified)
    rows = shift_rows(evaluation, routers, certified, train_certified or {})
    return ShiftEvaluation(evaluation, calibration, certified, rows, max_drop, delta)


def _unwrap(router):
    return router.predictor if isinstance(router, CalibratedRouter) else router


def shift_rows(
    evaluation: RoutingEvaluation,
    routers: dict,
    certified: dict[str, CertifiedRouter],
    train_certified: dict[str, CertifiedRouter],
) -> list[dict]:
    """Per predictor and operating point (train threshold, train-certified, shift-certified): threshold, tokens
    processed, accuracy and drop below the largest scale on the evaluation data, and the certificate's eps."""
    strong = evaluation.strong[1]
    by_name = {result.name: result for result in evaluation.routers}
    rows = []
    for name, router in routers.items():
        result = by_name[name]
        costs = evaluation.tokens if result.costs is None else result.costs
        threshold = getattr(router, "threshold_", 0.5)
        points = [("train threshold", threshold, certificate_at(saved_certificate(router), threshold))]
        if name in train_certified:
            points.append(("certified on train", train_certified[name].threshold_, train_certified[name].certificate_))
        points.append(("certified on shift", certified[name].threshold_, certified[name].certificate_))
        for where, threshold, certificate in points:
            routing = route_by_threshold(result.proba, evaluation.scales, threshold)
            tokens, accuracy = routing_point(routing, evaluation.values, costs, evaluation.scales)
            row = {
                "router": name,
                "threshold_from": where,
                "threshold": float(threshold),
                "tokens": tokens,
                "accuracy": accuracy,
                "drop": strong - accuracy,
                "epsilon": None if certificate is None else certificate.epsilon,
                "delta": None if certificate is None else certificate.delta,
                "n": None if certificate is None else certificate.n,
                "certified_anything": None if certificate is None else certificate.threshold is not None,
            }
            row["within_epsilon"] = None if certificate is None else bool(row["drop"] <= certificate.epsilon + 1e-12)
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
        rows.append(
            [
                row["router"], row["threshold_from"], f"{row['threshold']:.3f}", f"{row['tokens']:.1f}",
                f"{100 * row['tokens'] / strong_tokens:.1f}", f"{row['accuracy']:.3f}", f"{row['drop']:.3f}",
                certificate, within,
            ]
        )  # fmt: skip
    headers = [
        "router", "threshold from", "threshold", "tokens", "% of largest", "accuracy", "drop", "certificate",
        "within eps",
    ]  # fmt: skip
    lines.append(markdown_table(headers, rows, "llrrrrrll"))
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
