import pytest
import torch

from m3.pooling import pool_tokens
from m3.tiny import init_sincos_positions, sincos_position_grid, tiny_model


def pooled_norm_ratio(codes: torch.Tensor, scale: int) -> float:
    """Mean norm of the codes average-pooled to ``scale`` tokens, relative to the unpooled mean norm."""
    return (pool_tokens(codes[None], scale)[0].norm(dim=1).mean() / codes.norm(dim=1).mean()).item()


def test_sincos_codes_are_distinct_and_survive_pooling_where_random_codes_vanish():
    codes = sincos_position_grid(24, 128)
    assert codes.shape == (576, 128)
    assert torch.cdist(codes, codes).fill_diagonal_(float("inf")).min() > 1.0
    pooled = pool_tokens(codes[None], 9)[0]
    assert torch.cdist(pooled, pooled).fill_diagonal_(float("inf")).min() > 1.0  # 9 cells stay apart
    assert pooled_norm_ratio(codes, 9) > 0.8
    # i.i.d. random embeddings (a from-scratch CLIP's init) average away: 64 per 3x3 cell -> about 1/8 left
    random_codes = torch.randn(576, 128, generator=torch.Generator().manual_seed(0))
    assert pooled_norm_ratio(random_codes, 9) < 0.25


def test_sincos_codes_need_a_hidden_size_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_position_grid(24, 30)


def test_tiny_model_starts_from_sincos_positions_unless_asked_not_to():
    weight = tiny_model(hidden_size=32).model.vision_tower.embeddings.position_embedding.weight
    assert torch.equal(weight[0], torch.zeros(32))  # the class token's slot
    assert torch.allclose(weight[1:], sincos_position_grid(24, 32))
    random_init = tiny_model(hidden_size=32, sincos_positions=False)
    plain = random_init.model.vision_tower.embeddings.position_embedding.weight
    assert not torch.allclose(plain[1:], sincos_position_grid(24, 32))
    init_sincos_positions(random_init, amplitude=0.5)
    assert torch.allclose(plain[1:], 0.5 * sincos_position_grid(24, 32))
    assert plain.requires_grad  # the codes are a starting point, still trained
