"""The standard predictor set, fitted (and tuned) on a training oracle, with a held-out calibration split.

The training oracle is split by image: ``1 - calibration_fraction`` to fit (and tune, on its own grouped
holdout) and ``calibration_fraction`` to choose each predictor's operating threshold
(:class:`predictor.calibration.CalibratedRouter`: the cheapest one that matches full-scale accuracy there). The test
oracle is never seen.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .base import ScalePredictor
from .calibration import CalibratedRouter
from .data import as_oracle_set, split_oracle
from .lgbm import LGBMScalePredictor
from .mlp import MLPScalePredictor
from .tuning import tune

PREDICTORS: dict[str, Callable[[int], ScalePredictor]] = {
    "mlp": lambda seed: MLPScalePredictor(seed=seed),
    "mlp-oracle": lambda seed: MLPScalePredictor(target="oracle", seed=seed),
    "mlp-image": lambda seed: MLPScalePredictor(use_image=True, seed=seed),
    "lgbm": lambda seed: LGBMScalePredictor(seed=seed),
    "lgbm-emb": lambda seed: LGBMScalePredictor(use_embedding=True, seed=seed),
    "lgbm-oracle": lambda seed: LGBMScalePredictor(target="oracle", seed=seed),
}
DEFAULT_PREDICTORS = ("mlp", "mlp-image", "mlp-oracle", "lgbm", "lgbm-emb")


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
    data = as_oracle_set(train)
    fit_data, calibration = split_oracle(data, calibration_fraction, seed)
    data.image_features(progress)  # once for every trial and predictor (cached on the set)
    log(
        f"train oracle {data.source}: {len(data)} samples; fitting on {len(fit_data)}, calibrating the threshold on "
        f"{len(calibration)} (disjoint images)"
    )
    fitted = {}
    for name in names:
        start = time.perf_counter()
        estimator = PREDICTORS[name](seed)
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
