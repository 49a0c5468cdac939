"""Pick the right M3 class for a checkpoint directory from its ``config.json``."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from .files import read_json, safetensors_header
from .fingerprint import FINGERPRINT_NAME
from .modeling import MODEL_CLASSES

REPAIR = "re-save, re-download or re-convert the model"
UNCHECKED_JSON = {FINGERPRINT_NAME, "train_summary.json"}  # a cache and a training log: never read to load


class NonFiniteWeightsError(ValueError):
    """A model's weights hold NaN or infinite values: every answer it gives is meaningless."""


def check_model_files(path: str | os.PathLike) -> None:
    """Refuse a model folder whose JSON files (config, tokenizer, processor) do not parse or whose safetensors
    files are truncated, naming the file (:class:`m3.files.DamagedFileError`), or whose weights are pickles only
    (:func:`check_model_weights_format`), before transformers reads them."""
    path = Path(path)
    for file in sorted(path.glob("*.json")):
        if file.name not in UNCHECKED_JSON:
            read_json(file, REPAIR)
    for file in sorted(path.glob("*.safetensors")):
        safetensors_header(file, REPAIR)
    check_model_weights_format(path)


def check_model_weights_format(path: str | os.PathLike) -> None:
    """Refuse a model folder whose weights are pickles only (``pytorch_model*.bin``, no safetensors): loading a
    pickle can run code, and this project loads weights from safetensors only."""
    path = Path(path)
    pickles = sorted(path.glob("pytorch_model*.bin"))
    if pickles and not any(path.glob("*.safetensors")):
        raise ValueError(
            f"{path} holds its weights only as {pickles[0].name}, a pickle, which this project never loads (a pickle "
            "can run code): convert it to safetensors where you trust it, e.g. "
            "LlavaForConditionalGeneration.from_pretrained(path).save_pretrained(path) writes model.safetensors"
        )


@cache
def _config_fields(model_type: str) -> frozenset[str]:
    return frozenset(vars(MODEL_CLASSES[model_type].config_class()))


def check_family_options(path: str | os.PathLike, model_type: str, options) -> None:
    """Refuse an option that belongs to another model family (LLaVA-NeXT's ``image_grid_pinpoints`` for a LLaVA-1.5
    model), before anything loads: transformers would ignore it, or fail deep inside the model's constructor."""
    for key in options:
        others = [t for t in MODEL_CLASSES if t != model_type and key in _config_fields(t)]
        if key not in _config_fields(model_type) and others:
            raise ValueError(
                f"{key} does not apply to {path}: it is a {model_type} model, and {key} is an option of "
                f"{' and '.join(others)} models"
            )


def non_finite_parameters(model) -> list[str]:
    """Names of the parameters that hold a NaN or an infinity (parameters not materialised here - on the meta
    device, or partitioned away by ZeRO-3 - are skipped)."""
    return [
        name
        for name, tensor in model.named_parameters()
        if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(tensor.isfinite().all())
    ]


def check_finite(model, where: str) -> None:
    """Raise :class:`NonFiniteWeightsError` naming how many tensors of ``model`` are not finite."""
    bad = non_finite_parameters(model)
    if bad:
        total = len(list(model.named_parameters()))
        raise NonFiniteWeightsError(
            f"{where}: the weights hold NaN or infinite values in {len(bad)} of {total} tensors (first: {bad[0]}); "
            "such a model cannot answer. Retrain it (a lower learning rate) or use an earlier checkpoint"
        )


def is_original_llava_config(config: dict) -> bool:
    """Whether a config.json dict is in the original LLaVA layout (it also says ``model_type: llava``)."""
    return "mm_vision_tower" in config and "text_config" not in config


def model_type_of(path: str | os.PathLike) -> str:
    """The ``model_type`` in a checkpoint's config.json, checked to be one M3 supports."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in {path}: not a saved model directory")
    config = read_json(config_file, REPAIR)
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} holds a JSON {type(config).__name__}, not a model config")
    if is_original_llava_config(config):
        raise ValueError(
            f"{config_file} is an original LLaVA (haotian-liu) checkpoint, not a llava-hf one; convert it first "
            "with scripts/convert_llava_checkpoint.py"
        )
    model_type = config.get("model_type")
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"{config_file} has model_type {model_type!r}; M3 supports {sorted(MODEL_CLASSES)}")
    return model_type


def load_m3_config(path: str | os.PathLike, **overrides):
    """M3 config of a llava-hf / M3 checkpoint directory (M3 fields default when absent).

    ``overrides`` replace config fields, e.g. ``m3_token_selection="spatial"`` or (LLaVA-NeXT) other
    ``image_grid_pinpoints``; the M3 fields are validated again after them (transformers only sets them)."""
    model_type = model_type_of(path)
    check_family_options(path, model_type, overrides)
    check_model_files(path)
    config_class = MODEL_CLASSES[model_type].config_class
    config, unused = config_class.from_pretrained(path, return_unused_kwargs=True, **overrides)
    if unused:
        raise ValueError(f"{sorted(unused)} are not settings of the {model_type} model in {path}")
    config._init_m3_fields()
    return config


def load_m3_model(path: str | os.PathLike, allow_non_finite: bool = False, **kwargs):
    """``from_pretrained`` with the M3 class that matches the checkpoint (LLaVA-1.5 or LLaVA-NeXT).

    Config fields among ``kwargs`` override the saved ones, e.g. ``m3_token_selection="spatial"`` (the paper's
    Table 4 baselines) or ``image_grid_pinpoints=m3.anyres.grid_pinpoints(crop, 3)`` (more anyres crops than
    trained with; load the processor with the same pinpoints: ``M3Processor.from_pretrained(path,
    config=model.config, image_grid_pinpoints=...)``). The M3 fields are validated again after the overrides.

    Damaged files are refused before loading (:func:`check_model_files`), and weights holding NaN or infinities
    after it (:class:`NonFiniteWeightsError`) unless ``allow_non_finite``."""
    model_type = model_type_of(path)
    check_family_options(path, model_type, kwargs)
    check_model_files(path)
    loaded = MODEL_CLASSES[model_type].from_pretrained(path, **kwargs)
    model = loaded[0] if isinstance(loaded, tuple) else loaded  # a tuple: output_loading_info
    model.config._init_m3_fields()
    if not allow_non_finite:
        check_finite(model, str(path))
    return loaded
