"""Routing evaluation on a test oracle: every predictor and baseline as an accuracy / mean-tokens curve, summarised.

:func:`evaluate_routing` sweeps each router (a predictor's threshold, the cascade's confidence cut-off, the random
router's token budget) and keeps every operating point; :func:`summarize` turns the points into APGR, CPT(50/80/95 %),
the cheapest point that matches full-scale accuracy, under-/over-selection against the oracle labels, the
accuracy of the cascade and of random routing at the same mean tokens, and results per question family.
:func:`write_evaluation` writes them as markdown, CSV, JSON and a PNG plot.

Accuracy of a routing is the mean over samples of ``correct_{chosen scale}`` (``accuracy="correct"``, the
default) or of ``score_{chosen scale}`` (``"score"``); its cost is the mean of ``tokens_{chosen scale}``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .base import ScalePredictor, route_by_threshold
from .baselines import (
    cascade_cutoffs,
    cascade_processed_tokens,
    cascade_routing,
    fixed_routing,
    random_routing_weights,
)
from .data import OracleSet, as_oracle_set
from .routing_metrics import (
    Curve,
    apgr,
    auc,
    cheapest_point_reaching,
    cpt,
    default_thresholds,
    routing_point,
    selection_rates,
)

ACCURACY_KINDS = ("correct", "score")
CPT_FRACTIONS = (0.5, 0.8, 0.95)
BUDGET_SHARES = (0.02, 0.05, 0.1, 0.15, 0.25, 0.5)  # token budgets, as shares of the largest scale's tokens
SINGLE_POINT_KINDS = ("fixed", "oracle", "classifier")


@dataclass
class RouterResult:
    """All operating points of one router: ``points[i]`` has ``param`` (threshold, cut-off or token budget),
    ``tokens``, ``accuracy`` and ``processed_tokens``; ``routings[i]`` is its routing (scales or weights)."""

    name: str
    kind: str  # predictor | classifier | cascade | random | fixed | oracle
    points: list[dict]
    routings: list[np.ndarray]
    description: str = ""
    calibrated_index: int | None = None  # predictors: the point at their own (validation-chosen) threshold

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


def _point(routing, values, tokens, scales, param, processed=None) -> dict:
    mean_tokens, accuracy = routing_point(routing, values, tokens, scales)
    return {
        "param": None if param is None else float(param),
        "tokens": mean_tokens,
        "accuracy": accuracy,
        "processed_tokens": mean_tokens if processed is None else float(processed),
    }


def _sweep(name, kind, routings_and_params, values, tokens, scales, description="", processed=None) -> RouterResult:
    points, routings = [], []
    for i, (routing, param) in enumerate(routings_and_params):
        points.append(_point(routing, values, tokens, scales, param, None if processed is None else processed[i]))
        routings.append(routing)
    return RouterResult(name, kind, points, routings, description)


def predictor_routers(name: str, predictor: ScalePredictor, data: OracleSet, values, tokens) -> list[RouterResult]:
    """The threshold sweep of a predictor (and, for an oracle classifier, its argmax point)."""
    scales = data.scales
    proba = predictor.predict_proba(data)
    thresholds = np.unique(np.concatenate([default_thresholds(proba), [predictor.threshold_]]))
    sweep = [(route_by_threshold(proba, scales, t), t) for t in thresholds]
    described = f"{type(predictor).__name__}(target={predictor.target!r}), threshold swept"
    router = _sweep(name, "predictor", sweep, values, tokens, scales, described)
    router.calibrated_index = int(np.flatnonzero(thresholds == predictor.threshold_)[0])
    routers = [router]
    if predictor.target == "oracle":
        labels = np.asarray(scales)[predictor.predict_label_proba(data).argmax(axis=1)]
        routers.append(
            _sweep(
                f"{name} argmax", "classifier", [(labels, None)], values, tokens, scales, "most probable oracle label"
            )
        )
    return routers


def baseline_routers(data: OracleSet, values, tokens, random_points_per_segment: int = 20) -> list[RouterResult]:
    """Fixed scales, both oracles, random routing at matched mean tokens and the confidence cascade."""
    scales, n = data.scales, len(data)
    routers = [
        _sweep(f"fixed {s}", "fixed", [(fixed_routing(n, s), None)], values, tokens, scales, f"every query at {s}")
        for s in scales
    ]
    routers += [
        _sweep(
            "oracle (paper)", "oracle", [(data.oracle_labels("paper"), None)], values, tokens, scales,
            "fewest tokens that answer correctly (smallest scale when none does)",
        ),
        _sweep(
            "oracle (monotone)", "oracle", [(data.oracle_labels("monotone"), None)], values, tokens, scales,
            "smallest scale with every larger scale correct (smallest scale when the largest is wrong)",
        ),
    ]  # fmt: skip
    means = tokens.mean(axis=0)
    budgets = np.unique(
        np.concatenate([np.linspace(lo, hi, random_points_per_segment + 1) for lo, hi in zip(means[:-1], means[1:])])
    )
    routers.append(
        _sweep(
            "random", "random", [(random_routing_weights(tokens, b), b) for b in budgets], values, tokens, scales,
            "random scale per query at the same mean tokens (expected value: mixes the two bracketing scales)",
        )
    )  # fmt: skip
    confidences = data.confidences()
    cutoffs = cascade_cutoffs(confidences)
    processed = [cascade_processed_tokens(confidences, tokens, scales, c).mean() for c in cutoffs]
    routers.append(
        _sweep(
            "confidence cascade", "cascade", [(cascade_routing(confidences, scales, c), c) for c in cutoffs],
            values, tokens, scales,
            "escalate while the answer's mean log-probability is below c (c swept); cost = tokens of the final scale",
            processed,
        )
    )  # fmt: skip
    return routers


def evaluate_routing(test, predictors: dict[str, ScalePredictor], accuracy: str = "correct") -> RoutingEvaluation:
    """Every baseline and every predictor on the test oracle ``test`` (folder, table or OracleSet)."""
    if accuracy not in ACCURACY_KINDS:
        raise ValueError(f"accuracy must be one of {ACCURACY_KINDS}, got {accuracy!r}")
    data = as_oracle_set(test)
    for name, predictor in predictors.items():
        if list(predictor.scales_) != list(data.scales):
            raise ValueError(
                f"predictor {name!r} routes over scales {predictor.scales_}, the test data has {data.scales}"
            )
    values = data.correct().astype(np.float64) if accuracy == "correct" else data.scores()
    tokens = data.tokens()
    routers = baseline_routers(data, values, tokens)
    for name, predictor in predictors.items():
        routers += predictor_routers(name, predictor, data, values, tokens)
    return RoutingEvaluation(data, accuracy, routers, values, tokens)


# ----------------------------------------------------------------------------------------------------
# summaries


def operating_index(router: RouterResult, target: float) -> int:
    """The cheapest point reaching ``target`` accuracy, else the most accurate point."""
    indexed = [dict(p, index=i) for i, p in enumerate(router.points)]
    best = cheapest_point_reaching(indexed, target)
    if best is None:
        best = max(indexed, key=lambda p: (p["accuracy"], -p["tokens"]))
    return best["index"]


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
    values, tokens = evaluation.values, evaluation.tokens
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


def summarize(evaluation: RoutingEvaluation) -> list[dict]:
    """One row per router: APGR, AUC, CPT(50/80/95), the cheapest point matching full-scale accuracy (tokens,
    share of the largest scale's tokens, accuracy, parameter), under/over-selection there, the cascade's and the
    random router's accuracy at the same mean tokens, and (predictors) the point at their calibrated threshold."""
    weak, strong = evaluation.weak, evaluation.strong
    cascade = evaluation.router("confidence cascade").curve()
    random = evaluation.router("random").curve()
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
            )
        rows.append(row)
    return rows


