"""Budgets across many images or frames: :func:`predictor.budget.allocate_scales` (the knapsack lives with the
predictors, which also use it for budget routing; this name stays for frame allocation)."""

from predictor.budget import allocate_scales

__all__ = ["allocate_scales"]
