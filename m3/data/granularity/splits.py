"""Granularity benchmark splits: the files, the meta record and the command line, for every generator version.

A generator version (:mod:`.v7`, the default; :mod:`.v6` and :mod:`.v5`, kept reproducible) draws the images and
names the question families; this module writes them in the LLaVA instruction format. Each image gives one record per
family; each record stores the image's drawn ``attributes``, and each split's ``.meta.json`` its generator version
and config. Generation is deterministic in ``(seed, split, config)``: image ``i`` of a split is drawn from
``SeedSequence(seed, spawn_key=(crc32(split), i))``, so splits never share a stream and a smaller split is a prefix
of a larger one.

CLI: ``python -m m3.data.granularity --out DIR --split all`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image
from tqdm import tqdm

from ...cli import user_errors
from ...files import atomic_write, read_json, write_json_atomic
from ...metrics import majority_baseline
from ...runs import check_output_dir, check_same_record
from . import v5, v6, v7

SPLITS = ("train", "validation", "test")
DEFAULT_NUM_IMAGES = {"train": 3000, "validation": 200, "test": 250}
GENERATORS = {v5.VERSION: v5, v6.VERSION: v6, v7.VERSION: v7}  # every generator version that can still be drawn
CURRENT = v7
GENERATOR_VERSION = CURRENT.VERSION


def generator_of(config) -> ModuleType:
    """The generator module (:mod:`.v5`, :mod:`.v6`, :mod:`.v7`) that draws images of ``config`` (None: the current
    default)."""
    if config is None:
        return CURRENT
    version = getattr(config, "version", None)
    if version not in GENERATORS:
        raise TypeError(f"not a granularity generator config: {config!r}")
    return GENERATORS[version]


def make_records(split: str, image_id: str, attributes: dict, generator: ModuleType = CURRENT) -> list[dict]:
    """One LLaVA-format record per family of ``generator`` for an image (its path is relative to the dataset
    directory). Every record carries the image's drawn ``attributes``, so that difficulty can be studied per sample."""
    records = []
    for family in generator.FAMILIES:
        answer = attributes[generator.FAMILY_ATTRIBUTE[family]]
        records.append(
            {
                "id": f"{image_id}_{family}",
                "image": f"images/{split}/{image_id}.png",
                "conversations": [
                    {"from": "human", "value": f"<image>\n{generator.QUESTIONS[family]}"},
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


def _check_draw(split: str, num_images: int, seed: int) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", split):
        raise ValueError(f"split must be a plain name (letters, digits, '_' or '-'), got {split!r}")
    if num_images < 1:  # a split of no images is refused by every reader (training, the task writer, the oracle)
        raise ValueError(f"a split needs at least 1 image (--num-images), got {num_images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def iter_records(split: str, num_images: int, seed: int, config=None) -> Iterator[tuple[Image.Image, list[dict]]]:
    """Yield ``(image, records)`` for each image of a split, deterministically from ``(seed, split, config)``; the
    config's class picks the generator version (None: the current version's defaults)."""
    _check_draw(split, num_images, seed)
    generator = generator_of(config)
    config = config or generator.DEFAULT_CONFIG
    split_key = zlib.crc32(split.encode())
    for index in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_key, index)))
        image, attributes = generator.draw_sample(rng, config)
        yield image, make_records(split, f"{split}_{index:06d}", attributes, generator)


def generate_records(split: str, num_images: int, seed: int, config=None) -> list[tuple[Image.Image, list[dict]]]:
    """All ``(image, records)`` pairs of a split, in memory (see :func:`iter_records`)."""
    return list(iter_records(split, num_images, seed, config))


def remove_split(out_dir: str | Path, split: str) -> None:
    """Delete a written split (what ``overwrite`` replaces): its meta first, the mark of a complete split, then its
    record files and its images."""
    out_dir = Path(out_dir)
    for name in (f"{split}.meta.json", f"{split}.json", f"{split}.chat.json"):
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "images" / split, ignore_errors=True)


def write_split(
    out_dir: str | Path,
    split: str,
    num_images: int,
    seed: int,
    progress: bool = False,
    config=None,
    overwrite: bool = False,
) -> Path:
    """Write ``images/{split}/*.png``, ``{split}.json`` (one question per record), ``{split}.chat.json`` (all
    of an image's questions as one multi-turn record) and ``{split}.meta.json`` (with the config) under ``out_dir``.

    Returns the path of ``{split}.json``. The meta file is written last, so its presence marks a complete split.
    ``config`` (a :mod:`.v7`, :mod:`.v6` or :mod:`.v5` config) picks the generator version; None: the current defaults.
    A split already there drawn otherwise (another version, config, seed or size) is refused unless ``overwrite``,
    which replaces it (its images too); the same split is written again, identical.
    """
    generator = generator_of(config)
    config = config or generator.DEFAULT_CONFIG
    out_dir = Path(out_dir)
    drawn = {"generator_version": generator.VERSION, "seed": seed, "num_images": num_images, "config": config.to_dict()}
    meta_path = out_dir / f"{split}.meta.json"
    _check_draw(split, num_images, seed)
    if overwrite:
        remove_split(out_dir, split)
    else:
        way_out = "pass --overwrite (overwrite=True) to replace it, or choose another --out"
        check_same_record(meta_path, drawn, f"the {split} split in {out_dir}", way_out)
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
    answers = {f: dict(Counter(r["answer"] for r in records if r["family"] == f)) for f in generator.FAMILIES}
    meta = {
        "generator_version": generator.VERSION,
        "split": split,
        "seed": seed,
        "num_images": num_images,
        "config": config.to_dict(),
        "num_records": len(records),
        "counts": {f: sum(n.values()) for f, n in answers.items()},
        "answer_counts": answers,
        "majority_baseline": majority_baseline([r["family"] for r in records], [r["answer"] for r in records]),
    }
    write_json_atomic(meta_path, meta)
    return json_path


