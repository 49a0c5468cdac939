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
from .processing import M3Processor
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
    """Single-turn prompts in the model's conversation template (:meth:`M3Processor.prompt`) tokenized once with ONE
    image token per image (``num_images`` per prompt: one count for all, or one per prompt; 0 for a text-only
    question), left padded; ``image_sizes`` (LLaVA-NeXT, every image in prompt order) ride along for
    :meth:`M3Processor.expand_to_scale`."""
    counts = [num_images] * len(questions) if isinstance(num_images, int) else list(num_images)
    if len(counts) != len(questions):
        raise ValueError(f"num_images holds {len(counts)} counts for {len(questions)} questions")
    texts = [processor.prompt(question, count) for question, count in zip(questions, counts)]
    compact = dict(processor(texts, None, expand=False))
    if image_sizes is not None:
        compact["image_sizes"] = image_sizes
    return compact


def image_inputs(features: list[torch.Tensor], scales: list[int]) -> dict | None:
    """``mm_encoder_outputs`` for precomputed per-image features (None for a text-only batch)."""
    if not features:
        return None
    image_output = BaseModelOutputWithPooling(pooler_output=features)
    image_output.m3_scales = scales  # named by the error for a prompt that does not fit
    return {"image": image_output}


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
    images within a row, may sit at different scales; rows without images (text-only questions) are answered too.
    ``compact`` holds the prompts with one image token per image (:func:`compact_prompts`); ``generate_kwargs`` go to
    ``model.generate`` (e.g. ``num_beams``, or ``do_sample``/``temperature``/``top_p``); greedy decoding is the
    default. ``return_hidden`` also returns the LLM's last hidden state (the input of its output layer) at the
    prompt's last position, the state the first answer token is predicted from: a probe of what the model saw."""
    scales = per_image_scales(scale, len(grids), model.config.grid_tokens)
    prompts = processor.expand_to_scale(compact, scales, len(grids))
    input_ids = prompts["input_ids"].to(model.device)
    features = model.model.features_at_scale(
        grids, scales, None if image_sizes is None else image_sizes.to(model.device)
    )
    placeholders = (compact["input_ids"] == model.config.image_token_id) & compact["attention_mask"].bool()
    row_of_image = torch.arange(len(placeholders)).repeat_interleave(placeholders.sum(1))
    tokens = torch.zeros(len(placeholders), dtype=torch.long).index_add_(
        0, row_of_image, torch.tensor([feature.shape[0] for feature in features], dtype=torch.long)
    )
    settings = {"do_sample": False, "pad_token_id": processor.tokenizer.pad_token_id, **generate_kwargs}
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
                mm_encoder_outputs=image_inputs(features, scales),
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


@dataclass
class ContinuationScore:
    """How likely the model finds a continuation of a prompt (lmms-eval's loglikelihood requests)."""

    log_likelihood: float  # sum of the continuation tokens' log-probabilities
    num_tokens: int
    greedy: bool  # greedy decoding from the prompt gives exactly the continuation

    @property
    def mean_nll(self) -> float:
        """Mean negative log-likelihood per continuation token (the loss lmms-eval's own LLaVA models report)."""
        return -self.log_likelihood / self.num_tokens


def continuation_ids(processor: M3Processor, prompts: Sequence[str], continuations: Sequence[str]) -> list[list[int]]:
    """The token ids of each continuation after its prompt: what tokenizing prompt + continuation together adds to
    the prompt's own tokens (as lmms-eval's llava_hf scores them); where the seam tokenizes otherwise, the
    continuation alone."""
    tokenizer = processor.tokenizer
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    whole_ids = tokenizer([p + c for p, c in zip(prompts, continuations)])["input_ids"]
    result = []
    for prompt, whole, continuation in zip(prompt_ids, whole_ids, continuations):
        if whole[: len(prompt)] == prompt and len(whole) > len(prompt):
            result.append(whole[len(prompt) :])
        else:
            result.append(tokenizer(continuation, add_special_tokens=False)["input_ids"])
        if not result[-1]:
            raise ValueError(f"the continuation {continuation!r} holds no token")
    return result


def score_continuations(
    model,
    processor: M3Processor,
    compact: dict,
    continuations: Sequence[Sequence[int]],
    grids: list,
    image_sizes,
    scale: int | Sequence[int],
) -> list[ContinuationScore]:
    """Log-likelihood of each row's continuation tokens after its compact prompt (:func:`compact_prompts`), the
    images at ``scale`` (one for all, or one per image in prompt order) from precomputed grids: one forward pass."""
    scales = per_image_scales(scale, len(grids), model.config.grid_tokens)
    pad = processor.tokenizer.pad_token_id or 0
    rows = [
        ids[mask.bool()].tolist() + list(extra)
        for ids, mask, extra in zip(compact["input_ids"], compact["attention_mask"], continuations)
    ]
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for index, row in enumerate(rows):  # left padded: every continuation ends the row
        input_ids[index, length - len(row) :] = torch.tensor(row)
        attention_mask[index, length - len(row) :] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "image_sizes": compact.get("image_sizes")}
    expanded = processor.expand_to_scale(batch, scales, len(grids))
    features = model.model.features_at_scale(
        grids, scales, None if image_sizes is None else image_sizes.to(model.device)
    )
    mask = expanded["attention_mask"].to(model.device)
    keep = max(len(extra) for extra in continuations) + 1
    with torch.inference_mode():
        logits = model(
            input_ids=expanded["input_ids"].to(model.device),
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            mm_encoder_outputs=image_inputs(features, scales),
            logits_to_keep=keep,
        ).logits.float()
    log_probs = logits.log_softmax(-1)
    targets = expanded["input_ids"][:, -keep:].to(model.device)
    scores = []
    for row, extra in enumerate(continuations):
        count = len(extra)
        predicted = log_probs[row, keep - count - 1 : keep - 1]  # the position before each continuation token
        wanted = targets[row, keep - count :]
        chosen = predicted.gather(-1, wanted.unsqueeze(-1)).squeeze(-1)
        greedy = bool((predicted.argmax(-1) == wanted).all())
        scores.append(ContinuationScore(log_likelihood=float(chosen.sum()), num_tokens=count, greedy=greedy))
    return scores
