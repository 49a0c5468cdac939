"""Evaluate scale predictors against routing baselines on a test oracle (RouteLLM-style protocol), in distribution
and under a shift.

Examples:
    # fit + tune the standard predictors on a training oracle, then evaluate them on the test oracle
    python scripts/evaluate_router.py --oracle-train runs/oracle-train --oracle-test runs/oracle-test --out runs/router
    # evaluate saved predictors (refused if built for other scales or embedding size), e.g. certified ones
    python scripts/evaluate_router.py --oracle-test runs/oracle-test --predictor runs/router/predictors/mlp \\
        --out runs/eval
    # also under a shift: thresholds from train vs thresholds certified on 200 labelled shifted queries
    python scripts/evaluate_router.py --oracle-train runs/oracle-train --oracle-test runs/oracle-test \\
        --oracle-shift runs/oracle-shift --out runs/router

Every predictor is evaluated by both per-query rules: the threshold rule (NAME) and the priced rule (NAME (price)).
Writes OUT/results.md (tables), results.csv, results.json, families.csv, budgets.csv, curves.csv and curves.png
(and scorecard.md with question-only); with --oracle-train also OUT/predictors/NAME (save_pretrained folders, at the
calibrated threshold), OUT/predictors/NAME-certified and NAME-price-certified (at the threshold and the price
certified on the same held-out train images; prices and thresholds fitted to 5, 10 and 25 % of the tokens there are
marked in the report); with --oracle-shift
the same report of the shifted oracle's evaluation part in OUT/shift/, plus shift.md, shift.json and shift.png.
Tuning, calibration and certification use grouped splits of the training oracle only. OUT/run.json records the
settings; a used OUT of other settings is refused (its predictors would stay beside the new ones). See
docs/predictor.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PREDICTOR_NAMES = (
    "mlp", "mlp-oracle", "mlp-image", "mlp-probe", "mlp-probe9", "lgbm", "lgbm-emb", "lgbm-oracle", "lgbm-probe",
    "lgbm-probe9", "question-only", "attribute",
)  # fmt: skip
DEFAULT_NAMES = "mlp,mlp-image,mlp-oracle,lgbm,lgbm-emb,question-only,attribute"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from predictor.risk_control import DEFAULT_P_VALUE, P_VALUE_CHOICES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--oracle-test", required=True, help="oracle folder to evaluate on")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--oracle-train", help="oracle folder to fit (and tune) the predictors on")
    parser.add_argument("--predictor", action="append", default=[], help="a saved predictor folder (repeatable)")
    parser.add_argument(
        "--predictors",
        default=DEFAULT_NAMES,
        help=f"with --oracle-train: comma-separated predictors to fit, from {', '.join(PREDICTOR_NAMES)} "
        f"(default: {DEFAULT_NAMES}; the probes need oracles with hidden_1 columns; attribute, the best scale per "
        "bucket of the generator's difficulty attributes, needs records that carry them and is skipped otherwise)",
    )
    parser.add_argument("--trials", type=int, default=20, help="optuna trials per predictor (0: default parameters)")
    parser.add_argument(
        "--calibration-fraction", type=float, default=0.2, help="share of train images kept to choose the threshold"
    )
    parser.add_argument("--max-drop", type=float, default=0.02, help="certificates: tolerated accuracy drop (eps)")
    parser.add_argument("--delta", type=float, default=0.1, help="certificates: allowed failure probability")
    parser.add_argument("--p-value", choices=P_VALUE_CHOICES, default=DEFAULT_P_VALUE, help="certificates: the test")
    parser.add_argument("--oracle-shift", help="a shifted oracle: evaluate there too (OUT/shift)")
    parser.add_argument(
        "--shift-calibration", type=int, default=200, help="labelled shifted queries that certify thresholds there"
    )
    parser.add_argument("--accuracy", choices=("correct", "score"), default="correct", help="correct_{s} or score_{s}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.oracle_train is None and not args.predictor:
        parser.error("give --oracle-train (fit predictors) and/or --predictor DIR (evaluate saved ones)")
    args.predictors = [name.strip() for name in args.predictors.split(",") if name.strip()]
    unknown = [name for name in args.predictors if name not in PREDICTOR_NAMES]
    if unknown:
        parser.error(f"unknown --predictors {unknown}; choose from {', '.join(PREDICTOR_NAMES)}")
    if not 0 < args.max_drop < 1 or not 0 < args.delta < 1:
        parser.error("--max-drop and --delta must be in (0, 1)")
    if args.oracle_shift and args.accuracy != "correct":
        parser.error(
            "--oracle-shift certifies thresholds, which bound the share of correct answers: --accuracy correct"
        )
    return args


def made_by(args: argparse.Namespace) -> dict:
    """What makes the outputs of an --out folder (OUT/run.json): the oracles, the predictors fitted or loaded, and
    the settings of fitting, certifying and evaluating them."""

    def where(path):
        return None if path is None else str(Path(path).resolve())

    return {
        "oracle_train": where(args.oracle_train),
        "oracle_test": where(args.oracle_test),
        "oracle_shift": where(args.oracle_shift),
        "predictors": args.predictors if args.oracle_train else [],
        "predictor": [where(path) for path in args.predictor],
        **{key: getattr(args, key) for key in ("trials", "calibration_fraction", "max_drop", "delta", "p_value")},
        **{key: getattr(args, key) for key in ("shift_calibration", "accuracy", "seed")},
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from m3.cli import user_errors  # after parsing: --help stays fast

    with user_errors():
        run(args)


def run(args: argparse.Namespace) -> dict:
    """Fit and certify (with --oracle-train), load (--predictor), evaluate, and with --oracle-shift evaluate under
    the shift; prints the reports and returns the paths written."""
    from m3.cli import use_threads
    from m3.runs import claim_run_folder
    from predictor import load_predictor
    from predictor.data import check_matching_oracles
    from predictor.training import calibrate_rules, calibration_split, check_trials, fit_predictors
    from routing_study import evaluate_routing, write_evaluation
    from routing_study.evaluation import SCORECARD_SHARES
    from routing_study.report import write_shift
    from routing_study.shift import evaluate_shift

    use_threads(args.threads)
    check_trials(args.trials)  # before the folder is claimed with it
    out = Path(args.out)
    if args.oracle_train:
        check_matching_oracles(args.oracle_train, args.oracle_test)  # before fitting, not after
    if args.oracle_train and args.oracle_shift:
        check_matching_oracles(args.oracle_train, args.oracle_shift)
    saved = {directory: load_predictor(directory, oracle_data=args.oracle_test) for directory in args.predictor}
    claim_run_folder(out, made_by(args))  # a used --out of other settings is refused: its predictors would stay
    predictors, certified, budgeted = {}, {}, {}
    if args.oracle_train:
        fitted = fit_predictors(
            args.oracle_train,
            args.predictors,
            n_trials=args.trials,
            seed=args.seed,
            calibration_fraction=args.calibration_fraction,
            accuracy=args.accuracy,
            save_dir=out / "predictors",
            progress=not args.no_progress,
        )
        predictors.update(fitted)
        if args.accuracy == "correct":
            calibration = calibration_split(args.oracle_train, args.calibration_fraction, args.seed)[1]
            certified, budgeted = calibrate_rules(
                fitted, calibration, args.max_drop, args.delta, args.p_value, SCORECARD_SHARES,
                save_dir=out / "predictors",
            )  # fmt: skip
    for directory, loaded in saved.items():
        name = Path(directory).name
        predictors[name if name not in predictors else directory] = loaded
    evaluation = evaluate_routing(
        args.oracle_test, predictors, accuracy=args.accuracy, certified=certified, budgeted=budgeted
    )
    paths = write_evaluation(evaluation, out)
    print(paths["results.md"].read_text())
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    if args.oracle_shift:
        shift = evaluate_shift(
            args.oracle_shift, predictors, args.shift_calibration, args.max_drop, args.delta, args.p_value,
            train_certified=certified, seed=args.seed, budgeted=budgeted,
        )  # fmt: skip
        shift_paths = write_shift(shift, out / "shift", title=f"shifted oracle {args.oracle_shift}")
        print(shift_paths["shift.md"].read_text())
        print("wrote " + ", ".join(str(path) for path in shift_paths.values()))
        paths.update({f"shift/{name}": path for name, path in shift_paths.items()})
    return paths


if __name__ == "__main__":
    main()
