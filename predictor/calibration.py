"""Choosing a fitted predictor's operating point (a threshold or a price) on held-out calibration data.

:class:`CalibratedRouter` follows scikit-learn's threshold wrappers (``FixedThresholdClassifier``,
``TunedThresholdClassifierCV`` with a prefit estimator): it takes a FITTED scale predictor, ``fit(calibration)``
learns the operating point and what it achieved there as attributes ending in ``_``, and the wrapped predictor is
left as it was. The router then routes (``predict``), serves ``AdaptiveM3`` and ``evaluate_routing`` like a
predictor, and saves as a predictor folder that carries the chosen rule and value.

It routes by one of the two rules of :mod:`predictor.thresholds` (``rule="threshold"`` or ``"price"``) and chooses
the value one of two ways: the cheapest one (fewest mean visual tokens on the calibration data) whose accuracy
matches that data's full-scale accuracy, or, with ``budget=B``, the strictest one (largest threshold, smallest
price) whose calibration mean tokens are at most ``B`` (no labels needed). :class:`CertifiedRouter` overrides
:meth:`CalibratedRouter.choose` with a guarantee: the cheapest value that Learn-then-Test certifies to lose at most
``max_drop`` accuracy against the largest scale, with probability ``1 - delta`` (:mod:`predictor.risk_control`).
"""

from __future__ import annotations

import hashlib
import math
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
from .thresholds import (
    DEFAULT_THRESHOLD,
    PRICE_GRID,
    RULES,
    candidate_prices,
    candidate_thresholds,
    clip_probabilities,
    operating_rule,
    route_by_rule,
)

CERTIFIED_GRID = np.linspace(0.0, 1.0, 1001)[::-1]  # candidate thresholds, strictest first, fixed before any data
CERTIFIED_GRIDS = {"threshold": CERTIFIED_GRID, "price": PRICE_GRID}  # per rule, strictest (most tokens) first
LARGEST = ("threshold", 1.0)  # the operating point that answers every query at the largest scale


