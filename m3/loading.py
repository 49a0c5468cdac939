"""Pick the right M3 class for a checkpoint directory from its ``config.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .configuration import M3LlavaConfig, M3LlavaNextConfig

CONFIG_CLASSES = {"llava": M3LlavaConfig, "llava_next": M3LlavaNextConfig}


def is_original_llava_config(config: dict) -> bool:
    """Whether a config.json dict is in the original LLaVA layout (it also says ``model_type: llava``)."""
    return "mm_vision_tower" in config and "text_config" not in config


def model_type_of(path: str | os.PathLike) -> str:
    """The ``model_type`` in a checkpoint's config.json, checked to be one M3 supports."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in {path}: not a saved model directory")
    config = json.loads(config_file.read_text())
    if is_original_llava_config(config):
        raise ValueError(
            f"{config_file} is an original LLaVA (haotian-liu) checkpoint, not a llava-hf one; convert it first "
            "with scripts/convert_llava_checkpoint.py"
        )
    model_type = config.get("model_type")
    if model_type not in CONFIG_CLASSES:
        raise ValueError(f"{config_file} has model_type {model_type!r}; M3 supports {sorted(CONFIG_CLASSES)}")
    return model_type


def load_m3_config(path: str | os.PathLike, **overrides):
    """M3 config of a llava-hf / M3 checkpoint directory (M3 fields default when absent).

    ``overrides`` replace config fields, e.g. ``m3_token_selection="spatial"`` or (LLaVA-NeXT) other
    ``image_grid_pinpoints``; the M3 fields are validated again after them (transformers only sets them)."""
    config = CONFIG_CLASSES[model_type_of(path)].from_pretrained(path, **overrides)
    config._init_m3_fields()
    return config


def load_m3_model(path: str | os.PathLike, **kwargs):
    """``from_pretrained`` with the M3 class that matches the checkpoint (LLaVA-1.5 or LLaVA-NeXT).

    Config fields among ``kwargs`` override the saved ones, e.g. ``m3_token_selection="spatial"`` (the paper's
    Table 4 baselines) or ``image_grid_pinpoints=m3.anyres.grid_pinpoints(crop, 3)`` (more anyres crops than
    trained with; load the processor with the same pinpoints: ``M3Processor.from_pretrained(path,
    config=model.config, image_grid_pinpoints=...)``). The M3 fields are validated again after the overrides."""
    from .modeling import M3LlavaForConditionalGeneration, M3LlavaNextForConditionalGeneration

    classes = {"llava": M3LlavaForConditionalGeneration, "llava_next": M3LlavaNextForConditionalGeneration}
    loaded = classes[model_type_of(path)].from_pretrained(path, **kwargs)
    (loaded[0] if isinstance(loaded, tuple) else loaded).config._init_m3_fields()  # a tuple: output_loading_info
    return loaded
