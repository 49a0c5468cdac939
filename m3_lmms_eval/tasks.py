"""Local lmms-eval tasks over the project's own data, scored with :mod:`m3.metrics` (the oracle's scorer).

``write_llava_task(split_json, folder)`` (or ``python -m m3_lmms_eval.tasks SPLIT_JSON FOLDER``) writes a task yaml
and its ``*_utils.py`` into ``folder`` for a LLaVA-format JSON split (``python -m m3.data.granularity --out DIR
--split test`` writes ``DIR/test.json``); run it with ``python -m lmms_eval --include_path FOLDER --tasks TASK ...``.
The prompt is the record's question and a sample's score is its metric (``exact_match`` unless the record names
one), so lmms-eval's accuracy is the oracle's. Records without an image are text-only docs; a record may list several
images. The split is checked before anything is written (records, answers, metrics, every image decoded); a task
already in ``folder`` under that name is replaced only with ``overwrite`` (``--overwrite``) unless it is the same.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from pathlib import Path

from PIL import Image

from m3.data.llava import LlavaDataset, check_image_files, record_images
from m3.files import atomic_write
from m3.images import open_rgb
from m3.metrics import get_metric, score
from m3.processing import IMAGE_PLACEHOLDER
from m3.runs import check_output_dir

METRIC = "exact_match"  # the results key: "exact_match,none"
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # a file name, a YAML scalar and a module name alike

_UTILS = '''"""Written by m3_lmms_eval.tasks.write_llava_task: the documents' images are under IMAGE_ROOT."""

from m3_lmms_eval.tasks import llava_doc_to_text, llava_doc_to_visual, llava_process_results

IMAGE_ROOT = {image_root!r}


def doc_to_visual(doc):
    return llava_doc_to_visual(doc, IMAGE_ROOT)


