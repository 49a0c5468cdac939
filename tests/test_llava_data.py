import json

import pytest
import torch

from m3.data.llava import (
    BadImageError,
    LlavaDataset,
    M3Collator,
    format_conversation,
    normalize_conversations,
)
from m3.processing import M3Processor, llava_prompt
from m3.prompting import IGNORE_INDEX, expand_image_tokens, image_token_counts
from m3.templates import VICUNA_V1_SYSTEM, vicuna_v1
from m3.tiny import tiny_config, tiny_image_processor, tiny_model

from .conftest import random_image, training_batch

SCALES = [1, 9, 36, 144, 576]
TWO_TURNS = [
    {"from": "human", "value": "<image>\nwhat color is the circle"},
    {"from": "gpt", "value": "red"},
    {"from": "human", "value": "how many dots are there"},
    {"from": "gpt", "value": "3 dots"},
]


def turns(question, answer, image=True):
    return [{"from": "human", "value": f"<image>\n{question}" if image else question}, {"from": "gpt", "value": answer}]


def make_processor(family, tokenizer):
    return M3Processor(tiny_image_processor(family), tokenizer, tiny_config(family, tokenizer))


def write_dataset(tmp_path, records, images):
    """Write ``images`` (name -> PIL image) under tmp_path/images and the records as LLaVA JSON."""
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    for name, image in images.items():
        image.save(root / name)
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path, root


def label_runs(labels):
    """Contiguous runs of unmasked label ids."""
    runs, current = [], []
    for value in labels.tolist() + [IGNORE_INDEX]:
        if value == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(value)
    return runs


def test_one_turn_training_text_equals_the_inference_prompt_plus_answer(tokenizer):
    question, answer = "what color is the circle", "red"
    conversation = normalize_conversations(turns(question, answer), has_image=True, record_id="x")
    text, spans = format_conversation(conversation)
    assert text == llava_prompt(question) + " " + answer + "</s>"
    assert text == llava_prompt(question, answer) + "</s>"
    assert text[spans[0][0] : spans[0][1]] == " red</s>"
    # the official LLaVA-1.5 / M3 template (vicuna_v1): its system prompt first, separated by one space
    with_system, _ = format_conversation(conversation, vicuna_v1())
    assert with_system == VICUNA_V1_SYSTEM + " " + text
    # token level: the compact training row starts with exactly the compact inference prompt
    processor = make_processor("llava", tokenizer)
    batch = M3Collator(processor)([{"id": "x", "image": random_image(96, 96, 0), "conversations": conversation}])
    prompt_ids = processor(llava_prompt(question), random_image(96, 96, 0), expand=False)["input_ids"][0]
    assert torch.equal(batch["input_ids"][0, : len(prompt_ids)], prompt_ids)
    assert (batch["labels"][0, : len(prompt_ids)] == IGNORE_INDEX).all()


def test_one_turn_batches_match_the_modeling_tests_reference_batch(family, tokenizer):
    processor = make_processor(family, tokenizer)
    questions, answers = ["what color is the circle", "how many dots are there"], ["red", "3 dots"]
    images = [random_image(96, 150, 0), random_image(200, 96, 1)]
    items = [
        {"id": str(i), "image": image, "conversations": turns(q, a)}
        for i, (image, q, a) in enumerate(zip(images, questions, answers))
    ]
    batch = M3Collator(processor)(items)
    reference = training_batch(processor, images, questions, answers)
    assert set(batch) == set(reference)
    for key in batch:
        assert torch.equal(batch[key], reference[key]), key


