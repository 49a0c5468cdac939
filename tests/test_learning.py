"""Slow learning check (``python -m pytest -m slow``, about 30 min on one core): the tiny preset, trained as
``python scripts/train_m3.py --preset tiny`` trains it (seed 0, 2000 steps), must show the granularity profile of
generator v5. The background is read at every scale; which square is left or top is read at full scale, better
from finer scales, and better at 36 tokens when the squares are far apart than when they are close (the image,
not the question, decides how many tokens a question needs).

Measured on the committed checkpoint (the same run) on the test split: square families 0.344 / 0.439 / 0.528 /
0.624 / 0.670 at 1 / 9 / 36 / 144 / 576 tokens; far pairs (gap >= 32 px) 0.712 at 36 and 0.877 at 576, close pairs
(gap < 8 px) 0.537 at 36. On the validation split this test reads (200 images, 62 far square questions): far
0.597 and close 0.527 at 36 tokens (22 min of one core in all). The bounds leave room for that smaller split."""

import json

import numpy as np
import pytest

from m3.data.granularity import DEFAULT_NUM_IMAGES, FAMILIES, write_split
from m3.data.llava import LlavaDataset
from m3.evaluation import evaluate_scales
from m3.loading import load_m3_model
from m3.processing import M3Processor
from m3.training import TrainConfig, train

SQUARE_FAMILIES = [f for f in FAMILIES if f != "background"]
GAP = {"left_color": "gap_x", "top_color": "gap_y"}  # the gap that decides which square is left / top
SCALES = [1, 36, 144, 576]


@pytest.mark.slow
def test_the_tiny_preset_reads_the_background_everywhere_and_far_squares_from_fewer_tokens(tmp_path):
    data = tmp_path / "data"
    write_split(data, "train", DEFAULT_NUM_IMAGES["train"], seed=0)
    write_split(data, "validation", DEFAULT_NUM_IMAGES["validation"], seed=0)
    config = TrainConfig(
        output_dir=str(tmp_path / "model"),
        data_path=str(data / "train.chat.json"),
        eval_data_path=None,
        eval_steps=0,
        save_steps=10_000,
        seed=0,
    )
    output = train(config)
    model = load_m3_model(output).eval()
    processor = M3Processor.from_pretrained(output, config=model.config)
    validation = LlavaDataset(str(data / "validation.json"), str(data))
    items = [validation[i] for i in range(len(validation))]
    rows = evaluate_scales(model, processor, items, SCALES, show_progress=False)
    records = {r["id"]: r for r in json.loads((data / "validation.json").read_text())}

    def accuracy(scale: int, families, gaps=(0, 10**9)) -> float:
        chosen = [
            row["correct"]
            for row in rows
            if row["scale"] == scale
            and row["family"] in families
            and (
                row["family"] == "background"
                or gaps[0] <= records[row["id"]]["attributes"][GAP[row["family"]]] < gaps[1]
            )
        ]
        return float(np.mean(chosen))

    far, close = (32, 10**9), (0, 8)  # free px between the squares (a 9-token cell is 32 px wide)
    table = {(s, name): accuracy(s, SQUARE_FAMILIES, g) for s in SCALES for name, g in (("far", far), ("close", close))}
    squares = {s: accuracy(s, SQUARE_FAMILIES) for s in SCALES}
    assert all(accuracy(s, ["background"]) >= 0.9 for s in SCALES), table
    assert squares[576] >= 0.55, squares  # chance: about 0.25
    assert squares[144] >= squares[1] + 0.2, squares  # one token cannot say which square is left or top
    assert table[576, "far"] >= 0.7, table
    assert table[36, "far"] >= table[36, "close"] + 0.05, table  # far pairs are told apart by fewer tokens
