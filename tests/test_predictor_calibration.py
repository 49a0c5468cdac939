import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from oracle_data.synthetic import write_synthetic_oracle
from predictor import (
    PREDICTOR_CLASSES,
    CalibratedRouter,
    LGBMScalePredictor,
    MLPScalePredictor,
    ScalePredictor,
    as_oracle_set,
    load_predictor,
    route_by_threshold,
    split_oracle,
)
from predictor.routing_metrics import routing_point
from predictor.thresholds import DEFAULT_THRESHOLD, candidate_thresholds
from routing_study import evaluate_routing, summarize_routing


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    oracle = as_oracle_set(write_synthetic_oracle(tmp_path_factory.mktemp("oracle") / "syn", num_images=60, seed=3))
    fit, calibration = split_oracle(oracle, 0.3, seed=0)
    return fit, calibration


@pytest.fixture(scope="module")
def predictor(data):
    return LGBMScalePredictor(n_estimators=40).fit(data[0])


def test_the_router_learns_the_cheapest_threshold_matching_full_accuracy(predictor, data):
    calibration = data[1]
    router = CalibratedRouter(predictor).fit(calibration)
    values, tokens = calibration.correct().astype(float), calibration.tokens()
    target = values[:, -1].mean()
    assert router.target_accuracy_ == pytest.approx(target) and router.n_calibration_ == len(calibration)
    assert 0.0 <= router.threshold_ <= 1.0 and router.accuracy_ >= target - 1e-12
    # brute force over every candidate: none that reaches the target is cheaper
    proba = predictor.predict_proba(calibration)
    for threshold in candidate_thresholds(proba):
        routing = route_by_threshold(proba, calibration.scales, threshold)
        cost, accuracy = routing_point(routing, values, tokens, calibration.scales)
        assert accuracy < target - 1e-12 or cost >= router.tokens_ - 1e-9, threshold
    # the wrapped predictor is left as it was; the router routes at its own threshold
    assert predictor.threshold_ == DEFAULT_THRESHOLD
    np.testing.assert_array_equal(router.predict(calibration), predictor.predict(calibration, router.threshold_))
    np.testing.assert_array_equal(router.predict(calibration, 0.0), predictor.predict(calibration, 0.0))
    assert router.scales_ == predictor.scales_ and router.fingerprint_ is predictor.fingerprint_
    assert clone(router).get_params()["predictor__n_estimators"] == 40  # a scikit-learn meta-estimator


def test_a_calibrated_router_saves_as_a_predictor_at_its_threshold(predictor, data, tmp_path):
    router = CalibratedRouter(predictor, accuracy="score").fit(data[1])
    router.save_pretrained(tmp_path / "router")
    loaded = load_predictor(tmp_path / "router", oracle_data=data[1])
    assert type(loaded) is LGBMScalePredictor and loaded.threshold_ == router.threshold_
    np.testing.assert_array_equal(loaded.predict(data[1]), router.predict(data[1]))
    record = json.loads((tmp_path / "router" / "predictor.json").read_text())["calibration"]
    assert record["router"] == "CalibratedRouter" and record["rule"] == "threshold" and record["n"] == len(data[1])
    assert record["accuracy"] == "score"
    # evaluate_routing marks the router's own threshold as the calibrated point
    rows = {row["router"]: row for row in summarize_routing(evaluate_routing(data[1], {"lgbm": router}))}
    assert rows["lgbm"]["calibrated_value"] == router.threshold_
    assert rows["lgbm"]["calibrated_tokens"] == pytest.approx(router.tokens_)


def test_a_loaded_calibrated_predictor_saved_again_keeps_its_record(predictor, data, tmp_path):
    router = CalibratedRouter(predictor).fit(data[1])
    router.save_pretrained(tmp_path / "router")
    loaded = load_predictor(tmp_path / "router")
    loaded.save_pretrained(tmp_path / "again")  # as AdaptiveM3.save_pretrained does with its predictor
    again = load_predictor(tmp_path / "again")
    assert again.calibration_ == loaded.calibration_ and again.calibration_["router"] == "CalibratedRouter"
    assert again.threshold_ == router.threshold_


def test_unfitted_routers_and_predictors_raise_not_fitted(predictor, data):
    with pytest.raises(NotFittedError, match="not fitted"):
        CalibratedRouter(MLPScalePredictor()).fit(data[1])
    unfitted = CalibratedRouter(predictor)
    for call in (lambda: unfitted.predict(data[1]), lambda: unfitted.save_pretrained("unused")):
        with pytest.raises(NotFittedError, match="not fitted"):
            call()
    with pytest.raises(ValueError, match="accuracy must be one of"):
        CalibratedRouter(predictor, accuracy="f1").fit(data[1])


def test_the_registry_names_every_predictor_class_and_old_folders_are_refused(predictor, tmp_path):
    assert all(
        name == klass.__name__ and issubclass(klass, ScalePredictor) for name, klass in PREDICTOR_CLASSES.items()
    )
    assert set(PREDICTOR_CLASSES) == {"MLPScalePredictor", "LGBMScalePredictor"}
    predictor.save_pretrained(tmp_path / "lgbm")
    config_path = tmp_path / "lgbm" / "predictor.json"
    config = json.loads(config_path.read_text())
    assert config["params"]["oracle_kind"] == "monotone" and "oracle" not in config["params"]
    with pytest.raises(TypeError, match="use load_predictor"):
        ScalePredictor.from_pretrained(tmp_path / "lgbm")
    config_path.write_text(json.dumps({**config, "class": "SVMScalePredictor"}))
    with pytest.raises(ValueError, match="unknown predictor class 'SVMScalePredictor'"):
        load_predictor(tmp_path / "lgbm")
    # a folder saved before the renames (format 1: params "oracle", features "scale") says so
    config_path.write_text(json.dumps({**config, "format_version": 1}))
    with pytest.raises(ValueError, match="format version 1, this code reads 2 .*refit"):
        load_predictor(tmp_path / "lgbm")
    config_path.write_text(json.dumps({**config, "threshold": 1.000000001}))
    with pytest.raises(ValueError, match=r"predictor.json is damaged \('threshold' should be a number in \[0, 1\]"):
        load_predictor(tmp_path / "lgbm")
