"""Wall time of an oracle build against one plain full-scale evaluation pass and the naive per-scale design.

All three run on the same samples with the same loaded model, interleaved (plain, oracle, naive, plain, ...):

* ``plain``: one evaluation pass at the largest scale only - load the items (images decoded), greedy
  ``m3.evaluation.generate_answers`` at that scale (vision tower per item), score with exact match;
* ``oracle``: :func:`oracle_data.build.build_oracle` into a fresh folder - every scale, confidences, scale-1
  embeddings, labels, Parquet shards and manifest written;
* ``naive``: the plain pass once per scale (images loaded and the vision tower re-run every time).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

DESIGNS = ("plain", "oracle", "naive")


@dataclass
class OracleBenchResult:
    """Seconds per design (in run order), the answer check and the setup."""

    times: dict[str, list[float]]
    setup: dict = field(default_factory=dict)
    eos_answers: int = 0
    total_answers: int = 0
    agreeing_answers: int = 0

    def median(self, design: str) -> float:
        return float(np.median(self.times[design]))

    def ratio(self, design: str, baseline: str = "plain") -> float:
        return self.median(design) / self.median(baseline)


def write_bench_data(out_dir: Path, num_images: int, questions_per_image: int, seed: int) -> Path:
    """A granularity validation split; with ``questions_per_image`` < 4 only that many families per image
    (cycling through the families, so all of them appear)."""
    from m3.data.granularity import FAMILIES, write_split

    path = write_split(out_dir, "validation", num_images, seed)
    if questions_per_image >= len(FAMILIES):
        return path
    records = json.loads(path.read_text())
    kept = []
    for image_index in range(num_images):
        group = records[image_index * len(FAMILIES) : (image_index + 1) * len(FAMILIES)]
        kept += [group[(image_index + k) % len(FAMILIES)] for k in range(questions_per_image)]
    subset = out_dir / f"validation.{questions_per_image}q.json"
    subset.write_text(json.dumps(kept))
    return subset


def run_oracle_benchmark(
    num_images: int = 16,
    questions_per_image: int = 4,
    hidden_size: int = 128,
    batch_size: int = 16,
    max_new_tokens: int = 8,
    repeats: int = 3,
    warmup: int = 1,
    seed: int = 0,
    work_dir: str | Path | None = None,
    model_dir: str | Path | None = None,
) -> OracleBenchResult:
    """Write the data and a tiny random model (or load the model in ``model_dir``, e.g. a trained one, whose
    answers stop at EOS), then time the three designs ``repeats`` times each, interleaved."""
    from m3.data.granularity import VOCABULARY
    from m3.data.llava import LlavaDataset
    from m3.evaluation import answer_of, exact_match, generate_answers
    from m3.processing import M3Processor
    from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model

    from .build import build_oracle
    from .store import load_oracle

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        tmp = Path(tmp)
        data_path = write_bench_data(tmp / "data", num_images, questions_per_image, seed)
        if model_dir is None:
            tokenizer = build_tiny_tokenizer(extra_words=VOCABULARY)
            model = tiny_model("llava", seed=seed, tokenizer=tokenizer, hidden_size=hidden_size)
            processor = M3Processor(tiny_image_processor("llava"), tokenizer, model.config)
            model_dir = tmp / "model"
            model.save_pretrained(model_dir)
            processor.save_pretrained(model_dir)
            description = f"tiny llava, hidden_size={hidden_size}"
        else:
            from m3.loading import load_m3_model

            model = load_m3_model(model_dir).eval()
            processor = M3Processor.from_pretrained(model_dir, config=model.config)
            description = str(model_dir)
        scales = list(model.config.m3_scales)
        runs = iter(range(10**6))

        def load_items() -> list[dict]:
            dataset = LlavaDataset(data_path, data_path.parent)
            return [dataset[i] for i in range(len(dataset))]

        def plain(scale: int = scales[-1]) -> list[str]:
            items = load_items()
            answers = generate_answers(model, processor, items, scale, batch_size, max_new_tokens, show_progress=False)
            _ = [exact_match(answer, answer_of(item)) for answer, item in zip(answers, items)]
            return answers

        def oracle() -> Path:
            out = tmp / f"oracle-{next(runs)}"
            build_oracle(
                model_dir,
                data_path,
                out,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                progress=False,
                model=model,
                processor=processor,
            )
            return out

        def naive() -> None:
            for scale in scales:
                plain(scale)

        run = {"plain": plain, "oracle": oracle, "naive": naive}
        plain_answers = plain()
        table = load_oracle(oracle())
        oracle_answers = table.column(f"answer_{scales[-1]}").to_pylist()
        eos = sum(sum(table.column(f"eos_{s}").to_pylist()) for s in scales)
        for _ in range(warmup - 1):
            for design in DESIGNS:
                run[design]()
        times: dict[str, list[float]] = {design: [] for design in DESIGNS}
        for _ in range(repeats):
            for design in DESIGNS:
                start = time.perf_counter()
                run[design]()
                times[design].append(time.perf_counter() - start)
        parameters = sum(p.numel() for p in model.parameters()) / 1e6
        setup = dict(
            model=f"{description}, {parameters:.2f}M params",
            data=f"granularity validation split: {num_images} images x {questions_per_image} questions",
            samples=len(plain_answers),
            scales=scales,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            repeats=repeats,
            threads=torch.get_num_threads(),
            torch=torch.__version__,
        )
        return OracleBenchResult(
            times=times,
            setup=setup,
            eos_answers=int(eos),
            total_answers=len(oracle_answers) * len(scales),
            agreeing_answers=sum(a == b for a, b in zip(plain_answers, oracle_answers)),
        )


def format_report(result: OracleBenchResult, goal: float = 1.6) -> str:
    """Setup, EOS note, a table of medians and the ratios (oracle / plain is the figure with a goal)."""
    s = result.setup
    n = s["samples"]
    labels = {
        "plain": f"plain evaluation pass, scale {s['scales'][-1]} only",
        "oracle": f"oracle build, {len(s['scales'])} scales (1 vision pass per image, shards written)",
        "naive": f"naive: one full run per scale ({len(s['scales'])} runs, vision re-run each)",
    }
    lines = [
        f"{s['model']}; {s['data']} = {n} samples; scales {s['scales']}",
        f"batch {s['batch_size']}, max_new_tokens {s['max_new_tokens']}, threads {s['threads']}, torch {s['torch']}, "
        f"{s['repeats']} interleaved repeats per design (medians)",
        f"answers that ended with EOS: {result.eos_answers}/{result.total_answers} (a random-weight model rarely "
        f"emits EOS: the others ran to the {s['max_new_tokens']}-token cap)",
        f"check: the oracle's answers at scale {s['scales'][-1]} equal the plain pass's for "
        f"{result.agreeing_answers}/{n} samples",
        "",
        "| design | median (s) | per sample (ms) | runs (s) |",
        "|---|---:|---:|---|",
    ]
    for design in DESIGNS:
        runs = ", ".join(f"{t:.2f}" for t in result.times[design])
        lines.append(
            f"| {labels[design]} | {result.median(design):.2f} | {1000 * result.median(design) / n:.1f} | {runs} |"
        )
    oracle_ratio = result.ratio("oracle")
    lines += [
        "",
        f"oracle / plain: {oracle_ratio:.2f}x (goal <= {goal}x: {'met' if oracle_ratio <= goal else 'NOT met'})",
        f"naive / plain: {result.ratio('naive'):.2f}x",
        f"naive / oracle: {result.ratio('naive', 'oracle'):.2f}x",
    ]
    return "\n".join(lines)
