"""The one way an image (a file, or a PIL image of any mode) becomes the 8-bit RGB pixels the model sees.

PIL's ``convert("RGB")`` clips wide images to 0-255: a 16-bit grayscale PNG (mode ``I;16``, values up to 65535)
turns almost all white, and the model answers about a blank picture. :func:`to_rgb` scales them instead:

* 16-bit integer modes (``I;16``, ``I;16B``, ...) by their bit depth (65535 -> 255);
* 32-bit integer images (``I``) by the smallest bit depth holding their values (8 or 16: 16-bit files opened as
  ``I``), otherwise by their range (min -> 0, max -> 255);
* float images (``F``) as 0-1 when every value lies there, otherwise by their range; NaN or infinities are refused;
* images with transparency (``RGBA``, ``LA``, ``PA``, a palette or colour key with transparency) are composited on
  white, as transformers' ``convert_to_rgb`` does;
* every other mode (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ...) goes through PIL's own
  conversion; a mode PIL cannot convert is refused.

A refusal is :class:`BadImageError` naming the image (its file, record or dataset row), never a silent blank image.
A truncated file is refused whatever PIL's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES`` says (lmms-eval sets it
to True on import, which would let half a PNG through as a partly grey picture): pixels are always loaded strictly.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

WHITE = (255, 255, 255)


class BadImageError(OSError):
    """An image is missing, cannot be decoded, or holds pixels that have no RGB meaning; the message names it."""


_STRICT = threading.Lock()


@contextmanager
def _strict_loading() -> Iterator[None]:
    """Load pixels with PIL's ``LOAD_TRUNCATED_IMAGES`` off (a truncated file raises), restoring the caller's value.

    PIL reads that module global at load time and offers no per-image switch; the lock keeps two threads of ours from
    restoring each other's value. Another library's thread decoding at the same moment sees the strict setting."""
    with _STRICT:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _load(image: Image.Image) -> None:
    """Decode a lazily opened image now, strictly (:func:`_strict_loading`); an image in memory is left alone."""
    if isinstance(image, ImageFile.ImageFile) and getattr(image, "fp", None) is not None:
        with _strict_loading():
            image.load()


def _to_eight_bit(image: Image.Image, name: str) -> Image.Image:
    """A one-channel image of more than 8 bits (``I;16*``, ``I``, ``F``) as mode ``L``, scaled, never clipped."""
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise BadImageError(f"{name}: its {image.mode} pixels hold NaN or infinite values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16"):
        low, high = 0.0, 65535.0  # by bit depth: a dark 16-bit image stays dark
    elif image.mode == "I" and low >= 0 and high <= 65535:
        low, high = 0.0, 255.0 if high <= 255 else 65535.0  # the smallest bit depth (8 or 16) holding the values
    elif image.mode == "F" and low >= 0 and high <= 1:
        low, high = 0.0, 1.0
    if high <= low:  # one value outside those depths: taken as 8-bit
        low, high = 0.0, 255.0
    scaled = (values - low) / (high - low)
    return Image.fromarray(np.round(scaled * 255).clip(0, 255).astype(np.uint8), "L")


def to_rgb(image: Image.Image, name: str = "the image") -> Image.Image:
    """``image`` as 8-bit RGB by the rules of the module docstring; :class:`BadImageError` naming ``name``."""
    try:
        _load(image)  # a file opened but not yet decoded: strictly, whatever LOAD_TRUNCATED_IMAGES says
    except Exception as error:  # PIL: OSError "image file is truncated", SyntaxError for a broken chunk
        raise BadImageError(f"{name}: cannot decode it ({error})") from error
    if image.mode == "RGB" and not image.has_transparency_data:
        return image.convert("RGB")  # a loaded copy, independent of its file
    try:
        if image.mode.startswith("I") or image.mode == "F":
            image = _to_eight_bit(image, name)
        if image.has_transparency_data:
            background = Image.new("RGBA", image.size, (*WHITE, 255))
            return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
        return image.convert("RGB")
    except BadImageError:
        raise
    except (ValueError, OSError) as error:  # PIL: "conversion from X to RGB not supported", a truncated file
        raise BadImageError(f"{name}: cannot turn its mode {image.mode} pixels into RGB ({error})") from error


def open_rgb(path: str | os.PathLike, owner: str = "") -> Image.Image:
    """The image file at ``path`` as RGB (:func:`to_rgb`); :class:`BadImageError` naming the file (and ``owner``,
    e.g. ``"record 42"``) when it is missing, unreadable or of pixels without an RGB meaning."""
    return _decode_rgb(path, owner, reduced=False)


def check_image(path: str | os.PathLike, owner: str = "") -> None:
    """Raise :class:`BadImageError` (as :func:`open_rgb` words it) unless the file exists, decodes completely and
    converts to RGB.

    ``Image.verify`` is not enough (it does not decode a JPEG at all); a JPEG is decoded at 1/8 size instead,
    which still reads every byte of it, so a truncated file is caught at a fraction of a full decode's cost."""
    _decode_rgb(path, owner, reduced=True)


def not_a_file_error(path: str | os.PathLike, what: str) -> OSError:
    """The error for ``path`` that is not a readable regular file, worded by why (``what``: how to name it, e.g.
    ``"image file x.png of record 3"``): missing (``FileNotFoundError``), a folder (``IsADirectoryError``), a symbolic
    link that leads nowhere or loops, or another kind of file (a FIFO would block the reader until something writes
    to it). The one wording of every image path check (the image reader, ``AdaptiveM3``, the predictors' features,
    the oracle's data check)."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", str(path)):  # "https://..." (a Path shows it as "https:/...")
        return FileNotFoundError(f"{what} is a URL; images are read from files: download it first")
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as error:
        if path.is_symlink():
            loop = " (a loop)" if error.errno == errno.ELOOP else ""
            return FileNotFoundError(f"{what} is a symbolic link that leads nowhere{loop}")
        return FileNotFoundError(f"{what} does not exist")
    if stat.S_ISDIR(mode):
        return IsADirectoryError(f"{what} is a folder, not a file")
    if not stat.S_ISREG(mode):
        return OSError(f"{what} is not a regular file (a FIFO, socket or device)")
    return OSError(f"{what} cannot be read")


def _decode_rgb(path: str | os.PathLike, owner: str, reduced: bool) -> Image.Image:
    """The one reading path of :func:`open_rgb` and :func:`check_image` (``reduced``: JPEGs at 1/8 size)."""
    path = Path(path)
    where = f" of {owner}" if owner else ""
    if not path.is_file():
        raise BadImageError(str(not_a_file_error(path, f"image file {path}{where}")))
    try:
        with Image.open(path) as image:
            if reduced:
                image.draft("RGB", (1, 1))  # JPEG only: DCT scaling; other formats decode in full
            _load(image)
            return to_rgb(image, f"image file {path}{where}")
    except BadImageError:
        raise
    except Exception as error:  # re-raised with the file named
        raise BadImageError(f"cannot read image file {path}{where}: {error}") from error
