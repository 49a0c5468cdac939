"""Share a visual-token budget across many queries, images or video frames, using per-scale success probabilities.

The paper's motivating example: a budget of 2,880 tokens buys 2,880 frames at 1 token or 5 frames at 576.
Given, for every frame (or query), the predictor's probability that each scale is enough, :func:`allocate_scales`
picks one scale per frame to maximise the summed probability, i.e. the expected number of correct answers,
without exceeding the budget. This is a multiple-choice knapsack; the greedy solution on each frame's upper
concave hull is within one frame's value of the optimum, and it never exceeds the budget.
:func:`budget_routing` applies it to a stream of queries in batches under a MEAN visual-token budget.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np


def _upper_hull(tokens: np.ndarray, values: np.ndarray) -> list[int]:
    """Indices (by increasing tokens) of the points on the upper concave hull that gain value.

    Only these are worth buying: a point under the hull is dominated by a mix of its neighbours."""
    order = np.lexsort((-values, tokens))
    hull: list[int] = []
    for index in order:
        if hull and values[index] <= values[hull[-1]]:
            continue  # more tokens for no more value
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b if it lies on or under the segment a -> index
            left = (values[b] - values[a]) * (tokens[index] - tokens[a])
            right = (values[index] - values[a]) * (tokens[b] - tokens[a])
            if left <= right:
                hull.pop()
            else:
                break
        hull.append(int(index))
    return hull


def allocate_scales(
    probabilities: np.ndarray,
    budget: int,
    *,
    scales: Sequence[int],
    tokens: np.ndarray | Sequence[int] | None = None,
) -> np.ndarray:
    """``(frames,)`` one scale per frame, maximising the summed ``probabilities`` of the chosen scales within
    ``budget`` visual tokens.

    ``probabilities``: ``(frames, scales)``, one column per entry of ``scales``; ``tokens``: the visual tokens of
    each scale, ``(scales,)`` or ``(frames, scales)`` (LLaVA-NeXT counts differ per image), by default the scales
    themselves (LLaVA-1.5). Every frame gets at least its cheapest scale; a budget below that total raises
    ``ValueError`` (sample fewer frames first).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    scales = np.asarray(scales, dtype=np.int64)
    if probabilities.ndim != 2 or probabilities.shape[1] == 0:
        raise ValueError(f"probabilities must be (frames, scales), got shape {probabilities.shape}")
    if probabilities.shape[1] != len(scales):
        raise ValueError(f"probabilities have {probabilities.shape[1]} columns for {len(scales)} scales")
    cost = np.broadcast_to(np.asarray(scales if tokens is None else tokens, dtype=np.int64), probabilities.shape)
    if (cost < 1).any():
        raise ValueError("every scale must cost at least one visual token")
    hulls = [_upper_hull(cost[f], probabilities[f]) for f in range(len(probabilities))]
    choice = np.array([hull[0] for hull in hulls], dtype=np.int64)
    spent = int(cost[np.arange(len(choice)), choice].sum())
    if spent > budget:
        raise ValueError(
            f"a budget of {budget} visual tokens cannot give each of the {len(choice)} frames its cheapest "
            f"scale ({spent} tokens in all): sample fewer frames"
        )
    # every upgrade step along a hull, best value per token first; a frame's steps come in hull order
    heap = []
    for frame, hull in enumerate(hulls):
        if len(hull) > 1:
            heap.append(_step(probabilities, cost, frame, hull, 1))
    heapq.heapify(heap)
    while heap:
        _, frame, position = heapq.heappop(heap)
        hull = hulls[frame]
        extra = int(cost[frame, hull[position]] - cost[frame, hull[position - 1]])
        if spent + extra > budget:
            continue  # this frame stops here; cheaper steps of other frames may still fit
        spent += extra
        choice[frame] = hull[position]
        if position + 1 < len(hull):
            heapq.heappush(heap, _step(probabilities, cost, frame, hull, position + 1))
    return scales[choice]


def _step(probabilities: np.ndarray, cost: np.ndarray, frame: int, hull: list[int], position: int):
    gain = probabilities[frame, hull[position]] - probabilities[frame, hull[position - 1]]
    extra = cost[frame, hull[position]] - cost[frame, hull[position - 1]]
    return (-gain / extra, frame, position)


def budget_routing(
    probabilities: np.ndarray,
    costs: np.ndarray,
    scales: Sequence[int],
    mean_tokens: float,
    batch_size: int | None = None,
) -> np.ndarray | None:
    """``(n,)`` scales maximising the expected number of correct answers with at most ``mean_tokens`` visual tokens
    per query on average in every batch of ``batch_size`` consecutive queries (None: all at once).

    ``probabilities`` and ``costs`` are ``(n, scales)`` (the tokens each query processes at each scale, probes
    included: :func:`predictor.costs.routing_costs`). Returns None when the budget cannot give every query of some
    batch its cheapest scale.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    costs = np.rint(np.asarray(costs, dtype=np.float64)).astype(np.int64)
    n = len(probabilities)
    size = n if batch_size is None else int(batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chosen = np.empty(n, dtype=np.int64)
    for start in range(0, n, size):
        rows = slice(start, min(start + size, n))
        budget = int(np.floor(mean_tokens * (rows.stop - rows.start) + 1e-9))
        if costs[rows].min(axis=1).sum() > budget:
            return None
        chosen[rows] = allocate_scales(probabilities[rows], budget, scales=scales, tokens=costs[rows])
    return chosen


def uniform_scale(tokens: np.ndarray | Sequence[Sequence[int]], budget: int, *, scales: Sequence[int]) -> int:
    """The largest scale that every frame can take at once within ``budget`` visual tokens: the uniform baseline.

    ``tokens``: ``(frames, scales)`` visual tokens of each frame at each scale (columns follow ``scales``). A budget
    below the smallest scale's total raises ``ValueError``, as :func:`allocate_scales` does."""
    cost = np.asarray(tokens, dtype=np.int64)
    if cost.ndim != 2 or cost.shape[1] != len(scales):
        raise ValueError(f"tokens must be (frames, {len(scales)} scales), got shape {cost.shape}")
    totals = cost.sum(axis=0)
    fits = np.flatnonzero(totals <= budget)
    if not len(fits):
        raise ValueError(
            f"a budget of {budget} visual tokens cannot give each of the {len(cost)} frames its cheapest scale "
            f"({int(totals.min())} tokens in all): sample fewer frames"
        )
    return int(np.asarray(scales)[fits[np.argmax(totals[fits])]])
