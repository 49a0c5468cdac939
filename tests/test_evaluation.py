import csv

import pytest

from m3.evaluation import (
    accuracy_markdown,
    accuracy_table,
    answer_of,
    evaluate_scales,
    generate_answers,
    plot_accuracy,
    question_of,
    to_csv,
)
from m3.metrics import exact_match, normalize_answer

from .conftest import random_image

QUESTIONS = ["what color is the circle", "how many dots are there", "where is the square", "is there a triangle"]
ANSWERS = ["red", "3", "left", "yes"]
FAMILIES = ["color", "count", "position", "color"]


def make_items(n=5, family=True):
    sizes = [(96, 150), (200, 96), (96, 96), (120, 130), (96, 288)]
    items = []
    for index in range(n):
        item = {
            "id": f"q{index}",
            "image": random_image(*sizes[index % len(sizes)], seed=index),
            "image_id": f"img{index}",
            "conversations": [
                {"from": "human", "value": f"<image>\n{QUESTIONS[index % 4]}"},
                {"from": "gpt", "value": ANSWERS[index % 4]},
            ],
            "answer": ANSWERS[index % 4],
        }
        if family:
            item["family"] = FAMILIES[index % 4]
        items.append(item)
    return items


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Red Circle.", "red circle"),
        ("  an   apple,  please!", "apple please"),
        ("Three", "3"),
        ("1,000 dots", "1000 dots"),
        ("3.5", "3.5"),
        ("Yes.", "yes"),
        ("top-left", "top left"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    "prediction, answer, score",
    [
        ("Red.", "red", 1.0),
        ("red circle", "red", 1.0),  # first word of a free-form answer
        ("a red circle", "red", 1.0),  # article dropped first
        ("Three dots", "3", 1.0),
        ("the red circle", "red circle", 1.0),
        ("red square", "red circle", 0.0),  # multi-word answers need the whole answer
        ("circle red", "red", 0.0),
        ("blue", "red", 0.0),
        ("", "red", 0.0),
    ],
)
def test_exact_match(prediction, answer, score):
    assert exact_match(prediction, [answer]) == score


def test_question_and_answer_of_an_item():
    item = make_items(1)[0]
    assert question_of(item) == "what color is the circle"
    assert answer_of(item) == "red"
    del item["answer"]
    assert answer_of(item) == "red"  # falls back to the first gpt turn


def test_evaluate_scales_rows(model_and_processor):
    model, processor = model_and_processor
    items = make_items(3, family=False)
    rows = evaluate_scales(model, processor, items, [1, 9, 576], batch_size=2, show_progress=False)
    assert len(rows) == 9
    assert [(row["id"], row["scale"]) for row in rows] == [(f"q{i}", s) for i in range(3) for s in (1, 9, 576)]
    for row in rows:
        assert set(row) == {"id", "image_id", "family", "scale", "prediction", "answer", "correct"}
        assert row["family"] == "all" and row["image_id"] == f"img{row['id'][1:]}"
        assert isinstance(row["prediction"], str) and row["prediction"] == row["prediction"].strip()
        assert row["correct"] == exact_match(row["prediction"], [row["answer"]])
    with pytest.raises(ValueError, match="scale"):
        evaluate_scales(model, processor, items, [2], show_progress=False)
    with pytest.raises(ValueError, match="item q0 has no image"):
        evaluate_scales(model, processor, [{**items[0], "image": None}], [1], show_progress=False)


def test_precomputed_features_give_the_per_scale_generate_predictions(model_and_processor):
    model, processor = model_and_processor
    items = make_items(5)
    scales = model.config.m3_scales
    calls = []
    hook = model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    rows = evaluate_scales(model, processor, items, scales, batch_size=2, max_new_tokens=4, show_progress=False)
    assert len(calls) == 3  # the vision tower ran once per batch of items, not once per scale
    for scale in scales:
        expected = generate_answers(model, processor, items, scale, batch_size=2, max_new_tokens=4, show_progress=False)
        assert [row["prediction"] for row in rows if row["scale"] == scale] == expected, scale
    hook.remove()
    assert any(rows[0]["prediction"] != row["prediction"] for row in rows)  # not a degenerate constant output


HAND_ROWS = [
    {"family": "color", "scale": 1, "correct": 0.0},
    {"family": "color", "scale": 1, "correct": 1.0},
    {"family": "color", "scale": 9, "correct": 1.0},
    {"family": "color", "scale": 9, "correct": 1.0},
    {"family": "count", "scale": 1, "correct": 0.0},
    {"family": "count", "scale": 9, "correct": 1.0},
]


def test_accuracy_table_on_hand_made_rows():
    table = accuracy_table(HAND_ROWS)
    assert [(r["family"], r["scale"], r["correct"], r["count"], r["accuracy"]) for r in table] == [
        ("color", 1, 1.0, 2, 0.5),
        ("color", 9, 2.0, 2, 1.0),
        ("count", 1, 0.0, 1, 0.0),
        ("count", 9, 1.0, 1, 1.0),
        ("overall", 1, 1.0, 3, pytest.approx(1 / 3)),
        ("overall", 9, 3.0, 3, 1.0),
    ]


def test_markdown_csv_and_png_are_written(tmp_path):
    table = accuracy_table(HAND_ROWS)
    markdown = accuracy_markdown(table, [1, 9])
    assert markdown.splitlines() == [
        "| family | n | 1 | 9 |",
        "| --- | ---: | ---: | ---: |",
        "| color | 2 | 0.500 | 1.000 |",
        "| count | 1 | 0.000 | 1.000 |",
        "| overall | 3 | 0.333 | 1.000 |",
    ]
    to_csv(table, tmp_path / "accuracy.csv")
    with open(tmp_path / "accuracy.csv", newline="") as handle:
        read = list(csv.DictReader(handle))
    assert len(read) == 6 and read[0] == {
        "family": "color",
        "scale": "1",
        "correct": "1.0",
        "count": "2",
        "accuracy": "0.5",
    }
    plot_accuracy(table, tmp_path / "accuracy.png")
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
