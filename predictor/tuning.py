"""Hyper-parameter search with optuna: a fixed number of trials, a seeded TPE sampler, median pruning.

The objective is the held-out loss on a grouped split of the TRAINING oracle (no image on both sides): the mean
per-scale binary cross-entropy for ``target="correct"``, the cross-entropy of the oracle label for
``target="oracle"``. The MLP reports its validation loss after every epoch, so unpromising trials are pruned
early. The best parameters are then refitted on all the data given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.base import clone

from .base import ScalePredictor
from .data import OracleSet, as_oracle_set, split_oracle
from .lgbm import LGBMScalePredictor
from .mlp import MLPScalePredictor

EPSILON = 1e-7


def suggest_params(estimator: ScalePredictor, trial) -> dict:
    """The search space of an estimator class, as parameters drawn from an optuna trial."""
    if isinstance(estimator, MLPScalePredictor):
        layers = trial.suggest_int("layers", 1, 2)
        width = trial.suggest_categorical("width", [64, 128, 256, 512])
        return {
            "hidden_sizes": (width,) * layers,
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
            "learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-3, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128, 256]),
        }
    if isinstance(estimator, LGBMScalePredictor):
        return {
            "num_leaves": trial.suggest_int("num_leaves", 4, 64, log=True),
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
            "min_child_samples": trial.suggest_int("min_child_samples", 5, 100, log=True),
            "feature_fraction": trial.suggest_float("feature_fraction", 0.4, 1.0),
            "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
            "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 30.0, log=True),
        }
    raise TypeError(f"no search space for {type(estimator).__name__}")


def validation_loss(predictor: ScalePredictor, data: OracleSet) -> float:
    """Held-out loss: mean per-scale binary cross-entropy (correctness) or the oracle label's cross-entropy."""
    if predictor.target == "correct":
        proba = np.clip(predictor.predict_proba(data), EPSILON, 1 - EPSILON)
        correct = data.correct()
        return float(-(correct * np.log(proba) + (~correct) * np.log(1 - proba)).mean())
    proba = np.clip(predictor.predict_label_proba(data), EPSILON, 1.0)
    labels = np.searchsorted(np.asarray(data.scales), data.oracle_labels(predictor.oracle_kind))
    return float(-np.log(proba[np.arange(len(labels)), labels]).mean())


@dataclass
class TuningResult:
    """The refitted best estimator, its parameters, its held-out loss and the optuna study."""

    estimator: ScalePredictor
    best_params: dict
    best_loss: float
    study: object


def tune(
    estimator: ScalePredictor,
    X,
    n_trials: int = 20,
    seed: int = 0,
    validation_fraction: float = 0.2,
    timeout: float | None = None,
    progress: bool = True,
    image_root=None,
) -> TuningResult:
    """Search ``estimator``'s hyper-parameters on oracle data ``X`` (grouped holdout), then refit the best on all X.

    ``n_trials`` trials with ``TPESampler(seed=seed)`` and a ``MedianPruner``; ``timeout`` (seconds) may stop earlier.
    """
    import optuna

    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    data = as_oracle_set(X, image_root)
    train, held_out = split_oracle(data, validation_fraction, seed)

    def objective(trial) -> float:
        candidate = clone(estimator).set_params(**suggest_params(estimator, trial))

        def report(step: int, loss: float) -> None:
            trial.report(loss, step)
            if trial.should_prune():
                raise optuna.TrialPruned()

        candidate.fit(train, eval_set=held_out, callback=report if isinstance(candidate, MLPScalePredictor) else None)
        return validation_loss(candidate, held_out)

    logging.getLogger("optuna").setLevel(logging.WARNING)
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=5),
    )
    study.optimize(objective, n_trials=n_trials, timeout=timeout, show_progress_bar=progress)
    best = suggest_params(estimator, optuna.trial.FixedTrial(study.best_params))
    fitted = clone(estimator).set_params(**best).fit(data)
    return TuningResult(fitted, best, float(study.best_value), study)