def test_image_placeholder_is_normalized_as_llava_does():
    missing = normalize_conversations(turns("what color is the circle", "red", image=False), True, "a")
    assert missing[0]["value"] == "<image>\nwhat color is the circle"
    trailing = normalize_conversations(
        [{"from": "human", "value": "what color is the circle\n<image>"}, {"from": "gpt", "value": "red"}], True, "b"
    )
    assert trailing == missing
    assert normalize_conversations(missing, True, "c") == missing  # idempotent
    with pytest.raises(ValueError, match="record d has no image"):
        normalize_conversations(missing, False, "d")
    with pytest.raises(ValueError, match="record e"):
        normalize_conversations(TWO_TURNS[:3], True, "e")
    with pytest.raises(ValueError, match="record f"):
        normalize_conversations([*TWO_TURNS[:2], {"from": "human", "value": "<image>"}, TWO_TURNS[3]], True, "f")


def test_labels_cover_exactly_every_answer_and_its_end_of_turn(tokenizer):
    processor = make_processor("llava", tokenizer)
    batch = M3Collator(processor)(
        [
            {"id": "two", "image": random_image(96, 96, 0), "conversations": TWO_TURNS},
            {"id": "one", "image": random_image(96, 96, 1), "conversations": turns("is there a square", "yes")},
        ]
    )
    labels, input_ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    unmasked = labels != IGNORE_INDEX
    assert torch.equal(labels[unmasked], input_ids[unmasked])
    assert not unmasked[mask == 0].any()
    for row, answers in enumerate([["red", "3 dots"], ["yes"]]):
        runs = label_runs(labels[row])
        assert len(runs) == len(answers)
        for run, answer in zip(runs, answers):
            assert run == tokenizer(f" {answer}</s>", add_special_tokens=False)["input_ids"]
            assert tokenizer.decode(run).replace(" ", "") == f"{answer}</s>".replace(" ", "")


def test_text_only_and_image_rows_share_a_batch(family, tokenizer):
    processor = make_processor(family, tokenizer)
    collator = M3Collator(processor)
    items = [
        {"id": "a", "image": random_image(96, 150, 0), "conversations": turns("what color is the circle", "red")},
        {"id": "b", "image": None, "conversations": turns("what is 3", "a digit", image=False)},
        {"id": "c", "image": random_image(200, 96, 1), "conversations": TWO_TURNS},
    ]
    batch = collator(items)
    image_token_id = processor.config.image_token_id
    assert (batch["input_ids"] == image_token_id).sum(1).tolist() == [1, 0, 1]  # compact: one token per image
    assert batch["pixel_values"].shape[0] == 2
    assert ("image_sizes" in batch) == (family == "llava_next")
    assert [len(label_runs(row)) for row in batch["labels"]] == [1, 1, 2]
    lengths = batch["attention_mask"].sum(1)
    assert (batch["attention_mask"][:, 0] == 1).all() and batch["input_ids"].shape[1] == lengths.max()  # right pad
    text_only = collator([items[1]])
    assert set(text_only) == {"input_ids", "attention_mask", "labels"}


def test_llava_next_batch_holds_image_sizes(tokenizer):
    processor = make_processor("llava_next", tokenizer)
    items = [
        {"id": "a", "image": random_image(96, 150, 0), "conversations": turns("what color is the circle", "red")},
        {"id": "b", "image": random_image(200, 96, 1), "conversations": turns("how many dots", "3")},
    ]
    batch = M3Collator(processor)(items)
    assert batch["image_sizes"].tolist() == [[96, 150], [200, 96]]
    assert batch["pixel_values"].dim() == 5


def test_expanding_the_compact_batch_gives_every_scale_its_token_counts(family, tokenizer):
    processor = make_processor(family, tokenizer)
    config = processor.config
    items = [
        {"id": "a", "image": random_image(96, 150, 0), "conversations": TWO_TURNS},
        {"id": "b", "image": None, "conversations": turns("what is 3", "a digit", image=False)},
        {"id": "c", "image": random_image(200, 96, 1), "conversations": turns("is there a square", "no")},
    ]
    batch = M3Collator(processor)(items)
    compact_runs = [label_runs(row) for row in batch["labels"]]
    for scale in SCALES:
        counts = image_token_counts(config, scale, image_sizes=batch.get("image_sizes"), num_images=2)
        ids, mask, labels = expand_image_tokens(
            batch["input_ids"],
            config.image_token_id,
            counts,
            batch["attention_mask"],
            batch["labels"],
            pad_token_id=tokenizer.pad_token_id,
        )
        is_image = ids == config.image_token_id
        assert is_image.sum(1).tolist() == [counts[0], 0, counts[1]], scale
        if family == "llava":
            assert counts == [scale, scale]
        assert (labels[is_image] == IGNORE_INDEX).all()
        assert [label_runs(row) for row in labels] == compact_runs
        assert (mask[:, 0] == 1).all()  # still right padded


