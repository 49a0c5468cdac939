"""Routing studies: how scale predictors route a test oracle, against the baselines, and what it costs.

Above :mod:`predictor` (what inference needs: features, estimators, thresholds, certified routing, save/load):
``evaluate_routing`` / ``summarize_routing`` sweep every predictor and baseline (fixed scales, random routing, a
confidence cascade, the oracles) into accuracy / mean-tokens curves and their summaries; ``write_evaluation``
writes them as markdown, CSV, JSON and a plot; :mod:`routing_study.shift` re-evaluates under a distribution
shift, :mod:`routing_study.validity` checks that certificates keep their promise, and :mod:`routing_study.frames`
compares frame allocations at equal budgets. See docs/predictor.md.
"""

from .evaluation import evaluate_routing, summarize_routing
from .report import routing_markdown, write_evaluation

__all__ = ["evaluate_routing", "routing_markdown", "summarize_routing", "write_evaluation"]
