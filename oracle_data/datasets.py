"""Input formats of the oracle: every supported file becomes a list of :class:`Sample` (one question each).

* **LLaVA JSON** (``*.json``): a list of LLaVA instruction records, e.g. a split written by
  ``m3.data.granularity`` (``{split}.json``, whose records also carry ``family``, ``answer`` and ``image_id``).
  The question is the first human turn (without ``<image>``); the reference answers are ``answers`` (a list) if
  present, else ``answer``, else the first gpt turn. Later turns are ignored; records without an image are
  skipped (and counted), since the oracle needs one.
* **Question file** (``*.jsonl``): one JSON object per line::

      {"id": "q1", "image": "images/cat.jpg", "question": "What animal is this?", "answers": ["cat", "kitten"],
       "choices": ["cat", "dog"], "metric": "multiple_choice", "family": "animals", "image_id": "cat"}

  ``image`` (path relative to ``image_root``, by default the file's folder), ``question`` and ``answers`` (a
  non-empty list of strings) are required. Optional: ``id`` (default: the line number), ``choices`` (options
  lettered A, B, ... in order; the prompt lists them), ``metric`` (a name in :data:`m3.metrics.METRICS`;
  default: the build's ``--metric``, or ``multiple_choice`` when ``choices`` are given), ``family`` (question
  type, for per-family reports) and ``image_id`` (default: the image path). Blank lines are skipped; other keys
  are ignored.

* **Hugging Face dataset** (a ``save_to_disk`` folder, Parquet files, or a hub id; one ``split``): the columns of a
  known layout (the lmms-lab copies of TextVQA, DocVQA, ChartQA, POPE, MMBench, ScienceQA; see
  :data:`m3.data.hf.LAYOUTS`) or of a user's column mapping. Each row is one question; its image stays in the
  dataset: the sample's ``image`` is ``"{split}[{row}]"`` and the manifest records where the dataset is, so
  :func:`dataset_image_reader` can open it again. The prompt is the layout's (lmms-eval's), the sample id the row.

Every problem raises ``ValueError`` (``FileNotFoundError`` for a missing image) naming the file and the line
or record (for datasets: the split, row and column).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from m3.data.hf import CHOICE_INSTRUCTION, DatasetImage, HFData, image_ref, is_hf_location, load_hf, parse_image_ref
from m3.data.llava import normalize_conversations
from m3.images import not_a_file_error
from m3.metrics import LETTERS, METRICS, answer_letter, get_metric
from m3.processing import IMAGE_PLACEHOLDER, check_question

logger = logging.getLogger(__name__)

FORMATS = ("llava", "jsonl", "hf")


@dataclass(frozen=True)
class Sample:
    """One question about one image, with everything needed to prompt the model and score its answer."""

    sample_id: str
    image_id: str
    image: str  # the path as written in the data file; "{split}[{row}]" for a dataset image
    image_path: Path | None  # resolved against the image root; None when the image lives in a dataset
    question: str
    answers: tuple[str, ...]
    metric: str
    choices: tuple[str, ...] | None = None
    family: str | None = None
    text: str | None = None  # the user text when the data format defines it (dataset layouts: lmms-eval's prompt)
    dataset_image: DatasetImage | None = None  # the image of a dataset row

    @property
    def prompt(self) -> str:
        """The user text sent to the model: the format's own, else the question, then the lettered options and
        LLaVA's instruction."""
        if self.text is not None:
            return self.text
        if not self.choices:
            return self.question
        options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, self.choices))
        return f"{self.question}\n{options}\n{CHOICE_INSTRUCTION}"

    @property
    def image_key(self) -> Path | str:
        """What identifies the image within a build: its file, or (datasets) its image id."""
        return self.image_path if self.image_path is not None else f"dataset image {self.image_id}"


@dataclass
class OracleData:
    """The samples of one data file and what was left out of it."""

    path: Path
    format: str
    image_root: Path | None  # None for a dataset (its images are in it)
    samples: list[Sample]
    skipped_ids: list[str] = field(default_factory=list)  # records without an image (LLaVA JSON, datasets)
    hf: HFData | None = None  # the dataset split, for format "hf"


def detect_format(path: str | os.PathLike) -> str:
    """``"jsonl"`` for ``*.jsonl`` files, ``"llava"`` for ``*.json``, ``"hf"`` for a dataset folder, a ``.parquet``
    file or a hub id; anything else raises."""
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json":
        return "llava"
    if is_hf_location(path):
        return "hf"
    raise ValueError(f"cannot tell the format of {path} from its extension; pass format='llava', 'jsonl' or 'hf'")


