"""Continuation scores (the lmms-eval plugin's loglikelihood): a batched, left-padded, mixed batch - one image, two
images, no image - scores every continuation as a single unpadded forward pass with the image tokens written out."""

import pytest
import torch

from m3.inference import compact_prompts, continuation_ids, encode_images, generate_at_scale, score_continuations

from .conftest import random_image

QUESTIONS = ["what color is the circle ?", "which shape is on the left ?", "how many dots are there ?"]
CONTINUATIONS = [" red", " a blue square", " 3"]


@pytest.mark.parametrize("scale", [1, 36])
def test_batched_scores_equal_one_unpadded_forward_each(model_and_processor, scale):
    model, processor = model_and_processor
    images = [random_image(96, 150, 0), random_image(120, 96, 1), random_image(96, 96, 2)]
    per_row = [images[:1], images[1:], []]  # one image, two images, text only
    grids, sizes = encode_images(model, processor, images)
    compact = compact_prompts(processor, QUESTIONS, sizes, num_images=[len(row) for row in per_row])
    prompts = [processor.prompt(q, len(row)) for q, row in zip(QUESTIONS, per_row)]
    extra = continuation_ids(processor, prompts, CONTINUATIONS)
    assert [processor.tokenizer.decode(ids) for ids in extra] == ["red", "a blue square", "3"]
    scores = score_continuations(model, processor, compact, extra, grids, sizes, scale)
    for row, (prompt, row_images, ids, score) in enumerate(zip(prompts, per_row, extra, scores)):
        inputs = processor(prompt, row_images or None, m3_scale=scale)  # the image tokens written out
        prompt_ids = inputs["input_ids"][0].tolist()
        full = torch.tensor([prompt_ids + list(ids)])
        kwargs = {key: value for key, value in inputs.items() if key in ("pixel_values", "image_sizes")}
        with torch.no_grad():
            logits = model(input_ids=full, m3_scale=scale, **kwargs).logits[0].log_softmax(-1)
        positions = range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(ids))
        expected = sum(float(logits[p, t]) for p, t in zip(positions, ids))
        assert score.log_likelihood == pytest.approx(expected, abs=1e-4), row
        assert score.num_tokens == len(ids) and score.mean_nll == pytest.approx(-expected / len(ids), abs=1e-4)
        assert score.greedy == all(int(logits[p].argmax()) == t for p, t in zip(positions, ids))


def test_the_greedy_answer_scores_as_greedy(model_and_processor):
    """The tokens greedy ``generate`` chose are, scored as a continuation, the greedy continuation."""
    model, processor = model_and_processor
    images = [random_image(96, 150, 3)]
    grids, sizes = encode_images(model, processor, images)
    compact = compact_prompts(processor, QUESTIONS[:1], sizes)
    output = generate_at_scale(model, processor, compact, grids, sizes, 9, max_new_tokens=4, min_new_tokens=4)
    prompt = processor.prompt(QUESTIONS[0])
    generated = processor.tokenizer(prompt + " " + output.answers[0])["input_ids"]
    tokens = generated[len(processor.tokenizer(prompt)["input_ids"]) :]
    (score,) = score_continuations(model, processor, compact, [tokens], grids, sizes, 9)
    assert score.greedy and score.num_tokens == len(tokens)
