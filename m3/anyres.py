"""LLaVA-NeXT (anyres) layout at a pooled scale: unpadding, newline tokens and exact token counts.

Every 24x24 crop (the base image first, then the grid crops) is pooled to k x k, k = sqrt(scale); the
grid crops are stitched into a (rows*k, cols*k) map, the padding that the image processor added is
removed, and one ``image_newline`` embedding closes every row. At scale 576 this is exactly what
transformers' ``LlavaNextModel.pack_image_features`` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape


def unpadded_shape(height: int, width: int, original_height: int, original_width: int) -> tuple[int, int]:
    """Rows and columns left after removing the letterbox padding, as transformers' ``unpad_image`` does.

    At coarse scales an extreme aspect ratio can round the content to 0 rows (or columns); we keep the
    middle one instead so every image keeps at least one token row.
    """
    if original_width / original_height > width / height:
        new_height = int(round(original_height * (width / original_width), 7))
        padding = (height - new_height) // 2
        return max(height - 2 * padding, 1), width
    new_width = int(round(original_width * (height / original_height), 7))
    padding = (width - new_width) // 2
    return height, max(width - 2 * padding, 1)


def unpad_grid(grid: torch.Tensor, original_size: Sequence[int]) -> torch.Tensor:
    """Crop a ``(D, H, W)`` feature map to its content (see :func:`unpadded_shape`)."""
    height, width = grid.shape[1:]
    rows, cols = unpadded_shape(height, width, int(original_size[0]), int(original_size[1]))
    top, left = min((height - rows) // 2, height - 1), min((width - cols) // 2, width - 1)
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


def anyres_num_image_tokens(image_size: Sequence[int], scale: int, grid_pinpoints: list, crop_size: int) -> int:
    """Image tokens LLaVA-NeXT feeds the LLM for one image of ``(height, width)`` at ``scale``.

    k*k base tokens + (rows*cols after unpadding) content tokens + one newline per content row.
    """
    side = math.isqrt(scale)
    crop_rows, crop_cols = crop_grid_shape(image_size, grid_pinpoints, crop_size)
    rows, cols = unpadded_shape(crop_rows * side, crop_cols * side, int(image_size[0]), int(image_size[1]))
    return side * side + rows * (cols + 1)


def pack_anyres_features(
    crops: torch.Tensor,
    image_size: Sequence[int],
    grid_pinpoints: list,
    crop_size: int,
    image_newline: torch.Tensor | None,
) -> torch.Tensor:
    """Turn one image's pooled crops ``(1 + rows*cols, s, D)`` into its token sequence ``(n, D)``.

    The anyres processor always cuts at least one grid crop, so there is no base-only case.
    """
    side = math.isqrt(crops.shape[1])
    base, grid = crops[0], crops[1:]
    crop_rows, crop_cols = crop_grid_shape(image_size, grid_pinpoints, crop_size)
    dim = crops.shape[-1]
    grid = grid.view(crop_rows, crop_cols, side, side, dim).permute(4, 0, 2, 1, 3)
    grid = unpad_grid(grid.reshape(dim, crop_rows * side, crop_cols * side), image_size)
    if image_newline is not None:
        newline = image_newline[:, None, None].expand(*grid.shape[:-1], 1).to(grid)
        grid = torch.cat((grid, newline), dim=-1)
    return torch.cat((base, grid.flatten(1, 2).transpose(0, 1)), dim=0)
