"""Per-scale evaluation: accuracy per scale and per question family, as markdown, CSV and a plot.

Examples:
    python scripts/evaluate.py --model runs/tiny-m3 --data runs/granularity/test.json --out runs/eval
    python scripts/evaluate.py --model runs/tiny-m3 runs/tiny-ss576 --data runs/granularity/test.json

    python scripts/evaluate.py --model runs/tiny-ss576 --data runs/granularity/test.json --token-selection spatial

A model trained at one scale only (or any llava-hf checkpoint) is evaluated at every scale with average
pooling applied at inference time, the paper's Table 4 baseline; --token-selection spatial|sequential gives
the other two baselines (it replaces m3_token_selection in every loaded config). LLaVA-NeXT models can cut
other crop grids than they were trained with: --image-grid-pinpoints '[[96,96],...,[288,288]]' (JSON; the
model and the image processor both get it). Writes OUT/report.md and, per model, accuracy.{md,csv,png} and
predictions.jsonl; OUT/run.json records what made them: an OUT of another run is refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", required=True, help="saved model directories")
    parser.add_argument("--data", required=True, help="LLaVA-format JSON split")
    parser.add_argument("--image-root", help="image folder (default: the JSON's folder)")
    parser.add_argument("--out", default="runs/eval", help="output folder")
    parser.add_argument("--scales", help="comma-separated scales (default: every nested scale of the grid)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N questions")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--token-selection",
        choices=["avg_pool", "spatial", "sequential"],
        help="token selection at inference for every model (default: each model's own config)",
    )
    parser.add_argument("--image-grid-pinpoints", type=json.loads, help="LLaVA-NeXT anyres grids as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of another run in --out")
    args = parser.parse_args(argv)
    from m3.cli import user_errors  # after parsing: --help stays fast

    with user_errors():
        run(args)


def run(args: argparse.Namespace) -> None:
    from m3.cli import use_threads
    from m3.evaluation import run_evaluation
    from m3.pooling import parse_scales

    use_threads(args.threads)
    scales = parse_scales(args.scales) if args.scales is not None else None
    run_evaluation(
        args.model,
        args.data,
        args.out,
        scales=scales,
        image_root=args.image_root,
        limit=args.limit,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        token_selection=args.token_selection,
        image_grid_pinpoints=args.image_grid_pinpoints,
        overwrite=args.overwrite,
    )
    print(open(f"{args.out}/report.md").read())


if __name__ == "__main__":
    main()
