"""Nested average pooling of projected visual tokens (the core idea of M3).

The official code pools AFTER the multimodal projector with ``avg_pool2d(kernel=k, stride=k)`` and
``k = int(sqrt(N / s))`` on the square token grid. Everything here is a pure function on tensors.
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
