"""Slow learning check (``python -m pytest -m slow``, about 20 min on one core): a shortened tiny-preset M3 run
must show the granularity profile of generator v5. The background is read at every scale; which square is left
or top is read at full scale, and at 9 tokens only when the squares are far apart (the image, not the question,
decides how many tokens a question needs). Measured on the run this test repeats (seed 0, one core): square
families 0.73 at 576 tokens; far pairs 0.94 at 576, 0.60 at 9 and 0.36 at 1 token; close pairs 0.70 at 576
and 0.42 at 9."""

import json

import numpy as np
import pytest

from m3.data.granularity import FAMILIES, write_split
from m3.data.llava import LlavaDataset
from m3.evaluation import evaluate_scales
from m3.loading import load_m3_model
from m3.processing import M3Processor
from m3.training import TrainConfig, train

SQUARE_FAMILIES = [f for f in FAMILIES if f != "background"]
GAP = {"left_color": "gap_x", "top_color": "gap_y"}  # the gap that decides which square is left / top


@pytest.mark.slow
def test_shortened_preset_reads_the_background_everywhere_and_far_squares_from_9_tokens_on(tmp_path):
    data = tmp_path / "data"
    write_split(data, "train", 3000, seed=0)
    write_split(data, "validation", 200, seed=0)
    config = TrainConfig(
        output_dir=str(tmp_path / "model"),
        data_path=str(data / "train.chat.json"),
        eval_data_path=None,
        max_steps=1400,
        eval_steps=0,
        save_steps=10_000,
        seed=0,
    )
    output = train(config)
    model = load_m3_model(output).eval()
    processor = M3Processor.from_pretrained(output, config=model.config)
    validation = LlavaDataset(str(data / "validation.json"), str(data))
    items = [validation[i] for i in range(len(validation))]
    rows = evaluate_scales(model, processor, items, [1, 9, 576], show_progress=False)
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

    far, close = (32, 10**9), (0, 8)  # gaps between the squares, in px (a 9-token cell is 32 px wide)
    table = {
        (s, name): accuracy(s, SQUARE_FAMILIES, g) for s in (1, 9, 576) for name, g in (("far", far), ("close", close))
    }
    assert all(accuracy(s, ["background"]) >= 0.9 for s in (1, 9, 576)), table
    assert accuracy(576, SQUARE_FAMILIES) >= 0.6, table  # chance: about 0.25
    assert table[576, "far"] >= 0.8 and table[1, "far"] <= 0.6, table  # one token cannot say which is left
    assert table[9, "far"] >= table[9, "close"] + 0.1, table  # far pairs are told apart by 9 tokens ...
    assert table[576, "close"] >= table[9, "close"] + 0.15, table  # ... close pairs need finer scales
