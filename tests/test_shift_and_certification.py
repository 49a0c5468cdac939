"""Evaluation under a shift (train thresholds against thresholds certified on labelled shifted queries), the
resplit validity study, and the command lines that certify, evaluate and study routers, end to end."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from oracle_data.synthetic import write_synthetic_oracle
from predictor import CalibratedRouter, CertifiedRouter, as_oracle_set, load_predictor, saved_certificate
from predictor.data import grouped_sample
from predictor.routing_metrics import routing_point
from predictor.thresholds import route_by_rule
from routing_study.report import write_shift
from routing_study.shift import evaluate_shift, shift_markdown
from routing_study.validity import (
    binomial_bound,
    fixed_scale_candidates,
    resplit_records,
    threshold_candidates,
    validity_rows,
)

from .routing_cases import SCALES, KnownRouter, oracle_table

REPO = Path(__file__).resolve().parents[1]


def shifted_case(n: int = 400, seed: int = 0):
    """Queries that need scale 1, 36 or 576; the router's estimates know the kind but are over-confident on the
    hard ones (as after a shift): at threshold 0.5 it sends them to 36, where they fail."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice([0, 2, 4], size=n, p=[0.5, 0.3, 0.2])
    correct = np.arange(5)[None, :] >= kinds[:, None]
    proba = np.where(correct, 0.9, 0.1)
    proba[kinds == 4, 2:4] = 0.6  # the shift: hard queries look answerable at 36 and 144
    return oracle_table(correct), proba, correct


def test_shift_rows_compare_train_and_shift_thresholds_on_the_held_out_part(tmp_path):
    table, proba, correct = shifted_case()
    router = KnownRouter(proba, threshold=0.5)
    shift = evaluate_shift(table, {"known": router}, n_calibration=200, max_drop=0.02, delta=0.1, seed=3)
    calibration_rows, rest_rows = grouped_sample(as_oracle_set(table), 200, 3)
    assert len(shift.calibration) == len(calibration_rows) == 200 and len(shift.evaluation.data) == len(rest_rows)
    assert {(row["rule"], row["threshold_from"]) for row in shift.rows} == {
        ("threshold", "train threshold"), ("threshold", "certified on shift"), ("price", "certified on shift")
    }  # fmt: skip
    rows = {row["threshold_from"]: row for row in shift.rows if row["rule"] == "threshold"}
    values, tokens = correct[rest_rows].astype(float), np.tile(np.array(SCALES, float), (len(rest_rows), 1))
    for row in shift.rows:  # each row is its rule at its value on the held-out part, by hand (threshold 1: nothing)
        rule = "threshold" if row["threshold"] is not None else "price"
        routing = route_by_rule(proba[rest_rows], SCALES, rule, row["value"])
        expected_tokens, expected_accuracy = routing_point(routing, values, tokens, SCALES)
        assert row["tokens"] == pytest.approx(expected_tokens) and row["accuracy"] == pytest.approx(expected_accuracy)
        assert row["drop"] == pytest.approx(values[:, -1].mean() - expected_accuracy)
    assert rows["train threshold"]["drop"] > 0.1  # the over-confident router at its train threshold fails here
    certified = rows["certified on shift"]
    assert certified["threshold"] > 0.6 and certified["within_epsilon"] and certified["n"] == 200
    alone = CertifiedRouter(router, max_drop=0.02, delta=0.1).fit(as_oracle_set(table).take(calibration_rows))
    assert certified["threshold"] == alone.threshold_
    priced = next(row for row in shift.rows if row["rule"] == "price")
    alone = CertifiedRouter(router, max_drop=0.02, delta=0.1, rule="price").fit(
        as_oracle_set(table).take(calibration_rows)
    )
    assert priced["value"] == (alone.price_ if alone.rule_ == "price" else 1.0) and priced["within_epsilon"]
    names = {result.name for result in shift.evaluation.routers}
    for name in ("fixed 1", "fixed 576", "random", "confidence cascade", "oracle (paper)", "oracle (monotone)"):
        assert name in names
    assert "| known | threshold | certified on shift |" in shift_markdown(shift)
    # a router saved with the priced rule is shown at its train price, beside the prices certified on the shift
    priced = CalibratedRouter(router, rule="price", budget=100).fit(as_oracle_set(table).take(calibration_rows))
    shift = evaluate_shift(table, {"priced": priced}, n_calibration=200, max_drop=0.02, delta=0.1, seed=3)
    train = next(row for row in shift.rows if row["threshold_from"] == "train price")
    assert train["rule"] == "price" and train["value"] == priced.price_ and train["threshold"] is None
    assert (tmp_path / "shift" / "shift.png") in write_shift(shift, tmp_path / "shift").values()


