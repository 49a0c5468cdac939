"""Predictor failure behaviour: damaged saved files, non-finite features, mismatched oracles, strict results.json."""

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

import predictor.training
from oracle_data import load_oracle
from oracle_data.synthetic import write_synthetic_oracle
from predictor import LGBMScalePredictor, MLPScalePredictor, Queries, load_predictor
from routing_study import evaluate_routing, write_evaluation

from .damage import REPO, one_line_error, run_script, strict_json, truncate

DIM = 8


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    return write_synthetic_oracle(tmp_path_factory.mktemp("oracle"), num_images=30, embedding_dim=DIM)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, oracle):
    """A saved MLP and a saved LightGBM predictor (with the embedding), fitted on the synthetic oracle."""
    root = tmp_path_factory.mktemp("predictors")
    MLPScalePredictor(hidden_sizes=(8,), max_epochs=3).fit(oracle).save_pretrained(root / "mlp")
    LGBMScalePredictor(use_embedding=True, use_image=False, n_estimators=20).fit(oracle).save_pretrained(root / "lgbm")
    return root


def damaged_copy(saved, tmp_path, name, file):
    import shutil

    folder = shutil.copytree(saved / name, tmp_path / name)
    truncate(folder / file)
    return folder


def test_a_truncated_booster_is_one_error_line_not_a_segfault(saved, oracle, tmp_path):
    folder = damaged_copy(saved, tmp_path, "lgbm", "booster.txt")
    command = [sys.executable, str(REPO / "scripts" / "evaluate_router.py"), "--oracle-test", str(oracle)]
    result = subprocess.run([*command, "--predictor", str(folder), "--out", str(tmp_path / "out")], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    line = one_line_error(result.stderr)
    assert str(folder / "booster.txt") in line and "damaged" in line


@pytest.mark.parametrize(
    "name, file", [("lgbm", "predictor.json"), ("mlp", "features.json"), ("mlp", "model.safetensors")]
)
def test_damaged_predictor_files_are_named(saved, tmp_path, name, file):
    folder = damaged_copy(saved, tmp_path, name, file)
    with pytest.raises(ValueError, match="damaged") as error:
        load_predictor(folder)
    assert str(folder / file) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["mlp", "lgbm"])
def test_non_finite_features_are_refused(saved, name):
    loaded = load_predictor(saved / name)
    embeddings = np.zeros((2, DIM), dtype=np.float32)
    assert np.isfinite(loaded.predict_proba(Queries(["what ?"] * 2, embeddings=embeddings))).all()
    embeddings[1, 3] = np.nan
    with pytest.raises(ValueError, match="query 1.*embedding.*not finite"):
        loaded.predict_proba(Queries(["what ?"] * 2, embeddings=embeddings))


def test_oracles_of_other_scales_are_refused_before_fitting(tmp_path, oracle, capsys, monkeypatch):
    four = write_synthetic_oracle(tmp_path / "four", num_images=10, embedding_dim=DIM, scales=(1, 9, 36, 576))
    monkeypatch.setattr(predictor.training, "fit_predictors", lambda *a, **k: pytest.fail("fitted first"))
    argv = ["--oracle-train", str(four), "--oracle-test", str(oracle), "--out", str(tmp_path / "out")]
    code, err = run_script("evaluate_router", argv, capsys)
    assert code == 2 and "scales" in one_line_error(err)


def test_results_json_holds_null_not_infinity(tmp_path, oracle):
    """When the smallest scale is already as accurate as the largest, the cascade matches full accuracy at its
    cut-off of -inf; that parameter used to be written as -Infinity."""
    table = load_oracle(oracle)
    for scale in (1, 9, 36, 144, 576):
        index = table.schema.get_field_index(f"correct_{scale}")
        table = table.set_column(index, f"correct_{scale}", pa.array([True] * table.num_rows))
    paths = write_evaluation(evaluate_routing(table, {}), tmp_path / "out")
    results = strict_json(paths["results.json"].read_text())
    cascade = next(row for row in results["routers"] if row["router"] == "confidence cascade")
    assert cascade["param_at_match"] is None


def test_evaluate_router_script_gives_one_line_errors(tmp_path, oracle, capsys):
    argv = ["--oracle-train", str(tmp_path / "none"), "--oracle-test", str(oracle), "--out", str(tmp_path / "out")]
    code, err = run_script("evaluate_router", argv, capsys)
    assert code == 2 and str(tmp_path / "none") in one_line_error(err)
