"""The bundled example images and questions, with the true answers, so the page can mark each scale's answer.

``examples/granularity/`` holds a few granularity *test* images (never seen by the demo predictor) and
``examples.json``: the question of each family and each image's answers. An example is recognised by the hash of
its bytes, so it is found again after Gradio copies it into its cache (or after someone uploads the same file).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples" / "granularity"


@dataclass(frozen=True)
class Examples:
    """Example image paths, the example questions (by family) and the true answer of each (image, family)."""

    images: list[Path]
    questions: dict[str, str]
    answers: dict[str, dict[str, str]]  # sha256 of the image file -> family -> answer

    def truth(self, image_path: str | os.PathLike | None, question: str) -> str | None:
        """The true answer when ``image_path`` holds an example image and ``question`` is an example question."""
        if image_path is None or not Path(image_path).is_file():
            return None
        family = next((f for f, q in self.questions.items() if q == question.strip()), None)
        if family is None:
            return None
        return self.answers.get(file_sha256(image_path), {}).get(family)


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_examples(folder: str | os.PathLike = EXAMPLES_DIR) -> Examples:
    """Read ``examples.json`` in ``folder``; an empty set when the folder has none."""
    folder = Path(folder)
    index = folder / "examples.json"
    if not index.is_file():
        return Examples(images=[], questions={}, answers={})
    record = json.loads(index.read_text(encoding="utf-8"))
    images = [folder / item["image"] for item in record["images"]]
    answers = {file_sha256(path): item["answers"] for path, item in zip(images, record["images"])}
    return Examples(images=images, questions=dict(record["questions"]), answers=answers)


def write_examples(folder: str | os.PathLike = EXAMPLES_DIR, num_images: int = 5, seed: int = 0) -> Path:
    """Regenerate the bundled examples: the first ``num_images`` granularity *test* images (never in a train
    oracle) and each one's answer per question family. Returns ``examples.json``."""
    from m3.data.granularity import FAMILIES, GENERATOR_VERSION, QUESTIONS, iter_records

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    items = []
    for image, records in iter_records("test", num_images, seed):
        name = f"{records[0]['image_id']}.png"
        image.save(folder / name, format="PNG")
        items.append({"image": name, "answers": {r["family"]: r["answer"] for r in records}})
    record = {
        "about": f"granularity test images (python -m m3.data.granularity --out DIR --split test --num-images "
        f"{num_images}), never seen by the demo predictor; answers per question family",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "split": "test",
        "questions": {family: QUESTIONS[family] for family in FAMILIES},
        "images": items,
    }
    index = folder / "examples.json"
    index.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return index
