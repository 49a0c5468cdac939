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
    DEFAULT_CONFIG,
    DIFFICULTY_ATTRIBUTES,
    FAMILIES,
    FRAME_COLORS,
    OBJECT_COLORS,
    PALETTE,
    QUESTIONS,
    SHIFTED_CONFIG,
    VOCABULARY,
    GranularityConfig,
    GranularityConfigV5,
    GranularityConfigV6,
    draw_sample,
    ensure_split,
    generate_records,
    write_split,
)
from m3.data.granularity import v5 as generator_v5
from m3.data.granularity import v6 as generator_v6
from m3.data.granularity.v7 import COVER_SCALES, clean_cover, frame_width
from m3.metrics import majority_baseline
from m3.tiny import build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
PALETTE_RGB = np.array(list(PALETTE.values()), dtype=np.int32)
V5_DIGESTS = ["5d98f6f67660d196", "e3572341cce79bca", "8f8ebbac437681b3"]  # sha256 of test_00000{0,1,2}.png, seed 0
V6_DIGESTS = ["a65d882022e489b7", "9922c7b3b1bf05d0", "771e009f29c09fc7"]  # the same, v6 (written before v7 existed)


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
    assert meta["seed"] == 0 and meta["num_images"] == 5 and meta["generator_version"] == "7"
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


def test_the_palettes_do_not_overlap():
    assert not set(BACKGROUND_COLORS) & set(OBJECT_COLORS) and not set(FRAME_COLORS) & {
        *BACKGROUND_COLORS,
        *OBJECT_COLORS,
    }
    assert set(PALETTE) == {*BACKGROUND_COLORS, *OBJECT_COLORS, *FRAME_COLORS}
    rgb = np.array(list(PALETTE.values()))
    distances = np.sqrt(((rgb[:, None] - rgb[None]) ** 2).sum(-1))
    assert distances[~np.eye(len(rgb), dtype=bool)].min() > 60  # far apart beyond the +-8 (or 16 shifted) noise


def test_majority_baseline_counts_the_most_common_answer():
    records = [{"family": "shape", "answer": a} for a in ("circle", "circle", "square", "triangle")]
    records += [{"family": "background", "answer": "red"}]
    baseline = majority_baseline([r["family"] for r in records], [r["answer"] for r in records])
    assert baseline == {"background": 1.0, "shape": 0.5, "overall": 0.6}


