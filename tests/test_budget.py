import itertools

import numpy as np
import pytest

from predictor.budget import allocate_scales

TOKENS = np.array([1, 9, 36, 144, 576])


def best_value(probabilities, tokens, budget) -> float:
    """Exhaustive optimum, for small cases."""
    best = -1.0
    for choice in itertools.product(range(probabilities.shape[1]), repeat=len(probabilities)):
        if sum(tokens[c] for c in choice) <= budget:
            best = max(best, sum(probabilities[f, c] for f, c in enumerate(choice)))
    return best


@pytest.mark.parametrize("seed", range(40))
def test_allocation_stays_within_budget_and_near_the_optimum(seed):
    rng = np.random.default_rng(seed)
    frames = int(rng.integers(1, 5))
    probabilities = np.sort(rng.uniform(size=(frames, 5)), axis=1)  # more tokens, more often right
    budget = int(rng.integers(frames, frames * 600))
    scales = allocate_scales(probabilities, budget, scales=TOKENS)  # LLaVA-1.5: scale s costs s tokens
    assert set(scales) <= set(TOKENS) and scales.sum() <= budget
    value = probabilities[np.arange(frames), np.searchsorted(TOKENS, scales)].sum()
    optimum = best_value(probabilities, TOKENS, budget)
    assert value <= optimum + 1e-12
    assert value >= optimum - probabilities.max() - 1e-12  # the greedy bound for this knapsack


def test_the_papers_extremes_and_a_mixed_budget():
    easy = [0.9, 0.9, 0.9, 0.9, 0.9]  # answered from one token: upgrading buys nothing
    hard = [0.1, 0.2, 0.3, 0.6, 0.9]
    assert (allocate_scales(np.array([easy] * 2880), 2880, scales=TOKENS) == 1).all()
    full = allocate_scales(np.array([hard] * 5), 2880, scales=TOKENS)
    assert (full == 576).all()
    mixed = allocate_scales(np.array([easy, hard, easy]), 200, scales=TOKENS)
    assert list(mixed) == [1, 144, 1]  # the spare tokens go to the frame that needs them


def test_per_frame_token_counts_and_bad_input():
    probabilities = np.array([[0.2, 0.9], [0.2, 0.9]])
    tokens = np.array([[1, 100], [1, 10]])  # the second frame's detail is cheaper
    assert list(allocate_scales(probabilities, 20, scales=[1, 9], tokens=tokens)) == [1, 9]
    with pytest.raises(ValueError, match="sample fewer frames"):
        allocate_scales(np.ones((10, 5)), 9, scales=TOKENS)
    with pytest.raises(ValueError, match="frames, scales"):
        allocate_scales(np.ones(5), 100, scales=TOKENS)
    with pytest.raises(ValueError, match="5 columns for 4 scales"):
        allocate_scales(np.ones((2, 5)), 100, scales=TOKENS[:4])
    with pytest.raises(TypeError):  # the old (probabilities, tokens, budget) call fails loudly
        allocate_scales(np.ones((2, 5)), TOKENS, 100)
