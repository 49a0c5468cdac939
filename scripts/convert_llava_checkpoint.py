"""Convert an original-layout LLaVA / LLaVA-NeXT checkpoint (e.g. mucai/llava-v1.5-7b-m3) to an M3 checkpoint.

Example:
    python scripts/convert_llava_checkpoint.py ckpt/llava-v1.5-7b-m3 out/llava-v1.5-7b-m3-hf \\
        --vision-tower ckpt/clip-vit-large-patch14-336 --dtype float16
"""

from __future__ import annotations

import argparse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The output holds safetensors weights, config.json, the tokenizer (with <image>) and an image "
        "processor; load it with m3.loading.load_m3_model or transformers' Llava(Next)ForConditionalGeneration.",
    )
    parser.add_argument("source", help="directory of the original checkpoint (config.json + weights)")
    parser.add_argument("output", help="directory to write the converted checkpoint to")
    parser.add_argument(
        "--vision-tower",
        metavar="DIR",
        help="local CLIP checkpoint directory (e.g. openai/clip-vit-large-patch14-336); needed when the source "
        "stores no vision tower weights and its mm_vision_tower is not a local directory",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        help="dtype of the written weights (default: the source config's torch_dtype)",
    )
    parser.add_argument("--no-tokenizer", action="store_true", help="do not load or save the source's tokenizer")
    parser.add_argument(
        "--image-token-index",
        type=int,
        metavar="ID",
        help="id of the <image> token; required with --no-tokenizer or when the source has no tokenizer",
    )
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty output directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from m3.cli import user_errors  # after parsing: --help stays fast

    with user_errors():
        from m3.convert import convert_llava_checkpoint

        report = convert_llava_checkpoint(
            args.source,
            args.output,
            vision_tower=args.vision_tower,
            dtype=args.dtype,
            tokenizer=not args.no_tokenizer,
            image_token_index=args.image_token_index,
            overwrite=args.overwrite,
        )
    print(report.summary())


if __name__ == "__main__":
    main()
