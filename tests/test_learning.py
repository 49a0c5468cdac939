"""Slow learning check (``python -m pytest -m slow``, about 45 min on one core): the tiny preset, trained as
``python scripts/train_m3.py --preset tiny`` trains it (seed 0, 4000 steps), must show the granularity profile of
generator v6. The background is read at every scale; the colour inside the white frame is read at full scale, better
from finer scales, and better at 36 tokens when the framed square is large than when it is small (the image, not
the question, decides how many tokens a question needs).

Measured on the committed checkpoint (the same run) on the validation split this test reads (200 images): white
frame 0.185 / 0.705 / 0.940 / 0.970 at 1 / 36 / 144 / 576 tokens; at 36 tokens large framed squares (side > 6 px,
117 questions) 0.821 and small ones (83) 0.542; background 1.000 at every scale. The black frame is NOT learned
(0.385 at 576 tokens on the committed run, 0.10 when this test retrained it: 45 min wall, every other assertion
passing), so this test asserts nothing about it."""

import json

import numpy as np
import pytest

from m3.data.granularity import DEFAULT_NUM_IMAGES, write_split
from m3.data.llava import LlavaDataset
from m3.evaluation import evaluate_scales
from m3.loading import load_m3_model
from m3.processing import M3Processor
from m3.training import TrainConfig, train

SCALES = [1, 36, 144, 576]
SMALL_SIDE = 6  # px, frame included: at 36 tokens (16 px cells) a small framed square blends with its cell


@pytest.mark.slow
def test_the_tiny_preset_reads_the_background_everywhere_and_large_framed_squares_from_fewer_tokens(tmp_path):
    data = tmp_path / "data"
    write_split(data, "train", DEFAULT_NUM_IMAGES["train"], seed=0)
    write_split(data, "validation", DEFAULT_NUM_IMAGES["validation"], seed=0)
    config = TrainConfig(
        output_dir=str(tmp_path / "model"),
        data_path=str(data / "train.chat.json"),
        eval_data_path=str(data / "validation.json"),  # as the preset: periodic evaluations on validation
        seed=0,
    )
    output = train(config)
    model = load_m3_model(output).eval()
    processor = M3Processor.from_pretrained(output, config=model.config)
    validation = LlavaDataset(str(data / "validation.json"), str(data))
    items = [validation[i] for i in range(len(validation))]
    rows = evaluate_scales(model, processor, items, SCALES, show_progress=False)
    attributes = {r["id"]: r["attributes"] for r in json.loads((data / "validation.json").read_text())}

    def accuracy(scale: int, family: str, keep=lambda attributes: True) -> float:
        chosen = [
            row["correct"]
            for row in rows
            if row["scale"] == scale and row["family"] == family and keep(attributes[row["id"]])
        ]
        return float(np.mean(chosen))

    white = {s: accuracy(s, "white_frame") for s in SCALES}
    small = accuracy(36, "white_frame", lambda a: a["white_frame_side"] <= SMALL_SIDE)
    large = accuracy(36, "white_frame", lambda a: a["white_frame_side"] > SMALL_SIDE)
    assert all(accuracy(s, "background") >= 0.9 for s in SCALES)
    assert white[576] >= 0.85, white  # chance: about 1/6
    assert white[144] >= white[1] + 0.5, white  # one token cannot say which colour the frame holds
    assert large >= small + 0.15, (large, small)  # large framed squares are read from fewer tokens
