"""The token selections (avg_pool, spatial, sequential) through the model: features, generate, the multi-scale loss
and the config field (paper Fig. 5, Tables 4 and 6)."""

import json

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from m3.evaluation import using_token_selection
from m3.loading import load_m3_config, load_m3_model
from m3.pooling import TOKEN_SELECTIONS, pool_tokens, select_tokens
from m3.processing import llava_prompt
from m3.tiny import tiny_model

from .conftest import training_batch
from .test_modeling import ANSWERS, QUESTIONS, make_images, official_design_loss


@pytest.mark.parametrize("method", TOKEN_SELECTIONS)
def test_image_features_are_the_selected_tokens_of_the_full_grids(model_and_processor, method):
    model, processor = model_and_processor
    model.config.m3_token_selection = method
    inputs = processor([llava_prompt(q) for q in QUESTIONS], make_images(), m3_scale=576)
    sizes = inputs.get("image_sizes")
    with torch.no_grad():
        grids = model.model.encode_images(inputs["pixel_values"], sizes)
        for scale in model.config.m3_scales:
            features = model.model.get_image_features(inputs["pixel_values"], image_sizes=sizes, m3_scale=scale)
            for grid, feature in zip(grids, features.pooler_output):
                # LLaVA: the image's tokens; NeXT: the base crop comes first, then the stitched grid crops
                assert torch.equal(feature[:scale], select_tokens(grid[0], scale, method)), (method, scale)
                if method == "avg_pool":  # the default path is bit-identical to plain average pooling
                    assert torch.equal(feature[:scale], pool_tokens(grid[0], scale))


def test_next_grid_crops_are_selected_then_stitched(tokenizer):
    """A 96x192 image has a 1x2 crop grid without padding: its tokens are base, then row by row the two crops'
    selected k x k blocks side by side, each row closed by the newline token."""
    from m3.processing import M3Processor
    from m3.tiny import tiny_image_processor

    from .conftest import random_image

    model = tiny_model("llava_next", tokenizer=tokenizer, m3_token_selection="sequential")
    processor = M3Processor(tiny_image_processor("llava_next"), tokenizer, model.config)
    inputs = processor([llava_prompt("what color")], [random_image(96, 192, 3)], m3_scale=9)
    with torch.no_grad():
        crops = model.model.encode_images(inputs["pixel_values"], inputs["image_sizes"])[0]
        feature = model.model.features_at_scale([crops], 9, inputs["image_sizes"])[0]
    assert crops.shape[0] == 3 and feature.shape[0] == 9 + 3 * (6 + 1)
    left, right = crops[1, :9].reshape(3, 3, -1), crops[2, :9].reshape(3, 3, -1)  # the first 9 tokens of each crop
    for row in range(3):
        start = 9 + row * 7
        assert torch.equal(feature[start : start + 3], left[row])
        assert torch.equal(feature[start + 3 : start + 6], right[row])
        assert torch.equal(feature[start + 6], model.model.image_newline)


@pytest.mark.parametrize("method", ["spatial", "sequential"])
def test_multiscale_loss_with_a_selection_is_the_mean_of_single_scale_losses(model_and_processor, method):
    model, processor = model_and_processor
    batch = training_batch(processor, make_images(), QUESTIONS, ANSWERS)
    scales = model.config.m3_scales
    with torch.no_grad():
        pooled = model(**batch, m3_scales=scales)
        model.config.m3_token_selection = method
        out = model(**batch, m3_scales=scales)
        reference, per_scale = official_design_loss(model, batch, scales)  # one single-scale forward per scale
    for scale, loss in zip(scales, per_scale):
        torch.testing.assert_close(out.per_scale_loss[scale], loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, reference, rtol=0, atol=1e-5)
    assert out.per_scale_loss[576] == pooled.per_scale_loss[576]  # the full grid is the same for every selection
    assert all(abs(out.per_scale_loss[s] - pooled.per_scale_loss[s]) > 1e-4 for s in scales if s < 576)


@pytest.mark.parametrize("method", TOKEN_SELECTIONS)
def test_multiscale_forward_with_one_scale_equals_the_single_scale_forward(model_and_processor, method):
    """Random scale sampling trains m3_scales=[s]: it must be the ordinary forward at s."""
    model, processor = model_and_processor
    model.config.m3_token_selection = method
    batch = training_batch(processor, make_images(), QUESTIONS, ANSWERS)
    with torch.no_grad():
        for scale in (1, 36):
            single = official_design_loss(model, batch, [scale])[1][0]
            assert torch.equal(model(**batch, m3_scales=[scale]).loss, single), scale


def test_generate_uses_the_configured_selection(tokenizer):
    from m3.processing import M3Processor
    from m3.tiny import tiny_image_processor

    model = tiny_model("llava", tokenizer=tokenizer, m3_token_selection="spatial")
    processor = M3Processor(tiny_image_processor("llava"), tokenizer, model.config)
    inputs = processor([llava_prompt(q) for q in QUESTIONS], make_images(), m3_scale=9)
    settings = dict(max_new_tokens=4, do_sample=False)
    with torch.no_grad():
        grids = model.model.encode_images(inputs["pixel_values"])
        spatial = [select_tokens(grid[0], 9, "spatial") for grid in grids]
        from_pixels = model.generate(**inputs, m3_scale=9, **settings)
        from_features = model.generate(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=spatial)},
            **settings,
        )
        with using_token_selection(model, "avg_pool"):
            pooled_logits = model(**inputs, m3_scale=9).logits
        assert model.config.m3_token_selection == "spatial"  # restored after the block
        spatial_logits = model(**inputs, m3_scale=9).logits
    assert torch.equal(from_pixels, from_features)
    assert not torch.allclose(pooled_logits, spatial_logits)


def test_the_selection_is_saved_validated_and_defaults_to_avg_pool(family, tokenizer, tmp_path):
    model = tiny_model(family, tokenizer=tokenizer, m3_token_selection="sequential")
    model.save_pretrained(tmp_path / "m3")
    assert json.loads((tmp_path / "m3" / "config.json").read_text())["m3_token_selection"] == "sequential"
    assert load_m3_model(tmp_path / "m3").config.m3_token_selection == "sequential"
    assert load_m3_model(tmp_path / "m3", m3_token_selection="spatial").config.m3_token_selection == "spatial"

    config = json.loads((tmp_path / "m3" / "config.json").read_text())
    del config["m3_token_selection"]  # a config written before the field existed
    (tmp_path / "m3" / "config.json").write_text(json.dumps(config))
    assert load_m3_config(tmp_path / "m3").m3_token_selection == "avg_pool"

    with pytest.raises(ValueError, match="unknown token selection 'max_pool'; expected one of"):
        tiny_model(family, tokenizer=tokenizer, m3_token_selection="max_pool")
    with pytest.raises(ValueError, match="unknown token selection 'max_pool'"):
        load_m3_model(tmp_path / "m3", m3_token_selection="max_pool")
    with pytest.raises(ValueError, match="unknown token selection 'max_pool'"):
        with using_token_selection(model, "max_pool"):
            pass
