"""The benchmarks in benchmarks/: the shared timing helper on hand-made numbers, and every benchmark end to end on
tiny models. Only structure and behaviour are asserted (losses agree, counts, report formats, positive times):
speed ratios belong to the benchmarks' output, never to the test suite."""

import importlib
import math
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from m3.data.granularity import FAMILIES

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
if str(BENCHMARKS) not in sys.path:  # benchmarks/ is a folder of scripts that import each other, not a package
    sys.path.insert(0, str(BENCHMARKS))

timing = importlib.import_module("timing")
SCRIPTS = ("train_step", "oracle_build", "router_cost", "adaptive_latency", "gpu_check", "distributed")


# ----------------------------------------------------------------------------------------------------
# the timing helper


class FakeClock:
    """A clock that only the designs move: each design advances it by a known amount."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_interleave_alternates_designs_skips_warmups_and_records_outputs():
    clock, calls, syncs = FakeClock(), [], []

    def design(name, seconds):
        def run(index):
            calls.append((name, index))
            clock.now += seconds(index)
            return f"{name}{index}"

        return run

    timings = timing.interleave(
        {"a": design("a", lambda i: 1.0 + i), "b": design("b", lambda i: 10.0)},
        repeats=3,
        warmup=2,
        clock=clock,
        sync=lambda: syncs.append(clock.now),
    )
    assert calls == [(name, index) for index in range(5) for name in "ab"]  # a, b, a, b, ... warm-ups first
    assert timings.seconds == {"a": [3.0, 4.0, 5.0], "b": [10.0, 10.0, 10.0]}  # warm-up rounds 0, 1 not recorded
    assert timings.outputs == {"a": ["a2", "a3", "a4"], "b": ["b2", "b3", "b4"]}
    assert len(syncs) == 2 * len(calls)  # before starting and before stopping the clock, every call
    assert timings.ratio("b", "a") == pytest.approx(10.0 / 4.0)


def test_timings_statistics_on_hand_made_values():
    timings = timing.Timings(seconds={"a": [4.0, 1.0, 10.0, 2.0, 3.0], "b": [1.0, 1.0, 1.0, 1.0, 5.0]})
    assert timings.quartiles("a") == (2.0, 3.0, 4.0)
    assert timings.median("a") == 3.0 and timings.iqr("a") == 2.0  # the outlier moves neither
    assert timings.iqr("b") == 0.0 and timings.median("b") == 1.0
    assert timings.ratio("a", "b") == 3.0
    assert timing.quartiles([1.0, 2.0]) == (1.25, 1.5, 1.75)  # linear interpolation
    assert timings.per_round_sum(["a", "b"]) == [5.0, 2.0, 11.0, 3.0, 8.0]
    timings.add("c", 0.5, output=7)
    assert timings.seconds["c"] == [0.5] and timings.outputs["c"] == [7]
    with pytest.raises(ValueError, match="same rounds"):
        timings.per_round_sum(["a", "c"])
    with pytest.raises(ValueError, match="no values"):
        timing.quartiles([])


def test_interleave_refuses_bad_arguments_and_cpu_needs_no_sync():
    with pytest.raises(ValueError, match="repeats"):
        timing.interleave({"a": lambda i: None}, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        timing.interleave({"a": lambda i: None}, repeats=1, warmup=-1)
    with pytest.raises(ValueError, match="no designs"):
        timing.interleave({}, repeats=1)
    assert timing.device_sync("cpu") is None
    assert timing.peak_memory_gib(lambda: None, "cpu") is None
    assert "CPU" in timing.machine("cpu") and "torch" in timing.machine("cpu")


# ----------------------------------------------------------------------------------------------------
# the layout: benchmarks beside the library, never inside it


def test_the_library_holds_and_imports_no_benchmark_code():
    packages = ("m3", "oracle_data", "predictor", "routing_study", "adaptive")
    include = re.search(r"^include = \[(.*)\]$", (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert include is not None and "benchmarks" not in include.group(1)  # not an installed package
    names = "|".join(("benchmarks", "timing", *SCRIPTS))
    importing = re.compile(rf"^\s*(from|import)\s+({names})\b", re.MULTILINE)
    for package in packages:
        for path in (REPO / package).rglob("*.py"):
            assert "bench" not in path.name, path
            assert not importing.search(path.read_text()), f"{path} imports benchmark code"
    assert not list((REPO / "scripts").glob("bench*.py"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_benchmark_has_a_help(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(BENCHMARKS / f"{name}.py"), run_name="__main__")
    assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out


def test_a_benchmark_runs_as_a_script():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "train_step.py"), "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert "--family" in result.stdout


# ----------------------------------------------------------------------------------------------------
# train_step


def test_train_step_designs_agree_and_the_report_has_both():
    train_step = importlib.import_module("train_step")
    result = train_step.run_benchmark(config_name="tiny", family="llava", batch_size=2, repeats=1, warmup=0)

    assert set(result.timings.seconds) == {"ours", "official"}
    for design in ("ours", "official"):
        assert len(result.timings.seconds[design]) == 1 and result.timings.seconds[design][0] > 0
    assert math.isfinite(result.ratio) and result.ratio > 0
    assert result.setup["scales"] == list(train_step.DEFAULT_SCALES) and result.setup["repeats"] == 1
    assert result.peak_memory_gib == {"ours": None, "official": None}  # CPU: no CUDA memory figure

    agreement = result.agreement
    scales = train_step.DEFAULT_SCALES
    assert set(agreement.per_scale_ours) == set(agreement.per_scale_official) == set(scales)
    assert math.isfinite(agreement.loss_ours) and agreement.loss_ours > 0
    assert abs(agreement.loss_ours - agreement.loss_official) < 1e-5
    for scale in scales:
        assert abs(agreement.per_scale_ours[scale] - agreement.per_scale_official[scale]) < 1e-5
    # the training loss is the plain mean of the per-scale losses
    assert abs(agreement.loss_ours - sum(agreement.per_scale_ours.values()) / len(scales)) < 1e-5
    assert agreement.same_grad_params and agreement.num_grads > 0 and agreement.max_grad_diff < 1e-4

    report = train_step.format_report(result)
    assert "ratio official / ours" in report and "| ours (1 vision pass, pooled 5 ways) |" in report


def test_train_step_batch_comes_from_the_collator_and_a_gap_is_refused():
    train_step = importlib.import_module("train_step")
    model, processor = train_step.benchmark_model("tiny", "llava_next")
    batch = train_step.benchmark_batch(processor, batch_size=2)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "pixel_values", "image_sizes"}
    image_token = model.config.image_token_id
    assert (batch["input_ids"] == image_token).sum(1).tolist() == [1, 1]  # compact: one image token per image
    for row, (_, answer) in enumerate(train_step.QA_PAIRS[:2]):
        labelled = batch["labels"][row][batch["labels"][row] != -100]
        assert processor.tokenizer.decode(labelled) == f"{answer} </s>"  # the answer and its EOS, nothing else
    with pytest.raises(RuntimeError, match="disagree"):
        train_step.check_designs_agree(model, batch, (1, 9), loss_atol=-1.0)
    with pytest.raises(ValueError, match="unknown config"):
        train_step.benchmark_model("7b")


# ----------------------------------------------------------------------------------------------------
# oracle_build


def test_oracle_build_benchmark_smoke(tmp_path):
    oracle_build = importlib.import_module("oracle_build")
    result = oracle_build.run_oracle_benchmark(
        num_images=1, hidden_size=32, batch_size=4, max_new_tokens=2, repeats=1, work_dir=tmp_path
    )
    seconds = result.timings.seconds
    assert set(seconds) == set(oracle_build.DESIGNS) and all(len(times) == 1 for times in seconds.values())
    assert all(times[0] > 0 for times in seconds.values())
    questions = len(FAMILIES)  # one image, a question per family
    assert result.setup["samples"] == questions and result.total_answers == questions * 5
    assert result.agreeing_answers == questions  # the oracle's full-scale answers are the plain pass's
    report = oracle_build.format_report(result)
    assert "oracle / plain" in report and "naive / oracle" in report and "ended with EOS" in report
    assert list(tmp_path.iterdir()) == []  # the temporary data, model and oracle folders are removed


# ----------------------------------------------------------------------------------------------------
# distributed


@pytest.mark.multiprocess
def test_distributed_benchmark_launches_every_design_and_they_agree(tmp_path):
    distributed = importlib.import_module("distributed")
    result = distributed.run_distributed_benchmark(
        train_images=4, steps=3, warmup_steps=1, batch_size=1, hidden_size=32, oracle_images=2, oracle_batch_size=2,
        max_new_tokens=2, repeats=1, work_dir=tmp_path,
    )  # fmt: skip
    names = ["train, 1 process", "train, 2 processes", "oracle, 1 process", "oracle, 2 processes"]
    assert list(result.recorded.seconds) == list(result.launches.seconds) == names
    assert all(len(result.recorded.seconds[name]) == 1 and result.recorded.seconds[name][0] > 0 for name in names)
    # a recorded figure leaves out the interpreter start and imports that the launch wall time includes
    assert all(result.recorded.median(name) < result.launches.median(name) for name in names)
    assert result.max_parameter_difference == 0.0  # 2 processes = 1 process with 2 accumulation steps
    assert result.oracle_rows == 2 * len(FAMILIES) and result.oracle_differing == []
    assert result.oracle_float_difference < 1e-5
    assert all(math.isfinite(result.speedup(task)) and result.speedup(task) > 0 for task in ("train", "oracle"))
    report = distributed.format_report(result)
    assert "speed-up with 2 processes" in report and "| oracle, 2 processes |" in report
    assert list(tmp_path.iterdir()) == []  # the data, model, runs and oracles are removed
    with pytest.raises(ValueError, match="exceed warmup_steps"):
        distributed.run_distributed_benchmark(steps=2, warmup_steps=2)


# ----------------------------------------------------------------------------------------------------
# router_cost


def test_router_cost_times_routing_against_generate(tmp_path, capsys):
    from m3.data.granularity import VOCABULARY, write_split
    from m3.processing import M3Processor
    from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model
    from oracle_data import build_oracle
    from predictor import LGBMScalePredictor, MLPScalePredictor

    router_cost = importlib.import_module("router_cost")
    tokenizer = build_tiny_tokenizer(extra_words=VOCABULARY)
    model = tiny_model("llava", tokenizer=tokenizer, hidden_size=32)
    model.save_pretrained(tmp_path / "model")
    M3Processor(tiny_image_processor("llava"), tokenizer, model.config).save_pretrained(tmp_path / "model")
    split = write_split(tmp_path / "data", "test", num_images=3, seed=0)
    oracle = tmp_path / "oracle"
    build_oracle(tmp_path / "model", split, oracle, max_new_tokens=2, progress=False)
    mlp = MLPScalePredictor(max_epochs=2, validation_fraction=0).fit(oracle)
    mlp.save_pretrained(tmp_path / "mlp")
    lgbm = LGBMScalePredictor(n_estimators=3, min_child_samples=2, validation_fraction=0).fit(oracle)

    result = router_cost.bench_router(tmp_path / "model", oracle, {"mlp": tmp_path / "mlp", "lgbm": lgbm}, 3, 1)
    t = result.timings
    assert list(t.seconds) == ["image decode", "image features", "mlp features", "mlp forward", "lgbm features",
                               "lgbm forward", "generate"]  # fmt: skip
    assert all(len(seconds) == 3 and min(seconds) > 0 for seconds in t.seconds.values())  # 3 queries x 1 repeat
    assert result.setup["uses_image"] == {"mlp": False, "lgbm": True}
    # lgbm's routing adds its image features, features and forward round by round: more than its forward alone
    assert result.routing_seconds("lgbm") > t.median("lgbm forward")
    assert result.routing_seconds("mlp") == pytest.approx(
        timing.quartiles(t.per_round_sum(["mlp features", "mlp forward"]))[1]
    )
    assert set(result.own_loop.seconds) == {"mlp routing", "lgbm routing", "generate"}
    assert all(len(seconds) == 3 for seconds in result.own_loop.seconds.values())
    for name in ("mlp", "lgbm"):
        for own_loop in (False, True):
            assert math.isfinite(result.ratio(name, own_loop)) and result.ratio(name, own_loop) > 0
    text = router_cost.format_bench(result)
    assert "| one generate at scale 576" in text and "/ generate (own loop)" in text

    argv = ["--model", str(tmp_path / "model"), "--oracle", str(oracle), "--predictor", str(tmp_path / "mlp"),
            "--num-queries", "2", "--repeats", "1"]  # fmt: skip
    router_cost.main(argv)
    assert "| mlp (MLPScalePredictor(target='correct'), no image features)" in capsys.readouterr().out


def test_router_cost_counts_a_probe_predictors_probe(tmp_path):
    from m3.data.granularity import VOCABULARY, write_split
    from m3.processing import M3Processor
    from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model
    from oracle_data import build_oracle
    from predictor import LGBMScalePredictor

    router_cost = importlib.import_module("router_cost")
    tokenizer = build_tiny_tokenizer(extra_words=VOCABULARY)
    model = tiny_model("llava", tokenizer=tokenizer, hidden_size=32)
    model.save_pretrained(tmp_path / "model")
    M3Processor(tiny_image_processor("llava"), tokenizer, model.config).save_pretrained(tmp_path / "model")
    oracle = tmp_path / "oracle"
    build_oracle(
        tmp_path / "model", write_split(tmp_path / "data", "test", 2, 0), oracle, max_new_tokens=2, progress=False
    )
    probe = LGBMScalePredictor(n_estimators=3, min_child_samples=2, validation_fraction=0, probe="hidden").fit(oracle)
    result = router_cost.bench_router(tmp_path / "model", oracle, {"probe": probe}, 2, 1)
    t = result.timings
    assert list(t.seconds) == ["image decode", "image features", "probe vision", "probe at scale 1", "probe features",
                               "probe forward", "generate"]  # fmt: skip
    steps = ["image features", "probe at scale 1", "probe features", "probe forward"]
    assert result.routing_seconds("probe") == pytest.approx(timing.quartiles(t.per_round_sum(steps))[1])
    assert result.routing_seconds("probe") > t.median("probe at scale 1")  # the probe's LLM pass is counted
    assert "incl. its probe at scale 1" in router_cost.format_bench(result)


# ----------------------------------------------------------------------------------------------------
# adaptive_latency


@pytest.fixture(scope="module")
def adaptive(tmp_path_factory):
    from adaptive import AdaptiveM3
    from m3.processing import M3Processor
    from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model
    from oracle_data.synthetic import write_synthetic_oracle
    from predictor import MLPScalePredictor

    oracle = write_synthetic_oracle(tmp_path_factory.mktemp("oracle"), num_images=40, embedding_dim=32)
    predictor = MLPScalePredictor(hidden_sizes=(16,), max_epochs=5, use_image=True).fit(oracle)
    tokenizer = build_tiny_tokenizer()
    model = tiny_model("llava", tokenizer=tokenizer, hidden_size=32)
    model.generation_config.max_new_tokens = None
    return AdaptiveM3(model, M3Processor(tiny_image_processor("llava"), tokenizer, model.config), predictor)


def test_adaptive_latency_times_every_path_on_every_query(adaptive):
    import numpy as np

    adaptive_latency = importlib.import_module("adaptive_latency")
    rng = np.random.default_rng(4)
    pictures = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(4)]
    questions = ["where is the big shape ?"] * 4
    timings = adaptive_latency.measure_latency(adaptive, pictures, questions, [1, 9, 36, 576], warmup=1)
    paths = ["adaptive", "routing (features + predictor)", "always 576", "oracle scale"]
    assert list(timings.seconds) == paths and all(len(timings.seconds[p]) == 3 for p in paths)
    assert timings.outputs["always 576"] == [576] * 3 and timings.outputs["oracle scale"] == [9, 36, 576]
    assert set(timings.outputs["adaptive"]) <= set(adaptive.scales)  # visual tokens of the scale it chose
    assert "| always 576 | 3 |" in adaptive_latency.format_table(timings)
    assert "routing overhead:" in adaptive_latency.format_summary(timings, 576)
    with pytest.raises(ValueError, match="none to time"):
        adaptive_latency.measure_latency(adaptive, pictures[:2], questions[:2], warmup=2)


# ----------------------------------------------------------------------------------------------------
# gpu_check


def test_gpu_check_refuses_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: gpu_check would run")
    result = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [importlib.import_module("gpu_check").NO_GPU]


def test_gpu_check_dry_run_runs_every_section_on_tiny_models(capsys):
    gpu_check = importlib.import_module("gpu_check")
    assert gpu_check.main(["--device", "cpu", "--tiny"]) == 0
    out = capsys.readouterr().out
    for header in ("## a. training step", "## b. prefill latency", "## c. AdaptiveM3 routing share"):
        assert header in out
    assert "FAILED" not in out and "all passed" in out
    assert "check (float32)" in out and "dtype=float32" in out  # the dry run times in float32 (bf16 on a GPU)
    assert all(f"\n| {scale} | " in out for scale in (1, 9, 36, 144, 576))  # one prefill row per scale
    assert "routing overhead:" in out
    with pytest.raises(SystemExit):  # the full-size models are refused on the CPU
        gpu_check.main(["--device", "cpu"])
