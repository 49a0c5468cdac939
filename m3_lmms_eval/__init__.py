"""lmms-eval plugin: the models ``m3`` (one fixed scale) and ``m3_adaptive`` (a routed :class:`adaptive.AdaptiveM3`).

Installed with ``pip install --no-deps lmms-eval==0.7.3 && pip install -e ".[lmms-eval]"``; lmms-eval finds the models
through the ``lmms_eval.models`` entry point, which points at :func:`manifests`::

    python -m lmms_eval --model m3 --model_args pretrained=DIR,scale=36 --tasks textvqa_val
    python -m lmms_eval --model m3_adaptive --model_args pretrained=ADAPTIVE_DIR,threshold=0.8 --tasks pope
    torchrun --nproc_per_node 8 -m lmms_eval --model m3 --model_args pretrained=DIR,scale=36 --tasks pope  # 8 GPUs

This package sits on top of the stack (it imports ``m3`` and ``adaptive``); nothing imports it.
"""

from __future__ import annotations


def manifests() -> list:
    """The ``ModelManifest`` s lmms-eval's registry loads from the ``lmms_eval.models`` entry point."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(model_id="m3", simple_class_path="m3_lmms_eval.models.M3"),
        ModelManifest(model_id="m3_adaptive", simple_class_path="m3_lmms_eval.models.M3Adaptive"),
    ]