def test_the_validity_study_counts_splits_over_eps_and_certifies_fixed_scales_largest_first():
    table, proba, correct = shifted_case(n=1200, seed=1)
    data = as_oracle_set(table)
    tokens = data.tokens()
    fixed = fixed_scale_candidates(SCALES, tokens)
    assert fixed.labels.tolist() == [144, 36, 9, 1] and (fixed.routed[0] == 3).all()
    honest = threshold_candidates("honest", "learned", np.where(correct, 0.9, 0.1), SCALES, tokens)
    splits = [grouped_sample(data, 300, seed) for seed in range(30)]
    records = resplit_records(correct, [honest, fixed], splits, [(0.02, "binomial"), (0.02, "berger_boos")], 0.1)
    assert len(records) == 30 * 2 * 2
    rows = {(r["router"], r["method"]): r for r in validity_rows(records, delta=0.1)}
    # 20 % of the queries need 576 tokens: no smaller fixed scale keeps a 2 % promise
    assert rows[("fixed scale", "binomial")]["mean_tokens"] == 576 and rows[("fixed scale", "binomial")]["valid"]
    # the honest router is exact: it certifies its perfect routing (mean 0.5 * 1 + 0.3 * 36 + 0.2 * 576 tokens)
    assert rows[("honest", "berger_boos")]["exceed_share"] == 0 and rows[("honest", "berger_boos")]["valid"]
    assert rows[("honest", "berger_boos")]["mean_tokens"] < 200
    assert binomial_bound(0.1, 200) == pytest.approx(0.15, abs=0.01) and binomial_bound(0.1, 10_000) < 0.11


