"""Scale predictors: learn, per query, the fewest visual tokens that still answer correctly, from oracle data.

``MLPScalePredictor`` (torch MLP on the scale-1 embedding + question features) and ``LGBMScalePredictor``
(LightGBM on image + question features, optionally the embedding) estimate, per scale, the probability of a
correct answer; ``predict(X, threshold=t)`` routes to the smallest scale that reaches ``t``. ``tune`` searches
hyper-parameters with optuna; ``evaluate_routing`` / ``write_evaluation`` compare predictors with the baselines
(fixed scales, random routing, a confidence cascade, the oracles). See docs/predictor.md.
"""

from .base import (
    PredictorMismatchError,
    ScalePredictor,
    check_compatible,
    load_predictor,
    route_by_threshold,
)
from .data import OracleSet, Queries, as_oracle_set, grouped_split, split_oracle
from .evaluation import calibrate_threshold, evaluate_routing, summarize, write_evaluation
from .features import FeatureBuilder, image_features, question_features
from .lgbm import LGBMScalePredictor
from .mlp import MLPScalePredictor
from .routing_metrics import Curve, apgr, cpt
from .tuning import TuningResult, tune

__all__ = [
    "Curve",
    "FeatureBuilder",
    "LGBMScalePredictor",
    "MLPScalePredictor",
    "OracleSet",
    "PredictorMismatchError",
    "Queries",
    "ScalePredictor",
    "TuningResult",
    "apgr",
    "as_oracle_set",
    "calibrate_threshold",
    "check_compatible",
    "cpt",
    "evaluate_routing",
    "grouped_split",
    "image_features",
    "load_predictor",
    "question_features",
    "route_by_threshold",
    "split_oracle",
    "summarize",
    "tune",
    "write_evaluation",
]
