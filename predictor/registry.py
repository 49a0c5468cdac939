"""The one registry of predictors: the classes by name, with :func:`load_predictor`, which reads a saved folder of
any of them, and the named predictor set (:data:`PREDICTORS`, each name a class with its settings) that
:func:`predictor.training.fit_predictors` fits.

``predictor.json`` names its class; this explicit table maps that name back to the class (no import cycle, no
search through ``__subclasses__``). A new predictor class, or a new named setting of one, is added here.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .base import ScalePredictor, read_config
from .lgbm import LGBMScalePredictor
from .mlp import MLPScalePredictor
from .reference import ReferenceRouter

PREDICTOR_CLASSES: dict[str, type[ScalePredictor]] = {
    "MLPScalePredictor": MLPScalePredictor,
    "LGBMScalePredictor": LGBMScalePredictor,
}

PREDICTORS: dict[str, Callable[[int], ScalePredictor | ReferenceRouter]] = {
    "mlp": lambda seed: MLPScalePredictor(seed=seed),
    "mlp-oracle": lambda seed: MLPScalePredictor(target="oracle", seed=seed),
    "mlp-image": lambda seed: MLPScalePredictor(use_image=True, seed=seed),
    "mlp-probe": lambda seed: MLPScalePredictor(probe="hidden", probe_scale=1, seed=seed),
    "mlp-probe9": lambda seed: MLPScalePredictor(probe="hidden", probe_scale=9, seed=seed),
    "lgbm": lambda seed: LGBMScalePredictor(seed=seed),
    "lgbm-emb": lambda seed: LGBMScalePredictor(use_embedding=True, seed=seed),
    "lgbm-oracle": lambda seed: LGBMScalePredictor(target="oracle", seed=seed),
    "lgbm-probe": lambda seed: LGBMScalePredictor(use_embedding=True, probe="confidence", probe_scale=1, seed=seed),
    "lgbm-probe9": lambda seed: LGBMScalePredictor(use_embedding=True, probe="confidence", probe_scale=9, seed=seed),
    "question-only": lambda seed: ReferenceRouter(grouping="family"),
    "attribute": lambda seed: ReferenceRouter(grouping="attribute"),  # needs records with generator attributes
}
# "attribute" is skipped (with a note) where the oracle's records carry no generator attributes
DEFAULT_PREDICTORS = ("mlp", "mlp-image", "mlp-oracle", "lgbm", "lgbm-emb", "question-only", "attribute")


def load_predictor(directory: str | os.PathLike, oracle_data=None, model_config=None) -> ScalePredictor:
    """Load any saved scale predictor (see :meth:`ScalePredictor.from_pretrained` for the compatibility checks
    against ``oracle_data`` and ``model_config``)."""
    name = read_config(directory)["class"]
    klass = PREDICTOR_CLASSES.get(name)
    if klass is None:
        raise ValueError(f"{directory}: unknown predictor class {name!r}; known: {sorted(PREDICTOR_CLASSES)}")
    return klass.from_pretrained(directory, oracle_data=oracle_data, model_config=model_config)