def _string_list(value, what: str, where: str, allow_empty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{where}: {what} must be a list of strings, got {value!r}")
    if not value and not allow_empty:
        raise ValueError(f"{where}: {what} must not be empty")
    return tuple(value)


def _make_sample(fields: dict, where: str, image_root: Path, default_metric: str) -> Sample:
    """Validate the fields of one question and build its :class:`Sample`."""
    choices = fields.get("choices")
    if choices is not None:
        choices = _string_list(choices, "choices", where)
        if not 2 <= len(choices) <= len(LETTERS):
            raise ValueError(f"{where}: choices must hold 2 to {len(LETTERS)} options, got {len(choices)}")
    metric = fields.get("metric") or ("multiple_choice" if choices else default_metric)
    try:
        get_metric(metric)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    answers = _string_list(fields["answers"], "answers", where)
    if metric == "multiple_choice":
        for answer in answers:
            try:
                answer_letter(answer, choices)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
    for key in ("family", "image_id"):
        if fields.get(key) is not None and not isinstance(fields[key], str):
            raise ValueError(f"{where}: {key} must be a string, got {fields[key]!r}")
    try:  # the same rule for every format: text, not blank, valid UTF-8, no image marker
        question = check_question(fields["question"], "question")
        for choice in choices or ():
            check_question(choice, "a choice")
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    image = fields["image"]
    return Sample(
        sample_id=fields["id"],
        image_id=fields.get("image_id") or image,
        image=image,
        image_path=image_root / image,
        question=question,
        answers=answers,
        metric=metric,
        choices=choices,
        family=fields.get("family"),
    )


def read_question_file(path: Path, image_root: Path, default_metric: str) -> list[tuple[Sample, str]]:
    """Samples of a JSONL question file, each with a ``"file:line N"`` location for error messages."""
    samples = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
            missing = [key for key in ("image", "question", "answers") if key not in record]
            if missing:
                raise ValueError(f"{where}: missing required key(s) {missing}")
            if not isinstance(record["image"], str) or not record["image"].strip():
                raise ValueError(f"{where}: image must be a non-empty string, got {record['image']!r}")
            fields = dict(record, id=str(record.get("id", number)))
            samples.append((_make_sample(fields, where, image_root, default_metric), where))
    return samples


def read_llava_json(path: Path, image_root: Path, default_metric: str) -> tuple[list[tuple[Sample, str]], list[str]]:
    """Samples of a LLaVA-format JSON list (first turn only) and the ids of records without an image."""
    with open(path, encoding="utf-8") as handle:
        try:
            records = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of LLaVA records, got {type(records).__name__}")
    samples, skipped = [], []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {index} is not a JSON object")
        record_id = str(record.get("id", index))
        where = f"{path}: record {index} (id {record_id})"
        image = record.get("image")
        if image is None:
            skipped.append(record_id)
            continue
        if not isinstance(image, str):
            raise ValueError(
                f"{where}: image must be one path (a string), got {image!r}; for records of several images (video "
                "frames) scripts/build_frame_oracle.py builds a per-frame oracle"
            )
        try:
            turns = normalize_conversations(record.get("conversations"), True, record_id)
        except ValueError as error:
            raise ValueError(f"{path}: record {index}: {error}") from None
        if "answers" in record:
            answers = record["answers"]
        elif "answer" in record:
            answers = [str(record["answer"])]
        else:
            answers = [turns[1]["value"]]
        question = turns[0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
        fields = dict(record, id=record_id, question=question, answers=answers)
        samples.append((_make_sample(fields, where, image_root, default_metric), where))
    return samples, skipped


def read_hf_dataset(hf: HFData) -> list[tuple[Sample, str]]:
    """Samples of a dataset split (see :func:`m3.data.hf.load_hf`), one per row with an image."""
    images = hf.images()
    located = []
    for item in hf.items:
        sample = Sample(
            sample_id=item.sample_id,
            image_id=item.image_id,
            image=image_ref(hf.split, item.row),
            image_path=None,
            question=item.question,
            answers=item.answers,
            metric=item.metric,
            choices=item.choices,
            family=item.family,
            text=item.prompt,
            dataset_image=DatasetImage(images, item.row),
        )
        located.append((sample, f"{hf.location} split {hf.split!r}, row {item.row}"))
    return located


def load_samples(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    format: str = "auto",
    default_metric: str = "exact_match",
    limit: int | None = None,
    check_images: bool = True,
    split: str | None = None,
    config: str | None = None,
    layout: str | None = "auto",
    columns: dict | str | None = None,
) -> OracleData:
    """Read a data file or dataset (see the module docstring) into samples, in data order.

    ``limit`` keeps the first N samples (N >= 1). Sample ids must be unique. With ``check_images`` every image file
    must exist (checked up front, so a long build does not stop halfway on a missing file; the build also decodes
    them before loading the model); a dataset's images must be embedded. Question text may not hold ``<image>``
    (the prompt gets exactly one). ``split``, ``config``, ``layout`` and ``columns`` apply to datasets
    (:func:`m3.data.hf.load_hf`; ``default_metric`` scores a column mapping that is not a known layout).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of samples, got {limit}")
    if default_metric not in METRICS:
        get_metric(default_metric)  # raises, naming the known metrics
    data_format = detect_format(path) if format == "auto" else format
    if data_format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; expected 'auto' or one of {FORMATS}")
    dataset_options = {"--split": split, "--dataset-config": config, "--columns": columns}
    dataset_options["--layout"] = None if layout in (None, "auto") else layout
    given = [option for option, value in dataset_options.items() if value is not None]
    if data_format != "hf" and given:
        one = len(given) == 1
        raise ValueError(
            f"{' and '.join(given)} {'applies' if one else 'apply'} to a Hugging Face dataset, but {path} is a "
            f"{data_format} file: leave {'it' if one else 'them'} out (nothing would read {'it' if one else 'them'}), "
            "or give a dataset (a folder, *.parquet or a hub id)"
        )
    if data_format == "hf":
        hf = load_hf(path, split, config, layout, columns, default_metric, limit)
        located = read_hf_dataset(hf)
        skipped = [str(row) for row in hf.skipped_rows]
        if skipped:
            logger.warning("%s: skipped %d row(s) without an image (first: %s)", path, len(skipped), skipped[0])
        _check_unique(located, check_images=False)
        return OracleData(Path(path), "hf", None, [s for s, _ in located], skipped, hf=hf)
    path = Path(path)
    if not path.is_file():
        raise not_a_file_error(path, f"data file {path}")
    root = Path(image_root) if image_root is not None else path.parent
    skipped: list[str] = []
    if data_format == "jsonl":
        located = read_question_file(path, root, default_metric)
    else:
        located, skipped = read_llava_json(path, root, default_metric)
    if skipped:
        logger.warning("%s: skipped %d record(s) without an image (first: %s)", path, len(skipped), skipped[0])
    if limit is not None:
        located = located[:limit]
    _check_unique(located, check_images)
    return OracleData(
        path=path, format=data_format, image_root=root, samples=[s for s, _ in located], skipped_ids=skipped
    )


def _check_unique(located: list[tuple[Sample, str]], check_images: bool) -> None:
    seen: dict[str, str] = {}
    for sample, where in located:
        if sample.sample_id in seen:
            raise ValueError(
                f"{where}: duplicate sample id {sample.sample_id!r} (first used at {seen[sample.sample_id]})"
            )
        seen[sample.sample_id] = where
        if check_images and not sample.image_path.is_file():
            raise not_a_file_error(sample.image_path, f"{where}: image file {sample.image_path}")


def dataset_image_reader(manifest: dict | None):
    """For an oracle built from a dataset, a function ``image -> PIL RGB`` that reads an ``image`` value
    (``"{split}[{row}]"``) from the dataset the manifest names; None for oracles of image files.

    This is how the predictors compute image features of dataset-backed oracles (images are never copied out).
    """
    data = (manifest or {}).get("data", {})
    if data.get("format") != "hf":
        return None
    from m3.data.hf import DatasetImages, open_dataset

    dataset, split = open_dataset(data["path"], data.get("split"), data.get("config"))
    images = DatasetImages(dataset, data["columns"]["image"], split, data["path"])

    def read(image: str):
        ref_split, row = parse_image_ref(image)
        if ref_split != split:
            raise ValueError(f"image {image!r} is not in split {split!r} of {data['path']}")
        return images.open(row)

    return read


def image_runs(samples: Sequence[Sample], size: int) -> list[list[Sample]]:
    """Split samples, in order, into groups of at most ``size`` that do not cut a run of adjacent samples of
    the same image (unless the run alone is longer than ``size``).

    Used for both shards and batches, so an image whose questions are adjacent goes through the vision tower
    once. The grouping depends only on the samples and ``size``: a resumed build makes the same groups.
    """
    if size < 1:
        raise ValueError(f"group size must be at least 1, got {size}")
    runs: list[list[Sample]] = []
    for sample in samples:
        if runs and runs[-1][-1].image_key == sample.image_key and len(runs[-1]) < size:
            runs[-1].append(sample)
        else:
            runs.append([sample])
    groups: list[list[Sample]] = []
    for run in runs:
        if groups and len(groups[-1]) + len(run) <= size:
            groups[-1].extend(run)
        else:
            groups.append(list(run))
    return groups
