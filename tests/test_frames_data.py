"""The frames benchmark (m3.data.frames): determinism, attributes, files, and its path into training."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m3.data import frames, granularity
from m3.data.llava import LlavaDataset, M3Collator
from m3.processing import M3Processor
from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model
from m3.training import PRESETS, TrainConfig, ensure_frames_data, train

REPO = Path(__file__).resolve().parents[1]


def pixels(folder: Path, relative: str) -> np.ndarray:
    return np.asarray(Image.open(folder / relative).convert("RGB"), dtype=np.int16)


def test_a_split_is_deterministic_in_seed_and_split(tmp_path):
    first = frames.write_split(tmp_path / "a", "validation", 4, seed=5)
    again = frames.write_split(tmp_path / "b", "validation", 4, seed=5)
    other = frames.write_split(tmp_path / "c", "validation", 4, seed=6)
    prefix = frames.write_split(tmp_path / "d", "validation", 2, seed=5)
    assert first.read_text() == again.read_text()
    for name in sorted(p.name for p in (tmp_path / "a" / "images" / "validation").iterdir()):
        a, b = (tmp_path / d / "images" / "validation" / name for d in "ab")
        assert np.array_equal(pixels(a.parent, name), pixels(b.parent, name)), name
    assert first.read_text() != other.read_text()
    records = json.loads(first.read_text())
    assert json.loads(prefix.read_text()) == records[: 2 * len(granularity.FAMILIES)]  # a smaller split is a prefix
    # splits draw from their own streams, apart from the granularity benchmark's
    test = json.loads(frames.write_split(tmp_path / "a", "test", 4, seed=5).read_text())
    assert [r["attributes"] for r in test] != [r["attributes"] for r in records]


def test_records_store_their_attributes_and_only_the_target_frame_holds_the_object(tmp_path):
    config = frames.FramesConfig(num_frames=5, noise=8)
    path = frames.write_split(tmp_path, "train", 6, seed=1, config=config)
    records = json.loads(path.read_text())
    assert len(records) == 6 * len(granularity.FAMILIES)
    targets = set()
    for record in records:
        attributes = record["attributes"]
        family = record["family"]
        assert record["answer"] == str(attributes[granularity.FAMILY_ATTRIBUTE[family]])
        assert record["target_frame"] == attributes["target_frame"] and attributes["num_frames"] == 5
        assert record["image"] == [f"images/train/{record['image_id']}_{i}.png" for i in range(5)]
        question = record["conversations"][0]["value"]
        assert question == "<image>\n" * 5 + granularity.QUESTIONS[family]
        background = np.array(granularity.PALETTE[attributes["background"]])
        for index, relative in enumerate(record["image"]):
            spread = np.abs(pixels(tmp_path, relative) - background).max()
            if index == attributes["target_frame"]:
                assert spread > 40  # the drawn objects
            else:
                assert spread <= 8  # the background and its noise, nothing else
        targets.add(record["target_frame"])
    assert len(targets) > 1
    # the target frame is the generator's own drawing, from the video's stream
    first = records[0]
    rng = np.random.default_rng(np.random.SeedSequence(1, spawn_key=(frames._split_key("train"), 0)))
    drawn, _ = granularity.draw_sample(rng)
    target = pixels(tmp_path, first["image"][first["target_frame"]])
    assert np.array_equal(target, np.asarray(drawn, dtype=np.int16))
    meta = json.loads((tmp_path / "train.meta.json").read_text())
    assert meta["config"] == config.to_dict() and meta["granularity_version"] == granularity.GENERATOR_VERSION
    assert sum(meta["target_frame_counts"].values()) == 6


def test_chat_file_trains_on_frames_and_collages(tmp_path):
    frames.write_split(tmp_path, "train", 3, seed=0)
    chats = json.loads((tmp_path / "train.chat.json").read_text())
    assert [c["id"] for c in chats] == [f"train_{i:06d}{s}" for i in range(3) for s in ("", "_collage")]
    single = json.loads((tmp_path / "train.json").read_text())
    for chat in chats:
        turns = [turn["value"] for turn in chat["conversations"]]
        asked = dict(zip(turns[0::2], turns[1::2]))
        expected = {
            r["conversations"][0]["value"].replace("<image>\n", ""): r["answer"]
            for r in single
            if r["image_id"] == chat["image_id"]
        }
        assert {q.replace("<image>\n", ""): a for q, a in asked.items()} == expected
    video = [Image.open(tmp_path / p) for p in single[0]["image"]]
    collage = Image.open(tmp_path / chats[1]["image"]).convert("RGB")
    assert np.array_equal(np.asarray(collage), np.asarray(frames.video_collage(video)))
    assert collage.size == (192, 192)  # 4 frames of 96 px: IG-VLM's 2 x 2 grid

    tokenizer = build_tiny_tokenizer(extra_words=granularity.VOCABULARY)
    model = tiny_model("llava", tokenizer=tokenizer, hidden_size=32)
    processor = M3Processor(tiny_image_processor("llava"), tokenizer, model.config)
    dataset = LlavaDataset(tmp_path / "train.chat.json", tmp_path, check_images=True)
    batch = M3Collator(processor, max_length=4096)([dataset[0], dataset[1]])
    assert (batch["input_ids"] == model.config.image_token_id).sum(dim=1).tolist() == [4, 1]
    assert batch["pixel_values"].shape[0] == 5
    assert bool(model(**batch, m3_scales=[1, 576]).loss.isfinite())


def test_a_split_of_another_version_or_config_is_refused(tmp_path):
    path = frames.ensure_split(tmp_path / "validation.json", "validation", 2, seed=0)
    assert frames.ensure_split(path, "validation", 2, seed=0, config=frames.FramesConfig()) == path  # reused
    with pytest.raises(ValueError, match="drawn with .*num_frames.: 4"):
        frames.ensure_split(path, "validation", 2, config=frames.FramesConfig(num_frames=6))
    meta = tmp_path / "validation.meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "frames_version": "0"}))
    with pytest.raises(ValueError, match="versions .*delete that folder"):
        frames.ensure_split(path, "validation", 2)
    with pytest.raises(ValueError, match="num_frames must be in"):
        frames.FramesConfig(num_frames=1)


def test_cli_writes_a_split_and_refuses_bad_settings(tmp_path):
    command = [sys.executable, "-m", "m3.data.frames", "--out", str(tmp_path), "--split", "validation"]
    run = subprocess.run([*command, "--num-videos", "2", "--num-frames", "3", "--no-collage"], cwd=REPO,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "validation: 2 videos of 3 frames" in run.stdout
    assert len(list((tmp_path / "images" / "validation").glob("*.png"))) == 6  # no collages
    assert len(json.loads((tmp_path / "validation.chat.json").read_text())) == 2
    bad = subprocess.run([*command, "--num-frames", "1"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: num_frames must be in")


def test_the_frames_preset_generates_its_data_and_trains(tmp_path):
    assert PRESETS["tiny-frames"]["dataset"] == "frames" and PRESETS["tiny-frames"]["max_length"] >= 4 * 576 + 64
    config = TrainConfig(
        dataset="frames",
        num_frames=3,
        output_dir=str(tmp_path / "run"),
        data_path=str(tmp_path / "data" / "train.chat.json"),
        eval_data_path=str(tmp_path / "data" / "validation.json"),
        train_images=4,
        eval_images=2,
        eval_samples=4,
        eval_steps=2,
        batch_size=2,
        max_steps=2,
        save_steps=0,
        tiny_hidden_size=32,
        max_length=4096,
        mixed_scale_fraction=1.0,
        logging_steps=1,
    )
    ensure_frames_data(config)
    meta = json.loads((tmp_path / "data" / "train.meta.json").read_text())
    assert meta["generator"] == "frames" and meta["config"]["num_frames"] == 3 and meta["num_videos"] == 4
    output = train(config)
    history = json.loads((output / "train_summary.json").read_text())["history"]
    assert any("eval_accuracy" in row for row in history)  # evaluated on multi-image validation records
    assert {"L1", "L9", "L36", "L144", "L576"} <= set(history[0])  # mixed passes are logged by their scale
    with pytest.raises(ValueError, match="needs scale_sampling='averaged'"):
        train(TrainConfig(**{**config.__dict__, "scale_sampling": "random", "overwrite": True}))
