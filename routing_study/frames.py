"""Many frames, one budget: accuracy against total visual tokens for predictor-allocated, uniform and collage
answers at equal budgets (the per-frame oracle the frame predictor learns from is :mod:`oracle_data.frames`).

:func:`evaluate_frames` answers every question at every budget with each method: ``predictor`` (the knapsack on
the predictor's probabilities), ``uniform`` (every frame at the largest common scale within the budget),
``collage`` (the frames tiled into one image, at the largest scale within the budget) and ``known`` (a reference
that knows which frame holds the object: that frame at the largest scale the budget leaves after every other
frame's smallest). One vision pass per batch serves every budget; identical prompts are answered once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from m3.data.llava import record_images
from m3.evaluation import answer_of, question_of
from m3.markdown import markdown_table
from m3.metrics import OVERALL, score
from m3.prompting import image_token_counts
from m3.video import collage, is_square_only
from predictor.budget import uniform_scale

METHODS = ("predictor", "uniform", "collage", "known")
METHOD_LABELS = {
    "predictor": "predictor-allocated scales (one prompt, every frame)",
    "uniform": "uniform scales (one prompt, every frame)",
    "collage": "collage (IG-VLM grid, one image)",
    "known": "known frame (reference: the object's frame gets the budget)",
}


def known_frame_scales(tokens: np.ndarray, budget: int, target: int, scales: Sequence[int]) -> list[int]:
    """The reference allocation: every frame at the smallest scale but ``target``, which gets the largest scale
    the budget leaves (``tokens``: ``(frames, scales)``)."""
    tokens = np.asarray(tokens)
    rest = int(np.delete(tokens[:, 0], target).sum())
    plan = [int(scales[0])] * len(tokens)
    plan[target] = uniform_scale(tokens[target : target + 1], budget - rest, scales=scales)
    return plan


def check_budgets(budgets: Sequence[int], num_frames: int) -> list[int]:
    budgets = sorted({int(budget) for budget in budgets})
    if not budgets or budgets[0] < num_frames:
        raise ValueError(f"every budget must give each of the {num_frames} frames one token, got {budgets}")
    return budgets


def evaluate_frames(
    adaptive,
    items: Sequence[dict],
    budgets: Sequence[int],
    methods: Sequence[str] = METHODS,
    batch_size: int = 8,
    max_new_tokens: int = 4,
    progress: bool = True,
) -> list[dict]:
    """Answer every multi-image item at every budget with every method (see the module docstring); one row per
    (item, method, budget): ``id, image_id, family, target_frame, method, budget, scales, total_tokens, prediction,
    answer, correct``. Items need ``target_frame`` for the ``known`` method."""
    from tqdm.auto import tqdm

    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    budgets = check_budgets(budgets, max(len(record_images(item["image"])) for item in items))
    scales = adaptive.scales
    rows = []
    for start in tqdm(range(0, len(items), batch_size), desc="frames", disable=not progress):
        batch = items[start : start + batch_size]
        videos = [record_images(item["image"]) for item in batch]
        questions = [question_of(item) for item in batch]
        results: dict[tuple[str, int], list] = {}
        frame_methods = [method for method in methods if method != "collage"]
        if frame_methods:
            encoded = adaptive.encode_frames(videos, questions)
            plans = {}
            for method in frame_methods:
                for budget in budgets:
                    if method == "known":
                        plans[method, budget] = [
                            known_frame_scales(encoded.tokens[list(encoded.frames_of(v))], budget, item["target_frame"],
                                               scales)
                            for v, item in enumerate(batch)
                        ]  # fmt: skip
                    else:
                        plans[method, budget] = adaptive.frame_scales(encoded, budget, method)
            distinct = list(dict.fromkeys((v, tuple(plan[v])) for plan in plans.values() for v in range(len(batch))))
            answered = {}
            for chunk in range(0, len(distinct), batch_size):
                part = distinct[chunk : chunk + batch_size]
                answered.update(
                    zip(part, adaptive.answer_encoded_frames(encoded, [list(p) for _, p in part], [v for v, _ in part],
                                                             max_new_tokens=max_new_tokens))
                )  # fmt: skip
            for key, plan in plans.items():
                results[key] = [answered[v, tuple(plan[v])] for v in range(len(batch))]
        if "collage" in methods:
            chosen = {budget: [collage_scale(adaptive, video, budget) for video in videos] for budget in budgets}
            answered = {}
            for value in sorted({value for values in chosen.values() for value in values}):
                wanted = [v for v in range(len(batch)) if any(values[v] == value for values in chosen.values())]
                outputs = adaptive.answer_collage(
                    [videos[v] for v in wanted], [questions[v] for v in wanted], scale=value,
                    max_new_tokens=max_new_tokens,
                )  # fmt: skip
                answered.update({(v, value): output for v, output in zip(wanted, outputs)})
            for budget, values in chosen.items():
                results["collage", budget] = [answered[v, value] for v, value in enumerate(values)]
        for (method, budget), answers in results.items():
            for item, result in zip(batch, answers):
                reference = answer_of(item)
                rows.append(
                    {
                        "id": item.get("id"),
                        "image_id": item.get("image_id"),
                        "family": item.get("family", "all"),
                        "target_frame": item.get("target_frame"),
                        "method": method,
                        "budget": budget,
                        "scales": result.scales,
                        "total_tokens": result.total_tokens,
                        "prediction": result.answer,
                        "answer": reference,
                        "correct": score("exact_match", result.answer, [reference]),
                    }
                )
    return rows


def collage_scale(adaptive, frames: Sequence, budget: int) -> int:
    """The largest scale whose tokens for the collage of ``frames`` (as :meth:`AdaptiveM3.answer_collage` builds
    it) fit ``budget``."""
    config = adaptive.model.config
    width, height = collage(list(frames), square=is_square_only(config)).size
    tokens = [image_token_counts(config, value, [(height, width)], num_images=1)[0] for value in adaptive.scales]
    return uniform_scale(np.array([tokens]), budget, scales=adaptive.scales)


def summarize_frames(rows: Sequence[dict]) -> list[dict]:
    """Accuracy and mean total visual tokens per (method, budget, family), with family ``"overall"``."""
    cells: dict[tuple[str, int, str], list] = {}
    for row in rows:
        for family in (row["family"], OVERALL):
            cell = cells.setdefault((row["method"], row["budget"], family), [0.0, 0, 0])
            cell[0] += float(row["correct"])
            cell[1] += row["total_tokens"]
            cell[2] += 1
    return [
        {
            "method": method,
            "budget": budget,
            "family": family,
            "accuracy": correct / count,
            "mean_tokens": tokens / count,
            "count": count,
        }
        for (method, budget, family), (correct, tokens, count) in sorted(cells.items())
    ]


def frames_markdown(summary: Sequence[dict], family: str = OVERALL) -> str:
    """One row per method, one column per budget: accuracy (mean total visual tokens used), for one family."""
    budgets = sorted({row["budget"] for row in summary})
    methods = [m for m in METHODS if any(row["method"] == m for row in summary)]
    cells = {(row["method"], row["budget"]): row for row in summary if row["family"] == family}
    rows = [
        [
            METHOD_LABELS[method],
            *(
                f"{cells[method, b]['accuracy']:.3f} ({cells[method, b]['mean_tokens']:.0f})"
                if (method, b) in cells
                else "-"
                for b in budgets
            ),
        ]
        for method in methods
    ]
    headers = ["method \\ total visual-token budget", *budgets]
    return markdown_table(headers, rows, "l" + "r" * len(budgets), spaced=True) + "\n"


def plot_frames(summary: Sequence[dict], path: str | os.PathLike, family: str = OVERALL) -> None:
    """Accuracy against the mean total visual tokens used (log x), one line per method (PNG)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4), layout="constrained")
    axes = figure.subplots()
    for method in METHODS:
        points = sorted(
            (row["mean_tokens"], row["accuracy"])
            for row in summary
            if row["method"] == method and row["family"] == family
        )
        if points:
            axes.plot(*zip(*points), marker="o", label=method, linestyle="--" if method == "known" else "-")
    axes.set_xscale("log")
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("total visual tokens (mean over questions)")
    axes.set_ylabel(f"accuracy ({family})")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=120)


def write_frames_report(rows: Sequence[dict], out_dir: str | os.PathLike, title: str) -> Path:
    """``predictions.jsonl``, ``summary.json``, ``report.md`` (overall and per family) and ``accuracy.png``."""
    from m3.files import dumps_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(dumps_json(row) + "\n" for row in rows)
    summary = summarize_frames(rows)
    (out_dir / "summary.json").write_text(dumps_json(summary, indent=2) + "\n")
    families = sorted({row["family"] for row in summary if row["family"] != OVERALL})
    questions = len({row["id"] for row in rows})
    parts = [
        f"# {title}\n",
        f"{questions} questions; each cell: accuracy (mean total visual tokens the LLM saw), at most the budget.\n",
        "## Overall\n\n" + frames_markdown(summary),
        *(f"## {family}\n\n" + frames_markdown(summary, family) for family in families),
        "Plot: accuracy.png\n",
    ]
    report = out_dir / "report.md"
    report.write_text("\n".join(parts))
    plot_frames(summary, out_dir / "accuracy.png")
    return report
