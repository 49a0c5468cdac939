"""Accuracy of an M3 model at every scale: batched generation (:mod:`m3.inference`), tables and plots.

Items are LLaVA-format dicts (as :class:`m3.data.llava.LlavaDataset` returns them; an item may hold several
images, e.g. the frames of a video, asked in one prompt): the question is the first human turn without its
``<image>`` markers, the reference answer is ``item["answer"]`` (else the
first gpt turn). :func:`evaluate_scales` runs the vision tower once per batch and generates at every scale
from the pooled features, scored with :func:`m3.metrics.exact_match`; the result rows feed
:func:`accuracy_table`, whose output :func:`accuracy_markdown`, :func:`to_csv` and :func:`plot_accuracy` write.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import accumulate
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data.llava import record_images
from .inference import answer_at_scales, compact_prompts, encode_images
from .markdown import markdown_table
from .metrics import OVERALL, exact_match, majority_baseline
from .pooling import check_scale, check_token_selection
from .processing import IMAGE_PLACEHOLDER, M3Processor, check_question
from .prompting import check_context, prompt_token_counts


def question_of(item: dict) -> str:
    """The first human turn without its ``<image>`` marker."""
    return item["conversations"][0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()


def answer_of(item: dict) -> str:
    """``item["answer"]`` if present (a string, or a finite number as text), else the first assistant turn; a NaN,
    infinite or other answer is refused (``ValueError`` naming the item), never scored as the text "nan"."""
    if "answer" not in item:
        return item["conversations"][1]["value"]
    answer = item["answer"]
    number = isinstance(answer, (int, float)) and not isinstance(answer, bool)
    if not (isinstance(answer, str) or (number and math.isfinite(answer))):
        raise ValueError(f"item {item.get('id')}: its answer {answer!r} is not a string or a finite number")
    return str(answer)


def _batches(items: Sequence[dict], batch_size: int) -> list[Sequence[dict]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return [items[start : start + batch_size] for start in range(0, len(items), batch_size)]


def _prompts(processor: M3Processor, items: Sequence[dict]) -> tuple[list[str], list, list[int]]:
    """Single-turn prompts (the model's template), the images of a batch in prompt order, and each item's image
    count."""
    per_item = [record_images(item.get("image")) for item in items]
    for item, images in zip(items, per_item):
        if not images:
            raise ValueError(f"item {item.get('id')} has no image; scale evaluation needs one per item")
    texts = [processor.prompt(question_of(item), len(images)) for item, images in zip(items, per_item)]
    return texts, [image for images in per_item for image in images], [len(images) for images in per_item]


def check_item_lengths(processor, config, items: Sequence[dict], scale: int, max_new_tokens: int) -> None:
    """Refuse an item whose prompt at ``scale`` and ``max_new_tokens`` overruns the model's context
    (:func:`m3.prompting.check_context`), naming it."""
    texts, images, counts = _prompts(processor, items)
    sizes = None
    if getattr(config, "image_grid_pinpoints", None) is not None:  # NeXT counts follow the image sizes
        starts = [0, *accumulate(counts)][:-1]
        sizes = [[(im.height, im.width) for im in images[a : a + n]] for a, n in zip(starts, counts)]
    names = [f"item {item.get('id')}" for item in items]
    text, visual = prompt_token_counts(processor.tokenizer, config, texts, counts, scale, sizes)
    check_context(config, text, visual, max_new_tokens, names, [scale] * len(names))


def _decode_new_tokens(processor: M3Processor, output: torch.Tensor, prompt_length: int) -> list[str]:
    return [text.strip() for text in processor.batch_decode(output[:, prompt_length:])]


def generate_answers(
    model,
    processor: M3Processor,
    items: Sequence[dict],
    scale: int,
    batch_size: int = 16,
    max_new_tokens: int = 4,
    show_progress: bool = True,
) -> list[str]:
    """Greedy answers at one ``scale`` (prompts built with ``processor(..., m3_scale=scale)``, left padded)."""
    check_scale(scale, model.config.grid_tokens)
    answers = []
    with torch.inference_mode():
        for batch in tqdm(_batches(items, batch_size), desc=f"scale {scale}", disable=not show_progress):
            texts, images, _ = _prompts(processor, batch)
            inputs = processor(texts, images, m3_scale=scale).to(model.device)
            output = model.generate(
                **inputs,
                m3_scale=scale,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=processor.tokenizer.pad_token_id,
            )
            answers.extend(_decode_new_tokens(processor, output, inputs["input_ids"].shape[1]))
    return answers


@contextmanager
def using_token_selection(model, method: str | None) -> Iterator[None]:
    """Run ``model`` with ``config.m3_token_selection = method`` inside the block (None: leave it), then restore it:
    the inference-time token selection of the paper's Table 4 baselines, on any model."""
    if method is None:
        yield
        return
    saved = model.config.m3_token_selection
    model.config.m3_token_selection = check_token_selection(method)
    try:
        yield
    finally:
        model.config.m3_token_selection = saved


def evaluate_scales(
    model,
    processor: M3Processor,
    items: Sequence[dict],
    scales: Sequence[int],
    batch_size: int = 16,
    max_new_tokens: int = 4,
    show_progress: bool = True,
    token_selection: str | None = None,
) -> list[dict]:
    """Greedy answers of every item at every scale, scored with :func:`exact_match`.

    The vision tower runs once per batch: its projected grids are reduced to each scale and passed to
    ``generate`` as precomputed features (same predictions as ``generate(..., m3_scale=s)``). ``token_selection``
    (``avg_pool``, ``spatial``, ``sequential``) overrides the model's ``config.m3_token_selection`` for this call.
    Returns one row per (item, scale): ``id, image_id, family, scale, prediction, answer, correct``.
    """
    scales = [check_scale(scale, model.config.grid_tokens) for scale in scales]
    with using_token_selection(model, token_selection):
        return _evaluate_rows(model, processor, items, scales, batch_size, max_new_tokens, show_progress)


def _evaluate_rows(model, processor, items, scales, batch_size, max_new_tokens, show_progress) -> list[dict]:
    rows = []
    for batch in tqdm(_batches(items, batch_size), desc="evaluate", disable=not show_progress):
        _, images, counts = _prompts(processor, batch)
        grids, image_sizes = encode_images(model, processor, images)
        compact = compact_prompts(processor, [question_of(item) for item in batch], image_sizes, num_images=counts)
        outputs = answer_at_scales(model, processor, compact, grids, image_sizes, scales, max_new_tokens)
        for index, item in enumerate(batch):
            answer = answer_of(item)
            for scale in scales:
                prediction = outputs[scale].answers[index]
                rows.append(
                    {
                        "id": item.get("id"),
                        "image_id": item.get("image_id"),
                        "family": item.get("family", "all"),
                        "scale": scale,
                        "prediction": prediction,
                        "answer": answer,
                        "correct": exact_match(prediction, [answer]),
                    }
                )
    return rows


def accuracy_table(rows: Sequence[dict]) -> list[dict]:
    """Accuracy per (family, scale) and over all families per scale (family ``"overall"``).

    Returns rows ``{"family", "scale", "correct", "count", "accuracy"}`` sorted by family (``"overall"``
    last) and scale; ``correct`` is the sum of the rows' scores.
    """
    sums: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        for family in (row["family"], OVERALL):
            cell = sums.setdefault((family, int(row["scale"])), [0.0, 0])
            cell[0] += float(row["correct"])
            cell[1] += 1
    families = sorted({family for family, _ in sums if family != OVERALL}) + [OVERALL]
    order = {family: index for index, family in enumerate(families)}
    return [
        {"family": family, "scale": scale, "correct": correct, "count": count, "accuracy": correct / count}
        for (family, scale), (correct, count) in sorted(sums.items(), key=lambda kv: (order[kv[0][0]], kv[0][1]))
    ]


def _families(table: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(row["family"] for row in table))


def accuracy_markdown(table: Sequence[dict], scales: Sequence[int]) -> str:
    """A markdown table: one row per family (then overall), one accuracy column per scale, and the counts."""
    cells = {(row["family"], row["scale"]): row for row in table}
    rows = []
    for family in _families(table):
        counts = {cells[family, scale]["count"] for scale in scales if (family, scale) in cells}
        values = [f"{cells[family, scale]['accuracy']:.3f}" if (family, scale) in cells else "-" for scale in scales]
        rows.append([family, "/".join(str(count) for count in sorted(counts)) or "0", *values])
    return markdown_table(["family", "n", *scales], rows, "lr" + "r" * len(scales), spaced=True) + "\n"


def to_csv(table: Sequence[dict], path: str | os.PathLike) -> None:
    """Write the table rows as CSV (``family,scale,correct,count,accuracy``)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["family", "scale", "correct", "count", "accuracy"])
        writer.writeheader()
        writer.writerows(table)


def plot_accuracy(table: Sequence[dict], path: str | os.PathLike) -> None:
    """Accuracy against visual tokens (log x, ticks at the scales): one line per family plus overall (PNG)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg
    from matplotlib.ticker import NullLocator

    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    scales = sorted({row["scale"] for row in table})
    for family in _families(table):
        points = sorted((row["scale"], row["accuracy"]) for row in table if row["family"] == family)
        overall = family == OVERALL
        axes.plot(
            [scale for scale, _ in points],
            [accuracy for _, accuracy in points],
            marker="o",
            label=family,
            color="black" if overall else None,
            linewidth=2.5 if overall else 1.5,
            linestyle="--" if overall else "-",
        )
    axes.set_xscale("log")
    axes.set_xticks(scales, [str(scale) for scale in scales])
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("visual tokens per image grid (scale)")
    axes.set_ylabel("accuracy")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=120)


