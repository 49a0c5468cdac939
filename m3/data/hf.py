"""Hugging Face datasets as M3 inputs: where a dataset lives, which benchmark layout it has, and what each row means.

Benchmarks are published as Hugging Face datasets with the image embedded in a column (the lmms-lab copies of
TextVQA, DocVQA, ChartQA, POPE, MMBench and ScienceQA). This module is the one place that knows their layouts, so
the oracle (:mod:`oracle_data`) and training (:mod:`m3.training`) read them the same way:

* :func:`open_dataset` opens a ``save_to_disk`` folder, Parquet files (a file or a folder; hub-style names such as
  ``data/test-00000-of-00003.parquet`` pick the split) or, when online, a hub id, and returns one split;
* :func:`detect_layout` recognises a layout from the column names (:data:`LAYOUTS`); :func:`custom_layout` builds
  one from a user's column mapping (``question=query,answers=label,...``) for any other dataset;
* :func:`read_rows` turns rows into :class:`Item` s: the question, the prompt lmms-eval sends (its post-prompt
  included), the reference answers, the options, the metric (:mod:`m3.metrics`) and the family;
* :class:`DatasetImages` reads a row's image from the dataset itself (never re-downloaded);
* :class:`HFInstructionDataset` gives the rows to :class:`m3.data.llava.M3Collator` as one-turn conversations.

Every problem names the dataset, the split, the row and the column.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from ..images import BadImageError, to_rgb
from ..metrics import LETTERS, METRICS, answer_letter
from ..processing import IMAGE_PLACEHOLDER

CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
PROMPT_STYLES = ("plain", "llava", "mmbench", "scienceqa")
ROLES = ("question", "answers", "image", "choices", "hint", "id", "image_id", "family")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MISSING = (None, "", "nan")


@dataclass(frozen=True)
class Layout:
    """The columns of one benchmark layout and how to prompt and score it.

    ``answers`` may hold a string, a list of strings, or an integer index into the options. ``choices`` is one
    list column, or letter columns (``("A", "B", "C", "D", "E")``, read until the first empty one). Without an
    ``image_id`` column, an image's id is a hash of its bytes (questions about one image stay together in splits).
    ``prompt`` is how the user text is built (see :func:`build_prompt`); ``signature`` are the columns that
    identify the layout.
    """

    name: str
    question: str
    answers: str
    metric: str
    image: str = "image"
    choices: str | tuple[str, ...] | None = None
    hint: str | None = None
    id: str | None = None
    image_id: str | None = None
    family: str | None = None
    prompt: str = "llava"
    post_prompt: str = ""
    capitalize: bool = False
    signature: tuple[str, ...] = ()
    hub_ids: tuple[str, ...] = ()

    def columns(self) -> dict[str, str | list[str]]:
        """The role -> column mapping (what the oracle manifest records)."""
        mapping = {role: getattr(self, role) for role in ROLES if getattr(self, role) is not None}
        if isinstance(self.choices, tuple):
            mapping["choices"] = list(self.choices)
        return mapping

    def column_names(self) -> list[str]:
        """Every column the layout reads."""
        choices = list(self.choices) if isinstance(self.choices, tuple) else [self.choices] if self.choices else []
        named = [self.question, self.answers, self.image, self.hint, self.id, self.image_id, self.family, *choices]
        return list(dict.fromkeys(column for column in named if column))


# The lmms-lab copies, as lmms-eval 0.7.3 prompts and scores them (its "default" prompt kwargs). lmms-eval 0.7.3
# reads the lmms-lab-encoder mirrors of the same data. Sample ids are the row numbers: lmms-eval's doc_id.
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "mmbench", question="question", answers="answer", metric="multiple_choice", hint="hint",
            choices=("A", "B", "C", "D", "E"), family="category", prompt="mmbench",
            post_prompt="\n" + CHOICE_INSTRUCTION, signature=("index", "question", "hint", "answer", "A", "B"),
            hub_ids=("lmms-lab/MMBench", "lmms-lab/MMBench_EN"),
        ),
        Layout(
            "scienceqa", question="question", answers="answer", metric="multiple_choice", hint="hint",
            choices="choices", family="subject", prompt="scienceqa", post_prompt="\n" + CHOICE_INSTRUCTION,
            signature=("question", "choices", "answer", "hint"), hub_ids=("lmms-lab/ScienceQA",),
        ),
        Layout(
            "pope", question="question", answers="answer", metric="pope", image_id="image_source",
            family="category", prompt="plain", post_prompt=SHORT_ANSWER,
            signature=("question_id", "question", "answer", "image_source", "category"), hub_ids=("lmms-lab/POPE",),
        ),
        Layout(
            "docvqa", question="question", answers="answers", metric="anls", image_id="docId", prompt="plain",
            post_prompt=SHORT_ANSWER, signature=("questionId", "question", "answers", "docId"),
            hub_ids=("lmms-lab/DocVQA",),
        ),
        Layout(
            "textvqa", question="question", answers="answers", metric="vqa_accuracy", image_id="image_id",
            prompt="plain", post_prompt=SHORT_ANSWER, capitalize=True,
            signature=("question_id", "question", "answers", "image_id"), hub_ids=("lmms-lab/textvqa",),
        ),
        Layout(
            "chartqa", question="question", answers="answer", metric="relaxed_accuracy", family="type",
            prompt="plain", post_prompt="\nAnswer the question with a single word.",
            signature=("type", "question", "answer"), hub_ids=("lmms-lab/ChartQA",),
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Item:
    """One row as a question: everything to prompt the model and score its answer (the image stays in the dataset)."""

    row: int
    sample_id: str
    image_id: str
    question: str  # without options, hint or post-prompt
    prompt: str  # the user text the model gets
    answers: tuple[str, ...]
    metric: str
    choices: tuple[str, ...] | None = None
    family: str | None = None

    @property
    def training_answer(self) -> str:
        """The target text for training: the option letter, else the most common reference answer."""
        if self.metric == "multiple_choice":
            return answer_letter(self.answers[0], self.choices)
        return Counter(self.answers).most_common(1)[0][0]


@dataclass
class HFData:
    """One split of a dataset, its layout, its items and the rows left out (no image)."""

    location: str
    split: str
    config: str | None
    layout: Layout
    dataset: object  # datasets.Dataset
    items: list[Item]
    skipped_rows: list[int] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        """What identifies this data: the dataset's fingerprint, the split, the configuration and the layout."""
        text = repr((getattr(self.dataset, "_fingerprint", None), self.split, self.config, self.layout))
        return hashlib.sha256(text.encode()).hexdigest()

    def images(self) -> DatasetImages:
        return DatasetImages(self.dataset, self.layout.image, self.split, self.location)


