"""Many frames, one budget: :class:`FramesMixin` gives :class:`adaptive.AdaptiveM3` its frame answers.

A video's frames (or any images) are answered in ONE multi-image prompt, each frame at its own scale, under a total
visual-token budget: the predictor's knapsack (:func:`predictor.budget.allocate_scales`) spends the tokens on the
frames it expects to matter, the uniform baseline gives every frame the largest common scale, and the collage
(:func:`m3.video.collage`, the paper's video protocol) tiles the frames into one image. One vision pass
(:meth:`FramesMixin.encode_frames`) serves every allocation of the same videos.

The mixin (as transformers' ``GenerationMixin`` gives a model ``generate``) uses the host's ``model``,
``processor``, ``scales``, ``probe_scale``, ``encode``, ``probabilities``, ``_token_counts`` and ``check_context``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from m3.inference import compact_prompts, generate_at_scale
from m3.pooling import check_scale
from m3.processing import check_question
from m3.prompting import image_token_counts
from m3.video import collage, is_square_only
from predictor.budget import allocate_scales, uniform_scale

from .inputs import as_integer, load_rgb


@dataclass
class FrameAllocation:
    """Scales chosen for a list of frames under one visual-token budget."""

    scales: list[int]
    visual_tokens: list[int]
    probabilities: np.ndarray  # (frames, scales)
    budget: int
    total_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.total_tokens = int(sum(self.visual_tokens))


@dataclass
class FramesAnswer:
    """One answer about several frames (or one collage of them) in ONE prompt, under a visual-token budget."""

    answer: str
    scales: list[int]  # per frame, in order (collage mode: the collage's one scale)
    visual_tokens: list[int]  # per frame (collage mode: the collage's), as the LLM saw them
    budget: int | None  # the budget divided (None: scales given)
    confidence: float  # mean log-probability of the answer's tokens
    allocation: str  # "predictor", "uniform", "given" (scale=) or "collage"
    probabilities: np.ndarray | None = None  # (frames, scales) the predictor's P(correct); None for a collage
    total_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.total_tokens = int(sum(self.visual_tokens))


FRAME_ALLOCATIONS = ("predictor", "uniform")
FRAMES_REMEDY = "Lower the budget or the scale"


@dataclass
class EncodedFrames:
    """Videos after ONE vision pass (:meth:`AdaptiveM3.encode_frames`): every allocation and answer reuses it."""

    questions: list[str]
    pil: list[Image.Image]  # every frame, video after video
    grids: list[torch.Tensor]  # their projected grids
    image_sizes: torch.Tensor | None  # (frames, 2) for LLaVA-NeXT
    tokens: np.ndarray  # (frames, scales) visual tokens of each frame at each predictor scale
    probabilities: np.ndarray  # (frames, scales) the predictor's P(correct) of each frame at each scale
    offsets: list[int]  # video i holds frames offsets[i] to offsets[i + 1]

    def __len__(self) -> int:
        return len(self.questions)

    def frames_of(self, video: int) -> range:
        """The indices (into ``pil``, ``grids``, ``tokens``, ``probabilities``) of a video's frames."""
        return range(self.offsets[video], self.offsets[video + 1])


