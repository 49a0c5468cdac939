"""Failure behaviour, second pass (issue 26): nothing lost, nothing misreported.

Results of two models never share a folder; every image mode reaches the model with its real pixels (or is refused,
named); a certificate is shown only at the threshold it holds at; a run folder records what made it and refuses
another run; output paths and full disks are found before (or cleaned up after) the work; and malformed inputs
are one ``error:`` line before any model loads.
"""

import errno
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import adaptive.model
import m3.loading
from m3.data.granularity import write_split
from m3.data.llava import BadImageError, open_rgb
from oracle_data.synthetic import write_synthetic_oracle

from . import extras
from .damage import TINY_M3, copy_tiny_m3, load_script, one_line_error, run_script

ROUTER = TINY_M3.parent / "tiny-m3-router"


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """One granularity test image (its questions) and its records."""
    data = write_split(tmp_path_factory.mktemp("data"), "test", num_images=1, seed=0)
    return data, json.loads(data.read_text())


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if a model is loaded: the problem must be found before."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the problem was found")

    monkeypatch.setattr(m3.loading, "load_m3_model", refuse)
    monkeypatch.setattr(adaptive.model, "load_m3_model", refuse)


def question_of(records, index=0) -> str:
    return records[index]["conversations"][0]["value"].replace("<image>", "").strip()


def run_main(name: str, argv: list[str]) -> None:
    """A script's ``main`` in-process, for a run that succeeds (:func:`run_script` expects a refusal)."""
    load_script(name).main(argv)


# ---- 1. results lost: one result folder per model


def test_two_models_of_the_same_folder_name_keep_both_results(split, tmp_path, capsys):
    data, _ = split
    first, second = copy_tiny_m3(tmp_path / "A" / "final"), copy_tiny_m3(tmp_path / "B" / "final")
    out = tmp_path / "eval"
    run_main("evaluate", ["--model", str(first), str(second), "--data", str(data), "--out", str(out), "--limit", "1"])
    for name in ("A-final", "B-final"):
        assert (out / name / "predictions.jsonl").is_file(), sorted(p.name for p in out.iterdir())
    report = (out / "report.md").read_text()
    assert "| A-final |" in report and "| B-final |" in report
    twice = ["--model", str(first), str(second), str(first), "--data", str(data), "--out", str(tmp_path / "x")]
    code, err = run_script("evaluate", twice, capsys)
    assert code == 2 and "given twice" in one_line_error(err) and not (tmp_path / "x").exists()


# ---- 2. wrong pixels: one loader, every mode


@pytest.fixture(scope="module")
def grey(split):
    """The benchmark image as 8-bit grey (the reference) and the folder to write variants to."""
    data, records = split
    with Image.open(data.parent / records[0]["image"]) as image:
        return np.asarray(image.convert("L")), data.parent


def wide_variants(pixels: np.ndarray) -> dict[str, Image.Image]:
    """The same grey picture in the modes PIL's convert("RGB") clips: 16-bit, 32-bit int, float."""
    return {
        "sixteen.png": Image.fromarray(pixels.astype(np.uint16) * 257),  # I;16, 0-65535
        "int32.tif": Image.fromarray(pixels.astype(np.int32) * 257),  # I holding 16-bit values
        "float.tif": Image.fromarray(pixels.astype(np.float32) / 255),  # F, 0-1
    }


@pytest.mark.parametrize("name", ["sixteen.png", "int32.tif", "float.tif"])
def test_wide_images_are_scaled_not_clipped(grey, tmp_path, name):
    pixels, _ = grey
    path = tmp_path / name
    wide_variants(pixels)[name].save(path)
    loaded = np.asarray(open_rgb(path)).astype(int)
    assert np.abs(loaded - pixels[..., None]).max() <= 1  # PIL's convert("RGB") clips: an all-white image


