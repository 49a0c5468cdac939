"""Budgets across many images or frames: :func:`predictor.budget.allocate_scales` (the knapsack lives with the
predictors, which also use it for budget routing; this name stays for frame allocation) and the uniform baseline
:func:`predictor.budget.uniform_scale`."""

from predictor.budget import allocate_scales, uniform_scale

__all__ = ["allocate_scales", "uniform_scale"]
