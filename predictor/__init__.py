"""Scale predictors: learn, per query, the fewest visual tokens that still answer correctly, from oracle data.

``MLPScalePredictor`` (torch MLP on the scale-1 embedding + question features) and ``LGBMScalePredictor``
(LightGBM on image + question features, optionally the embedding) estimate, per scale, the probability of a
correct answer; ``predict(X, threshold=t)`` routes to the smallest scale that reaches ``t``
(:func:`route_by_threshold`, the one threshold rule). ``CalibratedRouter`` learns a predictor's operating threshold
on calibration data, ``CertifiedRouter`` certifies one; ``tune`` searches hyper-parameters with optuna. This package
is what inference needs; the studies that compare predictors with the baselines live in :mod:`routing_study`.
See docs/predictor.md.
"""

from .base import PredictorMismatchError, ScalePredictor, check_compatible
from .calibration import CalibratedRouter, CertifiedRouter, certificate_at, saved_certificate
from .data import OracleSet, Queries, as_oracle_set, grouped_split, split_oracle
from .features import FeatureBuilder, image_features, question_features
from .lgbm import LGBMScalePredictor
from .mlp import MLPScalePredictor
from .registry import PREDICTOR_CLASSES, load_predictor
from .routing_metrics import Curve, apgr, cpt
from .thresholds import check_threshold, route_by_threshold
from .tuning import TuningResult, tune

__all__ = [
    "PREDICTOR_CLASSES",
    "CalibratedRouter",
    "CertifiedRouter",
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
    "certificate_at",
    "check_compatible",
    "check_threshold",
    "cpt",
    "grouped_split",
    "image_features",
    "load_predictor",
    "question_features",
    "route_by_threshold",
    "saved_certificate",
    "split_oracle",
    "tune",
]
