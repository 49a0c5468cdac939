import pytest
import torch
from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

from m3.loading import load_m3_model
from m3.modeling import M3LlavaForConditionalGeneration
from m3.processing import llava_prompt
from m3.prompting import expand_image_tokens
from m3.tiny import tiny_model

from .conftest import random_image, training_batch

PLAIN_CLASSES = {"llava": LlavaForConditionalGeneration, "llava_next": LlavaNextForConditionalGeneration}
QUESTIONS = ["what color is the circle", "how many dots are there"]
ANSWERS = ["red", "3"]


def make_images():
    return [random_image(96, 150, 0), random_image(200, 96, 1)]


def official_design_loss(model, batch, scales):
    """One full forward per scale with the vision tower re-run each time (the official code), averaged."""
    losses = []
    for scale in scales:
        n_images = (batch["input_ids"] == model.config.image_token_id).sum().item()
        counts = [scale] * n_images
        if "image_sizes" in batch:
            from m3.prompting import image_token_counts

            counts = image_token_counts(model.config, scale, image_sizes=batch["image_sizes"])
        ids, mask, labels = expand_image_tokens(
            batch["input_ids"], model.config.image_token_id, counts, batch["attention_mask"], batch["labels"]
        )
        out = model(
            input_ids=ids,
            attention_mask=mask,
            labels=labels,
            pixel_values=batch["pixel_values"],
            image_sizes=batch.get("image_sizes"),
            m3_scale=scale,
        )
        losses.append(out.loss)
    return torch.stack(losses).mean(), losses


def test_full_scale_equals_plain_transformers(model_and_processor, family):
    model, processor = model_and_processor
    plain = PLAIN_CLASSES[family](model.config).eval()
    plain.load_state_dict(model.state_dict())
    inputs = processor([llava_prompt(q) for q in QUESTIONS], make_images(), m3_scale=576)
    with torch.no_grad():
        ours = model(**inputs, m3_scale=576).logits
        theirs = plain(**inputs).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_multiscale_loss_is_mean_of_single_scale_losses(model_and_processor):
    model, processor = model_and_processor
    batch = training_batch(processor, make_images(), QUESTIONS, ANSWERS)
    scales = model.config.m3_scales
    with torch.no_grad():
        out = model(**batch, m3_scales=scales)
        reference, per_scale = official_design_loss(model, batch, scales)
    assert sorted(out.per_scale_loss) == scales
    for scale, loss in zip(scales, per_scale):
        torch.testing.assert_close(out.per_scale_loss[scale], loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, reference, rtol=0, atol=1e-5)
    assert len({round(v.item(), 4) for v in out.per_scale_loss.values()}) > 1  # scales really differ


@pytest.mark.parametrize("train_vision_tower", [False, True])
def test_multiscale_gradients_equal_official_design(family, tokenizer, train_vision_tower):
    from m3.processing import M3Processor
    from m3.tiny import tiny_image_processor

    model = tiny_model(family, tokenizer=tokenizer, m3_train_vision_tower=train_vision_tower).train()
    processor = M3Processor(tiny_image_processor(family), tokenizer, model.config)
    batch = training_batch(processor, make_images(), QUESTIONS, ANSWERS)
    scales = model.config.m3_scales

    model(**batch, m3_scales=scales).loss.backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    official_design_loss(model, batch, scales)[0].backward()
    theirs = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    assert ours.keys() == theirs.keys()
    vision = [name for name in ours if ".vision_tower." in name]
    assert bool(vision) == train_vision_tower  # frozen by default: no gradient reaches the tower
    assert any("multi_modal_projector" in name for name in ours)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-5, msg=name)


def test_generate_at_every_scale_with_pixels_and_with_precomputed_features(model_and_processor):
    model, processor = model_and_processor
    prompts = [llava_prompt(q) for q in QUESTIONS]
    images = make_images()
    for scale in model.config.m3_scales:
        inputs = processor(prompts, images, m3_scale=scale)
        with torch.no_grad():
            from_pixels = model.generate(**inputs, m3_scale=scale, max_new_tokens=5, do_sample=False)
            features = model.model.get_image_features(
                inputs["pixel_values"], image_sizes=inputs.get("image_sizes"), m3_scale=scale
            )
            from_features = model.generate(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                mm_encoder_outputs={"image": features},
                max_new_tokens=5,
                do_sample=False,
            )
            logits = model(**inputs, m3_scale=scale).logits
        assert torch.equal(from_pixels, from_features), scale
        new_tokens = from_pixels[:, inputs["input_ids"].shape[1] :]
        assert new_tokens.shape == (2, 5)
        assert torch.equal(new_tokens[:, 0], logits[:, -1].argmax(-1)), scale


