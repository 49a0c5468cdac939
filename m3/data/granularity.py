"""Granularity benchmark: procedural images whose question families need different numbers of visual tokens.

Every 96x96 image (the tiny model's 24x24 grid of 4 px patches) holds a uniform muted background, one big
white shape (circle, square or triangle, ~27 px) inside one cell of a 3x3 grid of 32 px cells, one small
12-14 px square in a bright colour elsewhere (about 2 % of the image), and light seeded noise. Four question
families ask about it, from coarse to fine:

- ``background``  : the background colour (one pooled token suffices);
- ``position``    : the cell of the big shape (the 3x3 = 9-token grid matches the cells);
- ``shape``       : the kind of the big shape (needs its outline: 36+ tokens);
- ``small_color`` : the colour of the small square (36+ tokens: coarser pooling dilutes it).

The three palettes (muted backgrounds, the white shape, bright small squares) do not overlap, so whether
a token shows an object is a property of that token alone, as with a pretrained CLIP's features. With one
shared palette, finding the object means comparing every token with the background, and a from-scratch
tiny model stayed at chance on ``position`` (measured; generator version 2).

Each image gives one record per family, in the LLaVA instruction format. Generation is deterministic in
``(seed, split)``: image ``i`` of a split is drawn from ``SeedSequence(seed, spawn_key=(crc32(split), i))``,
so splits never share a stream and a smaller split is a prefix of a larger one.

CLI: ``python -m m3.data.granularity --out DIR --split all`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..metrics import majority_baseline

GENERATOR_VERSION = "4"
IMAGE_SIZE = 96
CELL_SIZE = 32
BIG_SIZE, BIG_JITTER = 27, 0.15  # side / diameter in px, relative jitter (so the area varies by about +-30 %)
SMALL_SIDES = (12, 13, 14)
SMALL_MARGIN = 2  # px kept free between the small square and the big shape's bounding box
NOISE = 8  # per-pixel, per-channel uniform noise in [-NOISE, NOISE]

BACKGROUND_PALETTE = {
    "gray": (128, 128, 128),
    "brown": (120, 70, 30),
    "navy": (20, 30, 90),
    "olive": (110, 110, 30),
    "purple": (100, 40, 120),
    "teal": (20, 110, 110),
}
BIG_COLOR = "white"
SMALL_PALETTE = {
    "red": (230, 30, 30),
    "green": (40, 200, 40),
    "blue": (40, 90, 255),
    "yellow": (240, 220, 30),
}
PALETTE = {**BACKGROUND_PALETTE, BIG_COLOR: (240, 240, 240), **SMALL_PALETTE}
BACKGROUND_COLORS = tuple(BACKGROUND_PALETTE)
SMALL_COLORS = tuple(SMALL_PALETTE)
KINDS = ("circle", "square", "triangle")
POSITIONS = ("topleft", "top", "topright", "left", "center", "right", "bottomleft", "bottom", "bottomright")

FAMILIES = ("background", "position", "shape", "small_color")
QUESTIONS = {
    "background": "what color is the background ?",
    "position": "where is the big shape ?",
    "shape": "what shape is the big object ?",
    "small_color": "what color is the small square ?",
}
ANSWERS: dict[str, tuple[str, ...]] = {
    "background": BACKGROUND_COLORS,
    "position": POSITIONS,
    "shape": KINDS,
    "small_color": SMALL_COLORS,
}
FAMILY_ATTRIBUTE = {"background": "background", "position": "position", "shape": "kind", "small_color": "small_color"}
VOCABULARY = tuple(sorted({w for f in FAMILIES for w in (*QUESTIONS[f].split(), *ANSWERS[f])}))
SPLITS = ("train", "validation", "test")
DEFAULT_NUM_IMAGES = {"train": 3000, "validation": 200, "test": 250}


def draw_sample(rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """Draw one image and its attributes. Boxes are inclusive pixel boxes ``(x0, y0, x1, y1)``."""
    background = str(BACKGROUND_COLORS[rng.integers(len(BACKGROUND_COLORS))])
    color = BIG_COLOR
    small_color = str(SMALL_COLORS[rng.integers(len(SMALL_COLORS))])
    kind = str(KINDS[rng.integers(len(KINDS))])
    cell = int(rng.integers(9))
    size = int(round(BIG_SIZE * rng.uniform(1 - BIG_JITTER, 1 + BIG_JITTER)))
    x0 = (cell % 3) * CELL_SIZE + int(rng.integers(CELL_SIZE - size + 1))
    y0 = (cell // 3) * CELL_SIZE + int(rng.integers(CELL_SIZE - size + 1))
    box = (x0, y0, x0 + size - 1, y0 + size - 1)

    side = int(rng.choice(SMALL_SIDES))
    while True:  # rejection sampling: the big shape covers at most 1/9 of the image, so this ends fast
        sx, sy = (int(v) for v in rng.integers(IMAGE_SIZE - side + 1, size=2))
        small_box = (sx, sy, sx + side - 1, sy + side - 1)
        apart = (
            small_box[2] < box[0] - SMALL_MARGIN
            or small_box[0] > box[2] + SMALL_MARGIN
            or small_box[3] < box[1] - SMALL_MARGIN
            or small_box[1] > box[3] + SMALL_MARGIN
        )
        if apart:
            break

    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), PALETTE[background])
    draw = ImageDraw.Draw(image)
    if kind == "circle":
        draw.ellipse(box, fill=PALETTE[color])
    elif kind == "square":
        draw.rectangle(box, fill=PALETTE[color])
    else:
        draw.polygon([((box[0] + box[2]) / 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=PALETTE[color])
    draw.rectangle(small_box, fill=PALETTE[small_color])
    noise = rng.integers(-NOISE, NOISE + 1, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)

    attributes = {
        "background": background,
        "kind": kind,
        "color": color,
        "cell": cell,
        "position": POSITIONS[cell],
        "size": size,
        "box": box,
        "center": (x0 + size // 2, y0 + size // 2),
        "small_color": small_color,
        "small_box": small_box,
    }
    return Image.fromarray(pixels), attributes


def make_records(split: str, image_id: str, attributes: dict) -> list[dict]:
    """One LLaVA-format record per family for an image (its path is relative to the dataset directory)."""
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
            }
        )
    return records


def chat_record(records: list[dict], rng: np.random.Generator) -> dict:
    """One multi-turn LLaVA record asking all of an image's questions in a random order.

    Training on these gives four supervised answers per vision pass instead of one.
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


