"""Oracle build failure behaviour: damaged shards and manifests, and input problems found before the model loads."""

import json
import logging

import pytest

import m3.loading
from m3.data.granularity import write_split
from m3.data.llava import BadImageError
from oracle_data import build_oracle, load_oracle, load_samples
from oracle_data.store import shard_file

from .damage import copy_tiny_m3, one_line_error, run_script, truncate

SETTINGS = dict(shard_size=4, batch_size=4, max_new_tokens=2, progress=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return copy_tiny_m3(tmp_path_factory.mktemp("model") / "tiny-m3")


@pytest.fixture(scope="module")
def built(tmp_path_factory, model):
    """A complete oracle of two images (two shards) and its data file."""
    root = tmp_path_factory.mktemp("built")
    data = write_split(root / "data", "test", num_images=2, seed=0)
    build_oracle(model, data, root / "oracle", **SETTINGS)
    return data, root / "oracle"


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if the model is loaded: the problem must be found before."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input problem was found")

    monkeypatch.setattr(m3.loading, "load_m3_model", refuse)


def test_a_truncated_shard_is_rebuilt_on_resume(tmp_path, built, model, caplog):
    data, original = built
    out = tmp_path / "oracle"
    build_oracle(model, data, out, **SETTINGS)
    truncate(out / shard_file(1))
    with caplog.at_level(logging.WARNING):
        build_oracle(model, data, out, **SETTINGS)
    assert any(shard_file(1) in record.getMessage() and "rebuild" in record.getMessage() for record in caplog.records)
    rebuilt, reference = load_oracle(out), load_oracle(original)
    assert rebuilt.to_pylist() == reference.to_pylist()


def test_damaged_shards_and_manifests_are_named_when_read(tmp_path, built):
    import shutil

    out = shutil.copytree(built[1], tmp_path / "oracle")
    truncate(out / shard_file(0))
    with pytest.raises(ValueError, match=f"{shard_file(0)}.*damaged.*rerun"):
        load_oracle(out)
    truncate(out / "manifest.json")
    with pytest.raises(ValueError, match="manifest.json.*damaged") as error:
        load_oracle(out)
    assert "\n" not in str(error.value)


def test_a_corrupt_image_is_found_before_the_model_loads_and_nothing_is_written(tmp_path, model, no_model_loading):
    data = write_split(tmp_path / "data", "test", num_images=2, seed=0)
    image = data.parent / json.loads(data.read_text())[-1]["image"]
    truncate(image)  # exists, does not decode
    with pytest.raises(BadImageError, match=image.name):
        build_oracle(model, data, tmp_path / "oracle", **SETTINGS)
    assert not (tmp_path / "oracle").exists()


def test_question_text_scales_and_limits_are_checked_before_the_model_loads(tmp_path, model, no_model_loading):
    data = write_split(tmp_path / "data", "test", num_images=1, seed=0)
    questions = tmp_path / "data" / "questions.jsonl"
    image = json.loads(data.read_text())[0]["image"]
    records = [{"image": image, "question": "<image>\nwhat is it ?", "answers": ["x"]}]
    questions.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match="<image>"):
        load_samples(questions)
    with pytest.raises(ValueError, match="<image>"):
        build_oracle(model, questions, tmp_path / "a", **SETTINGS)
    with pytest.raises(ValueError, match="more than once"):
        build_oracle(model, data, tmp_path / "b", scales=[9, 9], **SETTINGS)
    with pytest.raises(ValueError, match="limit"):
        build_oracle(model, data, tmp_path / "c", limit=-5, **SETTINGS)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_a_question_longer_than_the_context_is_found_before_the_model_loads(tmp_path, model, no_model_loading):
    data = write_split(tmp_path / "data", "test", num_images=2, seed=0)
    records = json.loads(data.read_text())
    records[1]["conversations"][0]["value"] = "<image>\n" + " ".join(["what"] * 5000) + " ?"
    data.write_text(json.dumps(records))
    with pytest.raises(ValueError, match=f"sample {records[1]['id']} is 50.. text tokens.*context") as error:
        build_oracle(model, data, tmp_path / "oracle", **SETTINGS)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "oracle").exists()


def test_build_script_gives_one_line_errors(tmp_path, model, capsys):
    code, err = run_script("build_oracle", ["--model", str(model), "--data", "missing.json", "--out", "x"], capsys)
    assert code == 2 and "missing.json" in one_line_error(err)
