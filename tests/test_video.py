"""Collage mode (IG-VLM's image grid): layout, frame order, padding, and the token count at every scale."""

import numpy as np
import pytest
import torch
from PIL import Image

from m3.prompting import image_token_counts
from m3.video import answer_collage, collage, collage_shape

from .conftest import random_image

COLOURS = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200), (200, 0, 200), (90, 90, 90)]


def solid(height: int, width: int, colour) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


def cell(picture: np.ndarray, row: int, col: int, height: int, width: int) -> np.ndarray:
    return picture[row * height : (row + 1) * height, col * width : (col + 1) * width]


def test_layout_follows_ig_vlm():
    """IG-VLM puts round(sqrt(n)) frames in a row: 6 frames -> 3 rows of 2."""
    expected = {1: (1, 1), 2: (2, 1), 3: (2, 2), 4: (2, 2), 5: (3, 2), 6: (3, 2), 8: (3, 3), 9: (3, 3), 12: (4, 3)}
    assert {n: collage_shape(n) for n in expected} == expected
    assert collage_shape(6, rows=2) == (2, 3) and collage_shape(6, cols=3) == (2, 3) and collage_shape(7, 1) == (1, 7)
    with pytest.raises(ValueError, match="cannot hold 6 frames"):
        collage_shape(6, rows=2, cols=2)
    with pytest.raises(ValueError, match="at least one frame"):
        collage_shape(0)


@pytest.mark.parametrize("rows, cols", [(None, None), (2, 3), (1, 6), (6, 1)])
def test_frames_are_tiled_row_major(rows, cols):
    frames = [solid(20, 30, colour) for colour in COLOURS[:6]]
    picture = np.asarray(collage(frames, rows=rows, cols=cols))
    rows, cols = collage_shape(6, rows, cols)
    assert picture.shape == (rows * 20, cols * 30, 3)
    for index, colour in enumerate(COLOURS[:6]):
        assert (cell(picture, index // cols, index % cols, 20, 30) == colour).all(), index


def test_empty_cells_are_padded_with_the_background():
    frames = [solid(20, 30, colour) for colour in COLOURS[:5]]  # 3 x 2 grid, the last cell empty
    picture = np.asarray(collage(frames))
    assert (cell(picture, 2, 1, 20, 30) == 255).all()  # IG-VLM's white
    assert (cell(picture, 2, 0, 20, 30) == COLOURS[4]).all()
    grey = np.asarray(collage(frames, background=(7, 8, 9)))
    assert (cell(grey, 2, 1, 20, 30) == (7, 8, 9)).all()


def test_frames_of_different_sizes_share_the_smallest_cell():
    """Default: every frame is stretched to (smallest height, smallest width); keep_aspect letterboxes instead."""
    frames = [solid(40, 30, COLOURS[0]), solid(20, 60, COLOURS[1])]  # cell: 20 x 30; layout 2 rows x 1
    stretched = np.asarray(collage(frames))
    assert stretched.shape == (40, 30, 3)
    assert (cell(stretched, 0, 0, 20, 30) == COLOURS[0]).all() and (cell(stretched, 1, 0, 20, 30) == COLOURS[1]).all()

    boxed = np.asarray(collage(frames, keep_aspect=True, background=(0, 0, 0)))
    first = cell(boxed, 0, 0, 20, 30)  # 40x30 scaled to 20x15, centred: columns 7..21
    assert (first[:, 7:22] == COLOURS[0]).all() and (first[:, :7] == 0).all() and (first[:, 22:] == 0).all()
    second = cell(boxed, 1, 0, 20, 30)  # 20x60 scaled to 10x30, centred: rows 5..14
    assert (second[5:15] == COLOURS[1]).all() and (second[:5] == 0).all() and (second[15:] == 0).all()
    sized = collage(frames, cell_size=(50, 60))
    assert sized.size == (60, 100)


def test_collage_token_count_equals_the_real_feature_length(model_and_processor, family):
    """At every scale the count a prompt needs (image_token_counts; `scale` for LLaVA-1.5) is the length of the
    features get_image_features gives for the collage, and answer_collage feeds exactly that many."""
    model, processor = model_and_processor
    frames = [random_image(60, 80, seed) for seed in range(6)]
    picture = collage(frames)
    assert picture.size == (160, 180)  # 2 frames wide, 3 high
    pixels = processor.image_processor([picture], return_tensors="pt")
    sizes = pixels.get("image_sizes")
    if family == "llava_next":
        assert sizes.tolist() == [[180, 160]]
    for scale in model.config.m3_scales:
        with torch.no_grad():
            features = model.model.get_image_features(pixels["pixel_values"], image_sizes=sizes, m3_scale=scale)
        length = features.pooler_output[0].shape[0]
        expected = image_token_counts(model.config, scale, image_sizes=[(180, 160)], num_images=1)[0]
        assert length == expected, scale
        if family == "llava":
            assert length == scale
        output = answer_collage(model, processor, frames, "what color is the circle", scale, max_new_tokens=2)
        assert output.tokens == [expected] and len(output.answers) == 1
