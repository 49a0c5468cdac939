"""Training reads Hugging Face datasets: the same batches as the LLaVA JSON they were made from."""

from pathlib import Path

import datasets
import pytest
import torch

from m3.data.granularity import FAMILIES, VOCABULARY, write_split
from m3.data.hf import HFInstructionDataset, load_hf
from m3.data.llava import LlavaDataset, M3Collator
from m3.processing import M3Processor
from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model
from m3.training import TrainConfig, open_training_data, train

from . import hf_layouts


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def split_and_dataset(tmp_path):
    split_json = write_split(tmp_path / "data", "train", num_images=2, seed=1)
    location = tmp_path / "train-hf"
    hf_layouts.granularity_dataset(split_json).save_to_disk(str(location))
    return split_json, location


def test_dataset_items_collate_to_the_batches_of_the_json(split_and_dataset):
    split_json, location = split_and_dataset
    tokenizer = build_tiny_tokenizer(extra_words=VOCABULARY)
    model = tiny_model("llava", tokenizer=tokenizer, hidden_size=32)
    collate = M3Collator(M3Processor(tiny_image_processor("llava"), tokenizer, model.config))
    from_json = LlavaDataset(split_json, split_json.parent)
    from_hf = HFInstructionDataset(load_hf(location, columns=hf_layouts.GRANULARITY_COLUMNS))
    n = 2 * len(FAMILIES)
    assert len(from_hf) == len(from_json) == n
    json_batch, hf_batch = collate([from_json[i] for i in range(n)]), collate([from_hf[i] for i in range(n)])
    assert json_batch.keys() == hf_batch.keys()
    for key in json_batch:
        assert torch.equal(json_batch[key], hf_batch[key]), key
    item = from_hf[3]
    assert item["answer"] == from_json[3]["answer"] and item["family"] == from_json[3]["family"]


def test_training_runs_on_a_dataset(tmp_path, split_and_dataset):
    _, location = split_and_dataset
    config = TrainConfig(
        output_dir=str(tmp_path / "run"), data_path=str(location), data_columns=hf_layouts.GRANULARITY_COLUMNS,
        eval_data_path=None, batch_size=4, max_steps=2, save_steps=100, logging_steps=1, eval_steps=0,
        tiny_hidden_size=32, warmup_ratio=0.0,
    )  # fmt: skip
    assert isinstance(open_training_data(config), HFInstructionDataset)
    output = train(config)
    assert (output / "model.safetensors").is_file()
    written = sorted(p.name for p in location.iterdir())  # no granularity split was generated into the dataset
    assert written == ["data-00000-of-00001.arrow", "dataset_info.json", "state.json"]


def test_a_bad_dataset_image_is_found_before_the_model_is_built(tmp_path, split_and_dataset, monkeypatch):
    """As for image files: every row's image decodes before step 1 (naming the row), or the row is dropped."""
    from m3.data.llava import BadImageError

    split_json, _ = split_and_dataset
    dataset = hf_layouts.granularity_dataset(split_json).cast_column("image", datasets.Image(decode=False))
    rows = dataset.to_list()
    image = rows[5]["image"]
    whole = image["bytes"] if image["bytes"] is not None else Path(image["path"]).read_bytes()
    rows[5]["image"] = {"bytes": whole[:40], "path": None}  # a truncated PNG
    location = tmp_path / "bad-hf"
    datasets.Dataset.from_list(rows, features=dataset.features).save_to_disk(str(location))
    config = TrainConfig(
        output_dir=str(tmp_path / "run"), data_path=str(location), data_columns=hf_layouts.GRANULARITY_COLUMNS,
        eval_data_path=None, batch_size=4, max_steps=1, tiny_hidden_size=32,
    )  # fmt: skip
    built = []
    monkeypatch.setattr("m3.training.build_model_and_processor", lambda *args: built.append(1))
    with pytest.raises(BadImageError, match="row 5"):
        train(config)
    assert not built
    config.skip_bad_images = True
    kept = open_training_data(config)
    assert len(kept) == 2 * len(FAMILIES) - 1 and kept.skipped_ids == ["5"]