class FramesMixin:
    """Frame answering for :class:`adaptive.AdaptiveM3` (see the module docstring)."""

    def allocate_frames(self, frames: Sequence, question: str, budget: int) -> FrameAllocation:
        """Scales for every frame (or image) of a list within ``budget`` visual tokens in total, maximising the
        summed probability that each frame's scale is enough (see :func:`predictor.budget.allocate_scales`)."""
        question = check_question(question)
        budget = as_integer(budget, "budget")
        if len(frames) == 0:
            raise ValueError("no frames to allocate a budget to")
        if self.probe_scale is not None:
            raise ValueError("allocate_frames needs a predictor without a probe (this one answers each query first)")
        pil, grids, sizes = self.encode(frames)
        probabilities = self.probabilities(pil, grids, [question] * len(pil))
        counts = self._token_counts(sizes, len(pil))
        scales = allocate_scales(probabilities, budget, scales=self.scales, tokens=counts)
        columns = np.searchsorted(self.scales, scales)
        return FrameAllocation(
            scales=scales.tolist(),
            visual_tokens=counts[np.arange(len(pil)), columns].tolist(),
            probabilities=probabilities,
            budget=budget,
        )

    def answer_frames(
        self,
        frames: Sequence,
        question,
        budget: int | None = None,
        scale: int | Sequence[int] | None = None,
        *,
        allocation: str = "predictor",
        max_new_tokens: int = 32,
        **generation_kwargs,
    ) -> FramesAnswer | list[FramesAnswer]:
        """Answer ``question`` about ``frames`` (a video's frames, or any images) in ONE multi-image prompt, each
        frame at its own scale, under ``budget`` visual tokens in total; a list of videos with a list of questions
        answers a batch. One vision pass gives the predictor's inputs and every frame's tokens.

        ``budget=B``: ``allocation="predictor"`` divides B by the knapsack of :meth:`allocate_frames` (the frames the
        predictor expects to matter get the tokens); ``allocation="uniform"`` gives every frame the largest common
        scale within B (the baseline at an equal budget). ``scale=s`` (no budget) puts every frame at ``s``, or
        ``scale=[s0, s1, ...]`` each frame at its own. A budget below one token per frame (below the cheapest scale
        of every frame, for LLaVA-NeXT) raises ``ValueError``; the budget is never exceeded."""
        single = isinstance(question, str)
        videos, questions = ([list(frames)], [question]) if single else ([list(v) for v in frames], list(question))
        if len(videos) != len(questions):
            raise ValueError(f"{len(videos)} videos for {len(questions)} questions")
        if any(len(video) == 0 for video in videos):
            raise ValueError("a video without frames: give at least one frame per question")
        given = self._frame_settings(videos, budget, scale, allocation, single)
        encoded = self.encode_frames(videos, questions)
        chosen = self.frame_scales(encoded, budget, allocation) if given is None else given
        answers = self.answer_encoded_frames(
            encoded, chosen, budget=budget, allocation="given" if given is not None else allocation,
            max_new_tokens=max_new_tokens, **generation_kwargs,
        )  # fmt: skip
        return answers[0] if single else answers

    def encode_frames(self, videos: Sequence[Sequence], questions: Sequence[str]) -> EncodedFrames:
        """Every frame of every video in ONE vision pass, with each frame's visual tokens and the predictor's
        probabilities at every scale: what :meth:`frame_scales` and :meth:`answer_encoded_frames` reuse, so any
        number of allocations of the same videos cost one pass."""
        questions = [check_question(q) for q in questions]
        pil, grids, sizes = self.encode([frame for video in videos for frame in video])
        return EncodedFrames(
            questions=questions,
            pil=pil,
            grids=grids,
            image_sizes=sizes,
            tokens=self._token_counts(sizes, len(pil)),
            probabilities=self.probabilities(pil, grids, [q for q, video in zip(questions, videos) for _ in video]),
            offsets=np.cumsum([0, *map(len, videos)]).tolist(),
        )

    def frame_scales(self, encoded: EncodedFrames, budget: int, allocation: str = "predictor") -> list[list[int]]:
        """Per video, one scale per frame within ``budget`` visual tokens: the predictor's knapsack
        (:func:`predictor.budget.allocate_scales`) or the largest uniform scale
        (:func:`predictor.budget.uniform_scale`)."""
        if allocation not in FRAME_ALLOCATIONS:
            raise ValueError(f"unknown allocation {allocation!r}; expected one of {list(FRAME_ALLOCATIONS)}")
        plans = []
        for video in range(len(encoded)):
            rows = list(encoded.frames_of(video))
            tokens = encoded.tokens[rows]
            if allocation == "predictor":
                scales = allocate_scales(encoded.probabilities[rows], budget, scales=self.scales, tokens=tokens)
                plans.append([int(value) for value in scales])
            else:
                plans.append([uniform_scale(tokens, budget, scales=self.scales)] * len(tokens))
        return plans

    def answer_encoded_frames(
        self,
        encoded: EncodedFrames,
        scales: Sequence[Sequence[int]],
        videos: Sequence[int] | None = None,
        *,
        budget: int | None = None,
        allocation: str = "given",
        max_new_tokens: int = 32,
        **generation_kwargs,
    ) -> list[FramesAnswer]:
        """Answer the ``videos`` (indices into ``encoded``; default all) of encoded frames in ONE ``generate``, video
        ``videos[i]`` with one scale per frame from ``scales[i]`` (rows and frames may all differ)."""
        videos = list(range(len(encoded))) if videos is None else list(videos)
        if len(scales) != len(videos) or any(len(s) != len(encoded.frames_of(v)) for s, v in zip(scales, videos)):
            raise ValueError("give one scale per frame of every video answered")
        frames = [index for video in videos for index in encoded.frames_of(video)]
        chosen = [int(value) for plan in scales for value in plan]
        sizes = None if encoded.image_sizes is None else encoded.image_sizes[frames]
        counts = [len(plan) for plan in scales]
        compact = compact_prompts(self.processor, [encoded.questions[v] for v in videos], sizes, num_images=counts)
        tokens = image_token_counts(self.model.config, chosen, None if sizes is None else sizes.tolist(), len(chosen))
        starts = np.cumsum([0, *counts]).tolist()
        self.check_context(
            compact, [chosen[a:b] for a, b in zip(starts[:-1], starts[1:])],
            [sum(tokens[a:b]) for a, b in zip(starts[:-1], starts[1:])], max_new_tokens, "prompt", FRAMES_REMEDY,
        )  # fmt: skip
        output = generate_at_scale(
            self.model, self.processor, compact, [encoded.grids[i] for i in frames], sizes, chosen, max_new_tokens,
            **generation_kwargs,
        )  # fmt: skip
        return [
            FramesAnswer(
                answer=output.answers[row],
                scales=chosen[start:end],
                visual_tokens=tokens[start:end],
                budget=budget,
                confidence=output.confidences[row],
                allocation=allocation,
                probabilities=encoded.probabilities[list(encoded.frames_of(video))],
            )
            for row, (video, start, end) in enumerate(zip(videos, starts[:-1], starts[1:]))
        ]

    def answer_collage(
        self,
        frames: Sequence,
        question,
        budget: int | None = None,
        scale: int | None = None,
        *,
        rows: int | None = None,
        cols: int | None = None,
        square: bool | None = None,
        max_new_tokens: int = 32,
        **generation_kwargs,
    ) -> FramesAnswer | list[FramesAnswer]:
        """Answer ``question`` about ``frames`` tiled into ONE image (:func:`m3.video.collage`, IG-VLM's grid, or
        ``rows`` x ``cols``) at ``scale``, or at the largest scale whose tokens fit ``budget``: the paper's video
        protocol, for comparison with :meth:`answer_frames` at an equal budget. A list of videos with a list of
        questions answers a batch (one vision pass).

        LLaVA-NeXT reads the collage through its anyres crops (its token count follows the collage's size);
        LLaVA-1.5 gets it padded to a square (``square``; its image processor would crop an oblong collage)."""
        single = isinstance(question, str)
        videos, questions = ([list(frames)], [question]) if single else ([list(v) for v in frames], list(question))
        if len(videos) != len(questions):
            raise ValueError(f"{len(videos)} videos for {len(questions)} questions")
        questions = [check_question(q) for q in questions]
        if (budget is None) == (scale is None):
            raise ValueError("give the collage a budget= (its largest scale within it is used) or a scale=, not both")
        if scale is not None:
            scale = check_scale(as_integer(scale, "scale"), self.model.config.grid_tokens)
        else:
            budget = as_integer(budget, "budget")
        square = is_square_only(self.model.config) if square is None else square
        tiled = [collage([load_rgb(frame) for frame in video], rows, cols, square=square) for video in videos]
        _, grids, sizes = self.encode(tiled)
        counts = self._token_counts(sizes, len(tiled))
        chosen = [
            scale if scale is not None else uniform_scale(counts[i : i + 1], budget, scales=self.scales)
            for i in range(len(tiled))
        ]
        compact = compact_prompts(self.processor, questions, sizes)
        tokens = image_token_counts(self.model.config, chosen, None if sizes is None else sizes.tolist(), len(chosen))
        self.check_context(compact, chosen, tokens, max_new_tokens, "prompt", FRAMES_REMEDY)
        output = generate_at_scale(
            self.model, self.processor, compact, grids, sizes, chosen, max_new_tokens, **generation_kwargs
        )
        answers = [
            FramesAnswer(
                answer=output.answers[i],
                scales=[chosen[i]],
                visual_tokens=[tokens[i]],
                budget=budget,
                confidence=output.confidences[i],
                allocation="collage",
            )
            for i in range(len(tiled))
        ]
        return answers[0] if single else answers

    def _frame_settings(
        self, videos: list[list], budget, scale, allocation: str, single: bool
    ) -> list[list[int]] | None:
        """Check ``answer_frames``' budget / scale / allocation before any work; the given scales per video (None
        when a budget is divided)."""
        if (budget is None) == (scale is None):
            raise ValueError(
                "give budget= (divided by the predictor, or allocation='uniform') or scale= (every frame at one scale, "
                "or one scale per frame), not both"
            )
        grid = self.model.config.grid_tokens
        if scale is None:
            budget = as_integer(budget, "budget")
            if allocation not in FRAME_ALLOCATIONS:
                raise ValueError(f"unknown allocation {allocation!r}; expected one of {list(FRAME_ALLOCATIONS)}")
            for video in videos:
                if budget < len(video):
                    raise ValueError(
                        f"a budget of {budget} visual tokens is below one token per frame for {len(video)} frames; "
                        "raise the budget or sample fewer frames"
                    )
            return None
        if isinstance(scale, numbers.Integral) and not isinstance(scale, bool):
            return [[check_scale(int(scale), grid)] * len(video) for video in videos]
        per_video = [scale] if single else list(scale)
        if len(per_video) != len(videos) or any(len(s) != len(v) for s, v in zip(per_video, videos)):
            raise ValueError("scale= must be one scale, or one scale per frame (a list per video for a batch)")
        return [[check_scale(as_integer(value, "scale"), grid) for value in values] for values in per_video]
