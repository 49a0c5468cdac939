"""Slow learning check (``python -m pytest -m slow``, about 15 min on one core): a shortened tiny-preset M3 run
must learn the coarse family at every scale and the layout family only where the scale resolves the layout."""

import pytest

from m3.data.granularity import write_split
from m3.data.llava import LlavaDataset
from m3.evaluation import accuracy_table, evaluate_scales
from m3.loading import load_m3_model
from m3.processing import M3Processor
from m3.training import TrainConfig, train


@pytest.mark.slow
def test_shortened_preset_learns_background_everywhere_and_position_from_9_tokens_on(tmp_path):
    data = tmp_path / "data"
    write_split(data, "train", 2000, seed=0)
    write_split(data, "validation", 100, seed=0)
    config = TrainConfig(
        output_dir=str(tmp_path / "model"),
        data_path=str(data / "train.chat.json"),
        eval_data_path=None,
        max_steps=800,
        eval_steps=0,
        save_steps=10_000,
        seed=0,
    )
    output = train(config)
    model = load_m3_model(output).eval()
    processor = M3Processor.from_pretrained(output, config=model.config)
    validation = LlavaDataset(str(data / "validation.json"), str(data))
    items = [validation[i] for i in range(len(validation))]
    table = accuracy_table(evaluate_scales(model, processor, items, [1, 9, 576], show_progress=False))
    accuracy = {(row["family"], row["scale"]): row["accuracy"] for row in table}
    assert all(accuracy["background", s] >= 0.9 for s in (1, 9, 576)), accuracy
    assert accuracy["position", 9] >= 0.7 and accuracy["position", 576] >= 0.7, accuracy  # chance: about 0.11
    assert accuracy["position", 1] <= 0.35, accuracy  # one pooled token cannot say where the shape is
