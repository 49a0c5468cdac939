"""Many processes on CPU, launched the way docs/training.md tells users to: ``ACCELERATE_USE_CPU=true torchrun
--nproc_per_node 2 scripts/...`` over gloo. Each test starts real processes (about 10 s of imports each), so they
carry the ``multiprocess`` marker: the default suite leaves them out, ``python -m pytest -m multiprocess`` runs them
(``.ci/run`` does).

Checked: 2-process data-parallel training saves exactly the weights of 1 process with gradient accumulation over the
same global batch, and a 2-process run stopped and resumed ends where an uninterrupted one does; FSDP and the shipped
GPU configs either run and agree, or are refused loudly (never trained as separate copies); a 2-process oracle build
writes the rows of a 1-process one, and a build whose process was killed finishes on rerun without duplicates."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from m3.data.granularity import VOCABULARY, write_split
from m3.processing import M3Processor
from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model
from m3.training import ResumeMismatchError, TrainConfig, train
from oracle_data import build_oracle, compare_oracles, load_oracle, read_manifest

pytestmark = pytest.mark.multiprocess

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "scripts" / "train_m3.py"
ORACLE_SCRIPT = REPO / "scripts" / "build_oracle.py"
CONFIGS = REPO / "configs" / "accelerate"
STEPS, BATCH = 4, 2  # optimizer steps; records per process and step
LAUNCH_TIMEOUT = 240


# ----------------------------------------------------------------------------------------------------
# launching


def free_port() -> int:
    """A port nobody listens on now: each launch gets its own rendezvous, so tests may run beside others."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_env(**extra: str) -> dict[str, str]:
    """This checkout first on the path, one thread per process, CPU processes joined by accelerate (gloo)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", **extra}


def without_cpu_flag() -> dict[str, str]:
    return {name: value for name, value in launch_env().items() if name != "ACCELERATE_USE_CPU"}


def torchrun(script: Path, args: list[str], nproc: int = 2) -> list[str]:
    """``torchrun --nproc_per_node N script ...`` of this interpreter, on a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), str(script), *args]  # fmt: skip


def run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, env=env or launch_env(), capture_output=True, text=True, cwd=REPO, timeout=LAUNCH_TIMEOUT
    )


def check_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-4000:]


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


# ----------------------------------------------------------------------------------------------------
# training


def train_settings(data: Path, out: Path, **overrides) -> dict:
    settings = dict(
        output_dir=str(out), data_path=str(data), generate_data=False, eval_data_path=None, eval_steps=0,
        tiny_hidden_size=32, batch_size=BATCH, max_steps=STEPS, learning_rate=3e-3, warmup_ratio=0.0,
        logging_steps=1, save_steps=0, seed=0, num_threads=1,
    )  # fmt: skip
    settings.update(overrides)
    return settings


def as_flags(settings: dict) -> list[str]:
    return [part for key, value in settings.items() if value is not None for part in (f"--{key}", str(value))]


def max_difference(first: Path, second: Path) -> float:
    """Largest absolute difference between the saved weights of two runs (the same tensor names in both)."""
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    path = write_split(tmp_path_factory.mktemp("data"), "train", num_images=8, seed=0)
    assert len(json.loads(path.read_text())) >= 2 * BATCH * STEPS  # one epoch holds every step of the 2 processes
    return path


