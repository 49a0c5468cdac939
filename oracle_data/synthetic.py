"""A synthetic oracle folder in the real schema, with a known rule for which scale answers (for tests and benchmarks:
fitting and timing predictors without running a model).

Each image is 32 px with a detail level 0, 1 or 2 (a flat colour, a few blocks, many small blocks). Each of its
questions belongs to a family that needs a minimum scale (``background`` 1, ``position`` 9, ``shape`` 36,
``small_color`` 144); detail level 2 needs one scale more. The answer at a scale is correct when the scale is at
least the need, with ``noise`` of the entries flipped. Confidences are higher for correct answers (so a
confidence cascade works, imperfectly); the embedding's first coordinates encode the detail level.

The probe columns ``hidden_{s}`` (the two smallest scales) hold noise around the detail level. With
``probe_signal`` a hidden share of the questions (``hard_share``) needs one scale more than its family and detail
say, and only the probe columns show it (their first coordinate), as a model's own state would.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .labels import monotone_oracle, paper_oracle
from .store import (
    SCHEMA_VERSION,
    default_hidden_scales,
    oracle_schema,
    shard_entry,
    update_manifest,
    write_manifest,
    write_shard,
)

FAMILY_NEEDS = {"background": 0, "position": 1, "shape": 2, "small_color": 3}  # index into the scales
QUESTIONS = {
    "background": "what color is the background ?",
    "position": "where is the big shape ?",
    "shape": "what shape is the big object ?",
    "small_color": "what color is the small square ?",
}


def synthetic_image(detail: int, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A flat colour (detail 0), with a few large blocks (1) or with many small ones (2)."""
    pixels = np.empty((size, size, 3), np.uint8)
    pixels[:] = rng.integers(40, 200, 3)
    blocks, side = {0: (0, 0), 1: (3, 10), 2: (40, 3)}[detail]
    for _ in range(blocks):
        x, y = rng.integers(0, size - side, 2)
        pixels[y : y + side, x : x + side] = rng.integers(0, 256, 3)
    return Image.fromarray(pixels)


def write_synthetic_oracle(
    out_dir: str | os.PathLike,
    num_images: int = 60,
    scales: tuple[int, ...] = (1, 9, 36, 144, 576),
    embedding_dim: int = 16,
    noise: float = 0.05,
    seed: int = 0,
    families: tuple[str, ...] = tuple(FAMILY_NEEDS),
    shard_size: int = 256,
    probe_signal: bool = False,
    hard_share: float = 0.4,
) -> Path:
    """Write ``out_dir/manifest.json``, ``out_dir/shards/*.parquet`` and ``out_dir/images/*.png``; returns out_dir.

    ``oracle_data.load_oracle(out_dir)`` reads it like a real build.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "shards").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    scales = sorted(scales)
    hidden_scales = default_hidden_scales(scales)
    probe_rng = np.random.default_rng([seed, 1])  # its own stream: the other columns stay as they were without it
    rows = []
    for index in range(num_images):
        image_id = f"img{index:05d}"
        detail = int(rng.integers(3))
        synthetic_image(detail, rng).save(out_dir / "images" / f"{image_id}.png")
        embedding = rng.normal(size=embedding_dim).astype(np.float32)
        embedding[: min(3, embedding_dim)] += 2.0 * np.eye(3, dtype=np.float32)[detail][: min(3, embedding_dim)]
        for family in families:
            hard = bool(probe_rng.random() < hard_share) and probe_signal
            need = min(FAMILY_NEEDS[family] + (detail == 2) + hard, len(scales) - 1)
            hidden = probe_rng.normal(size=(len(hidden_scales), embedding_dim)).astype(np.float32)
            hidden[:, 0] += 3.0 * hard
            hidden[:, 1] += detail
            correct = (np.arange(len(scales)) >= need) ^ (rng.random(len(scales)) < noise)
            confidence = np.minimum(
                np.where(correct, rng.normal(-0.3, 0.3, len(scales)), rng.normal(-1.2, 0.5, len(scales))), 0
            )
            rows.append(
                dict(
                    image_id=image_id,
                    family=family,
                    embedding=embedding,
                    correct=correct,
                    confidence=confidence,
                    hidden=hidden,
                )
            )
    correct = np.array([row["correct"] for row in rows]).reshape(len(rows), len(scales))
    oracle, none_correct = paper_oracle(correct, scales)
    monotone, unreachable = monotone_oracle(correct, scales)
    records = []
    for i, row in enumerate(rows):
        record = {
            "sample_id": f"{row['image_id']}_{row['family']}",
            "image_id": row["image_id"],
            "image": f"images/{row['image_id']}.png",
            "question": QUESTIONS[row["family"]],
            "family": row["family"],
            "metric": "exact_match",
            "answers": ["yes"],
            "choices": None,
            "embedding": row["embedding"].tolist(),
        }
        for j, scale in enumerate(scales):
            ok = bool(row["correct"][j])
            record.update(
                {
                    f"answer_{scale}": "yes" if ok else "no",
                    f"score_{scale}": float(ok),
                    f"correct_{scale}": ok,
                    f"confidence_{scale}": float(row["confidence"][j]),
                    f"tokens_{scale}": int(scale),
                    f"eos_{scale}": True,
                }
            )
        for j, scale in enumerate(hidden_scales):
            record[f"hidden_{scale}"] = row["hidden"][j].tolist()
        record.update(
            oracle_scale=int(oracle[i]),
            oracle_none_correct=bool(none_correct[i]),
            oracle_monotone_scale=int(monotone[i]),
            oracle_monotone_unreachable=bool(unreachable[i]),
        )
        records.append(record)
    schema = oracle_schema(scales, hidden_scales)
    starts = range(0, len(records), shard_size)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "complete": False,
        "model": {
            "path": f"synthetic-model-d{embedding_dim}",
            "fingerprint": {"config_sha256": None, "weights_sha256": None},
            "model_type": "llava",
            "scales": scales,
            "m3_scales": scales,
            "grid_tokens": scales[-1],
            "text_hidden_size": embedding_dim,
            "embedding_dim": embedding_dim,
        },
        "data": {
            "path": "synthetic",
            "sha256": None,
            "format": "synthetic",
            "image_root": str(out_dir.resolve()),
            "num_samples": len(records),
            "limit": None,
            "skipped_without_image": 0,
            "metrics": {"exact_match": len(records)},
        },
        "metric": "exact_match",
        "settings": {
            "synthetic": {"seed": seed, "noise": noise, "probe_signal": probe_signal},
            "correct_threshold": 0.5,
            "max_new_tokens": 1,
            "hidden_scales": hidden_scales,
        },
        "build": {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "num_shards": len(starts),
        "shards": [],
        "num_rows": 0,
        "columns": schema.names,
    }
    write_manifest(out_dir, manifest)
    entries = []
    for shard, start in enumerate(starts):
        write_shard(out_dir, shard, records[start : start + shard_size], schema)
        entries.append(shard_entry(shard, len(records[start : start + shard_size])))
    update_manifest(out_dir, manifest, entries, complete=True)
    return out_dir