def run(script: str, *arguments) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "scripts" / script), *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def oracles(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracles")
    return {
        name: write_synthetic_oracle(root / name, num_images=images, probe_signal=True, noise=noise, seed=seed)
        for name, images, noise, seed in (("train", 160, 0.03, 1), ("test", 120, 0.03, 2), ("shift", 160, 0.1, 3))
    }


def test_evaluate_router_in_distribution_and_under_a_shift(oracles, tmp_path):
    out = tmp_path / "router"
    result = run(
        "evaluate_router.py", "--oracle-train", oracles["train"], "--oracle-test", oracles["test"],
        "--oracle-shift", oracles["shift"], "--predictors", "lgbm,lgbm-probe,question-only", "--trials", "0",
        "--shift-calibration", "120", "--max-drop", "0.05", "--out", out, "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = (out / "results.md").read_text()
    assert "CERTIFIED threshold" in results and "| lgbm-probe |" in results and "question-only" in results
    budgets = (out / "budgets.csv").read_text()
    assert "lgbm (knapsack)" in budgets and "question-only (knapsack)" in budgets
    assert "confidence cascade (tokens processed)" in budgets
    certified = load_predictor(out / "predictors" / "lgbm-certified")
    assert saved_certificate(certified).epsilon == 0.05 and not (out / "predictors" / "question-only").exists()
    shift = json.loads((out / "shift" / "shift.json").read_text())
    points = {(row["router"], row["threshold_from"]) for row in shift["rows"]}
    for name in ("lgbm", "lgbm-probe", "question-only"):
        for where in ("train threshold", "certified on train", "certified on shift"):
            assert (name, where) in points
    assert shift["n_calibration"] >= 120 and (out / "shift" / "shift.png").exists()
    assert "random" in (out / "shift" / "results.md").read_text()


def test_calibrate_router_writes_a_certified_predictor_that_every_tool_reads(oracles, tmp_path):
    from predictor import LGBMScalePredictor

    LGBMScalePredictor(n_estimators=30).fit(oracles["train"]).save_pretrained(tmp_path / "lgbm")
    result = run(
        "calibrate_router.py", "--predictor", tmp_path / "lgbm", "--oracle", oracles["test"], "--max-drop", "0.05",
        "--delta", "0.1", "--out", tmp_path / "certified",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    certificate = saved_certificate(load_predictor(tmp_path / "certified"))
    for text in (
        "eps 0.05",
        "delta 0.1",
        f"n {certificate.n}",
        f"threshold {certificate.threshold:.4f}",
        "berger_boos",
    ):
        assert text in result.stdout, text
    assert certificate.data_sha256 in result.stdout and "mean visual tokens processed" in result.stdout
    evaluated = run(
        "evaluate_router.py", "--oracle-test", oracles["shift"], "--predictor", tmp_path / "certified",
        "--out", tmp_path / "eval",
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    row = next(
        r for r in json.loads((tmp_path / "eval" / "results.json").read_text())["routers"] if r["router"] == "certified"
    )
    assert row["certified_value"] == certificate.threshold and row["certificate_n"] == certificate.n
    assert row["calibrated_value"] == certificate.threshold  # the saved threshold is the certified one
    # the priced rule: certified, or fitted to a mean-token budget without a certificate
    result = run(
        "calibrate_router.py", "--predictor", tmp_path / "lgbm", "--oracle", oracles["test"], "--rule", "price",
        "--max-drop", "0.05", "--out", tmp_path / "priced",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    priced = load_predictor(tmp_path / "priced")
    certificate = saved_certificate(priced)
    assert certificate.rule == "price" and priced.rule_ == (
        "price" if certificate.threshold is not None else "threshold"
    )
    assert f"routes at {priced.rule_}" in result.stdout and "candidate prices tested" in result.stdout
    result = run(
        "calibrate_router.py", "--predictor", tmp_path / "lgbm", "--oracle", oracles["test"], "--rule", "price",
        "--budget", "60", "--out", tmp_path / "budget",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    budgeted = load_predictor(tmp_path / "budget")
    assert budgeted.rule_ == "price" and budgeted.calibration_["budget"] == 60 and budgeted.calibration_["tokens"] <= 60
    assert saved_certificate(budgeted) is None and "no certificate" in result.stdout
    refused = run(
        "calibrate_router.py", "--predictor", tmp_path / "lgbm", "--oracle", oracles["test"], "--budget", "60",
        "--max-drop", "0.05", "--out", tmp_path / "y",
    )  # fmt: skip
    assert refused.returncode == 2 and "--budget chooses without a certificate" in refused.stderr
    failed = run(
        "calibrate_router.py", "--predictor", tmp_path / "none", "--oracle", oracles["test"], "--out", tmp_path / "x"
    )
    assert (
        failed.returncode == 2 and failed.stderr.strip().startswith("error:") and len(failed.stderr.splitlines()) == 1
    )


def test_certify_validity_writes_both_tables_and_the_curve(oracles, tmp_path):
    result = run(
        "certify_validity.py", "--oracle-train", oracles["train"], "--oracle", oracles["test"],
        "--oracle-shift", oracles["shift"], "--predictors", "lgbm-emb,question-only", "--n", "200",
        "--resplits", "4", "--out", tmp_path / "study",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = (tmp_path / "study" / "validity.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3 * 3 * 2  # 2 data sets x (2 routers + fixed) x 3 p-values x 2 eps
    efficiency = (tmp_path / "study" / "efficiency.csv").read_text()
    assert "best certified fixed scale" in efficiency and ",0.1," in efficiency
    assert (tmp_path / "study" / "efficiency.png").exists()
    assert "fewest among valid" in (tmp_path / "study" / "validity.md").read_text()
