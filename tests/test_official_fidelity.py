"""LLaVA-NeXT as the official M3 release computes it (tests/official_llava.py, re-implemented from the official code)
for converted checkpoints, and as transformers computes it for llava-hf ones: token counts over a grid of image sizes
and the features of a converted tiny checkpoint for small, square, tall, wide and elongated images at every scale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionConfig, LlavaNextImageProcessorPil

from m3.convert import m3_config_from_original, transformers_pinpoints
from m3.processing import M3Processor
from m3.tiny import TINY_GRID_PINPOINTS, build_tiny_tokenizer

from . import official_llava as official

SIZES = range(8, 2201, 43)  # 51 x 51 sizes x 5 scales; `python -m tests.official_llava` measures step 7
RELEASED = official.RELEASED_PINPOINTS


def processor_for(config, tokenizer) -> M3Processor:
    image_processor = LlavaNextImageProcessorPil(
        image_grid_pinpoints=config.image_grid_pinpoints,
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
    )
    return M3Processor(image_processor, tokenizer, config)


def processor_counts(processor: M3Processor, sizes: list[tuple[int, int]], scale: int) -> list[int]:
    """The image tokens the processor puts in one prompt per ``(height, width)`` image."""
    compact = dict(processor.tokenizer(["<image>"] * len(sizes), return_tensors="pt"))
    compact["image_sizes"] = torch.tensor(sizes)
    expanded = processor.expand_to_scale(compact, scale, len(sizes))
    return (expanded["input_ids"] == processor.config.image_token_id).sum(1).tolist()


def converted_config(tokenizer):
    """The config the converter writes for an original LLaVA-NeXT config with the released pinpoints."""
    original = {
        "architectures": ["LlavaLlamaForCausalLM"],
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": 32,
        "image_aspect_ratio": "anyres",
        "mm_patch_merge_type": "spatial_unpad",
        "image_grid_pinpoints": RELEASED,
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "num_attention_heads": 4,
    }
    vision = CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=32, num_attention_heads=4)
    return m3_config_from_original(original, vision, tokenizer.convert_tokens_to_ids("<image>"))


def test_converted_config_swaps_the_pinpoints_and_follows_the_official_rule():
    config = converted_config(build_tiny_tokenizer())
    assert config.image_grid_pinpoints == [[672, 336], [336, 672], [672, 672], [336, 1008], [1008, 336]]
    assert config.image_grid_pinpoints == transformers_pinpoints(RELEASED)
    assert config.m3_unpad_rule == "official" and config.m3_conversation_template == "vicuna_v1"


def test_converted_token_counts_equal_the_official_rule_over_a_size_grid():
    tokenizer = build_tiny_tokenizer()
    processor = processor_for(converted_config(tokenizer), tokenizer)
    sizes = [(height, width) for width in SIZES for height in SIZES]
    for scale in official.SCALES:
        expected = [official.token_count(width, height, scale) for height, width in sizes]
        assert processor_counts(processor, sizes, scale) == expected, scale
    # (height, width): a small square image (the tie that transposed the grid), truncation without rounding (the
    # issue's 428 px wide, 1926 px tall image; 197 * (1 / 197) < 1 leaves 0 rows), a 0-row elongated image
    assert processor_counts(processor, [(48, 48)], 1) == [5]
    assert processor_counts(processor, [(1926, 428)], 9) == [official.token_count(428, 1926, 9)] == [27]
    assert processor_counts(processor, [(197, 197)], 1) == [official.token_count(197, 197, 1)] == [1]
    assert processor_counts(processor, [(40, 2200)], 36) == [official.token_count(2200, 40, 36)] == [36]


def test_llava_hf_token_counts_keep_the_transformers_rule():
    """A llava-hf checkpoint (pinpoints as transformers reads them, the default rule) keeps transformers' grid and
    rounding at every scale; at 576 tokens that is transformers' own LlavaNextProcessor count."""
    from transformers import LlavaNextProcessor

    tokenizer = build_tiny_tokenizer()
    config = official.released_config(RELEASED, "transformers")
    processor = processor_for(config, tokenizer)
    sizes = [(height, width) for width in SIZES for height in SIZES]
    for scale in official.SCALES:
        expected = [official.token_count(width, height, scale, pairs="hw", rounding=True) for height, width in sizes]
        assert processor_counts(processor, sizes, scale) == expected, scale
    hf = LlavaNextProcessor(image_processor=processor.image_processor, tokenizer=tokenizer, patch_size=14)
    theirs = [hf._get_number_of_features(height, width, 336, 336) for height, width in sizes]
    assert processor_counts(processor, sizes, 576) == theirs


