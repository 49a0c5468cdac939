import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from m3.data.granularity import FAMILIES, VOCABULARY, write_split
from m3.data.llava import LlavaDataset
from m3.evaluation import accuracy_table, evaluate_scales
from m3.loading import load_m3_model
from m3.metrics import METRICS, normalize_answer, score
from m3.processing import M3Processor, llava_prompt
from m3.prompting import image_token_counts
from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model
from oracle_data import (
    OracleMismatchError,
    build_oracle,
    compare_oracles,
    load_oracle,
    load_samples,
    oracle_schema,
    read_manifest,
    summarize_oracle,
    write_report,
)

from .conftest import random_image

REPO = Path(__file__).resolve().parents[1]
SCALES = [1, 9, 36, 144, 576]


def save_tiny(path, family="llava", seed=0, tokenizer=None):
    tokenizer = tokenizer or build_tiny_tokenizer(extra_words=VOCABULARY)
    model = tiny_model(family, seed=seed, tokenizer=tokenizer, hidden_size=32)
    model.save_pretrained(path)
    M3Processor(tiny_image_processor(family), tokenizer, model.config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def split_8(tmp_path_factory):
    """A granularity split of 8 images = 32 questions (4 adjacent ones per image)."""
    return write_split(tmp_path_factory.mktemp("data"), "test", num_images=8, seed=0)


def test_oracle_agrees_with_evaluate_scales_and_the_report(tmp_path, model_dir):
    model = load_m3_model(model_dir).eval()
    processor = M3Processor.from_pretrained(model_dir, config=model.config)
    split = write_split(tmp_path / "data", "test", num_images=3, seed=0)  # 12 records
    records = json.loads(split.read_text())
    items = [LlavaDataset(split, split.parent)[i] for i in range(len(records))]
    first = evaluate_scales(model, processor, items, SCALES, batch_size=4, max_new_tokens=4, show_progress=False)
    # a random model never answers the real questions: make each reference the answer it gives at one scale, so
    # that accuracies differ by scale and the label rules see mixed rows
    said = {(row["id"], row["scale"]): row["prediction"] for row in first}
    for index, record in enumerate(records):
        words = normalize_answer(said[record["id"], SCALES[index % len(SCALES)]]).split()
        record["answer"] = record["conversations"][1]["value"] = words[0] if words else "red"
    data = split.parent / "test.relabelled.json"
    data.write_text(json.dumps(records))
    items = [LlavaDataset(data, split.parent)[i] for i in range(len(records))]
    rows = evaluate_scales(model, processor, items, SCALES, batch_size=4, max_new_tokens=4, show_progress=False)

    encoded = []
    hook = model.model.vision_tower.register_forward_hook(lambda m, args, out: encoded.append(args[0].shape[0]))
    out = tmp_path / "oracle"
    build_oracle(model_dir, data, out, batch_size=4, max_new_tokens=4, progress=False, model=model, processor=processor)
    hook.remove()
    assert sum(encoded) == 3  # once per image, for all of its questions and all five scales

    table = load_oracle(out)
    assert table.schema.remove_metadata() == oracle_schema(SCALES, hidden_scales=[1, 9])  # probes: 2 smallest
    assert table.column("sample_id").to_pylist() == [r["id"] for r in records]
    by_id = {row["sample_id"]: row for row in table.to_pylist()}
    for row in rows:  # the same answers and scores as scripts/evaluate.py
        oracle_row = by_id[row["id"]]
        assert oracle_row[f"answer_{row['scale']}"] == row["prediction"]
        assert oracle_row[f"score_{row['scale']}"] == row["correct"]
        assert oracle_row[f"tokens_{row['scale']}"] == row["scale"]
    summary = summarize_oracle(table, SCALES)
    for cell in accuracy_table(rows):
        assert summary[cell["family"]]["accuracy"][cell["scale"]] == pytest.approx(cell["accuracy"])
        assert summary[cell["family"]]["n"] == cell["count"]
    overall = [summary["overall"]["accuracy"][s] for s in SCALES]
    assert 0 < min(overall) and max(overall) < 1  # not a degenerate all-wrong (or all-right) check

    for row in by_id.values():  # label rules on the stored columns
        correct = [s for s in SCALES if row[f"correct_{s}"]]
        assert row["oracle_scale"] == (correct[0] if correct else 1)
        assert row["oracle_none_correct"] == (not correct)
        assert len(row["embedding"]) == 32 and all(row[f"confidence_{s}"] <= 0 for s in SCALES)
    # the embedding is the image's scale-1 token: the mean of its projected grid
    image = items[0]["image"]
    with torch.no_grad():
        grid = model.model.encode_images(processor.image_processor([image], return_tensors="pt")["pixel_values"])[0]
    np.testing.assert_allclose(by_id[records[0]["id"]]["embedding"], grid[0].mean(0).numpy(), rtol=1e-5, atol=1e-6)

    report = write_report(out).read_text()
    line = f"| overall | {len(by_id)} | " + " | ".join(f"{summary['overall']['accuracy'][s]:.3f}" for s in SCALES)
    assert line in report and "Oracle (paper" in report and "Oracle (monotone" in report
    assert f"{summary['overall']['paper']['accuracy']:.3f}" in report
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    manifest = read_manifest(out)
    questions = 3 * len(FAMILIES)
    assert manifest["complete"] and manifest["num_rows"] == questions and manifest["model"]["text_hidden_size"] == 32
    assert manifest["model"]["scales"] == SCALES and manifest["data"]["num_samples"] == questions


def _without_metadata(table):
    return table.replace_schema_metadata(None).to_pylist()


def test_resume_after_sigkill_gives_exactly_the_uninterrupted_rows(tmp_path, model_dir, split_8):
    out = tmp_path / "killed"
    command = [sys.executable, str(REPO / "scripts/build_oracle.py"), "--model", str(model_dir),
               "--data", str(split_8), "--out", str(out), "--shard-size", "2", "--batch-size", "2",
               "--threads", "1", "--no-progress"]  # fmt: skip
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=stderr)
        deadline = time.monotonic() + 180
        while not list((out / "shards").glob("shard-*.parquet")):
            assert process.poll() is None, f"the build ended before its first shard: {log.read_text()}"
            assert time.monotonic() < deadline, "no shard after 180 s"
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    written = sorted((out / "shards").glob("shard-*.parquet"))
    assert 1 <= len(written) < read_manifest(out)["num_shards"], "killed too late: the build had finished"
    assert not read_manifest(out)["complete"]
    with pytest.raises(ValueError, match="incomplete"):
        load_oracle(out)

    build_oracle(model_dir, split_8, out, shard_size=2, batch_size=2, progress=False)  # the same command, resumed
    build_oracle(model_dir, split_8, tmp_path / "whole", shard_size=2, batch_size=2, progress=False)
    resumed, whole = load_oracle(out), load_oracle(tmp_path / "whole")
    questions = 8 * len(FAMILIES)
    assert resumed.num_rows == questions and len(set(resumed.column("sample_id").to_pylist())) == questions
    assert _without_metadata(resumed) == _without_metadata(whole)
    assert compare_oracles(out, tmp_path / "whole") == ([], 0.0)
    manifest = read_manifest(out)
    shard_rows = [s["rows"] for s in manifest["shards"]]
    assert manifest["complete"] and sum(shard_rows) == questions and max(shard_rows) == 2
    assert not list(out.rglob("*.tmp"))
    for path in written:  # shards written before the kill were kept, not redone
        assert pq.read_table(path).num_rows == 2


