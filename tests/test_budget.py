import itertools

import numpy as np
import pytest

from adaptive.budget import allocate_scales

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
    choice = allocate_scales(probabilities, TOKENS, budget)
    assert TOKENS[choice].sum() <= budget
    value = probabilities[np.arange(frames), choice].sum()
    optimum = best_value(probabilities, TOKENS, budget)
    assert value <= optimum + 1e-12
    assert value >= optimum - probabilities.max() - 1e-12  # the greedy bound for this knapsack


def test_the_papers_extremes_and_a_mixed_budget():
    easy = [0.9, 0.9, 0.9, 0.9, 0.9]  # answered from one token: upgrading buys nothing
    hard = [0.1, 0.2, 0.3, 0.6, 0.9]
    assert (allocate_scales(np.array([easy] * 2880), TOKENS, 2880) == 0).all()
    full = allocate_scales(np.array([hard] * 5), TOKENS, 2880)
    assert (full == 4).all()
    mixed = allocate_scales(np.array([easy, hard, easy]), TOKENS, 200)
    assert list(mixed) == [0, 3, 0]  # the spare tokens go to the frame that needs them


def test_per_frame_token_counts_and_bad_input():
    probabilities = np.array([[0.2, 0.9], [0.2, 0.9]])
    tokens = np.array([[1, 100], [1, 10]])  # the second frame's detail is cheaper
    assert list(allocate_scales(probabilities, tokens, 20)) == [0, 1]
    with pytest.raises(ValueError, match="sample fewer frames"):
        allocate_scales(np.ones((10, 5)), TOKENS, 9)
    with pytest.raises(ValueError, match="frames, scales"):
        allocate_scales(np.ones(5), TOKENS, 100)