def candidates(rule: str, proba: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The values a rule is calibrated over, strictest (most tokens) first: decreasing thresholds
    (:func:`~predictor.thresholds.candidate_thresholds`) or increasing prices
    (:func:`~predictor.thresholds.candidate_prices`). They depend on the probabilities and tokens, never labels."""
    if rule == "threshold":
        return candidate_thresholds(proba)[::-1]
    if rule == "price":
        return candidate_prices(proba, tokens)
    raise ValueError(f"unknown routing rule {rule!r}; choose one of {RULES}")


def operating_point_of(router) -> tuple[str, float]:
    """``(rule, value)`` a fitted predictor or router routes at by default: its ``rule_`` with its ``threshold_``
    or ``price_`` (a predictor saved before prices: the threshold rule at ``threshold_``)."""
    return operating_rule(
        getattr(router, "rule_", "threshold"),
        getattr(router, "threshold_", DEFAULT_THRESHOLD),
        getattr(router, "price_", None),
    )


def describe_operating_point(rule: str, value: float) -> str:
    """How every script and page names an operating point: ``threshold 0.9100`` or ``price 0.0412``."""
    return f"{rule} {value:.4f}"


class CalibratedRouter(BaseEstimator):
    """A fitted scale predictor with an operating point learned on calibration data (never the test set).

    ``rule``: ``"threshold"`` (the smallest scale whose P(correct) reaches the threshold) or ``"price"`` (the scale
    maximising P(correct) minus the price times its share of the largest scale's tokens). ``budget``: None to
    choose the cheapest value whose accuracy on ``X`` matches ``X``'s full-scale accuracy (the most accurate one if
    none does); a mean number of visual tokens to choose the strictest value (largest threshold, smallest price)
    whose mean tokens on ``X`` are at most ``budget``. ``accuracy`` says what a routing's accuracy averages:
    ``"correct"`` or ``"score"``. Tokens are those processed: a probe predictor's include its probe
    (:func:`predictor.costs.routing_costs`).

    ``fit(X)`` (oracle data of images the predictor was not fitted on) sets ``rule_`` and ``threshold_`` or
    ``price_`` (the other one None), and records ``target_accuracy_``, ``tokens_``, ``accuracy_`` (mean tokens and
    accuracy at the operating point on ``X``) and ``n_calibration_``.

    Any fitted estimator with ``scales_`` and ``predict_proba(X)`` (``(n, scales)`` estimates that a scale is
    enough) can be wrapped, e.g. :class:`predictor.reference.ReferenceRouter`; saving needs ``save_pretrained``.
    """

    def __init__(
        self, predictor: ScalePredictor, accuracy: str = "correct", rule: str = "threshold", budget: float | None = None
    ) -> None:
        self.predictor = predictor
        self.accuracy = accuracy
        self.rule = rule
        self.budget = budget

    def fit(self, X, y=None, image_root=None) -> CalibratedRouter:
        """Learn the operating point on calibration oracle data ``X`` (folder, table or OracleSet); ``y`` is
        unused."""
        check_is_fitted(self.predictor, "scales_", msg="the wrapped %(name)s is not fitted yet; fit it first.")
        if self.rule not in RULES:
            raise ValueError(f"unknown routing rule {self.rule!r}; choose one of {RULES}")
        if self.budget is not None and not (isinstance(self.budget, (int, float)) and self.budget > 0):
            raise ValueError(f"budget must be a positive mean number of visual tokens, got {self.budget!r}")
        data = as_oracle_set(X, image_root)
        if len(data) == 0:
            raise ValueError(f"cannot calibrate on 0 samples (from {data.source})")
        values = accuracy_values(data, self.accuracy)
        tokens = routing_costs(data.tokens(), data.scales, probe_scale_of(self.predictor))
        proba = self.predict_proba(data)  # clipped: the probabilities predict() routes on
        rule, value = self.choose(proba, values, tokens, data.scales)
        rule, value = operating_rule(rule, value, value)  # checked as the rule's value: a threshold or a price
        self.rule_ = rule
        self.threshold_ = value if rule == "threshold" else None
        self.price_ = value if rule == "price" else None
        routing = route_by_rule(proba, data.scales, rule, value, tokens)
        self.tokens_, self.accuracy_ = routing_point(routing, values, tokens, data.scales)
        self.target_accuracy_ = float(values[:, -1].mean())
        self.n_calibration_ = len(data)
        self.calibration_source_ = data.source
        return self

    def choose(self, proba: np.ndarray, values: np.ndarray, tokens: np.ndarray, scales) -> tuple[str, float]:
        """The ``(rule, value)`` to route at (``values``/``tokens``: ``(n, scales)`` per-sample accuracy and visual
        tokens processed): among :func:`candidates` of ``rule``, the cheapest whose accuracy reaches the largest
        scale's, or with ``budget`` the strictest within it."""
        points = []
        for value in candidates(self.rule, proba, tokens):
            routing = route_by_rule(proba, scales, self.rule, value, tokens)
            mean_tokens, accuracy = routing_point(routing, values, tokens, scales)
            points.append({"param": float(value), "tokens": mean_tokens, "accuracy": accuracy})
        if self.budget is None:
            return self.rule, operating_point(points, float(values[:, -1].mean()))["param"]
        within = next((p for p in points if p["tokens"] <= self.budget + 1e-9), None)
        if within is None:
            cheapest = min(p["tokens"] for p in points)
            raise ValueError(
                f"budget={self.budget:g} mean visual tokens is below the cheapest routing of the calibration data "
                f"({cheapest:g} per query)"
            )
        return self.rule, within["param"]

    def _check_fitted(self) -> None:
        check_is_fitted(self, "rule_", msg="This %(name)s is not fitted yet; call fit(calibration_data) first.")

    # ---- what AdaptiveM3 and evaluate_routing use: the wrapped predictor's, with this operating point
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

    def predict(self, X, threshold: float | None = None, image_root=None, price: float | None = None) -> np.ndarray:
        """``(n,)`` scales at the learned operating point, or by the threshold rule at ``threshold`` or the priced
        rule at ``price`` (each scale's nominal tokens, a probe's included)."""
        self._check_fitted()
        rule, value = operating_rule(self.rule_, self.threshold_, self.price_, at_threshold=threshold, at_price=price)
        tokens = routing_costs(np.asarray(self.scales_, dtype=np.float64), self.scales_, self.probe_scale_)
        return route_by_rule(self.predict_proba(X, image_root), self.scales_, rule, value, tokens)

    def _save(self, directory: str | os.PathLike, record: dict) -> Path:
        if not hasattr(self.predictor, "save_pretrained"):
            raise TypeError(f"a {type(self.predictor).__name__} cannot be saved (it has no save_pretrained)")
        return self.predictor.save_pretrained(
            directory, threshold=self.threshold_, price=self.price_, calibration=record
        )

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """The wrapped predictor's folder with this operating point (rule and threshold or price) and a record of
        the calibration; :func:`predictor.registry.load_predictor` reads it back as that predictor, routing there."""
        self._check_fitted()
        return self._save(directory, self.record())

    def record(self) -> dict:
        """How the operating point was chosen, as saved in ``predictor.json`` (``calibration``)."""
        return {
            "router": type(self).__name__,
            "rule": self.rule_,
            "value": self.threshold_ if self.rule_ == "threshold" else self.price_,
            "budget": self.budget,
            "accuracy": self.accuracy,
            "data": self.calibration_source_,
            "n": self.n_calibration_,
            "target_accuracy": self.target_accuracy_,
            "tokens": self.tokens_,
            "accuracy_at_operating_point": self.accuracy_,
        }


def check_risk_levels(max_drop: float, delta: float) -> None:
    """``ValueError`` unless the tolerated accuracy drop and the failure probability of a certificate are both in
    (0, 1) (NaN refused): the one check of every certifying path, run before any work (a demo predictor's oracle
    builds, a calibration)."""
    if not 0 < max_drop < 1 or not 0 < delta < 1:
        raise ValueError(f"max_drop and delta must be in (0, 1), got {max_drop} and {delta}")


class CertifiedRouter(CalibratedRouter):
    """A fitted scale predictor with a CERTIFIED threshold or price: with probability at least ``1 - delta`` over the
    draw of the calibration queries, routing there is at most ``max_drop`` less accurate than always answering
    at the largest scale (on queries exchangeable with the calibration data: after a shift, calibrate again on
    labelled samples of the new data).

    ``fit(X)`` runs Learn-then-Test (:func:`predictor.risk_control.certify`) over a fixed grid of the ``rule``'s values
    (:data:`CERTIFIED_GRIDS`), strictest first: thresholds from 1 (everything at the largest scale) down, or prices
    from 0 (the most probable scale) up, with the ``p_value`` test (default ``auto``: ``berger_boos``, exact and
    crediting queries that a smaller scale answers and the largest does not, unless ``n`` is too small for it; then
    the exact ``binomial`` test on loss events). It sets ``certificate_`` (a
    :class:`~predictor.risk_control.Certificate`; its ``threshold`` is None when nothing was certified, and the
    router then answers at the largest scale: threshold 1, whatever its ``rule``) besides
    :class:`CalibratedRouter`'s attributes. The certificate is saved with the predictor and read back as
    ``load_predictor(dir).calibration_["certificate"]``.
    """

    def __init__(
        self,
        predictor: ScalePredictor,
        max_drop: float = 0.02,
        delta: float = 0.1,
        p_value: str = DEFAULT_P_VALUE,
        rule: str = "threshold",
    ) -> None:
        super().__init__(predictor, accuracy="correct", rule=rule)
        self.max_drop = max_drop
        self.delta = delta
        self.p_value = p_value

    def fit(self, X, y=None, image_root=None) -> CertifiedRouter:
        """Certify a threshold or price on labelled calibration oracle data ``X`` (folder, table or OracleSet)."""
        check_risk_levels(self.max_drop, self.delta)
        if self.p_value not in P_VALUE_CHOICES:
            raise ValueError(f"unknown p_value {self.p_value!r}; choose one of {P_VALUE_CHOICES}")
        if self.accuracy != "correct":
            raise ValueError("a certificate bounds the drop in the share of correct answers: accuracy='correct'")
        if self.budget is not None:
            raise ValueError("a certified router chooses its value by the accuracy drop, not a budget: budget=None")
        data = as_oracle_set(X, image_root)
        self._data_sha256 = calibration_sha256(data)
        return super().fit(data)

    def choose(self, proba: np.ndarray, values: np.ndarray, tokens: np.ndarray, scales) -> tuple[str, float]:
        """The cheapest certified value of the rule's grid; the largest scale (threshold 1) when none is."""
        grid, scale_array = CERTIFIED_GRIDS[self.rule], np.asarray(scales)
        routed = np.stack(
            [np.searchsorted(scale_array, route_by_rule(proba, scales, self.rule, v, tokens)) for v in grid]
        )
        self.certificate_ = certify(
            values >= 0.5, routed, grid, tokens, self.max_drop, self.delta, self.p_value,
            data_sha256=getattr(self, "_data_sha256", None), rule=self.rule,
        )  # fmt: skip
        return certified_point(self.certificate_)

    def record(self) -> dict:
        """The calibration record, with the certificate."""
        return {**super().record(), "certificate": self.certificate_.to_dict()}


def unwrapped(router):
    """The fitted predictor a :class:`CalibratedRouter` wraps, or ``router`` itself when it is not one."""
    return router.predictor if isinstance(router, CalibratedRouter) else router


def saved_certificate(predictor) -> Certificate | None:
    """The certificate a loaded predictor (or a fitted :class:`CertifiedRouter`) carries, else None."""
    if isinstance(predictor, CertifiedRouter):
        return getattr(predictor, "certificate_", None)
    record = getattr(predictor, "calibration_", None) or {}
    return Certificate.from_dict(record["certificate"]) if record.get("certificate") else None


CERTIFIED_MATCH = 1e-6  # a threshold is the certified one within this (JSON, sliders); the grid's step is 0.001;
# a price within this share of itself (the price grid is geometric: neighbours differ by 1.6 %)


def certified_point(certificate: Certificate) -> tuple[str, float]:
    """``(rule, value)`` a certificate holds at: its own rule and value, or threshold 1 (every query at the largest
    scale) when nothing cheaper was certified, whatever the rule."""
    return LARGEST if certificate.threshold is None else (certificate.rule, float(certificate.threshold))


def certificate_at(
    certificates: Certificate | Sequence[Certificate] | None, value: float | None, rule: str = "threshold"
):
    """The certificate (of one, or of a menu of them) that holds when routing by ``rule`` at ``value``, else None: not
    certified. A certificate travels with its rule and value and holds there only, so a value passed by hand, edited
    in ``predictor.json`` or ``adaptive_config.json``, or None (a forced scale, a budget) gets None."""
    if value is None or certificates is None:
        return None
    menu = [certificates] if isinstance(certificates, Certificate) else list(certificates)
    return next((c for c in menu if _same_point(certified_point(c), (rule, float(value)))), None)


def _same_point(a: tuple[str, float], b: tuple[str, float]) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "threshold":
        return abs(a[1] - b[1]) <= CERTIFIED_MATCH
    return math.isclose(a[1], b[1], rel_tol=CERTIFIED_MATCH, abs_tol=1e-12)


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
            f"  {describe_operating_point(certificate.rule, certificate.threshold)}; p-value {certificate.p_value:.4g} "
            f"({certificate.p_value_method}; {certificate.tested} candidate {certificate.rule}s tested, strictest "
            "first)",
            f"  on the calibration data: drop {certificate.calibration_drop:.4f}, mean visual tokens processed "
            f"{certificate.calibration_tokens:.1f}"
            + ("" if largest_accuracy is None else f" (largest-scale accuracy there {largest_accuracy:.4f})"),
        ]
    lines.append(f"  calibration data sha256 {certificate.data_sha256}")
    return lines
