"""The M3 classes drop in where transformers' LLaVA classes are used: the parents' call contracts hold.

Each test compares an M3 model with the parent class loaded from the same weights (both families).
"""

import inspect

import pytest
import torch
from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

from m3.pooling import pool_tokens
from m3.processing import llava_prompt

from .conftest import random_image

PLAIN_CLASSES = {"llava": LlavaForConditionalGeneration, "llava_next": LlavaNextForConditionalGeneration}
GREEDY = dict(do_sample=False, max_new_tokens=6, min_new_tokens=6)


def plain_twin(model, family):
    plain = PLAIN_CLASSES[family](model.config).eval()
    plain.load_state_dict(model.state_dict())
    return plain


def text_inputs(processor, texts):
    return processor.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")


def test_text_only_generate_equals_the_parent(model_and_processor, family):
    """A text-only turn (no pixel_values): generate passes mm_encoder_outputs={}, which used to raise KeyError."""
    model, processor = model_and_processor
    plain = plain_twin(model, family)
    inputs = text_inputs(processor, ["USER: how many dots are there ? ASSISTANT:", "USER: what color ? ASSISTANT:"])
    with torch.no_grad():
        ours = model.generate(**inputs, **GREEDY, pad_token_id=processor.tokenizer.pad_token_id)
        theirs = plain.generate(**inputs, **GREEDY, pad_token_id=processor.tokenizer.pad_token_id)
        logits = model(**inputs).logits
    assert torch.equal(ours, theirs)
    torch.testing.assert_close(logits, plain(**inputs).logits, rtol=0, atol=0)


@pytest.mark.parametrize("scale", [9, 576])
def test_generate_continues_from_a_cache_without_the_pixels(model_and_processor, scale):
    """Generate 3 tokens with the image, then 3 more from the returned cache without re-sending pixel_values:
    the tokens equal one uninterrupted 6-token generate."""
    model, processor = model_and_processor
    inputs = processor([llava_prompt("what color is the circle ?")], [random_image(96, 150, 0)], m3_scale=scale)
    settings = dict(do_sample=False, pad_token_id=processor.tokenizer.pad_token_id, m3_scale=scale)
    with torch.no_grad():
        whole = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, **settings)
        first = model.generate(
            **inputs, max_new_tokens=3, min_new_tokens=3, return_dict_in_generate=True, use_cache=True, **settings
        )
        rest = model.generate(
            input_ids=first.sequences,
            attention_mask=torch.ones_like(first.sequences),
            past_key_values=first.past_key_values,
            max_new_tokens=3,
            min_new_tokens=3,
            do_sample=False,
            pad_token_id=processor.tokenizer.pad_token_id,
        )
    assert torch.equal(rest, whole)


def test_forward_names_the_parents_parameters_in_their_order(model_and_processor, family):
    model, _ = model_and_processor
    ours = list(inspect.signature(type(model).forward).parameters)
    theirs = [name for name in inspect.signature(PLAIN_CLASSES[family].forward).parameters if name != "kwargs"]
    assert ours[: len(theirs)] == theirs  # positional calls mean the same; nothing hides in **kwargs
    assert {"logits_to_keep", "position_ids", "inputs_embeds", "past_key_values"} <= set(ours)
    assert ours[len(theirs) :] == ["m3_scale", "m3_scales", "kwargs"]


def test_generate_prefill_computes_logits_for_the_last_position_only(model_and_processor):
    """transformers passes logits_to_keep=1 to a forward that names it: the LM head sees one position per row."""
    model, processor = model_and_processor
    inputs = processor([llava_prompt("what color is the circle ?")], [random_image(96, 150, 0)], m3_scale=576)
    positions = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: positions.append(args[0].shape[1]))
    with torch.no_grad():
        model.generate(**inputs, m3_scale=576, do_sample=False, max_new_tokens=3, min_new_tokens=3)
    hook.remove()
    assert inputs["input_ids"].shape[1] > 576  # the prompt holds every visual token
    assert positions == [1, 1, 1]  # prefill and both decoding steps: one position each


def test_logits_to_keep_in_forward(model_and_processor):
    model, processor = model_and_processor
    inputs = processor([llava_prompt("what color is the circle ?")], [random_image(96, 150, 0)], m3_scale=36)
    with torch.no_grad():
        full = model(**inputs, m3_scale=36).logits
        last = model(**inputs, m3_scale=36, logits_to_keep=1).logits
    assert last.shape[1] == 1
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=0, atol=1e-6)


