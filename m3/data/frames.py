"""Frames benchmark: short "videos" of granularity frames, only one of which holds what the question asks about.

A video is ``num_frames`` 96x96 frames over one background colour. One frame (the target, at a random position) is
a granularity image (:func:`m3.data.granularity.draw_sample`); the others show only the background and light noise,
like the frames of a static shot before and after something passes through it. Every question of the granularity
generator (its ``FAMILIES``/``QUESTIONS``) is asked about the whole video, in one prompt holding every frame. The
answer lives in the target frame alone, at the granularity the family needs, so a budget of visual tokens is best
spent there: a good allocation gives the target frame a fine scale and the empty frames the coarsest one, while
uniform scales spread the same budget evenly. A scale-1 token or cheap image statistics tell an empty frame from
the target, so a predictor can find it before answering.

Each video also becomes one collage image (:func:`m3.video.collage`, squared), asked the same questions: the
image-grid protocol (IG-VLM) that the M3 paper evaluates video with, here in the training data too so that the
model has seen collages.

Files (``python -m m3.data.frames --out DIR --split train``), beside the granularity splits' layout:

- ``images/{split}/{video}_{frame}.png`` and ``images/{split}/{video}_collage.png``;
- ``{split}.json``: one single-turn record per (video, family), ``"image"`` listing the frames in order with one
  ``<image>`` line per frame before the question, and ``family``, ``answer``, ``image_id`` (the video),
  ``target_frame`` and the drawn ``attributes``;
- ``{split}.chat.json``: per video, every question as one multi-turn record over the frames and (unless
  ``collage=False``) one over the collage: the training file;
- ``{split}.meta.json`` (written last): versions, the config, counts and the majority baseline.

Deterministic in ``(seed, split, config)``: video ``i`` is drawn from ``SeedSequence(seed, spawn_key=(crc32("frames/"
+ split), i))``, a stream of its own (the granularity splits use ``crc32(split)``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..cli import user_errors
from ..files import atomic_write, read_json, write_json_atomic
from ..metrics import majority_baseline
from ..processing import IMAGE_PLACEHOLDER
from ..runs import check_output_dir, check_same_record
from ..video import collage
from . import granularity
from .granularity.splits import remove_split

FRAMES_VERSION = "1"
SPLITS = ("train", "validation", "test")
DEFAULT_NUM_VIDEOS = {"train": 2000, "validation": 100, "test": 200}


@dataclass(frozen=True)
class FramesConfig:
    """How a split's videos are drawn."""

    num_frames: int = field(default=4, metadata={"help": "frames per video (one holds the object)"})
    noise: int = field(default=8, metadata={"help": "empty frames: per-pixel uniform noise in [-noise, noise]"})
    collage: bool = field(default=True, metadata={"help": "also ask every video's questions about its collage"})

    def __post_init__(self) -> None:
        if not 2 <= self.num_frames <= 16:
            raise ValueError(f"num_frames must be in [2, 16], got {self.num_frames}")
        if not 0 <= self.noise <= 64:
            raise ValueError(f"noise must be in [0, 64], got {self.noise}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> FramesConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def empty_frame(rng: np.random.Generator, background: str, noise: int) -> Image.Image:
    """A frame of the background colour alone, with uniform per-pixel noise (as the generator's frames have)."""
    size = granularity.IMAGE_SIZE
    base = np.full((size, size, 3), granularity.PALETTE[background], dtype=np.int16)
    pixels = base + rng.integers(-noise, noise + 1, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def draw_video(rng: np.random.Generator, config: FramesConfig = FramesConfig()) -> tuple[list[Image.Image], dict]:
    """The frames of one video and its attributes: the target frame's drawn attributes (``draw_sample``'s), plus
    ``target_frame`` (its index) and ``num_frames``."""
    image, drawn = granularity.draw_sample(rng)
    target = int(rng.integers(config.num_frames))
    frames = [
        image if index == target else empty_frame(rng, drawn["background"], config.noise)
        for index in range(config.num_frames)
    ]
    attributes = json.loads(json.dumps(drawn))  # tuples become lists, as the JSON records store them
    return frames, {**attributes, "target_frame": target, "num_frames": config.num_frames}


def frame_paths(split: str, video_id: str, num_frames: int) -> list[str]:
    return [f"images/{split}/{video_id}_{index}.png" for index in range(num_frames)]


def collage_path(split: str, video_id: str) -> str:
    return f"images/{split}/{video_id}_collage.png"


def video_collage(frames: list[Image.Image]) -> Image.Image:
    """The collage a video's collage records show: IG-VLM's grid (:func:`m3.video.collage`), padded to a square
    (what LLaVA-1.5 needs to see every frame; LLaVA-NeXT reads it as any image)."""
    return collage(frames, square=True)


def make_records(split: str, video_id: str, attributes: dict) -> list[dict]:
    """One single-turn LLaVA record per granularity family about a video's frames (paths relative to the split's
    folder)."""
    paths = frame_paths(split, video_id, attributes["num_frames"])
    records = []
    for family in granularity.FAMILIES:
        answer = str(attributes[granularity.FAMILY_ATTRIBUTE[family]])
        question = granularity.QUESTIONS[family]
        records.append(
            {
                "id": f"{video_id}_{family}",
                "image": paths,
                "conversations": [
                    {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n" * len(paths) + question},
                    {"from": "gpt", "value": answer},
                ],
                "family": family,
                "answer": answer,
                "image_id": video_id,
                "target_frame": attributes["target_frame"],
                "attributes": attributes,
            }
        )
    return records


def chat_records(split: str, records: list[dict], rng: np.random.Generator, with_collage: bool) -> list[dict]:
    """A video's questions as one multi-turn record over its frames and (``with_collage``) one over its collage,
    each in its own random order: several supervised answers per vision pass."""
    first = records[0]
    video_id = first["image_id"]
    sources = [(video_id, first["image"], len(first["image"]))]
    if with_collage:
        sources.append((f"{video_id}_collage", collage_path(split, video_id), 1))
    chats = []
    for record_id, image, num_images in sources:
        conversations = []
        for turn, index in enumerate(rng.permutation(len(records))):
            question = records[index]["conversations"][0]["value"].replace(f"{IMAGE_PLACEHOLDER}\n", "")
            prefix = f"{IMAGE_PLACEHOLDER}\n" * num_images if turn == 0 else ""
            conversations.append({"from": "human", "value": prefix + question})
            conversations.append({"from": "gpt", "value": records[index]["answer"]})
        chats.append({"id": record_id, "image": image, "conversations": conversations, "image_id": video_id})
    return chats


def _split_key(split: str) -> int:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", split):
        raise ValueError(f"split must be a plain name (letters, digits, '_' or '-'), got {split!r}")
    return zlib.crc32(f"frames/{split}".encode())


def iter_videos(
    split: str, num_videos: int, seed: int, config: FramesConfig = FramesConfig()
) -> Iterator[tuple[list[Image.Image], list[dict]]]:
    """Yield ``(frames, records)`` per video of a split, deterministically from ``(seed, split, config)``."""
    if num_videos < 1:  # a split of no videos is refused by every reader
        raise ValueError(f"a split needs at least 1 video (--num-videos), got {num_videos}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    key = _split_key(split)
    for index in range(num_videos):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key, index)))
        frames, attributes = draw_video(rng, config)
        yield frames, make_records(split, f"{split}_{index:06d}", attributes)


def _save_png(out_dir: Path, relative: str, image: Image.Image) -> None:
    atomic_write(out_dir / relative, lambda tmp: image.save(tmp, format="PNG"), durable=False)


def write_split(
    out_dir: str | os.PathLike,
    split: str,
    num_videos: int,
    seed: int,
    config: FramesConfig = FramesConfig(),
    progress: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a split's images, ``{split}.json``, ``{split}.chat.json`` and (last) ``{split}.meta.json`` under
    ``out_dir``; returns the path of ``{split}.json``. A split there drawn otherwise (other versions, config, seed or
    size) is refused unless ``overwrite``, which replaces it."""
    out_dir = Path(out_dir)
    if num_videos < 1:  # a split of no videos is refused by every reader
        raise ValueError(f"a split needs at least 1 video (--num-videos), got {num_videos}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    drawn = {"frames_version": FRAMES_VERSION, "granularity_version": granularity.GENERATOR_VERSION}
    drawn.update(config=config.to_dict(), seed=seed, num_videos=num_videos)
    if overwrite:
        remove_split(out_dir, split)
    else:
        way_out = "pass --overwrite (overwrite=True) to replace it, or choose another --out"
        check_same_record(out_dir / f"{split}.meta.json", drawn, f"the frames {split} split in {out_dir}", way_out)
    (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    chats: list[dict] = []
    targets: list[int] = []
    chat_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_split_key(split), 2**31)))
    stream = iter_videos(split, num_videos, seed, config)
    for frames, video_records in tqdm(stream, total=num_videos, desc=split, disable=not progress):
        video_id = video_records[0]["image_id"]
        for relative, frame in zip(video_records[0]["image"], frames):
            _save_png(out_dir, relative, frame)
        if config.collage:
            _save_png(out_dir, collage_path(split, video_id), video_collage(frames))
        records.extend(video_records)
        targets.append(video_records[0]["target_frame"])
        chats.extend(chat_records(split, video_records, chat_rng, config.collage))
    json_path = out_dir / f"{split}.json"
    write_json_atomic(json_path, records)
    write_json_atomic(out_dir / f"{split}.chat.json", chats)
    families = [r["family"] for r in records]
    meta = {
        "generator": "frames",
        "frames_version": FRAMES_VERSION,
        "granularity_version": granularity.GENERATOR_VERSION,
        "config": config.to_dict(),
        "split": split,
        "seed": seed,
        "num_videos": num_videos,
        "num_records": len(records),
        "answer_counts": {
            f: dict(Counter(r["answer"] for r in records if r["family"] == f)) for f in dict.fromkeys(families)
        },
        "target_frame_counts": {str(f): targets.count(f) for f in range(config.num_frames)},
        "majority_baseline": majority_baseline(families, [r["answer"] for r in records]),
    }
    write_json_atomic(out_dir / f"{split}.meta.json", meta)
    return json_path


def check_version(meta_path: str | os.PathLike, config: FramesConfig | None = None) -> None:
    """Refuse a frames split written by another frames or granularity generator version, or another config."""
    meta_path = Path(meta_path)
    if not meta_path.exists():
        return  # not a generated split: the user's own data
    meta = read_json(meta_path, "delete that folder to regenerate the split")
    written = (meta.get("frames_version"), meta.get("granularity_version"))
    if written != (FRAMES_VERSION, granularity.GENERATOR_VERSION):
        raise ValueError(
            f"{meta_path.parent} holds a frames split of versions {written} (frames, granularity), but this code "
            f"writes {(FRAMES_VERSION, granularity.GENERATOR_VERSION)}: delete that folder to regenerate it"
        )
    if config is not None and meta.get("config") != config.to_dict():
        raise ValueError(
            f"{meta_path.parent} holds a frames split drawn with {meta.get('config')}, not {config.to_dict()}: "
            "delete that folder to regenerate it, or choose another folder"
        )


def ensure_split(
    path: str | os.PathLike, split: str, num_videos: int, seed: int = 0, config: FramesConfig | None = None
) -> Path:
    """Make sure the split file ``path`` (``DIR/{split}.json`` or ``DIR/{split}.chat.json``) exists: written by
    :func:`write_split` when missing, checked with :func:`check_version` when present. Returns ``path``."""
    path = Path(path)
    meta = path.with_name(f"{split}.meta.json")
    if path.exists():
        check_version(meta, config)
        return path
    if path.name not in (f"{split}.json", f"{split}.chat.json"):
        raise FileNotFoundError(f"{path} does not exist (a generated frames {split} split is {split}[.chat].json)")
    write_split(path.parent, split, num_videos, seed, config or FramesConfig())
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m m3.data.frames", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--out", required=True, help="dataset directory")
    parser.add_argument("--split", choices=(*SPLITS, "all"), default="all", help="split to write (default: all)")
    parser.add_argument("--num-videos", type=int, help=f"videos per split (default: {DEFAULT_NUM_VIDEOS})")
    parser.add_argument("--seed", type=int, default=0, help="base seed; each split derives its own stream")
    for item in fields(FramesConfig):
        kind = {"action": argparse.BooleanOptionalAction} if item.type in (bool, "bool") else {"type": int}
        flag = "--" + item.name.replace("_", "-")
        parser.add_argument(flag, default=item.default, help=item.metadata["help"], **kind)
    parser.add_argument("--overwrite", action="store_true", help="replace a split in --out drawn otherwise")
    args = parser.parse_args(argv)
    with user_errors():
        config = FramesConfig(**{item.name: getattr(args, item.name) for item in fields(FramesConfig)})
        check_output_dir(args.out, "--out")
        for split in SPLITS if args.split == "all" else (args.split,):
            num_videos = DEFAULT_NUM_VIDEOS[split] if args.num_videos is None else args.num_videos
            path = write_split(args.out, split, num_videos, args.seed, config, True, args.overwrite)
            meta = json.loads(path.with_suffix(".meta.json").read_text())
            baseline = ", ".join(f"{f} {a:.3f}" for f, a in meta["majority_baseline"].items())
            videos = f"{num_videos} videos of {config.num_frames} frames"
            print(f"{split}: {videos}, {meta['num_records']} records -> {path}")
            print(f"  majority baseline: {baseline}")


if __name__ == "__main__":
    main()
