"""Time an oracle build against one plain full-scale evaluation pass and the naive per-scale design.

All three run side by side (interleaved) on the same granularity samples and the same tiny random model:
  plain:  generate at the largest scale only (one evaluation pass);
  oracle: build_oracle - every scale from one vision pass per image, confidences, embeddings, shards;
  naive:  one full evaluation run per scale (vision tower re-run each time).
A random-weight model rarely emits EOS, so answers run to --max-new-tokens; the output says how many stopped.

Example:
    python scripts/bench_oracle.py --num-images 16 --repeats 3
"""

from __future__ import annotations

import argparse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from oracle_data.bench import format_report, run_oracle_benchmark

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
