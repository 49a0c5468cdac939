"""The standard predictor set, fitted (and tuned) on a training oracle, with a held-out calibration split.

The training oracle is split by image: ``1 - calibration_fraction`` to fit (and tune, on its own grouped
holdout) and ``calibration_fraction`` to choose each predictor's operating threshold
(:class:`predictor.calibration.CalibratedRouter`: the cheapest one that matches full-scale accuracy there;
:func:`certify_routers` certifies thresholds or prices on the same split, :func:`budget_routers` fits prices to
mean-token budgets there). The test oracle is never seen.

Besides the learned predictors, ``question-only`` is the reference router of :mod:`predictor.reference` (per
question family, the train accuracy of each scale): what the question alone tells, the bar a learned router must
clear. ``mlp-probe`` and ``lgbm-probe`` read the model's own answer at scale 1 (its hidden state and confidence;
its confidence): probe predictors, whose cost includes that answer.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .base import ScalePredictor
from .calibration import CalibratedRouter, CertifiedRouter, unwrapped
from .costs import probe_scale_of, routing_costs
from .data import OracleSet, as_oracle_set, split_oracle
from .registry import DEFAULT_PREDICTORS, PREDICTORS
from .risk_control import DEFAULT_P_VALUE
from .thresholds import RULES
from .tuning import tune


def check_trials(n_trials: int) -> int:
    """``n_trials`` if it is a whole number >= 0 (0: each predictor's default parameters); ``ValueError`` naming
    ``--trials`` otherwise (a negative count meant no tuning without a word)."""
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 0:
        raise ValueError(f"--trials must be a whole number >= 0 (0: default parameters), got {n_trials!r}")
    return n_trials


def fit_predictors(
    train,
    names: Sequence[str] = DEFAULT_PREDICTORS,
    n_trials: int = 20,
    seed: int = 0,
    calibration_fraction: float = 0.2,
    accuracy: str = "correct",
    save_dir: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, CalibratedRouter]:
    """Fit (tune when ``n_trials`` > 0) and calibrate each named predictor; save each to ``save_dir/NAME`` (a
    predictor folder routing at the calibrated threshold)."""
    unknown = [name for name in names if name not in PREDICTORS]
    if unknown:
        raise ValueError(f"unknown predictor(s) {unknown}; choose from {sorted(PREDICTORS)}")
    check_trials(n_trials)
    data = as_oracle_set(train)
    fit_data, calibration = calibration_split(data, calibration_fraction, seed)
    data.image_features(progress)  # once for every trial and predictor (cached on the set)
    log(
        f"train oracle {data.source}: {len(data)} samples; fitting on {len(fit_data)}, calibrating the threshold on "
        f"{len(calibration)} (disjoint images)"
    )
    fitted = {}
    for name in names:
        start = time.perf_counter()
        estimator = PREDICTORS[name](seed)
        if not isinstance(estimator, ScalePredictor):  # a reference router: nothing to tune or save
            try:
                estimator.fit(fit_data)
            except (KeyError, OSError, ValueError) as error:
                if estimator.grouping != "attribute":
                    raise
                log(f"{name}: skipped, the oracle's records carry no generator attributes ({error})")
                continue
            router = CalibratedRouter(estimator, accuracy).fit(calibration)
            log(
                f"{name}: per-{estimator.grouping} train accuracy; threshold {router.threshold_:.4f} "
                "(not saved: no weights)"
            )
            fitted[name] = router
            continue
        if n_trials > 0:
            result = tune(estimator, fit_data, n_trials=n_trials, seed=seed, progress=progress)
            predictor = result.estimator
            note = f"tuned ({n_trials} trials, held-out loss {result.best_loss:.4f}): {result.best_params}"
        else:
            predictor = estimator.fit(fit_data)
            note = "default hyper-parameters"
        router = CalibratedRouter(predictor, accuracy).fit(calibration)
        log(f"{name}: {note}; threshold {router.threshold_:.4f}; {time.perf_counter() - start:.1f} s")
        if save_dir is not None:
            router.save_pretrained(Path(save_dir) / name)
        fitted[name] = router
    return fitted


def calibration_split(train, calibration_fraction: float = 0.2, seed: int = 0) -> tuple[OracleSet, OracleSet]:
    """``(fit part, calibration part)`` of a training oracle, by image: the split :func:`fit_predictors` uses."""
    return split_oracle(as_oracle_set(train), calibration_fraction, seed)


def certify_routers(
    routers: dict,
    calibration,
    max_drop: float = 0.02,
    delta: float = 0.1,
    p_value: str = DEFAULT_P_VALUE,
    save_dir: str | os.PathLike | None = None,
    suffix: str | None = None,
    rule: str = "threshold",
) -> dict[str, CertifiedRouter]:
    """A :class:`CertifiedRouter` of ``rule`` around each router's predictor, certified on ``calibration`` (images
    none of them was fitted on); saved to ``save_dir/NAME{suffix}`` where the predictor can be saved (default
    suffix: :func:`certified_suffix`)."""
    suffix = certified_suffix(rule) if suffix is None else suffix
    certified = {}
    for name, router in routers.items():
        predictor = unwrapped(router)
        certified[name] = CertifiedRouter(predictor, max_drop, delta, p_value, rule=rule).fit(calibration)
        if save_dir is not None and hasattr(predictor, "save_pretrained"):
            certified[name].save_pretrained(Path(save_dir) / f"{name}{suffix}")
    return certified


def cheapest_certified(
    certified: dict[str, list[CertifiedRouter]], names: Sequence[str]
) -> tuple[str, CertifiedRouter]:
    """Of the routers ``names`` (each certified by one or more rules, as :func:`calibrate_rules` returns them), the
    ``(name, router)`` whose certified operating point spends the fewest mean tokens on its calibration data; ties go
    to the smaller calibration drop. Chosen without any test label, as a deployment would choose. A router nothing
    could be certified for (it answers at the largest scale) is taken only when no other is left."""
    candidates = [(name, router) for name in names for router in certified.get(name, [])]
    if not candidates:
        raise ValueError(f"none of {list(names)} was certified")

    def cost(candidate: tuple[str, CertifiedRouter]) -> tuple[float, float]:
        certificate = candidate[1].certificate_
        if certificate.threshold is None:
            return math.inf, math.inf
        return certificate.calibration_tokens, certificate.calibration_drop

    return min(candidates, key=cost)


def certified_suffix(rule: str) -> str:
    """The folder suffix of a certified router: ``-certified`` (threshold) or ``-price-certified``."""
    return "-certified" if rule == "threshold" else f"-{rule}-certified"


def budget_routers(
    routers: dict, calibration, shares: Sequence[float], rule: str = "price"
) -> dict[str, dict[float, CalibratedRouter]]:
    """Per router and share, a :class:`CalibratedRouter` of ``rule`` fitted on ``calibration`` to a budget of that
    share of the largest scale's mean tokens there (the strictest value whose calibration mean tokens are within it;
    no label is used)."""
    data = as_oracle_set(calibration)
    fitted = {}
    for name, router in routers.items():
        predictor = unwrapped(router)
        largest = float(routing_costs(data.tokens(), data.scales, probe_scale_of(predictor))[:, -1].mean())
        fitted[name] = {
            share: CalibratedRouter(predictor, rule=rule, budget=share * largest).fit(data) for share in shares
        }
    return fitted


def calibrate_rules(
    routers: dict,
    calibration,
    max_drop: float = 0.02,
    delta: float = 0.1,
    p_value: str = DEFAULT_P_VALUE,
    shares: Sequence[float] = (0.05, 0.1, 0.25),
    rules: Sequence[str] = RULES,
    save_dir: str | os.PathLike | None = None,
) -> tuple[dict[str, list[CertifiedRouter]], dict[str, list[CalibratedRouter]]]:
    """``(certified, budgeted)``: per router, one :class:`CertifiedRouter` per rule (:func:`certify_routers`, saved to
    ``save_dir/NAME{certified_suffix(rule)}``) and one :class:`CalibratedRouter` per rule and budget share
    (:func:`budget_routers`), all on ``calibration``: what :func:`routing_study.evaluate_routing` marks."""
    certified: dict[str, list[CertifiedRouter]] = {name: [] for name in routers}
    budgeted: dict[str, list[CalibratedRouter]] = {name: [] for name in routers}
    for rule in rules:
        for name, router in certify_routers(
            routers, calibration, max_drop, delta, p_value, save_dir, rule=rule
        ).items():
            certified[name].append(router)
        for name, fitted in budget_routers(routers, calibration, shares, rule).items():
            budgeted[name].extend(fitted.values())
    return certified, budgeted


def fit_frame_predictor(oracle, out_dir: str | os.PathLike | None = None, name: str = "mlp-image", seed: int = 0):
    """Fit the predictor ``name`` of :data:`predictor.registry.PREDICTORS` on a per-frame oracle (a folder or any
    oracle table) and save it to ``out_dir``. No threshold is calibrated: the knapsack uses the probabilities."""
    if name not in PREDICTORS:
        raise ValueError(f"unknown predictor {name!r}; choose from {sorted(PREDICTORS)}")
    fitted = PREDICTORS[name](seed).fit(as_oracle_set(oracle))
    if out_dir is not None:
        fitted.save_pretrained(out_dir)
    return fitted
