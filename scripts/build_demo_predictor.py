"""Build the small certified scale predictor the demo uses by default (checkpoints/tiny-m3-router).

    python scripts/build_demo_predictor.py                       # for checkpoints/tiny-m3 (about 5 min on 1 core)
    python scripts/build_demo_predictor.py --model DIR --out DIR

Writes the granularity train/validation splits and the model's oracle on them under --work, fits an MLP predictor
on the train oracle and certifies a threshold per epsilon on the validation oracle (see m3_demo/router.py), and
rewrites the page's example images (examples/granularity: the first granularity test images and their answers).
Rebuild it whenever the tiny model is retrained: the demo refuses a predictor fitted on other weights.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="checkpoints/tiny-m3", help="M3 model folder")
    parser.add_argument("--out", default="checkpoints/tiny-m3-router", help="predictor folder to write")
    parser.add_argument("--work", default="runs/demo-router", help="folder for the data and oracles")
    parser.add_argument("--train-images", type=int, default=500, help="granularity train images")
    parser.add_argument("--calibration-images", type=int, default=200, help="validation images")
    parser.add_argument("--delta", type=float, default=0.1, help="certificate failure probability")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--examples", default="examples/granularity", help="also rewrite the page's example images here ('' : no)"
    )
    args = parser.parse_args(argv)
    from m3.cli import user_errors  # after parsing: --help stays fast

    with user_errors():
        run(args)


def run(args: argparse.Namespace) -> None:
    from m3.cli import use_threads
    from m3_demo.examples import write_examples
    from m3_demo.router import build_demo_predictor

    use_threads(args.threads)
    out = build_demo_predictor(
        args.model, args.out, args.work, args.train_images, args.calibration_images, delta=args.delta
    )
    print(f"wrote {out}")
    if args.examples:
        print(f"wrote {write_examples(args.examples)}")


if __name__ == "__main__":
    main()
