"""The whole pipeline on CPU in one command: benchmark -> tiny M3 -> oracle -> predictors -> routing report.

    python scripts/quickstart.py                      # trains the tiny M3 first (`tiny` preset, ~55 min, 2 threads)
    python scripts/quickstart.py --reuse-checkpoint   # starts from the committed checkpoints/tiny-m3 instead
    python scripts/quickstart.py --smoke              # a shrunken run of every stage (CI; about a minute)

OUT/run.json records what made the folder (smoke or full run, data, model); a rerun with the same settings continues
it, another is refused (use another --out). Steps, each skipped when its output already exists (so a killed run
continues where it stopped; what is reused is printed):
1. the granularity benchmark (train / validation / test splits) in OUT/granularity or --data-dir;
2. the tiny M3 model (`python scripts/train_m3.py --preset tiny`), or the committed checkpoint;
3. the oracle of the model on part of the train split (the predictors' teacher) and on the test split;
4. the scale predictors (MLP and LightGBM, and both as probes that read the model's answer at 9 tokens, tuned with
   optuna on grouped train splits; OUT/predictors/NAME), each routed by both per-query rules, a threshold and a
   price per token, and for each rule CERTIFIED on the held-out calibration images of the train oracle (drop <=
   0.02 below 576 tokens with probability >= 0.9; OUT/predictors/NAME-certified and NAME-price-certified) and
   fitted there to 5, 10 and 25 % of the tokens; the
   question-only and attribute reference routers (routed alike); and the routing evaluation on the test oracle
   (OUT/router) and on the shifted test split (smaller squares, more clutter, noisier:
   m3.data.granularity.SHIFTED_CONFIG; OUT/router-shift, with thresholds and prices re-certified on 200 labelled
   shifted queries);
5. an AdaptiveM3 folder (the model with the learned predictor and rule whose certified operating point spends the
   fewest tokens on the calibration images, at that threshold or price; OUT/adaptive) and OUT/report.md with the
   scorecards, the per-scale table, the oracle table, the router tables and the accuracy-vs-tokens plot.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "tiny-m3"
TRIALS, ORACLE_TRAIN_IMAGES = 10, 1000  # without --smoke
SMOKE_NUM_IMAGES = {"train": 12, "validation": 4, "test": 6}  # --smoke: checks the chain, learns nothing
LEARNED = ("mlp", "lgbm", "lgbm-emb", "mlp-probe9", "lgbm-probe9")  # the probes read the model's answer at 9 tokens
MAX_DROP, DELTA = 0.02, 0.1  # the certificates the quickstart asks for


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/quickstart", help="output folder (default: runs/quickstart)")
    parser.add_argument("--data-dir", help="granularity benchmark folder (default: OUT/granularity)")
    parser.add_argument("--reuse-checkpoint", action="store_true", help=f"use {CHECKPOINT.relative_to(REPO)}")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes everywhere: checks the chain, learns nothing")
    parser.add_argument(
        "--oracle-train-images", type=int, help=f"train images for the oracle (default: {ORACLE_TRAIN_IMAGES})"
    )
    parser.add_argument("--trials", type=int, help=f"optuna trials per predictor (default: {TRIALS})")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads (give 1 when another job shares a 2-core machine)"
    )
    return parser.parse_args(argv)


def check_sizes(args: argparse.Namespace) -> None:
    """Fill in ``--trials`` and ``--oracle-train-images``, refusing what would be ignored or cannot be run: --smoke
    sets its own sizes (so a size given with it is refused, not dropped), --trials >= 0, --oracle-train-images >= 1.
    """
    given = [name for name in ("trials", "oracle_train_images") if getattr(args, name) is not None]
    if args.smoke and given:
        options = " and ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"--smoke sets its own sizes (no tuning, 2 oracle images a family): {options} would be "
                         "ignored; drop it or run without --smoke")  # fmt: skip
    args.trials = TRIALS if args.trials is None else args.trials
    args.oracle_train_images = ORACLE_TRAIN_IMAGES if args.oracle_train_images is None else args.oracle_train_images
    if args.trials < 0:
        raise ValueError(f"--trials must be >= 0 (0: each predictor's default parameters), got {args.trials}")
    if args.oracle_train_images < 1:
        raise ValueError(f"--oracle-train-images must be >= 1, got {args.oracle_train_images}")


def stage(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def say_if_reused(split_json: Path, num_images: int) -> None:
    """Print that an existing split is reused, and its size when it differs from what this run would write."""
    if not split_json.exists():
        return
    from m3.files import read_json

    meta = split_json.with_name(split_json.name.replace(".json", ".meta.json"))
    held = read_json(meta, "delete that folder to regenerate the split").get("num_images") if meta.is_file() else None
    differs = "" if held in (None, num_images) else f" ({held} images; this run would write {num_images})"
    print(f"reusing {split_json}{differs}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from m3.cli import user_errors  # after parsing: --help stays fast

    with user_errors():
        run(args)


def run(args: argparse.Namespace) -> None:
    from m3.cli import use_threads
    from m3.data.granularity import DEFAULT_NUM_IMAGES, FAMILIES, SHIFTED_CONFIG, ensure_split
    from m3.runs import check_output_dir, claim_run_folder
    from m3.training import TrainConfig, latest_checkpoint, train

    use_threads(args.threads)
    check_sizes(args)
    out = Path(args.out)
    data = check_output_dir(args.data_dir, "--data-dir") if args.data_dir else out / "granularity"
    sizes = SMOKE_NUM_IMAGES if args.smoke else DEFAULT_NUM_IMAGES
    train_questions = len(FAMILIES) * (2 if args.smoke else args.oracle_train_images)
    made_by = {
        "run": "smoke" if args.smoke else "full",
        "data": str(data.resolve()),
        "model": str(CHECKPOINT) if args.reuse_checkpoint else "trained in OUT/m3",
        "oracle_train_questions": train_questions,
    }
    if claim_run_folder(out, made_by) == "continued":
        print(f"continuing the {made_by['run']} run in {out} (run.json): its finished stages are reused")
    timings = {}

    start = stage("1/5 granularity benchmark")
    for split, num_images in sizes.items():
        say_if_reused(data / f"{split}.json", num_images)
        ensure_split(data / f"{split}.json", split, num_images, seed=0, progress=True)
    shifted = out / "granularity-shifted"  # the documented shift: smaller squares, closer together
    ensure_split(shifted / "test.json", "test", sizes["test"], seed=0, progress=True, config=SHIFTED_CONFIG)
    timings["benchmark"] = time.perf_counter() - start

    start = stage("2/5 tiny M3 model")
    model_dir = out / "m3"
    if args.reuse_checkpoint:
        if not (CHECKPOINT / "config.json").exists():
            raise FileNotFoundError(f"--reuse-checkpoint: {CHECKPOINT} does not exist; run without the flag to train")
        model_dir = CHECKPOINT
        print(f"reusing {model_dir}")
    elif (model_dir / "config.json").exists():
        print(f"reusing the model in {model_dir}")
    else:
        config = TrainConfig(
            output_dir=str(model_dir),
            data_path=str(data / "train.chat.json"),
            eval_data_path=str(data / "validation.json"),
            generate_data=False,
            num_threads=args.threads,
            resume=latest_checkpoint(model_dir) is not None,  # a killed run continues
        )
        if args.smoke:
            config.max_steps, config.batch_size, config.eval_steps, config.tiny_hidden_size = 4, 2, 0, 32
        train(config)
    timings["model"] = time.perf_counter() - start

    start = stage("3/5 oracle labels (train part and test split)")
    from oracle_data import build_oracle, write_report

    build_oracle(model_dir, data / "train.json", out / "oracle-train", limit=train_questions, max_new_tokens=4)
    build_oracle(model_dir, data / "test.json", out / "oracle-test", max_new_tokens=4)
    build_oracle(model_dir, shifted / "test.json", out / "oracle-shift", max_new_tokens=4)
    write_report(out / "oracle-test")
    timings["oracle"] = time.perf_counter() - start

    start = stage("4/5 scale predictors and routing evaluation")
    from predictor.training import calibrate_rules, calibration_split, cheapest_certified, fit_predictors
    from routing_study import evaluate_routing, write_evaluation
    from routing_study.evaluation import SCORECARD_SHARES, rule_name
    from routing_study.report import write_shift
    from routing_study.shift import DEFAULT_SHIFT_CALIBRATION, evaluate_shift

    predictors = fit_predictors(
        out / "oracle-train",
        [*LEARNED, "question-only", "attribute"],
        n_trials=0 if args.smoke else args.trials,
        seed=0,
        save_dir=out / "predictors",
    )
    calibration = calibration_split(out / "oracle-train", seed=0)[1]  # the images that chose thresholds and prices
    certified, budgeted = calibrate_rules(
        predictors, calibration, MAX_DROP, DELTA, shares=SCORECARD_SHARES, save_dir=out / "predictors"
    )  # per predictor and rule: certified, and fitted to each budget share
    evaluation = evaluate_routing(out / "oracle-test", predictors, certified=certified, budgeted=budgeted)
    write_evaluation(evaluation, out / "router")
    shift_calibration = 2 * len(FAMILIES) if args.smoke else DEFAULT_SHIFT_CALIBRATION
    shift = evaluate_shift(
        out / "oracle-shift", predictors, shift_calibration, MAX_DROP, DELTA, train_certified=certified,
        budgeted=budgeted,
    )  # fmt: skip  # operating points from train, certified on train, and certified on labelled shifted queries
    write_shift(shift, out / "router-shift", title="the shifted test split")
    timings["predictors"] = time.perf_counter() - start

    start = stage("5/5 AdaptiveM3 and the report")
    from adaptive import AdaptiveM3
    from predictor.training import certified_suffix
    from routing_study.report import pipeline_report

    name, router = cheapest_certified(certified, LEARNED)  # chosen on calibration data, not on the test split
    best = rule_name(name, router.rule)
    adaptive = AdaptiveM3.from_pretrained(model_dir, out / "predictors" / f"{name}{certified_suffix(router.rule)}")
    adaptive_dir = out / "adaptive"
    if adaptive_dir.exists():
        shutil.rmtree(adaptive_dir)
    adaptive.save_pretrained(adaptive_dir)
    timings["adaptive"] = time.perf_counter() - start
    report = out / "report.md"
    text = pipeline_report(
        out, evaluation, out / "router", out / "oracle-test", model_dir, best, adaptive_dir, timings,
        shift_dir=out / "router-shift",
    )  # fmt: skip
    report.write_text(text, encoding="utf-8")
    for where, folder in (("test split", out / "router"), ("shifted test split", out / "router-shift")):
        card = folder / "scorecard.md"
        if card.exists():
            print(f"\n--- routing scorecard, {where}\n" + card.read_text(encoding="utf-8"), end="")
    print(f"\nwrote {report}")


if __name__ == "__main__":
    main()
