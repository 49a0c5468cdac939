"""Hugging Face datasets as inputs: the lmms-lab layouts, column mappings, images read from the dataset, errors."""

import datasets
import numpy as np
import pytest

from m3.data.hf import (
    LAYOUTS,
    DatasetImages,
    detect_layout,
    is_hf_location,
    load_hf,
    open_dataset,
    parse_columns,
)
from m3.data.llava import BadImageError
from m3.metrics import score

from . import hf_layouts

SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
# (layout, metric, family of row 0, first prompt, answers of row 0), the prompts as lmms-eval 0.7.3 builds them
EXPECTED = {
    "textvqa": ("vqa_accuracy", None, "What is the brand?" + SHORT, ("nokia",) * 7 + ("nokla",) * 3),
    "docvqa": ("anls", None, "What is the date?" + SHORT, ("1/8/93", "January 8, 1993")),
    "chartqa": (
        "relaxed_accuracy", "human_test", "What is the highest value?\nAnswer the question with a single word.",
        ("42.5",),
    ),
    "pope": ("pope", "adversarial", "Is there a snowboard in the image?" + SHORT, ("yes",)),
    "mmbench": (
        "multiple_choice", "attribute_recognition",
        f"The car is parked. Which color is the car? There are several options:\nA. red\nB. blue\nC. green\n\n{LETTER}",
        ("B",),
    ),
    "scienceqa": (
        "multiple_choice", "natural science",
        f"Context: Moles live underground.\nWhich animal's feet are adapted for digging?\nA. mole\nB. duck\n{LETTER}",
        ("A",),
    ),
}  # fmt: skip


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """Parquet loads write an Arrow cache: keep it in the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.mark.parametrize("fmt", ["disk", "parquet"])
@pytest.mark.parametrize("layout", sorted(EXPECTED))
def test_each_lmms_lab_layout_is_recognised_with_its_metric_and_prompt(tmp_path, layout, fmt):
    location = hf_layouts.write(tmp_path, layout, fmt, split="validation")
    assert is_hf_location(location)
    data = load_hf(location, "validation")
    metric, family, prompt, answers = EXPECTED[layout]
    assert data.layout is LAYOUTS[layout] and data.split == "validation"
    first = data.items[0]
    assert (first.metric, first.family, first.prompt, first.answers) == (metric, family, prompt, answers)
    assert first.sample_id == "0"  # the row number: lmms-eval's doc_id
    assert [item.row for item in data.items] == [r for r in range(len(hf_layouts.columns(layout)["question"]))
                                                 if r not in data.skipped_rows]  # fmt: skip
    # the image comes out of the dataset, pixel for pixel
    original = hf_layouts.columns(layout)["image"][first.row]
    np.testing.assert_array_equal(np.asarray(data.images().open(first.row)), np.asarray(original.convert("RGB")))
    # a reference answer scores 1 under the layout's metric
    reference = first.answers[0]
    assert score(first.metric, reference, first.answers, first.choices) == 1.0


def test_layout_details_images_ids_options_and_rows_without_an_image(tmp_path):
    textvqa = load_hf(hf_layouts.write(tmp_path, "textvqa"), "test")
    assert [item.image_id for item in textvqa.items] == ["a1", "a1", "b2"]  # the dataset's image_id column
    chartqa = load_hf(hf_layouts.write(tmp_path, "chartqa"), "test")
    ids = [item.image_id for item in chartqa.items]  # no id column: a hash of the image bytes
    assert ids[0] == ids[1] != ids[2] and ids[0].startswith("sha1-")
    mmbench = load_hf(hf_layouts.write(tmp_path, "mmbench"), "test")
    assert [item.choices for item in mmbench.items] == [("red", "blue", "green"), ("a dog", "a cat"),
                                                        ("1", "2", "3", "4")]  # fmt: skip
    assert mmbench.items[2].prompt.startswith("How many cats are there? There are several options:")  # hint "nan"
    scienceqa = load_hf(hf_layouts.write(tmp_path, "scienceqa"), "test")
    assert scienceqa.skipped_rows == [1] and [item.row for item in scienceqa.items] == [0, 2]
    assert scienceqa.items[1].answers == ("B",) and scienceqa.items[1].training_answer == "B"
    assert scienceqa.items[1].prompt == f"Which is a solid?\nA. milk\nB. rock\n{LETTER}"  # empty hint: no context
    assert textvqa.items[0].training_answer == "nokia"  # the most common reference answer


def test_a_column_mapping_reads_any_other_layout(tmp_path):
    rows = {
        "query": ["what color is it?", "is it big?"],
        "label": ["red", "yes"],
        "picture": [hf_layouts.png(0), hf_layouts.png(1)],
        "kind": ["color", "size"],
        "opts": [["red", "blue"], ["yes", "no"]],
    }
    location = tmp_path / "custom"
    datasets.Dataset.from_dict(rows).cast_column("picture", datasets.Image()).save_to_disk(str(location))
    with pytest.raises(ValueError, match=r"match no known layout(.|\n)*--columns question=COL"):
        load_hf(location)
    data = load_hf(location, columns="question=query,answers=label,image=picture,family=kind", metric="exact_match")
    assert data.layout.name == "custom" and data.split == "train"
    assert [(i.question, i.prompt, i.answers, i.family) for i in data.items] == [
        ("what color is it?", "what color is it?", ("red",), "color"),
        ("is it big?", "is it big?", ("yes",), "size"),
    ]
    choice = load_hf(location, columns={"question": "query", "answers": "label", "image": "picture",
                                        "choices": "opts"}, metric="multiple_choice")  # fmt: skip
    assert choice.items[0].prompt == f"what color is it?\nA. red\nB. blue\n{LETTER}"
    assert parse_columns("question=q,choices=A|B|C") == {"question": "q", "choices": ["A", "B", "C"]}
    with pytest.raises(ValueError, match="unknown column role 'answer'"):
        parse_columns("answer=x")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['nope'\]"):
        load_hf(location, columns="question=nope,answers=label,image=picture")
    # a known layout with one column renamed
    renamed = datasets.load_from_disk(str(hf_layouts.write(tmp_path, "pope")))["test"].rename_column("answer", "gt")
    renamed.save_to_disk(str(tmp_path / "pope-renamed"))
    data = load_hf(tmp_path / "pope-renamed", layout="pope", columns="answers=gt")
    assert data.layout.metric == "pope" and data.items[1].answers == ("no",)


def test_errors_name_the_split_row_and_column(tmp_path):
    columns = hf_layouts.columns("docvqa")
    columns["answers"][1] = None  # a test split has no answers
    location = tmp_path / "docvqa-noanswer"
    datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image()).save_to_disk(str(location))
    with pytest.raises(ValueError, match=r"split 'train', row 1, column 'answers': no reference answer"):
        load_hf(location)

    mmbench = hf_layouts.columns("mmbench")
    mmbench["answer"][2] = "E"  # not one of the four options
    location = tmp_path / "mmbench-bad"
    datasets.Dataset.from_dict(mmbench).cast_column("image", datasets.Image()).save_to_disk(str(location))
    with pytest.raises(ValueError, match=r"row 2, column 'answer': multiple-choice answer 'E'"):
        load_hf(location)

    # to_parquet after cast_column(Image()) on files stores only the paths: refused once the files are gone
    files = []
    for seed in range(2):
        path = tmp_path / f"img{seed}.png"
        hf_layouts.png(seed).save(path)
        files.append(str(path))
    rows = {"question": ["q0", "q1"], "answer": ["a", "b"], "type": ["t", "t"], "image": files}
    parquet = tmp_path / "paths-only" / "test-00000-of-00001.parquet"
    parquet.parent.mkdir()
    datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image()).to_parquet(str(parquet))
    (tmp_path / "img1.png").unlink()
    with pytest.raises(BadImageError, match=r"split 'test', row 1, column 'image': the image is not embedded"):
        load_hf(parquet.parent)

    location = hf_layouts.write(tmp_path, "pope")
    with pytest.raises(ValueError, match=r"holds the splits \['test'\]; choose one with --split \(got 'val'\)"):
        open_dataset(location, "val")
    with pytest.raises(ValueError, match=r"no split 'val'; its Parquet files hold the splits \['test'\]"):
        open_dataset(hf_layouts.write(tmp_path, "pope", "parquet"), "val")
    dataset, split = open_dataset(location, "test")
    with pytest.raises(BadImageError, match=r"split 'test', row 9, column 'image': no such row"):
        DatasetImages(dataset, "image", split, str(location)).open(9)
    with pytest.raises(ValueError, match="unknown layout 'vqav2'"):
        load_hf(location, layout="vqav2")
    with pytest.raises(FileNotFoundError, match="neither a local dataset"):
        open_dataset(tmp_path / "missing" / "dir" / "x")


def test_detection_prefers_the_most_specific_layout():
    for name, layout in LAYOUTS.items():
        assert detect_layout([*layout.signature, "image", "extra"]).name == name


def test_a_local_copy_of_a_hub_repository_with_several_configurations(tmp_path):
    """lmms-lab/POPE keeps two configurations side by side (data/test-*.parquet, Full/test-*.parquet)."""
    location = hf_layouts.write(tmp_path, "pope", "parquet")  # data/test-00000-of-00001.parquet
    (location / "Full").mkdir()
    subset = datasets.load_dataset("parquet", data_files=str(location / "data" / "*.parquet"), split="train")
    subset.select([0, 1]).to_parquet(str(location / "Full" / "test-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match=r"split 'test' in several folders \['Full', 'data'\].*--dataset-config"):
        open_dataset(location, "test")
    assert len(open_dataset(location, "test", config="Full")[0]) == 2
    assert len(load_hf(location, "test", config="data").items) == 4
