import json

import pyarrow as pa
import pytest

from oracle_data.report import NO_FAMILY, OVERALL, oracle_markdown, plot_report, pope_by_scale, summarize_oracle
from oracle_data.store import oracle_schema

SCALES = [1, 9]


def row(sample_id, family, scores, oracle, none_correct, monotone, unreachable, metric="vqa_accuracy", said=("",) * 2):
    data = {
        "sample_id": sample_id, "image_id": "img", "image": "img.png", "question": "q", "family": family,
        "metric": metric, "answers": ["yes"], "choices": None, "embedding": [0.0, 1.0],
        "oracle_scale": oracle, "oracle_none_correct": none_correct,
        "oracle_monotone_scale": monotone, "oracle_monotone_unreachable": unreachable,
    }  # fmt: skip
    for scale, value, answer in zip(SCALES, scores, said):
        data.update({f"answer_{scale}": answer, f"score_{scale}": value, f"correct_{scale}": value >= 0.5,
                     f"confidence_{scale}": -1.0, f"tokens_{scale}": scale, f"eos_{scale}": True})  # fmt: skip
    return data


TABLE = pa.Table.from_pylist(
    [
        row("r1", "a", [0.0, 0.6], 9, False, 9, False),
        row("r2", "a", [1.0, 1.0], 1, False, 1, False),
        row("r3", "b", [0.3, 0.0], 1, True, 1, True),  # soft credit below the threshold: not correct
        row("r4", None, [1.0, 0.0], 1, False, 1, True),  # right at 1 token only: monotone unreachable
    ],
    schema=oracle_schema(SCALES),
)


def test_summary_of_a_hand_made_table():
    summary = summarize_oracle(TABLE, SCALES)
    assert list(summary) == [NO_FAMILY, "a", "b", OVERALL]
    overall = summary[OVERALL]
    assert overall["n"] == 4
    assert overall["accuracy"] == pytest.approx({1: 2.3 / 4, 9: 1.6 / 4})  # mean score
    assert overall["correct_rate"] == {1: 0.5, 9: 0.5}
    assert overall["paper"]["accuracy"] == pytest.approx((0.6 + 1 + 0.3 + 1) / 4)  # score at the oracle scale
    assert overall["paper"]["correct_rate"] == 0.75 and overall["paper"]["tokens"] == 3.0
    assert overall["paper"]["flagged"] == 1 and overall["paper"]["labels"] == {1: 3, 9: 1}
    assert overall["monotone"]["flagged"] == 2 and overall["monotone"]["labels"] == {1: 3, 9: 1}
    # the label spread counts only samples right at the largest scale (r1 needs 9, r2 needs 1; r3, r4 are wrong at 9)
    assert overall["monotone"]["labels_unflagged"] == {1: 1, 9: 1}
    assert summary["a"]["monotone"]["labels_unflagged"] == {1: 1, 9: 1}
    assert summary["b"]["monotone"]["labels_unflagged"] == {1: 0, 9: 0}
    assert summary["a"]["accuracy"] == pytest.approx({1: 0.5, 9: 0.8})
    assert summary["a"]["paper"]["tokens"] == 5.0 and summary["b"]["paper"]["flagged"] == 1


def test_markdown_and_plot(tmp_path):
    summary = summarize_oracle(TABLE, SCALES)
    manifest = {
        "model": {"path": "m", "model_type": "llava", "scales": SCALES, "text_hidden_size": 2},
        "data": {"path": "d", "metrics": {"vqa_accuracy": 4}},
        "settings": {"correct_threshold": 0.5, "max_new_tokens": 8},
    }
    text = oracle_markdown(summary, SCALES, manifest)
    assert "| overall | 4 | 0.575 | 0.400 | 0.725 | 0.725 |" in text
    assert "| Oracle (paper: fewest tokens that answer correctly) | 0.725 | 3.0 | 1 none correct |" in text
    assert "| b | 1 | 0 | 1 |" in text  # label counts per family, flagged samples counted at the smallest scale
    assert "| a | 2 | 50 | 50 |" in text and "| b | 0 | - | - |" in text  # the label spread (% per scale)
    plot_report(summary, SCALES, tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 1000
    json.dumps(summary)  # plain numbers only


def test_pope_numbers_per_scale():
    table = pa.Table.from_pylist(
        [row("p1", None, [1, 0], 1, False, 1, True, "pope", ("Yes.", "No.")),
         row("p2", None, [0, 1], 9, False, 9, False, "pope", ("yes", "Yes"))],
        schema=oracle_schema(SCALES),
    )  # fmt: skip
    pope = pope_by_scale(table, SCALES)
    assert pope[1]["yes_ratio"] == 1.0 and pope[1]["accuracy"] == 1.0
    assert pope[9] == pytest.approx({"accuracy": 0.5, "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "yes_ratio": 0.5})
    assert pope_by_scale(TABLE, SCALES) is None
