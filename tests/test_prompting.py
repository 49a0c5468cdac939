import pytest
import torch

from m3.processing import M3Processor, llava_prompt
from m3.prompting import IGNORE_INDEX, expand_image_tokens, image_token_counts, truncate_text
from m3.tiny import build_tiny_tokenizer, tiny_config, tiny_image_processor

from .conftest import random_image

IMG, PAD = 9, 0


def test_expand_right_padded_batch_with_labels():
    ids = torch.tensor([[1, IMG, 5, 6], [1, 7, IMG, PAD]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100]])
    new_ids, new_mask, new_labels = expand_image_tokens(ids, IMG, [3, 2], mask, labels, pad_token_id=PAD)
    assert new_ids.tolist() == [[1, IMG, IMG, IMG, 5, 6], [1, 7, IMG, IMG, PAD, PAD]]
    assert new_mask.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    assert new_labels.tolist() == [[-100, -100, -100, -100, 5, 6], [-100, 7, -100, -100, -100, -100]]


def test_expand_keeps_left_padding_and_handles_text_only_rows():
    ids = torch.tensor([[PAD, PAD, 1, IMG], [1, 4, 4, 4], [PAD, 1, IMG, IMG]])
    mask = (ids != PAD).long()
    new_ids, new_mask, labels = expand_image_tokens(ids, IMG, [2, 1, 3], mask)
    assert labels is None
    assert new_ids.tolist() == [
        [PAD, PAD, 1, IMG, IMG],
        [PAD, 1, 4, 4, 4],
        [1, IMG, IMG, IMG, IMG],
    ]
    assert new_mask.tolist() == (new_ids != PAD).long().tolist()


def test_expand_rejects_a_count_per_image_mismatch():
    ids = torch.tensor([[1, IMG, IMG, 5]])
    with pytest.raises(ValueError, match="2 image placeholder tokens .* 1 images"):
        expand_image_tokens(ids, IMG, [4])


def test_truncation_cuts_text_only():
    ids = [1, IMG, 5, 6, 7, 8]
    labels = [-100, -100, -100, 6, 7, 8]
    # 576 image tokens + 5 text tokens = 581 > 579: two text tokens go, the image stays
    cut_ids, cut_labels = truncate_text(ids, labels, 579, IMG, 576)
    assert cut_ids == [1, IMG, 5, 6] and cut_labels == [-100, -100, -100, 6]
    assert truncate_text(ids, labels, 581, IMG, 576) == (ids, labels)
    assert truncate_text(ids, labels, 577, IMG, 576) == ([1, IMG], [-100, -100])
    with pytest.raises(ValueError, match="cannot hold 1 image"):
        truncate_text(ids, labels, 576, IMG, 576)  # would have to cut into the image run


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_processor_builds_the_scale_token_count(family):
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(family, tokenizer)
    processor = M3Processor(tiny_image_processor(family), tokenizer, config)
    images = [random_image(96, 150, 0), random_image(200, 96, 1)]
    texts = [llava_prompt("what color is the circle"), llava_prompt("how many")]
    compact = tokenizer(texts)["input_ids"]
    for scale in config.m3_scales:
        inputs = processor(texts, images, m3_scale=scale)
        counts = image_token_counts(config, scale, inputs.get("image_sizes"), num_images=2)
        n_image = (inputs["input_ids"] == config.image_token_id).sum(dim=1).tolist()
        assert n_image == counts
        assert inputs["attention_mask"].sum(dim=1).tolist() == [len(c) - 1 + n for c, n in zip(compact, counts)]
        assert inputs["attention_mask"][:, -1].tolist() == [1, 1]  # left padded for generation


def test_processor_rejects_a_tokenizer_of_another_model():
    tokenizer = build_tiny_tokenizer()
    config = tiny_config("llava", tokenizer)
    config.image_token_index = 7
    with pytest.raises(ValueError, match="maps <image> to id"):
        M3Processor(tiny_image_processor("llava"), tokenizer, config)


def test_labels_at_image_positions_are_ignored_by_the_transformers_loss():
    """Expanded image positions carry IGNORE_INDEX, and transformers' causal-LM loss skips exactly those: the loss
    equals the one computed on the text positions alone."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    ids = torch.tensor([[5, 9, 6, 7, 8]])  # token 9 is the image placeholder
    labels = ids.clone()
    new_ids, _, new_labels = expand_image_tokens(ids, 9, [3], labels=labels)
    assert new_labels.tolist() == [[5, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 6, 7, 8]]
    logits = torch.randn(1, new_ids.shape[1], 12, generator=torch.Generator().manual_seed(0))
    loss = ForCausalLMLoss(logits, new_labels, vocab_size=12)
    # the loss predicts labels[t + 1] from position t: keep the pairs whose target is a text token
    targets = new_labels[0, 1:]
    keep = targets != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[0, :-1][keep], targets[keep])
    torch.testing.assert_close(loss, expected)
