"""Wall time of an oracle build against one plain full-scale evaluation pass and the naive per-scale design.

All three run on the same samples with the same loaded model, interleaved (plain, oracle, naive, plain, ...):

* ``plain``: one evaluation pass at the largest scale only: load the items (images decoded), greedy
  ``m3.evaluation.generate_answers`` at that scale (vision tower per item), score with exact match;
* ``oracle``: ``oracle_data.build_oracle`` into a fresh folder: every scale, confidences, scale-1 embeddings,
  labels, Parquet shards and manifest written;
* ``naive``: the plain pass once per scale (images loaded and the vision tower re-run every time).

A random-weight model rarely emits EOS, so answers run to ``--max-new-tokens``; the output says how many stopped.

Example:
    python benchmarks/oracle_build.py --num-images 16 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import torch
from timing import Timings, interleave, machine

from m3.data.granularity import FAMILIES, VOCABULARY, write_split
from m3.data.llava import LlavaDataset
from m3.evaluation import answer_of, generate_answers
from m3.loading import load_m3_model
from m3.markdown import markdown_table
from m3.metrics import exact_match
from m3.processing import M3Processor
from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model
from oracle_data import build_oracle, load_oracle

DESIGNS = ("plain", "oracle", "naive")


@dataclass
class OracleBenchResult:
    """Seconds per design (interleaved), the answer check and the setup."""

    timings: Timings
    setup: dict = field(default_factory=dict)
    eos_answers: int = 0
    total_answers: int = 0
    agreeing_answers: int = 0


def write_bench_data(out_dir: Path, num_images: int, questions_per_image: int, seed: int) -> Path:
    """A granularity validation split; with ``questions_per_image`` < 4 only that many families per image
    (cycling through the families, so all of them appear)."""
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
    answers stop at EOS), check the oracle's full-scale answers against the plain pass, then time the three
    designs ``repeats`` times each, interleaved."""
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
            model = load_m3_model(model_dir).eval()
            processor = M3Processor.from_pretrained(model_dir, config=model.config)
            description = str(model_dir)
        scales = list(model.config.m3_scales)
        runs = count()

        def load_items() -> list[dict]:
            dataset = LlavaDataset(data_path, data_path.parent)
            return [dataset[i] for i in range(len(dataset))]

        def plain(scale: int = scales[-1]) -> list[str]:
            items = load_items()
            answers = generate_answers(model, processor, items, scale, batch_size, max_new_tokens, show_progress=False)
            _ = [exact_match(answer, [answer_of(item)]) for answer, item in zip(answers, items)]
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

        # the check run doubles as the first warm-up round
        plain_answers = plain()
        table = load_oracle(oracle())
        oracle_answers = table.column(f"answer_{scales[-1]}").to_pylist()
        eos = sum(sum(table.column(f"eos_{s}").to_pylist()) for s in scales)
        designs = {"plain": lambda _: plain(), "oracle": lambda _: oracle(), "naive": lambda _: naive()}
        timings = interleave(designs, repeats, warmup=max(warmup - 1, 0))
        parameters = sum(p.numel() for p in model.parameters()) / 1e6
        setup = dict(
            model=f"{description}, {parameters:.2f}M params",
            data=f"granularity validation split: {num_images} images x {questions_per_image} questions",
            samples=len(plain_answers),
            scales=scales,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            repeats=repeats,
            machine=machine(),
        )
        return OracleBenchResult(
            timings=timings,
            setup=setup,
            eos_answers=int(eos),
            total_answers=len(oracle_answers) * len(scales),
            agreeing_answers=sum(a == b for a, b in zip(plain_answers, oracle_answers)),
        )


def format_report(result: OracleBenchResult, goal: float = 1.6) -> str:
    """Setup, EOS note, a table of medians and the ratios (oracle / plain is the figure with a goal)."""
    s, t = result.setup, result.timings
    n = s["samples"]
    labels = {
        "plain": f"plain evaluation pass, scale {s['scales'][-1]} only",
        "oracle": f"oracle build, {len(s['scales'])} scales (1 vision pass per image, shards written)",
        "naive": f"naive: one full run per scale ({len(s['scales'])} runs, vision re-run each)",
    }
    lines = [
        f"{s['model']}; {s['data']} = {n} samples; scales {s['scales']}",
        f"batch {s['batch_size']}, max_new_tokens {s['max_new_tokens']}; machine: {s['machine']}; "
        f"{s['repeats']} interleaved repeats per design (medians)",
        f"answers that ended with EOS: {result.eos_answers}/{result.total_answers}"
        + (
            ""
            if result.eos_answers == result.total_answers
            else f" (the others ran to the {s['max_new_tokens']}-token cap; a random-weight model rarely emits EOS)"
        ),
        f"check: the oracle's answers at scale {s['scales'][-1]} equal the plain pass's for "
        f"{result.agreeing_answers}/{n} samples",
        "",
        markdown_table(
            ["design", "median (s)", "IQR (s)", "per sample (ms)", "runs (s)"],
            [
                [
                    labels[design], f"{t.median(design):.2f}", f"{t.iqr(design):.2f}",
                    f"{1000 * t.median(design) / n:.1f}", ", ".join(f"{seconds:.2f}" for seconds in t.seconds[design]),
                ]
                for design in DESIGNS
            ],
            "lrrrl",
        ),
    ]  # fmt: skip
    oracle_ratio = t.ratio("oracle", "plain")
    lines += [
        "",
        f"oracle / plain: {oracle_ratio:.2f}x (goal <= {goal}x: {'met' if oracle_ratio <= goal else 'NOT met'})",
        f"naive / plain: {t.ratio('naive', 'plain'):.2f}x",
        f"naive / oracle: {t.ratio('naive', 'oracle'):.2f}x",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=16, help="granularity images (4 questions each)")
    parser.add_argument(
        "--questions-per-image", type=int, default=4, choices=(1, 2, 3, 4), help="keep 1 to 4 questions per image"
    )
    parser.add_argument("--hidden-size", type=int, default=128, help="tiny model width")
    parser.add_argument("--model", help="a saved M3 model (e.g. checkpoints/tiny-m3) instead of a random tiny one")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=8, help="cap on generated tokens")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per design, interleaved")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (the first also checks answers)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run_oracle_benchmark(
        num_images=args.num_images,
        questions_per_image=args.questions_per_image,
        hidden_size=args.hidden_size,
        model_dir=args.model,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
    )
    print(format_report(result))


if __name__ == "__main__":
    main()
