"""Ask an adaptive M3 model one question about one image; prints the answer, the scale it chose and the routing
rule and operating point it chose by (a threshold, or a price per token), with the certificate that holds there.

Examples (folders as scripts/quickstart.py writes them):
    python scripts/ask.py --image runs/quickstart/granularity/images/test/test_000000.png \\
        --question "what color is in the black frame ?" --adaptive runs/quickstart/adaptive
    python scripts/ask.py --image cat.jpg --question "What is in the image?" \\
        --model runs/quickstart/m3 --predictor runs/quickstart/predictors/mlp --threshold 0.9
    python scripts/ask.py --image cat.jpg --question "..." --adaptive DIR --price 0.05   # the priced rule
    python scripts/ask.py --image cat.jpg --question "..." --adaptive DIR --scale 576   # force a scale
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--question", required=True)
    parser.add_argument("--adaptive", help="a folder written by AdaptiveM3.save_pretrained (model/ + predictor/)")
    parser.add_argument("--model", help="an M3 model folder (with --predictor)")
    parser.add_argument("--predictor", help="a saved scale predictor folder (with --model)")
    parser.add_argument(
        "--threshold", type=float, help="probability a scale must reach, in [0, 1] (default: the predictor's)"
    )
    parser.add_argument(
        "--price",
        type=float,
        help="route by the priced rule at this price: accuracy one query pays for the largest scale's tokens, >= 0 "
        "(default: the predictor's rule and value)",
    )
    parser.add_argument("--max-tokens", type=int, help="cap on the visual tokens the router may choose")
    parser.add_argument("--scale", type=int, help="force this scale (the predictor's estimates are still shown)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--allow-other-weights", action="store_true", help="use a predictor fitted on another model's oracle anyway"
    )
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = parser.parse_args(argv)
    if bool(args.model) != bool(args.predictor) or bool(args.adaptive) == bool(args.model):
        parser.error("pass either --adaptive DIR, or both --model DIR and --predictor DIR")
    if args.threshold is not None and args.price is not None:
        parser.error("pass --threshold or --price, not both: they are two routing rules")

    from m3.cli import user_errors  # after parsing: --help stays fast

    with user_errors():
        from pathlib import Path

        from adaptive import AdaptiveM3
        from adaptive.model import MODEL_DIR, check_generation_options, check_question, load_rgb
        from m3.loading import load_m3_config

        image, question = load_rgb(args.image), check_question(args.question)  # before the model loads
        model_dir = Path(args.model) if args.model else Path(args.adaptive) / MODEL_DIR
        if (model_dir / "config.json").is_file():  # (a missing one: from_pretrained says what is missing)
            config = load_m3_config(model_dir)
            check_generation_options(
                config, args.threshold, args.max_tokens, args.scale, args.max_new_tokens, args.price
            )
        adaptive = AdaptiveM3.from_pretrained(
            args.adaptive or args.model, args.predictor, allow_other_weights=args.allow_other_weights
        )
        result = adaptive.generate(
            image,
            question,
            threshold=args.threshold,
            max_tokens=args.max_tokens,
            scale=args.scale,
            max_new_tokens=args.max_new_tokens,
            price=args.price,
        )
    if args.json:
        print(json.dumps(result.__dict__, indent=2))
        return
    how = "forced" if result.forced else "chosen by the predictor"
    print(f"answer: {result.answer}")
    print(f"scale: {result.scale} ({how}; {result.visual_tokens} visual tokens)")
    if result.probe_scale is not None:
        reuse = "its answer reused" if result.reused_probe else "then answered again"
        print(f"probe: answered first at scale {result.probe_scale}, {reuse}; {result.processed_tokens} tokens in all")
    print(routing_line(result, args))
    print(certification_line(result, adaptive.certificate, args.max_tokens))
    print("P(correct) per scale: " + ", ".join(f"{s}: {p:.2f}" for s, p in result.probabilities.items()))


def routing_line(result, args: argparse.Namespace) -> str:
    """The rule and operating point this answer was routed by, and where they came from."""
    from predictor.calibration import describe_operating_point

    if result.forced:
        return "routing: none (the scale was forced with --scale)"
    value = result.price if result.rule == "price" else result.threshold
    given = args.price if result.rule == "price" else args.threshold
    source = f"--{result.rule}" if given is not None else "the saved operating point"
    return f"routing: {describe_operating_point(result.rule, value)} ({source})"


def certification_line(result, own, max_tokens: int | None) -> str:
    """Whether this answer's routing is certified: a certificate is shown only at the rule and value it holds at."""
    from predictor.calibration import certified_point, describe_operating_point

    if result.certificate is not None:
        c = result.certificate
        bound = f"drop <= {c['epsilon']:g} below the largest scale with probability >= {1 - c['delta']:g}"
        bound += f" (n = {c['n']})"
        if c["threshold"] is None:
            return f"certified: {bound}, by sending every query to the largest scale (nothing cheaper was certified)"
        rule = c.get("rule", "threshold")
        return f"certified {describe_operating_point(rule, c['threshold'])}: {bound}; holds at this {rule} only"
    if result.forced:
        return "not certified: the scale was forced (--scale)"
    if own is None:
        return "not certified: the predictor carries no certificate (scripts/calibrate_router.py certifies one)"
    if max_tokens is not None:
        return "not certified: --max-tokens changes the routing that the predictor's certificate covers"
    value = result.price if result.rule == "price" else result.threshold
    return (
        f"not certified: routed at {describe_operating_point(result.rule, value)}; the predictor's certificate (drop "
        f"<= {own.epsilon:g}, probability >= {1 - own.delta:g}) holds at "
        f"{describe_operating_point(*certified_point(own))} only"
    )


if __name__ == "__main__":
    main()
