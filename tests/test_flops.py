import subprocess
import sys
from pathlib import Path

import pytest

from m3.flops import estimate_prefill, llava_15_config, parameter_count, transformer_prefill_flops
from m3.tiny import tiny_config

REPO = Path(__file__).resolve().parents[1]
# Paper Table 9: LLaVA-1.5-7B prefill with 30 text tokens, TFLOPs per number of visual tokens
TABLE_9_TFLOPS = {576: 8.0, 144: 2.2, 36: 0.9, 9: 0.5, 1: 0.4}


@pytest.mark.parametrize("scale", sorted(TABLE_9_TFLOPS))
def test_llava_15_7b_reproduces_table_9_within_10_percent(scale):
    cost = estimate_prefill(llava_15_config("7b"), scale, text_tokens=30)
    assert cost.visual_tokens == scale and cost.prompt_tokens == scale + 30
    assert cost.llm_flops / 1e12 == pytest.approx(TABLE_9_TFLOPS[scale], rel=0.10)


def test_llava_15_7b_has_7b_parameters_and_a_fixed_vision_cost():
    config = llava_15_config("7b")
    assert parameter_count(config) / 1e9 == pytest.approx(7.06, abs=0.05)  # LLaVA-1.5-7B: 7.06B
    costs = [estimate_prefill(config, s) for s in (1, 576)]
    assert costs[0].vision_flops == costs[1].vision_flops  # pooling comes after the projector
    assert costs[0].vision_flops / 1e12 == pytest.approx(0.38, abs=0.03)  # ViT-L/14 at 336 px: ~0.38 TFLOPs
    # KV cache: 2 (K, V) x 32 layers x 4096 x 2 bytes = 0.5 MiB per token
    assert costs[1].kv_cache_bytes == 606 * 2 * 32 * 4096 * 2


def test_transformer_flops_by_hand():
    # one layer, 2 tokens, hidden 4, MLP 8, no GQA: projections 4*4*4, gated MLP 3*4*8
    linear = 2 * 2 * (4 * 4 * 4 + 3 * 4 * 8)
    attention = 4 * 2 * 2 * 4
    assert transformer_prefill_flops(2, 4, 8, 1, 2, 2) == linear + attention
    # grouped-query attention shrinks k and v: 1 kv head of width 2 instead of 4
    assert transformer_prefill_flops(2, 4, 8, 1, 2, 1) == linear + attention - 2 * 2 * (2 * 4 * 2)


def test_llava_next_needs_the_image_size_and_counts_its_crops():
    config = tiny_config("llava_next")
    wide = estimate_prefill(config, 36, image_size=(96, 192))
    square = estimate_prefill(config, 36, image_size=(192, 192))
    assert wide.visual_tokens < square.visual_tokens and wide.vision_flops < square.vision_flops
    with pytest.raises(ValueError, match="image_sizes"):
        estimate_prefill(config, 36)
    with pytest.raises(ValueError, match="scale"):
        estimate_prefill(tiny_config("llava"), 10)


def test_script_prints_the_table():
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "estimate_flops.py"), "--text-tokens", "30"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "| 576 | 576 | 8.041 |" in out and "| 1 | 1 | 0.402 |" in out