def test_transparency_is_composited_on_white_and_nan_pixels_are_refused(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:4, :, :] = (200, 10, 10, 255)  # top half opaque red, bottom half fully transparent (black underneath)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    loaded = np.asarray(open_rgb(tmp_path / "rgba.png"))
    assert (loaded[0, 0] == (200, 10, 10)).all() and (loaded[-1, -1] == 255).all()
    Image.fromarray(np.full((8, 8), np.nan, dtype=np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(BadImageError, match="nan.tif.*NaN"):
        open_rgb(tmp_path / "nan.tif")


def test_every_image_reader_gives_the_same_pixels(grey, tmp_path):
    """The loaders of every entry point (LLaVA data, oracle samples, AdaptiveM3 paths and PIL images, Hugging Face
    image cells, lmms-eval visuals) read a 16-bit PNG as its 8-bit picture."""
    from adaptive.model import load_rgb
    from m3.data.hf import decode_image

    pixels, _ = grey
    path = tmp_path / "sixteen.png"
    wide_variants(pixels)["sixteen.png"].save(path)
    expected = np.repeat(pixels[..., None], 3, axis=2)
    buffer = io.BytesIO(path.read_bytes())
    readers = {
        "open_rgb": lambda: open_rgb(path),
        "load_rgb(path)": lambda: load_rgb(path),
        "load_rgb(PIL)": lambda: load_rgb(Image.open(path)),
        "hf bytes": lambda: decode_image({"bytes": buffer.getvalue(), "path": None}, "row 0"),
        "hf PIL": lambda: decode_image(Image.open(path), "row 0"),
    }
    if extras.installed("m3_lmms_eval.models", "lmms-eval"):  # the lmms-eval extra is optional (required in CI)
        from m3_lmms_eval.models import _open_visual

        readers["lmms-eval"] = lambda: _open_visual([Image.open(path)], "doc 0")[0]
    for name, read in readers.items():
        assert np.abs(np.asarray(read()).astype(int) - expected).max() <= 1, name


def test_ask_answers_a_sixteen_bit_image_as_its_eight_bit_picture(grey, split, tmp_path, capsys):
    pixels, _ = grey
    wide_variants(pixels)["sixteen.png"].save(tmp_path / "sixteen.png")
    Image.fromarray(pixels).save(tmp_path / "eight.png")
    question = question_of(split[1])
    argv = ["--model", str(TINY_M3), "--predictor", str(ROUTER), "--question", question, "--json"]
    answers = []
    for name in ("eight.png", "sixteen.png"):
        run_main("ask", [*argv, "--image", str(tmp_path / name)])
        answers.append(json.loads(capsys.readouterr().out))
    assert answers[0]["probabilities"] == answers[1]["probabilities"] and answers[0]["answer"] == answers[1]["answer"]


# ---- 3. a certificate is shown only at the threshold it holds at


def shipped_certificate_threshold() -> float:
    return json.loads((ROUTER / "predictor.json").read_text())["calibration"]["certificate"]["threshold"]


def ask(argv, capsys) -> str:
    run_main("ask", argv)
    return capsys.readouterr().out


def test_the_certificate_is_shown_only_at_its_threshold(split, tmp_path, capsys):
    data, records = split
    certified = shipped_certificate_threshold()
    image = str(data.parent / records[0]["image"])
    argv = ["--model", str(TINY_M3), "--image", image, "--question", question_of(records), "--max-new-tokens", "2"]
    out = ask([*argv, "--predictor", str(ROUTER)], capsys)
    assert f"certified threshold {certified:.4f}" in out and "not certified" not in out
    out = ask([*argv, "--predictor", str(ROUTER), "--threshold", "0.5"], capsys)
    assert "not certified" in out and "routed at threshold 0.5000" in out and "certified threshold" not in out
    out = ask([*argv, "--predictor", str(ROUTER), "--scale", "9"], capsys)
    assert "not certified" in out and "forced" in out
    edited = shutil.copytree(ROUTER, tmp_path / "edited")  # the threshold in predictor.json edited by hand
    config = json.loads((edited / "predictor.json").read_text())
    config["threshold"] = 0.05
    (edited / "predictor.json").write_text(json.dumps(config))
    out = ask([*argv, "--predictor", str(edited)], capsys)
    assert "not certified" in out and "routed at threshold 0.0500" in out and "certified threshold" not in out


def test_an_edited_adaptive_config_threshold_is_not_certified(split, tmp_path):
    from adaptive import AdaptiveM3

    data, records = split
    image, question = data.parent / records[0]["image"], question_of(records)
    folder = AdaptiveM3.from_pretrained(TINY_M3, ROUTER).save_pretrained(tmp_path / "adaptive")
    answer = AdaptiveM3.from_pretrained(folder).generate(image, question, max_new_tokens=1)
    assert answer.certificate is not None and answer.threshold == answer.certificate["threshold"]
    config = json.loads((folder / "adaptive_config.json").read_text())
    (folder / "adaptive_config.json").write_text(json.dumps({**config, "threshold": 0.05}))
    edited = AdaptiveM3.from_pretrained(folder)
    answer = edited.generate(image, question, max_new_tokens=1)
    assert answer.threshold == 0.05 and answer.certificate is None and edited.certificate_at() is None
    assert edited.certificate_at(shipped_certificate_threshold()) is not None
    assert edited.certificate_at(shipped_certificate_threshold(), max_tokens=144) is None  # a cap changes routing


# ---- 4. run folders record what made them


def test_a_run_folder_refuses_another_run_and_says_what_it_reuses(tmp_path):
    from m3.runs import RunFolderMismatchError, claim_run_folder

    assert claim_run_folder(tmp_path / "run", {"run": "smoke", "data": "d"}) == "new"
    assert claim_run_folder(tmp_path / "run", {"run": "smoke", "data": "d"}) == "continued"
    with pytest.raises(RunFolderMismatchError, match='run: "smoke" there, "full" now'):
        claim_run_folder(tmp_path / "run", {"run": "full", "data": "d"})
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "m3").mkdir()
    with pytest.warns(UserWarning, match="m3"):
        assert claim_run_folder(tmp_path / "old", {"run": "full"}) == "unrecorded"


def test_evaluate_router_refuses_an_out_folder_of_another_run(tmp_path, capsys):
    oracle = write_synthetic_oracle(tmp_path / "oracle", num_images=24, embedding_dim=8)
    out = tmp_path / "router"
    argv = ["--oracle-train", str(oracle), "--oracle-test", str(oracle), "--out", str(out), "--trials", "0"]
    run_main("evaluate_router", [*argv, "--predictors", "mlp,lgbm", "--no-progress"])
    assert (out / "predictors" / "lgbm").is_dir()
    code, err = run_script("evaluate_router", [*argv, "--predictors", "mlp", "--no-progress"], capsys)
    assert code == 2 and "predictors" in one_line_error(err) and str(out) in one_line_error(err)


# ---- 5. work lost late: output paths before training, a full disk cleaned up


def tiny_train_args(data, output_dir, *extra):
    args = ["--data_path", str(data), "--generate_data", "false", "--output_dir", str(output_dir)]
    return [*args, "--eval_steps", "0", "--tiny_hidden_size", "32", "--batch_size", "2", "--max_steps", "2", *extra]


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    return write_split(tmp_path_factory.mktemp("train"), "train", num_images=2, seed=0)


def test_an_output_dir_that_is_a_file_is_refused_before_training(train_data, tmp_path, capsys, monkeypatch):
    import m3.training

    monkeypatch.setattr(m3.training, "build_model_and_processor", lambda c: pytest.fail("the model was built"))
    a_file = tmp_path / "model.bin"
    a_file.write_text("not a folder")
    code, err = run_script("train_m3", tiny_train_args(train_data, a_file), capsys)
    assert code == 2 and str(a_file) in one_line_error(err) and "file" in one_line_error(err)


def test_a_full_disk_while_saving_is_one_line_and_leaves_no_partial_files(train_data, tmp_path, capsys, monkeypatch):
    import accelerate
    import transformers

    def full_disk_checkpoint(self, output_dir=None, **kwargs):
        (output_dir := Path(output_dir)).mkdir(parents=True, exist_ok=True)
        (output_dir / "model.safetensors").write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(accelerate.Accelerator, "save_state", full_disk_checkpoint)
        args = tiny_train_args(train_data, tmp_path / "run", "--save_steps", "1")
        code, err = run_script("train_m3", args, capsys)
    line = one_line_error(err)
    assert code == 2 and "no space left" in line and "--resume" in line and "step-0000001" in line
    assert not list((tmp_path / "run" / "checkpoints").glob("*")), "a partial checkpoint was left"

    def full_disk_model(self, save_directory, *args, **kwargs):
        (Path(save_directory) / "model.safetensors").write_bytes(b"half a model")
        raise RuntimeError("[enforce fail] PytorchStreamWriter failed writing file: No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", full_disk_model)
    code, err = run_script("train_m3", tiny_train_args(train_data, tmp_path / "final", "--save_steps", "0"), capsys)
    assert code == 2 and "no space left" in one_line_error(err)
    assert not (tmp_path / "final" / "model.safetensors").exists()


def test_a_full_disk_while_writing_an_oracle_file_leaves_no_temporary_file(tmp_path):
    from m3.files import DiskFullError, atomic_write

    def half_then_full(tmp):
        Path(tmp).write_bytes(b"half a shard")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match="no space left.*shard-00000.parquet"):
        atomic_write(tmp_path / "shard-00000.parquet", half_then_full)
    assert list(tmp_path.iterdir()) == []


