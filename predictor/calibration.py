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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .base import ScalePredictor
from .costs import probe_scale_of, routing_costs
from .data import OracleSet, accuracy_values, as_oracle_set
from .risk_control import DEFAULT_P_VALUE, P_VALUE_CHOICES, Certificate, certify
from .routing_metrics import operating_point, routing_point
from .thresholds import candidate_thresholds, check_threshold, clip_probabilities, route_by_threshold


class CalibratedRouter(BaseEstimator):
    """A fitted scale predictor with an operating threshold learned on calibration data (never the test set).

    ``fit(X)`` (oracle data of images the predictor was not fitted on) sets ``threshold_``, the cheapest valid
    threshold (in [0, 1]) whose accuracy on ``X`` matches ``X``'s full-scale accuracy (the most accurate one if
    none does), and records ``target_accuracy_``, ``tokens_``, ``accuracy_`` (mean tokens and accuracy at
    ``threshold_`` on ``X``) and ``n_calibration_``. ``accuracy`` says what a routing's accuracy averages:
    ``"correct"`` or ``"score"``. Tokens are those processed: a probe predictor's include its probe
    (:func:`predictor.costs.routing_costs`).

    Any fitted estimator with ``scales_`` and ``predict_proba(X)`` (``(n, scales)`` estimates that a scale is
    enough) can be wrapped, e.g. :class:`predictor.reference.ReferenceRouter`; saving needs ``save_pretrained``.
    """

    def __init__(self, predictor: ScalePredictor, accuracy: str = "correct") -> None:
        self.predictor = predictor
        self.accuracy = accuracy

    def fit(self, X, y=None, image_root=None) -> CalibratedRouter:
        """Learn the threshold on calibration oracle data ``X`` (folder, table or OracleSet); ``y`` is unused."""
        check_is_fitted(self.predictor, "scales_", msg="the wrapped %(name)s is not fitted yet; fit it first.")
        data = as_oracle_set(X, image_root)
        if len(data) == 0:
            raise ValueError(f"cannot calibrate on 0 samples (from {data.source})")
        values = accuracy_values(data, self.accuracy)
        tokens = routing_costs(data.tokens(), data.scales, probe_scale_of(self.predictor))
        proba = self.predict_proba(data)  # clipped: the probabilities predict() routes on
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
    def fingerprint_(self) -> dict | None:
        return getattr(self.predictor, "fingerprint_", None)

    @property
    def target(self) -> str:
        return getattr(self.predictor, "target", "correct")

    @property
    def probe_scale_(self) -> int | None:
        return probe_scale_of(self.predictor)

    def predict_proba(self, X, image_root=None) -> np.ndarray:
        """The wrapped predictor's ``(n, scales)`` probabilities, every scale but the largest under 1
        (:func:`predictor.thresholds.clip_probabilities`; a scale predictor's already are), so that threshold 1
        means "always the largest scale" whatever is wrapped (a per-group rate can be exactly 1)."""
        proba = self.predictor.predict_proba(X) if image_root is None else self.predictor.predict_proba(X, image_root)
        return clip_probabilities(proba)

    def predict_label_proba(self, X, image_root=None) -> np.ndarray:
        return self.predictor.predict_label_proba(X, image_root)

    def predict(self, X, threshold: float | None = None, image_root=None) -> np.ndarray:
        """``(n,)`` scales by the threshold rule at ``threshold`` (default: the learned ``threshold_``)."""
        self._check_fitted()
        threshold = check_threshold(self.threshold_ if threshold is None else threshold)
        return route_by_threshold(self.predict_proba(X, image_root), self.scales_, threshold)

    def _save(self, directory: str | os.PathLike, record: dict) -> Path:
        if not hasattr(self.predictor, "save_pretrained"):
            raise TypeError(f"a {type(self.predictor).__name__} cannot be saved (it has no save_pretrained)")
        return self.predictor.save_pretrained(directory, threshold=self.threshold_, calibration=record)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """The wrapped predictor's folder with ``threshold_`` as its threshold and a record of the calibration;
        :func:`predictor.registry.load_predictor` reads it back as that predictor, routing at ``threshold_``."""
        self._check_fitted()
        return self._save(directory, self.record())

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
    1 (everything at the largest scale) down, with the ``p_value`` test (default ``auto``: ``berger_boos``, exact
    and crediting queries that a smaller scale answers and the largest does not, unless ``n`` is too small for it;
    then the exact ``binomial`` test on loss events). It sets ``certificate_`` (a
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
        if self.p_value not in P_VALUE_CHOICES:
            raise ValueError(f"unknown p_value {self.p_value!r}; choose one of {P_VALUE_CHOICES}")
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


CERTIFIED_MATCH = 1e-6  # a threshold is the certified one within this (JSON, sliders); the grid's step is 0.001


def certified_threshold(certificate: Certificate) -> float:
    """The threshold a certificate holds at: its own, or 1 (every query at the largest scale) when nothing cheaper
    was certified."""
    return 1.0 if certificate.threshold is None else float(certificate.threshold)


def certificate_at(certificates: Certificate | Sequence[Certificate] | None, threshold: float | None):
    """The certificate (of one, or of a menu of them) that holds when routing at ``threshold``, else None: not
    certified. A certificate travels with its threshold and holds there only, so a threshold passed by hand, edited
    in ``predictor.json`` or ``adaptive_config.json``, or None (a forced scale, a budget) gets None."""
    if threshold is None or certificates is None:
        return None
    menu = [certificates] if isinstance(certificates, Certificate) else list(certificates)
    return next((c for c in menu if abs(certified_threshold(c) - float(threshold)) <= CERTIFIED_MATCH), None)


def calibration_sha256(data: OracleSet) -> str:
    """Identifies calibration data: the sample ids with their per-scale correctness and visual tokens."""
    digest = hashlib.sha256()
    digest.update("\n".join(str(i) for i in data.column("sample_id")).encode())
    digest.update(np.ascontiguousarray(data.correct()).tobytes())
    digest.update(np.ascontiguousarray(data.tokens()).tobytes())
    return digest.hexdigest()


def certificate_lines(certificate: Certificate, largest_accuracy: float | None = None) -> list[str]:
    """A certificate in words, one fact per line (what ``scripts/calibrate_router.py`` prints)."""
    lines = [
        f"certificate: with probability >= {1 - certificate.delta:g} over the calibration draw, routing loses at most "
        f"{certificate.epsilon:g} accuracy against always the largest scale (on data like the calibration set)",
        f"  eps {certificate.epsilon:g}, delta {certificate.delta:g}, n {certificate.n} calibration queries",
    ]
    if certificate.threshold is None:
        lines.append(
            f"  nothing cheaper was certified ({certificate.p_value_method} test, {certificate.tested} candidate(s) "
            "tested): the router answers every query at the largest scale"
        )
    else:
        lines += [
            f"  threshold {certificate.threshold:.4f}; p-value {certificate.p_value:.4g} "
            f"({certificate.p_value_method}; {certificate.tested} candidate thresholds tested, strictest first)",
            f"  on the calibration data: drop {certificate.calibration_drop:.4f}, mean visual tokens processed "
            f"{certificate.calibration_tokens:.1f}"
            + ("" if largest_accuracy is None else f" (largest-scale accuracy there {largest_accuracy:.4f})"),
        ]
    lines.append(f"  calibration data sha256 {certificate.data_sha256}")
    return lines