@pytest.fixture(scope="module")
def conversion(tmp_path_factory):
    return official.converted_tiny_next(tmp_path_factory.mktemp("official-next"))


@pytest.fixture(scope="module")
def converted_next(conversion) -> Path:
    return conversion.output_dir


def test_converter_says_what_it_changed(conversion, converted_next):
    config = json.loads((converted_next / "config.json").read_text())
    processor_config = json.loads((converted_next / "preprocessor_config.json").read_text())
    swapped = [[height, width] for width, height in TINY_GRID_PINPOINTS]
    assert config["image_grid_pinpoints"] == processor_config["image_grid_pinpoints"] == swapped
    assert config["m3_unpad_rule"] == "official" and config["m3_conversation_template"] == "vicuna_v1"
    summary = conversion.summary()
    assert f"written as (height, width) {swapped} in config.json and preprocessor_config.json" in summary
    assert "unpad rule: official" in summary and "conversation template: vicuna_v1" in summary


def test_converted_features_equal_the_official_path_for_every_shape_and_scale(converted_next):
    """Small (the tie that transposed the grid), square, tall, wide and elongated (0 content rows at 36 tokens):
    pixels and features from the converted checkpoint equal the official image path, at every scale."""
    from m3.loading import load_m3_model

    model = load_m3_model(converted_next).eval()
    processor = M3Processor.from_pretrained(converted_next, config=model.config)
    crop = model.config.vision_config.image_size
    for index, (width, height) in enumerate(official.SHAPES.values()):
        image = official.random_picture(width, height, index)
        inputs = processor.image_processor([image], return_tensors="pt")
        torch.testing.assert_close(
            inputs["pixel_values"][0], official.preprocess(image, TINY_GRID_PINPOINTS, crop), rtol=0, atol=1e-6
        )
        for scale in official.SCALES:
            with torch.no_grad():
                ours = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"], m3_scale=scale)
            theirs = official.image_features(model, image, scale, TINY_GRID_PINPOINTS)
            torch.testing.assert_close(ours.pooler_output[0], theirs, rtol=0, atol=1e-6)
            assert processor_counts(processor, [(height, width)], scale) == [theirs.shape[0]]
    # the elongated image keeps no content row at 36 tokens: base tokens only
    assert official.image_features(model, official.random_picture(1500, 60, 0), 36, TINY_GRID_PINPOINTS).shape[0] == 36


def test_unswapped_pinpoints_and_the_transformers_rule_differ_from_the_official_path(converted_next):
    """Loaded with the pinpoints unswapped (as the converter wrote them before) the small square image gets the
    transposed grid; with the transformers rule the 49 px square keeps rows the official truncation drops. So the
    comparison above can fail."""
    unswapped = {"image_grid_pinpoints": TINY_GRID_PINPOINTS}
    rows = official.feature_differences(converted_next, TINY_GRID_PINPOINTS, unswapped)
    differing = {(row["shape"], row["scale"]) for row in rows if row["ours"] != row["official"]}
    assert ("small 48x48", 1) in differing
    small = [row["max_abs_diff"] for row in rows if row["shape"] == "small 48x48" and row["scale"] == 576]
    assert small[0] > 1e-3
    rows = official.feature_differences(converted_next, TINY_GRID_PINPOINTS, {"m3_unpad_rule": "transformers"})
    differing = {(row["shape"], row["scale"]) for row in rows if row["ours"] != row["official"]}
    assert differing == {("small 49x49", 1)}
