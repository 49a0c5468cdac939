"""Granularity generator version 7 (the default): v6's questions on images whose drawing decides the scale.

Version 6 drew squares of 5-11 px on a lattice: 36 tokens answered most frame questions, and which ones failed was
not set by anything it drew, so even a router that knew each image's attributes gained little over one that knew
only the question. Version 7 keeps v6's families, questions, answers and palettes (so v6's vocabulary and tokenizer)
and widens what the image varies:

- squares of 5 to 40 px, drawn log-uniformly (every doubling equally likely), framed ones and distractors alike, so
  size never tells which square is framed;
- frames as thick as a fixed share of the side (``side / frame_divisor``, at least 1 px): a framed square looks the
  same at every size, so a big one reads from coarse cells and a small one needs fine cells;
- clutter: a drawn number of unframed distractor squares (0-12 by default), placed at random, so the free gap to a
  framed square's nearest neighbour ranges from one patch to most of the image.

A pooled token is the mean of one cell of ``96 / sqrt(s)`` px, and the tiny model's projector is linear, so a token
keeps which colours lie in its cell but not which colour lies with which frame: the colour inside a frame is read
at scale ``s`` when some cell holds a large enough part of the framed square and no other square. Every record
stores that quantity (``{white,black}_frame_cover_{9,36,144}``: the largest share of one such clean cell the framed
square covers, 0 when every cell it touches holds another square) beside the side and the gap, so a router that
knows the drawing can be measured. Squares are at least ``gap_min`` >= one patch apart, so 576 tokens separate
every pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from PIL import Image, ImageDraw

from .common import IMAGE_SIZE, StoredConfig, log_uniform_int
from .v6 import (
    ANSWERS,
    BACKGROUND_COLORS,
    FAMILIES,
    FAMILY_ATTRIBUTE,
    FRAME_COLORS,
    OBJECT_COLORS,
    PALETTE,
    QUESTIONS,
    VOCABULARY,
    free_gap,
)

VERSION = "7"
PATCH = 4  # px per patch of the tiny model: squares at least this far apart never share a token at 576
COVER_SCALES = (9, 36, 144)  # the pooled scales whose clean cover is recorded (576 always separates squares)
PLACEMENT_TRIES = 60  # random positions tried for each distractor before it is left out (the image is full)

# the drawn attributes that set how many tokens a family's question needs (what a router that knows them uses)
DIFFICULTY_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "background": ("object_fraction", "num_objects"),
    **{
        f"{frame}_frame": (
            f"{frame}_frame_side", f"{frame}_frame_gap", *(f"{frame}_frame_cover_{s}" for s in COVER_SCALES)
        )
        for frame in FRAME_COLORS
    },
}  # fmt: skip

__all__ = [
    "ANSWERS", "BACKGROUND_COLORS", "COVER_SCALES", "DEFAULT_CONFIG", "DIFFICULTY_ATTRIBUTES", "FAMILIES",
    "FAMILY_ATTRIBUTE", "FRAME_COLORS", "OBJECT_COLORS", "PALETTE", "QUESTIONS", "SHIFTED_CONFIG", "VERSION",
    "VOCABULARY", "GranularityConfig", "clean_cover", "draw_sample", "frame_width",
]  # fmt: skip


@dataclass(frozen=True)
class GranularityConfig(StoredConfig):
    """The image distribution of a version-7 split. The defaults are the training distribution; the shifted split
    changes some. Sides are drawn log-uniformly between their bounds (inclusive, in px)."""

    side_min: int = field(default=5, metadata={"help": "smallest side of a square, frame included (px)"})
    side_max: int = field(default=40, metadata={"help": "largest side of a square, frame included (px)"})
    distractors_min: int = field(default=0, metadata={"help": "fewest unframed squares drawn"})
    distractors_max: int = field(default=12, metadata={"help": "most unframed squares drawn (fewer when full)"})
    gap_min: int = field(default=4, metadata={"help": "fewest free px between two squares (>= one patch)"})
    noise: int = field(default=8, metadata={"help": "per-pixel, per-channel uniform noise in [-noise, noise]"})
    frame_divisor: int = field(default=8, metadata={"help": "a frame is side / frame_divisor px wide (>= 1 px)"})

    version: ClassVar[str] = VERSION

    def __post_init__(self) -> None:
        problems = []
        if not 5 <= self.side_min <= self.side_max <= 40:
            problems.append("need 5 <= side_min <= side_max <= 40 (two framed squares fit, 1 px of colour inside)")
        if not 0 <= self.distractors_min <= self.distractors_max <= 24:
            problems.append("need 0 <= distractors_min <= distractors_max <= 24")
        if not PATCH <= self.gap_min <= 12:
            problems.append(f"need {PATCH} <= gap_min <= 12 (squares never share a patch; two of 40 px still fit)")
        if not 0 <= self.noise <= 64:
            problems.append("need 0 <= noise <= 64")
        if not 4 <= self.frame_divisor <= 16:
            problems.append("need 4 <= frame_divisor <= 16")
        self.refuse(problems)


DEFAULT_CONFIG = GranularityConfig()
# The documented shifted split that routing is checked under: smaller squares, more clutter, noisier (``--shifted``).
SHIFTED_CONFIG = GranularityConfig(side_max=16, distractors_min=6, distractors_max=18, noise=16)


def frame_width(side: int, divisor: int) -> int:
    """Frame width of a square of ``side`` px: ``side / divisor`` rounded, at least 1 px and leaving >= 1 px inside."""
    return max(1, min(round(side / divisor), (side - 1) // 2))


def _overlap(box: tuple[int, int, int, int], cell: tuple[int, int, int, int]) -> int:
    width = min(box[2], cell[2]) - max(box[0], cell[0]) + 1
    height = min(box[3], cell[3]) - max(box[1], cell[1]) + 1
    return max(width, 0) * max(height, 0)


def clean_cover(boxes: list[tuple[int, int, int, int]], index: int, scale: int) -> float:
    """The largest share of one pooled cell at ``scale`` tokens that square ``index`` covers, among the cells it
    touches that hold no pixel of another square (0.0 when each of them holds one): how much of a clean token the
    square fills, i.e. how readable its colour is at that scale."""
    cell = IMAGE_SIZE // math.isqrt(scale)
    box, best = boxes[index], 0
    for row in range(box[1] // cell, box[3] // cell + 1):
        for column in range(box[0] // cell, box[2] // cell + 1):
            area = (column * cell, row * cell, column * cell + cell - 1, row * cell + cell - 1)
            if not any(_overlap(other, area) for j, other in enumerate(boxes) if j != index):
                best = max(best, _overlap(box, area))
    return round(best / cell**2, 4)


def _place(rng: np.random.Generator, side: int, boxes: list, gap_min: int, tries: int) -> bool:
    """Put a square of ``side`` px at a random position at least ``gap_min`` px from every box; False if none of
    ``tries`` positions is free."""
    for _ in range(tries):
        x, y = (int(v) for v in rng.integers(IMAGE_SIZE - side + 1, size=2))
        box = (x, y, x + side - 1, y + side - 1)
        if all(free_gap(box, other) >= gap_min for other in boxes):
            boxes.append(box)
            return True
    return False


def draw_sample(rng: np.random.Generator, config: GranularityConfig = DEFAULT_CONFIG) -> tuple[Image.Image, dict]:
    """Draw one image and its attributes. Boxes are inclusive pixel boxes ``(x0, y0, x1, y1)``.

    The white- and the black-framed squares are placed first (anywhere, apart by at least ``gap_min``), then the
    drawn number of distractors at random free positions (each left out after :data:`PLACEMENT_TRIES` misses)."""
    background = str(BACKGROUND_COLORS[rng.integers(len(BACKGROUND_COLORS))])
    boxes: list[tuple[int, int, int, int]] = []
    while len(boxes) < 2:  # two squares of at most 40 px always fit: retry the pair until both are placed
        boxes.clear()
        for _ in range(2):
            _place(rng, log_uniform_int(rng, config.side_min, config.side_max), boxes, config.gap_min, PLACEMENT_TRIES)
    wanted = int(rng.integers(config.distractors_min, config.distractors_max + 1))
    for _ in range(wanted):
        _place(rng, log_uniform_int(rng, config.side_min, config.side_max), boxes, config.gap_min, PLACEMENT_TRIES)
    colours = [str(OBJECT_COLORS[i]) for i in rng.integers(len(OBJECT_COLORS), size=len(boxes))]

    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), PALETTE[background])
    draw = ImageDraw.Draw(image)
    for box, colour in zip(boxes, colours):
        draw.rectangle(box, fill=PALETTE[colour])
    for index, frame in enumerate(FRAME_COLORS):  # boxes[0] is white-framed, boxes[1] black-framed
        width = frame_width(boxes[index][2] - boxes[index][0] + 1, config.frame_divisor)
        draw.rectangle(boxes[index], outline=PALETTE[frame], width=width)
    noise = rng.integers(-config.noise, config.noise + 1, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)

    area = sum((box[2] - box[0] + 1) ** 2 for box in boxes)
    attributes = {
        "background": background,
        "num_objects": len(boxes),
        "distractors_drawn": wanted,
        "object_fraction": round(area / IMAGE_SIZE**2, 4),
    }
    for index, frame in enumerate(FRAME_COLORS):
        box = boxes[index]
        attributes[f"{frame}_frame_color"] = colours[index]
        attributes[f"{frame}_frame_side"] = box[2] - box[0] + 1
        attributes[f"{frame}_frame_gap"] = min(free_gap(box, other) for j, other in enumerate(boxes) if j != index)
        for scale in COVER_SCALES:
            attributes[f"{frame}_frame_cover_{scale}"] = clean_cover(boxes, index, scale)
        attributes[f"{frame}_frame_box"] = list(box)
    return Image.fromarray(pixels), attributes