# ----------------------------------------------------------------------------------------------------
# where a dataset lives


def is_hf_location(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a Hugging Face dataset: a folder (``save_to_disk`` or Parquet files), a ``.parquet``
    file, or (not a local path) a hub id such as ``lmms-lab/POPE``."""
    path_str = os.fspath(path)
    local = Path(path_str)
    if local.is_dir():
        return True
    if local.suffix.lower() == ".parquet":
        return True
    return not local.exists() and bool(_HUB_ID.match(path_str)) and not local.suffix


def _split_of(path: Path) -> str:
    """The split a Parquet file belongs to: hub names start with it (``test-00000-of-00003.parquet``,
    ``validation_0.parquet``); otherwise its folder's name."""
    stem = path.name.split(".")[0]
    match = re.match(r"(.+?)[-_]\d", stem)
    return match.group(1) if match else path.parent.name


def _parquet_split_files(root: Path, split: str | None, config: str | None = None) -> tuple[list[str], str]:
    """The Parquet files of one split under ``root`` (a file or a folder) and the split's name.

    A local copy of a hub repository keeps each configuration in its own folder (``ScienceQA-IMG/test-*.parquet``,
    ``data/test-*.parquet``): ``config`` picks one; a split found in several folders without it is refused."""
    if not root.is_dir():
        return [str(root)], split or _split_of(root)
    files = sorted(root.rglob("*.parquet"))
    if config is not None:
        files = [f for f in files if config in f.relative_to(root).parts[:-1]]
    by_split: dict[str, list[Path]] = {}
    for file in files:
        by_split.setdefault(_split_of(file), []).append(file)
    if not by_split:
        where = f" in a folder named {config!r}" if config else ""
        raise FileNotFoundError(
            f"{root} holds no save_to_disk dataset (dataset_info.json) and no *.parquet file{where}"
        )
    if split is None:
        if len(by_split) > 1:
            raise ValueError(f"{root} holds the splits {sorted(by_split)}; choose one with --split")
        split = next(iter(by_split))
    if split not in by_split:
        raise ValueError(f"{root} has no split {split!r}; its Parquet files hold the splits {sorted(by_split)}")
    folders = sorted({str(f.parent.relative_to(root)) for f in by_split[split]})
    if len(folders) > 1:
        raise ValueError(
            f"{root} holds split {split!r} in several folders {folders} (one per configuration); choose one with "
            "--dataset-config FOLDER"
        )
    return [str(f) for f in by_split[split]], split


def open_dataset(location: str | os.PathLike, split: str | None = None, config: str | None = None):
    """``(datasets.Dataset, split name)`` of one split of a ``save_to_disk`` folder, Parquet files or a hub id.

    ``split`` may be omitted when there is only one; ``config`` is the hub configuration (e.g. ``ScienceQA-IMG``;
    in a local copy of a hub repository, the folder that holds it). Parquet files and hub datasets are loaded through
    ``datasets.load_dataset``, which keeps an Arrow copy in the datasets cache (``HF_DATASETS_CACHE``).
    """
    import datasets

    path = Path(location)
    if path.is_dir() and any(
        (path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")
    ):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            names = sorted(loaded)
            if split is None and len(names) == 1:
                split = names[0]
            if split not in loaded:
                raise ValueError(f"{path} holds the splits {names}; choose one with --split (got {split!r})")
            return loaded[split], split
        if split is not None and loaded.split is not None and str(loaded.split) != split:
            raise ValueError(f"{path} holds the split {str(loaded.split)!r}, not {split!r}")
        return loaded, split or (str(loaded.split) if loaded.split is not None else "train")
    if path.exists():
        files, split = _parquet_split_files(path, split, config)
        return datasets.load_dataset("parquet", data_files={split: files}, split=split), split
    if not _HUB_ID.match(os.fspath(location)):
        raise FileNotFoundError(f"{location} is neither a local dataset (folder or .parquet file) nor a hub id")
    try:
        if split is None:
            names = datasets.get_dataset_split_names(os.fspath(location), config)
            if len(names) != 1:
                raise ValueError(f"{location} has the splits {names}; choose one with --split")
            split = names[0]
        return datasets.load_dataset(os.fspath(location), config, split=split), split
    except (ConnectionError, OSError) as error:
        raise FileNotFoundError(
            f"cannot load {location} from the Hugging Face hub (offline, or no such dataset?): {error}"
        ) from error


# ----------------------------------------------------------------------------------------------------
# layouts


def detect_layout(columns: Sequence[str], where: str = "the dataset") -> Layout:
    """The known layout whose signature columns are all present (most specific first); ``ValueError`` otherwise."""
    present = set(columns)
    for layout in LAYOUTS.values():
        if set(layout.signature) <= present and layout.image in present:
            return layout
    raise ValueError(
        f"{where} has the columns {sorted(present)}, which match no known layout ({', '.join(LAYOUTS)}); "
        "map them with --columns question=COL,answers=COL,image=COL[,choices=COL][,image_id=COL][,family=COL] "
        "and pick a --metric"
    )


def parse_columns(text: str | None) -> dict[str, str | list[str]]:
    """``"question=query,answers=label,choices=A|B|C"`` -> a role -> column mapping (``|`` lists letter columns)."""
    mapping: dict[str, str | list[str]] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        role, sep, column = part.partition("=")
        role, column = role.strip(), column.strip()
        if not sep or not column:
            raise ValueError(f"--columns entries are ROLE=COLUMN, got {part!r}")
        if role not in ROLES:
            raise ValueError(f"unknown column role {role!r}; roles: {', '.join(ROLES)}")
        mapping[role] = column.split("|") if "|" in column else column
    return mapping


def custom_layout(
    columns: Mapping[str, str | Sequence[str]],
    metric: str = "exact_match",
    base: Layout | None = None,
    post_prompt: str | None = None,
) -> Layout:
    """A layout from a role -> column mapping, on top of ``base`` (a known layout) or from scratch.

    From scratch, ``question``, ``answers`` and ``image`` are required, and the prompt is LLaVA's (the question,
    then lettered options and LLaVA's instruction when there are options) plus ``post_prompt``.
    """
    unknown = set(columns) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown column role(s) {sorted(unknown)}; roles: {', '.join(ROLES)}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known metrics: {', '.join(METRICS)}")
    values = {role: tuple(col) if not isinstance(col, str) else col for role, col in columns.items()}
    if base is not None:
        layout = replace(base, name=f"{base.name}+columns", **values)
        return layout if post_prompt is None else replace(layout, post_prompt=post_prompt)
    missing = [role for role in ("question", "answers") if role not in values]
    if missing:
        raise ValueError(f"a column mapping needs {missing}; e.g. --columns question=query,answers=label,image=img")
    return Layout(name="custom", metric=metric, post_prompt=post_prompt or "", **values)


def resolve_layout(
    column_names: Sequence[str],
    layout: str | Layout | None = "auto",
    columns: Mapping[str, str | Sequence[str]] | str | None = None,
    metric: str | None = None,
    where: str = "the dataset",
) -> Layout:
    """The layout to read a dataset with: a given :class:`Layout`, a known name, or detected (``"auto"``); a column
    mapping, if given, overrides its columns (and without a known layout defines one; ``metric`` then scores it)."""
    mapping = parse_columns(columns) if isinstance(columns, str) or columns is None else dict(columns)
    if isinstance(layout, Layout):
        base = layout
    elif layout in (None, "auto"):
        try:
            base = detect_layout(column_names, where)
        except ValueError:
            if not mapping:
                raise
            base = None
    elif layout in LAYOUTS:
        base = LAYOUTS[layout]
    else:
        raise ValueError(f"unknown layout {layout!r}; known layouts: auto, {', '.join(LAYOUTS)}")
    if mapping or base is None:
        base = custom_layout(mapping, metric or (base.metric if base else "exact_match"), base)
    letters = set(base.choices) if isinstance(base.choices, tuple) else set()  # letter columns may stop early (A-D)
    absent = [c for c in base.column_names() if c not in column_names and (c not in letters or c in ("A", "B"))]
    if absent:
        raise ValueError(
            f"{where} lacks the column(s) {absent} that layout {base.name!r} reads; its columns are "
            f"{sorted(column_names)} (map others with --columns ROLE=COLUMN)"
        )
    return base


# ----------------------------------------------------------------------------------------------------
# rows -> items


def _text(value, column: str, where: str, required: bool = True) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        if required:
            raise ValueError(f"{where}, column {column!r}: empty (None)")
        return None
    if not isinstance(value, (str, int)):
        raise ValueError(f"{where}, column {column!r}: expected text, got {type(value).__name__} {value!r}")
    return str(value)


def _choices(layout: Layout, row: Mapping, where: str) -> tuple[str, ...] | None:
    if layout.choices is None:
        return None
    if isinstance(layout.choices, str):
        value = row[layout.choices]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{where}, column {layout.choices!r}: expected a list of options, got {value!r}")
        options = tuple(value)
    else:
        present = [row.get(column) not in _MISSING and not _is_nan(row.get(column)) for column in layout.choices]
        count = present.index(False) if False in present else len(present)
        if any(present[count:]):
            raise ValueError(f"{where}: option columns {list(layout.choices)} have a gap: {present}")
        options = tuple(str(row[column]) for column in layout.choices[:count])
    if not 2 <= len(options) <= len(LETTERS):
        raise ValueError(f"{where}, column {layout.choices!r}: {len(options)} options; expected 2 to {len(LETTERS)}")
    return options


def _is_nan(value) -> bool:
    return isinstance(value, float) and value != value


def _answers(layout: Layout, row: Mapping, choices: tuple[str, ...] | None, where: str) -> tuple[str, ...]:
    column = layout.answers
    value = row[column]
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{where}, column {column!r}: no reference answer ({value!r}); is this a test split?")
    if isinstance(value, int):
        if not choices or not 0 <= value < len(choices):
            raise ValueError(f"{where}, column {column!r}: answer index {value} does not index the options {choices}")
        return (LETTERS[value],)
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(
        f"{where}, column {column!r}: expected a string, a list of strings or an option index, got {value!r}"
    )


def build_prompt(layout: Layout, question: str, choices: tuple[str, ...] | None, hint: str | None) -> str:
    """The user text for one row, the way lmms-eval's task builds it for the layout (``layout.prompt``):

    * ``plain``: ``{question}{post_prompt}`` (TextVQA capitalises the question);
    * ``mmbench``: ``[{hint} ]{question} There are several options:\\nA. ...`` + ``"\\n"`` + post-prompt;
    * ``scienceqa``: ``[Context: {hint}\\n]{question}\\nA. ...{post_prompt}``;
    * ``llava`` (column mappings): the question, then ``A. option`` lines and LLaVA's instruction when there are
      options (the oracle's default prompt), then the post-prompt.
    """
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices or ()))
    if layout.prompt == "plain":
        return f"{question.capitalize() if layout.capitalize else question}{layout.post_prompt}"
    if layout.prompt == "mmbench":
        query = f"{question} There are several options:\n{options}"
        return f"{hint} {query}\n{layout.post_prompt}" if hint else f"{query}\n{layout.post_prompt}"
    if layout.prompt == "scienceqa":
        context = f"Context: {hint}\n" if hint else ""
        return f"{context}{question}\n{options}{layout.post_prompt}"
    if layout.prompt == "llava":
        text = f"{question}\n{options}\n{CHOICE_INSTRUCTION}" if choices else question
        return f"{text}{layout.post_prompt}"
    raise ValueError(f"unknown prompt style {layout.prompt!r}; expected one of {PROMPT_STYLES}")


