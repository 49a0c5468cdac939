"""Adaptive M3: answer each query at the scale a predictor picks (depends on m3, oracle_data and predictor).

:mod:`adaptive.model` holds ``AdaptiveM3`` and its routing, :mod:`adaptive.frames` its answers over many frames
under one budget (the knapsack itself is :func:`predictor.budget.allocate_scales`)."""

from .frames import FrameAllocation, FramesAnswer
from .inputs import load_rgb
from .model import AdaptiveAnswer, AdaptiveM3

__all__ = [
    "AdaptiveAnswer",
    "AdaptiveM3",
    "FrameAllocation",
    "FramesAnswer",
    "load_rgb",
]
