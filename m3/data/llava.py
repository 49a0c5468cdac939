"""LLaVA instruction data: a dataset of records and the collator that builds compact M3 training batches.

A record (one entry of e.g. ``llava_v1_5_mix665k.json``)::

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is ..."}, {"from": "gpt", "value": "..."}]}

``image`` is absent for text-only records; any extra keys (``family``, ``answer``, ``image_id`` ...) are kept.
A multi-image record (the frames of a video, several pictures) lists its files, ``"image": ["a.png", "b.png"]``,
with one ``<image>`` placeholder per file in its text, in file order.

The conversation is written in the model's conversation template (``processor.template``, :mod:`m3.templates`),
the one its prompts are written in at inference, so training text and inference prompts agree. ``vicuna_v1`` (the
official LLaVA-1.5 / M3 fine-tune's)::

    {system} USER: {human_1} ASSISTANT: {gpt_1}</s>USER: {human_2} ASSISTANT: {gpt_2}</s>...

``plain`` (the tiny models') is the same without the system prompt: the text starts at ``USER:``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..files import read_json
from ..images import BadImageError, check_image, not_a_file_error, open_rgb  # the one image loader
from ..processing import IMAGE_PLACEHOLDER, M3Processor
from ..prompting import IGNORE_INDEX, image_token_counts, truncate_text
from ..templates import plain

logger = logging.getLogger(__name__)


def _problem(path: Path) -> BadImageError | None:
    try:
        check_image(path)
    except BadImageError as error:
        return error
    return None


def find_bad_images(paths: Sequence[Path]) -> dict[Path, BadImageError]:
    """Every missing or undecodable file among ``paths`` with its problem; each distinct file is checked once, on
    threads (decoding releases the GIL)."""
    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4)) as pool:
        problems = list(pool.map(_problem, unique))
    return {path: problem for path, problem in zip(unique, problems) if problem is not None}


def check_image_files(images: Sequence[tuple[Path, str]], hint: str = "") -> None:
    """Check every ``(path, owner)`` image up front; raise the first problem (naming the file and its owner), how
    many more images are bad, and ``hint`` (e.g. ``"; --skip_bad_images drops such records"``)."""
    bad = find_bad_images([path for path, _ in images])
    located = [(path, owner) for path, owner in images if path in bad]
    if located:
        path, owner = located[0]
        more = f" ({len(located) - 1} more bad image(s) after it)" if len(located) > 1 else ""
        where = f" of {owner}" if owner else ""
        message = str(bad[path]).replace(str(path), f"{path}{where}", 1)
        raise BadImageError(f"{message}{more}{hint}") from bad[path].__cause__


def normalize_conversations(conversations: Sequence[dict], has_image: bool | int, record_id: str | None) -> list[dict]:
    """Check a conversation and put the image placeholders where LLaVA puts them.

    ``has_image``: whether the record has an image, or how many it has (a multi-image record). Turns must
    alternate ``human`` / ``gpt``, starting with ``human`` and ending with ``gpt``. A record with one image gets
    exactly one ``<image>``, moved to the front of the first human turn (``"<image>\\n"`` + text, as LLaVA's
    ``preprocess_multimodal`` does; prepended when the text has none). A record with n > 1 images needs exactly n
    placeholders in its human turns, kept where they stand (interleaved text keeps its meaning), or none: then n
    ``"<image>\\n"`` lines are prepended to the first human turn (the layout of :func:`m3.processing.llava_prompt`).
    A text-only record must hold no ``<image>``. Returns new turn dicts; raises ``ValueError`` naming the record.
    """
    num_images = int(has_image)
    if not conversations or len(conversations) % 2:
        raise ValueError(
            f"record {record_id}: a conversation needs human/gpt pairs, got {len(conversations or ())} turn(s)"
        )
    turns = []
    for index, turn in enumerate(conversations):
        expected = "human" if index % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != expected:
            found = f"from={turn.get('from')!r}" if isinstance(turn, dict) else f"a {type(turn).__name__}"
            raise ValueError(f"record {record_id}: turn {index} should be a {expected!r} turn, got {found}")
        if not isinstance(turn.get("value"), str):
            raise ValueError(
                f"record {record_id}: turn {index} ({expected}) should have a string value, got "
                f"{turn.get('value')!r} ({type(turn.get('value')).__name__})"
            )
        turns.append(dict(turn))
    placeholders = [turn["value"].count(IMAGE_PLACEHOLDER) for turn in turns]
    if not num_images:
        if any(placeholders):
            raise ValueError(f"record {record_id} has no image but its text holds {IMAGE_PLACEHOLDER}")
        return turns
    if num_images > 1:
        if sum(placeholders[1::2]) or sum(placeholders) not in (0, num_images):
            raise ValueError(
                f"record {record_id}: a record of {num_images} images needs {num_images} {IMAGE_PLACEHOLDER} "
                f"placeholders in its human turns (or none); found {placeholders} per turn"
            )
        if not sum(placeholders):
            turns[0]["value"] = f"{IMAGE_PLACEHOLDER}\n" * num_images + turns[0]["value"].strip()
        return turns
    if sum(placeholders) > 1 or sum(placeholders[1:]):
        raise ValueError(
            f"record {record_id}: an image record needs exactly one {IMAGE_PLACEHOLDER}, in the first human "
            f"turn; found {placeholders} per turn"
        )
    question = turns[0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
    turns[0]["value"] = f"{IMAGE_PLACEHOLDER}\n{question}"
    return turns


def record_images(value) -> list:
    """A record's (or item's) ``image`` entry as a list: ``[]`` for none, ``[x]`` for one, the list itself for
    several: the one place that knows both forms."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def format_conversation(conversations: Sequence[dict], template=None) -> tuple[str, list[tuple[int, int]]]:
    """The text of a (normalized) conversation in ``template`` (default: ``plain``) and the character span of every
    assistant answer: the tokens the loss is computed on (for ``plain`` / ``vicuna_v1`` the space after
    ``ASSISTANT:``, the answer and its closing ``</s>``)."""
    return (template or plain()).conversation([turn["value"] for turn in conversations])


