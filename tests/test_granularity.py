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
    draw_sample,
    ensure_split,
    generate_records,
    write_split,
)
from m3.data.granularity import v5 as generator_v5
from m3.metrics import majority_baseline
from m3.tiny import build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
PALETTE_RGB = np.array(list(PALETTE.values()), dtype=np.int32)
V5_DIGESTS = ["5d98f6f67660d196", "e3572341cce79bca", "8f8ebbac437681b3"]  # sha256 of test_00000{0,1,2}.png, seed 0


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
    assert meta["seed"] == 0 and meta["num_images"] == 5 and meta["generator_version"] == "6"
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


@pytest.mark.parametrize("seed", range(60))
def test_attributes_are_in_the_pixels(seed):
    image, attrs = draw_sample(np.random.default_rng(seed))
    names = colour_names(np.asarray(image))
    assert Counter(names.ravel().tolist()).most_common(1)[0][0] == attrs["background"]
    assert attrs["background"] in BACKGROUND_COLORS
    config = GranularityConfig()
    frames = {}
    for frame in FRAME_COLORS:
        x0, y0, x1, y1 = frames[frame] = attrs[f"{frame}_frame_box"]
        side = attrs[f"{frame}_frame_side"]
        assert config.side_min <= side == x1 - x0 + 1 == y1 - y0 + 1 <= config.side_max
        box = names[y0 : y1 + 1, x0 : x1 + 1]
        border = np.concatenate([box[0], box[-1], box[1:-1, 0], box[1:-1, -1]])
        assert (border == frame).all()  # the 1 px frame
        assert (box[1:-1, 1:-1] == attrs[f"{frame}_frame_color"]).all()  # the colour it holds
        assert (names == frame).sum() == 4 * (side - 1)  # nothing else is drawn in a frame colour
        assert attrs[f"{frame}_frame_gap"] >= max(attrs["gap"], config.gap_min)  # neighbours at least a patch away
    assert frames["white"] != frames["black"]
    assert attrs["num_objects"] >= 4 and 0 < attrs["object_fraction"] < 0.6
    squares = (np.isin(names, OBJECT_COLORS) | np.isin(names, FRAME_COLORS)).sum()
    assert squares == round(attrs["object_fraction"] * 96 * 96)


def test_no_two_squares_share_a_patch_so_576_tokens_separate_every_pair():
    """The finest scale resolves every image: squares are at least 4 px (one patch) apart, so no 4x4 patch holds
    two of them (and no patch holds a frame and another square's colour)."""
    for seed in range(200):
        image, attrs = draw_sample(np.random.default_rng(seed), SHIFTED_CONFIG if seed % 2 else DEFAULT_CONFIG)
        names = colour_names(np.asarray(image))
        # label every square's pixels by connected component of non-background pixels, then check patches
        from scipy import ndimage

        labels, count = ndimage.label(~np.isin(names, BACKGROUND_COLORS))
        assert count == attrs["num_objects"], seed
        patches = labels.reshape(24, 4, 24, 4).transpose(0, 2, 1, 3).reshape(576, 16)
        assert max(len(set(p.tolist()) - {0}) for p in patches) == 1, seed


def test_sides_and_gaps_are_log_uniform_over_the_configured_range():
    attrs = [draw_sample(np.random.default_rng(s))[1] for s in range(1500)]
    config = GranularityConfig()
    sides = np.array([a["white_frame_side"] for a in attrs] + [a["black_frame_side"] for a in attrs])
    assert sides.min() == config.side_min and sides.max() == config.side_max
    gaps = np.array([a["gap"] for a in attrs])
    assert gaps.min() == config.gap_min and gaps.max() == config.gap_max
    # equal log widths are about equally likely: each of the four octaves 4-7, 8-15, 16-31, 32-48 px
    edges = [config.gap_min - 0.5, 7.5, 15.5, 31.5, config.gap_max + 0.5]
    shares = np.histogram(gaps, bins=edges)[0] / len(gaps)
    expected = np.diff(np.log(edges)) / np.log(edges[-1] / edges[0])
    np.testing.assert_allclose(shares, expected, atol=0.04)
    # a smaller gap packs more squares: what a router can read from the whole image
    counts = np.array([a["num_objects"] for a in attrs])
    assert np.corrcoef(np.log(gaps), counts)[0, 1] < -0.8