doc_to_text = llava_doc_to_text
process_results = llava_process_results
'''


def llava_doc_to_visual(doc: dict, image_root: str) -> list[Image.Image]:
    """The record's images, opened from ``image_root`` (none for a text-only record)."""
    return [open_rgb(Path(image_root) / name, f"record {doc.get('id')}") for name in record_images(doc.get("image"))]


def llava_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The first human turn without ``<image>``: the oracle's prompt for a record without options."""
    return doc["conversations"][0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()


def _answers(doc: dict) -> list:
    """The record's reference answers: ``answers``, else ``answer``, else its first ``gpt`` turn."""
    if doc.get("answers") is not None:
        return doc["answers"]
    if doc.get("answer") is not None:
        return [doc["answer"]]
    return [doc["conversations"][1]["value"]]


def llava_process_results(doc: dict, results: list[str]) -> dict:
    """The answer's score under the record's metric (default exact match), as the oracle scores it."""
    answers = [str(answer) for answer in _answers(doc)]
    return {METRIC: score(doc.get("metric") or "exact_match", results[0], answers, doc.get("choices"))}


def _scorable(answer) -> bool:
    return isinstance(answer, str) or (
        isinstance(answer, (int, float)) and not isinstance(answer, bool) and math.isfinite(answer)
    )


def _check_record(record: dict, where: str) -> None:
    """What scoring a record reads: a known metric and a non-empty list of answers, each a string or a finite
    number (a ``NaN`` answer in the JSON is refused, not scored as the text "nan")."""
    try:
        get_metric(record.get("metric") or METRIC)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    answers = _answers(record)
    if not isinstance(answers, list) or not answers or not all(map(_scorable, answers)):
        raise ValueError(
            f"{where}: its answers must be a non-empty list of strings (or finite numbers), got {answers!r}"
        )


def check_split(split_json: str | os.PathLike) -> Path:
    """``split_json`` resolved, after checking it is a LLaVA JSON split whose every record can be asked and scored and
    whose every image decodes (:class:`m3.data.llava.LlavaDataset`); one ``ValueError`` / ``OSError`` line naming the
    file and record otherwise."""
    path = Path(split_json)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the split's JSON file (e.g. {path / 'test.json'})")
    if path.exists() and path.suffix.lower() != ".json":
        raise ValueError(f"{path} is not a LLaVA JSON split (a .json file of records, e.g. DIR/test.json)")
    dataset = LlavaDataset(path, path.parent)  # every record checked, or one line naming it
    if not dataset.records:
        raise ValueError(f"{path} holds no records: a task over it would score nothing")
    for record in dataset.records:
        _check_record(record, f"{path}: record {record['id']}")
    check_image_files([(image, f"record {r['id']}") for r in dataset.records for image in dataset.image_files(r)])
    return path.resolve()


def check_task_name(task: str) -> str:
    """A task name that is a file name, a YAML scalar and a Python module name (letters, digits, ``_``, ``-``)."""
    if not isinstance(task, str) or not TASK_NAME.fullmatch(task):
        raise ValueError(f"--task {task!r} must be letters, digits, '_' or '-' (starting with a letter or digit)")
    return task


def task_files(split_json: Path, task: str, max_new_tokens: int) -> dict[str, str]:
    """The task's files (``{task}.yaml`` and ``{task}_utils.py``) and their text."""
    utils = f"{task}_utils"
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
        f"  max_new_tokens: {max_new_tokens}",
        "  temperature: 0",
        "  do_sample: false",
        "metric_list:",
        f"  - metric: {METRIC}",
        "    aggregation: mean",
        "    higher_is_better: true",
    ]
    return {
        f"{task}.yaml": "\n".join(lines) + "\n",
        f"{utils}.py": _UTILS.format(image_root=str(split_json.parent)),
    }


def _split_of(task_yaml: Path) -> str | None:
    """The split file a task yaml written here points at (None when it names none)."""
    found = re.search(r"^    test: (.+)$", task_yaml.read_text(encoding="utf-8", errors="replace"), re.MULTILINE)
    try:
        return json.loads(found.group(1)) if found else None
    except json.JSONDecodeError:
        return found.group(1)


def write_llava_task(
    split_json: str | os.PathLike,
    folder: str | os.PathLike,
    task: str = "m3_granularity",
    max_new_tokens: int = 8,
    overwrite: bool = False,
) -> Path:
    """Write ``FOLDER/{task}.yaml`` (+ ``{task}_utils.py``): a generate_until task over a LLaVA JSON split, greedy,
    at most ``max_new_tokens`` tokens (the oracle's ``--max-new-tokens``). Returns the yaml's path.

    Everything is checked before anything is written (:func:`check_task_name`, :func:`check_split`, the folder); a
    task of that name already in ``folder`` with other contents (another split, other settings) is refused unless
    ``overwrite``."""
    task = check_task_name(task)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be a whole number >= 1, got {max_new_tokens!r}")
    split_json = check_split(split_json)
    folder = check_output_dir(folder, "FOLDER")
    files = task_files(split_json, task, max_new_tokens)
    yaml_path = folder / f"{task}.yaml"
    changed = [name for name, text in files.items() if (folder / name).is_file()
               and (folder / name).read_text(encoding="utf-8", errors="replace") != text]  # fmt: skip
    if changed and not overwrite:
        held = _split_of(yaml_path) if yaml_path.is_file() else None
        what = f"over {held}" if held not in (None, str(split_json)) else "with other settings"
        raise FileExistsError(
            f"{folder} already holds task {task} {what} ({', '.join(changed)}); pass --overwrite to replace it, or "
            "choose another --task or folder"
        )
    for name, text in files.items():
        atomic_write(folder / name, lambda temporary, text=text: Path(temporary).write_text(text, encoding="utf-8"))
    return yaml_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m m3_lmms_eval.tasks", description="Write a local lmms-eval task over a LLaVA JSON split."
    )
    parser.add_argument("split_json", help="LLaVA JSON split, e.g. runs/granularity/test.json")
    parser.add_argument("folder", help="folder for the task yaml (pass it to --include_path)")
    parser.add_argument("--task", default="m3_granularity", help="task name (default: m3_granularity)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="answer length cap (the oracle's default: 8)")
    parser.add_argument("--overwrite", action="store_true", help="replace a task of that name in FOLDER")
    args = parser.parse_args(argv)
    from m3.cli import user_errors

    with user_errors():
        print(write_llava_task(args.split_json, args.folder, args.task, args.max_new_tokens, args.overwrite))


if __name__ == "__main__":
    main()