def comparison_markdown(tables: dict[str, Sequence[dict]], scales: Sequence[int], family: str = OVERALL) -> str:
    """One row per model, one accuracy column per scale, for one family (default: overall)."""
    rows = []
    for name, table in tables.items():
        cells = {row["scale"]: row["accuracy"] for row in table if row["family"] == family}
        rows.append([name, *(f"{cells[s]:.3f}" if s in cells else "-" for s in scales)])
    return markdown_table(["model", *scales], rows, "l" + "r" * len(scales), spaced=True) + "\n"


REPORT = "report.md"
PREDICTIONS = "predictions.jsonl"  # in every model's result folder


def remove_results(out_dir: str | os.PathLike) -> None:
    """Delete what :func:`run_evaluation` wrote in ``out_dir``: ``report.md`` and every folder holding
    ``predictions.jsonl``; anything else there is left alone."""
    out_dir = Path(out_dir)
    (out_dir / REPORT).unlink(missing_ok=True)
    for folder in out_dir.iterdir():
        if folder.is_dir() and (folder / PREDICTIONS).is_file():
            shutil.rmtree(folder)


def run_evaluation(
    model_dirs: Sequence[str | os.PathLike],
    data_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    scales: Sequence[int] | None = None,
    image_root: str | os.PathLike | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 4,
    token_selection: str | None = None,
    image_grid_pinpoints: list | None = None,
    overwrite: bool = False,
) -> dict[str, list[dict]]:
    """Evaluate each model at every scale on a LLaVA-format split; write tables, plots and predictions.

    ``scales`` defaults to the nested scales of the model's grid, so a single-scale (non-M3) model is
    evaluated with average pooling applied at inference time only (the paper's Table 4 baseline).
    ``token_selection`` replaces each loaded config's ``m3_token_selection`` (the Table 4 spatial and sequential
    baselines); unset, each model uses its own (``avg_pool`` unless it was trained otherwise).
    ``image_grid_pinpoints`` (LLaVA-NeXT) replaces the model's and the image processor's anyres grids.
    Each model's results go to ``out_dir/NAME``, NAME unique per model (:func:`m3.runs.distinct_names`: ``A/final``
    and ``B/final`` become ``A-final`` and ``B-final``). Every setting, model folder, question and image is checked
    before any model loads. ``out_dir`` records what made it (:func:`m3.runs.claim_run_folder`): a rerun with the
    same models, data and settings replaces its own results; a folder of another run (or a used one without a
    record) is refused unless ``overwrite``, which deletes the earlier results (``report.md`` and every result
    folder) first.
    """
    from .data.llava import LlavaDataset
    from .files import dumps_json
    from .fingerprint import file_sha256
    from .loading import load_m3_config, load_m3_model
    from .pooling import check_scales, nested_scales
    from .runs import claim_run_folder, distinct_names

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of questions, got {limit}")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size} and {max_new_tokens}")
    names = distinct_names(model_dirs)  # one result folder per model, never shared
    overrides = {} if token_selection is None else {"m3_token_selection": token_selection}
    if image_grid_pinpoints is not None:
        overrides["image_grid_pinpoints"] = image_grid_pinpoints
    for model_dir in model_dirs:  # every model's files, options and the scales, before any model loads
        grid = load_m3_config(model_dir, **overrides).grid_tokens
        if scales:
            check_scales(scales, grid)
    dataset = LlavaDataset(data_path, image_root or Path(data_path).parent)
    items = [dataset[i] for i in range(len(dataset) if limit is None else min(limit, len(dataset)))]  # images too
    for item in items:
        check_question(question_of(item), f"item {item.get('id')}")
        answer_of(item)  # a NaN answer is refused now, not scored after the models ran
    made_by = {
        "models": [str(Path(model_dir).resolve()) for model_dir in model_dirs],
        "data": str(Path(data_path).resolve()),
        "data_sha256": file_sha256(data_path),
        "image_root": str(Path(image_root or Path(data_path).parent).resolve()),
        **dict(scales=None if scales is None else list(scales), limit=limit, max_new_tokens=max_new_tokens),
        **dict(token_selection=token_selection, image_grid_pinpoints=image_grid_pinpoints),
    }
    if claim_run_folder(out_dir, made_by, overwrite=overwrite) == "replaced":
        remove_results(out_dir)
    out_dir = Path(out_dir)
    tables: dict[str, list[dict]] = {}
    for name, model_dir in zip(names, model_dirs):
        config = load_m3_config(model_dir, **overrides)
        processor = M3Processor.from_pretrained(model_dir, config=config, image_grid_pinpoints=image_grid_pinpoints)
        model_scales = list(scales) if scales else nested_scales(config.grid_tokens)
        check_item_lengths(processor, config, items, max(model_scales), max_new_tokens)  # before the model loads
        model = load_m3_model(model_dir, **overrides).eval()
        rows = evaluate_scales(model, processor, items, model_scales, batch_size, max_new_tokens)
        table = accuracy_table(rows)
        tables[name] = table
        model_out = out_dir / name
        model_out.mkdir(exist_ok=True)
        with open(model_out / PREDICTIONS, "w", encoding="utf-8") as handle:
            handle.writelines(dumps_json(row) + "\n" for row in rows)
        to_csv(table, model_out / "accuracy.csv")
        (model_out / "accuracy.md").write_text(accuracy_markdown(table, model_scales))
        plot_accuracy(table, model_out / "accuracy.png")
    all_scales = sorted({row["scale"] for table in tables.values() for row in table})
    baseline = majority_baseline([item.get("family", "all") for item in items], [answer_of(item) for item in items])
    report = [f"# Per-scale accuracy on {data_path} ({len(items)} questions)\n"]
    if token_selection is not None:
        report.append(f"Token selection at inference: `{token_selection}` (set on every model's config).\n")
    report.append(
        "## Overall accuracy by scale (visual tokens per image)\n\n" + comparison_markdown(tables, all_scales)
    )
    for name, table in tables.items():
        report.append(f"## {name}\n\n" + accuracy_markdown(table, all_scales) + f"\nPlot: {name}/accuracy.png\n")
    rows = [[family, f"{value:.3f}"] for family, value in baseline.items()]
    report.append(
        "## Majority-class baseline\n\n" + markdown_table(["family", "accuracy"], rows, "lr", spaced=True) + "\n"
    )
    (out_dir / REPORT).write_text("\n".join(report))
    return tables
