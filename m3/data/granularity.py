"""Granularity benchmark: procedural images where the image, not only the question, decides how many visual
tokens a question needs.

Every 96x96 image (the tiny model's 24x24 grid of 4 px patches) holds a uniform muted background and two
small squares in two different bright colours, apart both horizontally and vertically, plus light seeded noise.
Three question families ask about it:

- ``background`` : the background colour (the coarse family: one pooled token suffices);
- ``left_color`` : the colour of the left square;
- ``top_color``  : the colour of the top square.

A pooled token of s tokens is the mean of a 96/sqrt(s) px square, and the tiny model's projector is linear, so a
pooled token keeps every colour inside its square but not where inside it lies. When both squares fall in one
pooled cell (or in one column of cells, for ``left``; one row, for ``top``), the scale cannot tell which is
left or top; a finer scale separates them. The needed scale therefore follows the image: the horizontal gap
(``left``) or vertical gap (``top``) between the squares, and their sizes (a tiny square fades into its cell's
mean). Gaps and sides are drawn log-uniformly over wide ranges. :class:`GranularityConfig` holds every knob of
that distribution; its defaults are the training distribution, and other values draw shifted splits
(``python -m m3.data.granularity --help`` lists the flags). Each record stores the image's drawn
``attributes`` (sides, gaps, boxes) and each split's ``.meta.json`` its config.

The palettes (muted backgrounds, bright squares) do not overlap, so whether a token shows a square is a
property of that token alone, as with a pretrained CLIP's features. With one shared palette, finding an object
means comparing every token with the background, and a from-scratch tiny model stayed at chance on a position
family (measured; generator version 2).

Each image gives one record per family, in the LLaVA instruction format. Generation is deterministic in
``(seed, split, config)``: image ``i`` of a split is drawn from ``SeedSequence(seed, spawn_key=(crc32(split),
i))``, so splits never share a stream and a smaller split is a prefix of a larger one.

CLI: ``python -m m3.data.granularity --out DIR --split all`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..files import atomic_write, read_json, write_json_atomic
from ..metrics import majority_baseline

GENERATOR_VERSION = "5"
IMAGE_SIZE = 96
CELL_SIZE = 32

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
SPLITS = ("train", "validation", "test")
DEFAULT_NUM_IMAGES = {"train": 3000, "validation": 200, "test": 250}


@dataclass(frozen=True)
class GranularityConfig:
    """The image distribution of a split. The defaults are the training distribution; shifted splits change some.

    Sides and gaps are drawn log-uniformly between their bounds (inclusive, in px): each doubling is equally
    likely, so every pooled scale sees pairs it separates and pairs it does not.
    """

    side_min: int = field(default=6, metadata={"help": "smallest side of a square (px)"})
    side_max: int = field(default=16, metadata={"help": "largest side of a square (px)"})
    gap_min: int = field(default=2, metadata={"help": "fewest free px between the squares, along each axis"})
    gap_max: int = field(default=60, metadata={"help": "most free px between the squares, along each axis"})
    noise: int = field(default=8, metadata={"help": "per-pixel, per-channel uniform noise in [-noise, noise]"})

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.side_min <= self.side_max <= 32:
            problems.append("need 1 <= side_min <= side_max <= 32")
        if not 1 <= self.gap_min <= self.gap_max <= IMAGE_SIZE - 2 * self.side_min:
            problems.append(f"need 1 <= gap_min <= gap_max <= {IMAGE_SIZE} - 2 * side_min (both squares fit)")
        if not 0 <= self.noise <= 64:
            problems.append("need 0 <= noise <= 64")
        if problems:
            raise ValueError(f"invalid GranularityConfig {self.to_dict()}: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GranularityConfig:
        """The config a ``.meta.json`` stores; unknown keys are refused (they come from another version)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown GranularityConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


DEFAULT_CONFIG = GranularityConfig()
# The documented shifted split that routing is checked under: smaller squares, closer together (``--shifted``).
SHIFTED_CONFIG = GranularityConfig(side_max=8, gap_max=12)


def _log_uniform_int(rng: np.random.Generator, low: int, high: int) -> int:
    """An integer in ``[low, high]`` whose log is about uniform (each integer covers its +-0.5 interval)."""
    value = math.exp(rng.uniform(math.log(low - 0.5), math.log(high + 0.5)))
    return int(min(high, max(low, round(value))))


