import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from oracle_data.synthetic import write_synthetic_oracle
from predictor import (
    LGBMScalePredictor,
    MLPScalePredictor,
    PredictorMismatchError,
    Queries,
    as_oracle_set,
    load_predictor,
    split_oracle,
    tune,
)

FAST_MLP = dict(max_epochs=15, hidden_sizes=(32,))
PREDICTORS = {
    "mlp": lambda: MLPScalePredictor(**FAST_MLP),
    "mlp-oracle": lambda: MLPScalePredictor(target="oracle", use_image=True, **FAST_MLP),
    "lgbm": lambda: LGBMScalePredictor(n_estimators=40),
    "lgbm-emb-oracle": lambda: LGBMScalePredictor(target="oracle", use_embedding=True, n_estimators=40),
}


@pytest.fixture(scope="module")
def oracle_dir(tmp_path_factory):
    return write_synthetic_oracle(tmp_path_factory.mktemp("oracle") / "syn", num_images=60, seed=0)


@pytest.fixture(scope="module")
def split(oracle_dir):
    return split_oracle(as_oracle_set(oracle_dir), 0.25, seed=0)


@pytest.fixture(scope="module")
def fitted(split):
    return {name: make().fit(split[0]) for name, make in PREDICTORS.items()}


def test_estimator_contract(fitted, split):
    mlp = MLPScalePredictor(hidden_sizes=(8, 4), dropout=0.3)
    assert mlp.get_params()["hidden_sizes"] == (8, 4) and mlp.get_params()["dropout"] == 0.3
    assert clone(mlp).get_params() == mlp.get_params()
    assert LGBMScalePredictor().set_params(num_leaves=7).num_leaves == 7
    for make in PREDICTORS.values():
        for method in ("predict_proba", "predict", "save_pretrained"):
            with pytest.raises(NotFittedError, match="not fitted"):
                getattr(make(), method)(split[1])
    for name, predictor in fitted.items():
        assert predictor.scales_ == [1, 9, 36, 144, 576] and predictor.n_features_in_ > 0, name
        proba = predictor.predict_proba(split[1])
        assert proba.shape == (len(split[1]), 5) and np.all((proba >= 0) & (proba <= 1)), name
    with pytest.raises(ValueError, match="target must be one of"):
        MLPScalePredictor(target="loss").fit(split[0])


@pytest.mark.parametrize("name", list(PREDICTORS))
def test_higher_threshold_never_picks_a_smaller_scale(fitted, split, name):
    predictor = fitted[name]
    routes = np.stack([predictor.predict(split[1], threshold=t) for t in np.linspace(0, 1, 30)])
    assert np.all(np.diff(routes, axis=0) >= 0)
    assert set(routes[0]) == {1} and set(routes[-1]) == {576}  # 0 and 1, the ends of the valid range
    for invalid in (1.01, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
            predictor.predict(split[1], threshold=invalid)


def test_oracle_target_is_a_classifier_with_cumulative_probabilities(fitted, split):
    predictor = fitted["mlp-oracle"]
    labels = predictor.predict_label_proba(split[1])
    np.testing.assert_allclose(labels.sum(axis=1), 1, atol=1e-6)
    cumulative = predictor.predict_proba(split[1])
    np.testing.assert_allclose(cumulative[:, :-1], np.cumsum(labels, axis=1)[:, :-1])  # P(label <= s)
    assert np.all(cumulative[:, -1] == 1.0)
    assert predictor.predict(split[1]).tolist() == np.asarray(predictor.scales_)[labels.argmax(axis=1)].tolist()
    with pytest.raises(ValueError, match="needs target='oracle'"):
        fitted["mlp"].predict_label_proba(split[1])


@pytest.mark.parametrize("name", list(PREDICTORS))
def test_save_and_load_give_identical_predictions(fitted, split, oracle_dir, tmp_path, name):
    predictor = fitted[name]
    predictor.threshold_ = 0.61
    predictor.save_pretrained(tmp_path / name)
    saved = sorted(p.name for p in (tmp_path / name).iterdir())
    assert not [f for f in saved if f.endswith((".pkl", ".pickle", ".joblib", ".bin"))]
    loaded = load_predictor(tmp_path / name, oracle_data=oracle_dir)
    assert type(loaded) is type(predictor) and loaded.get_params() == predictor.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(split[1]), predictor.predict_proba(split[1]))
    np.testing.assert_array_equal(loaded.predict(split[1]), predictor.predict(split[1]))
    assert loaded.threshold_ == 0.61
    assert type(predictor).from_pretrained(tmp_path / name).scales_ == predictor.scales_