def row_item(layout: Layout, row: Mapping, index: int, where: str, image_id: str | None = None) -> Item:
    """One row (its non-image columns) as an :class:`Item`; ``ValueError`` naming ``where`` and the column."""
    question = _text(row[layout.question], layout.question, where).strip()
    if not question:
        raise ValueError(f"{where}, column {layout.question!r}: empty question")
    choices = _choices(layout, row, where)
    answers = _answers(layout, row, choices, where)
    if layout.metric == "multiple_choice":
        for answer in answers:
            try:
                answer_letter(answer, choices)
            except ValueError as error:
                raise ValueError(f"{where}, column {layout.answers!r}: {error}") from None
    hint = _text(row[layout.hint], layout.hint, where, required=False) if layout.hint else None
    hint = None if hint in _MISSING else hint.strip() or None
    family = _text(row[layout.family], layout.family, where, required=False) if layout.family else None
    if layout.image_id is not None:
        image_id = _text(row[layout.image_id], layout.image_id, where)
    return Item(
        row=index,
        sample_id=_text(row[layout.id], layout.id, where) if layout.id else str(index),
        image_id=image_id if image_id is not None else f"row-{index}",
        question=question,
        prompt=build_prompt(layout, question, choices, hint),
        answers=answers,
        metric=layout.metric,
        choices=choices,
        family=family,
    )


