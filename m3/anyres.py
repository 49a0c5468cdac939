"""LLaVA-NeXT (anyres) layout at a pooled scale: unpadding, newline tokens and exact token counts.

Every 24x24 crop (the base image first, then the grid crops) is pooled to k x k, k = sqrt(scale); the
grid crops are stitched into a (rows*k, cols*k) map, the padding that the image processor added is
removed, and one ``image_newline`` embedding closes every row. At scale 576 this is what transformers'
``LlavaNextModel.pack_image_features`` does.

Two unpad rules (``config.m3_unpad_rule``, see :data:`UNPAD_RULES`) decide how many rows (or columns) of a
letterboxed grid hold content: ``"transformers"`` (the default, for llava-hf checkpoints) and ``"official"`` (the
official LLaVA-NeXT / M3 code, for checkpoints converted from it). They differ only where the content size lies
within float error of a whole number (e.g. 197 * (1 / 197) < 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

UNPAD_RULES = {
    "transformers": "transformers' unpad_image: the content size rounded to 7 decimals, then truncated",
    "official": "the official LLaVA-NeXT / M3 unpad_image: the content size truncated with int(), no rounding",
}


def check_unpad_rule(rule: str) -> str:
    """Return ``rule`` if it names one of :data:`UNPAD_RULES`, else raise naming them."""
    if rule not in UNPAD_RULES:
        raise ValueError(f"unknown m3_unpad_rule {rule!r}; expected one of {sorted(UNPAD_RULES)}")
    return rule


def unpadded_shape(
    height: int, width: int, original_height: int, original_width: int, rule: str = "transformers"
) -> tuple[int, int]:
    """Rows and columns of a letterboxed ``height`` x ``width`` grid left after removing the padding (``rule``: see
    :data:`UNPAD_RULES`).

    At coarse scales an extreme aspect ratio can leave 0 rows (or columns), under either rule: the image is then
    its base crop's tokens only, as in transformers and in the official code.
    """
    official = check_unpad_rule(rule) == "official"
    if original_width / original_height > width / height:
        content = original_height * (width / original_width)
        new_height = int(content) if official else int(round(content, 7))
        return height - 2 * ((height - new_height) // 2), width
    content = original_width * (height / original_height)
    new_width = int(content) if official else int(round(content, 7))
    return height, width - 2 * ((width - new_width) // 2)


def unpad_grid(grid: torch.Tensor, original_size: Sequence[int], rule: str = "transformers") -> torch.Tensor:
    """Crop a ``(D, H, W)`` feature map to its content (see :func:`unpadded_shape`)."""
    height, width = grid.shape[1:]
    rows, cols = unpadded_shape(height, width, int(original_size[0]), int(original_size[1]), rule)
    top, left = (height - rows) // 2, (width - cols) // 2
    return grid[:, top : top + rows, left : left + cols]


def grid_pinpoints(crop_size: int, max_rows: int, max_cols: int | None = None) -> list[list[int]]:
    """Every ``[height, width]`` resolution of 1..max_rows x 1..max_cols crops of ``crop_size`` px.

    E.g. ``grid_pinpoints(96, 3)`` lets the tiny models cut up to 3x3 crops (up to ``[288, 288]``) at inference, the
    paper's Table 5 setting (trained on up to 2x2 grids, evaluated on 3x3). Pass the same list to the model config
    and to the image processor.
    """
    max_cols = max_rows if max_cols is None else max_cols
    return [[rows * crop_size, cols * crop_size] for rows in range(1, max_rows + 1) for cols in range(1, max_cols + 1)]


def crop_grid_shape(image_size: Sequence[int], grid_pinpoints: list, crop_size: int) -> tuple[int, int]:
    """(rows, cols) of grid crops that the anyres processor cuts for an image of ``(height, width)``."""
    return get_anyres_image_grid_shape(list(image_size), grid_pinpoints, crop_size)


def anyres_num_image_tokens(
    image_size: Sequence[int], scale: int, grid_pinpoints: list, crop_size: int, unpad_rule: str = "transformers"
) -> int:
    """Image tokens LLaVA-NeXT feeds the LLM for one image of ``(height, width)`` at ``scale``.

    k*k base tokens + (rows*cols after unpadding by ``unpad_rule``) content tokens + one newline per content row.
    """
    side = math.isqrt(scale)
    crop_rows, crop_cols = crop_grid_shape(image_size, grid_pinpoints, crop_size)
    rows, cols = unpadded_shape(crop_rows * side, crop_cols * side, int(image_size[0]), int(image_size[1]), unpad_rule)
    return side * side + rows * (cols + 1)


def pack_anyres_features(
    crops: torch.Tensor,
    image_size: Sequence[int],
    grid_pinpoints: list,
    crop_size: int,
    image_newline: torch.Tensor | None,
    unpad_rule: str = "transformers",
) -> torch.Tensor:
    """Turn one image's pooled crops ``(1 + rows*cols, s, D)`` into its token sequence ``(n, D)``.

    The anyres processor always cuts at least one grid crop; under the official unpad rule the unpadded grid may
    still hold no row, and the sequence is then the base crop's tokens.
    """
    side = math.isqrt(crops.shape[1])
    base, grid = crops[0], crops[1:]
    crop_rows, crop_cols = crop_grid_shape(image_size, grid_pinpoints, crop_size)
    dim = crops.shape[-1]
    grid = grid.view(crop_rows, crop_cols, side, side, dim).permute(4, 0, 2, 1, 3)
    grid = unpad_grid(grid.reshape(dim, crop_rows * side, crop_cols * side), image_size, unpad_rule)
    if image_newline is not None:
        newline = image_newline[:, None, None].expand(*grid.shape[:-1], 1).to(grid)
        grid = torch.cat((grid, newline), dim=-1)
    return torch.cat((base, grid.flatten(1, 2).transpose(0, 1)), dim=0)