@pytest.fixture(scope="module")
def ddp_run(train_data, tmp_path_factory) -> Path:
    """2 processes x batch 2, 4 steps, uninterrupted."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    check_ok(run(torchrun(TRAIN_SCRIPT, as_flags(train_settings(train_data, out)))))
    return out


def test_two_processes_train_exactly_like_one_with_gradient_accumulation(ddp_run, train_data, tmp_path):
    accumulated = train(TrainConfig(**train_settings(train_data, tmp_path / "accum", gradient_accumulation_steps=2)))
    # the same global batch of 4: DDP averages two batch-2 gradients, accumulation adds two halves (exact in floats)
    assert max_difference(ddp_run, accumulated) == 0.0
    # what separate copies would train (each process on every batch): a batch of 2 per step
    copies = train(TrainConfig(**train_settings(train_data, tmp_path / "copies")))
    assert max_difference(ddp_run, copies) > 1e-4
    summary = json.loads((ddp_run / "train_summary.json").read_text())
    assert summary["steps"] == STEPS and [row["step"] for row in summary["history"]] == list(range(1, STEPS + 1))


def test_two_processes_stopped_and_resumed_end_with_the_uninterrupted_weights(ddp_run, train_data, tmp_path):
    out = tmp_path / "resumed"
    check_ok(run(torchrun(TRAIN_SCRIPT, as_flags(train_settings(train_data, out, stop_after_steps=2)))))
    assert not (out / "model.safetensors").exists()  # stopped as if killed: only a checkpoint
    state = json.loads((out / "checkpoints" / "step-0000002" / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["run"]["num_processes"] == 2
    with pytest.raises(ResumeMismatchError, match="num_processes: 2 there, 1 now"):  # a 2-process run in 1
        train(TrainConfig(**train_settings(train_data, out, resume=True)))

    resumed = run(torchrun(TRAIN_SCRIPT, [*as_flags(train_settings(train_data, out)), "--resume", "true"]))
    check_ok(resumed)
    assert "resuming from" in resumed.stdout + resumed.stderr
    full, again = load_file(ddp_run / "model.safetensors"), load_file(out / "model.safetensors")
    assert full.keys() == again.keys()
    for name in full:
        assert torch.equal(full[name], again[name]), name


def test_fsdp_through_accelerate_on_cpu_trains_like_one_process_or_is_refused(train_data, tmp_path):
    """FSDP as accelerate's launcher asks for it (ACCELERATE_USE_FSDP and the FSDP_* settings of
    configs/accelerate/fsdp.yaml, full state dict, float32), on CPU processes."""
    fsdp = dict(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2", FSDP_AUTO_WRAP_POLICY="TRANSFORMER_BASED_WRAP",
                FSDP_TRANSFORMER_CLS_TO_WRAP="LlamaDecoderLayer,CLIPEncoderLayer", FSDP_RESHARD_AFTER_FORWARD="true",
                FSDP_STATE_DICT_TYPE="FULL_STATE_DICT")  # fmt: skip
    out = tmp_path / "fsdp"
    result = run(torchrun(TRAIN_SCRIPT, as_flags(train_settings(train_data, out))), launch_env(**fsdp))
    refused = [line for line in error_lines(result) if "FSDP was asked for" in line]
    if refused:
        assert result.returncode != 0 and not out.exists()  # refused before anything was written
        import accelerate

        pytest.skip(
            f"accelerate {accelerate.__version__} enables FSDP only on GPUs: on CPU processes it runs MULTI_CPU "
            "data-parallel instead, which training refuses (LaunchError)"
        )
    check_ok(result)
    accumulated = train(TrainConfig(**train_settings(train_data, tmp_path / "accum", gradient_accumulation_steps=2)))
    assert max_difference(out, accumulated) < 1e-6


@pytest.mark.parametrize("config", ["ddp.yaml", "fsdp.yaml", "deepspeed_zero3.yaml"])
def test_a_shipped_gpu_config_on_a_cpu_machine_fails_loudly_and_trains_nothing(config, train_data, tmp_path):
    """Without a GPU, accelerate would start the DDP and FSDP configs' processes each on its own (separate copies
    racing on one output_dir); training refuses them. The ZeRO-3 config needs DeepSpeed, which is not installed."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the shipped configs may run here")
    deepspeed = config.startswith("deepspeed")
    if deepspeed:
        try:
            import deepspeed  # noqa: F401

            pytest.skip("DeepSpeed is installed: without GPUs, what it does here is DeepSpeed's to say")
        except ImportError:
            pass
    out = tmp_path / "run"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
               "--num_processes", "2", "--main_process_port", str(free_port()), str(TRAIN_SCRIPT),
               *as_flags(train_settings(train_data, out))]  # fmt: skip
    result = run(command, without_cpu_flag())  # as a user would launch them
    assert result.returncode != 0
    if deepspeed:
        assert "DeepSpeed is not installed" in result.stderr
    else:
        errors = error_lines(result)
        assert errors and all("2 processes were launched, but accelerate runs each of them alone" in e for e in errors)
    assert not out.exists()  # nothing written: no copies, no checkpoints