def object_labels(names: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of the non-background pixels: one label per square (frames included)."""
    from scipy import ndimage

    return ndimage.label(~np.isin(names, BACKGROUND_COLORS))


@pytest.mark.parametrize("seed", range(60))
def test_attributes_are_in_the_pixels(seed):
    config = SHIFTED_CONFIG if seed % 3 == 0 else DEFAULT_CONFIG
    image, attrs = draw_sample(np.random.default_rng(seed), config)
    names = colour_names(np.asarray(image))
    assert attrs["background"] in BACKGROUND_COLORS
    assert (names[0 == object_labels(names)[0]] == attrs["background"]).all()
    frames = {}
    for frame in FRAME_COLORS:
        x0, y0, x1, y1 = frames[frame] = attrs[f"{frame}_frame_box"]
        side = attrs[f"{frame}_frame_side"]
        assert config.side_min <= side == x1 - x0 + 1 == y1 - y0 + 1 <= config.side_max
        width = frame_width(side, config.frame_divisor)
        box = names[y0 : y1 + 1, x0 : x1 + 1]
        ring = np.ones((side, side), dtype=bool)
        ring[width:-width, width:-width] = False
        assert (box[ring] == frame).all()  # the frame, side / frame_divisor px wide
        assert (box[~ring] == attrs[f"{frame}_frame_color"]).all()  # the colour it holds
        assert (names == frame).sum() == ring.sum()  # nothing else is drawn in a frame colour
        assert attrs[f"{frame}_frame_gap"] >= config.gap_min  # neighbours at least a patch away
    assert frames["white"] != frames["black"]
    labels, count = object_labels(names)
    assert count == attrs["num_objects"] >= 2 + config.distractors_min * (config is DEFAULT_CONFIG)
    assert attrs["num_objects"] <= 2 + attrs["distractors_drawn"] <= 2 + config.distractors_max
    assert (labels > 0).sum() == round(attrs["object_fraction"] * 96 * 96)


def test_frames_grow_with_the_square():
    assert [frame_width(side, 8) for side in (5, 11, 12, 20, 28, 36, 40)] == [1, 1, 2, 2, 4, 4, 5]
    assert frame_width(5, 4) == 1 and frame_width(6, 4) == 2  # at least 1 px of colour is left inside
    assert all(side - 2 * frame_width(side, d) >= 1 for side in range(5, 41) for d in range(4, 17))


def test_clean_cover_is_the_largest_clean_share_of_a_cell():
    # 9 tokens: 32 px cells. A 16 px square alone in cell (0, 0) covers a quarter of it.
    boxes = [(0, 0, 15, 15), (64, 64, 79, 79)]
    assert clean_cover(boxes, 0, 9) == 0.25 and clean_cover(boxes, 0, 36) == 1.0 and clean_cover(boxes, 0, 144) == 1.0
    # a neighbour in the same 32 px cell spoils it at 9 tokens, not at 36 (16 px cells)
    boxes.append((20, 20, 27, 27))
    assert clean_cover(boxes, 0, 9) == 0.0 and clean_cover(boxes, 0, 36) == 1.0
    # straddling cells: the best clean cell counts; a square over 4 cells of 8 px covers 16/64 of the best one
    assert clean_cover([(4, 4, 11, 11), (90, 90, 95, 95)], 0, 144) == 0.25


def test_cover_attributes_follow_the_drawing():
    """The recorded covers are :func:`clean_cover` of the drawn boxes, found again from the pixels; a bigger square
    has more clean cover at coarse scales, and 576 tokens would always be clean."""
    for seed in range(40):
        image, attrs = draw_sample(np.random.default_rng(seed))
        labels, count = object_labels(colour_names(np.asarray(image)))
        boxes = []
        for index in range(1, count + 1):
            ys, xs = np.nonzero(labels == index)
            boxes.append((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))
        for frame in FRAME_COLORS:
            index = boxes.index(tuple(attrs[f"{frame}_frame_box"]))
            for scale in COVER_SCALES:
                assert attrs[f"{frame}_frame_cover_{scale}"] == clean_cover(boxes, index, scale), (seed, frame, scale)
            assert clean_cover(boxes, index, 576) > 0  # one patch apart: some 4 px cell always holds it alone
    attrs = [draw_sample(np.random.default_rng(s))[1] for s in range(600)]
    sides = np.array([a["white_frame_side"] for a in attrs])
    cover = np.array([a["white_frame_cover_36"] for a in attrs])
    assert cover[sides >= 24].mean() > 0.8 > 0.4 > cover[sides <= 8].mean()


def test_no_two_squares_share_a_patch_so_576_tokens_separate_every_pair():
    """The finest scale resolves every image: squares are at least 4 px (one patch) apart, so no 4x4 patch holds
    two of them (and no patch holds a frame and another square's colour)."""
    for seed in range(200):
        image, attrs = draw_sample(np.random.default_rng(seed), SHIFTED_CONFIG if seed % 2 else DEFAULT_CONFIG)
        labels, count = object_labels(colour_names(np.asarray(image)))
        assert count == attrs["num_objects"], seed
        patches = labels.reshape(24, 4, 24, 4).transpose(0, 2, 1, 3).reshape(576, 16)
        assert max(len(set(p.tolist()) - {0}) for p in patches) == 1, seed


def test_sides_are_log_uniform_and_clutter_spreads_the_gaps():
    attrs = [draw_sample(np.random.default_rng(s))[1] for s in range(1500)]
    config = GranularityConfig()
    sides = np.array([a["white_frame_side"] for a in attrs] + [a["black_frame_side"] for a in attrs])
    assert sides.min() == config.side_min and sides.max() == config.side_max
    # equal log widths are about equally likely: 5-9, 10-19, 20-40 px
    edges = [config.side_min - 0.5, 9.5, 19.5, config.side_max + 0.5]
    shares = np.histogram(sides, bins=edges)[0] / len(sides)
    np.testing.assert_allclose(shares, np.diff(np.log(edges)) / np.log(edges[-1] / edges[0]), atol=0.04)
    # the gap to the nearest square runs from one patch to most of the image, and shrinks with clutter
    gaps = np.array([a["white_frame_gap"] for a in attrs])
    assert gaps.min() == config.gap_min and np.quantile(gaps, 0.95) > 24
    counts = np.array([a["num_objects"] for a in attrs])
    assert np.corrcoef(np.log(gaps), counts)[0, 1] < -0.4
    drawn = np.array([a["distractors_drawn"] for a in attrs])
    assert set(drawn.tolist()) == set(range(config.distractors_min, config.distractors_max + 1))


def test_a_shifted_config_changes_the_attribute_distribution():
    default = [draw_sample(np.random.default_rng(s))[1] for s in range(300)]
    moved = [draw_sample(np.random.default_rng(s), SHIFTED_CONFIG)[1] for s in range(300)]
    assert max(a["white_frame_side"] for a in moved) <= SHIFTED_CONFIG.side_max < DEFAULT_CONFIG.side_max
    def mean(attrs: list[dict], name: str) -> float:
        return float(np.mean([a[name] for a in attrs]))

    assert mean(default, "white_frame_gap") > 1.15 * mean(moved, "white_frame_gap")
    assert mean(moved, "num_objects") > 1.5 * mean(default, "num_objects")
    # smaller squares in more clutter: less clean cover at 36 tokens
    assert mean(moved, "white_frame_cover_36") < 0.6 * mean(default, "white_frame_cover_36")
    assert SHIFTED_CONFIG.noise > DEFAULT_CONFIG.noise  # noisier too


@pytest.mark.parametrize("seed", range(20))
def test_version_6_attributes_are_in_the_pixels(seed):
    config = GranularityConfigV6()
    image, attrs = generator_v6.draw_sample(np.random.default_rng(seed), config)
    names = colour_names(np.asarray(image))
    for frame in FRAME_COLORS:
        x0, y0, x1, y1 = attrs[f"{frame}_frame_box"]
        side = attrs[f"{frame}_frame_side"]
        box = names[y0 : y1 + 1, x0 : x1 + 1]
        border = np.concatenate([box[0], box[-1], box[1:-1, 0], box[1:-1, -1]])
        assert (border == frame).all() and (box[1:-1, 1:-1] == attrs[f"{frame}_frame_color"]).all()
        assert (names == frame).sum() == 4 * (side - 1)
        assert attrs[f"{frame}_frame_gap"] >= max(attrs["gap"], config.gap_min)


def split_image_digests(folder, count: int) -> list[str]:
    """The first 16 hex digits of the sha256 of each of a test split's first ``count`` images."""
    return [
        hashlib.sha256((folder / f"images/test/test_{i:06d}.png").read_bytes()).hexdigest()[:16] for i in range(count)
    ]


def test_version_6_stays_reproducible(tmp_path):
    """Splits of generator v6 (the figures measured on it) are drawn byte for byte as before v7 existed."""
    path = write_split(tmp_path, "test", 3, seed=0, config=GranularityConfigV6())
    meta = json.loads((tmp_path / "test.meta.json").read_text())
    assert meta["generator_version"] == "6" and meta["config"] == GranularityConfigV6().to_dict()
    digests = split_image_digests(tmp_path, 3)
    assert digests == V6_DIGESTS
    with pytest.raises(ValueError, match="generator version 6, but version 7"):
        ensure_split(path, "test", 3)  # a v6 split never passes for the default (v7) one
    assert ensure_split(path, "test", 3, config=GranularityConfigV6()) == path


def test_version_5_stays_reproducible(tmp_path):
    """Splits of generator v5 (the earlier benchmark, and the figures measured on it) are drawn byte for byte as
    before: these digests were written by the v5 code before version 6 existed."""
    path = write_split(tmp_path, "test", 3, seed=0, config=GranularityConfigV5())
    meta = json.loads((tmp_path / "test.meta.json").read_text())
    assert meta["generator_version"] == "5" and meta["config"] == GranularityConfigV5().to_dict()
    records = json.loads(path.read_text())
    assert [r["family"] for r in records[:3]] == list(generator_v5.FAMILIES)
    digests = split_image_digests(tmp_path, 3)
    assert digests == V5_DIGESTS
    with pytest.raises(ValueError, match="generator version 5, but version 7"):
        ensure_split(path, "test", 3)  # a v5 split never passes for the default (v7) one
    assert ensure_split(path, "test", 3, config=GranularityConfigV5()) == path


def test_config_round_trip_and_validation(tmp_path):
    config = GranularityConfig(side_min=6, side_max=10, distractors_max=3, noise=4)
    assert GranularityConfig.from_dict(config.to_dict()) == config
    write_split(tmp_path, "test", 3, seed=0, config=config)
    meta = json.loads((tmp_path / "test.meta.json").read_text())
    assert GranularityConfig.from_dict(meta["config"]) == config
    records = json.loads((tmp_path / "test.json").read_text())
    assert all(6 <= r["attributes"]["white_frame_side"] <= 10 and r["attributes"]["num_objects"] <= 5 for r in records)
    with pytest.raises(ValueError, match="unknown GranularityConfig field"):
        GranularityConfig.from_dict({**config.to_dict(), "colour": 1})
    bad_configs = (dict(side_min=9, side_max=8), dict(side_max=41), dict(side_min=4), dict(gap_min=3), dict(gap_min=13))
    bad_configs += (dict(distractors_min=3, distractors_max=2), dict(distractors_max=25), dict(frame_divisor=3))
    for bad in (*bad_configs, dict(noise=-1)):
        with pytest.raises(ValueError, match="invalid GranularityConfig"):
            GranularityConfig(**bad)


def test_ensure_split_refuses_a_split_drawn_with_another_config(tmp_path):
    shifted = GranularityConfig(side_max=8)
    path = ensure_split(tmp_path / "test.json", "test", 2, config=shifted)  # written
    assert ensure_split(path, "test", 2, config=shifted) == path  # the same config is reused
    with pytest.raises(ValueError, match=rf"another config.*'side_max': \(8, {DEFAULT_CONFIG.side_max}\)"):
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
    run = [*command, "--out", str(tmp_path), "--split", "validation", "--num-images", "5", "--side-max", "9"]
    procs = [
        subprocess.Popen(c, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in ([*command, "--help"], run)
    ]
    (help_out, help_err), (run_out, run_err) = (p.communicate(timeout=120) for p in procs)
    assert procs[0].returncode == 0, help_err
    assert "--num-images" in help_out and "--split" in help_out and "--side-max" in help_out
    assert procs[1].returncode == 0, run_err
    assert f"validation: 5 images, {5 * len(FAMILIES)} records" in run_out
    assert len(json.loads((tmp_path / "validation.json").read_text())) == 5 * len(FAMILIES)
    assert len(list((tmp_path / "images" / "validation").glob("*.png"))) == 5
    meta = json.loads((tmp_path / "validation.meta.json").read_text())
    assert meta["config"] == GranularityConfig(side_max=9).to_dict()


def test_the_shifted_flag_draws_the_documented_shift_and_other_flags_refine_it(tmp_path):
    from m3.data.granularity import main

    assert SHIFTED_CONFIG.side_max < DEFAULT_CONFIG.side_max
    main(["--out", str(tmp_path / "a"), "--split", "test", "--num-images", "3", "--shifted"])
    meta = json.loads((tmp_path / "a" / "test.meta.json").read_text())
    assert meta["config"] == SHIFTED_CONFIG.to_dict()
    main(["--out", str(tmp_path / "b"), "--split", "test", "--num-images", "3", "--shifted", "--noise", "2"])
    meta = json.loads((tmp_path / "b" / "test.meta.json").read_text())
    assert meta["config"] == {**SHIFTED_CONFIG.to_dict(), "noise": 2}
    for record in json.loads((tmp_path / "a" / "test.json").read_text()):
        attributes = record["attributes"]
        assert attributes["white_frame_side"] <= SHIFTED_CONFIG.side_max
        assert attributes["num_objects"] <= 2 + SHIFTED_CONFIG.distractors_max


def test_chat_split_asks_every_question_of_an_image_in_one_record(tmp_path):
    from m3.data.llava import normalize_conversations

    path = write_split(tmp_path, "train", num_images=5, seed=3)
    single = json.loads(path.read_text())
    chat = json.loads((tmp_path / "train.chat.json").read_text())
    assert len(chat) == 5 and [r["image_id"] for r in chat] == sorted({r["image_id"] for r in single})
    orders = set()
    for record in chat:
        turns = record["conversations"]
        assert len(turns) == 2 * len(FAMILIES) and turns[0]["value"].startswith("<image>\n")
        assert sum("<image>" in t["value"] for t in turns) == 1
        normalize_conversations(turns, has_image=True, record_id=record["id"])  # valid LLaVA conversation
        expected = {
            r["conversations"][0]["value"].removeprefix("<image>\n"): r["answer"]
            for r in single
            if r["image_id"] == record["image_id"]
        }
        asked = {turns[i]["value"].removeprefix("<image>\n"): turns[i + 1]["value"] for i in range(0, len(turns), 2)}
        assert asked == expected
        orders.add(tuple(turns[i]["value"] for i in range(0, len(turns), 2)))
    assert len(orders) > 1  # question order is shuffled per image


def test_a_damaged_meta_file_is_named_not_a_traceback(tmp_path):
    from m3.files import DamagedFileError

    path = ensure_split(tmp_path / "test.json", "test", 2)
    (tmp_path / "test.meta.json").write_text('{"generator_version": "7", "con')  # a truncated write
    with pytest.raises(DamagedFileError, match="test.meta.json"):
        ensure_split(path, "test", 2)
