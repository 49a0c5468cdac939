"""Adaptive M3: answer each query at the scale a predictor picks (depends on m3, oracle_data and predictor)."""

from .budget import allocate_scales
from .model import AdaptiveAnswer, AdaptiveM3, FrameAllocation, load_rgb

__all__ = ["AdaptiveAnswer", "AdaptiveM3", "FrameAllocation", "allocate_scales", "load_rgb"]
