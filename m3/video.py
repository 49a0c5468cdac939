"""Video frames as ONE image: the image-grid ("collage") protocol of IG-VLM, which the M3 paper uses for video.

IG-VLM (Kim et al., 2024, "An Image Grid Can Be Worth a Video"; code: imagegridworth/IG-VLM) samples 6 frames and
tiles them into one image that any image model answers. Its code puts ``round(sqrt(n))`` frames in every row, so
6 frames give 3 rows of 2 frames: the "2x3" grid read as width x height (columns x rows), near square for
landscape frames. Other counts follow the same rule: 1 -> 1x1, 2 -> 2 rows x 1, 3 and 4 -> 2x2, 5 and 6 -> 3x2,
7 and 8 -> 3x3 ... (rows x cols); pass ``rows``/``cols`` for any other layout (e.g. ``rows=2, cols=3``).

A collage is just one image, so it is answered at a scale like any image, with either family
(:func:`answer_collage`): LLaVA-1.5 resizes it to one 24x24 grid (``scale`` tokens; the collage is padded to a
square first, or its image processor would crop the outer frames), LLaVA-NeXT cuts it into anyres crops
(``m3.image_token_counts(config, scale, [(height, width)])`` tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

from .images import to_rgb
from .inference import ScaleOutput, answer_images

WHITE = (255, 255, 255)


def collage_shape(num_frames: int, rows: int | None = None, cols: int | None = None) -> tuple[int, int]:
    """``(rows, cols)`` of the grid: IG-VLM's ``cols = round(sqrt(n))``, ``rows = ceil(n / cols)``; a given ``rows``
    or ``cols`` fixes that side and the other is the fewest that hold every frame."""
    if num_frames < 1:
        raise ValueError("a collage needs at least one frame")
    if rows is None and cols is None:
        cols = max(round(math.sqrt(num_frames)), 1)
    if rows is None:
        rows = math.ceil(num_frames / cols)
    if cols is None:
        cols = math.ceil(num_frames / rows)
    if rows < 1 or cols < 1 or rows * cols < num_frames:
        raise ValueError(f"a {rows} x {cols} grid cannot hold {num_frames} frames")
    return rows, cols


def collage(
    frames: Sequence[Image.Image],
    rows: int | None = None,
    cols: int | None = None,
    cell_size: tuple[int, int] | None = None,
    keep_aspect: bool = False,
    background: tuple[int, int, int] = WHITE,
    square: bool = False,
) -> Image.Image:
    """Tile ``frames`` row-major (frame 0 top left, then left to right, top to bottom) into one RGB image.

    Every cell is ``cell_size`` = (height, width), by default the smallest frame height and the smallest frame width
    (as IG-VLM). Frames are stretched to the cell (IG-VLM), or with ``keep_aspect`` scaled to fit and centred on
    ``background``. Cells left over when the frames do not fill the grid are ``background`` (IG-VLM: white).
    ``square`` centres the grid on a square ``background`` canvas (LLaVA-1.5's "pad" aspect mode): LLaVA-1.5's image
    processor crops the centre square of an oblong image, which would cut the outer frames away.
    """
    frames = [to_rgb(frame, f"frame {index}") for index, frame in enumerate(frames)]
    rows, cols = collage_shape(len(frames), rows, cols)
    if cell_size is None:
        cell_size = (min(frame.height for frame in frames), min(frame.width for frame in frames))
    height, width = cell_size
    canvas = Image.new("RGB", (cols * width, rows * height), background)
    for index, frame in enumerate(frames):
        top, left = (index // cols) * height, (index % cols) * width
        if keep_aspect:
            ratio = min(width / frame.width, height / frame.height)
            fit_width, fit_height = max(round(frame.width * ratio), 1), max(round(frame.height * ratio), 1)
            offset = (left + (width - fit_width) // 2, top + (height - fit_height) // 2)
            canvas.paste(frame.resize((fit_width, fit_height), Image.BILINEAR), offset)
        else:
            canvas.paste(frame.resize((width, height), Image.BILINEAR), (left, top))
    if square and canvas.width != canvas.height:
        side = max(canvas.size)
        padded = Image.new("RGB", (side, side), background)
        padded.paste(canvas, ((side - canvas.width) // 2, (side - canvas.height) // 2))
        return padded
    return canvas


def is_square_only(config) -> bool:
    """Whether a model reads images through one square crop (LLaVA-1.5), not anyres tiles (LLaVA-NeXT)."""
    return getattr(config, "image_grid_pinpoints", None) is None


def answer_collage(
    model,
    processor,
    frames: Sequence[Image.Image],
    question: str,
    scale: int,
    max_new_tokens: int = 32,
    collage_kwargs: dict | None = None,
    **generate_kwargs,
) -> ScaleOutput:
    """Answer ``question`` about ``frames`` tiled into one :func:`collage` (``collage_kwargs``) at ``scale``: one
    image, one placeholder, either family. LLaVA-1.5 gets a square collage unless ``collage_kwargs`` says otherwise
    (its image processor would crop an oblong one)."""
    image = collage(frames, **{"square": is_square_only(model.config), **(collage_kwargs or {})})
    return answer_images(model, processor, [image], question, scale, max_new_tokens, **generate_kwargs)