class LlavaDataset(Dataset):
    """Records of a LLaVA instruction JSON file with their images (PIL RGB, or None for text-only records).

    Every conversation is checked (and its image placeholder normalized) at construction, so a malformed
    record fails before training starts. A missing or undecodable image raises :class:`BadImageError` naming
    the file and the record; with ``skip_bad_images=True`` every image is opened and verified up front
    (threads) and bad records are dropped: ``num_skipped`` counts them and ``skipped_ids`` lists them.
    No image is ever replaced by a blank one. ``check_images=True`` decodes every image up front too and raises
    the first problem (training does this, so a bad file is not found hours in, when its batch comes).
    """

    def __init__(
        self,
        json_path: str | os.PathLike,
        image_root: str | os.PathLike,
        skip_bad_images: bool = False,
        check_images: bool = False,
    ):
        self.json_path = Path(json_path)
        self.image_root = Path(image_root)
        self.skip_bad_images = skip_bad_images
        if not self.json_path.is_file():
            raise not_a_file_error(self.json_path, f"data file {self.json_path}")
        records = read_json(self.json_path, "regenerate or re-download the data file")
        if not isinstance(records, list):
            raise ValueError(f"{self.json_path}: expected a JSON list of records, got {type(records).__name__}")
        self.records = []
        for index, record in enumerate(records):
            record = dict(record)
            record["id"] = str(record.get("id", index))
            if isinstance(record.get("image"), (list, tuple)) and not record["image"]:
                raise ValueError(f"record {record['id']}: its image list is empty (leave 'image' out for text only)")
            record["conversations"] = normalize_conversations(
                record.get("conversations"), len(record_images(record.get("image"))), record["id"]
            )
            self.records.append(record)
        self.skipped_ids: list[str] = []
        if skip_bad_images:
            self._drop_bad_images()
        elif check_images:
            located = [(path, f"record {r['id']}") for r in self.records for path in self.image_files(r)]
            check_image_files(located, "; --skip_bad_images drops such records")

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_ids)

    def _drop_bad_images(self) -> None:
        bad = find_bad_images([path for record in self.records for path in self.image_files(record)])
        kept = []
        for record in self.records:
            broken = [path for path in self.image_files(record) if path in bad]
            if not broken:
                kept.append(record)
            else:
                self.skipped_ids.append(record["id"])
                logger.debug("skipping record %s: image %s", record["id"], broken[0])
        if self.skipped_ids:
            logger.warning(
                "%s: skipped %d record(s) with missing or corrupt images (first: %s)",
                self.json_path,
                self.num_skipped,
                ", ".join(self.skipped_ids[:5]),
            )
        self.records = kept

    def image_files(self, record: dict) -> list[Path]:
        """Every image file of a record, in placeholder order (none for a text-only record)."""
        return [self.image_root / image for image in record_images(record.get("image"))]

    def image_path(self, record: dict) -> Path | list[Path] | None:
        """The record's image file (a list for a multi-image record; None for a text-only one)."""
        files = self.image_files(record)
        return files if isinstance(record.get("image"), (list, tuple)) else (files[0] if files else None)

    def load_image(self, record: dict) -> Image.Image | list[Image.Image] | None:
        """The record's image as PIL RGB (a list for a multi-image record; None for a text-only record); raises
        :class:`BadImageError`."""
        images = [open_rgb(path, f"record {record['id']}") for path in self.image_files(record)]
        return images if isinstance(record.get("image"), (list, tuple)) else (images[0] if images else None)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        """``id``, ``image`` (PIL RGB, a list of them for a multi-image record, or None), ``image_path`` (str, list or
        None), ``conversations`` + extra keys."""
        record = self.records[index]
        path = self.image_path(record)
        item = dict(record)
        item.update(
            image=self.load_image(record),
            image_path=[str(p) for p in path] if isinstance(path, list) else (None if path is None else str(path)),
            conversations=[dict(turn) for turn in record["conversations"]],
        )
        return item


