"""The lmms-eval plugin, end to end through lmms-eval's own CLI: its accuracy per scale equals the oracle's.

lmms-eval is an optional extra (``pip install --no-deps lmms-eval==0.7.3 && pip install -e ".[lmms-eval]"``): without
it these tests skip, naming the install command; CI installs it and sets M3_REQUIRE_EXTRAS=1, so there they are
required (``tests/extras.py``).
"""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from m3.data.granularity import FAMILIES, write_split
from oracle_data import build_oracle, load_oracle

from . import extras, hf_layouts
from .lmms_eval_tasks import probe_requests

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "checkpoints" / "tiny-m3"
SCALES = [1, 9, 36, 144, 576]

extras.need("m3_lmms_eval.models", "lmms-eval")  # skips the module without the extra (fails in CI)
import lmms_eval  # noqa: E402


def offline_env(tmp: Path) -> dict:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp / "hf-cache"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }


def fit_adaptive(oracle_dir: Path, out: Path) -> Path:
    from adaptive import AdaptiveM3
    from m3.loading import load_m3_model
    from m3.processing import M3Processor
    from predictor import MLPScalePredictor

    predictor = MLPScalePredictor(hidden_sizes=(16,), max_epochs=20, patience=20, seed=0).fit(oracle_dir)
    model = load_m3_model(MODEL)
    processor = M3Processor.from_pretrained(MODEL, config=model.config)
    return AdaptiveM3(model, processor, predictor, threshold=0.6).save_pretrained(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The granularity test slice (4 images, 16 questions), its oracle, an AdaptiveM3 folder, and three lmms-eval
    CLI runs on a local task over the slice (scales 9 and 576, and routed), run side by side."""
    from m3_lmms_eval.tasks import write_llava_task

    root = tmp_path_factory.mktemp("lmms-eval")
    split_json = write_split(root / "granularity", "test", num_images=4, seed=0)
    tasks = root / "tasks"
    write_llava_task(split_json, tasks, task="m3_granularity", max_new_tokens=8)
    oracle = root / "oracle"
    build_oracle(MODEL, split_json, oracle, batch_size=16, max_new_tokens=8, progress=False)
    adaptive_dir = fit_adaptive(oracle, root / "adaptive")
    commands = {
        9: ["--model", "m3", "--model_args", f"pretrained={MODEL},scale=9"],
        576: ["--model", "m3", "--model_args", f"pretrained={MODEL},scale=576"],
        "routed": ["--model", "m3_adaptive", "--model_args", f"pretrained={adaptive_dir}"],
    }
    processes = {}
    for name, model_args in commands.items():
        out = root / f"out-{name}"
        command = [sys.executable, "-m", "lmms_eval", *model_args, "--tasks", "m3_granularity",
                   "--include_path", str(tasks), "--batch_size", "16", "--device", "cpu", "--output_path", str(out),
                   "--log_samples"]  # fmt: skip
        log = open(root / f"log-{name}.txt", "w")  # closed when the process ends
        processes[name] = (subprocess.Popen(command, env=offline_env(root), stdout=log, stderr=log, cwd=root), out)
    results = {}
    for name, (process, out) in processes.items():
        assert process.wait(timeout=900) == 0, (root / f"log-{name}.txt").read_text()[-3000:]
        found = glob.glob(str(out / "**" / "*_results.json"), recursive=True)
        samples = glob.glob(str(out / "**" / "*_samples_m3_granularity.jsonl"), recursive=True)
        log = (root / f"log-{name}.txt").read_text()[-3000:]
        assert len(found) == 1 and len(samples) == 1, f"lmms-eval wrote no results (it exits 0 on failure):\n{log}"
        rows = [json.loads(line) for line in Path(samples[0]).read_text().splitlines()]
        results[name] = (json.loads(Path(found[0]).read_text()), sorted(rows, key=lambda row: row["doc_id"]))
    return load_oracle(oracle).to_pylist(), results, adaptive_dir


def test_lmms_eval_accuracy_per_scale_equals_the_oracle(runs):
    oracle, results, _ = runs
    assert len(oracle) == 4 * len(FAMILIES)
    for scale in (9, 576):
        summary, samples = results[scale]
        accuracy = summary["results"]["m3_granularity"]["exact_match,none"]
        assert accuracy == sum(row[f"score_{scale}"] for row in oracle) / len(oracle)
        assert [s["filtered_resps"] for s in samples] == [row[f"answer_{scale}"] for row in oracle]
        assert all(s["token_counts"][0]["visual_tokens"] == scale for s in samples)
    assert summary["config"]["model"] == "m3"


def test_routed_model_reports_its_visual_tokens_and_scores_as_the_oracle_at_them(runs):
    oracle, results, _ = runs
    summary, samples = results["routed"]
    chosen = [s["token_counts"][0]["scale"] for s in samples]
    assert set(chosen) <= set(SCALES)
    assert [s["token_counts"][0]["visual_tokens"] for s in samples] == chosen  # LLaVA-1.5: tokens = scale
    expected = [row[f"score_{scale}"] for row, scale in zip(oracle, chosen)]
    assert summary["results"]["m3_granularity"]["exact_match,none"] == sum(expected) / len(expected)
    assert [s["filtered_resps"] for s in samples] == [row[f"answer_{s}"] for row, s in zip(oracle, chosen)]


def _requests(split_json: Path, model, count: int, gen_kwargs: dict) -> list:
    """lmms-eval's generate_until requests for the first ``count`` records, as its evaluator builds them."""
    from lmms_eval.api.instance import Instance

    from m3_lmms_eval.tasks import llava_doc_to_text, llava_doc_to_visual

    docs = json.loads(split_json.read_text())[:count]
    model.task_dict = {"t": {"test": docs}}

    def visual(doc):
        return llava_doc_to_visual(doc, str(split_json.parent))

    requests = []
    for i, doc in enumerate(docs):
        args = (llava_doc_to_text(doc), gen_kwargs, visual, i, "t", "test")
        requests.append(Instance("generate_until", args, idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1}))
    return requests


