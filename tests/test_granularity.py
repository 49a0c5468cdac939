import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m3.data.granularity import (
    ANSWERS,
    BACKGROUND_COLORS,
    BIG_COLOR,
    CELL_SIZE,
    DIFFICULTY_ATTRIBUTES,
    FAMILIES,
    PALETTE,
    POSITIONS,
    QUESTIONS,
    SMALL_COLORS,
    VOCABULARY,
    GranularityConfig,
    box_gap,
    draw_sample,
    ensure_split,
    generate_records,
    write_split,
)
from m3.metrics import majority_baseline
from m3.tiny import build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
PALETTE_RGB = np.array(list(PALETTE.values()), dtype=np.int32)


def colour_names(pixels: np.ndarray) -> np.ndarray:
    """Nearest palette colour name of every pixel of an (..., 3) array."""
    distances = ((pixels[..., None, :].astype(np.int32) - PALETTE_RGB) ** 2).sum(-1)
    return np.array(list(PALETTE))[distances.argmin(-1)]


def digest(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def test_generation_is_deterministic_and_seeded():
    first, again = generate_records("train", 6, seed=3), generate_records("train", 6, seed=3)
    assert [digest(im) for im, _ in first] == [digest(im) for im, _ in again]
    assert [recs for _, recs in first] == [recs for _, recs in again]
    other = generate_records("train", 6, seed=4)
    assert not {digest(im) for im, _ in first} & {digest(im) for im, _ in other}
    # image i depends only on (seed, split, i): a smaller split is a prefix of a larger one
    assert [digest(im) for im, _ in generate_records("train", 3, seed=3)] == [digest(im) for im, _ in first[:3]]


def test_written_files_are_byte_identical_for_a_seed(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        write_split(tmp_path / name, "test", 4, seed)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 4 + 3  # 4 images, {split}.json, {split}.chat.json, meta
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    pngs = [rel for rel in files if rel.suffix == ".png"]
    assert all((tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes() for rel in pngs)
    assert not list(tmp_path.rglob("*.tmp"))


def test_splits_share_no_image():
    splits = ("train", "validation", "test")
    hashes = {split: [digest(im) for im, _ in generate_records(split, 40, seed=0)] for split in splits}
    assert all(len(set(h)) == len(h) for h in hashes.values())
    assert not set(hashes["train"]) & set(hashes["validation"])
    assert not set(hashes["train"]) & set(hashes["test"])
    assert not set(hashes["validation"]) & set(hashes["test"])


def test_json_schema_paths_and_meta(tmp_path):
    path = write_split(tmp_path, "validation", 5, seed=0)
    assert path == tmp_path / "validation.json"
    records = json.loads(path.read_text())
    assert len(records) == 5 * len(FAMILIES)
    assert len({r["id"] for r in records}) == len(records)
    for record in records:
        assert set(record) == {"id", "image", "conversations", "family", "answer", "image_id", "attributes"}
        assert set(DIFFICULTY_ATTRIBUTES[record["family"]]) <= set(record["attributes"])
        assert record["image"] == f"images/validation/{record['image_id']}.png"
        with Image.open(tmp_path / record["image"]) as image:
            assert (image.mode, image.size) == ("RGB", (96, 96))
        human, gpt = record["conversations"]
        assert human == {"from": "human", "value": f"<image>\n{QUESTIONS[record['family']]}"}
        assert gpt == {"from": "gpt", "value": record["answer"]}
        assert record["answer"] in ANSWERS[record["family"]]
    by_image = Counter(r["image_id"] for r in records)
    assert set(by_image.values()) == {len(FAMILIES)}
    meta = json.loads((tmp_path / "validation.meta.json").read_text())
    assert meta["seed"] == 0 and meta["num_images"] == 5 and meta["generator_version"] == "5"
    assert meta["config"] == GranularityConfig().to_dict()
    assert meta["counts"] == dict.fromkeys(FAMILIES, 5)


def test_answers_are_balanced_over_600_images():
    records = [r for _, recs in generate_records("train", 600, seed=0) for r in recs]
    for family in FAMILIES:
        counts = Counter(r["answer"] for r in records if r["family"] == family)
        assert set(counts) == set(ANSWERS[family]), family
        expected = 600 / len(ANSWERS[family])
        assert all(0.6 * expected < n < 1.4 * expected for n in counts.values()), (family, counts)
    baseline = majority_baseline([r["family"] for r in records], [r["answer"] for r in records])
    assert set(baseline) == {*FAMILIES, "overall"}
    assert all(baseline[f] < 1.4 / len(ANSWERS[f]) for f in FAMILIES)


def test_the_three_palettes_do_not_overlap():
    assert not set(BACKGROUND_COLORS) & set(SMALL_COLORS) and BIG_COLOR not in (*BACKGROUND_COLORS, *SMALL_COLORS)
    assert set(PALETTE) == {*BACKGROUND_COLORS, BIG_COLOR, *SMALL_COLORS}


def test_majority_baseline_counts_the_most_common_answer():
    records = [{"family": "shape", "answer": a} for a in ("circle", "circle", "square", "triangle")]
    records += [{"family": "background", "answer": "red"}]
    baseline = majority_baseline([r["family"] for r in records], [r["answer"] for r in records])
    assert baseline == {"background": 1.0, "shape": 0.5, "overall": 0.6}


@pytest.mark.parametrize("seed", range(60))
def test_attributes_are_in_the_pixels(seed):
    image, attrs = draw_sample(np.random.default_rng(seed))
    names = colour_names(np.asarray(image))
    assert Counter(names.ravel().tolist()).most_common(1)[0][0] == attrs["background"]
    # disjoint palettes: whether a patch shows an object is a property of that patch alone
    assert attrs["background"] in BACKGROUND_COLORS and attrs["small_color"] in SMALL_COLORS
    assert attrs["color"] == BIG_COLOR
    config = GranularityConfig()
    x0, y0, x1, y1 = attrs["small_box"]
    assert config.small_side_min <= attrs["small_side"] == x1 - x0 + 1 == y1 - y0 + 1 <= config.small_side_max
    assert (names[y0 : y1 + 1, x0 : x1 + 1] == attrs["small_color"]).all()
    assert (names == attrs["small_color"]).sum() == attrs["small_side"] ** 2  # nothing else has its colour
    # the small square lies inside the cell its position names
    assert x0 // CELL_SIZE == x1 // CELL_SIZE and y0 // CELL_SIZE == y1 // CELL_SIZE
    assert POSITIONS[(y0 // CELL_SIZE) * 3 + x0 // CELL_SIZE] == attrs["position"] == POSITIONS[attrs["cell"]]
    bx0, by0, bx1, by1 = attrs["box"]
    assert config.big_size_min <= attrs["big_size"] == bx1 - bx0 + 1 == by1 - by0 + 1 <= config.big_size_max
    assert attrs["gap"] == box_gap(attrs["small_box"], attrs["box"]) >= config.gap_min
    big = names[by0 : by1 + 1, bx0 : bx1 + 1] == attrs["color"]
    assert (names == attrs["color"]).sum() == big.sum()  # all white pixels are the shape's
    fill = big.mean()  # square ~1, circle ~pi/4, triangle ~1/2 of the bounding box
    expected = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}[attrs["kind"]]
    assert abs(fill - expected) < 0.08, (attrs["kind"], fill)


def test_box_gap_counts_free_pixels_between_boxes():
    assert box_gap((0, 0, 3, 3), (6, 0, 9, 3)) == 2  # columns 4 and 5 are free
    assert box_gap((6, 0, 9, 3), (0, 0, 3, 3)) == 2
    assert box_gap((0, 0, 3, 3), (4, 10, 5, 12)) == 6  # vertical separation wins
    assert box_gap((0, 0, 3, 3), (3, 3, 5, 5)) < 0  # overlapping


def test_sizes_are_log_uniform_over_the_configured_range():
    sides = np.array([draw_sample(np.random.default_rng(s))[1]["small_side"] for s in range(1500)])
    config = GranularityConfig()
    assert sides.min() == config.small_side_min and sides.max() == config.small_side_max
    # each doubling of the side is about equally likely: 4-7, 8-15 and 16-28 px (log widths 0.81, 0.69, 0.56 of 1.95)
    shares = [np.mean((sides >= lo) & (sides <= hi)) for lo, hi in ((4, 7), (8, 15), (16, 28))]
    expected = [np.log(7.5 / 3.5), np.log(15.5 / 7.5), np.log(28.5 / 15.5)] / np.log(28.5 / 3.5)
    np.testing.assert_allclose(shares, expected, atol=0.05)


def test_a_shifted_config_changes_the_attribute_distribution_and_only_it():
    shifted = GranularityConfig(small_side_max=8, big_size_max=20, gap_max=4)
    default = [attrs for _, attrs in (draw_sample(np.random.default_rng(s)) for s in range(300))]
    moved = [attrs for _, attrs in (draw_sample(np.random.default_rng(s), shifted) for s in range(300))]
    assert max(a["small_side"] for a in moved) <= 8 < max(a["small_side"] for a in default)
    assert max(a["big_size"] for a in moved) <= 20 < max(a["big_size"] for a in default)
    assert all(2 <= a["gap"] <= 4 for a in moved) and np.median([a["gap"] for a in default]) > 10
    for family in FAMILIES:  # the answers keep their distribution (drawn before the sizes, never redrawn)
        key = {"background": "background", "position": "cell", "shape": "kind", "small_color": "small_color"}[family]
        assert [a[key] for a in moved] == [a[key] for a in default]


def test_config_round_trip_and_validation(tmp_path):
    config = GranularityConfig(small_side_min=3, small_side_max=10, gap_max=6, noise=4)
    assert GranularityConfig.from_dict(config.to_dict()) == config
    write_split(tmp_path, "test", 3, seed=0, config=config)
    meta = json.loads((tmp_path / "test.meta.json").read_text())
    assert GranularityConfig.from_dict(meta["config"]) == config
    records = json.loads((tmp_path / "test.json").read_text())
    assert all(3 <= r["attributes"]["small_side"] <= 10 and r["attributes"]["gap"] <= 6 for r in records)
    with pytest.raises(ValueError, match="unknown GranularityConfig field"):
        GranularityConfig.from_dict({**config.to_dict(), "colour": 1})
    for bad in (dict(small_side_min=9, small_side_max=8), dict(small_side_max=31), dict(gap_min=0), dict(noise=-1)):
        with pytest.raises(ValueError, match="invalid GranularityConfig"):
            GranularityConfig(**bad)


def test_ensure_split_refuses_a_split_drawn_with_another_config(tmp_path):
    shifted = GranularityConfig(small_side_max=8)
    path = ensure_split(tmp_path / "test.json", "test", 2, config=shifted)  # written
    assert ensure_split(path, "test", 2, config=shifted) == path  # the same config is reused
    with pytest.raises(ValueError, match=r"another config.*'small_side_max': \(8, 28\)"):
        ensure_split(path, "test", 2)  # the default (training) config must not silently get the shifted split
    meta = tmp_path / "test.meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "generator_version": "4"}))
    with pytest.raises(ValueError, match="generator version 4"):
        ensure_split(path, "test", 2, config=shifted)


def test_every_question_and_answer_word_is_in_the_tiny_vocabulary():
    tokenizer = build_tiny_tokenizer(extra_words=VOCABULARY)
    unk = tokenizer.unk_token_id
    texts = [*QUESTIONS.values(), *(a for answers in ANSWERS.values() for a in answers)]
    assert {w for t in texts for w in t.split()} == set(VOCABULARY)
    for word in VOCABULARY:
        assert tokenizer.convert_tokens_to_ids(word) != unk, word
    for text in texts:
        ids = tokenizer(f"<image>\n{text}", add_special_tokens=False)["input_ids"]
        assert unk not in ids and len(ids) == 1 + len(text.split()), text


def test_cli_help_and_a_real_run(tmp_path):
    # both interpreters start at once: importing the m3 package (torch + transformers) dominates the time
    command = [sys.executable, "-m", "m3.data.granularity"]
    run = [*command, "--out", str(tmp_path), "--split", "validation", "--num-images", "5", "--small-side-max", "9"]
    procs = [
        subprocess.Popen(c, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in ([*command, "--help"], run)
    ]
    (help_out, help_err), (run_out, run_err) = (p.communicate(timeout=120) for p in procs)
    assert procs[0].returncode == 0, help_err
    assert "--num-images" in help_out and "--split" in help_out and "--small-side-max" in help_out
    assert procs[1].returncode == 0, run_err
    assert "validation: 5 images, 20 records" in run_out
    assert len(json.loads((tmp_path / "validation.json").read_text())) == 20
    assert len(list((tmp_path / "images" / "validation").glob("*.png"))) == 5
    meta = json.loads((tmp_path / "validation.meta.json").read_text())
    assert meta["config"] == GranularityConfig(small_side_max=9).to_dict()


def test_chat_split_asks_every_question_of_an_image_in_one_record(tmp_path):
    from m3.data.llava import normalize_conversations

    path = write_split(tmp_path, "train", num_images=5, seed=3)
    single = json.loads(path.read_text())
    chat = json.loads((tmp_path / "train.chat.json").read_text())
    assert len(chat) == 5 and [r["image_id"] for r in chat] == sorted({r["image_id"] for r in single})
    orders = set()
    for record in chat:
        turns = record["conversations"]
        assert len(turns) == 8 and turns[0]["value"].startswith("<image>\n")
        assert sum("<image>" in t["value"] for t in turns) == 1
        normalize_conversations(turns, has_image=True, record_id=record["id"])  # valid LLaVA conversation
        expected = {
            r["conversations"][0]["value"].removeprefix("<image>\n"): r["answer"]
            for r in single
            if r["image_id"] == record["image_id"]
        }
        asked = {turns[i]["value"].removeprefix("<image>\n"): turns[i + 1]["value"] for i in range(0, 8, 2)}
        assert asked == expected
        orders.add(tuple(turns[i]["value"] for i in range(0, 8, 2)))
    assert len(orders) > 1  # question order is shuffled per image
