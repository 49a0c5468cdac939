import csv
import json
import subprocess
import sys

from m3.data.granularity import FAMILIES, VOCABULARY, write_split
from m3.evaluation import run_evaluation
from m3.metrics import majority_baseline
from m3.processing import M3Processor
from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model


def test_evaluate_writes_per_scale_tables_for_m3_and_single_scale_models(tmp_path):
    data = write_split(tmp_path / "data", "test", num_images=3, seed=1)
    tokenizer = build_tiny_tokenizer(extra_words=VOCABULARY)
    for name, scales in (("m3", None), ("ss576", [576])):
        model = tiny_model("llava", tokenizer=tokenizer, hidden_size=32, m3_scales=scales)
        model.save_pretrained(tmp_path / name)
        M3Processor(tiny_image_processor("llava"), tokenizer, model.config).save_pretrained(tmp_path / name)

    tables = run_evaluation([tmp_path / "m3", tmp_path / "ss576"], data, tmp_path / "eval", batch_size=4)

    assert set(tables) == {"m3", "ss576"}
    for name in tables:  # the single-scale model is evaluated at every scale (inference-time pooling)
        overall = {row["scale"]: row for row in tables[name] if row["family"] == "overall"}
        assert sorted(overall) == [1, 9, 36, 144, 576]
        assert all(row["count"] == 3 * len(FAMILIES) for row in overall.values())
        predictions = [json.loads(line) for line in (tmp_path / "eval" / name / "predictions.jsonl").open()]
        assert len(predictions) == 3 * len(FAMILIES) * 5
        for scale, row in overall.items():  # the table is the mean of the per-prediction scores
            assert row["accuracy"] == sum(p["correct"] for p in predictions if p["scale"] == scale) / row["count"]
        with open(tmp_path / "eval" / name / "accuracy.csv") as handle:
            assert len(list(csv.DictReader(handle))) == (len(FAMILIES) + 1) * 5  # families + overall, 5 scales
        assert (tmp_path / "eval" / name / "accuracy.png").stat().st_size > 1000
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| m3 |" in report and "| ss576 |" in report and "Majority-class baseline" in report


def test_majority_baseline_by_hand():
    items = [
        {"family": "a", "answer": "x"},
        {"family": "a", "answer": "x"},
        {"family": "a", "answer": "y"},
        {"family": "b", "answer": "z"},
    ]
    families, answers = [i["family"] for i in items], [i["answer"] for i in items]
    assert majority_baseline(families, answers) == {"a": 2 / 3, "b": 1.0, "overall": 0.75}


def test_evaluate_script_help():
    result = subprocess.run([sys.executable, "scripts/evaluate.py", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--model" in result.stdout
