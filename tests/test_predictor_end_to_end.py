import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from oracle_data.synthetic import write_synthetic_oracle
from predictor import LGBMScalePredictor, MLPScalePredictor
from routing_study import evaluate_routing, summarize_routing, write_evaluation
from routing_study.evaluation import budget_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def oracles(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracles")
    return (
        write_synthetic_oracle(root / "train", num_images=150, seed=1),
        write_synthetic_oracle(root / "test", num_images=50, seed=2),
    )


def test_fitted_predictors_beat_random_routing_at_equal_tokens(oracles, tmp_path):
    train, test = oracles
    predictors = {"mlp": MLPScalePredictor(max_epochs=40).fit(train), "lgbm": LGBMScalePredictor().fit(train)}
    evaluation = evaluate_routing(test, predictors)
    rows = {row["router"]: row for row in summarize_routing(evaluation)}
    budgets = {row["router"]: row for row in budget_rows(evaluation)}
    random = rows["random"]
    for name in predictors:
        row = rows[name]
        # the synthetic rule (family and image detail set the needed scale) is learnable: above random routing
        assert row["apgr"] > random["apgr"] + 0.01, (name, row["apgr"], random["apgr"])
        assert row["matches_full"] and row["token_share_at_match"] < 0.5, name
        assert row["accuracy_at_match"] > row["random_accuracy_same_tokens"] + 0.05, name
        for budget in ("accuracy_at_0.15", "accuracy_at_0.25"):  # 86 and 144 mean tokens
            assert budgets[name][budget] > budgets["random"][budget] + 0.03, (name, budget)
    # fixed scales: APGR is 0 for the smallest and 1 for the largest, by definition
    assert rows["fixed 1"]["apgr"] == 0 and rows["fixed 576"]["apgr"] == 1
    paths = write_evaluation(evaluation, tmp_path / "eval")
    assert all(path.is_file() and path.stat().st_size > 0 for path in paths.values())


def test_the_script_offers_every_standard_predictor():
    from predictor.registry import DEFAULT_PREDICTORS, PREDICTORS

    script = runpy.run_path(str(REPO / "scripts" / "evaluate_router.py"))  # not as __main__: nothing runs
    assert set(script["PREDICTOR_NAMES"]) == set(PREDICTORS)
    args = script["parse_args"](["--oracle-test", "test", "--out", "out", "--predictor", "saved"])
    assert args.predictors == list(DEFAULT_PREDICTORS)


def run_script(*argv: str) -> None:
    old = sys.argv
    sys.argv = ["evaluate_router.py", *argv]
    try:
        runpy.run_path(str(REPO / "scripts" / "evaluate_router.py"), run_name="__main__")
    finally:
        sys.argv = old


def test_evaluate_router_cli_fits_saves_and_reevaluates(oracles, tmp_path, capsys):
    train, test = oracles
    out = tmp_path / "router"
    run_script(
        "--oracle-train", str(train), "--oracle-test", str(test), "--out", str(out),
        "--predictors", "mlp,lgbm-oracle", "--trials", "2", "--no-progress",
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "| router | APGR |" in printed and "confidence cascade" in printed
    for name in ("results.md", "results.csv", "results.json", "families.csv", "curves.csv", "curves.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "results.json").read_text())
    routers = {row["router"]: row for row in summary["routers"]}
    assert {"mlp", "lgbm-oracle", "lgbm-oracle argmax", "random", "confidence cascade", "oracle (paper)"} <= set(
        routers
    )
    assert 0 < routers["mlp"]["calibrated_value"] <= 1.0 + 1e-6
    assert {row["family"] for row in summary["families"]} == {"background", "position", "shape", "small_color"}

    again = tmp_path / "again"
    run_script("--oracle-test", str(test), "--predictor", str(out / "predictors" / "mlp"), "--out", str(again))
    rerun = {row["router"]: row for row in json.loads((again / "results.json").read_text())["routers"]}
    assert np.isclose(rerun["mlp"]["apgr"], routers["mlp"]["apgr"])

    other = write_synthetic_oracle(tmp_path / "d8", num_images=6, embedding_dim=8)
    with pytest.raises(SystemExit) as exit_info:  # a user error: one line, exit code 2
        run_script("--oracle-test", str(other), "--predictor", str(out / "predictors" / "mlp"), "--out", str(again))
    assert exit_info.value.code == 2 and "embedding size 16" in capsys.readouterr().err


def test_the_scorecard_reads_every_router_against_the_hull_the_oracle_knapsack_and_question_only(oracles, tmp_path):
    from predictor import as_oracle_set, split_oracle
    from predictor.budget import budget_routing
    from predictor.reference import ReferenceRouter
    from predictor.routing_metrics import routing_point, tokens_for_accuracy
    from predictor.thresholds import route_by_rule
    from predictor.training import calibrate_rules
    from routing_study.evaluation import scorecard_rows
    from routing_study.report import scorecard_markdown

    train, test = oracles
    fit, calibration = split_oracle(as_oracle_set(train), 0.3, seed=0)
    predictors = {"lgbm": LGBMScalePredictor().fit(fit), "question-only": ReferenceRouter("family").fit(fit)}
    certified, budgeted = calibrate_rules(predictors, calibration, max_drop=0.05, shares=(0.05, 0.1, 0.25))
    evaluation = evaluate_routing(test, predictors, certified=certified, budgeted=budgeted)
    card = {row["router"]: row for row in scorecard_rows(evaluation)}
    summary = {row["router"]: row for row in summarize_routing(evaluation)}
    predictors_by_rule = {"lgbm", "lgbm (price)", "question-only", "question-only (price)"}
    baselines = {"fixed-scale hull", "random", "confidence cascade", "confidence cascade (tokens processed)"}
    assert set(card) == predictors_by_rule | baselines | {"oracle knapsack"}
    values, tokens, scales = evaluation.values, evaluation.tokens, evaluation.scales
    strong_tokens, strong = evaluation.strong
    hull = evaluation.router("fixed-scale hull").curve()
    for share in (0.05, 0.1, 0.25):
        oracle = routing_point(budget_routing(values, tokens, scales, share * strong_tokens), values, tokens, scales)[1]
        assert card["oracle knapsack"][f"accuracy_at_{share:g}"] == oracle
        assert card["oracle knapsack"][f"gap_at_{share:g}"] == pytest.approx(1.0)
        assert card["fixed-scale hull"][f"gap_at_{share:g}"] == pytest.approx(0.0)
        floor = hull.at(share * strong_tokens)
        for name, row in card.items():  # no routing beats the knapsack on the true answers (within one query)
            assert row[f"accuracy_at_{share:g}"] <= oracle + 1 / len(values) + 1e-9, (name, share)
            expected = (row[f"accuracy_at_{share:g}"] - floor) / (oracle - floor)
            assert row[f"gap_at_{share:g}"] == pytest.approx(expected), (name, share)
    for rule, suffix in (("threshold", ""), ("price", " (price)")):
        mine, reference = card[f"lgbm{suffix}"], card[f"question-only{suffix}"]
        assert mine["rule"] == reference["rule"] == rule
        assert reference["tokens_to_full_minus_0.01_vs_reference"] == pytest.approx(1.0)
        curve = evaluation.router(f"lgbm{suffix}").curve().extended(*evaluation.weak, *evaluation.strong)
        assert mine["tokens_to_full_minus_0.02"] == pytest.approx(tokens_for_accuracy(curve, strong - 0.02 - 1e-12))
        assert mine["hull_margin_min"] == summary[f"lgbm{suffix}"]["hull_margin_min"]
        assert mine["above_hull"] == (mine["hull_margin_min"] > 0)
        # the operating points chosen on calibration data, replayed by hand on the test data
        router = next(r for r in certified["lgbm"] if r.rule == rule)
        chosen = route_by_rule(predictors["lgbm"].predict_proba(test), scales, router.rule_,
                               router.threshold_ if router.rule_ == "threshold" else router.price_)  # fmt: skip
        assert mine["certified_tokens"] == pytest.approx(routing_point(chosen, values, tokens, scales)[0])
        fitted = next(r for r in budgeted["lgbm"] if r.rule == rule and r.budget == pytest.approx(0.1 * 576))
        value = fitted.threshold_ if rule == "threshold" else fitted.price_
        chosen = route_by_rule(predictors["lgbm"].predict_proba(test), scales, rule, value)
        assert (mine["budget_0.1_tokens"], mine["budget_0.1_accuracy"]) == pytest.approx(
            routing_point(chosen, values, tokens, scales)
        )
    # the image's detail level, which the family does not tell, lets the learned router answer with fewer tokens
    assert card["lgbm"]["tokens_to_full_minus_0.01_vs_reference"] < 0.9
    budgets = {row["router"]: row for row in budget_rows(evaluation, (0.1,))}
    assert card["lgbm (price)"]["knapsack_0.1"] == budgets["lgbm (knapsack)"]["accuracy_at_0.1"]
    assert "lgbm (price) (knapsack)" not in budgets  # one batch knapsack per predictor, whatever the rule
    text = scorecard_markdown(evaluation)
    assert "| lgbm (price) | price |" in text and "| **oracle knapsack** | - |" in text and "fitted to 10 %" in text
    assert text.count("\n|---") == 2  # two tables
    assert "scorecard.md" in write_evaluation(evaluation, tmp_path / "eval")


def test_the_routing_study_sits_above_what_inference_imports():
    """predictor/ (and m3, oracle_data, adaptive below or beside it) never import routing_study: loading a predictor
    for inference does not load the evaluation sweeps and reports."""
    importing = re.compile(r"^\s*(from|import)\s+routing_study\b", re.MULTILINE)
    for package in ("m3", "oracle_data", "predictor", "adaptive"):
        for path in (REPO / package).rglob("*.py"):
            assert not importing.search(path.read_text()), f"{path} imports the routing study"
    code = "import predictor, sys; print(sorted(m for m in sys.modules if m.startswith('routing_study')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert loaded.stdout.strip() == "[]"
