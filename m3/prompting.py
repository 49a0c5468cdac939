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


def check_context(
    config,
    text_tokens: Sequence[int],
    visual_tokens: Sequence[int],
    max_new_tokens: int,
    names: Sequence[str],
    scales: Sequence,
    remedy: str = "Shorten the question",
) -> None:
    """Refuse a prompt whose text tokens (image placeholders not counted), visual tokens and ``max_new_tokens``
    overrun the model's context: past its position embeddings it answers garbage, silently. One entry per prompt in
    each sequence; ``names`` and ``scales`` (a scale, or one per image) name it in the error, ``remedy`` ends it."""
    context = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
    if not context:
        return
    for text, visual, name, scale in zip(text_tokens, visual_tokens, names, scales, strict=True):
        need = text + visual + max_new_tokens
        if need > context:
            raise ValueError(
                f"{name} is {text} text tokens; with {visual} visual tokens (scale {scale}) and "
                f"max_new_tokens={max_new_tokens} it needs {need} positions, more than the model's context of "
                f"{context} tokens. {remedy}"
            )


def compact_text_tokens(compact: dict, image_token_id: int) -> list[int]:
    """What :func:`check_context` reads as each row's text tokens in a compact batch (one image token per image, as
    :func:`m3.inference.compact_prompts` tokenizes it): its tokens less padding and image placeholders."""
    placeholders = (compact["input_ids"] == image_token_id) & compact["attention_mask"].bool()
    return (compact["attention_mask"].sum(dim=1) - placeholders.sum(dim=1)).tolist()


def prompt_token_counts(
    tokenizer,
    config,
    texts: Sequence[str],
    image_counts: Sequence[int],
    scale: int,
    image_sizes: Sequence[Sequence[Sequence[int]]] | None = None,
) -> tuple[list[int], list[int]]:
    """What :func:`check_context` reads, for prompt strings before any model runs: each prompt's text tokens
    (``texts`` hold one image placeholder per image, ``image_counts``; tokenized once, placeholders not counted) and
    its visual tokens at ``scale`` (``image_sizes`` per prompt, per image, for LLaVA-NeXT configs)."""
    lengths = [len(ids) for ids in tokenizer(list(texts))["input_ids"]]
    text = [length - count for length, count in zip(lengths, image_counts, strict=True)]
    visual = [
        sum(image_token_counts(config, scale, None if image_sizes is None else image_sizes[index], num_images=count))
        for index, count in enumerate(image_counts)
    ]
    return text, visual


def per_image_scales(scale: int | Sequence[int], num_images: int, grid_tokens: int) -> list[int]:
    """One checked scale per image: a scalar applies to every image, a sequence gives each image its own (images in
    batch and prompt order: row 0's images first). The lengths must agree, so no image silently takes another's
    scale. Arrays and tensors are read with ``tolist()``."""
    if hasattr(scale, "tolist"):
        scale = scale.tolist()
    if not isinstance(scale, Sequence) or isinstance(scale, str):
        return [check_scale(scale, grid_tokens)] * num_images
    if len(scale) != num_images:
        raise ValueError(
            f"m3_scale holds {len(scale)} scales but there are {num_images} images; give one scale per image "
            "(in batch and prompt order) or a single scale for all"
        )
    return [check_scale(value, grid_tokens) for value in scale]


