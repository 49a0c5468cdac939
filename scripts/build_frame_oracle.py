"""Build the per-frame oracle of an M3 model on a frames split and fit the frame predictor on it.

Examples:
    python scripts/build_frame_oracle.py --model runs/tiny-m3-frames --data runs/frames/train.json \\
        --out runs/frame-oracle --predictor-out runs/frame-predictor --limit 1200

Every frame of every multi-image record becomes one oracle row: for every scale, the record's prompt is answered
with that frame at the scale and every other frame at the smallest one (see oracle_data/frames.py). Writes
OUT/manifest.json and OUT/shards/*.parquet (a rerun finishes a killed build); with --predictor-out, fits the
predictor --predictor (a name of predictor.registry.PREDICTORS) on it and saves it there, ready for
AdaptiveM3.from_pretrained(model, predictor).
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved M3 model folder")
    parser.add_argument("--data", required=True, help="LLaVA JSON with multi-image records (a frames split)")
    parser.add_argument("--out", required=True, help="oracle folder to write")
    parser.add_argument("--image-root", help="folder the image paths are relative to (default: the data file's)")
    parser.add_argument("--scales", help="comma-separated scales (default: the model's m3_scales)")
    parser.add_argument("--limit", type=int, help="use only the first N multi-image records")
    parser.add_argument("--batch-size", type=int, default=8, help="records per generate call")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--predictor-out", help="fit a predictor on the oracle and save it here")
    parser.add_argument("--predictor", default="mlp-image", help="predictor to fit (default: mlp-image)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from m3.cli import user_errors  # after parsing: --help stays fast

    with user_errors():
        run(args)


def run(args: argparse.Namespace) -> None:
    from m3.cli import use_threads
    from m3.pooling import parse_scales
    from oracle_data.frames import build_frame_oracle
    from predictor.training import fit_frame_predictor

    use_threads(args.threads)
    manifest = build_frame_oracle(
        args.model,
        args.data,
        args.out,
        image_root=args.image_root,
        scales=parse_scales(args.scales) if args.scales is not None else None,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        progress=not args.no_progress,
    )
    print(f"frame oracle written: {manifest}")
    if args.predictor_out:
        fit_frame_predictor(args.out, args.predictor_out, args.predictor, args.seed)
        print(f"predictor {args.predictor} written: {args.predictor_out}")


if __name__ == "__main__":
    main()
