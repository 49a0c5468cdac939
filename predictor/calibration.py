"""Choosing a fitted predictor's operating threshold on held-out calibration data.

:class:`CalibratedRouter` follows scikit-learn's threshold wrappers (``FixedThresholdClassifier``,
``TunedThresholdClassifierCV`` with a prefit estimator): it takes a FITTED scale predictor, ``fit(calibration)``
learns the threshold and what it achieved there as attributes ending in ``_``, and the wrapped predictor is left
as it was. The router then routes (``predict``), serves ``AdaptiveM3`` and ``evaluate_routing`` like a predictor,
and saves as a predictor folder that carries the chosen threshold.

The rule it learns: the cheapest threshold (fewest mean visual tokens on the calibration data) whose accuracy
matches that data's full-scale accuracy. :class:`CertifiedRouter` overrides :meth:`CalibratedRouter.choose_threshold`
with a guarantee: the cheapest threshold that Learn-then-Test certifies to lose at most ``max_drop`` accuracy
against the largest scale, with probability ``1 - delta`` (:mod:`predictor.risk_control`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .base import ScalePredictor
from .data import OracleSet, accuracy_values, as_oracle_set
from .risk_control import DEFAULT_P_VALUE, P_VALUES, Certificate, certify
from .routing_metrics import operating_point, routing_point
from .thresholds import candidate_thresholds, check_threshold, route_by_threshold


class CalibratedRouter(BaseEstimator):
    """A fitted scale predictor with an operating threshold learned on calibration data (never the test set).

    ``fit(X)`` (oracle data of images the predictor was not fitted on) sets ``threshold_``, the cheapest valid
    threshold (in [0, 1]) whose accuracy on ``X`` matches ``X``'s full-scale accuracy (the most accurate one if
    none does), and records ``target_accuracy_``, ``tokens_``, ``accuracy_`` (mean tokens and accuracy at
    ``threshold_`` on ``X``) and ``n_calibration_``. ``accuracy`` says what a routing's accuracy averages:
    ``"correct"`` or ``"score"``.
    """

    def __init__(self, predictor: ScalePredictor, accuracy: str = "correct") -> None:
        self.predictor = predictor
        self.accuracy = accuracy

    def fit(self, X, y=None, image_root=None) -> CalibratedRouter:
        """Learn the threshold on calibration oracle data ``X`` (folder, table or OracleSet); ``y`` is unused."""
        check_is_fitted(self.predictor, "feature_builder_")
        data = as_oracle_set(X, image_root)
        if len(data) == 0:
            raise ValueError(f"cannot calibrate on 0 samples (from {data.source})")
        values, tokens = accuracy_values(data, self.accuracy), data.tokens()
        proba = self.predictor.predict_proba(data)
        self.threshold_ = check_threshold(self.choose_threshold(proba, values, tokens, data.scales))
        routing = route_by_threshold(proba, data.scales, self.threshold_)
        self.tokens_, self.accuracy_ = routing_point(routing, values, tokens, data.scales)
        self.target_accuracy_ = float(values[:, -1].mean())
        self.n_calibration_ = len(data)
        self.calibration_source_ = data.source
        return self

    def choose_threshold(self, proba: np.ndarray, values: np.ndarray, tokens: np.ndarray, scales) -> float:
        """The rule: among :func:`predictor.thresholds.candidate_thresholds`, the cheapest whose accuracy reaches
        the largest scale's (``values``/``tokens``: ``(n, scales)`` per-sample accuracy and visual tokens)."""
        points = []
        for threshold in candidate_thresholds(proba):
            mean_tokens, accuracy = routing_point(route_by_threshold(proba, scales, threshold), values, tokens, scales)
            points.append({"param": float(threshold), "tokens": mean_tokens, "accuracy": accuracy})
        return operating_point(points, float(values[:, -1].mean()))["param"]

    def _check_fitted(self) -> None:
        check_is_fitted(self, "threshold_", msg="This %(name)s is not fitted yet; call fit(calibration_data) first.")

    # ---- what AdaptiveM3 and evaluate_routing use: the wrapped predictor's, with this threshold
    @property
    def scales_(self) -> list[int]:
        return self.predictor.scales_

    @property
    def fingerprint_(self) -> dict:
        return self.predictor.fingerprint_

    @property
    def target(self) -> str:
        return self.predictor.target

    def predict_proba(self, X, image_root=None) -> np.ndarray:
        """The wrapped predictor's ``(n, scales)`` probabilities."""
        return self.predictor.predict_proba(X, image_root)

    def predict_label_proba(self, X, image_root=None) -> np.ndarray:
        return self.predictor.predict_label_proba(X, image_root)

    def predict(self, X, threshold: float | None = None, image_root=None) -> np.ndarray:
        """``(n,)`` scales by the threshold rule at ``threshold`` (default: the learned ``threshold_``)."""
        self._check_fitted()
        return self.predictor.predict(X, self.threshold_ if threshold is None else threshold, image_root)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """The wrapped predictor's folder with ``threshold_`` as its threshold and a record of the calibration;
        :func:`predictor.registry.load_predictor` reads it back as that predictor, routing at ``threshold_``."""
        self._check_fitted()
        return self.predictor.save_pretrained(directory, threshold=self.threshold_, calibration=self.record())

    def record(self) -> dict:
        """How the threshold was chosen, as saved in ``predictor.json`` (``calibration``)."""
        return {
            "rule": type(self).__name__,
            "accuracy": self.accuracy,
            "data": self.calibration_source_,
            "n": self.n_calibration_,
            "target_accuracy": self.target_accuracy_,
            "tokens": self.tokens_,
            "accuracy_at_threshold": self.accuracy_,
        }