def budget_rows(evaluation: RoutingEvaluation, shares=BUDGET_SHARES) -> list[dict]:
    """Accuracy of every swept router (not the single-point ones) at equal mean-token budgets: the interpolated
    curve at each share of the largest scale's tokens (reachable by mixing two operating points)."""
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
    return rows


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
            if router.single_point:
                family_apgr = _router_metrics(_subset(router, mask, values, tokens, evaluation.scales), weak, strong)
            else:
                family_apgr = {
                    "apgr": apgr(_subset(router, mask, values, tokens, evaluation.scales).curve(), weak, strong)
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
    points = [_point(r, values, tokens, scales, p["param"]) for r, p in zip(routings, router.points)]
    return RouterResult(router.name, router.kind, points, routings)


# ----------------------------------------------------------------------------------------------------
# calibration


def calibrate_threshold(predictor: ScalePredictor, calibration, accuracy: str = "correct") -> float:
    """Set ``predictor.threshold_`` to the cheapest threshold whose accuracy on ``calibration`` (held-out oracle
    data, never the test set) matches that data's full-scale accuracy; returns it."""
    data = as_oracle_set(calibration)
    values = data.correct().astype(np.float64) if accuracy == "correct" else data.scores()
    tokens = data.tokens()
    proba = predictor.predict_proba(data)
    points = []
    for threshold in default_thresholds(proba):
        point = _point(route_by_threshold(proba, data.scales, threshold), values, tokens, data.scales, threshold)
        points.append(point)
    target = float(values[:, -1].mean())
    predictor.threshold_ = float(cheapest_point_reaching(points, target)["param"])
    return predictor.threshold_


# ----------------------------------------------------------------------------------------------------
# writing


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def to_markdown(evaluation: RoutingEvaluation, rows: list[dict], families: list[dict], title: str = "") -> str:
    """The report: setup, the main table, equal-token comparisons, per-family results and notes."""
    data = evaluation.data
    weak, strong = evaluation.weak, evaluation.strong
    value = "correct_{s}" if evaluation.accuracy == "correct" else "score_{s}"
    lines = [
        f"# Routing evaluation{': ' + title if title else ''}",
        "",
        f"- test data: {data.source} ({len(data)} samples, {len(set(data.groups.tolist()))} images), scales "
        f"{evaluation.scales}",
        f"- accuracy of a routing = mean of `{value}` at the chosen scale; tokens = mean of `tokens_{{s}}` there",
        f"- weak = scale {evaluation.scales[0]} ({weak[0]:.1f} tokens, accuracy {weak[1]:.3f}); strong = scale "
        f"{evaluation.scales[-1]} ({strong[0]:.1f} tokens, accuracy {strong[1]:.3f})",
        "- APGR = (AUC - acc_weak) / (acc_strong - acc_weak), AUC = mean accuracy over [weak, strong] mean tokens "
        "(linear; a single-point router's AUC is its accuracy); 'APGR (log tokens)' averages over log tokens instead, "
        "so each doubling of tokens weighs the same; CPT(x) = fewest mean tokens recovering x of the gap",
        "- 'match full' = the cheapest realised operating point whose accuracy is at least the strong accuracy "
        "(read off the test curve, as CPT is); under / over = share routed below / above the paper-oracle label there",
    ]
    if strong[1] <= weak[1]:
        lines += [
            f"- **no gap to recover**: the largest scale is not more accurate than the smallest on this data "
            f"({strong[1]:.3f} vs {weak[1]:.3f}), so APGR and CPT are undefined (shown as -); compare AUC, the best "
            "accuracy on each curve and the accuracy at equal tokens instead",
        ]
    lines += [
        "",
        "| router | APGR | APGR (log tokens) | AUC | CPT(50%) | CPT(80%) | CPT(95%) | tokens at match full "
        "| % of largest | accuracy there | under | over | cascade acc. same tokens | random acc. same tokens "
        "| best accuracy (tokens) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        match = _fmt(row["tokens_at_match"], 1) + ("" if row["matches_full"] else " (never)")
        lines.append(
            f"| {row['router']} | {_fmt(row['apgr'])} | {_fmt(row['apgr_log'])} | {_fmt(row['auc'])} | "
            f"{_fmt(row['cpt50'], 1)} | "
            f"{_fmt(row['cpt80'], 1)} | {_fmt(row['cpt95'], 1)} | {match} | "
            f"{_fmt(100 * row['token_share_at_match'], 1)} | {_fmt(row['accuracy_at_match'])} | {_fmt(row['under'])} | "
            f"{_fmt(row['over'])} | {_fmt(row['cascade_accuracy_same_tokens'])} | "
            f"{_fmt(row['random_accuracy_same_tokens'])} | "
            f"{_fmt(row['best_accuracy'])} ({_fmt(row['tokens_at_best'], 1)}) |"
        )
    calibrated = [row for row in rows if "calibrated_threshold" in row]
    if calibrated:
        lines += [
            "",
            "Predictors at their own threshold, chosen on held-out TRAIN images (the cheapest threshold matching "
            "full-scale accuracy there), i.e. without looking at the test labels:",
            "",
            "| router | threshold | tokens | % of largest | accuracy | cascade acc. same tokens "
            "| random acc. same tokens |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in calibrated:
            lines.append(
                f"| {row['router']} | {_fmt(row['calibrated_threshold'], 4)} | {_fmt(row['calibrated_tokens'], 1)} | "
                f"{_fmt(100 * row['calibrated_tokens'] / strong[0], 1)} | {_fmt(row['calibrated_accuracy'])} | "
                f"{_fmt(row['calibrated_cascade_accuracy'])} | {_fmt(row['calibrated_random_accuracy'])} |"
            )
    cascade = next(row for row in rows if row["kind"] == "cascade")
    lines += [
        "",
        f"The cascade's cost above counts only the final scale's tokens. It actually runs every scale it tries: at "
        f"its match-full point it processes {_fmt(cascade['processed_tokens_at_match'], 1)} visual tokens per query "
        f"on average (vs {_fmt(cascade['tokens_at_match'], 1)}), plus one decode per scale tried.",
        "",
        "## Accuracy at equal token budgets",
        "",
        "Each swept router's curve read at the same mean tokens (a share of the largest scale's tokens); the best "
        "value per column is in bold.",
        "",
    ]
    budgets = budget_rows(evaluation)
    shares = [f"accuracy_at_{share:g}" for share in BUDGET_SHARES]
    best = {key: max(row[key] for row in budgets) for key in shares}
    header = " | ".join(f"{100 * share:g} % ({share * strong[0]:.0f})" for share in BUDGET_SHARES)
    lines += [f"| router | {header} |", "|---|" + "---:|" * len(shares)]
    for row in budgets:
        cells = [f"**{row[k]:.3f}**" if row[k] >= best[k] - 1e-12 else f"{row[k]:.3f}" for k in shares]
        lines.append(f"| {row['router']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Per question family (at each router's match-full operating point)",
        "",
    ]
    names = sorted({row["family"] for row in families})
    header = "| router | " + " | ".join(f"{f} acc / tokens / APGR" for f in names) + " |"
    lines += [header, "|---|" + "---:|" * len(names)]
    by_router: dict[str, dict] = {}
    for row in families:
        by_router.setdefault(row["router"], {})[row["family"]] = row
    counts = {row["family"]: row["n"] for row in families}
    for router, cells in by_router.items():
        parts = [
            f"{_fmt(cells[f]['accuracy'])} / {_fmt(cells[f]['tokens'], 1)} / {_fmt(cells[f]['apgr'], 2)}" for f in names
        ]
        lines.append(f"| {router} | " + " | ".join(parts) + " |")
    lines += ["", "Samples per family: " + ", ".join(f"{f} {counts[f]}" for f in names) + "."]
    return "\n".join(lines) + "\n"


def plot_curves(evaluation: RoutingEvaluation, path: str | os.PathLike) -> None:
    """Accuracy against mean visual tokens for every router, on a linear and a log token axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    strong = evaluation.strong
    for axis, scale in zip(axes, ("linear", "log")):
        for router in evaluation.routers:
            tokens = [p["tokens"] for p in router.points]
            accuracy = [p["accuracy"] for p in router.points]
            if router.kind == "fixed":
                continue
            if router.kind == "oracle":
                axis.plot(tokens, accuracy, "*", markersize=12, label=router.name)
            elif router.kind == "classifier":
                axis.plot(tokens, accuracy, "D", markersize=7, label=router.name)
            elif router.kind == "cascade":
                line = axis.plot(tokens, accuracy, "-", label=f"{router.name} (final-scale tokens)")[0]
                processed = [p["processed_tokens"] for p in router.points]
                axis.plot(processed, accuracy, "--", color=line.get_color(), label=f"{router.name} (tokens processed)")
            elif router.kind == "random":
                axis.plot(tokens, accuracy, ":", color="gray", label="random (matched tokens)")
            else:
                curve = router.curve()
                line = axis.plot(curve.tokens, curve.accuracy, "-", linewidth=1.8, label=router.name)[0]
                if router.calibrated_index is not None:
                    point = router.points[router.calibrated_index]
                    axis.plot([point["tokens"]], [point["accuracy"]], "o", color=line.get_color(), markersize=5)
        fixed = [r.points[0] for r in evaluation.routers if r.kind == "fixed"]
        axis.plot([p["tokens"] for p in fixed], [p["accuracy"] for p in fixed], "ks", label="fixed scales")
        axis.axhline(strong[1], color="black", linewidth=0.6, linestyle="-.")
        axis.set_xscale(scale)
        axis.set_xlabel(f"mean visual tokens per query ({scale} axis)")
        axis.set_ylabel("accuracy")
        axis.grid(alpha=0.3)
    axes[0].set_title("accuracy vs mean tokens (APGR integrates this axis)")
    axes[1].set_title("same, log tokens (dots: threshold chosen on train)")
    axes[1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _write_csv(path: Path, rows: list[dict]) -> None:
    names = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_evaluation(evaluation: RoutingEvaluation, out_dir: str | os.PathLike, title: str = "") -> dict[str, Path]:
    """Write ``results.md``, ``results.csv``, ``results.json``, ``families.csv``, ``curves.csv`` and ``curves.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize(evaluation)
    families = family_rows(evaluation)
    budgets = budget_rows(evaluation)
    names = ("results.md", "results.csv", "results.json", "families.csv", "budgets.csv")
    paths = {name: out_dir / name for name in names}
    paths["curves.csv"], paths["curves.png"] = out_dir / "curves.csv", out_dir / "curves.png"
    paths["results.md"].write_text(to_markdown(evaluation, rows, families, title), encoding="utf-8")
    _write_csv(paths["results.csv"], rows)
    _write_csv(paths["families.csv"], families)
    _write_csv(paths["budgets.csv"], budgets)
    curve_rows = [{"router": r.name, "kind": r.kind, **p} for r in evaluation.routers for p in r.points]
    _write_csv(paths["curves.csv"], curve_rows)
    summary = {
        "test": evaluation.data.source,
        "n": len(evaluation.data),
        "scales": evaluation.scales,
        "accuracy": evaluation.accuracy,
        "weak": list(evaluation.weak),
        "strong": list(evaluation.strong),
        "routers": rows,
        "budgets": budgets,
        "families": families,
    }
    paths["results.json"].write_text(json.dumps(_json_safe(summary), indent=2) + "\n", encoding="utf-8")
    plot_curves(evaluation, paths["curves.png"])
    return paths