@pytest.mark.parametrize("name", ["mlp", "mlp-oracle"])
def test_mlp_inference_equals_the_trained_torch_network(fitted, split, name):
    import torch

    predictor = fitted[name]
    features = predictor._features(split[1])
    with torch.no_grad():
        logits = predictor.network_(torch.from_numpy(features))
    expected = torch.sigmoid(logits) if predictor.target == "correct" else torch.softmax(logits, dim=1)
    np.testing.assert_allclose(predictor._model_proba(features), expected.double().numpy(), atol=1e-5)


def test_queries_route_like_the_table(fitted, split):
    data = split[1]
    queries = Queries(data.column("question").tolist(), data.embeddings(), images=data.image_paths())
    for predictor in fitted.values():
        np.testing.assert_allclose(predictor.predict_proba(queries), predictor.predict_proba(data), atol=1e-6)


def test_a_predictor_for_another_model_is_refused(fitted, tmp_path):
    fitted["mlp"].save_pretrained(tmp_path / "mlp")
    fitted["lgbm"].save_pretrained(tmp_path / "lgbm")
    other_size = write_synthetic_oracle(tmp_path / "d8", num_images=6, embedding_dim=8)
    other_scales = write_synthetic_oracle(tmp_path / "s4", num_images=6, scales=(1, 9, 36, 144))
    with pytest.raises(PredictorMismatchError, match=r"embedding size 16 \(it has 8\)"):
        load_predictor(tmp_path / "mlp", oracle_data=other_size)
    with pytest.raises(PredictorMismatchError, match=r"scales \[1, 9, 36, 144, 576\] \(it has \[1, 9, 36, 144\]\)"):
        load_predictor(tmp_path / "lgbm", oracle_data=other_scales)
    config = {"m3_scales": [1, 9, 36, 144, 576], "text_config": {"hidden_size": 32}}
    with pytest.raises(PredictorMismatchError, match="model config"):
        load_predictor(tmp_path / "mlp", model_config=config)
    (tmp_path / "model").mkdir()
    config["text_config"]["hidden_size"] = 16
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    assert load_predictor(tmp_path / "mlp", model_config=tmp_path / "model").scales_ == [1, 9, 36, 144, 576]
    with pytest.raises(TypeError, match="holds a LGBMScalePredictor"):
        MLPScalePredictor.from_pretrained(tmp_path / "lgbm")
    with pytest.raises(ValueError, match="16-dimensional embeddings, these queries have 8"):
        fitted["mlp"].predict_proba(other_size)
    with pytest.raises(FileNotFoundError, match="no saved predictor"):
        load_predictor(tmp_path)


def test_tune_uses_optuna_and_refits(split):
    import optuna

    result = tune(MLPScalePredictor(max_epochs=8), split[0], n_trials=3, seed=0, progress=False)
    assert len(result.study.trials) == 3
    assert isinstance(result.study.sampler, optuna.samplers.TPESampler)
    assert isinstance(result.study.pruner, optuna.pruners.MedianPruner)
    assert all(len(t.intermediate_values) > 0 for t in result.study.trials)  # per-epoch validation loss reported
    assert result.estimator.get_params()["hidden_sizes"] == result.best_params["hidden_sizes"]
    assert result.estimator.predict_proba(split[1]).shape == (len(split[1]), 5)
    lgbm = tune(LGBMScalePredictor(n_estimators=30), split[0], n_trials=2, seed=0, progress=False)
    assert lgbm.best_loss > 0 and lgbm.estimator.num_leaves == lgbm.best_params["num_leaves"]
