"""Routing reports: the evaluation of :mod:`routing_study.evaluation` as markdown, CSV, JSON and a plot.

:func:`write_evaluation` writes one folder (``results.md`` and friends); :func:`routing_markdown` is its text and
:func:`plot_curves` its figure. :func:`pipeline_report` composes the quickstart's report (the oracle summary and
the routing evaluation of one run) from the same renderers.
"""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path

from m3.files import dumps_json
from m3.markdown import format_number, markdown_table

from .evaluation import (
    BELOW_FULL,
    BUDGET_SHARES,
    KNAPSACK_BATCH,
    SCORECARD_SHARES,
    RoutingEvaluation,
    budget_rows,
    family_rows,
    scorecard_rows,
    summarize_routing,
)


def _hull_cell(row: dict) -> str:
    """'yes' / 'no' for a swept router's curve being above the fixed-scale hull all over 5-50 % of the largest
    scale's tokens, with its smallest margin there; '-' for single-point routers."""
    if "hull_margin_min" not in row:
        return "-"
    above = "yes" if row["hull_margin_min"] > 0 else "no"
    return f"{above} ({row['hull_margin_min']:+.3f})"


def routing_markdown(evaluation: RoutingEvaluation, rows: list[dict], families: list[dict], title: str = "") -> str:
    """The report: setup, the main table, equal-token comparisons, per-family results and notes (``rows``:
    :func:`summarize_routing`, ``families``: :func:`family_rows`)."""
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
        "- the fixed-scale hull = the best mix of any two fixed scales at the same mean tokens (the strongest "
        "query-blind routing); 'above hull 5-50 %' = the router's curve is above it at every mean token count from 5 "
        "to 50 % of the largest scale's (the smallest margin in brackets)",
    ]
    if strong[1] <= weak[1]:
        lines += [
            f"- **no gap to recover**: the largest scale is not more accurate than the smallest on this data "
            f"({strong[1]:.3f} vs {weak[1]:.3f}), so APGR and CPT are undefined (shown as -); compare AUC, the best "
            "accuracy on each curve and the accuracy at equal tokens instead",
        ]
    headers = [
        "router", "APGR", "APGR (log tokens)", "AUC", "CPT(50%)", "CPT(80%)", "CPT(95%)", "tokens at match full",
        "% of largest", "accuracy there", "under", "over", "cascade acc. same tokens", "random acc. same tokens",
        "hull acc. same tokens", "above hull 5-50 % (min margin)", "best accuracy (tokens)",
    ]  # fmt: skip
    cells = [
        [
            row["router"], format_number(row["apgr"]), format_number(row["apgr_log"]), format_number(row["auc"]),
            format_number(row["cpt50"], 1), format_number(row["cpt80"], 1), format_number(row["cpt95"], 1),
            format_number(row["tokens_at_match"], 1) + ("" if row["matches_full"] else " (never)"),
            format_number(100 * row["token_share_at_match"], 1), format_number(row["accuracy_at_match"]),
            format_number(row["under"]), format_number(row["over"]), format_number(row["cascade_accuracy_same_tokens"]),
            format_number(row["random_accuracy_same_tokens"]), format_number(row["hull_accuracy_same_tokens"]),
            _hull_cell(row), f"{format_number(row['best_accuracy'])} ({format_number(row['tokens_at_best'], 1)})",
        ]
        for row in rows
    ]  # fmt: skip
    lines += ["", markdown_table(headers, cells, "l" + "r" * 16)]
    calibrated = [row for row in rows if "calibrated_value" in row]
    if calibrated:
        lines += [
            "",
            "Predictors at their own operating point, chosen on held-out TRAIN images (the cheapest threshold "
            "matching full-scale accuracy there), i.e. without looking at the test labels:",
            "",
        ]
        headers = [
            "router", "rule", "value", "tokens", "% of largest", "accuracy", "cascade acc. same tokens",
            "random acc. same tokens", "hull acc. same tokens",
        ]  # fmt: skip
        cells = [
            [
                row["router"], row["rule"], format_number(row["calibrated_value"], 4),
                format_number(row["calibrated_tokens"], 1),
                format_number(100 * row["calibrated_tokens"] / strong[0], 1), format_number(row["calibrated_accuracy"]),
                format_number(row["calibrated_cascade_accuracy"]), format_number(row["calibrated_random_accuracy"]),
                format_number(row["calibrated_hull_accuracy"]),
            ]
            for row in calibrated
        ]  # fmt: skip
        lines.append(markdown_table(headers, cells, "ll" + "r" * 7))
    lines += certified_markdown(rows, strong)
    cascade = next(row for row in rows if row["kind"] == "cascade")
    lines += [
        "",
        f"The cascade's cost above counts only the final scale's tokens. It actually runs every scale it tries: at "
        f"its match-full point it processes {format_number(cascade['processed_tokens_at_match'], 1)} visual tokens per "
        "query "
        f"on average (vs {format_number(cascade['tokens_at_match'], 1)}), plus one decode per scale tried.",
        "",
        "## Accuracy at equal token budgets",
        "",
        "Each swept router's curve read at the same mean tokens processed (a share of the largest scale's tokens; "
        "points between two operating points are reached by mixing them at random). `(knapsack)` rows route "
        + ("the test set as one batch" if KNAPSACK_BATCH is None else f"each batch of {KNAPSACK_BATCH} test queries")
        + " by a knapsack on the predictor's probabilities, maximising its expected correct answers within the "
        "budget (never over it). The best value per column is in bold.",
        "",
    ]
    budgets = budget_rows(evaluation)
    shares = [f"accuracy_at_{share:g}" for share in BUDGET_SHARES]
    best = {key: max((row[key] for row in budgets if not math.isnan(row[key])), default=math.nan) for key in shares}
    headers = ["router", *(f"{100 * share:g} % ({share * strong[0]:.0f})" for share in BUDGET_SHARES)]
    cells = [
        [
            row["router"],
            *("-" if math.isnan(row[k]) else f"**{row[k]:.3f}**" if row[k] >= best[k] - 1e-12 else f"{row[k]:.3f}"
              for k in shares),
        ]
        for row in budgets
    ]  # fmt: skip
    lines.append(markdown_table(headers, cells, "l" + "r" * len(shares)))
    lines += [
        "",
        "## Per question family (at each router's match-full operating point)",
        "",
    ]
    names = sorted({row["family"] for row in families})
    by_router: dict[str, dict] = {}
    for row in families:
        by_router.setdefault(row["router"], {})[row["family"]] = row
    counts = {row["family"]: row["n"] for row in families}

    def family_cell(row: dict) -> str:
        return f"{format_number(row['accuracy'])} / {format_number(row['tokens'], 1)} / {format_number(row['apgr'], 2)}"

    cells = [[router, *(family_cell(c[f]) for f in names)] for router, c in by_router.items()]
    headers = ["router", *(f"{f} acc / tokens / APGR" for f in names)]
    lines.append(markdown_table(headers, cells, "l" + "r" * len(names)))
    lines += ["", "Samples per family: " + ", ".join(f"{f} {counts[f]}" for f in names) + "."]
    return "\n".join(lines) + "\n"


