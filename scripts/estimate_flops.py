"""Analytic prefill FLOPs and KV-cache memory of an M3 model at every scale (no weights are loaded).

Examples:
    python scripts/estimate_flops.py                          # LLaVA-1.5-7B, 30 text tokens (paper Table 9)
    python scripts/estimate_flops.py --preset llava-1.5-13b --text-tokens 60
    python scripts/estimate_flops.py --model runs/tiny-m3     # any saved M3 / llava-hf folder
    python scripts/estimate_flops.py --model ckpt/llava-next --image-size 672x1008

The LLM column is what the paper's Table 9 reports; the vision tower and projector cost the same at every
scale because M3 pools after the projector.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="a saved model folder (only its config.json is read)")
    source.add_argument("--preset", choices=("llava-1.5-7b", "llava-1.5-13b"), default="llava-1.5-7b")
    parser.add_argument("--text-tokens", type=int, default=30, help="text tokens in the prompt (default: 30)")
    parser.add_argument("--image-size", help="HxW in pixels (LLaVA-NeXT only: its token count depends on it)")
    args = parser.parse_args(argv)

    from m3.cli import user_errors
    from m3.flops import cost_table, llava_15_config
    from m3.loading import load_m3_config

    image_size = None
    if args.image_size:
        try:
            image_size = tuple(int(v) for v in args.image_size.lower().split("x"))
        except ValueError:
            parser.error(f"--image-size must look like 672x1008, got {args.image_size!r}")
    with user_errors():
        if args.model:
            config, name = load_m3_config(args.model), args.model
        else:
            config, name = llava_15_config(args.preset.rsplit("-", 1)[1]), args.preset
        table = cost_table(config, args.text_tokens, image_size)  # checks --text-tokens and --image-size first
        print(f"{name}: prefill of one image and {args.text_tokens} text tokens")
        print(table)


if __name__ == "__main__":
    main()