@pytest.mark.parametrize("config", ["ddp.yaml", "fsdp.yaml", "deepspeed_zero3.yaml"])
def test_a_shipped_gpu_config_on_two_gpus_trains_like_one_process(config, train_data, tmp_path):
    """The shipped configs as users launch them (float32 here, for an equality check). Never run on our machines."""
    if torch.cuda.device_count() < 2:
        reason = f"needs 2 GPUs (this machine has {torch.cuda.device_count()})"
        if config.startswith("deepspeed"):
            reason = f"DeepSpeed is not installed here (pip install deepspeed) and ZeRO-3 {reason}"
        pytest.skip(f"{config}: {reason}; on CPU the torchrun data-parallel tests above run")
    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install deepspeed)")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
               "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
               str(TRAIN_SCRIPT), *as_flags(train_settings(train_data, out))]  # fmt: skip
    check_ok(run(command, without_cpu_flag()))
    accumulated = train(TrainConfig(**train_settings(train_data, tmp_path / "accum", gradient_accumulation_steps=2)))
    assert max_difference(out, accumulated) < 1e-5


# ----------------------------------------------------------------------------------------------------
# oracle builds


@pytest.fixture(scope="module")
def oracle_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random model and a granularity split of 8 images."""
    root = tmp_path_factory.mktemp("oracle-inputs")
    tokenizer = build_tiny_tokenizer(extra_words=VOCABULARY)
    model = tiny_model("llava", tokenizer=tokenizer, hidden_size=32)
    model.save_pretrained(root / "model")
    M3Processor(tiny_image_processor("llava"), tokenizer, model.config).save_pretrained(root / "model")
    return root / "model", write_split(root / "data", "test", num_images=8, seed=0)


def oracle_flags(model: Path, data: Path, out: Path) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--out", str(out), "--shard-size", "2", "--batch-size", "2",
            "--max-new-tokens", "4", "--threads", "1", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def one_process_oracle(oracle_inputs, tmp_path_factory) -> Path:
    model, data = oracle_inputs
    out = tmp_path_factory.mktemp("oracle") / "one"
    build_oracle(model, data, out, shard_size=2, batch_size=2, max_new_tokens=4, progress=False)
    return out


def check_same_rows(out: Path, reference: Path) -> None:
    """Row for row: ids, answers, scores and labels equal; confidences, embeddings, hidden states to 1e-5 (a
    process's earlier batches can move the last bits: 5e-7 on a confidence was seen)."""
    differing, largest = compare_oracles(out, reference)
    assert differing == [] and largest < 1e-5, (differing[:5], largest)


def test_two_process_oracle_build_writes_the_rows_of_one_process(oracle_inputs, one_process_oracle, tmp_path):
    out = tmp_path / "two"
    check_ok(run(torchrun(ORACLE_SCRIPT, oracle_flags(*oracle_inputs, out))))
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["build"]["num_processes"] == 2 and manifest["build"]["seconds"] > 0
    questions = len(json.loads(oracle_inputs[1].read_text()))
    assert manifest["num_rows"] == load_oracle(one_process_oracle).num_rows == questions
    check_same_rows(out, one_process_oracle)


def test_an_oracle_build_with_a_killed_process_finishes_on_rerun_without_duplicates(
    oracle_inputs, one_process_oracle, tmp_path
):
    out = tmp_path / "killed"
    command = torchrun(ORACLE_SCRIPT, oracle_flags(*oracle_inputs, out))
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        launcher = subprocess.Popen(command, env=launch_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not list((out / "shards").glob("shard-*.parquet")):
            assert launcher.poll() is None, f"the build ended before its first shard: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no shard in time"
            time.sleep(0.005)
        workers = [p for p in psutil.Process(launcher.pid).children() if str(ORACLE_SCRIPT) in " ".join(p.cmdline())]
        victim = next(p for p in workers if p.environ().get("RANK") == "1")
        os.kill(victim.pid, signal.SIGKILL)  # one process dies; torchrun then stops the other
        launcher.wait(timeout=LAUNCH_TIMEOUT)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    written = {path: path.stat().st_mtime_ns for path in (out / "shards").glob("shard-*.parquet")}
    manifest = read_manifest(out)
    assert 1 <= len(written) < manifest["num_shards"] and not manifest["complete"], "killed too late"

    check_ok(run(torchrun(ORACLE_SCRIPT, oracle_flags(*oracle_inputs, out))))  # the same command, rerun
    table = load_oracle(out)  # refuses duplicated sample ids, and shards that disagree with the manifest
    ids = table.column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == read_manifest(out)["num_rows"]
    check_same_rows(out, one_process_oracle)
    for path, mtime in written.items():  # shards written before the kill were kept, not redone
        assert path.stat().st_mtime_ns == mtime
