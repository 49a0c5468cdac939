"""The model side of the oracle: answers of a batch of samples at every scale from ONE vision pass.

Per batch: each distinct image is loaded and encoded once, and :func:`m3.inference.answer_at_scales` answers every
scale from those grids - the loop ``scripts/evaluate.py`` runs too, so the answers are the ones it gets. This
module adds image de-duplication, scoring and the oracle labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from m3.images import open_rgb
from m3.inference import ScaleOutput, answer_at_scales, compact_prompts, encode_images, scale_one_embedding
from m3.metrics import CORRECT_THRESHOLD, score
from m3.processing import M3Processor

from .datasets import Sample
from .labels import monotone_oracle, paper_oracle


def load_image(sample: Sample) -> Image.Image:
    """The sample's image as PIL RGB; :class:`BadImageError` naming the file (or the dataset row) otherwise."""
    if sample.dataset_image is not None:
        return sample.dataset_image.open()
    return open_rgb(sample.image_path, f"sample {sample.sample_id}")


def encode_batch(model, processor: M3Processor, samples: Sequence[Sample]):
    """``(compact prompts, grids per sample, image_sizes per sample or None)``; each distinct image is encoded once."""
    keys = [sample.image_key for sample in samples]
    unique = list(dict.fromkeys(keys))
    first = {key: next(s for s in samples if s.image_key == key) for key in unique}
    grids, unique_sizes = encode_images(model, processor, [load_image(first[path]) for path in unique])
    position = {path: index for index, path in enumerate(unique)}
    index = torch.tensor([position[key] for key in keys])
    image_sizes = None if unique_sizes is None else unique_sizes[index]
    compact = compact_prompts(processor, [sample.prompt for sample in samples], image_sizes)
    return compact, [grids[i] for i in index.tolist()], image_sizes


def answer_batch(
    model,
    processor: M3Processor,
    samples: Sequence[Sample],
    scales: Sequence[int],
    max_new_tokens: int,
    hidden_scales: Sequence[int] = (),
) -> tuple[dict[int, ScaleOutput], np.ndarray]:
    """Answers at every scale (with the last hidden state at ``hidden_scales``) and the scale-1 embeddings of one
    batch (the vision tower runs once per image)."""
    compact, grids, image_sizes = encode_batch(model, processor, samples)
    outputs = answer_at_scales(model, processor, compact, grids, image_sizes, scales, max_new_tokens, hidden_scales)
    return outputs, scale_one_embedding(grids)


def oracle_rows(
    model,
    processor: M3Processor,
    samples: Sequence[Sample],
    scales: Sequence[int],
    max_new_tokens: int = 8,
    hidden_scales: Sequence[int] = (),
) -> list[dict]:
    """Oracle table rows (see :func:`oracle_data.store.load_oracle`) of one batch of samples; ``hidden_scales``:
    the scales whose last hidden state is recorded (``hidden_{s}`` columns)."""
    scales = sorted(scales)
    outputs, embeddings = answer_batch(model, processor, samples, scales, max_new_tokens, hidden_scales)
    scores = np.array(
        [
            [score(s.metric, outputs[scale].answers[i], s.answers, s.choices) for scale in scales]
            for i, s in enumerate(samples)
        ]
    ).reshape(len(samples), len(scales))
    correct = scores >= CORRECT_THRESHOLD  # the rule of metrics.is_correct
    oracle, none_correct = paper_oracle(correct, scales)
    monotone, unreachable = monotone_oracle(correct, scales)
    rows = []
    for i, sample in enumerate(samples):
        row = {
            "sample_id": sample.sample_id,
            "image_id": sample.image_id,
            "image": sample.image,
            "question": sample.question,
            "family": sample.family,
            "metric": sample.metric,
            "answers": list(sample.answers),
            "choices": None if sample.choices is None else list(sample.choices),
            "embedding": embeddings[i].tolist(),
        }
        for j, scale in enumerate(scales):
            out = outputs[scale]
            row[f"answer_{scale}"] = out.answers[i]
            row[f"score_{scale}"] = float(scores[i, j])
            row[f"correct_{scale}"] = bool(correct[i, j])
            row[f"confidence_{scale}"] = float(out.confidences[i])
            row[f"tokens_{scale}"] = int(out.tokens[i])
            row[f"eos_{scale}"] = bool(out.eos[i])
            if out.hidden is not None:
                row[f"hidden_{scale}"] = out.hidden[i].tolist()
        row.update(
            oracle_scale=int(oracle[i]),
            oracle_none_correct=bool(none_correct[i]),
            oracle_monotone_scale=int(monotone[i]),
            oracle_monotone_unreachable=bool(unreachable[i]),
        )
        rows.append(row)
    return rows