# ---- 6. one line instead of a traceback, before the model loads

THREAD_COMMANDS = {
    "build_oracle": ["--model", "m", "--data", "d.json", "--out", "o"],
    "evaluate_router": ["--oracle-test", "o", "--predictor", "p", "--out", "o"],
    "evaluate": ["--model", "m", "--data", "d.json", "--out", "o"],
    "evaluate_frames": ["--model", "m", "--predictor", "p", "--data", "d.json"],
    "build_frame_oracle": ["--model", "m", "--data", "d.json", "--out", "o"],
    "certify_validity": ["--oracle", "o", "--predictor", "p", "--out", "o"],
    "quickstart": ["--out", "o"],
    "ablations": ["--table", "4", "--out", "o"],
    "build_demo_predictor": ["--out", "o", "--work", "w", "--examples", ""],
}


@pytest.mark.parametrize("script", sorted(THREAD_COMMANDS))
def test_a_negative_thread_count_is_one_line(script, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_script(script, [*THREAD_COMMANDS[script], "--threads", "-1"], capsys)
    assert code == 2 and "--threads" in one_line_error(err)
    assert not (tmp_path / "o").exists()


def test_a_question_that_is_not_utf8_is_one_line(split, capsys, no_model_loading):
    data, records = split
    undecodable = b"what \xff ?".decode("utf-8", "surrogateescape")  # how Python hands such argv bytes over
    argv = ["--model", str(TINY_M3), "--predictor", str(ROUTER), "--image", str(data.parent / records[0]["image"])]
    code, err = run_script("ask", [*argv, "--question", undecodable], capsys)
    assert code == 2 and "UTF-8" in one_line_error(err)


@pytest.mark.parametrize(
    "edit",
    [
        lambda config: config["params"].update(not_a_parameter=1),
        lambda config: config.update(model=None),
        lambda config: config.update(params=[1, 2]),
    ],
    ids=["unknown parameter", "model null", "params a list"],
)
def test_a_malformed_predictor_json_is_named_in_one_line(edit, split, tmp_path, capsys, no_model_loading):
    from predictor import load_predictor

    folder = shutil.copytree(ROUTER, tmp_path / "router")
    config = json.loads((folder / "predictor.json").read_text())
    edit(config)
    (folder / "predictor.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="predictor.json is damaged"):
        load_predictor(folder)
    data, records = split
    argv = ["--model", str(TINY_M3), "--predictor", str(folder), "--image", str(data.parent / records[0]["image"])]
    code, err = run_script("ask", [*argv, "--question", question_of(records)], capsys)
    assert code == 2 and str(folder / "predictor.json") in one_line_error(err)


def test_an_option_of_another_model_family_is_refused_before_loading(split, capsys, tmp_path, no_model_loading):
    argv = ["--model", str(TINY_M3), "--data", str(split[0]), "--out", str(tmp_path / "o")]
    code, err = run_script("evaluate", [*argv, "--image-grid-pinpoints", "[[96, 96]]"], capsys)
    assert code == 2 and "image_grid_pinpoints does not apply" in one_line_error(err) and "llava_next" in err


def test_a_pickle_only_checkpoint_is_refused(split, tmp_path, capsys):
    from safetensors.torch import load_file

    model = copy_tiny_m3(tmp_path / "pickled")
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="pytorch_model.bin.*pickle.*safetensors"):
        m3.loading.load_m3_model(model)
    argv = ["--model", str(model), "--data", str(split[0]), "--out", str(tmp_path / "o")]
    code, err = run_script("evaluate", argv, capsys)
    assert code == 2 and "safetensors" in one_line_error(err) and "weights_only" not in err


def test_a_blank_question_in_a_llava_file_is_refused_like_in_jsonl(
    split, tmp_path, capsys, no_model_loading, monkeypatch
):
    from oracle_data import load_samples

    monkeypatch.chdir(tmp_path)
    data, records = split
    blank = [
        dict(records[0], conversations=[{"from": "human", "value": "<image>\n   "}, records[0]["conversations"][1]])
    ]
    path = data.parent / "blank.json"
    path.write_text(json.dumps(blank))
    with pytest.raises(ValueError, match=f"record 0 \\(id {records[0]['id']}\\).*question must be a non-empty"):
        load_samples(path)
    code, err = run_script("build_oracle", ["--model", str(TINY_M3), "--data", str(path), "--out", "o"], capsys)
    assert code == 2 and "non-empty" in one_line_error(err)
    code, err = run_script("evaluate", ["--model", str(TINY_M3), "--data", str(path), "--out", "o"], capsys)
    assert code == 2 and "non-empty" in one_line_error(err)


def test_ask_checks_its_options_before_the_model_loads(split, capsys, no_model_loading):
    data, records = split
    argv = ["--model", str(TINY_M3), "--predictor", str(ROUTER), "--image", str(data.parent / records[0]["image"])]
    argv += ["--question", question_of(records)]
    for option, value in (("--max-new-tokens", "0"), ("--threshold", "2"), ("--max-tokens", "0"), ("--scale", "7")):
        code, err = run_script("ask", [*argv, option, value], capsys)
        assert code == 2 and one_line_error(err), option