def draw_sample(rng: np.random.Generator, config: GranularityConfig = DEFAULT_CONFIG) -> tuple[Image.Image, dict]:
    """Draw one image and its attributes. Boxes are inclusive pixel boxes ``(x0, y0, x1, y1)``.

    The answers (background, the two colours, which square is on top) are drawn first and never redrawn, so they
    stay uniform; sides and gaps are redrawn until both squares fit in the image with the drawn gaps.
    """
    background = str(BACKGROUND_COLORS[rng.integers(len(BACKGROUND_COLORS))])
    first, second = rng.choice(len(SQUARE_COLORS), size=2, replace=False)
    left_color, right_color = SQUARE_COLORS[first], SQUARE_COLORS[second]
    left_on_top = bool(rng.integers(2))
    for _ in range(10_000):
        left_side = _log_uniform_int(rng, config.side_min, config.side_max)
        right_side = _log_uniform_int(rng, config.side_min, config.side_max)
        gap_x = _log_uniform_int(rng, config.gap_min, config.gap_max)
        gap_y = _log_uniform_int(rng, config.gap_min, config.gap_max)
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


def make_records(split: str, image_id: str, attributes: dict) -> list[dict]:
    """One LLaVA-format record per family for an image (its path is relative to the dataset directory).

    Every record carries the image's drawn ``attributes``, so that difficulty can be studied per sample."""
    records = []
    for family in FAMILIES:
        answer = attributes[FAMILY_ATTRIBUTE[family]]
        records.append(
            {
                "id": f"{image_id}_{family}",
                "image": f"images/{split}/{image_id}.png",
                "conversations": [
                    {"from": "human", "value": f"<image>\n{QUESTIONS[family]}"},
                    {"from": "gpt", "value": answer},
                ],
                "family": family,
                "answer": answer,
                "image_id": image_id,
                "attributes": attributes,
            }
        )
    return records


def chat_record(records: list[dict], rng: np.random.Generator) -> dict:
    """One multi-turn LLaVA record asking all of an image's questions in a random order.

    Training on these gives one supervised answer per family for each vision pass instead of one.
    """
    order = rng.permutation(len(records))
    conversations = []
    for turn, index in enumerate(order):
        question = records[index]["conversations"][0]["value"].removeprefix("<image>\n")
        conversations.append({"from": "human", "value": ("<image>\n" if turn == 0 else "") + question})
        conversations.append({"from": "gpt", "value": records[index]["answer"]})
    first = records[0]
    image_id = first["image_id"]
    return {"id": image_id, "image": first["image"], "conversations": conversations, "image_id": image_id}


