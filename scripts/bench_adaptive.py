"""Per-query latency of AdaptiveM3 vs always answering at the largest scale (and at the oracle's scale).

Examples:
    python scripts/bench_adaptive.py --adaptive runs/quickstart/adaptive --data runs/granularity/test.json
    python scripts/bench_adaptive.py --model runs/tiny-m3 --predictor runs/quickstart/predictor-mlp \\
        --data runs/granularity/test.json --oracle runs/quickstart/oracle-test --limit 100

Queries run one at a time (batch 1), the three paths interleaved per query; the first 2 are warm-up. The
routing overhead is the predictor's share (image + question features and the predictor model) of a query.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adaptive", help="a folder written by AdaptiveM3.save_pretrained")
    parser.add_argument("--model", help="an M3 model folder (with --predictor)")
    parser.add_argument("--predictor", help="a saved predictor folder (with --model)")
    parser.add_argument("--data", required=True, help="LLaVA-format JSON (e.g. a granularity split)")
    parser.add_argument("--oracle", help="an oracle build of the same data: also time answering at its scales")
    parser.add_argument("--limit", type=int, default=50, help="queries to time (default: 50)")
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = parser.parse_args(argv)
    if bool(args.model) != bool(args.predictor) or bool(args.adaptive) == bool(args.model):
        parser.error("pass either --adaptive DIR, or both --model DIR and --predictor DIR")

    import torch

    from adaptive import AdaptiveM3
    from adaptive.bench import measure_latency
    from m3.evaluation import question_of

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
    report = measure_latency(adaptive, images, questions, oracle_scales, args.threshold, args.max_new_tokens)
    print(f"{len(records)} queries from {args.data}, batch 1, {args.threads} thread(s), first 2 are warm-up")
    print(report.table())
    full = f"always {max(adaptive.scales)}"
    routing = report.median("routing (features + predictor)")
    print(f"adaptive / {full}: {report.median('adaptive') / report.median(full):.2f}x (median latency)")
    print(f"routing overhead: {1e3 * routing:.2f} ms, {100 * routing / report.median(full):.1f} % of one {full} query")


if __name__ == "__main__":
    main()
