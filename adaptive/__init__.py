"""Adaptive M3: answer each query at the scale a predictor picks (depends on m3, oracle_data and predictor)."""

from .budget import allocate_scales, uniform_scale
from .model import AdaptiveAnswer, AdaptiveM3, FrameAllocation, FramesAnswer, load_rgb

__all__ = [
    "AdaptiveAnswer",
    "AdaptiveM3",
    "FrameAllocation",
    "FramesAnswer",
    "allocate_scales",
    "load_rgb",
    "uniform_scale",
]