class M3Collator:
    """Items of :class:`LlavaDataset` -> a compact, right-padded M3 training batch.

    Returns ``input_ids`` (ONE image token per image), ``attention_mask``, ``labels`` and, when some item
    has an image, ``pixel_values`` (plus ``image_sizes`` for LLaVA-NeXT) of every image in item and placeholder
    order: what ``model(**batch, m3_scales=[...])`` takes. Items may hold several images (a list, one
    placeholder each). Labels are ``-100`` except on the assistant answers and
    their closing ``</s>`` (every turn). The conversation is tokenized once, with character offsets, and
    each token is labelled by the segment its first character lies in, so the masks are exact and the
    tokens are those of the whole text (as at inference). This needs a fast (``tokenizers``) tokenizer.

    The text is written in the processor's conversation template (``processor.template``). Text is cut from the end
    so that the sequence fits ``max_length`` once its image placeholders are
    expanded to the most tokens any scale can need (the full grid; for NeXT the count at the full grid
    for each image's size). Image tokens are never cut: an item whose images alone do not fit raises
    ``ValueError`` naming the item.

    """

    def __init__(self, processor: M3Processor, max_length: int = 2048):
        self.processor = processor
        self.max_length = max_length

    def encode(self, item: dict, max_image_tokens: int | Sequence[int]) -> tuple[list[int], list[int]]:
        """Compact ``(input_ids, labels)`` of one item, truncated to fit ``max_length`` (``max_image_tokens``: the
        most tokens any scale gives each of its images, or one count for all)."""
        tokenizer = self.processor.tokenizer
        image_token_id = self.processor.config.image_token_id
        num_images = len(record_images(item.get("image")))
        item_id = item.get("id")
        conversations = normalize_conversations(item["conversations"], num_images, item_id)
        text, spans = format_conversation(conversations, self.processor.template)
        encoded = tokenizer(text, return_offsets_mapping=True)
        input_ids = list(encoded["input_ids"])
        labels = [IGNORE_INDEX] * len(input_ids)
        for index, (start, end) in enumerate(encoded["offset_mapping"]):
            if end > start and any(span_start <= start < span_end for span_start, span_end in spans):
                labels[index] = input_ids[index]
        found = input_ids.count(image_token_id)
        if found != num_images:
            raise ValueError(
                f"item {item_id}: its text tokenizes to {found} image token(s) but it has {num_images} image(s)"
            )
        try:
            return truncate_text(input_ids, labels, self.max_length, image_token_id, max_image_tokens)
        except ValueError as error:
            raise ValueError(f"item {item_id}: {error}") from error

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        config = self.processor.config
        per_item = [record_images(item.get("image")) for item in items]
        images = [image for item_images in per_item for image in item_images]
        batch: dict[str, torch.Tensor] = {}
        image_sizes = None
        if images:
            pixels = self.processor.image_processor(images, return_tensors="pt")
            batch["pixel_values"] = pixels["pixel_values"]
            if "image_sizes" in pixels:
                image_sizes = pixels["image_sizes"]
                batch["image_sizes"] = image_sizes
        # the most image tokens any scale needs for each image: the full grid
        max_counts = (
            image_token_counts(config, config.grid_tokens, image_sizes=image_sizes, num_images=len(images))
            if images
            else []
        )
        rows, start = [], 0
        for item, item_images in zip(items, per_item):
            counts = max_counts[start : start + len(item_images)]
            start += len(item_images)
            rows.append(self.encode(item, counts if len(counts) > 1 else (counts[0] if counts else 1)))
        length = max(len(ids) for ids, _ in rows)
        pad_token_id = self.processor.tokenizer.pad_token_id
        if pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token before collating")
        input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for row, (ids, row_labels) in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
            labels[row, : len(ids)] = torch.tensor(row_labels, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, **batch}
