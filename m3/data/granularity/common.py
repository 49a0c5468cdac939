"""What every granularity generator version shares: the image size and the log-uniform draw."""

from __future__ import annotations

import math

import numpy as np

IMAGE_SIZE = 96  # the tiny model's 24x24 grid of 4 px patches


def log_uniform_int(rng: np.random.Generator, low: int, high: int) -> int:
    """An integer in ``[low, high]`` whose log is about uniform (each integer covers its +-0.5 interval)."""
    value = math.exp(rng.uniform(math.log(low - 0.5), math.log(high + 0.5)))
    return int(min(high, max(low, round(value))))