def test_truncation_cuts_text_only_and_fails_when_the_image_cannot_fit(family, tokenizer):
    processor = make_processor(family, tokenizer)
    config = processor.config
    image = random_image(96, 150, 0)
    long_answer = " ".join(["red circle"] * 60)
    item = {"id": "long", "image": image, "conversations": turns("what color is the circle", long_answer)}
    full = M3Collator(processor, max_length=4096)([item])
    image_sizes = full.get("image_sizes")
    largest = image_token_counts(config, config.grid_tokens, image_sizes=image_sizes, num_images=1)[0]
    max_length = largest + 40
    cut = M3Collator(processor, max_length=max_length)([item])
    kept = cut["input_ids"].shape[1]
    assert kept == max_length - (largest - 1) < full["input_ids"].shape[1]
    assert torch.equal(cut["input_ids"][0], full["input_ids"][0, :kept])  # a prefix: only the end is cut
    assert torch.equal(cut["labels"][0], full["labels"][0, :kept])
    assert (cut["input_ids"] == config.image_token_id).sum() == 1
    ids, mask, _ = expand_image_tokens(
        cut["input_ids"], config.image_token_id, [largest], cut["attention_mask"], pad_token_id=tokenizer.pad_token_id
    )
    assert ids.shape[1] == max_length  # at the largest scale the sequence fills max_length exactly
    with pytest.raises(ValueError, match="item long"):
        M3Collator(processor, max_length=largest - 1)([item])
    # a text-only row is simply cut to max_length
    text_only = {"id": "t", "image": None, "conversations": turns("what", long_answer, image=False)}
    assert M3Collator(processor, max_length=50)([text_only])["input_ids"].shape == (1, 50)


def dataset_records():
    return [
        {
            "id": "img-0",
            "image": "a.png",
            "conversations": turns("what color is the circle", "red"),
            "family": "color",
            "answer": "red",
            "image_id": "a",
        },
        {"id": "txt-1", "conversations": turns("what is 3", "a digit", image=False)},
        {"id": "img-2", "image": "sub/b.png", "conversations": turns("how many dots", "3", image=False)},
    ]


def test_dataset_items_keep_extra_keys_and_load_rgb_images(tmp_path):
    (tmp_path / "images" / "sub").mkdir(parents=True)
    gray = random_image(40, 50, 1).convert("L")
    path, root = write_dataset(tmp_path, dataset_records(), {"a.png": random_image(30, 40, 0), "sub/b.png": gray})
    dataset = LlavaDataset(path, root)
    assert len(dataset) == 3 and dataset.num_skipped == 0 and dataset.skipped_ids == []
    first, text_only, third = dataset[0], dataset[1], dataset[2]
    assert first["id"] == "img-0" and first["family"] == "color" and first["answer"] == "red"
    assert first["image_id"] == "a" and first["image"].mode == "RGB" and first["image"].size == (40, 30)
    assert text_only["image"] is None and text_only["image_path"] is None
    assert third["image"].mode == "RGB"  # grayscale file converted
    assert third["conversations"][0]["value"] == "<image>\nhow many dots"  # placeholder prepended


def test_missing_image_error_names_the_file_and_the_record(tmp_path):
    path, root = write_dataset(tmp_path, dataset_records()[:1], {})
    dataset = LlavaDataset(path, root)
    with pytest.raises(BadImageError, match=r"a\.png.*img-0"):
        dataset[0]


