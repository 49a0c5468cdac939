"""Two tiny local lmms-eval tasks written by the tests (no granularity data): a generation task and a multiple-choice
(loglikelihood) task over a handful of drawn images, with a text-only doc, a two-image doc and a doc whose context
already holds its ``<image>``; the generation task also has a doc whose image is missing (it answers ""; such a
multiple-choice doc stops the run: ``write_tasks(folder, broken_choice=True)`` writes that task too).
``write_tasks(folder)`` writes the data, the yamls and their utils; run them with ``python -m lmms_eval
--include_path FOLDER --tasks m3_probe_gen,m3_probe_choice``."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

GEN_TASK, CHOICE_TASK, BROKEN_CHOICE_TASK = "m3_probe_gen", "m3_probe_choice", "m3_probe_choice_broken"
COLORS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}

UTILS = '''"""Written by tests/lmms_eval_tasks.py."""

from pathlib import Path

from PIL import Image

ROOT = Path(__file__).parent


def doc_to_visual(doc):
    images = []
    for name in doc["images"]:
        with Image.open(ROOT / name) as image:  # a missing file raises: that doc fails, the run goes on
            images.append(image.convert("RGB"))
    return images


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def doc_to_choice(doc):
    return doc["choices"]


def gen_process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"])}
'''


def draw(folder: Path, name: str, background: str, square: str) -> str:
    image = Image.new("RGB", (96, 96), COLORS[background])
    ImageDraw.Draw(image).rectangle((30, 30, 66, 66), fill=COLORS[square])
    image.save(folder / name)
    return name


def documents(folder: Path) -> list[dict]:
    """Seven docs: four one-image, one two-image, one text-only, one whose image file is missing."""
    pictures = [
        draw(folder, f"picture_{i}.png", background, square)
        for i, (background, square) in enumerate(
            [("red", "green"), ("blue", "yellow"), ("green", "red"), ("yellow", "blue"), ("red", "blue")]
        )
    ]
    docs = [
        {"question": "what color is the square ?", "images": [pictures[0]], "answer": "green"},
        {"question": "what color is the background ?", "images": [pictures[1]], "answer": "blue"},
        {"question": "<image>\nwhat color is the square ?", "images": [pictures[2]], "answer": "red"},
        {"question": "what color is the square on the left ?", "images": pictures[3:5], "answer": "blue"},
        {"question": "what color is the square ?", "images": [], "answer": "red"},
        {"question": "what color is the background ?", "images": [pictures[4]], "answer": "red"},
        {"question": "what color is the square ?", "images": ["missing.png"], "answer": "green"},
    ]
    for doc in docs:
        doc["choices"] = list(COLORS)
        doc["label"] = list(COLORS).index(doc["answer"])
    return docs


def _common(data: Path) -> list[str]:
    return [
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data))}",
        "test_split: test",
        "doc_to_visual: !function probe_utils.doc_to_visual",
        "doc_to_text: !function probe_utils.doc_to_text",
    ]


def write_tasks(folder: Path, max_new_tokens: int = 6, broken_choice: bool = False) -> list[dict]:
    """The data, both task yamls and their utils in ``folder`` (with ``broken_choice``, also the multiple-choice
    task over every doc, the missing image's too: :data:`BROKEN_CHOICE_TASK`); returns the docs (the multiple-choice
    task has all but the last)."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = documents(folder)
    (folder / "docs.json").write_text(json.dumps(docs), encoding="utf-8")
    (folder / "choice_docs.json").write_text(json.dumps(docs[:-1]), encoding="utf-8")
    (folder / "probe_utils.py").write_text(UTILS, encoding="utf-8")
    generation = [
        f"task: {GEN_TASK}",
        *_common(folder / "docs.json"),
        "output_type: generate_until",
        "doc_to_target: answer",
        "process_results: !function probe_utils.gen_process_results",
        "generation_kwargs:",
        f"  max_new_tokens: {max_new_tokens}",
        "  until: ['\\n\\n', 'USER:']",
        "metric_list:",
        "  - metric: exact_match",
        "    aggregation: mean",
        "    higher_is_better: true",
    ]
    choice = [
        f"task: {CHOICE_TASK}",
        *_common(folder / "choice_docs.json"),
        "output_type: multiple_choice",
        "doc_to_choice: !function probe_utils.doc_to_choice",
        "doc_to_target: label",
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
    ]
    (folder / f"{GEN_TASK}.yaml").write_text("\n".join(generation) + "\n", encoding="utf-8")
    (folder / f"{CHOICE_TASK}.yaml").write_text("\n".join(choice) + "\n", encoding="utf-8")
    if broken_choice:
        broken = [f"task: {BROKEN_CHOICE_TASK}", *_common(folder / "docs.json"), *choice[len(_common(folder)) + 1 :]]
        (folder / f"{BROKEN_CHOICE_TASK}.yaml").write_text("\n".join(broken) + "\n", encoding="utf-8")
    return docs


def offline_env(tmp: Path, repo: Path) -> dict:
    """The environment of an lmms-eval run on local data: offline, one thread, this checkout importable."""
    import os

    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp / "hf-cache"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }


def read_run(out: Path, tasks: list[str]) -> tuple[dict, dict[str, list[dict]]]:
    """The results JSON of an lmms-eval run and its logged samples per task (sorted by doc id)."""
    results = list(out.glob("**/*_results.json"))
    assert len(results) == 1, f"lmms-eval wrote {len(results)} results files under {out} (it exits 0 on failure)"
    samples = {}
    for task in tasks:
        (path,) = out.glob(f"**/*_samples_{task}.jsonl")
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        samples[task] = sorted(rows, key=lambda row: row["doc_id"])
    return json.loads(results[0].read_text()), samples


def probe_requests(model, folder: Path, kind: str, second, docs: list[dict] | None = None) -> list:
    """lmms-eval's requests for ``docs`` (default: :func:`documents`, drawn into ``folder``) as its evaluator builds
    them, one per doc: ``kind`` generate_until (``second``: gen_kwargs) or loglikelihood (``second``: the
    continuation); the docs become the model's task ``probe``, split ``test``."""
    from lmms_eval.api.instance import Instance
    from PIL import Image

    docs = documents(folder) if docs is None else docs
    model.task_dict = {"probe": {"test": docs}}

    def visual(doc):
        return [Image.open(folder / name).convert("RGB") for name in doc["images"]]

    return [
        Instance(kind, (doc["question"], second, visual, i, "probe", "test"), idx=0,
                 metadata={"task": "probe", "doc_id": i, "repeats": 1})
        for i, doc in enumerate(docs)
    ]  # fmt: skip
