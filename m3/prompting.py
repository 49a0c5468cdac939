"""Prompts at a scale: how many image tokens each image needs, and expanding one placeholder to them.

Text is tokenized once with ONE image token per image (the compact form); :func:`expand_image_tokens`
then repeats each placeholder to the count a scale needs. Labels at image positions become -100.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from .anyres import anyres_num_image_tokens
from .pooling import check_scale

IGNORE_INDEX = -100


def image_token_counts(
    config, scale: int, image_sizes: Iterable[Sequence[int]] | None = None, num_images: int | None = None
) -> list[int]:
    """Image tokens per image at ``scale`` for an M3 config (``image_sizes`` as (height, width), NeXT only)."""
    check_scale(scale, config.grid_tokens)
    if getattr(config, "image_grid_pinpoints", None) is None:
        if num_images is None:
            raise ValueError("num_images is required for LLaVA-1.5 configs")
        return [scale] * num_images
    if image_sizes is None:
        raise ValueError("image_sizes (height, width per image) are required for LLaVA-NeXT configs")
    crop = config.vision_config.image_size
    return [anyres_num_image_tokens(size, scale, config.image_grid_pinpoints, crop) for size in image_sizes]


def _padding_side(attention_mask: torch.Tensor) -> str:
    """'left' when some row starts with padding, else 'right'."""
    return "left" if bool((attention_mask[:, 0] == 0).any()) else "right"


def expand_image_tokens(
    input_ids: torch.Tensor,
    image_token_id: int,
    counts: Sequence[int],
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    pad_token_id: int = 0,
    padding_side: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Repeat every image placeholder in a padded batch to its count (images in row-major order).

    Returns ``(input_ids, attention_mask, labels)`` re-padded on the same side as the input (or
    ``padding_side``); labels of image positions are ``IGNORE_INDEX``.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    side = padding_side or _padding_side(attention_mask)
    is_image = input_ids == image_token_id
    n_placeholders = int(is_image[attention_mask.bool()].sum())
    if n_placeholders != len(counts):
        raise ValueError(
            f"the batch holds {n_placeholders} image placeholder tokens (id {image_token_id}) but "
            f"{len(counts)} images were given; put exactly one image token per image in the text"
        )
    remaining = torch.as_tensor(list(counts), dtype=torch.long)
    rows_ids, rows_labels = [], []
    for row in range(input_ids.shape[0]):
        keep = attention_mask[row].bool()
        ids = input_ids[row][keep]
        repeats = torch.ones_like(ids)
        row_images = int((ids == image_token_id).sum())
        repeats[ids == image_token_id] = remaining[:row_images]
        remaining = remaining[row_images:]
        rows_ids.append(ids.repeat_interleave(repeats))
        if labels is not None:
            row_labels = labels[row][keep].repeat_interleave(repeats)
            row_labels[rows_ids[-1] == image_token_id] = IGNORE_INDEX
            rows_labels.append(row_labels)
    length = max(len(ids) for ids in rows_ids)
    new_ids = input_ids.new_full((len(rows_ids), length), pad_token_id)
    new_mask = attention_mask.new_zeros((len(rows_ids), length))
    new_labels = None if labels is None else labels.new_full((len(rows_ids), length), IGNORE_INDEX)
    for row, ids in enumerate(rows_ids):
        span = slice(length - len(ids), length) if side == "left" else slice(0, len(ids))
        new_ids[row, span] = ids
        new_mask[row, span] = 1
        if new_labels is not None:
            new_labels[row, span] = rows_labels[row]
    return new_ids, new_mask, new_labels


def truncate_text(
    input_ids: list[int],
    labels: list[int] | None,
    max_length: int,
    image_token_id: int,
    max_image_tokens: int,
) -> tuple[list[int], list[int] | None]:
    """Cut text from the end of a compact sequence so it fits ``max_length`` once every image
    placeholder becomes ``max_image_tokens`` tokens (the largest scale). Image tokens are never cut:
    if they do not fit, this raises instead.
    """
    n_images = sum(1 for token in input_ids if token == image_token_id)
    budget = max_length - n_images * (max_image_tokens - 1)
    if len(input_ids) <= budget:
        return input_ids, labels
    if budget < 1 or image_token_id in input_ids[budget:]:
        raise ValueError(
            f"max_length {max_length} cannot hold {n_images} image(s) of {max_image_tokens} tokens and the "
            "text before them; raise max_length"
        )
    return input_ids[:budget], None if labels is None else labels[:budget]
