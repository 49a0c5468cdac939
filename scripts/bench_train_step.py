"""Time one M3 multi-scale training step two ways on the same batch and weights.

ours:     model(compact_ids, ..., m3_scales=[1, 9, 36, 144, 576]) - vision tower once, pooled 5 ways;
official: one model(..., m3_scale=s) per scale (vision tower re-run each time), losses summed / 5.

Both run forward + backward; they are first checked to give the same loss. Example:
    python scripts/bench_train_step.py --family llava_next --threads 1
"""

from __future__ import annotations

import argparse

import torch

from m3.bench import CONFIGS, DEFAULT_SCALES, DTYPES, format_report, run_benchmark
from m3.tiny import MODEL_FAMILIES


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=CONFIGS, default="tiny", help="tiny (CPU) or a random ~1B LLaVA (GPU)")
    parser.add_argument("--family", choices=MODEL_FAMILIES, default="llava")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per design, interleaved")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per design before timing")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--train-vision-tower", action="store_true", help="set config.m3_train_vision_tower=True")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--scales", type=int, nargs="+", default=list(DEFAULT_SCALES))
    parser.add_argument("--loss-atol", type=float, default=1e-5, help="largest loss gap allowed between designs")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run_benchmark(
        config_name=args.config,
        family=args.family,
        batch_size=args.batch_size,
        repeats=args.repeats,
        warmup=args.warmup,
        train_vision_tower=args.train_vision_tower,
        device=args.device,
        dtype=args.dtype,
        scales=args.scales,
        loss_atol=args.loss_atol,
        seed=args.seed,
    )
    print(format_report(result))


if __name__ == "__main__":
    main()
