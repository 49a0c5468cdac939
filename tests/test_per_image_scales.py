"""Per-image scales (issue 15): every image of a prompt, or of a batch, at its own scale.

The reference is plain transformers on the same weights, fed with each image's projected features pooled by the
official formula (``avg_pool2d`` with kernel = stride = ``int(sqrt(N / s))``, written out here) at its own scale.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from m3.anyres import pack_anyres_features
from m3.inference import answer_images, compact_prompts, encode_images, generate_at_scale
from m3.processing import llava_prompt
from m3.prompting import image_token_counts, image_token_mismatch

from .conftest import random_image

PLAIN_CLASSES = {"llava": LlavaForConditionalGeneration, "llava_next": LlavaNextForConditionalGeneration}
IMAGE = "<image>"
GREEDY = dict(do_sample=False, max_new_tokens=5, min_new_tokens=5)


def official_pool(tokens: torch.Tensor, scale: int) -> torch.Tensor:
    """``(..., N, D)`` -> ``(..., scale, D)`` as the official code pools: avg_pool2d(k, k), k = int(sqrt(N / s))."""
    num_tokens, dim = tokens.shape[-2:]
    side, kernel = int(math.sqrt(num_tokens)), int(math.sqrt(num_tokens / scale))
    grid = tokens.reshape(-1, side, side, dim).permute(0, 3, 1, 2)
    pooled = F.avg_pool2d(grid, kernel_size=kernel, stride=kernel)
    return pooled.permute(0, 2, 3, 1).reshape(*tokens.shape[:-2], -1, dim)


def plain_twin(model, family):
    plain = PLAIN_CLASSES[family](model.config).eval()
    plain.load_state_dict(model.state_dict())
    return plain


def reference_features(plain, family, pixels, scales) -> list[torch.Tensor]:
    """Each image's features at its own scale from the plain model: LLaVA-1.5 pools the parent's projected grid;
    LLaVA-NeXT pools every projected crop (captured at the projector), then packs them (our packing)."""
    if family == "llava":
        full = plain.model.get_image_features(pixels["pixel_values"]).pooler_output
        return [official_pool(grid, scale) for grid, scale in zip(full, scales)]
    captured = []
    hook = plain.model.multi_modal_projector.register_forward_hook(lambda module, args, out: captured.append(out))
    plain.model.get_image_features(pixels["pixel_values"], pixels["image_sizes"])
    hook.remove()
    config = plain.config
    crop_size = config.vision_config.image_size
    counts = [image_size_to_num_patches(size, config.image_grid_pinpoints, crop_size) for size in pixels["image_sizes"]]
    crops = torch.split(captured[0], counts, dim=0)
    return [
        pack_anyres_features(
            official_pool(image_crops, scale), size, config.image_grid_pinpoints, crop_size, plain.model.image_newline
        )
        for image_crops, size, scale in zip(crops, pixels["image_sizes"], scales)
    ]


@pytest.mark.parametrize("scales", [(1, 576), (576, 9), (36, 144), (9, 1), (144, 36)])
def test_two_images_at_their_own_scales_equal_plain_transformers(model_and_processor, family, scales):
    model, processor = model_and_processor
    plain = plain_twin(model, family)
    images = [random_image(96, 150, 0), random_image(200, 96, 1)]
    question = "what color is the circle"
    ours_inputs = processor(llava_prompt(question, num_images=2), images, m3_scale=list(scales))
    pixels = processor.image_processor(images, return_tensors="pt")
    with torch.no_grad():
        features = reference_features(plain, family, pixels, scales)
        runs = [IMAGE * feature.shape[0] for feature in features]  # written out, not expanded by our helpers
        reference = processor.tokenizer(f"USER: {runs[0]}\n{runs[1]}\n{question} ASSISTANT:", return_tensors="pt")
        theirs = plain(
            input_ids=reference["input_ids"],
            attention_mask=reference["attention_mask"],
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=features)},
        ).logits
        ours = model(**ours_inputs, m3_scale=list(scales)).logits
    assert torch.equal(ours_inputs["input_ids"], reference["input_ids"])
    if family == "llava":
        assert [feature.shape[0] for feature in features] == list(scales)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_per_image_features_and_counts_equal_each_images_own_scale(model_and_processor, family):
    """features_at_scale / get_image_features / image_token_counts with a list equal the scalar calls image by image."""
    model, processor = model_and_processor
    images = [random_image(96, 150, 0), random_image(200, 96, 1), random_image(96, 96, 2)]
    scales = [144, 1, 36]
    pixels = processor.image_processor(images, return_tensors="pt")
    sizes = pixels.get("image_sizes")
    with torch.no_grad():
        grids = model.model.encode_images(pixels["pixel_values"], sizes)
        mixed = model.model.features_at_scale(grids, scales, sizes)
        output = model.model.get_image_features(pixels["pixel_values"], image_sizes=sizes, m3_scale=scales)
        for index, scale in enumerate(scales):
            alone = model.model.features_at_scale(grids, scale, sizes)[index]
            torch.testing.assert_close(mixed[index], alone, rtol=0, atol=0)
            torch.testing.assert_close(output.pooler_output[index], alone, rtol=0, atol=1e-6)
    assert output.m3_scales == scales
    counts = image_token_counts(model.config, scales, image_sizes=sizes, num_images=3)
    assert counts == [feature.shape[0] for feature in mixed]
    expanded = processor([llava_prompt("what color", num_images=3)], images, m3_scale=scales)
    assert int((expanded["input_ids"] == model.config.image_token_id).sum()) == sum(counts)


def test_mixed_scale_batch_generates_each_rows_tokens(model_and_processor, family):
    """Rows with different numbers of images at different scales, in one batch, generate what each row generates
    alone: with pixels through generate(m3_scale=[...]) and from precomputed grids through m3.inference."""
    model, processor = model_and_processor
    pad = processor.tokenizer.pad_token_id
    rows = [
        ("what color is the circle", [random_image(96, 150, 0), random_image(96, 96, 1)], [1, 144]),
        ("how many dots are there", [random_image(200, 96, 2)], [576]),
        ("where is the square", [random_image(120, 100, 3), random_image(96, 200, 4)], [36, 9]),
    ]
    texts = [llava_prompt(question, num_images=len(images)) for question, images, _ in rows]
    images = [image for _, row_images, _ in rows for image in row_images]
    scales = [scale for *_, row_scales in rows for scale in row_scales]
    inputs = processor(texts, images, m3_scale=scales)
    with torch.no_grad():
        batch = model.generate(**inputs, m3_scale=scales, pad_token_id=pad, **GREEDY)[:, inputs["input_ids"].shape[1] :]
        for row, (text, (_, row_images, row_scales)) in enumerate(zip(texts, rows)):
            alone_inputs = processor([text], row_images, m3_scale=row_scales)
            alone = model.generate(**alone_inputs, m3_scale=row_scales, pad_token_id=pad, **GREEDY)
            assert torch.equal(batch[row], alone[0, alone_inputs["input_ids"].shape[1] :]), row

    grids, sizes = encode_images(model, processor, images)
    questions = [question for question, *_ in rows]
    compact = compact_prompts(processor, questions, sizes, num_images=[len(row[1]) for row in rows])
    together = generate_at_scale(model, processor, compact, grids, sizes, scales, 5, min_new_tokens=5)
    start = 0
    for row, (question, row_images, row_scales) in enumerate(rows):
        alone = answer_images(model, processor, row_images, question, row_scales, 5, min_new_tokens=5)
        row_sizes = None if sizes is None else sizes[start : start + len(row_images)]
        assert together.answers[row] == alone.answers[0], row
        assert (
            together.tokens[row]
            == alone.tokens[0]
            == sum(image_token_counts(model.config, row_scales, image_sizes=row_sizes, num_images=len(row_images)))
        )
        start += len(row_images)


def separated_prompt(question: str) -> str:
    """Two images with text between them, so each image has its own run of image tokens."""
    return f"USER: {IMAGE} first {IMAGE} second {question} ASSISTANT:"


def test_wrong_number_of_scales_is_a_clear_error(model_and_processor):
    model, processor = model_and_processor
    images = [random_image(96, 150, 0), random_image(200, 96, 1)]
    inputs = processor(separated_prompt("what color"), images, m3_scale=[9, 36])
    pixels = processor.image_processor(images, return_tensors="pt")
    message = r"m3_scale holds 3 scales but there are 2 images"
    with pytest.raises(ValueError, match=message):
        model(**inputs, m3_scale=[9, 36, 1])
    with pytest.raises(ValueError, match=message):
        processor(separated_prompt("what color"), images, m3_scale=[9, 36, 1])
    with pytest.raises(ValueError, match=message):
        model.generate(**inputs, m3_scale=[9, 36, 1], max_new_tokens=2)
    with pytest.raises(ValueError, match=message):
        image_token_counts(model.config, [9, 36, 1], image_sizes=pixels.get("image_sizes"), num_images=2)
    with pytest.raises(ValueError, match=r"unknown scale 10 .* valid scales are"):
        model(**inputs, m3_scale=[9, 10])


def test_a_short_run_of_image_tokens_names_the_image_and_its_scale(model_and_processor):
    model, processor = model_and_processor
    images = [random_image(96, 150, 0), random_image(200, 96, 1)]
    inputs = processor(separated_prompt("what color"), images, m3_scale=[9, 36])
    upstream = "Image features and image tokens do not match"
    with torch.no_grad():
        with pytest.raises(ValueError, match=rf"{upstream}.*image 1 \(scale 144\) needs \d+ image tokens but its run"):
            model(**inputs, m3_scale=[9, 144])
        with pytest.raises(ValueError, match=rf"{upstream}.*image 0 \(scale 1\) needs \d+ image tokens but its run"):
            model.generate(**inputs, m3_scale=[1, 36], max_new_tokens=2)  # generate encodes the images itself
        with pytest.raises(ValueError, match=r"m3_scale=\[9, 144\]\)"):  # says how to build the right prompt
            model(**inputs, m3_scale=[9, 144])


def test_swapped_scales_with_equal_totals_are_caught(tokenizer):
    """transformers checks only the total number of image tokens: a prompt built for [36, 9] fed with images at
    [9, 36] would silently put image 0's features on image 1's tokens. The per-image check refuses it."""
    from m3.processing import M3Processor
    from m3.tiny import tiny_image_processor, tiny_model

    model = tiny_model("llava", tokenizer=tokenizer)
    processor = M3Processor(tiny_image_processor("llava"), tokenizer, model.config)
    images = [random_image(96, 150, 0), random_image(200, 96, 1)]
    inputs = processor(separated_prompt("what color"), images, m3_scale=[36, 9])
    with pytest.raises(ValueError, match=r"tokens: 45, features: 45.*image 0 \(scale 9\) needs 9 image tokens but"):
        model(**inputs, m3_scale=[9, 36])


def test_precomputed_features_without_scales_name_the_image(model_and_processor):
    model, processor = model_and_processor
    images = [random_image(96, 150, 0), random_image(200, 96, 1)]
    inputs = processor(separated_prompt("what color"), images, m3_scale=[9, 36])
    with torch.no_grad():
        features = model.model.get_image_features(
            inputs["pixel_values"], image_sizes=inputs.get("image_sizes"), m3_scale=[9, 144]
        ).pooler_output
    bare = {"image": BaseModelOutputWithPooling(pooler_output=features)}  # no scales attached
    with pytest.raises(ValueError, match=r"2 image\(s\) need \d+: image 1 needs \d+ image tokens but its run"):
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], mm_encoder_outputs=bare)


def test_image_token_mismatch_follows_runs_in_order():
    token = 7
    ids = torch.tensor([[1, 7, 7, 7, 2, 7, 7, 0], [1, 7, 7, 7, 7, 7, 2, 0]])
    assert image_token_mismatch(ids, token, [3, 2, 5]) is None  # one run per image
    assert image_token_mismatch(ids, token, [3, 2, 2, 3]) is None  # touching placeholders share a run
    assert "image 1 (scale 9) needs 3 image tokens but its run in row 0 holds 2" in image_token_mismatch(
        ids, token, [3, 3, 4], scales=[1, 9, 1]
    )
    assert "image 3 needs 4 image tokens but only 3 are left in the run of 5 in row 1" in image_token_mismatch(
        ids, token, [3, 2, 2, 4]
    )
    assert "row 1 holds 1 image tokens more than the 4 image(s) need" in image_token_mismatch(ids, token, [3, 2, 2, 2])
    assert "image 4 needs 1 image tokens but input_ids hold no run for it" in image_token_mismatch(
        ids, token, [3, 2, 2, 3, 1]
    )
