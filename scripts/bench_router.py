"""Time routing one query (predictor features + forward) against answering it (one generate at the largest scale).

Example:
    python scripts/bench_router.py --model runs/tiny-m3 --oracle runs/oracle-test \\
        --predictor runs/router/predictors/mlp --predictor runs/router/predictors/lgbm

Queries are the first --num-queries samples of the oracle, one at a time (batch 1); see predictor/bench.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the saved M3 model the oracle was built with")
    parser.add_argument("--oracle", required=True, help="an oracle folder (queries, images, max_new_tokens)")
    parser.add_argument("--predictor", action="append", required=True, help="a saved predictor folder (repeatable)")
    parser.add_argument("--num-queries", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds over the queries")
    parser.add_argument("--goal", type=float, default=0.02, help="routing / generate ratio to report against")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from predictor.bench import bench_router, format_bench

    torch.set_num_threads(args.threads)
    predictors = {Path(directory).name: directory for directory in args.predictor}
    result = bench_router(
        args.model, args.oracle, predictors, args.num_queries, args.repeats, progress=not args.no_progress
    )
    print(format_bench(result, args.goal))


if __name__ == "__main__":
    main()