def test_budget_caps_the_visual_tokens_and_bad_arguments_are_refused(runs, tmp_path):
    from m3_lmms_eval.models import M3, M3Adaptive, _truncate

    _, _, adaptive_dir = runs
    split_json = write_split(tmp_path / "data", "test", num_images=2, seed=1)
    capped = M3Adaptive(pretrained=str(adaptive_dir), budget="9", threshold="1.0", device="cpu")
    count = 2 * len(FAMILIES)
    answers = capped.generate_until(_requests(split_json, capped, count, {"max_new_tokens": 4}))
    assert [a.token_counts.visual_tokens for a in answers] == [9] * count  # threshold 1: the largest scale within 9
    eager = M3Adaptive(pretrained=str(adaptive_dir), threshold=0, device="cpu")
    answers = eager.generate_until(_requests(split_json, eager, 4, {"max_new_tokens": 4}))
    assert [a.token_counts.scale for a in answers] == [1] * 4 and len(eager.routing) == 4
    # the priced rule: a price above every gain per token answers at the smallest scale; not with a threshold
    cheap = M3Adaptive(pretrained=str(adaptive_dir), price="1000", device="cpu")
    answers = cheap.generate_until(_requests(split_json, cheap, 4, {"max_new_tokens": 4}))
    assert [a.token_counts.scale for a in answers] == [1] * 4
    costly = M3Adaptive(pretrained=str(adaptive_dir), price="0", device="cpu")  # price 0: the most probable scale
    answers = costly.generate_until(_requests(split_json, costly, 4, {"max_new_tokens": 4}))
    assert [a.token_counts.scale for a in answers] == [max(r["probabilities"], key=r["probabilities"].get)
                                                        for r in costly.routing]  # fmt: skip
    with pytest.raises(ValueError, match="not both"):
        M3Adaptive(pretrained=str(adaptive_dir), price="0.1", threshold="0.5", device="cpu")
    with pytest.raises(ValueError, match="price"):
        M3Adaptive(pretrained=str(adaptive_dir), price="-1", device="cpu")
    with pytest.raises(ValueError, match="not a valid scale|valid scales"):
        M3(pretrained=str(MODEL), scale=7)
    with pytest.raises(ValueError, match=r"unknown model arg\(s\) \['scales'\]"):
        M3(pretrained=str(MODEL), scales=9)
    with pytest.raises(NotImplementedError, match="single-turn"):
        capped.generate_until_multi_round([])
    assert _truncate(" red\n\nASSISTANT: blue", ["\n\n"]) == "red" and _truncate("a USER: b", "USER:") == "a"


def _task_kwargs(task_yaml: Path) -> dict:
    """The ``default`` prompt kwargs of an installed lmms-eval task yaml (its ``!function`` tags ignored)."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    config = yaml.load(task_yaml.read_text(), Loader=Loader)
    return config["lmms_eval_specific_kwargs"]["default"]


def test_layout_prompts_are_lmms_evals(tmp_path):
    """Our prompts, built from the layouts, equal what lmms-eval's own task functions build from the same rows."""
    import importlib

    from m3.data.hf import LAYOUTS, row_item

    tasks = Path(lmms_eval.__file__).parent / "tasks"
    cases = {
        "textvqa": ("textvqa.utils", "textvqa_doc_to_text", "textvqa/_default_template_textvqa_yaml"),
        "docvqa": ("docvqa.utils", "docvqa_doc_to_text", "docvqa/_default_template_docvqa_yaml"),
        "chartqa": ("chartqa.utils", "chartqa_doc_to_text", "chartqa/chartqa.yaml"),
        "pope": ("pope.utils", "pope_doc_to_text", "pope/pope.yaml"),
        "mmbench": ("mmbench.en_utils", "mmbench_doc_to_text", "mmbench/_default_template_mmbench_en_yaml"),
        "scienceqa": ("scienceqa.utils", "sqa_doc_to_text", "scienceqa/scienceqa_img.yaml"),
    }
    for layout, (module, function, task_yaml) in cases.items():
        doc_to_text = getattr(importlib.import_module(f"lmms_eval.tasks.{module}"), function)
        kwargs = _task_kwargs(tasks / task_yaml)
        columns = hf_layouts.columns(layout)
        for row in range(len(columns["question"])):
            doc = {name: values[row] for name, values in columns.items() if name != "image"}
            if layout == "scienceqa" and columns["image"][row] is None:
                continue
            ours = row_item(LAYOUTS[layout], doc, row, f"row {row}", image_id="x").prompt
            assert ours == doc_to_text(dict(doc), kwargs), (layout, row)