def read_rows(
    dataset, layout: Layout, split: str, location: str = "dataset", limit: int | None = None
) -> tuple[list[Item], list[int]]:
    """``(items, rows without an image)`` of a dataset split, in row order (Arrow batches; images not decoded).

    An image column holding neither bytes nor a readable local path raises before anything runs. Images get an
    id from the ``image_id`` column, else a hash of their bytes.
    """
    items: list[Item] = []
    skipped: list[int] = []
    columns = [column for column in layout.column_names() if column in dataset.column_names]
    image_column = layout.image
    row = 0
    for batch in dataset.select_columns(columns).with_format("arrow").iter(batch_size=256):
        records = batch.drop_columns([image_column]).to_pylist()
        images = batch.column(image_column).to_pylist()
        for record, image in zip(records, images):
            where = f"{location} split {split!r}, row {row}"
            if limit is not None and len(items) >= limit:
                return items, skipped
            if image is None:
                skipped.append(row)
            else:
                items.append(row_item(layout, record, row, where, image_key(image, image_column, where)))
            row += 1
    return items, skipped


def load_hf(
    location: str | os.PathLike,
    split: str | None = None,
    config: str | None = None,
    layout: str | Layout | None = "auto",
    columns: Mapping | str | None = None,
    metric: str | None = None,
    limit: int | None = None,
) -> HFData:
    """Open one split (:func:`open_dataset`), resolve its layout (:func:`resolve_layout`) and read its items."""
    dataset, split = open_dataset(location, split, config)
    where = f"{location} split {split!r}"
    chosen = resolve_layout(dataset.column_names, layout, columns, metric, where)
    items, skipped = read_rows(dataset, chosen, split, os.fspath(location), limit)
    return HFData(os.fspath(location), split, config, chosen, dataset, items, skipped)


