"""The per-frame oracle: what a frame predictor learns from, for :meth:`adaptive.AdaptiveM3.answer_frames`.

The knapsack of :func:`predictor.budget.allocate_scales` needs, per frame and scale, the probability that this
scale of this frame is enough. A frame that does not hold what the question asks about has no answer of its own,
so an oracle of single frames cannot label it. Here a frame is labelled in its video instead: for every scale s,
the whole multi-image prompt is answered with that frame at s and every other frame at the smallest scale, and the
row records whether that answer is right. A frame that does not matter gets a flat row (its scale changes nothing),
the frame that holds the answer a rising one, which is what the knapsack should spend on. Rows follow the oracle
schema (:func:`oracle_data.load_oracle`; one row per frame, ``image`` the frame's file, ``image_id`` the video, so
grouped splits keep a video's frames together), so every scale predictor fits them and ``AdaptiveM3`` checks the
pairing as for any oracle. :func:`frame_oracle_rows` is the row generator; :func:`build_frame_oracle` writes them
through the build path of every oracle (:func:`oracle_data.build.write_oracle`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from m3.data.llava import LlavaDataset, check_image_files, record_images
from m3.evaluation import answer_of, question_of
from m3.inference import compact_prompts, encode_images, generate_at_scale, scale_one_embedding
from m3.metrics import CORRECT_THRESHOLD, score
from m3.prompting import image_token_counts

from . import store
from .build import model_summary, write_oracle
from .labels import monotone_oracle, paper_oracle

ORACLE_CONTEXT = "every other frame at the smallest scale"


def frame_oracle_rows(
    model, processor, items: Sequence[dict], scales: Sequence[int], paths: Sequence[Sequence[str]], max_new_tokens: int
) -> list[dict]:
    """Oracle rows (one per frame) of a batch of multi-image items: for each frame f and scale s, the answer with
    frame f at s and every other frame at the smallest scale. ``paths``: each item's frame files as the data file
    names them (the rows' ``image``)."""
    scales = sorted(scales)
    videos = [record_images(item["image"]) for item in items]
    counts = [len(video) for video in videos]
    grids, sizes = encode_images(model, processor, [frame for video in videos for frame in video])
    compact = compact_prompts(processor, [question_of(item) for item in items], sizes, num_images=counts)
    embeddings = scale_one_embedding(grids)
    size_list = None if sizes is None else sizes.tolist()
    tokens = np.array([image_token_counts(model.config, s, size_list, num_images=len(grids)) for s in scales]).T
    outputs = {}
    for position in range(max(counts)):
        for value in scales:
            plan = [value if frame == position else scales[0] for count in counts for frame in range(count)]
            outputs[position, value] = generate_at_scale(model, processor, compact, grids, sizes, plan, max_new_tokens)
    rows, offset = [], 0
    for index, item in enumerate(items):
        answers = [answer_of(item)]
        frame_scores = np.array(
            [[score("exact_match", outputs[f, s].answers[index], answers) for s in scales]
             for f in range(counts[index])]
        )  # fmt: skip
        correct = frame_scores >= CORRECT_THRESHOLD
        oracle, none_correct = paper_oracle(correct, scales)
        monotone, unreachable = monotone_oracle(correct, scales)
        for frame in range(counts[index]):
            row = {
                "sample_id": f"{item['id']}#frame{frame}",
                "image_id": str(item.get("image_id", item["id"])),
                "image": paths[index][frame],
                "question": question_of(item),
                "family": item.get("family"),
                "metric": "exact_match",
                "answers": answers,
                "choices": None,
                "embedding": embeddings[offset + frame].tolist(),
            }
            for column, value in enumerate(scales):
                output = outputs[frame, value]
                row[f"answer_{value}"] = output.answers[index]
                row[f"score_{value}"] = float(frame_scores[frame, column])
                row[f"correct_{value}"] = bool(correct[frame, column])
                row[f"confidence_{value}"] = float(output.confidences[index])
                row[f"tokens_{value}"] = int(tokens[offset + frame, column])  # the frame's own tokens: its cost
                row[f"eos_{value}"] = bool(output.eos[index])
            row.update(
                oracle_scale=int(oracle[frame]),
                oracle_none_correct=bool(none_correct[frame]),
                oracle_monotone_scale=int(monotone[frame]),
                oracle_monotone_unreachable=bool(unreachable[frame]),
            )
            rows.append(row)
        offset += counts[index]
    return rows


def build_frame_oracle(
    model_dir: str | os.PathLike,
    data_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    scales: Sequence[int] | None = None,
    batch_size: int = 8,
    shard_size: int = 64,
    max_new_tokens: int = 4,
    limit: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the per-frame oracle of ``model_dir`` on the multi-image records of a LLaVA JSON file (e.g. a frames
    split) to ``out_dir`` (manifest + Parquet shards of ``shard_size`` records, through the build path of
    :func:`oracle_data.build_oracle`: a rerun finishes a killed build, another model or data is refused). Returns
    the manifest path."""
    from m3.loading import load_m3_config, load_m3_model
    from m3.pooling import check_scales
    from m3.processing import M3Processor

    started = time.perf_counter()
    if min(batch_size, shard_size, max_new_tokens) < 1:
        raise ValueError("batch_size, shard_size and max_new_tokens must be >= 1")
    data_path, out_dir = Path(data_path), Path(out_dir)
    image_root = Path(image_root) if image_root is not None else data_path.parent
    dataset = LlavaDataset(data_path, image_root)
    chosen = [i for i, record in enumerate(dataset.records) if len(record_images(record.get("image"))) > 1]
    chosen = chosen[:limit] if limit is not None else chosen
    if not chosen:
        raise ValueError(f"{data_path} holds no record with several images: the frame oracle needs videos")
    records = [dataset.records[i] for i in chosen]
    check_image_files([(path, f"record {r['id']}") for r in records for path in dataset.image_files(r)])
    config = load_m3_config(model_dir)
    scales = check_scales(scales or config.m3_scales, config.grid_tokens)
    shards = [chosen[start : start + shard_size] for start in range(0, len(chosen), shard_size)]
    num_rows = sum(len(record_images(record["image"])) for record in records)
    schema = store.oracle_schema(scales)
    manifest = {
        "schema_version": store.SCHEMA_VERSION,
        "complete": False,
        "model": model_summary(model_dir, config, scales),
        "data": {
            "path": str(data_path.resolve()),
            "sha256": store.file_sha256(data_path),
            "format": "llava-frames",
            "image_root": str(image_root.resolve()),
            "num_samples": num_rows,
            "num_videos": len(chosen),
            "limit": limit,
        },
        "metric": "exact_match",
        "settings": {
            "kind": "per-frame oracle: one row per frame, answered in its video",
            "context": ORACLE_CONTEXT,
            "max_new_tokens": max_new_tokens,
            "shard_size": shard_size,
            "correct_threshold": CORRECT_THRESHOLD,
            "decoding": "greedy, stops at EOS",
        },
        "build": {"batch_size": batch_size, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "num_shards": len(shards),
        "shards": [],
        "num_rows": 0,
        "columns": schema.names,
    }
    model = processor = None

    def rows_of(shard: Sequence[int], advance) -> list[dict]:
        nonlocal model, processor
        if model is None:
            model = load_m3_model(model_dir).eval()
            processor = M3Processor.from_pretrained(model_dir, config=model.config)
        rows = []
        for start in range(0, len(shard), batch_size):
            batch = shard[start : start + batch_size]
            items = [dataset[i] for i in batch]
            paths = [record_images(dataset.records[i]["image"]) for i in batch]
            rows += frame_oracle_rows(model, processor, items, scales, paths, max_new_tokens)
            advance(len(batch))
        return rows

    def sample_ids(shard: Sequence[int]) -> list[str]:  # as frame_oracle_rows names its rows
        records = [dataset.records[i] for i in shard]
        return [f"{r['id']}#frame{frame}" for r in records for frame in range(len(record_images(r["image"])))]

    return write_oracle(
        out_dir, manifest, shards, rows_of, schema, sample_ids, started, progress=progress, desc="frame oracle",
        unit="video",
    )  # fmt: skip
