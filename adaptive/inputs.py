"""Checked user inputs of :class:`adaptive.AdaptiveM3`: images in any common form, and integers that must be
integers (a float budget or scale is refused, not rounded)."""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import numpy as np
from PIL import Image

from m3.images import not_a_file_error, open_rgb, to_rgb


def load_rgb(image) -> Image.Image:
    """A PIL RGB image from a path, a PIL image (any mode: :func:`m3.images.to_rgb`) or an ``(H, W, 3)`` / ``(H, W)``
    uint8 array; clear errors."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)) or 0 in image.shape:
            raise ValueError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"an image array must be uint8 (0-255), got {image.dtype}")
        return to_rgb(Image.fromarray(image.squeeze(2) if image.ndim == 3 and image.shape[2] == 1 else image))
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise not_a_file_error(path, f"image file {path}")
        return open_rgb(path)
    raise TypeError(f"image must be a path, a PIL image or a numpy array, got {type(image).__name__}")


def as_integer(value, what: str) -> int:
    """``value`` as an int; a float (even 576.0), a bool or a string is refused rather than silently converted."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)
