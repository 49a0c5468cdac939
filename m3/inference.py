"""Answering at any scale from ONE vision pass: the inference loop that evaluation, the oracle and AdaptiveM3 share.

Encode the images once (:func:`encode_images`: vision tower + projector, full-resolution grids), tokenize the
prompts once in the compact form (one image token per image), then for each scale pool the grids and expand the
prompts (:func:`generate_at_scale`). Answers are greedy by default and stop at EOS; each comes with its mean token
log-probability (a confidence), the visual tokens the LLM saw and whether it ended at EOS.

A prompt may hold several images, each at its own scale (:func:`answer_images`: the frames of a video under one
visual-token budget); a batch may mix scales across its rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .pooling import pool_tokens
from .processing import M3Processor, llava_prompt
from .prompting import per_image_scales


@dataclass
class ScaleOutput:
    """Answers of a batch at one scale."""

    answers: list[str]
    confidences: list[float]  # mean log-probability of the generated tokens, up to and including EOS
    tokens: list[int]  # visual tokens the LLM saw per sample (summed over the sample's images)
    eos: list[bool]  # the answer ended with EOS (False: cut at max_new_tokens)
    hidden: np.ndarray | None = None  # (batch, D) float32 with ``return_hidden``: see :func:`generate_at_scale`


def encode_images(model, processor: M3Processor, images: Sequence) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """``(grids, image_sizes)`` of PIL images in ONE vision pass: one full-resolution projected grid tensor per
    image (``(1, N, D)``; ``(crops, N, D)`` for LLaVA-NeXT) and the image sizes (LLaVA-NeXT) or None."""
    pixels = processor.image_processor(list(images), return_tensors="pt")
    sizes = pixels.get("image_sizes")
    with torch.inference_mode():
        grids = model.model.encode_images(
            pixels["pixel_values"].to(model.device, model.dtype),
            None if sizes is None else sizes.to(model.device),
        )
    return list(grids), sizes


def compact_prompts(
    processor: M3Processor, questions: Sequence[str], image_sizes=None, num_images: int | Sequence[int] = 1
) -> dict:
    """Single-turn prompts (:func:`m3.processing.llava_prompt`) tokenized once with ONE image token per image
    (``num_images`` per prompt: one count for all, or one per prompt), left padded; ``image_sizes`` (LLaVA-NeXT, every
    image in prompt order) ride along for :meth:`M3Processor.expand_to_scale`."""
    counts = [num_images] * len(questions) if isinstance(num_images, int) else list(num_images)
    if len(counts) != len(questions):
        raise ValueError(f"num_images holds {len(counts)} counts for {len(questions)} questions")
    texts = [llava_prompt(question, num_images=count) for question, count in zip(questions, counts)]
    compact = dict(processor(texts, None, expand=False))
    if image_sizes is not None:
        compact["image_sizes"] = image_sizes
    return compact


def eos_token_ids(model, processor: M3Processor) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = processor.tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)


def generate_at_scale(
    model,
    processor: M3Processor,
    compact: dict,
    grids: list,
    image_sizes,
    scale: int | Sequence[int],
    max_new_tokens: int,
    return_hidden: bool = False,
    **generate_kwargs,
) -> ScaleOutput:
    """Answers of the batch at ``scale`` from precomputed grids, with their mean token log-probability.

    ``scale`` is one scale for every image or one per image (in prompt order: row 0's images first), so rows, and the
    images within a row, may sit at different scales. ``compact`` holds the prompts with one image token per image
    (:func:`compact_prompts`); ``generate_kwargs`` go to ``model.generate`` (e.g. ``num_beams``); greedy decoding is
    the default. ``return_hidden`` also returns the LLM's last hidden state (the input of its output layer) at the
    prompt's last position, the state the first answer token is predicted from: a probe of what the model saw."""
    scales = per_image_scales(scale, len(grids), model.config.grid_tokens)
    prompts = processor.expand_to_scale(compact, scales, len(grids))
    input_ids = prompts["input_ids"].to(model.device)
    features = model.model.features_at_scale(
        grids, scales, None if image_sizes is None else image_sizes.to(model.device)
    )
    image_output = BaseModelOutputWithPooling(pooler_output=features)
    image_output.m3_scales = scales  # named by the error for a prompt that does not fit
    placeholders = (compact["input_ids"] == model.config.image_token_id) & compact["attention_mask"].bool()
    row_of_image = torch.arange(len(placeholders)).repeat_interleave(placeholders.sum(1))
    tokens = torch.zeros(len(placeholders), dtype=torch.long).index_add_(
        0, row_of_image, torch.tensor([feature.shape[0] for feature in features], dtype=torch.long)
    )
    settings = dict(do_sample=False, pad_token_id=processor.tokenizer.pad_token_id, **generate_kwargs)
    captured: list[torch.Tensor] = []

    def keep_prefill_state(module, inputs) -> None:
        if not captured:  # the first call is the prefill; prompts are left padded, so -1 is the last prompt token
            captured.append(inputs[0][:, -1, :].float().cpu())

    hook = model.get_output_embeddings().register_forward_pre_hook(keep_prefill_state) if return_hidden else None
    try:
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=prompts["attention_mask"].to(model.device),
                mm_encoder_outputs={"image": image_output},
                max_new_tokens=max_new_tokens,
                output_logits=True,
                return_dict_in_generate=True,
                **settings,
            )
    finally:
        if hook is not None:
            hook.remove()
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
        tokens=tokens.tolist(),
        eos=is_eos.any(1).tolist(),
        hidden=captured[0].numpy() if return_hidden else None,
    )


def answer_at_scales(
    model,
    processor: M3Processor,
    compact: dict,
    grids: list,
    image_sizes,
    scales: Sequence[int],
    max_new_tokens: int,
    hidden_scales: Sequence[int] = (),
    **generate_kwargs,
) -> dict[int, ScaleOutput]:
    """:func:`generate_at_scale` at every scale from the same grids (the vision tower has already run); the
    scales in ``hidden_scales`` also return the last hidden state (``return_hidden``)."""
    outputs = {}
    for scale in scales:
        outputs[scale] = generate_at_scale(
            model, processor, compact, grids, image_sizes, scale, max_new_tokens,
            return_hidden=scale in hidden_scales, **generate_kwargs,
        )  # fmt: skip
    return outputs


def answer_images(
    model,
    processor: M3Processor,
    images: Sequence,
    question: str,
    scales: int | Sequence[int],
    max_new_tokens: int = 32,
    **generate_kwargs,
) -> ScaleOutput:
    """One answer to ``question`` about several images in ONE prompt (one placeholder line per image, in order),
    each image at its own scale (``scales``: one per image, or one for all). A collage, or any single image, is the
    case of one image."""
    grids, sizes = encode_images(model, processor, images)
    compact = compact_prompts(processor, [question], sizes, num_images=len(grids))
    return generate_at_scale(model, processor, compact, grids, sizes, scales, max_new_tokens, **generate_kwargs)


def scale_one_embedding(grids: list[torch.Tensor]) -> np.ndarray:
    """``(samples, D)`` float32: each image's scale-1 token (the base crop's, for LLaVA-NeXT): the predictor input."""
    return torch.stack([pool_tokens(grid[0], 1)[0] for grid in grids]).float().cpu().numpy()