# ----------------------------------------------------------------------------------------------------
# lmms-eval requests as its evaluator builds them, on the tiny local docs of tests/lmms_eval_tasks.py


def test_routed_loglikelihood_and_generation_for_every_kind_of_doc(runs, tmp_path):
    """m3_adaptive scores a continuation at the scale it routes each image to (threshold 0: the smallest scale),
    as m3 scores it at that scale; text-only and two-image docs are answered; the missing image fails alone (a
    generation doc answers "", a loglikelihood doc stops the run: tests/test_lmms_eval_failures.py)."""
    from m3_lmms_eval.models import M3, M3Adaptive

    _, _, adaptive_dir = runs
    eager = M3Adaptive(pretrained=str(adaptive_dir), threshold=0, device="cpu", batch_size=8)
    fixed = M3(pretrained=str(MODEL), scale=1, device="cpu", batch_size=8)
    routed = eager.loglikelihood(probe_requests(eager, tmp_path, "loglikelihood", " red")[:-1])
    plain = fixed.loglikelihood(probe_requests(fixed, tmp_path, "loglikelihood", " red")[:-1])
    assert [r.token_counts.scale for r in routed] == [1, 1, 1, 1, None, 1]
    assert [r.text[0] for r in routed] == pytest.approx([r.text[0] for r in plain], rel=1e-5)
    answers = eager.generate_until(probe_requests(eager, tmp_path, "generate_until", {"max_new_tokens": 3}))
    assert [a.token_counts.scale for a in answers] == [1, 1, 1, 1, None, 1, None]
    assert [a.token_counts.visual_tokens for a in answers] == [1, 1, 1, 2, 0, 1, None]
    assert all(a.text for a in answers[:-1]) and answers[-1].text == ""


def test_generation_settings_reach_generate_as_llava_hf_reads_them(tmp_path, monkeypatch):
    """max_new_tokens defaults to 1024; temperature > 0 samples with top_p; greedy otherwise."""
    from m3_lmms_eval.models import M3

    model = M3(pretrained=str(MODEL), scale=9, device="cpu")
    seen = []
    original = model.model.generate

    def spy(*args, **kwargs):
        seen.append({key: kwargs.get(key) for key in ("max_new_tokens", "do_sample", "temperature", "top_p")})
        return original(*args, **{**kwargs, "max_new_tokens": 2})

    monkeypatch.setattr(model.model, "generate", spy)
    model.generate_until(probe_requests(model, tmp_path, "generate_until", {})[:1])
    model.generate_until(probe_requests(model, tmp_path, "generate_until", {"temperature": 0.7, "top_p": 0.9})[:1])
    model.generate_until(probe_requests(model, tmp_path, "generate_until", {"temperature": 0, "do_sample": False})[:1])
    assert seen == [
        {"max_new_tokens": 1024, "do_sample": False, "temperature": None, "top_p": None},
        {"max_new_tokens": 1024, "do_sample": True, "temperature": 0.7, "top_p": 0.9},
        {"max_new_tokens": 1024, "do_sample": False, "temperature": None, "top_p": None},
    ]


def test_auto_batch_size_halves_on_out_of_memory_and_answers_alike(tmp_path, monkeypatch):
    from m3_lmms_eval.models import M3

    single = M3(pretrained=str(MODEL), scale=9, device="cpu", batch_size=1)
    expected = [
        a.text
        for a in single.generate_until(probe_requests(single, tmp_path, "generate_until", {"max_new_tokens": 3}))
    ]
    auto = M3(pretrained=str(MODEL), scale=9, device="cpu", batch_size="auto", max_batch_size=8)
    assert auto.batch_size == 8 and auto.auto_batch
    original, sizes = auto._generate, []

    def short_of_memory(docs, *args):
        sizes.append(len(docs))
        if len(docs) > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(docs, *args)

    monkeypatch.setattr(auto, "_generate", short_of_memory)
    answers = auto.generate_until(probe_requests(auto, tmp_path, "generate_until", {"max_new_tokens": 3}))
    assert [a.text for a in answers] == expected
    assert sizes == [6, 3, 3] and auto.batch_size == 3  # 6 readable docs in one batch, halved once


def test_each_process_takes_its_own_device(monkeypatch):
    from types import SimpleNamespace

    from m3_lmms_eval.models import _batch_size, _device

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    second = SimpleNamespace(num_processes=2, local_process_index=1, device="cuda:1")
    assert str(_device("cuda", second)) == "cuda:1" and str(_device(None, second)) == "cuda:1"
    assert str(_device("cpu", second)) == "cpu"
    assert _batch_size("auto", None) == (64, True) and _batch_size("auto:4", "16") == (16, True)
    assert _batch_size("3", None) == (3, False)