def check_generator_version(meta_path: str | Path, config=None) -> None:
    """Refuse a granularity split written by another generator version than ``config``'s (default: the current
    one; their images and answers differ), or, when ``config`` is given, drawn from another distribution (a shifted
    split must not pass for a default one)."""
    meta_path = Path(meta_path)
    if not meta_path.exists():
        return  # not a generated split: the user's own data
    meta = read_json(meta_path, "delete that folder to regenerate the split")
    version, wanted_version = meta.get("generator_version"), generator_of(config).VERSION
    if version != wanted_version:
        raise ValueError(
            f"{meta_path.parent} holds a granularity split of generator version {version}, but version "
            f"{wanted_version} is wanted: delete that folder to regenerate it, or point --data_path elsewhere"
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
    config=None,
) -> Path:
    """Make sure the split file ``path`` (``DIR/{split}.json`` or ``DIR/{split}.chat.json``) exists: written by
    :func:`write_split` when missing, checked with :func:`check_generator_version` against ``config`` (default:
    the training distribution) when present. Returns ``path``."""
    path = Path(path)
    config = config or CURRENT.DEFAULT_CONFIG
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
    """The command line; a user error is one ``error:`` line and exit code 2 (:func:`m3.cli.user_errors`)."""
    with user_errors():
        _main(argv)


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m m3.data.granularity",
        description=__doc__.split("\n\n")[0],
        epilog=f"The documented shifted split (version {CURRENT.VERSION}: smaller squares, more clutter, noisier): "
        "--split test --shifted, the same as "
        + " ".join(
            f"{_config_flag(name)} {value}"
            for name, value in CURRENT.SHIFTED_CONFIG.to_dict().items()
            if value != getattr(CURRENT.DEFAULT_CONFIG, name)
        ),
        allow_abbrev=False,
    )
    parser.add_argument("--out", required=True, help="dataset directory")
    parser.add_argument("--split", choices=(*SPLITS, "all"), default="all", help="split to write (default: all)")
    parser.add_argument(
        "--num-images", type=int, default=None, help=f"images per split (default: {DEFAULT_NUM_IMAGES})"
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed; each split derives its own stream")
    parser.add_argument(
        "--generator-version", choices=tuple(GENERATORS), default=CURRENT.VERSION,
        help=f"which generator draws the images (default: {CURRENT.VERSION}; 5 reproduces the earlier benchmark)",
    )  # fmt: skip
    distribution = parser.add_argument_group("image distribution (defaults: the version's training distribution)")
    distribution.add_argument(
        "--shifted", action="store_true", help="start from the documented shifted split's settings, not the defaults"
    )
    flags: dict[str, list[str]] = {}  # each config field of any version -> the versions that have it
    for version, module in sorted(GENERATORS.items(), reverse=True):
        for spec in fields(module.DEFAULT_CONFIG):
            flags.setdefault(spec.name, []).append(version)
            if len(flags[spec.name]) == 1:
                distribution.add_argument(
                    _config_flag(spec.name), dest=spec.name, type=int, default=None,
                    help=f"{spec.metadata['help']} (version {version} default: {spec.default})",
                )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace a split in --out drawn otherwise")
    args = parser.parse_args(argv)
    generator = GENERATORS[args.generator_version]
    base = generator.SHIFTED_CONFIG if args.shifted else generator.DEFAULT_CONFIG
    foreign = [
        _config_flag(name) for name, versions in flags.items()
        if getattr(args, name) is not None and args.generator_version not in versions
    ]  # fmt: skip
    if foreign:
        parser.error(f"{', '.join(foreign)} not a setting of generator version {args.generator_version}")
    try:
        given = {spec.name: getattr(args, spec.name, None) for spec in fields(base)}
        config = replace(base, **{name: value for name, value in given.items() if value is not None})
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    check_output_dir(args.out, "--out")  # an existing file is refused before anything is drawn
    for split in SPLITS if args.split == "all" else (args.split,):
        num_images = DEFAULT_NUM_IMAGES[split] if args.num_images is None else args.num_images
        path = write_split(args.out, split, num_images, args.seed, True, config, args.overwrite)
        meta = json.loads(path.with_suffix(".meta.json").read_text())
        counts = ", ".join(f"{f} {n}" for f, n in meta["counts"].items())
        baseline = ", ".join(f"{f} {a:.3f}" for f, a in meta["majority_baseline"].items())
        print(f"{split}: {num_images} images, {meta['num_records']} records ({counts}) -> {path}")
        print(f"  majority baseline: {baseline}")
        if config != generator.DEFAULT_CONFIG:
            print(f"  shifted config: {config.to_dict()}")
