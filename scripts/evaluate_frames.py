"""Many frames, one budget: accuracy against TOTAL visual tokens for predictor-allocated scales, uniform scales,
a collage, and a known-frame reference, at equal budgets.

Example (the table in docs/frames.md):
    python scripts/evaluate_frames.py --model runs/tiny-m3-frames --predictor runs/frame-predictor \\
        --data runs/frames/test.json --budgets 4,8,16,32,64,128,256,512,1024,2304 --out runs/frames-eval

Every question is answered at every budget by every method (--methods): predictor (the knapsack of
AdaptiveM3.answer_frames on the predictor's probabilities), uniform (every frame at the largest scale that fits),
collage (AdaptiveM3.answer_collage: the frames tiled into one image at the largest scale that fits) and known (every
frame at the smallest scale but the one holding the object, which gets the rest). Writes OUT/report.md (tables per
family), OUT/accuracy.png, OUT/summary.json and OUT/predictions.jsonl.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved M3 model folder")
    parser.add_argument("--predictor", required=True, help="predictor folder (scripts/build_frame_oracle.py)")
    parser.add_argument("--data", required=True, help="frames split (LLaVA JSON with multi-image records)")
    parser.add_argument("--image-root", help="image folder (default: the JSON's folder)")
    parser.add_argument("--budgets", default="4,8,16,32,64,128,256,512,1024,2304", help="total visual-token budgets")
    parser.add_argument("--methods", default="predictor,uniform,collage,known", help="comma-separated methods")
    parser.add_argument("--out", default="runs/frames-eval", help="output folder")
    parser.add_argument("--limit", type=int, help="evaluate only the first N questions")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--allow-other-weights", action="store_true", help="pair a predictor of other weights")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.budgets = [int(value) for value in args.budgets.split(",")]
    except ValueError:
        parser.error(f"--budgets must be comma-separated integers, got {args.budgets!r}")
    args.methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    from m3.cli import user_errors  # after parsing: --help stays fast

    with user_errors():
        run(args)


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from adaptive import AdaptiveM3
    from m3.cli import use_threads
    from m3.data.llava import LlavaDataset
    from routing_study.frames import evaluate_frames, write_frames_report

    use_threads(args.threads)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive number of questions, got {args.limit}")
    adaptive = AdaptiveM3.from_pretrained(args.model, args.predictor, allow_other_weights=args.allow_other_weights)
    dataset = LlavaDataset(args.data, args.image_root or Path(args.data).parent)
    items = [dataset[i] for i in range(len(dataset) if args.limit is None else min(args.limit, len(dataset)))]
    rows = evaluate_frames(
        adaptive, items, args.budgets, args.methods, args.batch_size, args.max_new_tokens, not args.no_progress
    )
    title = f"Accuracy against total visual tokens on {args.data}"
    print(write_frames_report(rows, args.out, title).read_text())


if __name__ == "__main__":
    main()
