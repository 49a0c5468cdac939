"""Many frames, one budget: the per-frame oracle a frame predictor learns from, and accuracy against total visual
tokens for predictor-allocated, uniform and collage answers at equal budgets.

**The per-frame oracle.** The knapsack of :func:`adaptive.budget.allocate_scales` needs, per frame and scale, the
probability that this scale of this frame is enough. A frame that does not hold what the question asks about has
no answer of its own, so an oracle of single frames cannot label it. Here a frame is labelled in its video instead:
for every scale s, the whole multi-image prompt is answered with that frame at s and every other frame at the
smallest scale, and the row records whether that answer is right. A frame that does not matter gets a flat row (its
scale changes nothing), the frame that holds the answer a rising one, which is what the knapsack should spend on.
Rows follow the oracle schema (:func:`oracle_data.load_oracle`; one row per frame, ``image`` the frame's file,
``image_id`` the video, so grouped splits keep a video's frames together), so every scale predictor fits them and
``AdaptiveM3`` checks the pairing as for any oracle.

**The evaluation** (:func:`evaluate_frames`) answers every question at every budget with each method:
``predictor`` (the knapsack on the predictor's probabilities), ``uniform`` (every frame at the largest common scale
within the budget), ``collage`` (the frames tiled into one image, at the largest scale within the budget) and
``known`` (a reference that knows which frame holds the object: that frame at the largest scale the budget leaves
after every other frame's smallest). One vision pass per batch serves every budget; identical prompts are answered
once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from m3.data.llava import LlavaDataset, check_image_files, record_images
from m3.evaluation import answer_of, question_of
from m3.inference import compact_prompts, encode_images, generate_at_scale, scale_one_embedding
from m3.metrics import CORRECT_THRESHOLD, OVERALL, score
from m3.prompting import image_token_counts
from m3.video import collage, is_square_only

from .budget import uniform_scale

METHODS = ("predictor", "uniform", "collage", "known")
METHOD_LABELS = {
    "predictor": "predictor-allocated scales (one prompt, every frame)",
    "uniform": "uniform scales (one prompt, every frame)",
    "collage": "collage (IG-VLM grid, one image)",
    "known": "known frame (reference: the object's frame gets the budget)",
}
ORACLE_CONTEXT = "every other frame at the smallest scale"


# ----------------------------------------------------------------------------------------------------
# the per-frame oracle


def frame_oracle_rows(
    model, processor, items: Sequence[dict], scales: Sequence[int], paths: Sequence[Sequence[str]], max_new_tokens: int
) -> list[dict]:
    """Oracle rows (one per frame) of a batch of multi-image items: for each frame f and scale s, the answer with
    frame f at s and every other frame at the smallest scale. ``paths``: each item's frame files as the data file
    names them (the rows' ``image``)."""
    from oracle_data.labels import monotone_oracle, paper_oracle

    scales = sorted(scales)
    videos = [record_images(item["image"]) for item in items]
    counts = [len(video) for video in videos]
    grids, sizes = encode_images(model, processor, [frame for video in videos for frame in video])
    compact = compact_prompts(processor, [question_of(item) for item in items], sizes, num_images=counts)
    embeddings = scale_one_embedding(grids)
    size_list = None if sizes is None else sizes.tolist()
    tokens = np.array([image_token_counts(model.config, s, size_list, num_images=len(grids)) for s in scales]).T
    outputs = {}
    for position in range(max(counts)):
        for value in scales:
            plan = [value if frame == position else scales[0] for count in counts for frame in range(count)]
            outputs[position, value] = generate_at_scale(model, processor, compact, grids, sizes, plan, max_new_tokens)
    rows, offset = [], 0
    for index, item in enumerate(items):
        answers = [answer_of(item)]
        frame_scores = np.array(
            [[score("exact_match", outputs[f, s].answers[index], answers) for s in scales]
             for f in range(counts[index])]
        )  # fmt: skip
        correct = frame_scores >= CORRECT_THRESHOLD
        oracle, none_correct = paper_oracle(correct, scales)
        monotone, unreachable = monotone_oracle(correct, scales)
        for frame in range(counts[index]):
            row = {
                "sample_id": f"{item['id']}#frame{frame}",
                "image_id": str(item.get("image_id", item["id"])),
                "image": paths[index][frame],
                "question": question_of(item),
                "family": item.get("family"),
                "metric": "exact_match",
                "answers": answers,
                "choices": None,
                "embedding": embeddings[offset + frame].tolist(),
            }
            for column, value in enumerate(scales):
                output = outputs[frame, value]
                row[f"answer_{value}"] = output.answers[index]
                row[f"score_{value}"] = float(frame_scores[frame, column])
                row[f"correct_{value}"] = bool(correct[frame, column])
                row[f"confidence_{value}"] = float(output.confidences[index])
                row[f"tokens_{value}"] = int(tokens[offset + frame, column])  # the frame's own tokens: its cost
                row[f"eos_{value}"] = bool(output.eos[index])
            row.update(
                oracle_scale=int(oracle[frame]),
                oracle_none_correct=bool(none_correct[frame]),
                oracle_monotone_scale=int(monotone[frame]),
                oracle_monotone_unreachable=bool(unreachable[frame]),
            )
            rows.append(row)
        offset += counts[index]
    return rows


def build_frame_oracle(
    model_dir: str | os.PathLike,
    data_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    scales: Sequence[int] | None = None,
    batch_size: int = 8,
    shard_size: int = 64,
    max_new_tokens: int = 4,
    limit: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the per-frame oracle of ``model_dir`` on the multi-image records of a LLaVA JSON file (e.g. a frames
    split) to ``out_dir`` (manifest + Parquet shards of ``shard_size`` records, as :func:`oracle_data.build_oracle`
    writes them; a rerun finishes a killed build, another model or data is refused). Returns the manifest path."""
    from tqdm.auto import tqdm

    from m3.loading import load_m3_config, load_m3_model
    from m3.pooling import check_scales
    from m3.processing import M3Processor
    from oracle_data import store
    from oracle_data.build import model_summary

    if min(batch_size, shard_size, max_new_tokens) < 1:
        raise ValueError("batch_size, shard_size and max_new_tokens must be >= 1")
    data_path, out_dir = Path(data_path), Path(out_dir)
    image_root = Path(image_root) if image_root is not None else data_path.parent
    dataset = LlavaDataset(data_path, image_root)
    chosen = [i for i, record in enumerate(dataset.records) if len(record_images(record.get("image"))) > 1]
    chosen = chosen[:limit] if limit is not None else chosen
    if not chosen:
        raise ValueError(f"{data_path} holds no record with several images: the frame oracle needs videos")
    records = [dataset.records[i] for i in chosen]
    check_image_files([(path, f"record {r['id']}") for r in records for path in dataset.image_files(r)])
    config = load_m3_config(model_dir)
    scales = check_scales(scales or config.m3_scales, config.grid_tokens)
    shards = [chosen[start : start + shard_size] for start in range(0, len(chosen), shard_size)]
    num_rows = sum(len(record_images(record["image"])) for record in records)
    manifest = {
        "schema_version": store.SCHEMA_VERSION,
        "complete": False,
        "model": model_summary(model_dir, config, scales),
        "data": {
            "path": str(data_path.resolve()),
            "sha256": store.file_sha256(data_path),
            "format": "llava-frames",
            "image_root": str(image_root.resolve()),
            "num_samples": num_rows,
            "num_videos": len(chosen),
            "limit": limit,
        },
        "metric": "exact_match",
        "settings": {
            "kind": "per-frame oracle: one row per frame, answered in its video",
            "context": ORACLE_CONTEXT,
            "max_new_tokens": max_new_tokens,
            "shard_size": shard_size,
            "correct_threshold": CORRECT_THRESHOLD,
            "decoding": "greedy, stops at EOS",
        },
        "build": {"batch_size": batch_size, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "num_shards": len(shards),
        "shards": [],
        "num_rows": 0,
        "columns": store.oracle_schema(scales).names,
    }
    store.remove_stale_temporaries(out_dir)
    manifest = store.open_build(out_dir, manifest, create=True)
    model = processor = None
    entries = store.shard_entries(out_dir, len(shards))
    done = {entry["index"] for entry in entries}
    with tqdm(total=len(chosen), desc="frame oracle", unit="video", disable=not progress) as bar:
        for index, shard in enumerate(shards):
            if index in done:
                bar.update(len(shard))
                continue
            if model is None:
                model = load_m3_model(model_dir).eval()
                processor = M3Processor.from_pretrained(model_dir, config=model.config)
            rows = []
            for start in range(0, len(shard), batch_size):
                batch = shard[start : start + batch_size]
                items = [dataset[i] for i in batch]
                paths = [record_images(dataset.records[i]["image"]) for i in batch]
                rows += frame_oracle_rows(model, processor, items, scales, paths, max_new_tokens)
                bar.update(len(batch))
            store.write_shard(out_dir, index, rows, store.oracle_schema(scales))
            entries.append(store.shard_entry(index, len(rows)))
            manifest = store.update_manifest(out_dir, manifest, entries)
    manifest["build"] = dict(manifest["build"], finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    store.update_manifest(out_dir, manifest, complete=True)
    return store.manifest_path(out_dir)


def fit_frame_predictor(oracle, out_dir: str | os.PathLike | None = None, name: str = "mlp-image", seed: int = 0):
    """Fit the predictor ``name`` of :data:`predictor.registry.PREDICTORS` on a per-frame oracle (a folder or any
    oracle table) and save it to ``out_dir``. No threshold is calibrated: the knapsack uses the probabilities."""
    from predictor import as_oracle_set
    from predictor.registry import PREDICTORS

    if name not in PREDICTORS:
        raise ValueError(f"unknown predictor {name!r}; choose from {sorted(PREDICTORS)}")
    fitted = PREDICTORS[name](seed).fit(as_oracle_set(oracle))
    if out_dir is not None:
        fitted.save_pretrained(out_dir)
    return fitted


# ----------------------------------------------------------------------------------------------------
# accuracy against total visual tokens


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
    lines = [
        "| method \\ total visual-token budget | " + " | ".join(str(b) for b in budgets) + " |",
        "| --- | " + " | ".join("---:" for _ in budgets) + " |",
    ]
    for method in methods:
        values = [
            f"{cells[method, b]['accuracy']:.3f} ({cells[method, b]['mean_tokens']:.0f})"
            if (method, b) in cells
            else "-"
            for b in budgets
        ]
        lines.append(f"| {METHOD_LABELS[method]} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


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
