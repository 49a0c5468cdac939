"""The model side of the oracle: answers of a batch of samples at every scale from ONE vision pass.

Per batch: each distinct image is loaded and encoded once (vision tower + projector), the prompts are tokenized
once in the compact form (one image token per image), and for every scale the projected grids are pooled and
the prompts expanded - then one greedy ``generate`` per scale, stopping at EOS, returns the answers and their
token log-probabilities. This is ``m3.evaluation.evaluate_scales``'s design, plus image de-duplication and
confidences, so the answers are the ones ``scripts/evaluate.py`` gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from m3.data.llava import open_rgb
from m3.pooling import pool_tokens
from m3.processing import M3Processor, llava_prompt

from .datasets import Sample
from .labels import monotone_oracle, paper_oracle
from .metrics import CORRECT_THRESHOLD, score


@dataclass
class ScaleOutput:
    """Greedy answers of a batch at one scale."""

    answers: list[str]
    confidences: list[float]  # mean log-probability of the generated tokens, up to and including EOS
    tokens: list[int]  # visual tokens the LLM saw per sample
    eos: list[bool]  # the answer ended with EOS (False: cut at max_new_tokens)


def load_image(sample: Sample) -> Image.Image:
    """The sample's image as PIL RGB; :class:`BadImageError` naming the file and the sample otherwise."""
    return open_rgb(sample.image_path, f"sample {sample.sample_id}")


def eos_token_ids(model, processor: M3Processor) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = processor.tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)


def encode_batch(model, processor: M3Processor, samples: Sequence[Sample]):
    """``(compact prompts, grids per sample, image_sizes per sample or None)``; each distinct image is encoded once."""
    keys = [sample.image_path for sample in samples]
    unique = list(dict.fromkeys(keys))
    first = {path: next(s for s in samples if s.image_path == path) for path in unique}
    pixels = processor.image_processor([load_image(first[path]) for path in unique], return_tensors="pt")
    position = {path: index for index, path in enumerate(unique)}
    index = torch.tensor([position[key] for key in keys])
    unique_sizes = pixels.get("image_sizes")
    grids = model.model.encode_images(
        pixels["pixel_values"].to(model.device, model.dtype),
        None if unique_sizes is None else unique_sizes.to(model.device),
    )
    compact = dict(processor([llava_prompt(sample.prompt) for sample in samples], None, expand=False))
    image_sizes = None if unique_sizes is None else unique_sizes[index]
    if image_sizes is not None:
        compact["image_sizes"] = image_sizes
    return compact, [grids[i] for i in index.tolist()], image_sizes


def generate_at_scale(
    model,
    processor: M3Processor,
    compact: dict,
    grids: list,
    image_sizes,
    scale: int,
    max_new_tokens: int,
    **generate_kwargs,
) -> ScaleOutput:
    """Greedy answers of the batch at ``scale`` from precomputed grids, with their mean token log-probability.

    ``generate_kwargs`` go to ``model.generate`` (e.g. ``num_beams``); greedy decoding is the default."""
    num = len(grids)
    prompts = processor.expand_to_scale(compact, scale, num)
    input_ids = prompts["input_ids"].to(model.device)
    features = model.model.features_at_scale(
        grids, scale, None if image_sizes is None else image_sizes.to(model.device)
    )
    settings = dict(do_sample=False, pad_token_id=processor.tokenizer.pad_token_id, **generate_kwargs)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=prompts["attention_mask"].to(model.device),
        mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=features)},
        max_new_tokens=max_new_tokens,
        output_logits=True,
        return_dict_in_generate=True,
        **settings,
    )
    new_tokens = output.sequences[:, input_ids.shape[1] :]
    logits = torch.stack(output.logits, dim=1).float()  # raw logits: (batch, generated, vocab)
    log_probs = logits.log_softmax(-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
    is_eos = torch.isin(new_tokens, torch.tensor(eos_token_ids(model, processor), device=new_tokens.device))
    before_eos = (is_eos.long().cumsum(1) - is_eos.long()) == 0  # up to and including the first EOS
    confidences = (log_probs * before_eos).sum(1) / before_eos.sum(1).clamp(min=1)
    answers = [text.strip() for text in processor.batch_decode(new_tokens)]
    return ScaleOutput(
        answers=answers,
        confidences=confidences.tolist(),
        tokens=[feature.shape[0] for feature in features],
        eos=is_eos.any(1).tolist(),
    )


def scale_one_embedding(grids: list[torch.Tensor]) -> np.ndarray:
    """``(samples, D)`` float32: each image's scale-1 token (the base crop's, for LLaVA-NeXT): the predictor input."""
    return torch.stack([pool_tokens(grid[0], 1)[0] for grid in grids]).float().cpu().numpy()


def answer_batch(
    model, processor: M3Processor, samples: Sequence[Sample], scales: Sequence[int], max_new_tokens: int
) -> tuple[dict[int, ScaleOutput], np.ndarray]:
    """Answers at every scale and the scale-1 embeddings of one batch (the vision tower runs once per image)."""
    with torch.inference_mode():
        compact, grids, image_sizes = encode_batch(model, processor, samples)
        outputs = {
            scale: generate_at_scale(model, processor, compact, grids, image_sizes, scale, max_new_tokens)
            for scale in scales
        }
        return outputs, scale_one_embedding(grids)


def oracle_rows(
    model,
    processor: M3Processor,
    samples: Sequence[Sample],
    scales: Sequence[int],
    max_new_tokens: int = 8,
) -> list[dict]:
    """Oracle table rows (see :func:`oracle_data.store.load_oracle`) of one batch of samples."""
    scales = sorted(scales)
    outputs, embeddings = answer_batch(model, processor, samples, scales, max_new_tokens)
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
        row.update(
            oracle_scale=int(oracle[i]),
            oracle_none_correct=bool(none_correct[i]),
            oracle_monotone_scale=int(monotone[i]),
            oracle_monotone_unreachable=bool(unreachable[i]),
        )
        rows.append(row)
    return rows
