"""Granularity generator version 5: two bright squares, and which is left or on top.

Every 96x96 image holds a uniform muted background and two small squares in two different bright colours, apart
both horizontally and vertically, plus light seeded noise. Families: ``background`` (the coarse one),
``left_color`` (the colour of the left square) and ``top_color``. Which square is left (top) is lost in any pooled
cell that holds both, so the needed scale follows the horizontal (vertical) gap and the sides, drawn
log-uniformly. Kept so that v5 splits (and the figures measured on them) stay reproducible:
``python -m m3.data.granularity --generator-version 5``. Version 6 (:mod:`.v6`) is the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from PIL import Image, ImageDraw

from .common import IMAGE_SIZE, StoredConfig, log_uniform_int

VERSION = "5"

BACKGROUND_PALETTE = {
    "gray": (128, 128, 128),
    "brown": (120, 70, 30),
    "navy": (20, 30, 90),
    "olive": (110, 110, 30),
    "purple": (100, 40, 120),
    "teal": (20, 110, 110),
}
SQUARE_PALETTE = {
    "red": (230, 30, 30),
    "green": (40, 200, 40),
    "blue": (40, 90, 255),
    "yellow": (240, 220, 30),
}
PALETTE = {**BACKGROUND_PALETTE, **SQUARE_PALETTE}
BACKGROUND_COLORS = tuple(BACKGROUND_PALETTE)
SQUARE_COLORS = tuple(SQUARE_PALETTE)

FAMILIES = ("background", "left_color", "top_color")
QUESTIONS = {
    "background": "what color is the background ?",
    "left_color": "what color is the left square ?",
    "top_color": "what color is the top square ?",
}
ANSWERS: dict[str, tuple[str, ...]] = {
    "background": BACKGROUND_COLORS,
    "left_color": SQUARE_COLORS,
    "top_color": SQUARE_COLORS,
}
FAMILY_ATTRIBUTE = {"background": "background", "left_color": "left_color", "top_color": "top_color"}
# the drawn attributes that set how many tokens a family's question needs (what a router may bucket on)
DIFFICULTY_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "background": ("min_side",),
    "left_color": ("gap_x", "min_side"),
    "top_color": ("gap_y", "min_side"),
}
VOCABULARY = tuple(sorted({w for f in FAMILIES for w in (*QUESTIONS[f].split(), *ANSWERS[f])}))


@dataclass(frozen=True)
class GranularityConfigV5(StoredConfig):
    """The image distribution of a version-5 split. The defaults are the training distribution; shifted splits
    change some.

    Sides and gaps are drawn log-uniformly between their bounds (inclusive, in px): each doubling is equally
    likely, so every pooled scale sees pairs it separates and pairs it does not.
    """

    side_min: int = field(default=6, metadata={"help": "smallest side of a square (px)"})
    side_max: int = field(default=16, metadata={"help": "largest side of a square (px)"})
    gap_min: int = field(default=2, metadata={"help": "fewest free px between the squares, along each axis"})
    gap_max: int = field(default=60, metadata={"help": "most free px between the squares, along each axis"})
    noise: int = field(default=8, metadata={"help": "per-pixel, per-channel uniform noise in [-noise, noise]"})

    version: ClassVar[str] = VERSION

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.side_min <= self.side_max <= 32:
            problems.append("need 1 <= side_min <= side_max <= 32")
        if not 1 <= self.gap_min <= self.gap_max <= IMAGE_SIZE - 2 * self.side_min:
            problems.append(f"need 1 <= gap_min <= gap_max <= {IMAGE_SIZE} - 2 * side_min (both squares fit)")
        if not 0 <= self.noise <= 64:
            problems.append("need 0 <= noise <= 64")
        self.refuse(problems)


DEFAULT_CONFIG = GranularityConfigV5()
# The documented shifted split that routing is checked under: smaller squares, closer together (``--shifted``).
SHIFTED_CONFIG = GranularityConfigV5(side_max=8, gap_max=12)


def draw_sample(rng: np.random.Generator, config: GranularityConfigV5 = DEFAULT_CONFIG) -> tuple[Image.Image, dict]:
    """Draw one image and its attributes. Boxes are inclusive pixel boxes ``(x0, y0, x1, y1)``.

    The answers (background, the two colours, which square is on top) are drawn first and never redrawn, so they
    stay uniform; sides and gaps are redrawn until both squares fit in the image with the drawn gaps.
    """
    background = str(BACKGROUND_COLORS[rng.integers(len(BACKGROUND_COLORS))])
    first, second = rng.choice(len(SQUARE_COLORS), size=2, replace=False)
    left_color, right_color = SQUARE_COLORS[first], SQUARE_COLORS[second]
    left_on_top = bool(rng.integers(2))
    for _ in range(10_000):
        left_side = log_uniform_int(rng, config.side_min, config.side_max)
        right_side = log_uniform_int(rng, config.side_min, config.side_max)
        gap_x = log_uniform_int(rng, config.gap_min, config.gap_max)
        gap_y = log_uniform_int(rng, config.gap_min, config.gap_max)
        width, height = left_side + gap_x + right_side, left_side + gap_y + right_side
        if width <= IMAGE_SIZE and height <= IMAGE_SIZE:
            break
    else:
        raise RuntimeError(f"no two squares fit with the gaps of {config}")
    x = int(rng.integers(IMAGE_SIZE - width + 1))
    y = int(rng.integers(IMAGE_SIZE - height + 1))
    upper_side = left_side if left_on_top else right_side
    left_y, right_y = (y, y + upper_side + gap_y) if left_on_top else (y + upper_side + gap_y, y)
    left_box = (x, left_y, x + left_side - 1, left_y + left_side - 1)
    right_x = x + left_side + gap_x
    right_box = (right_x, right_y, right_x + right_side - 1, right_y + right_side - 1)

    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), PALETTE[background])
    draw = ImageDraw.Draw(image)
    draw.rectangle(left_box, fill=PALETTE[left_color])
    draw.rectangle(right_box, fill=PALETTE[right_color])
    noise = rng.integers(-config.noise, config.noise + 1, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)

    attributes = {
        "background": background,
        "left_color": left_color,
        "right_color": right_color,
        "top_color": left_color if left_on_top else right_color,
        "left_side": left_side,
        "right_side": right_side,
        "min_side": min(left_side, right_side),
        "gap_x": gap_x,
        "gap_y": gap_y,
        "left_box": list(left_box),
        "right_box": list(right_box),
    }
    return Image.fromarray(pixels), attributes
