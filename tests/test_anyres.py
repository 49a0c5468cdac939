import pytest
import torch
from transformers import LlavaNextForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import unpad_image

from m3.anyres import anyres_num_image_tokens, crop_grid_shape, grid_pinpoints, unpad_grid, unpadded_shape
from m3.loading import load_m3_config, load_m3_model
from m3.prompting import image_token_counts
from m3.tiny import TINY_GRID_PINPOINTS, tiny_image_processor, tiny_model

from .conftest import random_image

# (height, width): square, wide, tall, extreme panoramas that leave one pooled row at scale 1
IMAGE_SIZES = [(96, 96), (80, 150), (200, 96), (300, 120), (40, 400), (500, 30), (97, 289)]


@pytest.mark.parametrize("height", [1, 2, 3, 6, 12, 24, 48, 72])
@pytest.mark.parametrize("width", [1, 2, 3, 6, 12, 24, 48, 72])
def test_unpadded_shape_matches_transformers_unpad(height, width):
    grid = torch.zeros(1, height, width)
    for original in [(96, 96), (80, 150), (200, 96), (40, 400), (500, 30), (333, 334), (8, 2200), (197, 197)]:
        expected = unpad_image(grid, original).shape[1:]  # 0 rows for the most elongated images at coarse scales
        assert unpadded_shape(height, width, *original) == tuple(expected)
        assert unpad_grid(grid, original).shape[1:] == expected


@pytest.fixture(scope="module")
def next_model_and_inputs(tokenizer):
    model = tiny_model("llava_next", tokenizer=tokenizer)
    images = [random_image(h, w, seed=i) for i, (h, w) in enumerate(IMAGE_SIZES)]
    inputs = tiny_image_processor("llava_next")(images, return_tensors="pt")
    return model, inputs


def test_full_scale_features_equal_transformers_llava_next(next_model_and_inputs):
    model, inputs = next_model_and_inputs
    plain = LlavaNextForConditionalGeneration(model.config).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        ours = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"], m3_scale=576).pooler_output
        theirs = plain.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
    assert len(ours) == len(theirs) == len(IMAGE_SIZES)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_token_counts_equal_feature_lengths_at_every_scale(next_model_and_inputs):
    model, inputs = next_model_and_inputs
    with torch.no_grad():
        grids = model.model.encode_images(inputs["pixel_values"], inputs["image_sizes"])
        for scale in model.config.m3_scales:
            features = model.model.features_at_scale(grids, scale, inputs["image_sizes"])
            counts = image_token_counts(model.config, scale, image_sizes=inputs["image_sizes"])
            assert [f.shape[0] for f in features] == counts, scale
            for size, feature in zip(inputs["image_sizes"].tolist(), features):
                assert anyres_num_image_tokens(size, scale, TINY_GRID_PINPOINTS, 96) == feature.shape[0]


def test_token_count_formula_by_hand():
    # 96x192 (h x w) image -> 1x2 crops; scale 9 -> k=3: base 9 + grid 3x6, no padding, +3 newlines
    assert anyres_num_image_tokens((96, 192), 9, TINY_GRID_PINPOINTS, 96) == 9 + 3 * 6 + 3
    # scale 1 -> 1 base + 1x2 grid + 1 newline
    assert anyres_num_image_tokens((96, 192), 1, TINY_GRID_PINPOINTS, 96) == 1 + 2 + 1
    # a 40x400 panorama in a 1x3 grid at scale 1: content rounds to 0 rows, but an odd padding keeps the middle one
    assert anyres_num_image_tokens((40, 400), 1, TINY_GRID_PINPOINTS, 96) == 1 + 1 * 3 + 1
    # a 20x400 one at scale 36 (6 rows, content 0.9) keeps none: the base crop's 36 tokens, as in transformers
    assert anyres_num_image_tokens((20, 400), 36, TINY_GRID_PINPOINTS, 96) == 36


def test_pooled_crops_are_pooled_full_crops(next_model_and_inputs):
    """The base-image tokens at scale s are the 24x24 base crop pooled to s (nested within an image)."""
    model, inputs = next_model_and_inputs
    from m3.pooling import pool_tokens

    with torch.no_grad():
        grids = model.model.encode_images(inputs["pixel_values"], inputs["image_sizes"])
        for scale in (1, 9, 36):
            feats = model.model.features_at_scale(grids, scale, inputs["image_sizes"])
            for grid, feat in zip(grids, feats):
                assert torch.equal(feat[:scale], pool_tokens(grid[0], scale))


# --- other anyres grids at inference (paper Table 5: trained on up to 2x2 crops, evaluated on 3x3) ---

