"""AdaptiveM3 / ask.py failure behaviour: a predictor of other weights, NaN weights, damaged model files, bad
scales and budgets, ``<image>`` in a question, a question longer than the context."""

import shutil

import numpy as np
import pytest

from adaptive import AdaptiveM3
from m3.data.granularity import write_split
from m3.loading import load_m3_model
from oracle_data import build_oracle
from predictor import MLPScalePredictor

from .damage import copy_tiny_m3, flip_middle_weight, make_non_finite, one_line_error, run_script, truncate


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The tiny model, a predictor fitted on its oracle, and an image of the benchmark."""
    root = tmp_path_factory.mktemp("pair")
    model = copy_tiny_m3(root / "tiny-m3")
    data = write_split(root / "data", "test", num_images=2, seed=0)
    build_oracle(model, data, root / "oracle", shard_size=8, batch_size=8, max_new_tokens=2, progress=False)
    MLPScalePredictor(hidden_sizes=(8,), max_epochs=2).fit(root / "oracle").save_pretrained(root / "predictor")
    return model, root / "predictor", data.parent / "images" / "test" / "test_000000.png"


@pytest.fixture(scope="module")
def adaptive(pair):
    return AdaptiveM3.from_pretrained(pair[0], pair[1])


def test_a_predictor_fitted_on_other_weights_is_refused_unless_allowed(pair, tmp_path, capsys):
    model, predictor, image = pair
    other = shutil.copytree(model, tmp_path / "retrained")
    flip_middle_weight(other / "model.safetensors")
    with pytest.raises(ValueError, match="other weights") as error:
        AdaptiveM3.from_pretrained(other, predictor)
    assert str(model.resolve()) in str(error.value) and str(other) in str(error.value)
    with pytest.warns(UserWarning, match="other weights"):
        AdaptiveM3.from_pretrained(other, predictor, allow_other_weights=True)
    argv = ["--model", str(other), "--predictor", str(predictor), "--image", str(image), "--question", "where ?"]
    code, err = run_script("ask", argv, capsys)
    assert code == 2 and "--allow-other-weights" in one_line_error(err)


def test_a_model_with_non_finite_weights_is_refused(pair, tmp_path, capsys):
    model, predictor, image = pair
    broken = shutil.copytree(model, tmp_path / "nan")
    make_non_finite(broken)
    with pytest.raises(ValueError, match="NaN or infinite.*3 of 48"):
        load_m3_model(broken)
    argv = ["--model", str(broken), "--predictor", str(predictor), "--image", str(image), "--question", "where ?"]
    code, err = run_script("ask", [*argv, "--allow-other-weights"], capsys)  # NaN weights are never allowed
    assert code == 2 and "NaN" in one_line_error(err)


@pytest.mark.parametrize("file", ["config.json", "model.safetensors", "tokenizer_config.json"])
def test_damaged_model_files_are_named(pair, tmp_path, file):
    broken = shutil.copytree(pair[0], tmp_path / "broken")
    truncate(broken / file)
    with pytest.raises(ValueError, match="damaged") as error:
        load_m3_model(broken)
    assert str(broken / file) in str(error.value) and "\n" not in str(error.value)


def test_scales_and_budgets_must_be_integers(adaptive, pair):
    image = pair[2]
    for scale in (576.7, True, "9"):
        with pytest.raises((TypeError, ValueError), match="scale"):
            adaptive.generate(image, "where is the big shape ?", scale=scale, max_new_tokens=1)
    assert adaptive.generate(image, "where is the big shape ?", scale=np.int64(9), max_new_tokens=1).scale == 9
    with pytest.raises((TypeError, ValueError), match="budget"):
        adaptive.allocate_frames([image, image], "where is the big shape ?", budget=18.5)


def test_image_markers_and_overlong_questions_are_refused(adaptive, pair):
    image = pair[2]
    with pytest.raises(ValueError, match="<image>"):
        adaptive.generate(image, "<image> where is the big shape ?")
    long_question = " ".join(["where"] * 5000) + " ?"
    with pytest.raises(ValueError, match="4096"):
        adaptive.generate(image, long_question, max_new_tokens=2)


def test_ask_script_gives_one_line_errors(pair, capsys):
    model, predictor, image = pair
    argv = ["--model", str(model), "--predictor", str(predictor), "--image", str(image)]
    code, err = run_script("ask", [*argv, "--question", " ".join(["where"] * 5000)], capsys)
    assert code == 2 and "context" in one_line_error(err)
