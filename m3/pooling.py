"""Nested average pooling of projected visual tokens (the core idea of M3), and the paper's alternatives.

The official code pools AFTER the multimodal projector with ``avg_pool2d(kernel=k, stride=k)`` and
``k = int(sqrt(N / s))`` on the square token grid. :func:`select_tokens` also offers the two training-free
selections the paper compares with (Fig. 5, Tables 4 and 6): sequential and spatial sampling. Everything here
is a pure function on tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def grid_side(num_tokens: int) -> int:
    """Side length of a square token grid, or ``ValueError`` if ``num_tokens`` is not a square."""
    side = math.isqrt(num_tokens)
    if num_tokens <= 0 or side * side != num_tokens:
        raise ValueError(f"visual tokens must form a square grid, got {num_tokens} tokens (not a perfect square)")
    return side


def valid_scales(num_tokens: int) -> list[int]:
    """Every scale that average pooling with kernel = stride can reach exactly from an N-token grid.

    A scale s is reachable when sqrt(s) is an integer that divides the grid side; e.g. 24x24 gives
    1, 4, 9, 16, 36, 64, 144, 576 and 27x27 gives 1, 9, 81, 729.
    """
    side = grid_side(num_tokens)
    return [d * d for d in range(1, side + 1) if side % d == 0]


def nested_scales(num_tokens: int) -> list[int]:
    """The default nested scale chain of a grid, finest last.

    Divides the side by its smallest prime factor until it reaches 1, which gives the paper's set
    for 24x24 (1, 9, 36, 144, 576) and 1, 9, 81, 729 for 27x27. Every scale pools exactly into the next
    coarser one, so the token sets are nested.
    """
    side = grid_side(num_tokens)
    sides = [side]
    while side > 1:
        factor = next(p for p in range(2, side + 1) if side % p == 0)
        side //= factor
        sides.append(side)
    return sorted(s * s for s in sides)


def check_scale(scale: int, num_tokens: int) -> int:
    """Return ``scale`` if pooling an N-token grid can reach it, else raise naming the valid scales."""
    valid = valid_scales(num_tokens)
    if not isinstance(scale, int) or isinstance(scale, bool) or scale not in valid:
        raise ValueError(f"unknown scale {scale!r} for a {num_tokens}-token grid; valid scales are {valid}")
    return scale


def parse_scales(text: str) -> list[int]:
    """``"1,9,36"`` -> ``[1, 9, 36]``, as every script's ``--scales`` reads it; each must be an integer, once."""
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if not parts or not all(part.isdigit() for part in parts):
        raise ValueError(f"scales must be comma-separated positive integers (e.g. 1,9,36,144,576), got {text!r}")
    return check_unique_scales([int(part) for part in parts])


def check_unique_scales(scales: Sequence[int]) -> list[int]:
    """``scales`` as a list; a scale named twice is refused (it would duplicate an oracle's columns or a loss)."""
    scales = list(scales)
    repeated = sorted({scale for scale in scales if scales.count(scale) > 1})
    if repeated:
        raise ValueError(f"scale {repeated[0]} is given more than once in {scales}; name each scale once")
    return scales


def check_scales(scales: Sequence[int], num_tokens: int) -> list[int]:
    """Sorted ``scales`` after checking that each is reachable on the grid (:func:`check_scale`) and named once."""
    return sorted(check_scale(scale, num_tokens) for scale in check_unique_scales(scales))


def pool_tokens(tokens: torch.Tensor, scale: int) -> torch.Tensor:
    """Average-pool ``(..., N, D)`` tokens laid out row-major on a square grid down to ``(..., scale, D)``.

    Identical to the official ``avg_pool2d(kernel_size=k, stride=k)`` with ``k = int(sqrt(N / s))``.
    """
    num_tokens, dim = tokens.shape[-2], tokens.shape[-1]
    check_scale(scale, num_tokens)
    if scale == num_tokens:
        return tokens
    side = grid_side(num_tokens)
    kernel = math.isqrt(num_tokens // scale)
    lead = tokens.shape[:-2]
    grid = tokens.reshape(-1, side, side, dim).permute(0, 3, 1, 2)
    pooled = F.avg_pool2d(grid, kernel_size=kernel, stride=kernel)
    return pooled.permute(0, 2, 3, 1).reshape(*lead, scale, dim)


def pool_to_scales(tokens: torch.Tensor, scales: Sequence[int]) -> dict[int, torch.Tensor]:
    """Pool the same tokens to several scales (the multi-scale training path runs the tower once)."""
    return {scale: pool_tokens(tokens, scale) for scale in scales}


TOKEN_SELECTIONS = ("avg_pool", "spatial", "sequential")


def check_token_selection(method: str) -> str:
    """Return ``method`` if it names a token selection, else raise naming the valid ones."""
    if method not in TOKEN_SELECTIONS:
        raise ValueError(f"unknown token selection {method!r}; expected one of {list(TOKEN_SELECTIONS)}")
    return method


def spatial_indices(num_tokens: int, scale: int) -> torch.Tensor:
    """Row-major indices of the regular k x k sub-grid (k = sqrt(scale)) that spatial sampling keeps.

    The grid is cut into k x k blocks of b x b tokens (b = side / k); each block gives its centre token,
    at row and column offset ``b // 2`` inside the block (for an even b, the lower-right of the four central
    tokens), i.e. grid rows/columns ``i * b + b // 2``. This is ``F.interpolate(mode="nearest-exact")``
    downsampling; offset 0 would favour the top-left corner (at 1 token: the image's corner patch).
    """
    check_scale(scale, num_tokens)
    side, k = grid_side(num_tokens), math.isqrt(scale)
    block = side // k
    lines = torch.arange(k) * block + block // 2
    return (lines[:, None] * side + lines[None, :]).reshape(-1)


def select_tokens(tokens: torch.Tensor, scale: int, method: str = "avg_pool") -> torch.Tensor:
    """Reduce ``(..., N, D)`` row-major grid tokens to ``(..., scale, D)`` by ``method``.

    ``avg_pool`` (M3): :func:`pool_tokens`. ``sequential`` (Fig. 5a): the first ``scale`` tokens in raster
    order (the top rows of the image). ``spatial`` (Fig. 5b): the centre token of every block of a regular
    k x k sub-grid (:func:`spatial_indices`). All three take the same scale set (:func:`valid_scales`).
    """
    check_token_selection(method)
    if method == "avg_pool":
        return pool_tokens(tokens, scale)
    num_tokens = tokens.shape[-2]
    check_scale(scale, num_tokens)
    if method == "sequential":
        return tokens[..., :scale, :]
    return tokens.index_select(-2, spatial_indices(num_tokens, scale).to(tokens.device))