# ----------------------------------------------------------------------------------------------------
# images


def image_key(value, column: str, where: str) -> str:
    """A stable id of an image cell (a hash of its bytes, else of its path); raises if it holds neither."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return "sha1-" + hashlib.sha1(value["bytes"]).hexdigest()[:16]
        if value.get("path") and Path(value["path"]).is_file():
            return "path-" + hashlib.sha1(value["path"].encode()).hexdigest()[:16]
        raise BadImageError(
            f"{where}, column {column!r}: the image is not embedded (path {value.get('path')!r} and no bytes); "
            "write the dataset with the images embedded (save_to_disk, push_to_hub, or embed_table_storage)"
        )
    raise ValueError(f"{where}, column {column!r}: expected an image (datasets.Image), got {type(value).__name__}")


def decode_image(value, where: str) -> Image.Image:
    """A cell of an image column (PIL, or ``{"bytes", "path"}``) as PIL RGB (:func:`m3.images.to_rgb`);
    :class:`BadImageError` naming it."""
    try:
        if isinstance(value, Image.Image):
            return to_rgb(value, where)
        if isinstance(value, dict) and value.get("bytes"):
            with Image.open(io.BytesIO(value["bytes"])) as image:
                return to_rgb(image, where)
        if isinstance(value, dict) and value.get("path") and Path(value["path"]).is_file():
            with Image.open(value["path"]) as image:
                return to_rgb(image, where)
    except BadImageError:
        raise
    except Exception as error:  # re-raised with the row and column named
        raise BadImageError(f"{where}: cannot decode the image: {error}") from error
    raise BadImageError(f"{where}: holds no image (got {type(value).__name__})")


class DatasetImages:
    """The images of one dataset split, read by row from the dataset (memory-mapped Arrow; nothing downloaded)."""

    def __init__(self, dataset, column: str, split: str, location: str) -> None:
        import datasets

        images = dataset.select_columns([column])
        if isinstance(images.features[column], datasets.Image):
            images = images.cast_column(column, datasets.Image(decode=False))
        self._images = images
        self.column = column
        self.split = split
        self.location = location

    def __len__(self) -> int:
        return len(self._images)

    def open(self, row: int) -> Image.Image:
        """The image of ``row`` as PIL RGB; :class:`BadImageError` naming the split, row and column."""
        where = f"{self.location} split {self.split!r}, row {row}, column {self.column!r}"
        if not 0 <= row < len(self._images):
            raise BadImageError(f"{where}: no such row (the split has {len(self._images)})")
        return decode_image(self._images[row][self.column], where)


@dataclass(frozen=True, eq=False)
class DatasetImage:
    """A reference to one row's image (what an oracle sample carries instead of a file path)."""

    images: DatasetImages
    row: int

    def open(self) -> Image.Image:
        return self.images.open(self.row)


