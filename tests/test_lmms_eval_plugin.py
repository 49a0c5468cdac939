"""The lmms-eval plugin, end to end through lmms-eval's own CLI: its accuracy per scale equals the oracle's.

lmms-eval is an optional extra (``pip install --no-deps lmms-eval==0.7.3 && pip install -e ".[lmms-eval]"``), and CI
installs it: without it these tests FAIL, naming the install command. Set M3_SKIP_LMMS_EVAL=1 to skip them on
purpose (a machine that deliberately goes without the extra).
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

from . import hf_layouts

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "checkpoints" / "tiny-m3"
SCALES = [1, 9, 36, 144, 576]
INSTALL = 'pip install --no-deps lmms-eval==0.7.3 && pip install -e ".[lmms-eval]"'

if os.environ.get("M3_SKIP_LMMS_EVAL") == "1":
    pytest.skip("M3_SKIP_LMMS_EVAL=1: the lmms-eval extra is deliberately absent", allow_module_level=True)
try:
    import lmms_eval

    MISSING = None
except ImportError as error:
    MISSING = f"lmms-eval is not installed ({error}); install the extra: {INSTALL} (or set M3_SKIP_LMMS_EVAL=1)"


@pytest.fixture(autouse=True, scope="module")
def lmms_eval_installed():
    """Every test here FAILS without lmms-eval (CI installs it); the rest of the suite still runs."""
    if MISSING:
        pytest.fail(MISSING)


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
def runs(lmms_eval_installed, tmp_path_factory):
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
    with pytest.raises(ValueError, match="not a valid scale|valid scales"):
        M3(pretrained=str(MODEL), scale=7)
    with pytest.raises(ValueError, match=r"unknown model arg\(s\) \['scales'\]"):
        M3(pretrained=str(MODEL), scales=9)
    with pytest.raises(NotImplementedError, match="generation only"):
        capped.loglikelihood([])
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
