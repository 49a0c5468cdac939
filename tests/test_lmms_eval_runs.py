"""lmms-eval's own evaluator (its CLI) runs the ``m3`` plugin on two tiny local tasks written here: a generation task
and a multiple-choice (loglikelihood) task, scored, in one process and in two (``torchrun``, gloo on CPU). The scores
and answers equal what the project's inference code gives directly, and the two-process run merges to the same.

Needs the lmms-eval extra, like tests/test_lmms_eval_plugin.py (skipped without it; required in CI)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from . import extras
from .lmms_eval_tasks import CHOICE_TASK, GEN_TASK, offline_env, read_run, write_tasks

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "checkpoints" / "tiny-m3"
SCALE = 36
MAX_NEW_TOKENS = 6
UNTIL = ["\n\n", "USER:"]

extras.need("m3_lmms_eval.models", "lmms-eval")  # skips the module without the extra (fails in CI)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tasks, and lmms-eval runs on both in 1 and in 2 processes."""
    root = tmp_path_factory.mktemp("lmms-eval-runs")
    docs = write_tasks(root / "tasks", MAX_NEW_TOKENS)
    arguments = ["-m", "lmms_eval", "--model", "m3", "--model_args", f"pretrained={MODEL},scale={SCALE}",
                 "--tasks", f"{GEN_TASK},{CHOICE_TASK}", "--include_path", str(root / "tasks"), "--batch_size", "4",
                 "--device", "cpu", "--log_samples"]  # fmt: skip
    launchers = {
        1: [sys.executable],
        2: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())],
    }
    found = {}
    for processes, launcher in launchers.items():
        out = root / f"out-{processes}"
        log = root / f"log-{processes}.txt"
        with open(log, "w") as handle:
            command = [*launcher, *arguments, "--output_path", str(out)]
            env = dict(offline_env(root, REPO), ACCELERATE_USE_CPU="true")
            code = subprocess.run(command, env=env, stdout=handle, stderr=handle, cwd=root, timeout=600).returncode
        assert code == 0, log.read_text()[-3000:]
        found[processes] = (*read_run(out, [GEN_TASK, CHOICE_TASK]), log.read_text())
    return docs, root / "tasks", found


@pytest.fixture(scope="module")
def expected(runs):
    """Answers and option losses of every doc straight from m3.inference (one doc at a time); a doc whose image is
    missing answers "" and has infinite losses."""
    import math

    import torch
    from PIL import Image

    from m3.inference import compact_prompts, continuation_ids, encode_images, generate_at_scale, score_continuations
    from m3.loading import load_m3_model
    from m3.processing import M3Processor
    from m3_lmms_eval.models import _truncate

    docs, folder, _ = runs
    torch.set_num_threads(1)
    model = load_m3_model(MODEL).eval()
    processor = M3Processor.from_pretrained(MODEL, config=model.config)
    answers, losses = [], []
    for doc in docs:
        if not all((folder / name).is_file() for name in doc["images"]):
            answers.append("")
            losses.append([math.inf] * len(doc["choices"]))
            continue
        images = [Image.open(folder / name).convert("RGB") for name in doc["images"]]
        grids, sizes = encode_images(model, processor, images) if images else ([], None)
        compact = compact_prompts(processor, [doc["question"]], sizes, num_images=len(images))
        output = generate_at_scale(model, processor, compact, grids, sizes, SCALE, MAX_NEW_TOKENS)
        answers.append(_truncate(output.answers[0], UNTIL))
        prompt = processor.prompt(doc["question"], len(images))
        doc_losses = []
        for choice in doc["choices"]:
            extra = continuation_ids(processor, [prompt], [" " + choice])
            doc_losses.append(score_continuations(model, processor, compact, extra, grids, sizes, SCALE)[0].mean_nll)
        losses.append(doc_losses)
    return answers, losses


def test_generation_task_is_scored_as_the_projects_own_answers(runs, expected):
    docs, _, found = runs
    answers, _ = expected
    results, samples, _ = found[1]
    assert [row["filtered_resps"] for row in samples[GEN_TASK]] == answers
    assert answers[-1] == "" and all(answers[:-1])  # the doc whose image is missing answered "", the rest answered
    accuracy = sum(answer == doc["answer"] for answer, doc in zip(answers, docs)) / len(docs)
    assert results["results"][GEN_TASK]["exact_match,none"] == pytest.approx(accuracy)
    counts = [row["token_counts"][0] for row in samples[GEN_TASK]]
    assert [count["visual_tokens"] for count in counts] == [36, 36, 36, 72, 0, 36, None]  # text-only: 0 tokens


def test_multiple_choice_task_is_scored_by_the_smallest_loss(runs, expected):
    docs, _, found = runs
    _, losses = expected
    results, samples, _ = found[1]
    for row, doc_losses in zip(samples[CHOICE_TASK], losses):
        logged = [float(loss) for loss, _ in row["filtered_resps"]]
        assert logged == pytest.approx(doc_losses, rel=1e-4), row["doc_id"]
    assert len(samples[CHOICE_TASK]) == len(docs) - 1  # the task leaves out the doc whose image is missing
    picks = [min(range(len(doc_losses)), key=doc_losses.__getitem__) for doc_losses in losses[:-1]]
    accuracy = sum(pick == doc["label"] for pick, doc in zip(picks, docs)) / len(picks)
    assert results["results"][CHOICE_TASK]["acc,none"] == pytest.approx(accuracy)
    assert len(set(picks)) > 1  # the options really compete: not one answer for every doc


def test_two_processes_merge_to_the_results_of_one(runs):
    _, _, found = runs
    (one, one_samples, one_log), (two, two_samples, two_log) = found[1], found[2]
    # each process answered its share of the 7 generation docs (lmms-eval pads the shorter share with a copy)
    assert re.findall(r"M3: (\d+) answers", one_log) == ["7"]
    assert re.findall(r"M3: (\d+) answers", two_log) == ["4", "4"]
    for task, metric in ((GEN_TASK, "exact_match,none"), (CHOICE_TASK, "acc,none")):
        assert two["results"][task][metric] == pytest.approx(one["results"][task][metric])
        assert [row["doc_id"] for row in two_samples[task]] == [row["doc_id"] for row in one_samples[task]]
    assert [row["filtered_resps"] for row in two_samples[GEN_TASK]] == [
        row["filtered_resps"] for row in one_samples[GEN_TASK]
    ]
    for a, b in zip(one_samples[CHOICE_TASK], two_samples[CHOICE_TASK]):
        assert [float(x) for x, _ in a["filtered_resps"]] == pytest.approx([float(x) for x, _ in b["filtered_resps"]])
        assert [g for _, g in a["filtered_resps"]] == [g for _, g in b["filtered_resps"]]
    assert two["config"]["model"] == "m3"