def test_compare_oracles_names_differing_cells_and_measures_float_ones(tmp_path, model_dir, split_8):
    build_oracle(model_dir, split_8, tmp_path / "a", shard_size=16, batch_size=4, max_new_tokens=2, progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shard = tmp_path / "b" / "shards" / "shard-000001.parquet"
    table = pq.read_table(shard)
    rows = table.to_pylist()
    rows[0]["answer_9"] += " changed"
    rows[1]["confidence_1"] -= 0.25
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
    cells, largest = compare_oracles(tmp_path / "a", tmp_path / "b")
    assert cells == [f"{rows[0]['sample_id']}.answer_9"] and largest == pytest.approx(0.25)
    assert compare_oracles(tmp_path / "a", tmp_path / "a") == ([], 0.0)


def test_a_different_model_data_or_setting_is_refused(tmp_path, model_dir, split_8):
    out = tmp_path / "oracle"
    build_oracle(model_dir, split_8, out, limit=4, max_new_tokens=2, progress=False)
    build_oracle(model_dir, split_8, out, limit=4, max_new_tokens=2, progress=False)  # same build: nothing to do
    other_model = save_tiny(tmp_path / "other", seed=1)
    with pytest.raises(OracleMismatchError, match=r"different model(.|\n)*model.path(.|\n)*model.fingerprint"):
        build_oracle(other_model, split_8, out, limit=4, max_new_tokens=2, progress=False)
    with pytest.raises(OracleMismatchError, match=r"data.num_samples: 4 there, 5 now"):
        build_oracle(model_dir, split_8, out, limit=5, max_new_tokens=2, progress=False)
    other_data = write_split(tmp_path / "data2", "test", num_images=1, seed=3)
    with pytest.raises(OracleMismatchError, match=r"data.path(.|\n)*data.sha256"):
        build_oracle(model_dir, other_data, out, max_new_tokens=2, progress=False)
    with pytest.raises(OracleMismatchError, match=r"settings"):
        build_oracle(model_dir, split_8, out, limit=4, max_new_tokens=3, progress=False)
    with pytest.raises(OracleMismatchError, match=r'metric: "exact_match" there, "vqa_accuracy" now'):
        build_oracle(model_dir, split_8, out, limit=4, max_new_tokens=2, metric="vqa_accuracy", progress=False)
    assert load_oracle(out).num_rows == 4  # untouched


def test_load_oracle_checks_the_manifest_against_the_shards(tmp_path, model_dir, split_8):
    out = tmp_path / "oracle"
    build_oracle(model_dir, split_8, out, limit=4, shard_size=2, max_new_tokens=1, progress=False)
    manifest = read_manifest(out)
    broken = json.loads(json.dumps(manifest))
    broken["shards"][1]["rows"] = 3
    (out / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="2 rows, the manifest says 3"):
        load_oracle(out)
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / manifest["shards"][0]["file"]).unlink()
    with pytest.raises(FileNotFoundError, match="shard-000000.parquet listed in the manifest is missing"):
        load_oracle(out)
    with pytest.raises(FileNotFoundError, match="holds no oracle"):
        load_oracle(tmp_path / "nothing")