def iter_records(
    split: str, num_images: int, seed: int, config: GranularityConfig | None = None
) -> Iterator[tuple[Image.Image, list[dict]]]:
    """Yield ``(image, records)`` for each image of a split, deterministically from ``(seed, split, config)``."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", split):
        raise ValueError(f"split must be a plain name (letters, digits, '_' or '-'), got {split!r}")
    if num_images < 0 or seed < 0:
        raise ValueError(f"num_images and seed must be >= 0, got {num_images} and {seed}")
    config = config or DEFAULT_CONFIG
    split_key = zlib.crc32(split.encode())
    for index in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_key, index)))
        image, attributes = draw_sample(rng, config)
        yield image, make_records(split, f"{split}_{index:06d}", attributes)


def generate_records(
    split: str, num_images: int, seed: int, config: GranularityConfig | None = None
) -> list[tuple[Image.Image, list[dict]]]:
    """All ``(image, records)`` pairs of a split, in memory (see :func:`iter_records`)."""
    return list(iter_records(split, num_images, seed, config))


def write_split(
    out_dir: str | Path,
    split: str,
    num_images: int,
    seed: int,
    progress: bool = False,
    config: GranularityConfig | None = None,
) -> Path:
    """Write ``images/{split}/*.png``, ``{split}.json`` (one question per record), ``{split}.chat.json`` (all
    of an image's questions as one multi-turn record) and ``{split}.meta.json`` (with the config) under ``out_dir``.

    Returns the path of ``{split}.json``. The meta file is written last, so its presence marks a complete split.
    """
    config = config or DEFAULT_CONFIG
    out_dir = Path(out_dir)
    image_dir = out_dir / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    stream = iter_records(split, num_images, seed, config)
    for image, image_records in tqdm(stream, total=num_images, desc=split, disable=not progress):
        save = lambda tmp, im=image: im.save(tmp, format="PNG")  # noqa: E731
        atomic_write(out_dir / image_records[0]["image"], save, durable=False)
        records.extend(image_records)
    json_path = out_dir / f"{split}.json"
    write_json_atomic(json_path, records)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(split.encode()), 2**31)))
    by_image: dict[str, list[dict]] = {}
    for record in records:
        by_image.setdefault(record["image_id"], []).append(record)
    write_json_atomic(out_dir / f"{split}.chat.json", [chat_record(group, rng) for group in by_image.values()])
    answers = {f: dict(Counter(r["answer"] for r in records if r["family"] == f)) for f in FAMILIES}
    meta = {
        "generator_version": GENERATOR_VERSION,
        "split": split,
        "seed": seed,
        "num_images": num_images,
        "config": config.to_dict(),
        "num_records": len(records),
        "counts": {f: sum(n.values()) for f, n in answers.items()},
        "answer_counts": answers,
        "majority_baseline": majority_baseline([r["family"] for r in records], [r["answer"] for r in records]),
    }
    write_json_atomic(out_dir / f"{split}.meta.json", meta)
    return json_path


def check_generator_version(meta_path: str | Path, config: GranularityConfig | None = None) -> None:
    """Refuse a granularity split written by another generator version (its images and answers differ), or,
    when ``config`` is given, drawn from another distribution (a shifted split must not pass for a default one)."""
    meta_path = Path(meta_path)
    if not meta_path.exists():
        return  # not a generated split: the user's own data
    meta = read_json(meta_path, "delete that folder to regenerate the split")
    version = meta.get("generator_version")
    if version != GENERATOR_VERSION:
        raise ValueError(
            f"{meta_path.parent} holds a granularity split of generator version {version}, but this code writes "
            f"version {GENERATOR_VERSION}: delete that folder to regenerate it, or point --data_path elsewhere"
        )
    if config is not None and meta.get("config") != config.to_dict():
        stored = meta.get("config") or {}
        wanted = config.to_dict()
        keys = sorted({*stored, *wanted})
        differences = {k: (stored.get(k), wanted.get(k)) for k in keys if stored.get(k) != wanted.get(k)}
        raise ValueError(
            f"{meta_path.parent} holds a granularity split drawn with another config (field: (stored, wanted)): "
            f"{differences}; delete that folder to regenerate it, or point --data_path elsewhere"
        )


def ensure_split(
    path: str | Path,
    split: str,
    num_images: int,
    seed: int = 0,
    progress: bool = False,
    config: GranularityConfig | None = None,
) -> Path:
    """Make sure the split file ``path`` (``DIR/{split}.json`` or ``DIR/{split}.chat.json``) exists: written by
    :func:`write_split` when missing, checked with :func:`check_generator_version` against ``config`` (default:
    the training distribution) when present. Returns ``path``."""
    path = Path(path)
    config = config or DEFAULT_CONFIG
    if path.exists():
        check_generator_version(path.with_name(f"{split}.meta.json"), config)
        return path
    if path.name not in (f"{split}.json", f"{split}.chat.json"):
        raise FileNotFoundError(f"{path} does not exist (a generated {split} split is {split}[.chat].json)")
    write_split(path.parent, split, num_images=num_images, seed=seed, progress=progress, config=config)
    return path


def _config_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m m3.data.granularity",
        description=__doc__.split("\n\n")[0],
        epilog="The documented shifted split (smaller squares, closer together): --split test --shifted, the same as "
        f"--side-max {SHIFTED_CONFIG.side_max} --gap-max {SHIFTED_CONFIG.gap_max}",
        allow_abbrev=False,
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset directory")
    parser.add_argument("--split", choices=(*SPLITS, "all"), default="all", help="split to write (default: all)")
    parser.add_argument(
        "--num-images", type=int, default=None, help=f"images per split (default: {DEFAULT_NUM_IMAGES})"
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed; each split derives its own stream")
    distribution = parser.add_argument_group("image distribution (defaults: the training distribution)")
    distribution.add_argument(
        "--shifted", action="store_true", help="start from the documented shifted split's settings, not the defaults"
    )
    for spec in fields(GranularityConfig):
        distribution.add_argument(
            _config_flag(spec.name), dest=spec.name, type=int, default=None,
            help=f"{spec.metadata['help']} (default: {spec.default})",
        )  # fmt: skip
    args = parser.parse_args(argv)
    base = SHIFTED_CONFIG if args.shifted else DEFAULT_CONFIG
    try:
        given = {spec.name: getattr(args, spec.name) for spec in fields(GranularityConfig)}
        config = replace(base, **{name: value for name, value in given.items() if value is not None})
    except ValueError as error:
        parser.error(str(error))
    for split in SPLITS if args.split == "all" else (args.split,):
        num_images = DEFAULT_NUM_IMAGES[split] if args.num_images is None else args.num_images
        path = write_split(args.out, split, num_images, args.seed, progress=True, config=config)
        meta = json.loads(path.with_suffix(".meta.json").read_text())
        counts = ", ".join(f"{f} {n}" for f, n in meta["counts"].items())
        baseline = ", ".join(f"{f} {a:.3f}" for f, a in meta["majority_baseline"].items())
        print(f"{split}: {num_images} images, {meta['num_records']} records ({counts}) -> {path}")
        print(f"  majority baseline: {baseline}")
        if config != DEFAULT_CONFIG:
            print(f"  shifted config: {config.to_dict()}")


if __name__ == "__main__":
    main()
