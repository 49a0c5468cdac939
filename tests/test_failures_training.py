"""Training failure behaviour: a used output folder, resuming another run, NaN, bad images, --save_steps 0, launches
that accelerate would not run as asked."""

import json
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

import m3.training
from m3.data.granularity import write_split
from m3.data.llava import BadImageError
from m3.training import LaunchError, check_launch, train

from .damage import one_line_error, run_script
from .test_training import tiny_run


@pytest.fixture(scope="module")
def data_6(tmp_path_factory):
    """A granularity train split of 6 images (24 questions) shared by the runs below."""
    return write_split(tmp_path_factory.mktemp("data"), "train", num_images=6, seed=0)


def run(tmp_path, data, name="run", **overrides):
    settings = dict(data_path=str(data), generate_data=False, max_steps=4, save_steps=2, save_total_limit=2)
    return tiny_run(tmp_path, name, **{**settings, **overrides})


def weights(folder):
    return load_file(folder / "model.safetensors")


def test_a_used_output_folder_is_refused_without_resume_and_overwrite_starts_afresh(tmp_path, data_6):
    first = weights(train(run(tmp_path, data_6)))
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        train(run(tmp_path, data_6))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    again = weights(train(run(tmp_path, data_6, overwrite=True)))
    assert all(torch.equal(first[key], again[key]) for key in first)  # the same seed: the same run
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))


def test_resume_refuses_another_run_and_a_missing_checkpoint(tmp_path, data_6, capsys):
    train(run(tmp_path, data_6, stop_after_steps=2))
    with pytest.raises(ValueError, match="batch_size: 4 there, 2 now"):
        train(run(tmp_path, data_6, batch_size=2, resume=True))
    other = write_split(tmp_path / "other", "train", num_images=5, seed=1)
    with pytest.raises(ValueError, match="data"):
        train(run(tmp_path, other, resume=True))
    with pytest.raises(ValueError, match="scales"):
        train(run(tmp_path, data_6, scales="1,9", resume=True))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(run(tmp_path, data_6, name="never-trained", resume=True))
    capsys.readouterr()
    train(run(tmp_path, data_6, resume=True))
    out = capsys.readouterr().out
    assert "resuming from" in out and "step 2" in out


def test_save_steps_zero_means_no_periodic_checkpoints(tmp_path, data_6):
    output = train(run(tmp_path, data_6, save_steps=0, max_steps=2))
    assert (output / "model.safetensors").exists() and not (output / "checkpoints").exists()


def test_a_non_finite_loss_stops_training_and_nothing_non_finite_is_saved(tmp_path, data_6):
    with pytest.raises(ValueError, match="not finite.*learning_rate"):
        train(run(tmp_path, data_6, learning_rate=1e6, save_steps=1, max_steps=6))
    assert not (tmp_path / "run" / "model.safetensors").exists()
    for checkpoint in (tmp_path / "run" / "checkpoints").glob("step-*"):
        for tensor in load_file(checkpoint / "model.safetensors").values():
            assert torch.isfinite(tensor).all(), checkpoint


def test_every_training_image_is_checked_before_the_model_is_built(tmp_path, data_6, monkeypatch):
    records = json.loads(data_6.read_text())
    records[-1]["image"] = "images/train/missing.png"  # the last batch: reached hours in on a real dataset
    bad = data_6.parent / "bad.json"
    bad.write_text(json.dumps(records))
    built = []
    original = m3.training.build_model_and_processor
    monkeypatch.setattr(m3.training, "build_model_and_processor", lambda c: built.append(1) or original(c))
    with pytest.raises(BadImageError, match="missing.png"):
        train(run(tmp_path, bad, max_steps=1))
    assert built == []
    output = train(run(tmp_path, bad, name="skipping", max_steps=1, skip_bad_images=True))
    assert (output / "model.safetensors").exists()


def test_train_script_gives_one_line_errors(tmp_path, data_6, capsys):
    args = ["--data_path", str(data_6), "--generate_data", "false", "--output_dir", str(tmp_path / "x")]
    args += ["--max_steps", "1", "--eval_steps", "0", "--tiny_hidden_size", "32"]
    code, err = run_script("train_m3", [*args, "--scales", "9,9"], capsys)
    assert code == 2 and "9" in one_line_error(err)
    code, err = run_script("train_m3", [*args, "--save_steps", "-1"], capsys)
    assert code == 2 and "save_steps" in one_line_error(err)


def test_launches_accelerate_would_not_run_as_asked_are_refused():
    """What accelerate makes of launches on a CPU machine (tests/test_multiprocess.py launches them for real)."""
    alone = SimpleNamespace(num_processes=1, distributed_type=DistributedType.NO)
    data_parallel = SimpleNamespace(num_processes=2, distributed_type=DistributedType.MULTI_CPU)
    # torchrun without ACCELERATE_USE_CPU=true, or the GPU configs: each process alone, separate copies
    with pytest.raises(LaunchError, match="2 processes were launched, but accelerate runs each of them alone"):
        check_launch(alone, {"WORLD_SIZE": "2"})
    for flag, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")):
        with pytest.raises(LaunchError, match=f"{name} was asked for .{flag}., but accelerate runs MULTI_CPU"):
            check_launch(data_parallel, {"WORLD_SIZE": "2", "ACCELERATE_USE_CPU": "true", flag: "true"})
    check_launch(data_parallel, {"WORLD_SIZE": "2", "ACCELERATE_USE_CPU": "true", "ACCELERATE_USE_FSDP": "false"})
    check_launch(SimpleNamespace(num_processes=2, distributed_type=DistributedType.FSDP),
                 {"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true"})  # fmt: skip
    check_launch(alone, {})  # one plain process