CERTIFIED_GRID = np.linspace(0.0, 1.0, 1001)[::-1]  # candidate thresholds, strictest first, fixed before any data


class CertifiedRouter(CalibratedRouter):
    """A fitted scale predictor with a CERTIFIED threshold: with probability at least ``1 - delta`` over the draw of
    the calibration queries, routing at ``threshold_`` is at most ``max_drop`` less accurate than always answering
    at the largest scale (on queries exchangeable with the calibration data: after a shift, calibrate again on
    labelled samples of the new data).

    ``fit(X)`` runs Learn-then-Test (:func:`predictor.risk_control.certify`) over a fixed grid of thresholds, from
    1 (everything at the largest scale) down, with the ``p_value`` test (default ``berger_boos``: exact, credits
    queries that a smaller scale answers and the largest does not). It sets ``certificate_`` (a
    :class:`~predictor.risk_control.Certificate`; its ``threshold`` is None when nothing was certified, and the
    router then answers at the largest scale) besides :class:`CalibratedRouter`'s attributes. The certificate is
    saved with the predictor and read back as ``load_predictor(dir).calibration_["certificate"]``.
    """

    def __init__(
        self, predictor: ScalePredictor, max_drop: float = 0.02, delta: float = 0.1, p_value: str = DEFAULT_P_VALUE
    ) -> None:
        super().__init__(predictor, accuracy="correct")
        self.max_drop = max_drop
        self.delta = delta
        self.p_value = p_value

    def fit(self, X, y=None, image_root=None) -> CertifiedRouter:
        """Certify a threshold on labelled calibration oracle data ``X`` (folder, table or OracleSet)."""
        if not 0 < self.max_drop < 1 or not 0 < self.delta < 1:
            raise ValueError(f"max_drop and delta must be in (0, 1), got {self.max_drop} and {self.delta}")
        if self.p_value not in P_VALUES:
            raise ValueError(f"unknown p_value {self.p_value!r}; choose one of {P_VALUES}")
        if self.accuracy != "correct":
            raise ValueError("a certificate bounds the drop in the share of correct answers: accuracy='correct'")
        data = as_oracle_set(X, image_root)
        self._data_sha256 = calibration_sha256(data)
        return super().fit(data)

    def choose_threshold(self, proba: np.ndarray, values: np.ndarray, tokens: np.ndarray, scales) -> float:
        """The cheapest certified threshold of :data:`CERTIFIED_GRID` (1 when none is: the largest scale)."""
        scale_array = np.asarray(scales)
        routed = np.stack([np.searchsorted(scale_array, route_by_threshold(proba, scales, t)) for t in CERTIFIED_GRID])
        self.certificate_ = certify(
            values >= 0.5, routed, CERTIFIED_GRID, tokens, self.max_drop, self.delta, self.p_value,
            data_sha256=getattr(self, "_data_sha256", None),
        )  # fmt: skip
        return 1.0 if self.certificate_.threshold is None else self.certificate_.threshold

    def record(self) -> dict:
        """The calibration record, with the certificate."""
        return {**super().record(), "certificate": self.certificate_.to_dict()}


def saved_certificate(predictor) -> Certificate | None:
    """The certificate a loaded predictor (or a fitted :class:`CertifiedRouter`) carries, else None."""
    if isinstance(predictor, CertifiedRouter):
        return getattr(predictor, "certificate_", None)
    record = getattr(predictor, "calibration_", None) or {}
    return Certificate.from_dict(record["certificate"]) if record.get("certificate") else None


def calibration_sha256(data: OracleSet) -> str:
    """Identifies calibration data: the sample ids with their per-scale correctness and visual tokens."""
    digest = hashlib.sha256()
    digest.update("\n".join(str(i) for i in data.column("sample_id")).encode())
    digest.update(np.ascontiguousarray(data.correct()).tobytes())
    digest.update(np.ascontiguousarray(data.tokens()).tobytes())
    return digest.hexdigest()