def test_llava_next_question_file_with_soft_metrics(tmp_path):
    tokenizer = build_tiny_tokenizer()
    model_dir = save_tiny(tmp_path / "next", family="llava_next", tokenizer=tokenizer)
    sizes = {"a": (96, 150), "b": (200, 96), "c": (96, 288)}
    (tmp_path / "img").mkdir()
    for index, (name, (height, width)) in enumerate(sizes.items()):
        random_image(height, width, seed=index).save(tmp_path / "img" / f"{name}.png")
    questions = [
        {"id": "q1", "image": "a.png", "question": "what color is the circle ?", "answers": ["red"] * 10,
         "metric": "vqa_accuracy", "family": "color"},
        {"id": "q2", "image": "a.png", "question": "which shape is in the center ?", "answers": ["B"],
         "choices": ["circle", "square", "triangle"], "family": "shape"},
        {"id": "q3", "image": "b.png", "question": "what is the number ?", "answers": ["3"], "metric": "anls"},
        {"id": "q4", "image": "c.png", "question": "is there a dots ?", "answers": ["yes"], "metric": "pope"},
    ]  # fmt: skip
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in questions))
    out = tmp_path / "oracle"
    build_oracle(model_dir, data, out, image_root=tmp_path / "img", batch_size=4, max_new_tokens=3, progress=False)
    table = load_oracle(out)
    rows = {row["sample_id"]: row for row in table.to_pylist()}
    assert rows["q2"]["choices"] == ["circle", "square", "triangle"] and rows["q1"]["choices"] is None
    assert rows["q3"]["family"] is None and rows["q4"]["metric"] == "pope"

    model = load_m3_model(model_dir).eval()
    processor = M3Processor.from_pretrained(model_dir, config=model.config)
    samples = load_samples(data, image_root=tmp_path / "img").samples
    images = {name: random_image(*size, seed=i) for i, (name, size) in enumerate(sizes.items())}
    items = [
        {"id": s.sample_id, "image": images[s.image[0]], "conversations": [
            {"from": "human", "value": "<image>\n" + s.prompt}, {"from": "gpt", "value": s.answers[0]}]}
        for s in samples
    ]  # fmt: skip
    predictions = evaluate_scales(model, processor, items, SCALES, batch_size=4, max_new_tokens=3, show_progress=False)
    for prediction in predictions:
        assert rows[prediction["id"]][f"answer_{prediction['scale']}"] == prediction["prediction"]
    for sample in samples:
        row = rows[sample.sample_id]
        height, width = sizes[sample.image[0]]
        for s in SCALES:  # anyres token counts: base crop + unpadded grid crops + newlines
            assert row[f"tokens_{s}"] == image_token_counts(model.config, s, image_sizes=[(height, width)])[0]
            assert row[f"score_{s}"] == score(sample.metric, row[f"answer_{s}"], sample.answers, sample.choices)
        pixels = processor.image_processor([images[sample.image[0]]], return_tensors="pt")
        with torch.no_grad():
            crops = model.model.encode_images(pixels["pixel_values"], pixels["image_sizes"])[0]
        np.testing.assert_allclose(row["embedding"], crops[0].mean(0).numpy(), rtol=1e-5, atol=1e-6)  # base crop

    # confidence = mean log-probability of the generated tokens (up to and including EOS), by teacher forcing
    sample, scale = samples[2], 9
    inputs = processor(llava_prompt(sample.prompt), images["b"], m3_scale=scale)
    with torch.no_grad():
        sequence = model.generate(**inputs, m3_scale=scale, max_new_tokens=3, do_sample=False)
        logits = model(input_ids=sequence, pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"],
                       m3_scale=scale).logits  # fmt: skip
    start = inputs["input_ids"].shape[1]
    new = sequence[0, start:].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id) + 1]
    log_probs = logits[0, start - 1 : start - 1 + len(new)].log_softmax(-1)
    expected = float(log_probs[torch.arange(len(new)), torch.tensor(new)].mean())
    assert rows[sample.sample_id][f"confidence_{scale}"] == pytest.approx(expected, abs=1e-4)


def test_script_help_and_report_only(tmp_path, model_dir, split_8):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/build_oracle.py"), "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "--report-only" in result.stdout and "--max-new-tokens" in result.stdout
    script = runpy.run_path(str(REPO / "scripts/build_oracle.py"), run_name="build_oracle")
    assert set(script["METRIC_NAMES"]) == set(METRICS)  # the names --help lists without importing torch
    out = tmp_path / "oracle"
    script["main"](["--model", str(model_dir), "--data", str(split_8), "--out", str(out), "--limit", "4",
                    "--max-new-tokens", "1", "--no-progress"])  # fmt: skip
    assert not (out / "report.md").exists()
    script["main"](["--report-only", "--out", str(out)])
    assert "## Oracle labels (paper)" in (out / "report.md").read_text()
    with pytest.raises(SystemExit):
        script["main"](["--out", str(out)])  # --model and --data are required to build
