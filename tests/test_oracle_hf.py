"""The oracle on a Hugging Face dataset: the same rows as on the files it was made from; tables as Dataset/pandas."""

import runpy
from pathlib import Path

import datasets
import numpy as np
import pytest

from m3.data.granularity import FAMILIES, write_split
from oracle_data import (
    build_oracle,
    dataset_image_reader,
    load_oracle,
    load_oracle_dataframe,
    load_oracle_dataset,
    load_samples,
    read_manifest,
)
from predictor import as_oracle_set

from . import hf_layouts

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "checkpoints" / "tiny-m3"
PER_SAMPLE = ("question", "family", "metric", "answers", "embedding", "oracle_scale", "oracle_monotone_scale")


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture(scope="module")
def oracles(tmp_path_factory):
    """The oracle of 3 granularity images (a question per family each) built from the JSON split and from the same
    split as a save_to_disk dataset (column mapping, split 'test')."""
    root = tmp_path_factory.mktemp("oracle-hf")
    split_json = write_split(root / "data", "test", num_images=3, seed=5)
    location = root / "granularity-hf"
    datasets.DatasetDict({"test": hf_layouts.granularity_dataset(split_json)}).save_to_disk(str(location))
    settings = dict(scales=[1, 9, 576], batch_size=4, shard_size=8, max_new_tokens=4, progress=False)
    build_oracle(MODEL, split_json, root / "from-json", **settings)
    build_oracle(MODEL, location, root / "from-hf", split="test", columns=hf_layouts.GRANULARITY_COLUMNS, **settings)
    return root / "from-json", root / "from-hf", location


def test_a_dataset_gives_the_rows_its_files_give(oracles):
    from_json, from_hf, location = oracles
    files, rows = load_oracle(from_json).to_pylist(), load_oracle(from_hf).to_pylist()
    assert len(rows) == 3 * len(FAMILIES)
    for a, b in zip(files, rows):
        for scale in (1, 9, 576):
            assert a[f"answer_{scale}"] == b[f"answer_{scale}"] and a[f"score_{scale}"] == b[f"score_{scale}"]
        assert all(a[key] == b[key] for key in PER_SAMPLE) and a["image_id"] == b["image_id"]
    questions = 3 * len(FAMILIES)
    assert [row["image"] for row in rows] == [f"test[{i}]" for i in range(questions)]  # each image's dataset row
    assert [row["sample_id"] for row in rows] == [str(i) for i in range(questions)]
    data = read_manifest(from_hf)["data"]
    assert (data["format"], data["split"], data["layout"], data["image_root"]) == ("hf", "test", "custom", None)
    assert data["path"] == str(location.resolve()) and data["columns"]["image"] == "image"


def test_predictor_image_features_read_the_dataset(oracles):
    from_json, from_hf, _ = oracles
    np.testing.assert_array_equal(
        as_oracle_set(from_hf).image_features(progress=False), as_oracle_set(from_json).image_features(progress=False)
    )
    read = dataset_image_reader(read_manifest(from_hf))
    assert read("test[4]").size == (96, 96) and dataset_image_reader(read_manifest(from_json)) is None


def test_oracle_tables_load_as_datasets_and_pandas(oracles):
    _, from_hf, _ = oracles
    table = load_oracle(from_hf)
    dataset, frame = load_oracle_dataset(from_hf), load_oracle_dataframe(from_hf)
    questions = 3 * len(FAMILIES)
    assert isinstance(dataset, datasets.Dataset) and dataset.num_rows == questions and frame.shape[0] == questions
    assert dataset["sample_id"] == frame["sample_id"].tolist() == table.column("sample_id").to_pylist()
    assert frame.attrs["manifest"] == read_manifest(from_hf)
    reference = as_oracle_set(from_hf)
    for data in (dataset, frame):
        oracle = as_oracle_set(data)  # the manifest travels with them: scales, image root, dataset images
        assert oracle.manifest == reference.manifest and oracle.scales == [1, 9, 576]
        np.testing.assert_array_equal(oracle.correct(), reference.correct())
        np.testing.assert_array_equal(oracle.embeddings(), reference.embeddings())
    subset = as_oracle_set(dataset.select([5, 2]))  # a Dataset with an indices mapping
    np.testing.assert_array_equal(subset.correct(), reference.correct()[[5, 2]])
    np.testing.assert_array_equal(subset.image_features(progress=False), reference.image_features()[[5, 2]])


def test_script_reads_a_dataset_and_reports_user_errors_in_one_line(tmp_path, oracles, capsys):
    _, _, location = oracles
    script = runpy.run_path(str(REPO / "scripts/build_oracle.py"), run_name="build_oracle")
    out = tmp_path / "oracle"
    script["main"](["--model", str(MODEL), "--data", str(location), "--split", "test", "--out", str(out),
                    "--columns", hf_layouts.GRANULARITY_COLUMNS, "--limit", "2", "--scales", "1,576",
                    "--max-new-tokens", "2", "--no-progress"])  # fmt: skip
    assert load_oracle(out).num_rows == 2 and read_manifest(out)["data"]["limit"] == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        script["main"](["--model", str(MODEL), "--data", str(location), "--split", "val", "--out", str(tmp_path / "x")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "split" in err and "Traceback" not in err and err.count("\n") == 1


def test_samples_of_a_known_layout_carry_its_prompt_and_the_dataset_image(tmp_path):
    location = hf_layouts.write(tmp_path, "pope", "parquet")
    data = load_samples(location, split="test")
    assert data.format == "hf" and data.hf.layout.name == "pope" and len(data.samples) == 4
    sample = data.samples[1]
    assert sample.prompt == "Is there a dog in the image?\nAnswer the question using a single word or phrase."
    assert sample.question == "Is there a dog in the image?" and sample.image_path is None
    assert sample.image == "test[1]" and sample.image_key == data.samples[0].image_key  # one image: encoded once
    assert sample.dataset_image.open().size == (40, 40)