def scorecard_markdown(evaluation: RoutingEvaluation, reference: str = "question-only", title: str = "") -> str:
    """The routing scorecard (:func:`routing_study.evaluation.scorecard_rows`) as two markdown tables: every router's
    curve (accuracy and gap recovered at 5 / 10 / 25 % of the tokens, above the hull, tokens to full - 0.01 / 0.02),
    and each predictor at the operating points chosen on calibration data (certified; fitted to 10 and 25 % of the
    tokens, beside the batch knapsack at exactly that budget)."""
    card = scorecard_rows(evaluation, reference)
    strong_tokens, strong = evaluation.strong
    percent = [f"{100 * share:g} %" for share in SCORECARD_SHARES]
    lines = [
        f"Routing scorecard{': ' + title if title else ''} ({len(evaluation.data)} queries; {strong_tokens:.0f} "
        f"tokens: accuracy {strong:.3f}). Curves, read with the test labels: accuracy at a share of the "
        f"{strong_tokens:.0f} tokens, with (in brackets) the share of the gap between the fixed-scale hull and the "
        "oracle knapsack (the batch knapsack on the true correctness) that the router recovers there; whether the "
        "curve is above the hull at every budget from 5 to 50 %; the mean tokens to reach full - 0.01 and full - 0.02 "
        "(in brackets: against "
        f"`{reference}` by the same rule).",
        "",
    ]
    cells = []
    for row in card:
        shares = [
            f"{format_number(row[f'accuracy_at_{share:g}'])} ({_percent(row[f'gap_at_{share:g}'])})"
            for share in SCORECARD_SHARES
        ]
        above = "-" if row["above_hull"] is None else f"{'yes' if row['above_hull'] else 'no'} "
        above += "" if row["above_hull"] is None else f"({row['hull_margin_min']:+.3f})"
        targets = []
        for below in BELOW_FULL:
            key = f"tokens_to_full_minus_{below:g}"
            ratio = row[f"{key}_vs_reference"]
            targets.append(
                ("never" if math.isnan(row[key]) else f"{row[key]:.1f}")
                + ("" if math.isnan(ratio) else f" ({_percent(ratio)})")
            )
        cells.append([_router_cell(row), row["rule"] or "-", *shares, above, *targets])
    headers = [
        "router", "rule", *percent, "above hull 5-50 % (min margin)",
        *(f"tokens to full - {below:g}" for below in BELOW_FULL),
    ]  # fmt: skip
    lines.append(markdown_table(headers, cells, "ll" + "r" * len(SCORECARD_SHARES) + "lrr"))
    predictors = [row for row in card if row["kind"] == "predictor"]
    if predictors:
        lines += [
            "",
            "Operating points chosen on calibration data, without the test labels: the certified threshold or price "
            f"(eps and delta as certified; test tokens, in brackets against `{reference}` by the same rule, and test "
            "accuracy), and the threshold or price fitted to a mean-token budget, beside the batch knapsack on the "
            "same predictor's probabilities at exactly that budget (test tokens / accuracy).",
            "",
        ]
        cells = []
        for row in predictors:
            certified = "-"
            if not math.isnan(row["certified_tokens"]):
                certified = (
                    f"{row['certified_tokens']:.1f} ({_percent(row['certified_tokens_vs_reference'])}), "
                    f"{format_number(row['certified_accuracy'])}"
                )
            budgets = []
            for share in SCORECARD_BUDGETS:
                tokens, accuracy = row[f"budget_{share:g}_tokens"], row[f"budget_{share:g}_accuracy"]
                budgets += [
                    "-" if math.isnan(tokens) else f"{tokens:.1f} / {accuracy:.3f}",
                    format_number(row[f"knapsack_{share:g}"]),
                ]
            cells.append([row["router"], row["rule"], certified, *budgets])
        headers = ["router", "rule", f"certified: tokens (vs {reference}), accuracy"]
        for share in SCORECARD_BUDGETS:
            headers += [f"fitted to {100 * share:g} %: tokens / accuracy", f"batch knapsack {100 * share:g} %"]
        lines.append(markdown_table(headers, cells, "llr" + "rr" * len(SCORECARD_BUDGETS)))
    return "\n".join(lines) + "\n"