def test_corrupt_image_error_names_the_file_and_the_record(tmp_path):
    path, root = write_dataset(tmp_path, dataset_records()[:1], {})
    (root / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(BadImageError, match=r"a\.png.*img-0"):
        LlavaDataset(path, root)[0]


def test_skip_bad_images_drops_and_counts_them(tmp_path):
    records = dataset_records()
    records.append({"id": "img-3", "image": "c.png", "conversations": turns("is there a square", "yes")})
    records.append({"id": "img-4", "image": "gone.png", "conversations": turns("is there a square", "no")})
    (tmp_path / "images" / "sub").mkdir(parents=True)
    good = {"a.png": random_image(30, 40, 0), "sub/b.png": random_image(30, 40, 1), "c.png": random_image(8, 8, 2)}
    path, root = write_dataset(tmp_path, records, good)
    (root / "c.png").write_bytes((root / "c.png").read_bytes()[:40])  # truncated file
    dataset = LlavaDataset(path, root, skip_bad_images=True)
    assert dataset.num_skipped == 2 and sorted(dataset.skipped_ids) == ["img-3", "img-4"]
    assert [dataset[i]["id"] for i in range(len(dataset))] == ["img-0", "txt-1", "img-2"]
    assert len(LlavaDataset(path, root)) == 5  # without skipping, bad records stay (and raise when read)


def test_malformed_conversation_fails_at_construction(tmp_path):
    records = [{"id": "bad", "conversations": [{"from": "gpt", "value": "red"}, {"from": "human", "value": "x"}]}]
    path, root = write_dataset(tmp_path, records, {})
    with pytest.raises(ValueError, match="record bad"):
        LlavaDataset(path, root)


def test_collated_dataset_batch_gives_a_finite_multiscale_loss(family, tokenizer, tmp_path):
    (tmp_path / "images" / "sub").mkdir(parents=True)
    images = {"a.png": random_image(96, 150, 0), "sub/b.png": random_image(200, 96, 1)}
    path, root = write_dataset(tmp_path, dataset_records(), images)
    dataset = LlavaDataset(path, root)
    model = tiny_model(family, tokenizer=tokenizer)
    processor = M3Processor(tiny_image_processor(family), tokenizer, model.config)
    batch = M3Collator(processor)([dataset[i] for i in range(len(dataset))])
    output = model(**batch, m3_scales=SCALES)
    assert torch.isfinite(output.loss)
    assert sorted(output.per_scale_loss) == SCALES
    output.loss.backward()


def subword_tokenizer(kind):
    """A small trained BPE tokenizer in the sentencepiece (Metaspace) or GPT-2 (byte-level) style."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    if kind == "metaspace":
        backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        backend.decoder = decoders.Metaspace(prepend_scheme="first")
        alphabet = []
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    corpus = ["USER: what color is the circle ASSISTANT: red", "how many dots are there ASSISTANT: 3 dots"] * 5
    backend.train_from_iterator(
        corpus,
        trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=alphabet, show_progress=False),
    )
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


@pytest.mark.parametrize("kind", ["metaspace", "bytelevel"])
def test_labels_are_exact_with_subword_tokenizers(kind):
    """Answers attach to the preceding space ("▁red", "Ġred"): the whole text is tokenized once and each
    token is labelled by where its first character lies, so the masks stay exact."""
    tokenizer = subword_tokenizer(kind)
    processor = M3Processor(tiny_image_processor("llava"), tokenizer, tiny_config("llava", tokenizer))
    image = random_image(96, 96, 0)
    batch = M3Collator(processor)([{"id": "x", "image": image, "conversations": TWO_TURNS}])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    runs = label_runs(labels)
    for run, answer in zip(runs, ["red", "3 dots"], strict=True):
        assert run == tokenizer(f" {answer}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert tokenizer.decode(run).strip() == f"{answer}</s>"
    prompt_ids = processor(llava_prompt("what color is the circle"), image, expand=False)["input_ids"][0]
    assert torch.equal(ids[: len(prompt_ids)], prompt_ids)
