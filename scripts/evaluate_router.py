"""Evaluate scale predictors against routing baselines on a test oracle (RouteLLM-style protocol).

Examples:
    # fit + tune the standard predictors on a training oracle, then evaluate them on the test oracle
    python scripts/evaluate_router.py --oracle-train runs/oracle-train --oracle-test runs/oracle-test --out runs/router
    # evaluate saved predictors (refused if built for other scales or embedding size)
    python scripts/evaluate_router.py --oracle-test runs/oracle-test --predictor runs/router/predictors/mlp \
        --out runs/eval

Writes OUT/results.md (tables), results.csv, results.json, families.csv, budgets.csv, curves.csv and curves.png;
with --oracle-train also OUT/predictors/NAME (save_pretrained folders, at the calibrated threshold). Tuning and the
operating threshold use grouped splits of the training oracle only. See docs/predictor.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PREDICTOR_NAMES = ("mlp", "mlp-oracle", "mlp-image", "lgbm", "lgbm-emb", "lgbm-oracle")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--oracle-test", required=True, help="oracle folder to evaluate on")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--oracle-train", help="oracle folder to fit (and tune) the predictors on")
    parser.add_argument("--predictor", action="append", default=[], help="a saved predictor folder (repeatable)")
    parser.add_argument(
        "--predictors",
        default="mlp,mlp-image,mlp-oracle,lgbm,lgbm-emb",
        help=f"with --oracle-train: comma-separated predictors to fit, from {', '.join(PREDICTOR_NAMES)}",
    )
    parser.add_argument("--trials", type=int, default=20, help="optuna trials per predictor (0: default parameters)")
    parser.add_argument(
        "--calibration-fraction", type=float, default=0.2, help="share of train images kept to choose the threshold"
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
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from m3.cli import user_errors  # after parsing: --help stays fast

    with user_errors():
        paths = run(args)
    print(paths["results.md"].read_text())
    print("wrote " + ", ".join(str(path) for path in paths.values()))


def run(args: argparse.Namespace) -> dict:
    import torch

    from predictor import evaluate_routing, load_predictor, write_evaluation
    from predictor.data import check_matching_oracles
    from predictor.training import fit_predictors

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.oracle_train:
        check_matching_oracles(args.oracle_train, args.oracle_test)  # before fitting, not after
    saved = {directory: load_predictor(directory, oracle_data=args.oracle_test) for directory in args.predictor}
    predictors = {}
    if args.oracle_train:
        predictors.update(
            fit_predictors(
                args.oracle_train,
                args.predictors,
                n_trials=args.trials,
                seed=args.seed,
                calibration_fraction=args.calibration_fraction,
                accuracy=args.accuracy,
                save_dir=out / "predictors",
                progress=not args.no_progress,
            )
        )
    for directory, loaded in saved.items():
        name = Path(directory).name
        predictors[name if name not in predictors else directory] = loaded
    evaluation = evaluate_routing(args.oracle_test, predictors, accuracy=args.accuracy)
    return write_evaluation(evaluation, out)


if __name__ == "__main__":
    main()