def _router_cell(row: dict) -> str:
    return f"**{row['router']}**" if row["kind"] in ("hull", "oracle-knapsack") else row["router"]


SCORECARD_BUDGETS = (0.1, 0.25)  # the budgets the scorecard's second table fits operating points to


def _percent(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.0f} %"


def _signed(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:+.3f}"


def certified_markdown(rows: list[dict], strong: tuple[float, float]) -> list[str]:
    """The certified-threshold table (empty when no predictor carries a certificate): what each certificate
    promises and what its threshold does on the test data."""
    certified = [row for row in rows if "certified_value" in row]
    if not certified:
        return []
    lines = [
        "",
        "Predictors at their CERTIFIED threshold or price (Learn-then-Test on labelled calibration data: with "
        "probability at least 1 - delta over the calibration draw, the drop below always-largest is at most eps on "
        "data like it; 'largest scale' where nothing cheaper was certified). 'test drop' = the largest scale's test "
        "accuracy minus the router's:",
        "",
    ]
    cells = []
    for row in certified:
        p_value = format_number(row["certificate_p_value"], 4)
        drop, tokens = row["certificate_calibration_drop"], row["certificate_calibration_tokens"]
        calibration = f"{format_number(drop)} / {format_number(tokens, 1)}"
        if row["certificate_threshold"] is None:
            calibration = "nothing certified: largest scale"
        cells.append(
            [
                row["router"], f"{row['certificate_epsilon']:g}", f"{row['certificate_delta']:g}", row["certificate_n"],
                f"{p_value} ({row['certificate_p_value_method']})",
                "largest scale" if row["certificate_threshold"] is None else format_number(row["certified_value"], 4),
                calibration, format_number(row["certified_tokens"], 1),
                format_number(100 * row["certified_tokens"] / strong[0], 1), format_number(row["certified_accuracy"]),
                format_number(row["certified_drop"]), "yes" if row["certified_holds"] else "**no**",
                format_number(row["certified_random_accuracy"]), format_number(row["certified_hull_accuracy"]),
            ]
        )  # fmt: skip
    headers = [
        "router", "eps", "delta", "n", "p-value (method)", "threshold or price", "calibration drop / tokens",
        "test tokens",
        "% of largest", "test accuracy", "test drop", "within eps", "random acc. same tokens", "hull acc. same tokens",
    ]  # fmt: skip
    return [*lines, markdown_table(headers, cells, "lrrrlrlrrrrlrr")]


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
            if router.kind in ("fixed", "cascade-processed"):  # the cascade's processed tokens: dashed, below
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
            elif router.kind == "oracle-knapsack":
                axis.plot(tokens, accuracy, "-.", color="gray", linewidth=1.2, label=router.name)
            elif router.kind == "hull":
                axis.plot(tokens, accuracy, "--", color="black", linewidth=1.2, label=router.name)
            else:
                curve = router.curve()
                line = axis.plot(curve.tokens, curve.accuracy, "-", linewidth=1.8, label=router.name)[0]
                if router.calibrated_index is not None:
                    point = router.points[router.calibrated_index]
                    axis.plot([point["tokens"]], [point["accuracy"]], "o", color=line.get_color(), markersize=5)
                if router.certified_index is not None:
                    point = router.points[router.certified_index]
                    axis.plot([point["tokens"]], [point["accuracy"]], "s", color=line.get_color(), markersize=7)
        fixed = [r.points[0] for r in evaluation.routers if r.kind == "fixed"]
        axis.plot([p["tokens"] for p in fixed], [p["accuracy"] for p in fixed], "ks", label="fixed scales")
        axis.axhline(strong[1], color="black", linewidth=0.6, linestyle="-.")
        axis.set_xscale(scale)
        axis.set_xlabel(f"mean visual tokens per query ({scale} axis)")
        axis.set_ylabel("accuracy")
        axis.grid(alpha=0.3)
    axes[0].set_title("accuracy vs mean tokens (APGR integrates this axis)")
    axes[1].set_title("same, log tokens (dots: threshold chosen on train; squares: certified)")
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


