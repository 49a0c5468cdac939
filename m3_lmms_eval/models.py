"""The lmms-eval models. Both answer with the project's own inference code: ``m3`` encodes each distinct image of a
batch once and answers at its scale (:mod:`m3.inference`, the oracle's loop), ``m3_adaptive`` calls
:meth:`adaptive.AdaptiveM3.generate`. Each answer reports the visual tokens it used (``token_counts`` in lmms-eval's
``--log_samples`` output: ``visual_tokens``, ``scale``, ``input_tokens``). One process: both report rank 0 of 1,
so run them without ``accelerate launch`` (a multi-GPU run would answer every request in every process)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from loguru import logger
from PIL import Image

from m3.images import open_rgb, to_rgb

DEFAULT_MAX_NEW_TOKENS = 32  # when a task's generation_kwargs set no max_new_tokens


@dataclass
class VisualTokenCounts(TokenCounts):
    """lmms-eval's per-request token counts plus the visual tokens the LLM saw and the scale they came from."""

    visual_tokens: int | None = None
    scale: int | None = None

    def to_dict(self) -> dict:
        counts = super().to_dict()
        counts.update(visual_tokens=self.visual_tokens, scale=self.scale)
        return counts


def _number(value, name: str, kind=float):
    """A model arg (lmms-eval passes strings or numbers) as ``kind``; None for an empty or "none" value."""
    if value is None or value == "" or (isinstance(value, str) and value.lower() == "none"):
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"model arg {name}={value!r} is not a number") from None