def image_token_counts(
    config,
    scale: int | Sequence[int],
    image_sizes: Iterable[Sequence[int]] | None = None,
    num_images: int | None = None,
) -> list[int]:
    """Image tokens per image at ``scale`` for an M3 config (``image_sizes`` as (height, width), NeXT only; counted
    with the config's ``image_grid_pinpoints`` and ``m3_unpad_rule``, as the model packs them).

    ``scale`` may hold one scale per image; then ``num_images`` defaults to its length (LLaVA-1.5)."""
    if getattr(config, "image_grid_pinpoints", None) is None:
        if num_images is None:
            if not isinstance(scale, Sequence):
                raise ValueError("num_images is required for LLaVA-1.5 configs")
            num_images = len(scale)
        return per_image_scales(scale, num_images, config.grid_tokens)
    if image_sizes is None:
        raise ValueError("image_sizes (height, width per image) are required for LLaVA-NeXT configs")
    image_sizes = list(image_sizes)
    scales = per_image_scales(scale, len(image_sizes), config.grid_tokens)
    crop, rule = config.vision_config.image_size, getattr(config, "m3_unpad_rule", "transformers")
    return [
        anyres_num_image_tokens(size, value, config.image_grid_pinpoints, crop, rule)
        for size, value in zip(image_sizes, scales)
    ]


def image_token_runs(input_ids: torch.Tensor, image_token_id: int) -> list[tuple[int, int]]:
    """``(row, length)`` of every run of consecutive image tokens in a batch, row-major."""
    runs = []
    for row, is_image in enumerate((input_ids == image_token_id).int()):
        edges = torch.nn.functional.pad(is_image, (1, 1)).diff()
        starts, ends = (edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist()
        runs += [(row, end - start) for start, end in zip(starts, ends)]
    return runs


def image_token_mismatch(
    input_ids: torch.Tensor, image_token_id: int, counts: Sequence[int], scales: Sequence[int] | None = None
) -> str | None:
    """Why the image tokens of ``input_ids`` do not fit images needing ``counts`` tokens each, or None if they do.

    Images take the runs of consecutive image tokens in order (row-major); images whose placeholders touch share one
    run, of which only the total can be checked. The answer names the first image (index and, if given, its scale)
    whose tokens are missing or short.
    """

    def image(index: int) -> str:
        return f"image {index}" + ("" if scales is None else f" (scale {scales[index]})")

    runs = image_token_runs(input_ids, image_token_id)
    if len(runs) == len(counts):  # one run per image: compare them pairwise
        for index, ((row, length), count) in enumerate(zip(runs, counts)):
            if length != count:
                return f"{image(index)} needs {count} image tokens but its run in row {row} holds {length}"
        return None
    index = 0
    for row, length in runs:
        left = length
        while left > 0:
            if index == len(counts):
                return f"row {row} holds {left} image tokens more than the {len(counts)} image(s) need"
            if counts[index] > left:
                return (
                    f"{image(index)} needs {counts[index]} image tokens but only {left} are left in the run of "
                    f"{length} in row {row}"
                )
            left -= counts[index]
            index += 1
    if index < len(counts):
        return f"{image(index)} needs {counts[index]} image tokens but input_ids hold no run for it"
    return None


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
    max_image_tokens: int | Sequence[int],
) -> tuple[list[int], list[int] | None]:
    """Cut text from the end of a compact sequence so it fits ``max_length`` once every image
    placeholder becomes ``max_image_tokens`` tokens (the largest scale; one count for every image, or one per image
    in placeholder order). Image tokens are never cut: if they do not fit, this raises instead.
    """
    n_images = sum(1 for token in input_ids if token == image_token_id)
    if isinstance(max_image_tokens, Sequence):
        if len(max_image_tokens) != n_images:
            raise ValueError(f"{len(max_image_tokens)} image token counts for {n_images} image placeholders")
        image_tokens = sum(max_image_tokens)
    else:
        image_tokens = n_images * max_image_tokens
    budget = max_length - image_tokens + n_images
    if len(input_ids) <= budget:
        return input_ids, labels
    if budget < 1 or image_token_id in input_ids[budget:]:
        each = "" if isinstance(max_image_tokens, Sequence) else f" of {max_image_tokens} tokens"
        raise ValueError(
            f"max_length {max_length} cannot hold {n_images} image(s){each} ({image_tokens} image tokens) and the "
            "text before them; raise max_length"
        )
    return input_ids[:budget], None if labels is None else labels[:budget]