def test_a_shifted_config_changes_the_attribute_distribution():
    default = [draw_sample(np.random.default_rng(s))[1] for s in range(300)]
    moved = [draw_sample(np.random.default_rng(s), SHIFTED_CONFIG)[1] for s in range(300)]
    assert max(a["white_frame_side"] for a in moved) <= SHIFTED_CONFIG.side_max < DEFAULT_CONFIG.side_max
    assert all(SHIFTED_CONFIG.gap_min <= a["gap"] <= SHIFTED_CONFIG.gap_max for a in moved)
    assert np.median([a["gap"] for a in default]) > 1.5 * np.median([a["gap"] for a in moved])
    assert np.mean([a["num_objects"] for a in moved]) > np.mean([a["num_objects"] for a in default])
    assert SHIFTED_CONFIG.noise > DEFAULT_CONFIG.noise  # noisier too


def test_version_5_stays_reproducible(tmp_path):
    """Splits of generator v5 (the earlier benchmark, and the figures measured on it) are drawn byte for byte as
    before: these digests were written by the v5 code before version 6 existed."""
    path = write_split(tmp_path, "test", 3, seed=0, config=GranularityConfigV5())
    meta = json.loads((tmp_path / "test.meta.json").read_text())
    assert meta["generator_version"] == "5" and meta["config"] == GranularityConfigV5().to_dict()
    records = json.loads(path.read_text())
    assert [r["family"] for r in records[:3]] == list(generator_v5.FAMILIES)
    digests = [
        hashlib.sha256((tmp_path / f"images/test/test_{i:06d}.png").read_bytes()).hexdigest()[:16] for i in range(3)
    ]
    assert digests == V5_DIGESTS
    with pytest.raises(ValueError, match="generator version 5, but version 6"):
        ensure_split(path, "test", 3)  # a v5 split never passes for the default (v6) one
    assert ensure_split(path, "test", 3, config=GranularityConfigV5()) == path


def test_config_round_trip_and_validation(tmp_path):
    config = GranularityConfig(side_min=4, side_max=10, gap_max=6, noise=4)
    assert GranularityConfig.from_dict(config.to_dict()) == config
    write_split(tmp_path, "test", 3, seed=0, config=config)
    meta = json.loads((tmp_path / "test.meta.json").read_text())
    assert GranularityConfig.from_dict(meta["config"]) == config
    records = json.loads((tmp_path / "test.json").read_text())
    assert all(4 <= r["attributes"]["white_frame_side"] <= 10 and r["attributes"]["gap"] <= 6 for r in records)
    with pytest.raises(ValueError, match="unknown GranularityConfig field"):
        GranularityConfig.from_dict({**config.to_dict(), "colour": 1})
    bad_configs = (dict(side_min=9, side_max=8), dict(side_max=17), dict(side_min=3), dict(gap_min=3), dict(gap_max=90))
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

    assert SHIFTED_CONFIG.side_max < DEFAULT_CONFIG.side_max and SHIFTED_CONFIG.gap_max < DEFAULT_CONFIG.gap_max
    main(["--out", str(tmp_path / "a"), "--split", "test", "--num-images", "3", "--shifted"])
    meta = json.loads((tmp_path / "a" / "test.meta.json").read_text())
    assert meta["config"] == SHIFTED_CONFIG.to_dict()
    main(["--out", str(tmp_path / "b"), "--split", "test", "--num-images", "3", "--shifted", "--noise", "2"])
    meta = json.loads((tmp_path / "b" / "test.meta.json").read_text())
    assert meta["config"] == {**SHIFTED_CONFIG.to_dict(), "noise": 2}
    for record in json.loads((tmp_path / "a" / "test.json").read_text()):
        attributes = record["attributes"]
        assert attributes["white_frame_side"] <= SHIFTED_CONFIG.side_max and attributes["gap"] <= SHIFTED_CONFIG.gap_max


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
    (tmp_path / "test.meta.json").write_text('{"generator_version": "6", "con')  # a truncated write
    with pytest.raises(DamagedFileError, match="test.meta.json"):
        ensure_split(path, "test", 2)