def image_inputs(processor, family):
    images = [random_image(96, 150, 0), random_image(200, 96, 1)]
    pixels = processor.image_processor(images, return_tensors="pt")
    return {key: pixels[key] for key in ("pixel_values", "image_sizes") if key in pixels}


@pytest.mark.parametrize("return_dict", [True, False])
def test_get_image_features_keeps_the_parents_output_contract(model_and_processor, family, return_dict):
    """Every scale: the tower's fields (last_hidden_state, hidden_states, attentions) as the parent gives them, and
    pooler_output pooled to the scale. At the largest scale the whole output equals the parent's."""
    model, processor = model_and_processor
    model.set_attn_implementation("eager")  # sdpa returns no attention weights
    plain = plain_twin(model, family)
    plain.set_attn_implementation("eager")
    inputs = image_inputs(processor, family)
    options = dict(output_hidden_states=True, output_attentions=True, return_dict=return_dict)
    with torch.no_grad():
        theirs = plain.model.get_image_features(**inputs, **options)
        parent_fields = theirs if return_dict else None
        for scale in model.config.m3_scales:
            ours = model.model.get_image_features(**inputs, m3_scale=scale, **options)
            if not return_dict:
                assert isinstance(ours, tuple) and len(ours) == len(theirs) == 4
                last, pooled, hidden, attentions = ours
                their_last, _, their_hidden, their_attentions = theirs
            else:
                assert set(ours.keys()) == set(parent_fields.keys())
                last, pooled, hidden, attentions = (
                    ours.last_hidden_state, ours.pooler_output, ours.hidden_states, ours.attentions
                )  # fmt: skip
                their_last, their_hidden, their_attentions = (
                    theirs.last_hidden_state, theirs.hidden_states, theirs.attentions
                )  # fmt: skip
            torch.testing.assert_close(last, their_last, rtol=0, atol=0)
            assert len(hidden) == len(their_hidden) == model.config.vision_config.num_hidden_layers + 1
            assert len(attentions) == len(their_attentions) == model.config.vision_config.num_hidden_layers
            for a, b in zip((*hidden, *attentions), (*their_hidden, *their_attentions)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
            assert len(pooled) == 2
            grids = model.model.encode_images(**inputs)
            expected = model.model.features_at_scale(grids, scale, inputs.get("image_sizes"))
            for feature, reference in zip(pooled, expected):
                torch.testing.assert_close(feature, reference, rtol=0, atol=1e-6)
            if family == "llava":
                assert all(feature.shape == (scale, model.config.text_config.hidden_size) for feature in pooled)
        full = model.model.get_image_features(**inputs, m3_scale=576, return_dict=True)
        parent = plain.model.get_image_features(**inputs, return_dict=True)
    for feature, reference in zip(full.pooler_output, parent.pooler_output):
        torch.testing.assert_close(feature, reference, rtol=0, atol=1e-6)
    if family == "llava":  # LLaVA-1.5: pooling is the official avg_pool2d of the parent's projected grid
        nine = model.model.get_image_features(**inputs, m3_scale=9).pooler_output
        for feature, reference in zip(nine, parent.pooler_output):
            torch.testing.assert_close(feature, pool_tokens(reference, 9), rtol=0, atol=1e-6)


def test_get_image_features_without_hidden_state_requests_matches_the_parent(model_and_processor, family):
    """Not asked for, hidden states are captured only at the feature layer, exactly as the parent does."""
    model, processor = model_and_processor
    plain = plain_twin(model, family)
    inputs = image_inputs(processor, family)
    with torch.no_grad():
        ours = model.model.get_image_features(**inputs, m3_scale=36)
        theirs = plain.model.get_image_features(**inputs)
    assert set(ours.keys()) == set(theirs.keys())
    assert [h is None for h in ours.hidden_states] == [h is None for h in theirs.hidden_states]


def test_a_wrong_image_token_count_uses_the_upstream_phrase(model_and_processor):
    model, processor = model_and_processor
    inputs = processor([llava_prompt("what color ?")], [random_image(96, 96, 0)], m3_scale=9)
    with pytest.raises(ValueError, match=r"Image features and image tokens do not match.*at scale 36"):
        model(**inputs, m3_scale=36)


def test_feature_layer_zero_is_captured(family, tokenizer):
    """vision_feature_layer=0 (the embedding output; the tiny preset reads it): a bare index 0 must not read as
    "no hidden states" when the tower is asked for the selected layer only."""
    from m3.processing import M3Processor
    from m3.tiny import tiny_image_processor, tiny_model

    model = tiny_model(family, tokenizer=tokenizer, vision_feature_layer=0)
    processor = M3Processor(tiny_image_processor(family), tokenizer, model.config)
    inputs = image_inputs(processor, family)
    with torch.no_grad():
        features = model.model.get_image_features(**inputs, m3_scale=9).pooler_output
        pixels = inputs["pixel_values"]
        if family == "llava_next":  # the base crop of the first image
            pixels = pixels[0, :1]
        layer0 = model.model.vision_tower(pixels[:1], output_hidden_states=True).hidden_states[0][:, 1:]
        grid = model.model.multi_modal_projector(layer0)[0]
    torch.testing.assert_close(features[0][:9], pool_tokens(grid, 9), rtol=0, atol=1e-6)


# ---- transformers' own model tests, as our own: the checks its LLaVA / NeXT suites skipped for the M3 classes


def test_forward_declares_the_parents_kwargs_so_attention_checks_run(family):
    """transformers' suite reads ``**kwargs: Unpack[TransformersKwargs]`` as "can return attentions"; a bare
    ``**kwargs`` made it skip its eager-vs-sdpa check for the M3 classes alone."""
    import typing

    from m3.modeling import MODEL_CLASSES

    ours = typing.get_type_hints(MODEL_CLASSES[family].forward)["kwargs"]
    assert ours == typing.get_type_hints(PLAIN_CLASSES[family].forward)["kwargs"]


def test_modeling_file_has_the_copyright_year_transformers_reads():
    """transformers' ``test_can_init_all_missing_weights`` dates a model by the ``# Copyright YEAR`` line on top of its
    modeling file and skips models it cannot date (or older than 2023)."""
    import re

    import m3.modeling

    first = inspect.getsource(m3.modeling).splitlines()[0]
    assert int(re.match(r"# Copyright (\d{4}) ", first).group(1)) >= 2023


@pytest.mark.parametrize("padded", [False, True])
def test_eager_and_sdpa_attention_agree_and_eager_returns_the_attentions(model_and_processor, family, padded):
    """transformers' eager-vs-sdpa check on the M3 classes: at a pooled scale and in the multi-scale training forward,
    eager (returning its attentions) and sdpa give the same logits and losses."""
    model, processor = model_and_processor
    images = [random_image(64, 80, 1), random_image(90, 60, 2)]
    questions = ["what color is the square ?", "what" if padded else "what color is the circle ?"]
    batch = processor([llava_prompt(q) for q in questions], images, m3_scale=9, padding_side="left")
    outputs = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            outputs[implementation] = model(**batch, m3_scale=9, output_attentions=implementation == "eager")
    attentions = outputs["eager"].attentions
    length = batch["input_ids"].shape[1]
    assert len(attentions) == model.config.text_config.num_hidden_layers
    assert all(a.shape[-2:] == (length, length) for a in attentions)
    real = batch["attention_mask"].bool()  # padding positions hold no answer in either
    torch.testing.assert_close(outputs["sdpa"].logits[real], outputs["eager"].logits[real], rtol=1e-4, atol=1e-5)
    from .conftest import training_batch

    train = training_batch(processor, images, questions, ["red", "blue"])
    losses = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            losses[implementation] = model(**train, m3_scales=[1, 9, 36]).per_scale_loss
    for scale, loss in losses["eager"].items():
        torch.testing.assert_close(losses["sdpa"][scale], loss, rtol=1e-4, atol=1e-5)


def test_every_missing_weight_is_initialized_as_in_a_fresh_model(family, tokenizer, monkeypatch):
    """transformers' ``test_can_init_all_missing_weights``: with each module's init seeded alike, a model loaded from a
    checkpoint that holds no weight equals a model built from the config, weight for weight (before: the vision
    tower's attention and MLP took the generic init, not CLIP's, as transformers treated the M3 classes as custom
    code)."""
    from transformers import set_seed
    from transformers.modeling_utils import PreTrainedModel

    from m3.modeling import MODEL_CLASSES
    from m3.tiny import tiny_config

    original = PreTrainedModel._initialize_weights

    def seeded(self, module, *args, **kwargs):
        set_seed(0)
        return original(self, module, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "_initialize_weights", seeded)
    config = tiny_config(family, tokenizer, hidden_size=32)
    built = MODEL_CLASSES[family](config).state_dict()
    loaded = MODEL_CLASSES[family].from_pretrained(None, config=config, state_dict={}).state_dict()
    assert built.keys() == loaded.keys()
    assert [name for name in built if not torch.equal(built[name], loaded[name])] == []