def test_default_scale_comes_from_the_config(tokenizer):
    from m3.processing import M3Processor
    from m3.tiny import tiny_image_processor

    model = tiny_model("llava", tokenizer=tokenizer, m3_default_scale=9)
    processor = M3Processor(tiny_image_processor("llava"), tokenizer, model.config)
    inputs = processor([llava_prompt("what color")], make_images()[:1])
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 9
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, model(**inputs, m3_scale=9).logits, rtol=0, atol=0)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_save_and_load_keep_weights_and_m3_settings(family, tokenizer, tmp_path):
    model = tiny_model(family, tokenizer=tokenizer, m3_scales=[1, 9, 576], m3_default_scale=9)
    model.save_pretrained(tmp_path)
    loaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert loaded.config.m3_scales == [1, 9, 576] and loaded.config.m3_default_scale == 9
    _assert_same_weights(model, loaded)
    assert type(load_m3_model(tmp_path)) is type(model)


def test_plain_llava_hf_checkpoint_loads_into_m3_and_back(family, tokenizer, tmp_path):
    torch.manual_seed(1)
    m3_model = tiny_model(family, tokenizer=tokenizer)
    plain = PLAIN_CLASSES[family](m3_model.config)  # a plain transformers model, saved by transformers
    plain.save_pretrained(tmp_path / "plain")
    loaded, info = type(m3_model).from_pretrained(tmp_path / "plain", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    _assert_same_weights(plain, loaded)

    loaded.save_pretrained(tmp_path / "m3")
    back, info = PLAIN_CLASSES[family].from_pretrained(tmp_path / "m3", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    _assert_same_weights(plain, back)


def test_wrong_number_of_image_tokens_is_a_clear_error(model_and_processor):
    model, processor = model_and_processor
    inputs = processor([llava_prompt("what color")], make_images()[:1], m3_scale=36)
    with pytest.raises(ValueError, match=r"image tokens but 1 image\(s\) at scale 9 need"):
        model(**inputs, m3_scale=9)


def test_unknown_scale_is_a_clear_error(model_and_processor):
    model, processor = model_and_processor
    batch = training_batch(processor, make_images(), QUESTIONS, ANSWERS)
    with pytest.raises(ValueError, match="unknown scale 10 .* valid scales are"):
        model(**batch, m3_scale=10)
    with pytest.raises(ValueError, match="unknown scale 10"):
        model(**batch, m3_scales=[1, 10])
    with pytest.raises(ValueError, match="unknown scale 10"):
        tiny_model("llava", m3_scales=[1, 10])


def test_multiscale_forward_needs_labels_and_one_scale_argument(model_and_processor):
    model, processor = model_and_processor
    batch = training_batch(processor, make_images(), QUESTIONS, ANSWERS)
    labels = batch.pop("labels")
    with pytest.raises(ValueError, match="needs labels"):
        model(**batch, m3_scales=[1, 9])
    with pytest.raises(ValueError, match="not both"):
        model(**batch, labels=labels, m3_scales=[1, 9], m3_scale=9)


def test_non_square_grid_is_a_clear_error(tokenizer):
    # the "full" strategy keeps CLS: 577 tokens cannot be pooled on a square grid
    model = tiny_model("llava", tokenizer=tokenizer)
    model.config.vision_feature_select_strategy = "full"
    pixels = torch.randn(1, 3, 96, 96)
    with pytest.raises(ValueError, match="577 tokens"):
        model.model.get_image_features(pixels, m3_scale=9)


def test_text_only_batch_has_equal_losses_at_every_scale(tokenizer):
    model = tiny_model("llava", tokenizer=tokenizer)
    encoded = tokenizer(["what color is the circle red"], return_tensors="pt")
    out = model(**encoded, labels=encoded["input_ids"], m3_scales=[1, 576])
    assert out.per_scale_loss[1] == out.per_scale_loss[576]
    assert isinstance(model, M3LlavaForConditionalGeneration)


def _hub_layout_key(key: str) -> str:
    """In-memory transformers 5 name -> the key layout of llava-hf checkpoints on the hub (transformers 4)."""
    renames = [
        ("lm_head.", "language_model.lm_head."),
        ("model.language_model.", "language_model.model."),
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.image_newline", "image_newline"),
    ]
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old) :]
    raise KeyError(key)


def test_hub_layout_llava_hf_checkpoint_loads_into_m3(family, tokenizer, tmp_path):
    import json

    from safetensors.torch import save_file

    source = tiny_model(family, tokenizer=tokenizer)
    state = source.state_dict()
    save_file({_hub_layout_key(k): v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    config = source.config.to_dict()
    for key in ("m3_scales", "m3_default_scale", "m3_train_vision_tower"):
        config.pop(key)  # a real llava-hf config.json knows nothing of M3
    (tmp_path / "config.json").write_text(json.dumps(config))

    loaded, info = type(source).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    _assert_same_weights(source, loaded)
    assert loaded.config.m3_scales == [1, 9, 36, 144, 576] and loaded.config.m3_default_scale == 576
