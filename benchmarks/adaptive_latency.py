"""Per-query latency of AdaptiveM3 against always answering at the largest scale and at the oracle's scale.

All paths answer the same queries one at a time (batch 1, the interactive case), interleaved per query
(``timing.interleave``, one round per query) so that machine load affects them alike:

- ``adaptive``: image -> one vision pass -> predictor (features + model) -> generate at the chosen scale;
- ``routing (features + predictor)``: the predictor's part of ``adaptive`` alone (``AdaptiveM3.probabilities`` on
  the grids of a vision pass done beforehand);
- ``always <largest>``: image -> one vision pass -> generate at the largest scale (no predictor);
- ``oracle scale``: the same at the oracle's scale for that sample (needs an oracle build of the same samples).

The routing overhead is the predictor's share of a query.

Examples:
    python benchmarks/adaptive_latency.py --adaptive runs/quickstart/adaptive --data runs/granularity/test.json
    python benchmarks/adaptive_latency.py --model runs/tiny-m3 --predictor runs/quickstart/predictor-mlp \\
        --data runs/granularity/test.json --oracle runs/quickstart/oracle-test --limit 100
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
from timing import Timings, device_sync, interleave, machine

from adaptive import AdaptiveM3
from m3.evaluation import question_of
from m3.inference import compact_prompts, generate_at_scale
from m3.markdown import markdown_table

ROUTING = "routing (features + predictor)"


def answer_at(adaptive: AdaptiveM3, image, question: str, scale: int, max_new_tokens: int) -> int:
    """Vision pass + generate at ``scale`` without the predictor; returns the visual tokens used."""
    _, grids, sizes = adaptive.encode([image])
    compact = compact_prompts(adaptive.processor, [question], sizes)
    output = generate_at_scale(adaptive.model, adaptive.processor, compact, grids, sizes, scale, max_new_tokens)
    return output.tokens[0]


def measure_latency(
    adaptive: AdaptiveM3,
    images: Sequence,
    questions: Sequence[str],
    oracle_scales: Sequence[int] | None = None,
    threshold: float | None = None,
    max_new_tokens: int = 4,
    warmup: int = 2,
) -> Timings:
    """Time every path on every query, interleaved; the first ``warmup`` queries are warm-up (not recorded).

    Returns seconds per path and, as each call's output, the visual tokens it used (0 for routing)."""
    if len(images) <= warmup:
        raise ValueError(f"{len(images)} queries leave none to time after {warmup} warm-up queries")
    full = max(adaptive.scales)
    encoded = [adaptive.encode([image]) for image in images]  # the vision pass routing reads, done beforehand

    def routed(r: int) -> int:
        answer = adaptive.generate(images[r], questions[r], threshold=threshold, max_new_tokens=max_new_tokens)
        return answer.visual_tokens

    def routing(r: int) -> int:
        pil, grids, _ = encoded[r]
        adaptive.probabilities(pil, grids, [questions[r]])
        return 0

    paths = {
        "adaptive": routed,
        ROUTING: routing,
        f"always {full}": lambda r: answer_at(adaptive, images[r], questions[r], full, max_new_tokens),
    }
    if oracle_scales is not None:
        paths["oracle scale"] = lambda r: answer_at(
            adaptive, images[r], questions[r], int(oracle_scales[r]), max_new_tokens
        )
    with torch.inference_mode():
        return interleave(paths, len(images) - warmup, warmup, sync=device_sync(adaptive.model.device))


def format_table(timings: Timings) -> str:
    """Markdown: per path, queries, median / mean milliseconds per query and mean visual tokens."""
    headers = ["path", "queries", "median ms / query", "IQR ms", "mean ms / query", "mean visual tokens"]
    rows = [
        [
            path, len(seconds), f"{1e3 * timings.median(path):.2f}", f"{1e3 * timings.iqr(path):.2f}",
            f"{1e3 * statistics.fmean(seconds):.2f}", f"{statistics.fmean(timings.outputs[path]):.1f}",
        ]
        for path, seconds in timings.seconds.items()
    ]  # fmt: skip
    return markdown_table(headers, rows, "lrrrrr", spaced=True)


def format_summary(timings: Timings, full: int) -> str:
    """The two figures: adaptive / always-largest latency and the routing share of an always-largest query."""
    always = f"always {full}"
    routing = timings.median(ROUTING)
    return (
        f"adaptive / {always}: {timings.ratio('adaptive', always):.2f}x (median latency)\n"
        f"routing overhead: {1e3 * routing:.2f} ms, {100 * timings.ratio(ROUTING, always):.2f} % of one {always} query"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adaptive", help="a folder written by AdaptiveM3.save_pretrained")
    parser.add_argument("--model", help="an M3 model folder (with --predictor)")
    parser.add_argument("--predictor", help="a saved predictor folder (with --model)")
    parser.add_argument("--data", required=True, help="LLaVA-format JSON (e.g. a granularity split)")
    parser.add_argument("--oracle", help="an oracle build of the same data: also time answering at its scales")
    parser.add_argument("--limit", type=int, default=50, help="queries to time (default: 50)")
    parser.add_argument("--warmup", type=int, default=2, help="first queries run untimed (default: 2)")
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = parser.parse_args(argv)
    if bool(args.model) != bool(args.predictor) or bool(args.adaptive) == bool(args.model):
        parser.error("pass either --adaptive DIR, or both --model DIR and --predictor DIR")
    torch.set_num_threads(args.threads)
    adaptive = AdaptiveM3.from_pretrained(args.adaptive or args.model, args.predictor)
    records = json.loads(Path(args.data).read_text())[: args.limit]
    root = Path(args.data).parent
    images = [root / record["image"] for record in records]
    questions = [question_of(record) for record in records]
    oracle_scales = None
    if args.oracle:
        from oracle_data import load_oracle

        table = load_oracle(args.oracle)
        by_id = dict(zip(table.column("sample_id").to_pylist(), table.column("oracle_scale").to_pylist()))
        missing = [record["id"] for record in records if record["id"] not in by_id]
        if missing:
            parser.error(f"the oracle in {args.oracle} lacks {len(missing)} of these samples, e.g. {missing[0]}")
        oracle_scales = [by_id[record["id"]] for record in records]
    timings = measure_latency(
        adaptive, images, questions, oracle_scales, args.threshold, args.max_new_tokens, args.warmup
    )
    where = machine(adaptive.model.device)
    print(f"{len(records)} queries from {args.data}, batch 1, first {args.warmup} warm-up; machine: {where}")
    print(format_table(timings))
    print(format_summary(timings, max(adaptive.scales)))


if __name__ == "__main__":
    main()
