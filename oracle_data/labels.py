"""Oracle label rules on a (samples x scales) correctness matrix: pure functions, no model and no files.

Two oracles (the paper's Table 2, and the stricter one a router must reach without skipping a correct scale):

* the paper's (Table 2): the fewest visual tokens that answer correctly, i.e. the smallest correct scale. A
  sample that no scale answers is labelled with the smallest scale and flagged ``none_correct``.
* the monotone one: the smallest scale s such that every scale >= s answers correctly. It asks more than the
  paper's: a sample right at 9 tokens, wrong at 36 and right again at 144 and 576 gets 144, not 9. When the
  largest scale is wrong no such s exists: the smallest scale, flagged ``unreachable``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _check(correct, scales: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    matrix = np.asarray(correct, dtype=bool)
    if matrix.ndim != 2 or matrix.shape[1] != len(scales):
        raise ValueError(f"correct must be (samples, {len(scales)} scales), got shape {matrix.shape}")
    scale_array = np.asarray(scales, dtype=np.int64)
    if len(scale_array) == 0 or np.any(np.diff(scale_array) <= 0):
        raise ValueError(f"scales must be given in increasing order, got {list(scales)}")
    return matrix, scale_array


def paper_oracle(correct, scales: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, none_correct)`` per sample: the smallest correct scale (columns of ``correct`` follow the
    increasing ``scales``); samples with no correct scale get the smallest scale and ``none_correct=True``."""
    matrix, scale_array = _check(correct, scales)
    any_correct = matrix.any(axis=1)
    first = np.where(any_correct, matrix.argmax(axis=1), 0)
    return scale_array[first], ~any_correct


def monotone_oracle(correct, scales: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, unreachable)`` per sample: the smallest s such that every scale >= s is correct; samples whose
    largest scale is wrong get the smallest scale and ``unreachable=True``."""
    matrix, scale_array = _check(correct, scales)
    # suffix_all[:, j]: every scale from column j up is correct
    suffix_all = np.flip(np.logical_and.accumulate(np.flip(matrix, axis=1), axis=1), axis=1)
    reachable = suffix_all[:, -1]
    first = np.where(reachable, suffix_all.argmax(axis=1), 0)
    return scale_array[first], ~reachable
