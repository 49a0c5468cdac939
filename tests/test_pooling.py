import math

import pytest
import torch
import torch.nn.functional as F

from m3.pooling import check_scale, grid_side, nested_scales, pool_to_scales, pool_tokens, valid_scales


def official_pool(tokens: torch.Tensor, scale: int) -> torch.Tensor:
    """The official M3 code: avg_pool2d with kernel = stride = int(sqrt(N / s)) on the token grid."""
    batch, num_tokens, dim = tokens.shape
    side = int(math.sqrt(num_tokens))
    grid = tokens.view(batch, side, side, dim).permute(0, 3, 1, 2)
    kernel = int(math.sqrt(num_tokens / scale))
    pooled = F.avg_pool2d(grid, kernel_size=kernel, stride=kernel)
    return pooled.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("side", [24, 27, 16, 12, 5])
def test_pooling_equals_official_formula_at_every_valid_scale(side):
    tokens = torch.randn(3, side * side, 7, generator=torch.Generator().manual_seed(side))
    for scale in valid_scales(side * side):
        assert torch.equal(pool_tokens(tokens, scale), official_pool(tokens, scale)), scale


def test_pooling_matches_explicit_block_means():
    tokens = torch.arange(16 * 2, dtype=torch.float64).reshape(16, 2)
    pooled = pool_tokens(tokens, 4)
    grid = tokens.reshape(4, 4, 2)
    expected = torch.stack([grid[r : r + 2, c : c + 2].mean(dim=(0, 1)) for r in (0, 2) for c in (0, 2)])
    assert torch.equal(pooled, expected)
    assert torch.equal(pool_tokens(tokens, 1)[0], tokens.mean(0))


@pytest.mark.parametrize("side", [24, 27, 16])
def test_pooling_twice_equals_pooling_once(side):
    tokens = torch.randn(2, side * side, 5, dtype=torch.float64)
    chain = sorted(nested_scales(side * side), reverse=True)
    for finer, coarser in zip(chain, chain[1:]):
        twice = pool_tokens(pool_tokens(tokens, finer), coarser)
        torch.testing.assert_close(twice, pool_tokens(tokens, coarser), rtol=0, atol=1e-12)


def test_scale_sets_are_derived_from_the_grid():
    assert nested_scales(576) == [1, 9, 36, 144, 576]
    assert nested_scales(729) == [1, 9, 81, 729]
    assert nested_scales(256) == [1, 4, 16, 64, 256]
    assert valid_scales(576) == [1, 4, 9, 16, 36, 64, 144, 576]
    assert valid_scales(729) == [1, 9, 81, 729]


def test_pool_to_scales_matches_single_calls():
    tokens = torch.randn(576, 4)
    pooled = pool_to_scales(tokens, [1, 36, 576])
    assert set(pooled) == {1, 36, 576}
    assert torch.equal(pooled[36], pool_tokens(tokens, 36))
    assert pooled[576] is tokens


@pytest.mark.parametrize("scale", [0, 5, 10, 577, 2.0, "9", True])
def test_invalid_scale_names_the_valid_ones(scale):
    with pytest.raises(ValueError, match=r"valid scales are \[1, 4, 9, 16, 36, 64, 144, 576\]"):
        pool_tokens(torch.randn(576, 4), scale)
    with pytest.raises(ValueError, match="unknown scale"):
        check_scale(scale, 576)


@pytest.mark.parametrize("num_tokens", [577, 575, 0, 24 * 23])
def test_non_square_grid_is_rejected(num_tokens):
    with pytest.raises(ValueError, match="square grid"):
        grid_side(num_tokens)
    if num_tokens:
        with pytest.raises(ValueError, match="square grid"):
            pool_tokens(torch.randn(num_tokens, 3), 1)
