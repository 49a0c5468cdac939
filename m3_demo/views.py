"""What the demo page draws, as pure functions: the image as the model sees it at a scale, and what a scale saves.

M3 average-pools the 24x24 grid of projected patch features to k x k cells (:func:`m3.pooling.pool_tokens`). The
same arithmetic on the pixels shows what each scale keeps: average each patch's pixels (one "token" per patch),
average the patches of each cell, and paint every cell back over its pixels. Pixels are not features (the vision
tower is not linear), so this is a picture of the pooling's geometry, not of the features themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from m3.flops import estimate_prefill, llava_15_config
from m3.pooling import check_scale, grid_side

MODEL_SIZES = {"LLaVA-1.5-7B": "7b", "LLaVA-1.5-13B": "13b"}
DEFAULT_MODEL_SIZE = "LLaVA-1.5-7B"
FULL_SCALE = 576  # LLaVA-1.5's full grid, the reference every saving is measured against


def patch_means(pixels: np.ndarray, grid_tokens: int = FULL_SCALE) -> np.ndarray:
    """``(side, side, C)`` float64 mean of each patch of an ``(H, W, C)`` image cut into a ``side x side`` grid
    (``side = sqrt(grid_tokens)``); H and W must be multiples of the side, as the model's input always is."""
    side = grid_side(grid_tokens)
    height, width, channels = pixels.shape
    if height % side or width % side:
        raise ValueError(f"a {height}x{width} image does not cut into a {side}x{side} grid of equal patches")
    blocks = np.asarray(pixels, dtype=np.float64).reshape(side, height // side, side, width // side, channels)
    return blocks.mean(axis=(1, 3))


def pooled_cells(pixels: np.ndarray, scale: int, grid_tokens: int = FULL_SCALE) -> np.ndarray:
    """``(k, k, C)`` float64 cells of the image at ``scale`` (k = sqrt(scale)): the patch means average-pooled with
    kernel = stride = side / k, which is what :func:`m3.pooling.pool_tokens` does to the grid's tokens."""
    check_scale(scale, grid_tokens)
    side, k = grid_side(grid_tokens), math.isqrt(scale)
    patches = patch_means(pixels, grid_tokens)
    block = side // k
    return patches.reshape(k, block, k, block, patches.shape[-1]).mean(axis=(1, 3))


def pooled_view(pixels: np.ndarray, scale: int, grid_tokens: int = FULL_SCALE, display_size: int | None = None):
    """``(H', W', C)`` uint8: every pooled cell painted back over its pixels, at the image's size (times the
    smallest whole factor that reaches ``display_size`` pixels, so cells stay sharp when shown larger)."""
    cells = np.clip(np.rint(pooled_cells(pixels, scale, grid_tokens)), 0, 255).astype(np.uint8)
    height, width = pixels.shape[:2]
    k = cells.shape[0]
    factor = 1 if display_size is None else max(1, math.ceil(display_size / max(height, width)))
    return np.repeat(np.repeat(cells, height * factor // k, axis=0), width * factor // k, axis=1)


def model_input_pixels(processor, image) -> np.ndarray:
    """``(H, W, 3)`` uint8: the image as the model's image processor hands it to the vision tower (resized,
    cropped), normalisation undone. For LLaVA-NeXT, the base crop (the whole image, resized)."""
    image_processor = processor.image_processor
    values = image_processor([image], return_tensors="pt")["pixel_values"][0]
    if values.ndim == 4:
        values = values[0]
    values = values.float().numpy()
    if getattr(image_processor, "do_normalize", False):
        mean = np.asarray(image_processor.image_mean, dtype=np.float32)[:, None, None]
        std = np.asarray(image_processor.image_std, dtype=np.float32)[:, None, None]
        values = values * std + mean
    if getattr(image_processor, "do_rescale", False):
        values = values / image_processor.rescale_factor
    return np.clip(np.rint(values), 0, 255).astype(np.uint8).transpose(1, 2, 0)


@dataclass(frozen=True)
class Saving:
    """A routed scale against the full 576 tokens for a real LLaVA-1.5 size: visual tokens and prefill FLOPs."""

    model: str
    scale: int
    visual_tokens: int
    full_tokens: int
    llm_flops: int  # LLM prefill at the routed scale (what changes with the scale)
    full_llm_flops: int
    total_flops: int  # + vision tower, projector and LM head (the same at every scale)
    full_total_flops: int
    text_tokens: int

    @property
    def tokens_saved(self) -> int:
        return self.full_tokens - self.visual_tokens

    @property
    def llm_share_saved(self) -> float:
        return 1.0 - self.llm_flops / self.full_llm_flops

    @property
    def total_share_saved(self) -> float:
        return 1.0 - self.total_flops / self.full_total_flops


@lru_cache(maxsize=4)
def _config(size: str):
    return llava_15_config(size)


def saving(scale: int, model: str = DEFAULT_MODEL_SIZE, text_tokens: int = 30) -> Saving:
    """What answering at ``scale`` instead of 576 tokens saves on ``model`` (:data:`MODEL_SIZES`), from
    :func:`m3.flops.estimate_prefill` with ``text_tokens`` prompt tokens (30: the paper's Table 9 setting)."""
    if model not in MODEL_SIZES:
        raise ValueError(f"unknown model {model!r}; choose one of {list(MODEL_SIZES)}")
    config = _config(MODEL_SIZES[model])
    routed = estimate_prefill(config, scale, text_tokens)
    full = estimate_prefill(config, FULL_SCALE, text_tokens)
    return Saving(
        model=model,
        scale=scale,
        visual_tokens=routed.visual_tokens,
        full_tokens=full.visual_tokens,
        llm_flops=routed.llm_flops,
        full_llm_flops=full.llm_flops,
        total_flops=routed.total_flops,
        full_total_flops=full.total_flops,
        text_tokens=text_tokens,
    )