GRIDS = {
    "trained": TINY_GRID_PINPOINTS,
    "up to 3x3": grid_pinpoints(96, 3),
    "3x3 only": [[288, 288]],
    "up to 2x3": grid_pinpoints(96, 2, 3),
}
WIDE_SIZES = IMAGE_SIZES + [(288, 288), (600, 590), (250, 260)]


@pytest.fixture(scope="module")
def saved_next_model(tokenizer, tmp_path_factory):
    """A tiny LLaVA-NeXT checkpoint saved with the tiny (up to 1x3) pinpoints, as training writes it."""
    from m3.processing import M3Processor

    path = tmp_path_factory.mktemp("next")
    model = tiny_model("llava_next", tokenizer=tokenizer)
    model.save_pretrained(path)
    M3Processor(tiny_image_processor("llava_next"), tokenizer, model.config).save_pretrained(path)
    return path


def test_grid_pinpoints_by_hand():
    assert grid_pinpoints(96, 2) == [[96, 96], [96, 192], [192, 96], [192, 192]]
    assert [288, 288] in grid_pinpoints(96, 3) and len(grid_pinpoints(96, 3)) == 9
    assert grid_pinpoints(336, 1, 3) == [[336, 336], [336, 672], [336, 1008]]


@pytest.mark.parametrize("grid", list(GRIDS))
def test_other_grids_at_inference_keep_token_counts_exact(saved_next_model, grid):
    from m3.processing import M3Processor

    pinpoints = GRIDS[grid]
    model = load_m3_model(saved_next_model, image_grid_pinpoints=pinpoints)
    processor = M3Processor.from_pretrained(saved_next_model, config=model.config, image_grid_pinpoints=pinpoints)
    assert model.config.image_grid_pinpoints == pinpoints == processor.image_processor.image_grid_pinpoints
    images = [random_image(h, w, seed=i) for i, (h, w) in enumerate(WIDE_SIZES)]
    inputs = processor.image_processor(images, return_tensors="pt")
    crops_per_image = [crop_grid_shape(size, pinpoints, 96) for size in inputs["image_sizes"].tolist()]
    if grid != "trained":
        assert (3, 3) in crops_per_image or grid == "up to 2x3"  # really cut 3x3 grids
    with torch.no_grad():
        grids = model.model.encode_images(inputs["pixel_values"], inputs["image_sizes"])
        assert [g.shape[0] for g in grids] == [1 + rows * cols for rows, cols in crops_per_image]
        for scale in model.config.m3_scales:  # the vision tower once: get_image_features is encode + this
            features = model.model.features_at_scale(grids, scale, inputs["image_sizes"])
            if scale == 9:
                whole_path = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"], m3_scale=9)
                assert all(torch.equal(a, b) for a, b in zip(whole_path.pooler_output, features))
            counts = image_token_counts(model.config, scale, image_sizes=inputs["image_sizes"])
            assert [f.shape[0] for f in features] == counts, (grid, scale)
            for size, feature in zip(inputs["image_sizes"].tolist(), features):
                assert anyres_num_image_tokens(size, scale, pinpoints, 96) == feature.shape[0]


def test_a_3x3_image_at_144_tokens_per_crop(saved_next_model):
    """The paper's Table 5 setting: 3x3 crops + base at 144 tokens per crop (12x12)."""
    pinpoints = grid_pinpoints(96, 3)
    config = load_m3_config(saved_next_model, image_grid_pinpoints=pinpoints)
    # 288x288: 3x3 crops, no padding: base 144 + a 36x36 grid + 36 newlines
    assert image_token_counts(config, 144, image_sizes=[(288, 288)]) == [144 + 36 * 36 + 36]
    assert image_token_counts(load_m3_config(saved_next_model), 144, image_sizes=[(288, 288)]) == [144 + 24 * 24 + 24]


def test_mismatched_pinpoints_are_a_clear_error(saved_next_model):
    from m3.processing import M3Processor

    model = load_m3_model(saved_next_model, image_grid_pinpoints=grid_pinpoints(96, 3))
    with pytest.raises(ValueError, match="image_grid_pinpoints .* differ from the image processor's"):
        M3Processor.from_pretrained(saved_next_model, config=model.config)  # the processor kept the saved grids
    trained_processor = M3Processor.from_pretrained(saved_next_model)
    inputs = trained_processor.image_processor([random_image(288, 288, 0)], return_tensors="pt")
    with pytest.raises(ValueError, match="pixel_values hold 5 crops but config.image_grid_pinpoints give"):
        model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"], m3_scale=9)
