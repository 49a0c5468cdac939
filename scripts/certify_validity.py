"""Do certified thresholds keep their promise, and how many tokens do they save? A resplit study.

An oracle of queries the routers never saw (the test split, and optionally a shifted one) is split at random, by
image, --resplits times into --n calibration queries and the rest. Each router is certified on the calibration
part (Learn-then-Test at each --eps and --delta, with each p-value in --methods) and run on the rest at its
certified threshold. Validity: the share of splits whose test drop below always-largest exceeds eps should stay
under delta (plus binomial slack). Efficiency: mean tokens processed against eps (0.01 to 0.1) for every router,
the best certified fixed scale and the certified question-only router.

Examples:
    # fit the routers on a training oracle, study them on the test oracle and on a shifted one
    python scripts/certify_validity.py --oracle-train runs/oracle-train --oracle runs/oracle-test \\
        --oracle-shift runs/oracle-shift --predictors mlp,lgbm-emb,lgbm-probe,question-only --out runs/validity
    # saved predictors (fitted elsewhere), plus the question-only router fitted on the train oracle
    python scripts/certify_validity.py --oracle runs/oracle-test --predictor runs/router/predictors/lgbm-emb \\
        --oracle-train runs/oracle-train --predictors question-only --out runs/validity

Writes OUT/validity.md, validity.csv, efficiency.csv and efficiency.png. See docs/predictor.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from predictor.registry import PREDICTORS
    from predictor.risk_control import DEFAULT_P_VALUE, P_VALUE_CHOICES, P_VALUES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--oracle", required=True, help="oracle of queries the routers never saw (in distribution)")
    parser.add_argument("--oracle-shift", help="a shifted oracle to study as well")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--oracle-train", help="fit --predictors on this oracle (grouped split as evaluate_router)")
    parser.add_argument("--predictors", default="", help=f"comma-separated, from {', '.join(PREDICTORS)}")
    parser.add_argument("--predictor", action="append", default=[], help="a saved predictor folder (repeatable)")
    parser.add_argument("--trials", type=int, default=0, help="optuna trials per fitted predictor (0: defaults)")
    parser.add_argument("--n", type=int, default=500, help="calibration queries per split")
    parser.add_argument("--resplits", type=int, default=200, help="random calibration / test splits")
    parser.add_argument("--eps", default="0.02,0.05", help="tolerated drops for the validity table")
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--methods", default=",".join(P_VALUES), help="p-values for the validity table")
    parser.add_argument(
        "--efficiency-method", choices=P_VALUE_CHOICES, default=DEFAULT_P_VALUE, help="p-value for the curve"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    args.predictors = [name.strip() for name in args.predictors.split(",") if name.strip()]
    args.methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = [m for m in args.methods if m not in P_VALUE_CHOICES]
    unknown += [name for name in args.predictors if name not in PREDICTORS]
    if unknown:
        parser.error(f"unknown p-value(s) or predictor(s): {unknown}")
    if args.predictors and not args.oracle_train:
        parser.error("--predictors are fitted on --oracle-train: give it")
    if not args.predictors and not args.predictor:
        parser.error("give --predictors (with --oracle-train) and/or --predictor DIR")
    try:
        args.eps = [float(e) for e in args.eps.split(",")]
    except ValueError:
        parser.error(f"--eps must be comma-separated numbers, got {args.eps!r}")
    if not all(0 < e < 1 for e in args.eps) or not 0 < args.delta < 1 or args.n < 1 or args.resplits < 1:
        parser.error("--eps and --delta must be in (0, 1), --n and --resplits at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from m3.cli import user_errors  # after parsing: --help stays fast

    with user_errors():
        paths = run(args)
    print(paths["validity.md"].read_text())
    print("wrote " + ", ".join(str(path) for path in paths.values()))


def run(args: argparse.Namespace) -> dict:
    """Fit or load the routers, run the study on each oracle, write the tables and the plot."""
    from m3.cli import use_threads
    from predictor import load_predictor
    from predictor.training import check_trials, fit_predictors
    from routing_study.report import write_validity
    from routing_study.validity import validity_study

    use_threads(args.threads)
    check_trials(args.trials)
    out = Path(args.out)
    routers = {}
    if args.predictors:
        routers.update(
            fit_predictors(args.oracle_train, args.predictors, args.trials, args.seed, save_dir=out / "predictors")
        )
    for directory in args.predictor:
        routers[Path(directory).name] = load_predictor(directory, oracle_data=args.oracle)
    studies = {}
    for where, oracle in (("in distribution", args.oracle), ("shifted", args.oracle_shift)):
        if oracle is None:
            continue
        print(f"{where}: {args.resplits} splits of {oracle}", flush=True)
        studies[where] = validity_study(
            oracle, routers, args.n, args.resplits, args.eps, args.delta, args.methods,
            efficiency_method=args.efficiency_method, seed=args.seed,
        )  # fmt: skip
    return write_validity(studies, out)


if __name__ == "__main__":
    main()
