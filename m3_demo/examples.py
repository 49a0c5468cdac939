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