def _device(device: str | None) -> torch.device:
    """lmms-eval's ``--device`` (unset: CUDA when there is one); a CUDA device without CUDA is refused early."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; pass --device cpu")
    return torch.device(device)


def _dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on GPU (the paper's setting), float32 on CPU (the oracle's, so answers agree)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if not hasattr(torch, str(dtype)) or not isinstance(getattr(torch, dtype), torch.dtype):
        raise ValueError(f"model arg dtype={dtype!r} is not a torch dtype (float32, bfloat16, float16 or auto)")
    return getattr(torch, dtype)


def _image(visuals, where: str) -> Image.Image:
    """The one image of a request (M3 answers about one image per question)."""
    visuals = list(visuals or [])
    if len(visuals) != 1:
        raise ValueError(f"{where}: M3 answers about exactly one image per question, got {len(visuals)} visuals")
    visual = visuals[0]
    if isinstance(visual, str):
        return open_rgb(visual, where)
    if not isinstance(visual, Image.Image):
        raise ValueError(f"{where}: expected a PIL image, got {type(visual).__name__} (videos are not supported)")
    return to_rgb(visual, where)


def _truncate(text: str, until) -> str:
    """Cut a generation at the first stop string of the task (``until``)."""
    for stop in [until] if isinstance(until, str) else until or []:
        if stop:
            text = text.split(stop)[0]
    return text.strip()


class _M3Base(lmms):
    """What both models share: argument checks, request unpacking, batching by generation settings."""

    is_simple = True

    def __init__(self, batch_size=1, max_batch_size=None, device=None, **unknown) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown model arg(s) {sorted(unknown)}")
        self.batch_size = _number(batch_size, "batch_size", int) or 1
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self.device = _device(device)
        self._warned_sampling = False

    def _unpack(self, request: Instance) -> tuple[str, dict, Image.Image]:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        doc = self.task_dict[task][split][doc_id]
        return context, dict(gen_kwargs or {}), _image(doc_to_visual(doc), f"task {task} split {split} doc {doc_id}")

    def _settings(self, gen_kwargs: dict) -> tuple[int, dict]:
        """``(max_new_tokens, extra generate kwargs)``; sampling settings are ignored: M3 decodes greedily here."""
        if float(gen_kwargs.get("temperature") or 0) > 0 or gen_kwargs.get("do_sample"):
            if not self._warned_sampling:
                logger.warning(f"{type(self).__name__} decodes greedily; the task's sampling settings are ignored")
                self._warned_sampling = True
        max_new_tokens = int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
        beams = int(gen_kwargs.get("num_beams") or 1)
        return max_new_tokens, ({"num_beams": beams} if beams > 1 else {})

    def _batches(self, requests: Sequence[Instance]) -> list[list[int]]:
        """Request indices in order, cut into batches of ``batch_size`` with equal generation settings."""
        batches: list[list[int]] = []
        previous = None
        for index, request in enumerate(requests):
            key = json.dumps(request.args[1], sort_keys=True, default=str)
            if batches and key == previous and len(batches[-1]) < self.batch_size:
                batches[-1].append(index)
            else:
                batches.append([index])
            previous = key
        return batches

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        for batch in self._batches(requests):
            unpacked = [self._unpack(requests[i]) for i in batch]
            gen_kwargs = unpacked[0][1]
            max_new_tokens, extra = self._settings(gen_kwargs)
            outputs = self._answer([u[0] for u in unpacked], [u[2] for u in unpacked], max_new_tokens, extra)
            for index, (text, counts) in zip(batch, outputs):
                results[index] = GenerationResult(text=_truncate(text, gen_kwargs.get("until")), token_counts=counts)
        self._report(results)
        return results

    def _answer(self, contexts, images, max_new_tokens, extra) -> list[tuple[str, VisualTokenCounts]]:
        raise NotImplementedError

    def _report(self, results: list[GenerationResult]) -> None:
        tokens = [r.token_counts.visual_tokens for r in results]
        scales = Counter(r.token_counts.scale for r in results)
        if tokens:
            logger.info(
                f"{type(self).__name__}: {len(tokens)} answers, mean visual tokens {sum(tokens) / len(tokens):.1f}, "
                f"answers per scale {dict(sorted(scales.items()))}"
            )

    def loglikelihood(self, requests):
        raise NotImplementedError(
            f"{type(self).__name__} answers by generation only: loglikelihood tasks (multiple choice by likelihood, "
            "perplexity) are not supported; use a generate_until task"
        )

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(
            f"{type(self).__name__} answers single-turn questions only: multi-round tasks are not supported"
        )


class M3(_M3Base):
    """An M3 model answering at one scale: ``--model m3 --model_args pretrained=DIR,scale=S[,dtype=...]``.

    ``scale`` defaults to the checkpoint's ``m3_default_scale``. Each distinct image of a batch goes through the
    vision tower once (:func:`m3.inference.encode_images`), and :func:`m3.inference.generate_at_scale` answers from
    the pooled grid, greedily: the answers ``scripts/build_oracle.py`` records at that scale.
    """

    def __init__(self, pretrained: str, scale=None, dtype: str = "auto", **kwargs) -> None:
        super().__init__(**kwargs)
        from m3.loading import load_m3_model
        from m3.pooling import check_scale
        from m3.processing import M3Processor

        self.model = load_m3_model(pretrained, dtype=_dtype(dtype, self.device)).to(self.device).eval()
        self.processor = M3Processor.from_pretrained(pretrained, config=self.model.config)
        config = self.model.config
        scale = _number(scale, "scale", int)
        self.scale = check_scale(scale if scale is not None else config.m3_default_scale, config.grid_tokens)

    def _answer(self, contexts, images, max_new_tokens, extra):
        from m3.inference import compact_prompts, encode_images, generate_at_scale

        keys = [hashlib.sha1(image.tobytes() + repr((image.size, image.mode)).encode()).hexdigest() for image in images]
        unique = list(dict.fromkeys(keys))
        grids, sizes = encode_images(self.model, self.processor, [images[keys.index(key)] for key in unique])
        index = torch.tensor([unique.index(key) for key in keys])
        image_sizes = None if sizes is None else sizes[index]
        compact = compact_prompts(self.processor, contexts, image_sizes)
        output = generate_at_scale(
            self.model, self.processor, compact, [grids[i] for i in index.tolist()], image_sizes, self.scale,
            max_new_tokens, **extra,
        )  # fmt: skip
        lengths = compact["attention_mask"].sum(1).tolist()  # compact prompts: one image token each
        return [
            (answer, VisualTokenCounts(input_tokens=int(n) - 1 + t, visual_tokens=t, scale=self.scale))
            for answer, n, t in zip(output.answers, lengths, output.tokens)
        ]


class M3Adaptive(_M3Base):
    """An :class:`adaptive.AdaptiveM3` folder: ``--model m3_adaptive --model_args pretrained=DIR[,threshold=T]
    [,budget=B]``.

    ``threshold`` overrides the saved one (the probability a scale must reach). ``budget`` caps the visual tokens
    of each query (AdaptiveM3's ``max_tokens``): the router picks among the scales within it.
    """

    def __init__(self, pretrained: str, threshold=None, budget=None, dtype: str = "auto", **kwargs) -> None:
        super().__init__(**kwargs)
        from adaptive import AdaptiveM3

        self.adaptive = AdaptiveM3.from_pretrained(pretrained, dtype=_dtype(dtype, self.device))
        self.adaptive.model.to(self.device)
        self.threshold = _number(threshold, "threshold")
        self.budget = _number(budget, "budget", int)
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        self.routing: list[dict] = []  # per answer: scale, visual tokens, P(correct) per scale

    def _answer(self, contexts, images, max_new_tokens, extra):
        from m3.inference import compact_prompts

        answers = self.adaptive.generate(
            images, list(contexts), threshold=self.threshold, max_tokens=self.budget, max_new_tokens=max_new_tokens,
            **extra,
        )  # fmt: skip
        lengths = compact_prompts(self.adaptive.processor, contexts)["attention_mask"].sum(1).tolist()
        outputs = []
        for answer, n in zip(answers, lengths):
            self.routing.append(
                {"scale": answer.scale, "visual_tokens": answer.visual_tokens, "probabilities": answer.probabilities}
            )
            counts = VisualTokenCounts(  # the prompt holds one image token, expanded to the visual tokens
                input_tokens=int(n) - 1 + answer.visual_tokens, visual_tokens=answer.visual_tokens, scale=answer.scale
            )
            outputs.append((answer.answer, counts))
        return outputs