def image_ref(split: str, row: int) -> str:
    """How an oracle table names a dataset image: ``"{split}[{row}]"``."""
    return f"{split}[{row}]"


def parse_image_ref(ref: str) -> tuple[str, int]:
    """``"test[17]"`` -> ``("test", 17)``."""
    match = re.fullmatch(r"(.*)\[(\d+)\]", ref)
    if match is None:
        raise ValueError(f"{ref!r} is not a dataset image reference ('split[row]')")
    return match.group(1), int(match.group(2))


# ----------------------------------------------------------------------------------------------------
# training


class HFInstructionDataset:
    """A dataset split as one-turn LLaVA conversations for :class:`m3.data.llava.M3Collator`.

    The human turn is ``<image>\\n`` + the layout's prompt; the answer is :attr:`Item.training_answer`. Items look
    like :class:`m3.data.llava.LlavaDataset`'s (``id``, ``image``, ``conversations``, ``answer``, ``family``, ...).
    With ``check_images`` every image is decoded up front, before training starts: a bad one raises (naming the
    split, row and column), or with ``skip_bad_images`` its row is dropped (``skipped_ids``).
    """

    def __init__(self, data: HFData, skip_bad_images: bool = False, check_images: bool = True) -> None:
        self.data = data
        self.images = data.images()
        self.items = list(data.items)
        self.skipped_ids: list[str] = [str(row) for row in data.skipped_rows]
        if check_images or skip_bad_images:
            kept = []
            for item in self.items:
                try:
                    self.images.open(item.row)
                    kept.append(item)
                except BadImageError:
                    if not skip_bad_images:
                        raise
                    self.skipped_ids.append(item.sample_id)
            self.items = kept

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_ids)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        return {
            "id": item.sample_id,
            "image": self.images.open(item.row),
            "image_path": None,
            "image_id": item.image_id,
            "family": item.family,
            "answer": item.training_answer,
            "conversations": [
                {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{item.prompt}"},
                {"from": "gpt", "value": item.training_answer},
            ],
        }


def iter_items(data: HFData) -> Iterator[tuple[Item, Image.Image]]:
    """Each item with its decoded image, in row order."""
    images = data.images()
    for item in data.items:
        yield item, images.open(item.row)
