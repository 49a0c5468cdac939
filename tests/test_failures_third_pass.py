"""Failure behaviour, third pass (issue 31): no silent scores, no silent overwrites, every option honoured or refused.

The lmms-eval plugin's own cases need the extra and live in tests/test_lmms_eval_failures.py.
"""

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageFile

from m3.data.granularity import write_split
from m3.images import BadImageError, check_image, open_rgb, to_rgb

from .damage import REPO, TINY_M3, load_script, one_line_error, run_script, truncate


def run_module(module: str, argv: list[str], capsys) -> tuple[int, str]:
    """``python -m MODULE ARGV`` in-process: ``(exit code, stderr)`` (0 when ``main`` returns)."""
    capsys.readouterr()
    try:
        importlib.import_module(module).main(argv)
    except SystemExit as exit_info:
        return exit_info.code, capsys.readouterr().err
    return 0, capsys.readouterr().err


# ---- 2. a truncated image is refused whatever PIL's process-wide LOAD_TRUNCATED_IMAGES says (lmms-eval sets it)
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_truncated_image_is_refused_even_when_pil_is_told_to_load_truncated_images(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"noise{suffix}"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    truncate(path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as `import lmms_eval.api.task` leaves it
    with pytest.raises(BadImageError, match=f"noise{suffix} of record 3.*truncated"):
        open_rgb(path, "record 3")
    with pytest.raises(BadImageError, match="truncated"):
        check_image(path)
    with Image.open(path) as lazy, pytest.raises(BadImageError, match="doc 5: cannot decode it.*truncated"):
        to_rgb(lazy, "doc 5")  # a task's doc_to_visual that opened the file without decoding it
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is left as it was


# ---- 7 (and 3). the local lmms-eval task writer: odd records and paths, and a task already there
@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    """A granularity test split of one image (its questions)."""
    return write_split(tmp_path_factory.mktemp("data"), "test", num_images=1, seed=0)


def test_task_writer_takes_text_only_records_and_refuses_what_it_cannot_write(test_split, tmp_path, capsys):
    from m3_lmms_eval.tasks import llava_doc_to_text, llava_doc_to_visual, llava_process_results

    records = json.loads(test_split.read_text())
    text_only = {"id": "text"}  # no image
    text_only["conversations"] = [{"from": "human", "value": "what is 2 + 2 ?"}, {"from": "gpt", "value": "4"}]
    mixed = test_split.with_name("mixed.json")
    mixed.write_text(json.dumps([*records, text_only]))
    code, err = run_module("m3_lmms_eval.tasks", [str(mixed), str(tmp_path / "tasks")], capsys)
    assert code == 0, err  # before: a text-only record was a TypeError when its doc was read
    assert llava_doc_to_visual(text_only, str(mixed.parent)) == [] and llava_doc_to_text(text_only) == "what is 2 + 2 ?"
    assert llava_process_results(text_only, ["4"]) == {"exact_match": 1.0}
    nan_answer = test_split.with_name("nan.json")
    nan_answer.write_text(json.dumps([dict(records[0], answer=float("nan"))]))
    png = test_split.parent / records[0]["image"]
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cases = {
        (str(test_split), str(a_file)): f"FOLDER {a_file} cannot be a folder: it is a file",  # before: a traceback
        (str(test_split.parent), "x"): "is a folder; give the split's JSON file",  # before: "does not exist"
        (str(png), "x"): "is not a LLaVA JSON split",  # before: a task over a PNG
        (str(test_split), "x", "--task", "../escaped"): "--task '../escaped' must be letters",  # before: written in ..
        (str(test_split), "x", "--task", "x: y"): "--task 'x: y' must be letters",  # before: invalid YAML
        (str(test_split), "x", "--max-new-tokens", "-1"): "--max-new-tokens must be a whole number >= 1, got -1",
        (str(nan_answer), "x"): "its answers must be a non-empty list of strings (or finite numbers), got [nan]",
    }
    missing = test_split.with_name("missing-image.json")
    missing.write_text(json.dumps([dict(records[0], image="images/none.png")]))
    cases[(str(missing), "x")] = "images/none.png of record"  # second pass: no hint of training's --skip_bad_images
    for argv, message in cases.items():
        code, err = run_module("m3_lmms_eval.tasks", [*argv[:1], str(tmp_path / argv[1]), *argv[2:]]
                               if argv[1] == "x" else list(argv), capsys)  # fmt: skip
        assert code == 2 and message in one_line_error(err) and "skip_bad_images" not in err, (argv, err)
    assert not (tmp_path / "escaped.yaml").exists() and not (tmp_path / "x").exists()


def test_task_writer_refuses_to_replace_a_task_over_another_split(test_split, tmp_path, capsys):
    other = write_split(tmp_path / "other", "test", num_images=2, seed=1)
    folder = tmp_path / "tasks"
    assert run_module("m3_lmms_eval.tasks", [str(test_split), str(folder)], capsys)[0] == 0
    before = (folder / "m3_granularity.yaml").read_text()
    assert run_module("m3_lmms_eval.tasks", [str(test_split), str(folder)], capsys)[0] == 0  # the same task again
    code, err = run_module("m3_lmms_eval.tasks", [str(other), str(folder)], capsys)
    assert code == 2 and f"holds task m3_granularity over {test_split.resolve()}" in one_line_error(err)
    assert "--overwrite" in err and (folder / "m3_granularity.yaml").read_text() == before  # before: replaced
    code, err = run_module("m3_lmms_eval.tasks", [str(test_split), str(folder), "--max-new-tokens", "4"], capsys)
    assert code == 2 and "with other settings" in one_line_error(err)
    assert run_module("m3_lmms_eval.tasks", [str(other), str(folder), "--overwrite"], capsys)[0] == 0
    assert str(other.resolve()) in (folder / "m3_granularity.yaml").read_text()


# ---- 3. evaluate.py --out over another run's folder
def test_evaluate_refuses_another_runs_folder_unless_overwrite(test_split, tmp_path, capsys):
    other = write_split(tmp_path / "other", "test", num_images=1, seed=1)
    out = tmp_path / "eval"
    argv = ["--model", str(TINY_M3), "--out", str(out), "--scales", "9", "--threads", "1"]
    load_script("evaluate").main([*argv, "--data", str(test_split)])
    load_script("evaluate").main([*argv, "--data", str(test_split)])  # the same run again: its results replaced
    report = (out / "report.md").read_text()
    code, err = run_script("evaluate", [*argv, "--data", str(other), "--scales", "36"], capsys)
    assert code == 2 and "--overwrite" in one_line_error(err) and "scales: [9] there, [36] now" in err
    assert (out / "report.md").read_text() == report  # before: replaced, exit 0
    (out / "tiny-m3" / "stale.txt").write_text("")
    load_script("evaluate").main([*argv, "--data", str(other), "--scales", "36", "--overwrite"])
    assert str(other) in (out / "report.md").read_text() and not (out / "tiny-m3" / "stale.txt").exists()
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    code, err = run_script("evaluate", [*argv, "--data", str(test_split), "--out", str(used)], capsys)
    assert code == 2 and "already holds notes.txt" in one_line_error(err)


# ---- 3 and 8. python -m m3.data.granularity (and m3.data.frames) over another split, or into a file
@pytest.mark.parametrize("module, count", [("m3.data.granularity", "--num-images"), ("m3.data.frames", "--num-videos")])
def test_split_writers_refuse_a_split_drawn_otherwise_unless_overwrite(module, count, tmp_path, capsys):
    out = tmp_path / "data"
    argv = ["--out", str(out), "--split", "test", count, "2"]
    assert run_module(module, argv, capsys)[0] == 0
    written = (out / "test.json").read_text()
    assert run_module(module, argv, capsys)[0] == 0 and (out / "test.json").read_text() == written  # the same
    code, err = run_module(module, [*argv, "--seed", "3"], capsys)
    assert code == 2 and "seed: 0 there, 3 now" in one_line_error(err) and "--overwrite" in err
    assert (out / "test.json").read_text() == written  # before: replaced, exit 0
    assert run_module(module, ["--out", str(out), "--split", "test", count, "1", "--overwrite"], capsys)[0] == 0
    assert json.loads((out / "test.meta.json").read_text())[count[2:].replace("-", "_")] == 1
    assert all(p.name.startswith("test_000000") for p in (out / "images" / "test").iterdir())  # no old image stays
    code, err = run_module(module, ["--out", str(out / "test.json"), "--split", "test"], capsys)
    assert code == 2 and "cannot be a folder: it is a file" in one_line_error(err)  # before: a traceback


# ---- 4. --train_images / --eval_images are honoured: a generated split of another size is refused, 0 is refused
def test_train_images_is_honoured_or_refused(tmp_path, caplog):
    from m3.training import train

    from .test_training import tiny_run

    data = tmp_path / "data"
    write_split(data, "train", num_images=6, seed=0)  # what an earlier run with --train_images 6 generated
    split = str(data / "train.chat.json")
    with pytest.raises(ValueError, match="train split in .*num_images: 6 there, 4 now.*--train_images 4"):
        train(tiny_run(tmp_path, "four", data_path=split, train_images=4, max_steps=1))  # before: trained on 6
    with pytest.raises(ValueError, match="--train_images must be >= 1"):
        train(tiny_run(tmp_path, "zero", data_path=split, train_images=0, max_steps=1))  # before: accepted
    with pytest.raises(ValueError, match="--eval_images must be >= 1"):
        train(tiny_run(tmp_path, "zero", data_path=split, eval_data_path=str(data / "validation.json"), max_steps=1))
    with pytest.raises(ValueError, match="validation split in .*num_images: 3 there, 2 now.*--eval_images 2"):
        write_split(data, "validation", num_images=3, seed=0)
        train(tiny_run(tmp_path, "e", data_path=split, eval_data_path=str(data / "validation.json"), eval_images=2))
    assert not any((tmp_path / name).exists() for name in ("four", "zero", "e"))  # refused launches leave nothing
    train(tiny_run(tmp_path, "six", data_path=split, max_steps=1, save_steps=1, stop_after_steps=1))
    with pytest.raises(ValueError, match="train_images: 6 there, 5 now"):  # before: not among the differences
        train(tiny_run(tmp_path, "six", data_path=split, train_images=5, generate_data=False, resume=True))


# ---- 9. training run folders: one run at a time, interrupted saves, refused launches leave nothing
def train_args(data, out) -> list[str]:
    return ["--data_path", str(data), "--generate_data", "false", "--eval_data_path", "", "--output_dir", str(out),
            "--max_steps", "2", "--save_steps", "2", "--batch_size", "4", "--eval_steps", "0",
            "--tiny_hidden_size", "32"]  # fmt: skip


@pytest.fixture(scope="module")
def data_4(tmp_path_factory):
    return write_split(tmp_path_factory.mktemp("data"), "train", num_images=4, seed=0)


def test_a_second_run_into_a_held_output_dir_is_refused_naming_the_holder(data_4, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from m3.runs import held_run_folder\n"
         f"with held_run_folder({str(out)!r}):\n    print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = run_script("train_m3", train_args(data_4, out), capsys)
        assert code == 2 and f"--output_dir {out} is in use by another run (pid {holder.pid} on " in err, err
        assert "started " in one_line_error(err) and not (out / "checkpoints").exists()  # before: both trained
    finally:
        holder.kill()  # kill -9: the lock file stays behind, naming a dead process
        holder.wait()
    assert (out / ".m3-run.lock").exists()
    load_script("train_m3").main(train_args(data_4, out))  # the dead run's lock is taken over
    assert (out / "model.safetensors").exists() and not (out / ".m3-run.lock").exists()


def test_an_unfinished_first_checkpoint_points_to_overwrite(data_4, tmp_path, capsys):
    out = tmp_path / "run"
    load_script("train_m3").main([*train_args(data_4, out), "--stop_after_steps", "2"])
    checkpoint = out / "checkpoints" / "step-0000002"
    checkpoint.rename(checkpoint.with_name("step-0000002.tmp"))  # what kill -9 during the first save leaves
    code, err = run_script("train_m3", [*train_args(data_4, out), "--resume"], capsys)
    assert code == 2 and "step-0000002.tmp: cut off while being saved); start afresh with --overwrite" in err
    code, err = run_script("train_m3", train_args(data_4, out), capsys)  # before: "pass --resume", a circle
    assert code == 2 and "holds an unfinished checkpoint" in one_line_error(err) and "pass --overwrite" in err
    load_script("train_m3").main([*train_args(data_4, out), "--overwrite"])
    assert (out / "model.safetensors").exists()


def test_a_refused_launch_leaves_no_output_folder(data_4, tmp_path, capsys):
    out = tmp_path / "new" / "run"
    code, err = run_script("train_m3", [*train_args(data_4, out), "--resume"], capsys)
    assert code == 2 and "holds no checkpoint to resume from; run without --resume" in one_line_error(err)
    assert not (tmp_path / "new").exists()  # before: an empty folder stayed
    records = json.loads(data_4.read_text())
    truncate(data_4.parent / records[0]["image"])
    code, err = run_script("train_m3", train_args(data_4, out), capsys)
    assert code == 2 and "truncated" in one_line_error(err) and not (tmp_path / "new").exists()
    write_split(data_4.parent, "train", num_images=4, seed=0, overwrite=True)  # the module's data, repaired


# ---- 10. a resume checks that the checkpoint's files are the ones its run saved
def test_a_changed_checkpoint_file_is_refused_on_resume(data_4, tmp_path, capsys):
    import torch

    out = tmp_path / "run"
    load_script("train_m3").main([*train_args(data_4, out), "--stop_after_steps", "1", "--save_steps", "1"])
    checkpoint = out / "checkpoints" / "step-0000001"
    recorded = json.loads((checkpoint / "trainer_state.json").read_text())["files"]
    assert "random_states_0.pkl" in recorded and "model.safetensors" in recorded
    states = torch.load(checkpoint / "random_states_0.pkl", weights_only=False)
    states["random_state"] = __import__("random").Random(7).getstate()  # valid, loads without a word: another run
    torch.save(states, checkpoint / "random_states_0.pkl")
    code, err = run_script("train_m3", [*train_args(data_4, out), "--resume"], capsys)
    assert code == 2 and "is not as its run saved it: random_states_0.pkl (changed)" in one_line_error(err)
    (checkpoint / "extra.bin").write_bytes(b"x")
    (checkpoint / "random_states_0.pkl").unlink()
    code, err = run_script("train_m3", [*train_args(data_4, out), "--resume"], capsys)
    assert "extra.bin (added), random_states_0.pkl (missing)" in one_line_error(err)


def test_a_checkpoint_of_an_older_version_still_resumes_with_warnings(data_4, tmp_path, caplog):
    out = tmp_path / "run"
    load_script("train_m3").main([*train_args(data_4, out), "--stop_after_steps", "1", "--save_steps", "1"])
    state_file = out / "checkpoints" / "step-0000001" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["files"], state["run"]["train_images"], state["run"]["eval_images"]  # what the last version wrote
    state_file.write_text(json.dumps(state))
    load_script("train_m3").main([*train_args(data_4, out), "--resume"])
    assert (out / "model.safetensors").exists()
    assert "records no file hashes" in caplog.text and "records no eval_images, train_images" in caplog.text


# ---- 8. exit codes and tracebacks
def test_convert_script_reports_user_errors_with_exit_code_2(test_split, tmp_path, capsys):
    from m3.convert import UnknownKeyError

    empty = tmp_path / "empty"
    empty.mkdir()
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text("{")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cases = {
        (str(tmp_path / "missing"), str(tmp_path / "o1")): "no config.json in",
        (str(empty), str(tmp_path / "o2")): "no config.json in",
        (str(damaged), str(tmp_path / "o3")): "config.json is damaged",
        (str(TINY_M3), str(tmp_path / "o4")): "already a llava-hf config",
        (str(empty), str(test_split.parent)): "is not empty",
        (str(empty), str(a_file)): f"OUTPUT {a_file} cannot be a folder: it is a file",  # before: [Errno 20]
    }
    for argv, message in cases.items():
        code, err = run_script("convert_llava_checkpoint", list(argv), capsys)
        assert code == 2 and message in one_line_error(err), (argv, err)  # before: exit code 1
    error = UnknownKeyError("unknown key 'model.weird'")
    assert isinstance(error, KeyError) and isinstance(error, ValueError) and str(error) == "unknown key 'model.weird'"


def test_dataset_options_on_a_data_file_and_a_nan_answer_are_refused(test_split, tmp_path, capsys):
    argv = ["--model", str(TINY_M3), "--data", str(test_split), "--out", str(tmp_path / "oracle")]
    code, err = run_script("build_oracle", [*argv, "--columns", "foo"], capsys)  # before: silently ignored
    assert code == 2 and "--columns applies to a Hugging Face dataset, but" in one_line_error(err)
    code, err = run_script("build_oracle", [*argv, "--split", "test", "--layout", "pope"], capsys)
    assert code == 2 and "--split and --layout apply to a Hugging Face dataset" in one_line_error(err)
    assert not (tmp_path / "oracle").exists()
    records = json.loads(test_split.read_text())
    records[1]["conversations"][1]["value"] = float("nan")
    nan = tmp_path / "nan.json"
    nan.write_text(json.dumps(records))
    code, err = run_script("train_m3", ["--data_path", str(nan), "--generate_data", "false", "--output_dir",
                                        str(tmp_path / "run"), "--eval_data_path", ""], capsys)  # fmt: skip
    assert code == 2, err  # before: "should be a 'gpt' turn with a string value, got from='gpt'"
    assert f"record {records[1]['id']}: turn 1 (gpt) should have a string value, got nan (float)" in one_line_error(err)


# ---- second pass (issue 31): hostile cases that broke
def test_empty_paths_empty_data_and_odd_answers_are_one_line(test_split, data_4, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty path used to mean this folder
    code, err = run_script("train_m3", train_args(data_4, ""), capsys)
    assert code == 2 and "--output_dir is empty" in one_line_error(err)  # before: trained into the current folder
    for module, argv in (("m3.data.granularity", ["--out", "", "--split", "test", "--num-images", "1"]),
                         ("m3_lmms_eval.tasks", [str(test_split), ""])):  # fmt: skip
        code, err = run_module(module, argv, capsys)
        assert code == 2 and "is empty; give a folder" in one_line_error(err), module
    code, err = run_script("evaluate", ["--model", str(TINY_M3), "--data", str(test_split), "--out", ""], capsys)
    assert code == 2 and "--out is empty" in one_line_error(err)
    assert list(tmp_path.iterdir()) == []
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    code, err = run_script("train_m3", train_args(empty, tmp_path / "run"), capsys)
    assert code == 2 and "holds no training records" in one_line_error(err)  # before: torch's num_samples=0
    code, err = run_module("m3_lmms_eval.tasks", [str(empty), str(tmp_path / "tasks")], capsys)
    assert code == 2 and "holds no records" in one_line_error(err)  # before: a task scoring nothing
    records = json.loads(test_split.read_text())
    nan = test_split.with_name("nan-answer.json")
    nan.write_text(json.dumps([dict(records[0], answer=float("nan")), *records[1:]]))
    code, err = run_script("evaluate", ["--model", str(TINY_M3), "--data", str(nan), "--out", "e"], capsys)
    assert code == 2 and "its answer nan is not a string or a finite number" in one_line_error(err)  # before: scored
    (tmp_path / "locked" / ".m3-run.lock").mkdir(parents=True)
    code, err = run_script("train_m3", train_args(data_4, tmp_path / "locked"), capsys)
    assert code == 2 and ".m3-run.lock is a folder, not a run lock: remove it" in one_line_error(err)


# ---- hostile pass 2 (issue 31): what a new user gives in place of an image file, and estimate_flops.py's options
def test_an_image_path_that_is_not_a_regular_file_is_named_for_what_it_is(tmp_path):
    from adaptive.inputs import load_rgb
    from m3.images import not_a_file_error

    folder, loop, fifo = tmp_path / "folder.png", tmp_path / "loop.png", tmp_path / "fifo.png"
    folder.mkdir()
    loop.symlink_to(loop)
    os.mkfifo(fifo)  # reading it would block until something writes to it
    cases = {
        folder: (IsADirectoryError, "is a folder, not a file"),
        loop: (FileNotFoundError, "is a symbolic link that leads nowhere \\(a loop"),
        fifo: (OSError, "is not a regular file"),
        tmp_path / "gone.png": (FileNotFoundError, "does not exist"),
    }
    for path, (kind, words) in cases.items():  # before: "does not exist" for each of them
        with pytest.raises(BadImageError, match=f"{path.name} of record 2 {words}"):
            open_rgb(path, "record 2")
        with pytest.raises(kind, match=f"image file .*{path.name} {words}"):
            load_rgb(path)  # AdaptiveM3 and ask.py
        assert isinstance(not_a_file_error(path, "x"), kind)
    with pytest.raises(FileNotFoundError, match="is a URL; images are read from files: download it first"):
        load_rgb("https://example.com/x.png")  # before: "image file https:/example.com/x.png does not exist"


def test_estimate_flops_refuses_what_it_would_ignore_or_miscount(tmp_path, capsys):
    from m3.flops import estimate_prefill, llava_15_config

    with pytest.raises(ValueError, match="text tokens must be a whole number >= 0, got -5"):
        estimate_prefill(llava_15_config("7b"), 576, text_tokens=-5)  # before: negative FLOPs in the table
    for argv, words in (
        (["--text-tokens", "-5"], "text tokens must be a whole number >= 0"),
        (["--image-size", "0x0"], "applies to LLaVA-NeXT models only"),  # before: ignored
        (["--model", str(tmp_path / "none")], "no config.json in"),
    ):  # before: a traceback, exit 1
        code, err = run_script("estimate_flops", argv, capsys)
        assert code == 2 and words in one_line_error(err), argv


@pytest.mark.parametrize(
    "edit, words",
    [({"scales": [1, 9, 9, 144, 576]}, "'scales' should be increasing, each scale once"),  # before: routed on 4 scales
     ({"scales": [0, 9, 36, 144, 576]}, "'scales' should be a list of whole numbers >= 1"),
     ({"scales": [1, 4, 36, 144, 576]}, "differ from the fingerprint's scales"),
     ({"threshold": float("nan")}, "'threshold' should be a number in \\[0, 1\\], not nan")],  # before: file unnamed
)  # fmt: skip
def test_a_hand_edited_predictor_json_with_odd_scales_or_threshold_is_named(tmp_path, edit, words):
    import shutil

    from predictor.base import read_config

    folder = shutil.copytree(TINY_M3.parent / "tiny-m3-router", tmp_path / "router")
    config = json.loads((folder / "predictor.json").read_text())
    (folder / "predictor.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ValueError, match=f"predictor.json is damaged \\(.*{words}"):
        read_config(folder)


def test_an_empty_scales_a_data_folder_and_a_split_of_no_images_are_refused(test_split, tmp_path, capsys):
    for script in ("build_oracle", "evaluate"):  # before: --scales "" meant every scale
        argv = ["--model", str(TINY_M3), "--data", str(test_split), "--out", str(tmp_path / script), "--scales", ""]
        code, err = run_script(script, argv, capsys)
        assert code == 2 and "scales must be comma-separated positive integers" in one_line_error(err), script
    argv = ["--model", str(TINY_M3), "--data", str(test_split.parent), "--out", str(tmp_path / "e")]
    code, err = run_script("evaluate", argv, capsys)
    assert code == 2 and "is a folder, not a file" in one_line_error(err)  # before: "does not exist"
    for module, count in (("m3.data.granularity", "--num-images"), ("m3.data.frames", "--num-videos")):
        code, err = run_module(module, ["--out", str(tmp_path / module), "--split", "test", count, "0"], capsys)
        assert code == 2 and f"at least 1 {count[6:-1]} ({count}), got 0" in one_line_error(err), module
        assert not (tmp_path / module / "test.json").exists()  # before: an empty split, refused by every reader


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_demo_refuses_a_port_no_server_can_listen_on_before_the_model_loads(port, capsys, monkeypatch):
    pytest.importorskip("gradio")
    import m3_demo.session

    monkeypatch.setattr(m3_demo.session, "load_demo_model", lambda *a: pytest.fail("the model loaded"))
    code, err = run_script("demo", ["--port", port], capsys)
    words = f"--port must be a whole number in [0, 65535] (0: any free port), got {port}"
    assert code == 2 and words in one_line_error(err)  # before: a traceback once the model had loaded


def test_quickstart_and_the_demo_predictor_refuse_their_sizes_before_any_work(tmp_path, capsys, monkeypatch):
    import m3_demo.router
    import oracle_data

    for argv, words in (
        (["--trials", "-1"], "--trials must be >= 0"),  # before: ran the chain
        (["--oracle-train-images", "0"], "--oracle-train-images must be >= 1"),
        (["--smoke", "--trials", "5"], "--smoke sets its own sizes (no tuning, 2 oracle images a family): --trials"),
    ):  # before: --smoke dropped --trials and --oracle-train-images without a word
        code, err = run_script("quickstart", ["--out", str(tmp_path / "qs"), *argv], capsys)
        assert code == 2 and words in one_line_error(err), argv
    assert not (tmp_path / "qs").exists()
    monkeypatch.setattr(oracle_data, "build_oracle", lambda *a, **k: pytest.fail("an oracle was built"))
    with pytest.raises(ValueError, match="max_drop and delta must be in \\(0, 1\\), got 0.01 and 2"):
        m3_demo.router.build_demo_predictor(TINY_M3, tmp_path / "p", tmp_path / "w", 1, 1, delta=2)  # before: after


def test_calibrate_router_refuses_an_out_that_already_holds_files(tmp_path, capsys, monkeypatch):
    import shutil

    import predictor

    router = shutil.copytree(TINY_M3.parent / "tiny-m3-router", tmp_path / "router")
    before = {p.name: p.read_bytes() for p in router.iterdir()}
    monkeypatch.setattr(predictor, "load_predictor", lambda *a, **k: pytest.fail("the predictor was loaded"))
    for out in (router, TINY_M3):  # its own input (before: rewritten, the demo's old certificates.json kept); a model
        argv = ["--predictor", str(router), "--oracle", str(tmp_path / "oracle"), "--out", str(out)]
        code, err = run_script("calibrate_router", argv, capsys)
        assert code == 2 and f"--out {out} already holds files (" in one_line_error(err), out
    assert {p.name: p.read_bytes() for p in router.iterdir()} == before


def test_a_negative_trials_count_is_refused_before_any_work(tmp_path, capsys):
    from predictor.training import fit_predictors

    with pytest.raises(ValueError, match="--trials must be a whole number >= 0"):
        fit_predictors(tmp_path / "no-oracle", ["mlp"], n_trials=-1)  # before: -1 meant no tuning, without a word
    for script, argv in (("evaluate_router", ["--oracle-test", str(tmp_path), "--oracle-train", str(tmp_path)]),
                         ("certify_validity", ["--oracle", str(tmp_path), "--oracle-train", str(tmp_path),
                                               "--predictors", "mlp"])):  # fmt: skip
        code, err = run_script(script, [*argv, "--out", str(tmp_path / script), "--trials", "-1"], capsys)
        assert code == 2 and "--trials must be a whole number >= 0" in one_line_error(err), script
        assert not (tmp_path / script).exists()  # before: evaluate_router.py claimed the folder with trials -1


@pytest.mark.parametrize("option", [["--max-tokens", "9"], ["--threshold", "0.5"], ["--price", "0.1"]])
def test_a_forced_scale_with_a_routing_option_is_refused(option, capsys, tmp_path):
    from adaptive.model import check_generation_options

    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    argv = ["--model", str(TINY_M3), "--predictor", str(TINY_M3.parent / "tiny-m3-router"), "--image", str(image),
            "--question", "what color is the background ?", "--scale", "144", *option]  # fmt: skip
    code, err = run_script("ask", argv, capsys)
    name = option[0][2:].replace("-", "_")
    assert code == 2 and f"scale=144 forces a scale, so the router's {name} would be ignored" in one_line_error(err)
    with pytest.raises(ValueError, match="forces a scale"):  # AdaptiveM3.generate asks the same
        check_generation_options(type("Config", (), {"grid_tokens": 576})(), scale=144, **{name: float(option[1])})


def test_ctrl_c_in_a_script_is_one_line_and_exit_code_130(capsys, monkeypatch):
    from m3.cli import user_errors

    monkeypatch.delenv("M3_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info, user_errors():
        raise KeyboardInterrupt  # before: Python's traceback of wherever training was (exit 1)
    assert exit_info.value.code == 130 and capsys.readouterr().err == "interrupted (Ctrl-C)\n"
    monkeypatch.setenv("M3_TRACEBACK", "1")
    with pytest.raises(KeyboardInterrupt), user_errors():
        raise KeyboardInterrupt
