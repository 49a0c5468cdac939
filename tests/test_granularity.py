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
    FAMILIES,
    PALETTE,
    POSITIONS,
    QUESTIONS,
    SMALL_COLORS,
    SMALL_SIDES,
    VOCABULARY,
    draw_sample,
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
        assert set(record) == {"id", "image", "conversations", "family", "answer", "image_id"}
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
    assert meta["seed"] == 0 and meta["num_images"] == 5 and meta["generator_version"]
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
    x0, y0, x1, y1 = attrs["small_box"]
    assert min(SMALL_SIDES) <= x1 - x0 + 1 == y1 - y0 + 1 <= max(SMALL_SIDES)
    assert (names[y0 : y1 + 1, x0 : x1 + 1] == attrs["small_color"]).all()
    cx, cy = attrs["center"]
    assert names[cy, cx] == attrs["color"]
    assert POSITIONS[(cy // CELL_SIZE) * 3 + cx // CELL_SIZE] == attrs["position"] == POSITIONS[attrs["cell"]]
    bx0, by0, bx1, by1 = attrs["box"]  # the big shape stays inside its cell and away from the small square
    assert bx0 // CELL_SIZE == bx1 // CELL_SIZE and by0 // CELL_SIZE == by1 // CELL_SIZE
    assert x1 < bx0 or x0 > bx1 or y1 < by0 or y0 > by1
    big = names[by0 : by1 + 1, bx0 : bx1 + 1] == attrs["color"]
    fill = big.mean()  # square ~1, circle ~pi/4, triangle ~1/2 of the bounding box
    expected = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}[attrs["kind"]]
    assert abs(fill - expected) < 0.08, (attrs["kind"], fill)


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
    run = [*command, "--out", str(tmp_path), "--split", "validation", "--num-images", "5"]
    procs = [
        subprocess.Popen(c, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in ([*command, "--help"], run)
    ]
    (help_out, help_err), (run_out, run_err) = (p.communicate(timeout=120) for p in procs)
    assert procs[0].returncode == 0, help_err
    assert "--num-images" in help_out and "--split" in help_out
    assert procs[1].returncode == 0, run_err
    assert "validation: 5 images, 20 records" in run_out
    assert len(json.loads((tmp_path / "validation.json").read_text())) == 20
    assert len(list((tmp_path / "images" / "validation").glob("*.png"))) == 5
    assert (tmp_path / "validation.meta.json").exists()


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
