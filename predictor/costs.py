"""What a routing costs in visual tokens, probes included: pure functions on the oracle's ``(n, scales)`` matrices.

A plain predictor's query costs the visual tokens of the scale it is routed to. A *probe predictor* first answers
at its probe scale (to read the model's confidence or hidden state there), so a query routed elsewhere costs the
probe's tokens AND the routed scale's; a query routed to the probe scale reuses the probe's answer and costs the
probe's tokens only. :func:`routing_costs` turns the per-scale token matrix into that cost matrix once, and every
cost figure (curves, calibration, certificates, budgets, ``AdaptiveM3``) reads it, so no figure forgets the probe.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def probe_scale_of(router) -> int | None:
    """The probe scale of a predictor or router (``probe_scale_``), None when it reads no probe answer."""
    scale = getattr(router, "probe_scale_", None)
    return None if scale is None else int(scale)


def routing_costs(tokens: np.ndarray, scales: Sequence[int], probe_scale: int | None = None) -> np.ndarray:
    """``(n, scales)`` visual tokens processed per query when it is routed to each scale.

    ``tokens``: the visual tokens of each query at each scale (``(n, scales)``, or ``(scales,)`` for one query).
    Without a probe this is ``tokens``; with one, every scale but the probe's also pays the probe's tokens.
    """
    tokens = np.asarray(tokens, dtype=np.float64)
    if probe_scale is None:
        return tokens
    scales = [int(s) for s in scales]
    if int(probe_scale) not in scales:
        raise ValueError(f"probe scale {probe_scale} is not among the scales {scales}")
    column = scales.index(int(probe_scale))
    extra = np.ones(len(scales))
    extra[column] = 0.0
    return tokens + tokens[..., column : column + 1] * extra
