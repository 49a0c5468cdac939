"""Local lmms-eval tasks over the project's own data, scored with :mod:`m3.metrics` (the oracle's scorer).

``write_llava_task(split_json, folder)`` (or ``python -m m3_lmms_eval.tasks SPLIT_JSON FOLDER``) writes a task yaml
and its ``*_utils.py`` into ``folder`` for a LLaVA-format JSON split (``python -m m3.data.granularity --out DIR
--split test`` writes ``DIR/test.json``); run it with ``python -m lmms_eval --include_path FOLDER --tasks TASK ...``.
The prompt is the record's question and a sample's score is its metric (``exact_match`` unless the record names
one), so lmms-eval's accuracy is the oracle's.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from PIL import Image

from m3.images import open_rgb
from m3.metrics import score
from m3.processing import IMAGE_PLACEHOLDER

METRIC = "exact_match"  # the results key: "exact_match,none"

_UTILS = '''"""Written by m3_lmms_eval.tasks.write_llava_task: the documents' images are under IMAGE_ROOT."""

from m3_lmms_eval.tasks import llava_doc_to_text, llava_doc_to_visual, llava_process_results

IMAGE_ROOT = {image_root!r}


def doc_to_visual(doc):
    return llava_doc_to_visual(doc, IMAGE_ROOT)


doc_to_text = llava_doc_to_text
process_results = llava_process_results
'''


def llava_doc_to_visual(doc: dict, image_root: str) -> list[Image.Image]:
    """The record's image, opened from ``image_root``."""
    return [open_rgb(Path(image_root) / doc["image"])]


def llava_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The first human turn without ``<image>``: the oracle's prompt for a record without options."""
    return doc["conversations"][0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()


def _answers(doc: dict) -> list[str]:
    if doc.get("answers"):
        return list(doc["answers"])
    if doc.get("answer") is not None:
        return [str(doc["answer"])]
    return [doc["conversations"][1]["value"]]


def llava_process_results(doc: dict, results: list[str]) -> dict:
    """The answer's score under the record's metric (default exact match), as the oracle scores it."""
    return {METRIC: score(doc.get("metric") or "exact_match", results[0], _answers(doc), doc.get("choices"))}


def write_llava_task(
    split_json: str | os.PathLike, folder: str | os.PathLike, task: str = "m3_granularity", max_new_tokens: int = 8
) -> Path:
    """Write ``FOLDER/{task}.yaml`` (+ ``{task}_utils.py``): a generate_until task over a LLaVA JSON split, greedy,
    at most ``max_new_tokens`` tokens (the oracle's ``--max-new-tokens``). Returns the yaml's path."""
    split_json = Path(split_json).resolve()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    utils = f"{task}_utils"
    (folder / f"{utils}.py").write_text(_UTILS.format(image_root=str(split_json.parent)), encoding="utf-8")
    lines = [
        f"task: {task}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(split_json))}",
        "test_split: test",
        "output_type: generate_until",
        f"doc_to_visual: !function {utils}.doc_to_visual",
        f"doc_to_text: !function {utils}.doc_to_text",
        "doc_to_target: answer",
        f"process_results: !function {utils}.process_results",
        "generation_kwargs:",
        f"  max_new_tokens: {int(max_new_tokens)}",
        "  temperature: 0",
        "  do_sample: false",
        "metric_list:",
        f"  - metric: {METRIC}",
        "    aggregation: mean",
        "    higher_is_better: true",
    ]
    path = folder / f"{task}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m m3_lmms_eval.tasks", description="Write a local lmms-eval task over a LLaVA JSON split."
    )
    parser.add_argument("split_json", type=Path, help="LLaVA JSON split, e.g. runs/granularity/test.json")
    parser.add_argument("folder", type=Path, help="folder for the task yaml (pass it to --include_path)")
    parser.add_argument("--task", default="m3_granularity", help="task name (default: m3_granularity)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="answer length cap (the oracle's default: 8)")
    args = parser.parse_args(argv)
    if not args.split_json.is_file():
        parser.error(f"{args.split_json} does not exist")
    print(write_llava_task(args.split_json, args.folder, args.task, args.max_new_tokens))


if __name__ == "__main__":
    main()
