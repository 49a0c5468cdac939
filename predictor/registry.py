"""The predictor classes by name, and :func:`load_predictor`, which reads a saved folder of any of them.

``predictor.json`` names its class; this explicit table maps that name back to the class (no import cycle, no
search through ``__subclasses__``). A new predictor class is added here.
"""

from __future__ import annotations

import os

from .base import ScalePredictor, read_config
from .lgbm import LGBMScalePredictor
from .mlp import MLPScalePredictor

PREDICTOR_CLASSES: dict[str, type[ScalePredictor]] = {
    "MLPScalePredictor": MLPScalePredictor,
    "LGBMScalePredictor": LGBMScalePredictor,
}


def load_predictor(directory: str | os.PathLike, oracle_data=None, model_config=None) -> ScalePredictor:
    """Load any saved scale predictor (see :meth:`ScalePredictor.from_pretrained` for the compatibility checks
    against ``oracle_data`` and ``model_config``)."""
    name = read_config(directory)["class"]
    klass = PREDICTOR_CLASSES.get(name)
    if klass is None:
        raise ValueError(f"{directory}: unknown predictor class {name!r}; known: {sorted(PREDICTOR_CLASSES)}")
    return klass.from_pretrained(directory, oracle_data=oracle_data, model_config=model_config)
