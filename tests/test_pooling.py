import math

import pytest
import torch
import torch.nn.functional as F

from m3.pooling import (
    TOKEN_SELECTIONS,
    check_scale,
    grid_side,
    nested_scales,
    pool_to_scales,
    pool_tokens,
    select_tokens,
    spatial_indices,
    valid_scales,
)


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


# --- token selections (paper Fig. 5, Tables 4 and 6) ---


def test_avg_pool_selection_is_bit_identical_to_pool_tokens():
    tokens = torch.randn(2, 3, 576, 8, generator=torch.Generator().manual_seed(0))
    for scale in valid_scales(576):
        assert torch.equal(select_tokens(tokens, scale, "avg_pool"), pool_tokens(tokens, scale)), scale
        assert torch.equal(select_tokens(tokens, scale), pool_tokens(tokens, scale)), scale


@pytest.mark.parametrize("side", [24, 12, 27])
def test_sequential_selection_keeps_the_first_tokens_in_raster_order(side):
    tokens = torch.randn(3, side * side, 5, generator=torch.Generator().manual_seed(side))
    for scale in valid_scales(side * side):
        raster = [row * side + col for row in range(side) for col in range(side)]  # reading order, row by row
        expected = torch.stack([tokens[:, index] for index in raster[:scale]], dim=1)
        assert torch.equal(select_tokens(tokens, scale, "sequential"), expected), scale


@pytest.mark.parametrize("side", [24, 12, 27])
def test_spatial_selection_keeps_the_centre_token_of_every_block(side):
    tokens = torch.randn(3, side * side, 5, generator=torch.Generator().manual_seed(side))
    grid = tokens.reshape(3, side, side, 5)
    for scale in valid_scales(side * side):
        k = math.isqrt(scale)
        block = side // k
        centre = block // 2  # the stated offset: lower-right of the central 2x2 for an even block
        expected = torch.stack(
            [grid[:, i * block + centre, j * block + centre] for i in range(k) for j in range(k)], dim=1
        )
        ours = select_tokens(tokens, scale, "spatial")
        assert torch.equal(ours, expected), scale
        # the same as nearest-exact downsampling of the grid, an independent implementation
        resized = F.interpolate(grid.permute(0, 3, 1, 2), size=(k, k), mode="nearest-exact")
        assert torch.equal(ours, resized.flatten(2).transpose(1, 2)), scale


def test_spatial_and_sequential_positions_by_hand():
    assert spatial_indices(576, 1).tolist() == [12 * 24 + 12]  # the image centre
    assert spatial_indices(576, 9).tolist() == [r * 24 + c for r in (4, 12, 20) for c in (4, 12, 20)]
    assert spatial_indices(576, 144)[:3].tolist() == [25, 27, 29]  # rows/cols 1, 3, 5, ...
    assert spatial_indices(576, 576).tolist() == list(range(576))
    tokens = torch.arange(576.0).reshape(576, 1)
    assert select_tokens(tokens, 36, "sequential")[:, 0].tolist() == list(range(36))  # row 0 and half of row 1


@pytest.mark.parametrize("method", TOKEN_SELECTIONS)
def test_every_selection_keeps_the_full_grid_and_rejects_unknown_scales(method):
    tokens = torch.randn(576, 4)
    assert torch.equal(select_tokens(tokens, 576, method), tokens)
    with pytest.raises(ValueError, match="unknown scale 10 .* valid scales are"):
        select_tokens(tokens, 10, method)


def test_unknown_selection_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown token selection 'max_pool'; expected one of"):
        select_tokens(torch.randn(576, 4), 9, "max_pool")
