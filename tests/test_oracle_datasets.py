import json

import pytest

from m3.data.granularity import FAMILIES, write_split
from oracle_data.datasets import CHOICE_INSTRUCTION, image_runs, load_samples

from .conftest import random_image


def write_jsonl(path, records, raw_lines=()):
    lines = [json.dumps(record) for record in records] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a", "b"):
        random_image(32, 48, seed=ord(name)).save(folder / f"{name}.png")
    return folder


def test_question_file_fields_defaults_and_prompt(tmp_path, image_dir):
    path = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"id": "q1", "image": "imgs/a.png", "question": " What is it? ", "answers": ["cat", "kitten"]},
            {"image": "imgs/b.png", "question": "Which?", "answers": ["B"], "choices": ["cat", "dog"], "family": "x"},
            {
                "id": 7,
                "image": "imgs/a.png",
                "question": "Text?",
                "answers": ["0.5"],
                "metric": "anls",
                "image_id": "A",
                "extra": "ignored",
            },
        ],
    )
    data = load_samples(path, default_metric="vqa_accuracy")
    first, second, third = data.samples
    assert data.format == "jsonl" and data.image_root == tmp_path
    assert (first.sample_id, first.image_id, first.image, first.question) == (
        "q1",
        "imgs/a.png",
        "imgs/a.png",
        "What is it?",
    )
    assert first.answers == ("cat", "kitten") and first.metric == "vqa_accuracy" and first.choices is None
    assert first.image_path == image_dir / "a.png" and first.prompt == "What is it?"
    assert second.sample_id == "2" and second.metric == "multiple_choice" and second.family == "x"  # defaults
    assert second.prompt == f"Which?\nA. cat\nB. dog\n{CHOICE_INSTRUCTION}"
    assert (third.sample_id, third.image_id, third.metric) == ("7", "A", "anls")


def test_image_root_overrides_the_files_folder(tmp_path, image_dir):
    path = write_jsonl(tmp_path / "q.jsonl", [{"id": "q", "image": "a.png", "question": "?", "answers": ["x"]}])
    assert load_samples(path, image_root=image_dir).samples[0].image_path == image_dir / "a.png"
    with pytest.raises(FileNotFoundError, match=r"q.jsonl:line 1: image file .*a.png does not exist"):
        load_samples(path)


GOOD = {"id": "ok", "image": "imgs/a.png", "question": "?", "answers": ["x"]}


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"line 2: not valid JSON"),
        ('["a list"]', r"line 2: expected a JSON object, got list"),
        (json.dumps({"image": "imgs/a.png", "question": "?"}), r"line 2: missing required key\(s\) \['answers'\]"),
        (json.dumps({**GOOD, "id": "x", "answers": "cat"}), r"line 2: answers must be a list of strings"),
        (json.dumps({**GOOD, "id": "x", "answers": []}), r"line 2: answers must not be empty"),
        (json.dumps({**GOOD, "id": "x", "question": ""}), r"line 2: question must be a non-empty string"),
        (json.dumps({**GOOD, "id": "x", "metric": "bleu"}), r"line 2: unknown metric 'bleu'; known metrics"),
        (json.dumps({**GOOD, "id": "x", "choices": ["only one"]}), r"line 2: choices must hold 2 to 26 options"),
        (json.dumps({**GOOD, "id": "x", "choices": ["a", "b"], "answers": ["c"]}), r"line 2: multiple-choice answer"),
        (json.dumps({**GOOD, "id": "x", "family": 3}), r"line 2: family must be a string"),
        (json.dumps(GOOD), r"line 2: duplicate sample id 'ok' \(first used at .*line 1\)"),
    ],
)
def test_bad_question_lines_are_named_with_their_line_number(tmp_path, image_dir, line, message):
    path = write_jsonl(tmp_path / "q.jsonl", [GOOD], [line])
    with pytest.raises(ValueError, match=message):
        load_samples(path)


def test_blank_lines_limit_and_unknown_default_metric(tmp_path, image_dir):
    path = write_jsonl(tmp_path / "q.jsonl", [GOOD], ["", json.dumps({**GOOD, "id": "two"})])
    assert [s.sample_id for s in load_samples(path).samples] == ["ok", "two"]
    assert [s.sample_id for s in load_samples(path, limit=1).samples] == ["ok"]
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        load_samples(path, default_metric="nope")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_samples(path.rename(tmp_path / "q.txt"))


def test_granularity_split_as_llava_json(tmp_path):
    path = write_split(tmp_path, "test", num_images=2, seed=0)
    data = load_samples(path)
    records = json.loads(path.read_text())
    assert data.format == "llava" and len(data.samples) == 2 * len(FAMILIES)
    for sample, record in zip(data.samples, records):
        assert sample.sample_id == record["id"] and sample.image_id == record["image_id"]
        assert sample.family == record["family"] and sample.answers == (record["answer"],)
        assert sample.question == record["conversations"][0]["value"].removeprefix("<image>\n")
        assert sample.image == record["image"] and sample.image_path.is_file() and sample.metric == "exact_match"


def test_llava_json_first_turn_answers_text_only_and_errors(tmp_path, image_dir):
    turns = [
        {"from": "human", "value": "What is it?\n<image>"},
        {"from": "gpt", "value": "A cat."},
        {"from": "human", "value": "And now?"},
        {"from": "gpt", "value": "ignored"},
    ]
    records = [
        {"id": "r1", "image": "imgs/a.png", "conversations": turns},
        {"id": "r2", "conversations": turns[2:]},  # text only: skipped
        {"id": "r3", "image": "imgs/b.png", "conversations": turns[:2], "answers": ["cat", "kitty"], "metric": "anls"},
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    data = load_samples(path)
    assert [s.sample_id for s in data.samples] == ["r1", "r3"] and data.skipped_ids == ["r2"]
    assert data.samples[0].question == "What is it?" and data.samples[0].answers == ("A cat.",)
    assert data.samples[1].answers == ("cat", "kitty") and data.samples[1].metric == "anls"

    path.write_text(json.dumps([{"id": "bad", "image": ["x.png", "y.png"], "conversations": turns}]))
    with pytest.raises(ValueError, match=r"record 0 \(id bad\): image must be one path"):
        load_samples(path)
    path.write_text(json.dumps([{"id": "m", "image": "imgs/missing.png", "conversations": turns}]))
    with pytest.raises(FileNotFoundError, match=r"record 0 \(id m\): image file .*missing.png does not exist"):
        load_samples(path)
    path.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_samples(path)


def test_image_runs_keep_an_images_questions_together(tmp_path):
    data = load_samples(write_split(tmp_path, "test", num_images=3, seed=0))  # q adjacent questions per image
    q = len(FAMILIES)
    groups = image_runs(data.samples, 2 * q - 1)
    assert [len(g) for g in groups] == [q, q, q]  # q + q > 2q - 1: never cut an image's run
    assert [len(g) for g in image_runs(data.samples, 2 * q)] == [2 * q, q]
    assert [len(g) for g in image_runs(data.samples, q - 1)] == [q - 1, 1] * 3  # a run longer than the size is cut
    assert [s for g in image_runs(data.samples, 5) for s in g] == data.samples
    with pytest.raises(ValueError, match="at least 1"):
        image_runs(data.samples, 0)
