"""Tiny Hugging Face datasets in the column layouts of the lmms-lab benchmark copies, written offline.

The columns and types are those of the published datasets (their dataset cards: lmms-lab/textvqa, DocVQA, ChartQA,
POPE, MMBench, ScienceQA), extra columns included, with random images embedded. ``write`` saves one as a
``save_to_disk`` folder or as hub-style Parquet files (``data/{split}-00000-of-00001.parquet``) with the image
bytes embedded the way ``push_to_hub`` does it (``embed_table_storage``).
"""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
from datasets.table import embed_table_storage
from PIL import Image


def png(seed: int, size: int = 40) -> Image.Image:
    """A random RGB image, PNG-encoded and decoded again (what a dataset stores is lossless)."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue()))


def _images(seeds):
    return [png(seed) for seed in seeds]


def columns(layout: str) -> dict[str, list]:
    """Three or four rows of ``layout`` (the second and first row share an image where the layout has image ids)."""
    if layout == "textvqa":
        return {
            "image_id": ["a1", "a1", "b2"],
            "question_id": [34602, 34603, 34604],
            "question": ["what is the brand?", "what number is shown?", "what does the sign say?"],
            "question_tokens": [["what"], ["what"], ["what"]],
            "image": _images([0, 0, 1]),
            "image_width": [40, 40, 40],
            "image_height": [40, 40, 40],
            "flickr_original_url": ["", "", ""],
            "flickr_300k_url": ["", "", ""],
            "answers": [["nokia"] * 7 + ["nokla"] * 3, ["5"] * 10, ["stop"] * 9 + ["halt"]],
            "image_classes": [["phone"], ["phone"], ["sign"]],
            "set_name": ["val", "val", "val"],
            "ocr_tokens": [["nokia"], ["5"], ["stop"]],
        }
    if layout == "docvqa":
        return {
            "questionId": ["49153", "24580", "57349"],
            "question": ["What is the date?", "Who signed it?", "What is the total?"],
            "question_types": [["handwritten"], ["form"], ["table/list"]],
            "image": _images([2, 2, 3]),
            "docId": [14465, 14465, 7027],
            "ucsf_document_id": ["pybv0228", "pybv0228", "xnbl0037"],
            "ucsf_document_page_no": ["81", "81", "1"],
            "answers": [["1/8/93", "January 8, 1993"], ["J. Smith"], ["$ 42.50"]],
            "data_split": ["val", "val", "val"],
        }
    if layout == "chartqa":
        return {
            "type": ["human_test", "human_test", "augmented_test"],
            "question": ["What is the highest value?", "Which year had 12%?", "How many bars are there?"],
            "answer": ["42.5", "2016", "7"],
            "image": _images([4, 4, 5]),
        }
    if layout == "pope":
        return {
            "id": ["0", "1", "2", "3"],
            "question_id": ["1", "2", "1", "2"],
            "question": ["Is there a snowboard in the image?", "Is there a dog in the image?"] * 2,
            "answer": ["yes", "no", "no", "yes"],
            "image_source": ["COCO_val2014_000000310196", "COCO_val2014_000000310196"] * 2,
            "image": _images([6, 6, 6, 6]),
            "category": ["adversarial", "adversarial", "popular", "popular"],
        }
    if layout == "mmbench":
        return {
            "index": [241, 242, 243],
            "question": ["Which color is the car?", "What is shown?", "How many cats are there?"],
            "hint": ["The car is parked.", None, "nan"],
            "A": ["red", "a dog", "1"],
            "B": ["blue", "a cat", "2"],
            "C": ["green", None, "3"],
            "D": [None, None, "4"],
            "answer": ["B", "A", "D"],
            "category": ["attribute_recognition", "object_localization", "counting"],
            "image": _images([7, 8, 9]),
            "source": ["MMBench", "MMBench", "MMBench"],
            "L2-category": ["finegrained_perception", "coarse_perception", "finegrained_perception"],
            "comment": ["nan", "nan", "nan"],
            "split": ["dev", "dev", "dev"],
        }
    if layout == "scienceqa":
        return {
            "image": [png(10), None, png(11)],
            "question": ["Which animal's feet are adapted for digging?", "What is 2+2?", "Which is a solid?"],
            "choices": [["mole", "duck"], ["3", "4", "5"], ["milk", "rock"]],
            "answer": [0, 1, 1],
            "hint": ["Moles live underground.", "", ""],
            "task": ["closed choice"] * 3,
            "grade": ["grade3"] * 3,
            "subject": ["natural science", "language science", "natural science"],
            "topic": ["biology", "math", "physics"],
            "category": ["Adaptations", "Arithmetic", "Solids and liquids"],
            "skill": ["Animal adaptations"] * 3,
            "lecture": [""] * 3,
            "solution": [""] * 3,
        }
    raise ValueError(layout)


def as_dataset(layout: str) -> datasets.Dataset:
    """The rows of ``layout`` with an embedded ``datasets.Image`` column (answer types as published)."""
    data = columns(layout)
    features = None
    if layout == "scienceqa":
        features = datasets.Features(
            {
                name: (
                    datasets.Image()
                    if name == "image"
                    else datasets.Value("int8")
                    if name == "answer"
                    else datasets.List(datasets.Value("string"))
                    if name == "choices"
                    else datasets.Value("string")
                )
                for name in data
            }
        )
        return datasets.Dataset.from_dict(data, features=features)
    return datasets.Dataset.from_dict(data).cast_column("image", datasets.Image())


def write(root: Path, layout: str, fmt: str = "disk", split: str = "test") -> Path:
    """Write ``layout`` under ``root``: ``fmt="disk"`` (save_to_disk) or ``"parquet"`` (hub-style files, image
    bytes embedded). Returns the dataset location."""
    dataset = as_dataset(layout)
    if fmt == "disk":
        location = root / f"{layout}-disk"
        datasets.DatasetDict({split: dataset}).save_to_disk(str(location))
        return location
    location = root / f"{layout}-parquet"
    (location / "data").mkdir(parents=True)
    table = embed_table_storage(dataset.data.table)
    pq.write_table(table, location / "data" / f"{split}-00000-of-00001.parquet")
    return location


def granularity_dataset(split_json: Path) -> datasets.Dataset:
    """A granularity split (LLaVA JSON + image files) as a dataset with the images embedded: columns ``question``,
    ``answer``, ``family``, ``image_id`` and ``image``, one row per record, in file order."""
    import json

    records = json.loads(Path(split_json).read_text())
    rows = {
        "question": [r["conversations"][0]["value"].replace("<image>", "").strip() for r in records],
        "answer": [r["answer"] for r in records],
        "family": [r["family"] for r in records],
        "image_id": [r["image_id"] for r in records],
        "image": [Image.open(Path(split_json).parent / r["image"]) for r in records],
    }
    return datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())


GRANULARITY_COLUMNS = "question=question,answers=answer,image=image,family=family,image_id=image_id"