def write_evaluation(evaluation: RoutingEvaluation, out_dir: str | os.PathLike, title: str = "") -> dict[str, Path]:
    """Write ``results.md``, ``results.csv``, ``results.json``, ``families.csv``, ``budgets.csv``, ``curves.csv``,
    ``curves.png`` and (when the data has a question-only router) ``scorecard.md``; returns their paths by name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize_routing(evaluation)
    families = family_rows(evaluation)
    budgets = budget_rows(evaluation)
    names = ("results.md", "results.csv", "results.json", "families.csv", "budgets.csv")
    paths = {name: out_dir / name for name in names}
    paths["curves.csv"], paths["curves.png"] = out_dir / "curves.csv", out_dir / "curves.png"
    paths["results.md"].write_text(routing_markdown(evaluation, rows, families, title), encoding="utf-8")
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
    paths["results.json"].write_text(dumps_json(summary, indent=2) + "\n", encoding="utf-8")  # null, never NaN
    plot_curves(evaluation, paths["curves.png"])
    if any(router.name == "question-only" for router in evaluation.routers):
        paths["scorecard.md"] = out_dir / "scorecard.md"
        paths["scorecard.md"].write_text(scorecard_markdown(evaluation, title=title), encoding="utf-8")
    return paths


def plot_shift(shift, path: str | os.PathLike) -> None:
    """Each predictor's operating points on the shifted evaluation data (train threshold, certified on train,
    certified on shift) in accuracy against tokens, with the largest scale and its accuracy minus eps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluation = shift.evaluation
    figure, axis = plt.subplots(figsize=(8, 5))
    markers = {"train threshold": "o", "certified on train": "^", "certified on shift": "s"}
    colours: dict[str, str] = {}
    for row in shift.rows:
        colour = colours.setdefault(row["router"], f"C{len(colours) % 10}")
        label = f"{row['router']} ({row['rule']}): {row['threshold_from']}"
        marker = markers.get(row["threshold_from"], "o")  # "train threshold" or "train price": o
        axis.plot(row["tokens"], row["accuracy"], marker, color=colour, label=label)
    for router in evaluation.routers:
        if router.kind == "fixed":
            point = router.points[0]
            axis.plot(point["tokens"], point["accuracy"], "ks", markersize=4)
    strong_tokens, strong = evaluation.strong
    axis.axhline(strong, color="black", linewidth=0.8, label="largest scale")
    axis.axhline(strong - shift.max_drop, color="black", linewidth=0.8, linestyle="--", label="largest - eps")
    axis.set_xscale("log")
    axis.set_xlabel("mean visual tokens processed (log axis)")
    axis.set_ylabel("accuracy on the shifted evaluation part")
    axis.set_title("under shift: train thresholds (o, ^) vs thresholds certified on shifted labels (s)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=6, loc="lower right", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_shift(shift, out_dir: str | os.PathLike, title: str = "") -> dict[str, Path]:
    """The routing report of the shifted evaluation part (:func:`write_evaluation`) plus ``shift.md``,
    ``shift.json`` and ``shift.png`` (:func:`routing_study.shift.shift_markdown`, :func:`plot_shift`)."""
    from .shift import shift_markdown, shift_summary

    out_dir = Path(out_dir)
    paths = write_evaluation(shift.evaluation, out_dir, title)
    paths["shift.md"], paths["shift.json"], paths["shift.png"] = (
        out_dir / n for n in ("shift.md", "shift.json", "shift.png")
    )
    paths["shift.md"].write_text(shift_markdown(shift, title), encoding="utf-8")
    paths["shift.json"].write_text(dumps_json(shift_summary(shift), indent=2) + "\n", encoding="utf-8")
    plot_shift(shift, paths["shift.png"])
    return paths


def nest_markdown(markdown: str, levels: int = 1) -> str:
    """``markdown`` with every heading ``levels`` deeper, so a whole report reads as one section of another."""
    return re.sub(r"^(#+) ", lambda match: "#" * (len(match.group(1)) + levels) + " ", markdown, flags=re.MULTILINE)


def pipeline_report(
    report_dir: str | os.PathLike,
    evaluation: RoutingEvaluation,
    routing_dir: str | os.PathLike,
    oracle_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    best: str,
    adaptive_dir: str | os.PathLike,
    timings: dict[str, float],
    shift_dir: str | os.PathLike | None = None,
) -> str:
    """The quickstart's report, to be saved in ``report_dir``: the run's setup, then the oracle report of the test
    oracle (``oracle_dir``, with its ``report.png`` from :func:`oracle_data.write_report`), the routing report
    of ``evaluation`` (written to ``routing_dir`` by :func:`write_evaluation`) and, with ``shift_dir``, the shifted
    split's comparison (``shift.md`` from :func:`write_shift`), each as a section."""
    from oracle_data import load_oracle, read_manifest
    from oracle_data.report import oracle_markdown, pope_by_scale, summarize_oracle

    oracle_dir, routing_dir = Path(oracle_dir), Path(routing_dir)
    manifest = read_manifest(oracle_dir)
    table, scales = load_oracle(oracle_dir), list(manifest["model"]["scales"])
    oracle = oracle_markdown(summarize_oracle(table, scales), scales, manifest, pope_by_scale(table, scales))
    routing = routing_markdown(evaluation, summarize_routing(evaluation), family_rows(evaluation))
    lines = [
        "# Quickstart report",
        "",
        f"Model: `{model_dir}`. Deployed predictor and rule: `{best}`, the learned one whose certified operating "
        f"point spends the fewest tokens on the calibration images (no test label chooses it); `{adaptive_dir}` "
        "holds the model with it at its certified threshold or price (see 'Predictors at their CERTIFIED threshold "
        "or price' below).",
        "",
        "Stage times (s): " + ", ".join(f"{name} {seconds:.0f}" for name, seconds in timings.items()),
        "",
    ]
    for where, folder in (("test split", routing_dir), ("shifted test split", shift_dir)):
        card = None if folder is None else Path(folder) / "scorecard.md"
        if card is not None and card.exists():
            lines += [f"## Routing scorecard ({where})", "", card.read_text(encoding="utf-8").rstrip("\n"), ""]
    lines += [
        "## Oracle and per-scale accuracy (test split)",
        "",
        f"![oracle accuracy per scale]({_relative(oracle_dir / 'report.png', report_dir)})",
        "",
        nest_markdown(oracle, 2).rstrip("\n"),
        "",
        "## Routing (test split)",
        "",
        nest_markdown(routing, 2).rstrip("\n"),
        "",
        f"![accuracy vs visual tokens]({_relative(routing_dir / 'curves.png', report_dir)})",
        "",
    ]
    if shift_dir is not None:
        shift_dir = Path(shift_dir)
        lines += [
            "## Routing under a shift (shifted test split)",
            "",
            nest_markdown((shift_dir / "shift.md").read_text(encoding="utf-8"), 2).rstrip("\n"),
            "",
            f"![routing under the shift]({_relative(shift_dir / 'shift.png', report_dir)})",
            "",
        ]
    return "\n".join(lines)


def _relative(path: Path, start: str | os.PathLike) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def validity_markdown(studies: dict[str, tuple[list[dict], list[dict]]], title: str = "") -> str:
    """The resplit study's tables: validity (share of splits over eps against delta + slack) and efficiency (mean
    tokens at the certified threshold against eps), one section per data set (``studies``: name -> rows)."""
    lines = [f"# Certified routing: validity and efficiency{': ' + title if title else ''}", ""]
    for where, (validity, efficiency) in studies.items():
        if not validity:
            continue
        first = validity[0]
        lines += [
            f"## {where}",
            "",
            f"{first['splits']} random splits by image: about {first['n']} calibration queries certify each router "
            f"(Learn-then-Test, delta {first['delta']:g}), the rest test it. 'over eps' = share of splits whose test "
            "drop below always-largest exceeds eps; the bound is delta plus binomial slack (99 % quantile of "
            "Binomial(splits, delta) / splits). The test part is finite, so 'over eps' slightly overstates the miss "
            "rate. Tokens = mean visual tokens processed on the test part (probes included).",
            "",
        ]
        cells = [
            [
                row["router"], row["method"], f"{row['epsilon']:g}", f"{row['exceed_share']:.3f}",
                f"{row['bound']:.3f}",
                "yes" if row["valid"] else "**no**", f"{row['mean_test_drop']:.4f}", f"{row['mean_tokens']:.1f}",
                f"{row['certified_share']:.2f}",
            ]
            for row in sorted(validity, key=lambda r: (r["epsilon"], r["method"], r["router"]))
        ]  # fmt: skip
        headers = [
            "router", "p-value", "eps", "over eps", "bound", "valid", "mean test drop", "mean tokens",
            "certified anything",
        ]  # fmt: skip
        lines += [markdown_table(headers, cells, "llrrrlrrr"), "", *_method_choice(validity), ""]
        epsilons = sorted({row["epsilon"] for row in efficiency})
        routers = list(dict.fromkeys(row["router"] for row in efficiency))
        by_key = {(row["router"], row["epsilon"]): row for row in efficiency}
        method = efficiency[0]["method"] if efficiency else "-"
        lines += [
            f"Mean tokens processed at the certified threshold against eps ({method} p-value); fewest per column "
            "in bold:",
            "",
        ]
        best = {e: min(by_key[(r, e)]["mean_tokens"] for r in routers if (r, e) in by_key) for e in epsilons}
        cells = []
        for router in routers:
            values = [by_key[(router, e)]["mean_tokens"] for e in epsilons]
            cells.append(
                [router, *(f"**{v:.1f}**" if v <= best[e] + 1e-9 else f"{v:.1f}" for v, e in zip(values, epsilons))]
            )
        headers = ["router", *(f"eps {e:g}" for e in epsilons)]
        lines += [markdown_table(headers, cells, "l" + "r" * len(epsilons)), ""]
    return "\n".join(lines)


def _method_choice(validity: list[dict]) -> list[str]:
    """Per eps, the valid p-value method with the fewest mean tokens, averaged over the routers."""
    lines = []
    for epsilon in sorted({row["epsilon"] for row in validity}):
        rows = [row for row in validity if row["epsilon"] == epsilon]
        methods = sorted({row["method"] for row in rows})
        summary = []
        for method in methods:
            chosen = [row for row in rows if row["method"] == method]
            tokens = sum(row["mean_tokens"] for row in chosen) / len(chosen)
            summary.append((tokens, method, all(row["valid"] for row in chosen)))
        valid = [item for item in summary if item[2]]
        text = ", ".join(f"{m} {t:.1f}{'' if ok else ' (NOT valid everywhere)'}" for t, m, ok in summary)
        pick = min(valid)[1] if valid else "none"
        lines.append(f"- eps {epsilon:g}: mean tokens over the routers by p-value: {text}; fewest among valid: {pick}")
    return lines


def plot_efficiency(studies: dict[str, tuple[list[dict], list[dict]]], path: str | os.PathLike) -> None:
    """Mean tokens at the certified threshold against eps, one panel per data set, one line per router."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(where, rows) for where, (_, rows) in studies.items() if rows]
    figure, axes = plt.subplots(1, max(len(panels), 1), figsize=(6.5 * max(len(panels), 1), 4.5), squeeze=False)
    for axis, (where, rows) in zip(axes[0], panels):
        for router in dict.fromkeys(row["router"] for row in rows):
            mine = sorted((row for row in rows if row["router"] == router), key=lambda r: r["epsilon"])
            kind = mine[0]["kind"]
            style = "k--" if kind == "fixed" else ":" if kind in ("question-only", "attribute") else "-"
            axis.plot(
                [r["epsilon"] for r in mine], [r["mean_tokens"] for r in mine], style, marker="o", markersize=3,
                label=router,
            )  # fmt: skip
        axis.set_yscale("log")
        axis.set_xlabel("eps (tolerated drop below the largest scale)")
        axis.set_ylabel("mean visual tokens processed at the certified threshold")
        axis.set_title(f"{where} ({rows[0]['method']}, {rows[0]['splits']} splits)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_validity(studies: dict[str, tuple[list[dict], list[dict]]], out_dir: str | os.PathLike) -> dict[str, Path]:
    """``validity.md``, ``validity.csv``, ``efficiency.csv`` and ``efficiency.png`` of a resplit study."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in ("validity.md", "validity.csv", "efficiency.csv", "efficiency.png")}
    paths["validity.md"].write_text(validity_markdown(studies), encoding="utf-8")
    _write_csv(paths["validity.csv"], [dict(data=where, **row) for where, (rows, _) in studies.items() for row in rows])
    _write_csv(
        paths["efficiency.csv"], [dict(data=where, **row) for where, (_, rows) in studies.items() for row in rows]
    )
    plot_efficiency(studies, paths["efficiency.png"])
    return paths
