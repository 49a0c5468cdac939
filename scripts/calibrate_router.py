"""Certify a saved scale predictor's threshold on labelled calibration data, and save it with its certificate.

Learn-then-Test picks the cheapest threshold such that, with probability at least 1 - delta over the draw of the
calibration queries, routing there is at most --max-drop less accurate than always answering at the largest scale
(on queries like the calibration ones: after a shift, certify again on labelled samples of the new data). The
calibration oracle must hold images the predictor was NOT fitted on.

Example:
    python scripts/calibrate_router.py --predictor runs/router/predictors/lgbm-emb --oracle runs/oracle-calibration \\
        --max-drop 0.01 --delta 0.1 --out runs/router/predictors/lgbm-emb-certified
    python scripts/ask.py --model runs/tiny-m3 --predictor runs/router/predictors/lgbm-emb-certified --image ... \\
        --question ...

The output folder loads with predictor.load_predictor, AdaptiveM3.from_pretrained and scripts/ask.py, and routes
at the certified threshold; scripts/evaluate_router.py --predictor OUT reports it with its certificate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from predictor.risk_control import DEFAULT_P_VALUE, P_VALUE_CHOICES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictor", required=True, help="a saved predictor folder")
    parser.add_argument("--oracle", required=True, help="labelled calibration oracle (images the predictor never saw)")
    parser.add_argument("--out", required=True, help="folder for the certified predictor")
    parser.add_argument("--max-drop", type=float, default=0.01, help="tolerated accuracy drop eps (default 0.01)")
    parser.add_argument("--delta", type=float, default=0.1, help="allowed failure probability (default 0.1)")
    parser.add_argument(
        "--p-value", choices=P_VALUE_CHOICES, default=DEFAULT_P_VALUE, help=f"the test (default {DEFAULT_P_VALUE})"
    )
    args = parser.parse_args(argv)
    if not 0 < args.max_drop < 1 or not 0 < args.delta < 1:
        parser.error("--max-drop and --delta must be in (0, 1)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from m3.cli import user_errors  # after parsing: --help stays fast

    with user_errors():
        run(args)


def run(args: argparse.Namespace) -> Path:
    """Certify, save, print the certificate; returns the folder written."""
    from predictor import CertifiedRouter, as_oracle_set, load_predictor
    from predictor.calibration import certificate_lines

    predictor = load_predictor(args.predictor, oracle_data=args.oracle)
    calibration = as_oracle_set(args.oracle)
    fitted_on = (predictor.fingerprint_ or {}).get("oracle_data")
    if fitted_on and fitted_on == calibration.fingerprint().get("oracle_data"):
        print(
            f"warning: the predictor was fitted on oracle data from {fitted_on}, the data of this calibration oracle: "
            "certify on images it never saw, or the certificate does not hold",
            file=sys.stderr,
        )
    router = CertifiedRouter(predictor, args.max_drop, args.delta, args.p_value).fit(calibration)
    out = router.save_pretrained(args.out)
    print("\n".join(certificate_lines(router.certificate_, router.target_accuracy_)))
    print(f"wrote {out} (routes at threshold {router.threshold_:.4f})")
    return out


if __name__ == "__main__":
    main()