def iter_records(split: str, num_images: int, seed: int) -> Iterator[tuple[Image.Image, list[dict]]]:
    """Yield ``(image, records)`` for each image of a split, deterministically from ``(seed, split)``."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", split):
        raise ValueError(f"split must be a plain name (letters, digits, '_' or '-'), got {split!r}")
    if num_images < 0 or seed < 0:
        raise ValueError(f"num_images and seed must be >= 0, got {num_images} and {seed}")
    split_key = zlib.crc32(split.encode())
    for index in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_key, index)))
        image, attributes = draw_sample(rng)
        yield image, make_records(split, f"{split}_{index:06d}", attributes)


def generate_records(split: str, num_images: int, seed: int) -> list[tuple[Image.Image, list[dict]]]:
    """All ``(image, records)`` pairs of a split, in memory (see :func:`iter_records`)."""
    return list(iter_records(split, num_images, seed))


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary name in the same directory, then rename: readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, obj) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def write_split(out_dir: str | Path, split: str, num_images: int, seed: int, progress: bool = False) -> Path:
    """Write ``images/{split}/*.png``, ``{split}.json`` (one question per record), ``{split}.chat.json`` (all
    of an image's questions as one multi-turn record) and ``{split}.meta.json`` under ``out_dir``.

    Returns the path of ``{split}.json``. The meta file is written last, so its presence marks a complete split.
    """
    out_dir = Path(out_dir)
    image_dir = out_dir / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    stream = iter_records(split, num_images, seed)
    for image, image_records in tqdm(stream, total=num_images, desc=split, disable=not progress):
        _atomic_write(out_dir / image_records[0]["image"], lambda tmp, im=image: im.save(tmp, format="PNG"))
        records.extend(image_records)
    json_path = out_dir / f"{split}.json"
    _write_json(json_path, records)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(split.encode()), 2**31)))
    by_image: dict[str, list[dict]] = {}
    for record in records:
        by_image.setdefault(record["image_id"], []).append(record)
    _write_json(out_dir / f"{split}.chat.json", [chat_record(group, rng) for group in by_image.values()])
    answers = {f: dict(Counter(r["answer"] for r in records if r["family"] == f)) for f in FAMILIES}
    meta = {
        "generator_version": GENERATOR_VERSION,
        "split": split,
        "seed": seed,
        "num_images": num_images,
        "num_records": len(records),
        "counts": {f: sum(n.values()) for f, n in answers.items()},
        "answer_counts": answers,
        "majority_baseline": majority_baseline([r["family"] for r in records], [r["answer"] for r in records]),
    }
    _write_json(out_dir / f"{split}.meta.json", meta)
    return json_path


def check_generator_version(meta_path: str | Path) -> None:
    """Refuse a granularity split written by another generator version (its images and answers differ)."""
    meta_path = Path(meta_path)
    if not meta_path.exists():
        return  # not a generated split: the user's own data
    version = json.loads(meta_path.read_text()).get("generator_version")
    if version != GENERATOR_VERSION:
        raise ValueError(
            f"{meta_path.parent} holds a granularity split of generator version {version}, but this code writes "
            f"version {GENERATOR_VERSION}: delete that folder to regenerate it, or point --data_path elsewhere"
        )


def ensure_split(path: str | Path, split: str, num_images: int, seed: int = 0, progress: bool = False) -> Path:
    """Make sure the split file ``path`` (``DIR/{split}.json`` or ``DIR/{split}.chat.json``) exists: written by
    :func:`write_split` when missing, checked with :func:`check_generator_version` when present. Returns ``path``."""
    path = Path(path)
    if path.exists():
        check_generator_version(path.with_name(f"{split}.meta.json"))
        return path
    if path.name not in (f"{split}.json", f"{split}.chat.json"):
        raise FileNotFoundError(f"{path} does not exist (a generated {split} split is {split}[.chat].json)")
    write_split(path.parent, split, num_images=num_images, seed=seed, progress=progress)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m m3.data.granularity", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset directory")
    parser.add_argument("--split", choices=(*SPLITS, "all"), default="all", help="split to write (default: all)")
    parser.add_argument(
        "--num-images", type=int, default=None, help=f"images per split (default: {DEFAULT_NUM_IMAGES})"
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed; each split derives its own stream")
    args = parser.parse_args(argv)
    for split in SPLITS if args.split == "all" else (args.split,):
        num_images = DEFAULT_NUM_IMAGES[split] if args.num_images is None else args.num_images
        path = write_split(args.out, split, num_images, args.seed, progress=True)
        meta = json.loads(path.with_suffix(".meta.json").read_text())
        counts = ", ".join(f"{f} {n}" for f, n in meta["counts"].items())
        baseline = ", ".join(f"{f} {a:.3f}" for f, a in meta["majority_baseline"].items())
        print(f"{split}: {num_images} images, {meta['num_records']} records ({counts}) -> {path}")
        print(f"  majority baseline: {baseline}")


if __name__ == "__main__":
    main()
