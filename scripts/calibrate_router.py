"""Choose a saved scale predictor's operating point on calibration data: certify it, or fit it to a token budget.

Two routing rules (--rule): ``threshold`` (the smallest scale whose P(correct) reaches the threshold) and ``price``
(the scale maximising P(correct) minus the price times its share of the largest scale's tokens). By default
Learn-then-Test picks the cheapest threshold or price such that, with probability at least 1 - delta over the draw
of the calibration queries, routing there is at most --max-drop less accurate than always answering at the largest scale
(on queries like the calibration ones: after a shift, certify again on labelled samples of the new data). With
--budget B it picks the strictest one (largest threshold, smallest price) whose mean visual tokens on the calibration
data are at most B, with no certificate. The calibration oracle must hold images the predictor was NOT fitted on.

Example:
    python scripts/calibrate_router.py --predictor runs/router/predictors/lgbm-emb --oracle runs/oracle-calibration \\
        --max-drop 0.01 --delta 0.1 --out runs/router/predictors/lgbm-emb-certified
    python scripts/calibrate_router.py --predictor runs/router/predictors/lgbm-emb --oracle runs/oracle-calibration \
        --rule price --out runs/router/predictors/lgbm-emb-price-certified     # a certified price
    python scripts/calibrate_router.py --predictor runs/router/predictors/lgbm-emb --oracle runs/oracle-calibration \
        --rule price --budget 58 --out runs/router/predictors/lgbm-emb-price-58   # ~10 % of 576 tokens per query
    python scripts/ask.py --model runs/tiny-m3 --predictor runs/router/predictors/lgbm-emb-certified --image ... \\
        --question ...

The output folder loads with predictor.load_predictor, AdaptiveM3.from_pretrained and scripts/ask.py, and routes
at the chosen rule and value; scripts/evaluate_router.py --predictor OUT reports it (with its certificate).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from predictor.risk_control import DEFAULT_P_VALUE, P_VALUE_CHOICES
    from predictor.thresholds import RULES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictor", required=True, help="a saved predictor folder")
    parser.add_argument("--oracle", required=True, help="labelled calibration oracle (images the predictor never saw)")
    parser.add_argument("--out", required=True, help="folder for the certified predictor")
    parser.add_argument(
        "--rule", choices=RULES, default="threshold", help="the routing rule whose value is chosen (default threshold)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        help="choose for this mean number of visual tokens per query instead of certifying (no certificate)",
    )
    parser.add_argument("--max-drop", type=float, help="tolerated accuracy drop eps (default 0.01)")
    parser.add_argument("--delta", type=float, help="allowed failure probability (default 0.1)")
    parser.add_argument("--p-value", choices=P_VALUE_CHOICES, help=f"the test (default {DEFAULT_P_VALUE})")
    args = parser.parse_args(argv)
    if args.budget is not None:
        given = [flag for flag, value in (("--max-drop", args.max_drop), ("--delta", args.delta),
                                          ("--p-value", args.p_value)) if value is not None]  # fmt: skip
        if given:
            parser.error(f"--budget chooses without a certificate: drop {', '.join(given)}")
        if not args.budget > 0:
            parser.error("--budget must be a positive mean number of visual tokens")
        return args
    args.max_drop = 0.01 if args.max_drop is None else args.max_drop
    args.delta = 0.1 if args.delta is None else args.delta
    args.p_value = args.p_value or DEFAULT_P_VALUE
    if not 0 < args.max_drop < 1 or not 0 < args.delta < 1:
        parser.error("--max-drop and --delta must be in (0, 1)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from m3.cli import user_errors  # after parsing: --help stays fast

    with user_errors():
        run(args)


def run(args: argparse.Namespace) -> Path:
    """Certify (or fit to --budget), save, print the operating point and certificate; returns the folder written."""
    from m3.runs import check_new_folder
    from predictor import CalibratedRouter, CertifiedRouter, as_oracle_set, load_predictor
    from predictor.calibration import certificate_lines, describe_operating_point, operating_point_of

    check_new_folder(args.out)  # before any work: a save over a used folder would mix two predictors' files
    predictor = load_predictor(args.predictor, oracle_data=args.oracle)
    calibration = as_oracle_set(args.oracle)
    fitted_on = (predictor.fingerprint_ or {}).get("oracle_data")
    if fitted_on and fitted_on == calibration.fingerprint().get("oracle_data"):
        print(
            f"warning: the predictor was fitted on oracle data from {fitted_on}, the data of this calibration oracle: "
            "certify on images it never saw, or the certificate does not hold",
            file=sys.stderr,
        )
    if args.budget is None:
        router = CertifiedRouter(predictor, args.max_drop, args.delta, args.p_value, rule=args.rule).fit(calibration)
        print("\n".join(certificate_lines(router.certificate_, router.target_accuracy_)))
    else:
        router = CalibratedRouter(predictor, rule=args.rule, budget=args.budget).fit(calibration)
        print(
            f"budget {args.budget:g} mean visual tokens: on the calibration data {router.tokens_:.1f} tokens, accuracy "
            f"{router.accuracy_:.4f} (largest scale {router.target_accuracy_:.4f}); no certificate"
        )
    out = router.save_pretrained(args.out)
    print(f"wrote {out} (routes at {describe_operating_point(*operating_point_of(router))})")
    return out


if __name__ == "__main__":
    main()
