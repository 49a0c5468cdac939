"""The oracle report: accuracy per scale, both oracles (the paper's Table 2 "Oracle" rows) and label distributions.

:func:`summarize_oracle` is a pure function of the table; :func:`write_report` renders it as ``report.md`` and
``report.png`` next to the shards. Accuracy is the mean metric score (what ``scripts/evaluate.py`` reports);
an oracle's accuracy is the mean score at the scale it picks, and its tokens are the visual tokens seen there.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from m3.markdown import format_number, markdown_table
from m3.metrics import OVERALL, pope_summary

from .store import load_oracle, read_manifest

NO_FAMILY = "(none)"
ORACLES = {
    "paper": ("oracle_scale", "oracle_none_correct", "none correct"),
    "monotone": ("oracle_monotone_scale", "oracle_monotone_unreachable", "largest scale wrong"),
}


def summarize_oracle(table: pa.Table, scales: list[int]) -> dict[str, dict]:
    """Per family (sorted, then ``"overall"``): ``n``; per scale ``accuracy`` (mean score), ``correct_rate``,
    ``tokens`` (mean visual tokens); per oracle (``paper``, ``monotone``) ``accuracy``, ``correct_rate``,
    ``tokens``, ``flagged`` (count of none-correct / unreachable samples), ``labels`` (count per scale) and
    ``labels_unflagged`` (count per scale among the samples not flagged: for the monotone oracle, those answered
    right at the largest scale, whose label says how many tokens they really need)."""
    families = np.array([NO_FAMILY if f is None else f for f in table.column("family").to_pylist()], dtype=object)
    score = {s: table.column(f"score_{s}").to_numpy().astype(float) for s in scales}
    correct = {s: table.column(f"correct_{s}").to_numpy(zero_copy_only=False).astype(bool) for s in scales}
    tokens = {s: table.column(f"tokens_{s}").to_numpy().astype(float) for s in scales}
    summary = {}
    for family in [*sorted(set(families.tolist())), OVERALL]:
        mask = np.ones(len(families), bool) if family == OVERALL else families == family
        n = int(mask.sum())
        entry = {
            "n": n,
            "accuracy": {s: float(score[s][mask].mean()) if n else 0.0 for s in scales},
            "correct_rate": {s: float(correct[s][mask].mean()) if n else 0.0 for s in scales},
            "tokens": {s: float(tokens[s][mask].mean()) if n else 0.0 for s in scales},
        }
        for name, (scale_column, flag_column, _) in ORACLES.items():
            chosen = table.column(scale_column).to_numpy()[mask]
            flagged = table.column(flag_column).to_numpy(zero_copy_only=False)[mask]
            picked_score = np.array([score[s][mask][i] for i, s in enumerate(chosen)], dtype=float)
            picked_correct = np.array([correct[s][mask][i] for i, s in enumerate(chosen)], dtype=bool)
            picked_tokens = np.array([tokens[s][mask][i] for i, s in enumerate(chosen)], dtype=float)
            entry[name] = {
                "accuracy": float(picked_score.mean()) if n else 0.0,
                "correct_rate": float(picked_correct.mean()) if n else 0.0,
                "tokens": float(picked_tokens.mean()) if n else 0.0,
                "flagged": int(flagged.sum()),
                "labels": {s: int((chosen == s).sum()) for s in scales},
                "labels_unflagged": {s: int(((chosen == s) & ~flagged).sum()) for s in scales},
            }
        summary[family] = entry
    return summary


def oracle_markdown(summary: dict, scales: list[int], manifest: dict, pope: dict | None = None) -> str:
    """The report text: setup, accuracy per scale and oracle, tokens, Table 2 rows, label distributions."""
    model, data, settings = manifest["model"], manifest["data"], manifest["settings"]
    overall = summary[OVERALL]
    families = list(summary)
    largest = scales[-1]
    metrics = ", ".join(f"{name} ({count})" for name, count in data.get("metrics", {}).items())
    lines = [
        "# Oracle report",
        "",
        f"- model: `{model['path']}` ({model['model_type']}, scales {model['scales']}, text hidden size "
        f"{model['text_hidden_size']})",
        f"- data: `{data['path']}` ({overall['n']} samples; metrics: {metrics})",
        f"- a sample is correct at a scale when its score is >= {settings['correct_threshold']}; greedy answers, "
        f"at most {settings['max_new_tokens']} new tokens",
        "- accuracy = mean metric score; an oracle's accuracy is the mean score at the scale it picks",
        "",
        "## Accuracy per scale and oracle",
        "",
        markdown_table(
            ["family", "n", *scales, "oracle", "monotone oracle"],
            [
                [
                    family,
                    entry["n"],
                    *(format_number(entry["accuracy"][s]) for s in scales),
                    format_number(entry["paper"]["accuracy"]),
                    format_number(entry["monotone"]["accuracy"]),
                ]
                for family, entry in summary.items()
            ],
            "lr" + "r" * len(scales) + "rr",
            spaced=True,
        ),
        "",
        "## Mean visual tokens",
        "",
        markdown_table(
            ["family", *scales, "oracle", "monotone oracle"],
            [
                [
                    family,
                    *(f"{entry['tokens'][s]:.1f}" for s in scales),
                    f"{entry['paper']['tokens']:.1f}",
                    f"{entry['monotone']['tokens']:.1f}",
                ]
                for family, entry in summary.items()
            ],
            "l" + "r" * len(scales) + "rr",
            spaced=True,
        ),
        "",
        "## Table 2 rows (overall)",
        "",
        markdown_table(
            ["row", "accuracy", "mean visual tokens", "flagged samples"],
            [
                [
                    f"full ({largest} per grid)",
                    format_number(overall["accuracy"][largest]),
                    f"{overall['tokens'][largest]:.1f}",
                    "",
                ],
                [
                    "Oracle (paper: fewest tokens that answer correctly)",
                    format_number(overall["paper"]["accuracy"]),
                    f"{overall['paper']['tokens']:.1f}",
                    f"{overall['paper']['flagged']} none correct",
                ],
                [
                    "Oracle (monotone: every larger scale correct too)",
                    format_number(overall["monotone"]["accuracy"]),
                    f"{overall['monotone']['tokens']:.1f}",
                    f"{overall['monotone']['flagged']} largest scale wrong",
                ],
            ],
            "lrrr",
            spaced=True,
        ),
        "",
        "Flagged samples are labelled, and scored, at the smallest scale.",
    ]
    for name, (_, _, flag) in ORACLES.items():
        lines += [
            "",
            f"## Oracle labels ({name}): samples per scale",
            "",
            markdown_table(
                ["family", *scales, f"of which {flag}"],
                [
                    [family, *(entry[name]["labels"][s] for s in scales), entry[name]["flagged"]]
                    for family, entry in summary.items()
                ],
                "l" + "r" * len(scales) + "r",
                spaced=True,
            ),
        ]
    lines += [
        "",
        f"## Label spread: monotone labels of the samples right at {largest} (% per scale)",
        "",
        "How many tokens the questions a model can answer really need: the share of each scale among the monotone "
        f"labels of the samples answered right at {largest} (the others have no label that says so).",
        "",
    ]
    spread = []
    for family in families:
        counts = summary[family]["monotone"]["labels_unflagged"]
        total = sum(counts.values())
        spread.append([family, total, *(f"{100 * counts[s] / total:.0f}" if total else "-" for s in scales)])
    lines.append(
        markdown_table(["family", f"right at {largest}", *scales], spread, "lr" + "r" * len(scales), spaced=True)
    )
    if pope:
        lines += [
            "",
            "## POPE (yes = positive)",
            "",
            markdown_table(
                ["scale", "accuracy", "precision", "recall", "F1", "yes ratio"],
                [[scale, *(format_number(values[key]) for key in values)] for scale, values in pope.items()],
                "rrrrrr",
                spaced=True,
            ),
        ]
    lines += ["", "Plot: report.png", ""]
    return "\n".join(lines)


def plot_report(summary: dict, scales: list[int], path: str | os.PathLike) -> None:
    """Left: accuracy against mean visual tokens per family, both oracles as markers. Middle and right: the share
    of samples per oracle label and family, flagged samples (no correct scale / largest scale wrong) in grey."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    figure = Figure(figsize=(12, 4.8), layout="constrained")
    left, middle, right = figure.subplots(1, 3)
    for family, entry in summary.items():
        overall = family == OVERALL
        xs = [entry["tokens"][s] for s in scales]
        line = left.plot(
            xs,
            [entry["accuracy"][s] for s in scales],
            marker="o",
            label=family,
            color="black" if overall else None,
            linewidth=2.5 if overall else 1.2,
            linestyle="--" if overall else "-",
        )[0]
        left.scatter(
            [entry["paper"]["tokens"]], [entry["paper"]["accuracy"]], marker="*", s=140, color=line.get_color()
        )
        left.scatter(
            [entry["monotone"]["tokens"]], [entry["monotone"]["accuracy"]], marker="D", s=40, color=line.get_color()
        )
    left.set_xscale("log")
    ticks = sorted({round(summary[OVERALL]["tokens"][s]) for s in scales})
    left.set_xticks(ticks, [str(t) for t in ticks])
    left.xaxis.set_minor_locator(NullLocator())
    left.set_ylim(-0.02, 1.02)
    left.set_xlabel("mean visual tokens (log)")
    left.set_ylabel("accuracy")
    left.set_title("per scale (o), paper oracle (*), monotone (D)", fontsize="small")
    left.grid(alpha=0.3)
    left.legend(fontsize="x-small", ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    families = list(summary)
    for axes, name in ((middle, "paper"), (right, "monotone")):
        bottom = np.zeros(len(families))
        sizes = np.array([max(1, summary[f]["n"]) for f in families], dtype=float)
        flagged = np.array([summary[f][name]["flagged"] for f in families], dtype=float)
        for scale in scales:  # flagged samples carry the smallest scale's label: drawn apart, grey
            counts = np.array([summary[f][name]["labels"][scale] for f in families], dtype=float)
            if scale == scales[0]:
                counts -= flagged
            axes.bar(families, counts / sizes, bottom=bottom, label=str(scale))
            bottom += counts / sizes
        axes.bar(families, flagged / sizes, bottom=bottom, color="lightgrey", hatch="//", label=ORACLES[name][2])
        axes.set_ylim(0, 1)
        axes.set_title(f"{name} oracle labels", fontsize="small")
        axes.set_ylabel("share of samples")
        axes.tick_params(axis="x", labelrotation=30, labelsize="small")
        axes.legend(fontsize="x-small", ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    figure.savefig(path, dpi=110)


def pope_by_scale(table: pa.Table, scales: list[int]) -> dict[int, dict[str, float]] | None:
    """POPE's accuracy / precision / recall / F1 / yes-ratio per scale over the ``pope`` samples (None if none)."""
    metrics = table.column("metric").to_pylist()
    rows = [i for i, metric in enumerate(metrics) if metric == "pope"]
    if not rows:
        return None
    answers = [table.column("answers")[i].as_py()[0] for i in rows]
    return {s: pope_summary([table.column(f"answer_{s}")[i].as_py() for i in rows], answers) for s in scales}


def write_report(out_dir: str | os.PathLike) -> Path:
    """Write ``report.md`` and ``report.png`` for a complete oracle folder; returns the markdown path."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    table = load_oracle(out_dir)
    scales = list(manifest["model"]["scales"])
    summary = summarize_oracle(table, scales)
    path = out_dir / "report.md"
    path.write_text(oracle_markdown(summary, scales, manifest, pope_by_scale(table, scales)), encoding="utf-8")
    plot_report(summary, scales, out_dir / "report.png")
    return path
