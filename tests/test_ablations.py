"""The ablation commands (paper Tables 4, 6, 8) end to end on a smoke size, and the inference-time selection flag."""

import json
import subprocess
import sys
from dataclasses import asdict

import pytest

from m3.ablations import RUNS, AblationSettings, run_config, trained_model
from m3.data.granularity import VOCABULARY, write_split
from m3.evaluation import evaluate_scales, run_evaluation
from m3.loading import load_m3_model
from m3.processing import M3Processor
from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model


def test_each_run_changes_exactly_its_one_setting(tmp_path):
    settings = AblationSettings(out=str(tmp_path))
    base = asdict(run_config("m3-avg_pool", settings))
    assert base["eval_steps"] == 0 and base["resume"]
    assert base["data_path"] == str(tmp_path / "granularity" / "train.chat.json")
    for name, change in RUNS.items():
        config = asdict(run_config(name, settings))
        differs = {key for key in config if config[key] != base[key]} - {"output_dir"}
        assert differs == set(change), name
        assert config["output_dir"] == str(tmp_path / "models" / name)
    assert run_config("m3-random", AblationSettings(out=str(tmp_path), max_steps=300)).max_steps == 300
    with pytest.raises(ValueError, match="unknown ablation run"):
        run_config("m3-max_pool", settings)


def test_ablation_smoke_runs_all_three_tables_end_to_end(tmp_path):
    out = tmp_path / "ablations"
    command = [sys.executable, "scripts/ablations.py", "--table", "4", "6", "8", "--out", str(out), "--smoke"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    models = out / "models"
    assert sorted(p.name for p in models.iterdir()) == sorted(RUNS)
    assert load_m3_model(models / "m3-spatial").config.m3_token_selection == "spatial"
    assert load_m3_model(models / "m3-sequential").config.m3_token_selection == "sequential"
    assert load_m3_model(models / "ss-576").config.m3_scales == [576]
    random_run = json.loads((models / "m3-random" / "train_summary.json").read_text())
    assert random_run["config"]["scale_sampling"] == "random" and "scale" in random_run["history"][0]

    rows = {4: 6, 6: 3, 8: 2}  # model/selection pairs per table
    for table, count in rows.items():
        text = (out / f"table{table}.md").read_text()
        overall = text.split("## Overall")[1].split("##")[0]
        lines = [line for line in overall.splitlines() if line.startswith("| ") and "---" not in line]
        assert len(lines) == 1 + count, text  # header + one row per model, a column per scale
        assert lines[0] == "| model | 1 | 9 | 36 | 144 | 576 |"
        assert "## white_frame" in text
    assert "| SS-576 + spatial |" in (out / "table4.md").read_text()
    report = (out / "table4" / "SS-576_sequential" / "report.md").read_text()
    assert "Token selection at inference: `sequential`" in report

    weights = (models / "m3-avg_pool" / "model.safetensors").stat().st_mtime_ns
    settings = AblationSettings(out=str(out), smoke=True)
    assert trained_model(run_config("m3-avg_pool", settings)).name == "m3-avg_pool"  # reused, not retrained
    assert (models / "m3-avg_pool" / "model.safetensors").stat().st_mtime_ns == weights
    with pytest.raises(ValueError, match="trained with other settings \\(max_steps\\)"):
        trained_model(run_config("m3-avg_pool", AblationSettings(out=str(out), smoke=True, max_steps=3)))


def test_inference_time_selection_reaches_every_evaluation_path(tmp_path):
    data = write_split(tmp_path / "data", "test", num_images=2, seed=1)
    tokenizer = build_tiny_tokenizer(extra_words=VOCABULARY)
    model = tiny_model("llava", tokenizer=tokenizer, hidden_size=32, m3_scales=[576])
    processor = M3Processor(tiny_image_processor("llava"), tokenizer, model.config)
    model.save_pretrained(tmp_path / "ss")
    processor.save_pretrained(tmp_path / "ss")

    from m3.data.llava import LlavaDataset

    dataset = LlavaDataset(data, tmp_path / "data")
    items = [dataset[i] for i in range(len(dataset))]
    seen = []
    original = type(model.model).features_at_scale

    def spy(self, grids, scale, image_sizes=None):
        seen.append(self.config.m3_token_selection)
        return original(self, grids, scale, image_sizes)

    type(model.model).features_at_scale = spy
    try:
        evaluate_scales(model, processor, items, [1, 9], show_progress=False, token_selection="spatial")
        assert set(seen) == {"spatial"} and model.config.m3_token_selection == "avg_pool"  # restored
        seen.clear()
        run_evaluation([tmp_path / "ss"], data, tmp_path / "eval", scales=[9], token_selection="sequential")
        assert set(seen) == {"sequential"}
    finally:
        type(model.model).features_at_scale = original
    assert "Token selection at inference: `sequential`" in (tmp_path / "eval" / "report.md").read_text()
