"""Granularity generator version 6 (the default): which colour sits in the white frame, and in the black one.

Every 96x96 image holds a uniform muted background and a jittered lattice of small squares in bright colours, plus
light seeded noise. One square carries a white frame (its 1 px border), another a black one. Families:

- ``background``  : the background colour (the coarse family: one pooled token suffices);
- ``white_frame`` : the colour inside the white frame;
- ``black_frame`` : the colour inside the black frame.

A frame and the colour it holds share pixels, and with 4 px patches they share tokens, so 576 tokens answer every
image: squares are at least one patch apart. A pooled token is the mean of a 96/sqrt(s) px cell, and the tiny
model's projector is linear, so a pooled token keeps which colours lie in its cell but not which colour lies with
which frame: once a cell also holds a neighbouring square, the frame's colour is ambiguous. The scale a question
needs is therefore set by the free gap between the framed square and its nearest neighbour, which follows the
lattice pitch. The gap is drawn log-uniformly (4-48 px by default), so every pooled scale from 9 to 576 tokens is
the one some images need; a busy image (many squares, close together) needs fine cells, a sparse one reads from 9
or 36 tokens, as a cluttered photo needs more tokens than a plain one.

The palettes (muted backgrounds, bright squares, the two frame colours) do not overlap, so what a patch shows is
a property of that patch alone, as with a pretrained CLIP's features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from PIL import Image, ImageDraw

from .common import IMAGE_SIZE, StoredConfig, log_uniform_int

VERSION = "6"
PATCH = 4  # px per patch of the tiny model: squares at least this far apart never share a token at 576

BACKGROUND_PALETTE = {
    "gray": (128, 128, 128),
    "brown": (150, 80, 40),
    "olive": (100, 120, 30),
    "purple": (110, 50, 130),
    "teal": (30, 115, 115),
    "slate": (75, 95, 155),
}
OBJECT_PALETTE = {
    "red": (230, 30, 30),
    "green": (40, 200, 40),
    "blue": (40, 90, 255),
    "yellow": (240, 220, 30),
    "magenta": (220, 40, 220),
    "cyan": (30, 220, 230),
}
FRAME_PALETTE = {"white": (255, 255, 255), "black": (0, 0, 0)}
PALETTE = {**BACKGROUND_PALETTE, **OBJECT_PALETTE, **FRAME_PALETTE}
BACKGROUND_COLORS = tuple(BACKGROUND_PALETTE)
OBJECT_COLORS = tuple(OBJECT_PALETTE)
FRAME_COLORS = tuple(FRAME_PALETTE)

FAMILIES = ("background", "white_frame", "black_frame")
QUESTIONS = {
    "background": "what color is the background ?",
    "white_frame": "what color is in the white frame ?",
    "black_frame": "what color is in the black frame ?",
}
ANSWERS: dict[str, tuple[str, ...]] = {
    "background": BACKGROUND_COLORS,
    "white_frame": OBJECT_COLORS,
    "black_frame": OBJECT_COLORS,
}
FAMILY_ATTRIBUTE = {"background": "background", "white_frame": "white_frame_color", "black_frame": "black_frame_color"}
# the drawn attributes that set how many tokens a family's question needs (what a router may bucket on)
DIFFICULTY_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "background": ("object_fraction",),
    "white_frame": ("white_frame_gap", "white_frame_side"),
    "black_frame": ("black_frame_gap", "black_frame_side"),
}
VOCABULARY = tuple(sorted({w for f in FAMILIES for w in (*QUESTIONS[f].split(), *ANSWERS[f])}))


@dataclass(frozen=True)
class GranularityConfig(StoredConfig):
    """The image distribution of a split. The defaults are the training distribution; shifted splits change some.

    Sides and gaps are drawn log-uniformly between their bounds (inclusive, in px): each doubling is equally likely,
    so every pooled scale sees images it resolves and images it does not."""

    side_min: int = field(default=5, metadata={"help": "smallest side of a square, frame included (px)"})
    side_max: int = field(default=11, metadata={"help": "largest side of a square, frame included (px)"})
    gap_min: int = field(default=4, metadata={"help": "fewest free px between neighbouring squares (>= one patch)"})
    gap_max: int = field(default=48, metadata={"help": "most free px between neighbouring squares"})
    noise: int = field(default=8, metadata={"help": "per-pixel, per-channel uniform noise in [-noise, noise]"})
    frame_width: int = field(default=1, metadata={"help": "width of the white and the black frame (px)"})

    version: ClassVar[str] = VERSION

    def __post_init__(self) -> None:
        problems = []
        if not 2 * self.frame_width + 2 <= self.side_min <= self.side_max <= 16:
            problems.append("need 2 * frame_width + 2 <= side_min <= side_max <= 16 (2 px inside a frame)")
        if not 1 <= self.frame_width <= 3:
            problems.append("need 1 <= frame_width <= 3")
        if not PATCH <= self.gap_min <= self.gap_max <= IMAGE_SIZE - 2 * self.side_max:
            problems.append(
                f"need {PATCH} <= gap_min <= gap_max <= {IMAGE_SIZE} - 2 * side_max (two squares per row, never "
                "sharing a patch)"
            )
        if not 0 <= self.noise <= 64:
            problems.append("need 0 <= noise <= 64")
        self.refuse(problems)


DEFAULT_CONFIG = GranularityConfig()
# The documented shifted split that routing is checked under: smaller squares, packed closer, noisier (``--shifted``).
SHIFTED_CONFIG = GranularityConfig(side_min=4, side_max=7, gap_max=12, noise=16)


def free_gap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    """The free px between two inclusive boxes along the axis that separates them most: a square cell of that
    side or smaller never holds both."""
    gap_x = max(b[0] - a[2] - 1, a[0] - b[2] - 1, 0)
    gap_y = max(b[1] - a[3] - 1, a[1] - b[3] - 1, 0)
    return max(gap_x, gap_y)


def draw_sample(rng: np.random.Generator, config: GranularityConfig = DEFAULT_CONFIG) -> tuple[Image.Image, dict]:
    """Draw one image and its attributes. Boxes are inclusive pixel boxes ``(x0, y0, x1, y1)``.

    The lattice gap sets the pitch (``side_max + gap``) of a square lattice placed at a random offset; each slot holds
    one square of a drawn side, jittered inside its slot, so neighbours are at least ``gap`` px apart. Two distinct
    squares get the white and the black frame."""
    background = str(BACKGROUND_COLORS[rng.integers(len(BACKGROUND_COLORS))])
    gap = log_uniform_int(rng, config.gap_min, config.gap_max)
    pitch = config.side_max + gap
    per_row = (IMAGE_SIZE - config.side_max) // pitch + 1
    margin = IMAGE_SIZE - config.side_max - (per_row - 1) * pitch
    x_offset, y_offset = (int(v) for v in rng.integers(margin + 1, size=2))
    boxes, colours = [], []
    for row in range(per_row):
        for column in range(per_row):
            side = log_uniform_int(rng, config.side_min, config.side_max)
            jitter_x, jitter_y = (int(v) for v in rng.integers(config.side_max - side + 1, size=2))
            x, y = x_offset + column * pitch + jitter_x, y_offset + row * pitch + jitter_y
            boxes.append((x, y, x + side - 1, y + side - 1))
            colours.append(str(OBJECT_COLORS[rng.integers(len(OBJECT_COLORS))]))
    white, black = (int(i) for i in rng.choice(len(boxes), size=2, replace=False))

    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), PALETTE[background])
    draw = ImageDraw.Draw(image)
    for box, colour in zip(boxes, colours):
        draw.rectangle(box, fill=PALETTE[colour])
    draw.rectangle(boxes[white], outline=PALETTE["white"], width=config.frame_width)
    draw.rectangle(boxes[black], outline=PALETTE["black"], width=config.frame_width)
    noise = rng.integers(-config.noise, config.noise + 1, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)

    def nearest_gap(index: int) -> int:
        return min(free_gap(boxes[index], box) for other, box in enumerate(boxes) if other != index)

    area = sum((box[2] - box[0] + 1) ** 2 for box in boxes)
    attributes = {
        "background": background,
        "white_frame_color": colours[white],
        "black_frame_color": colours[black],
        "gap": gap,
        "num_objects": len(boxes),
        "object_fraction": round(area / IMAGE_SIZE**2, 4),
        "white_frame_side": boxes[white][2] - boxes[white][0] + 1,
        "black_frame_side": boxes[black][2] - boxes[black][0] + 1,
        "white_frame_gap": nearest_gap(white),
        "black_frame_gap": nearest_gap(black),
        "white_frame_box": list(boxes[white]),
        "black_frame_box": list(boxes[black]),
    }
    return Image.fromarray(pixels), attributes
