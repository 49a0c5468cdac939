"""Multi-image records (issue 15): LLaVA JSON with several images per record through LlavaDataset, M3Collator, the
multi-scale training forward and scale evaluation; single-image records behave as before."""

import json

import pytest
import torch

from m3.data.llava import BadImageError, LlavaDataset, M3Collator, normalize_conversations
from m3.evaluation import evaluate_scales
from m3.inference import answer_images
from m3.processing import M3Processor
from m3.prompting import IGNORE_INDEX, truncate_text
from m3.tiny import tiny_image_processor, tiny_model

from .conftest import random_image
from .test_modeling import official_design_loss

SCALES = [1, 9, 36, 144, 576]


def records():
    return [
        {
            "id": "video-0",
            "image": ["v/0.png", "v/1.png", "v/2.png"],
            "conversations": [
                {"from": "human", "value": "<image>\n<image>\n<image>\nwhat color is the circle"},
                {"from": "gpt", "value": "red"},
                {"from": "human", "value": "how many dots are there"},
                {"from": "gpt", "value": "3"},
            ],
            "family": "color",
            "answer": "red",
        },
        {
            "id": "single",
            "image": "a.png",
            "conversations": [{"from": "human", "value": "where is it"}, {"from": "gpt", "value": "left"}],
        },
        {"id": "text", "conversations": [{"from": "human", "value": "what is 3"}, {"from": "gpt", "value": "a digit"}]},
        {
            "id": "pair",
            "image": ["a.png", "v/2.png"],
            "conversations": [{"from": "human", "value": "what is in them"}, {"from": "gpt", "value": "dots"}],
        },
    ]


@pytest.fixture
def dataset(tmp_path):
    (tmp_path / "v").mkdir()
    sizes = {"v/0.png": (96, 150), "v/1.png": (200, 96), "v/2.png": (96, 96), "a.png": (120, 100)}
    for index, (name, (height, width)) in enumerate(sizes.items()):
        random_image(height, width, index).save(tmp_path / name)
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records()))
    return LlavaDataset(path, tmp_path, check_images=True)


def test_multi_image_records_load_every_image_in_order(dataset, tmp_path):
    video, single, text, pair = (dataset[i] for i in range(4))
    assert [image.size for image in video["image"]] == [(150, 96), (96, 200), (96, 96)]
    assert video["image_path"] == [str(tmp_path / "v" / f"{i}.png") for i in range(3)]
    assert video["conversations"][0]["value"] == "<image>\n<image>\n<image>\nwhat color is the circle"
    assert single["image"].size == (100, 120) and single["image_path"] == str(tmp_path / "a.png")  # as before
    assert single["conversations"][0]["value"] == "<image>\nwhere is it"
    assert text["image"] is None and text["image_path"] is None
    assert pair["conversations"][0]["value"] == "<image>\n<image>\nwhat is in them"  # placeholders prepended


def test_placeholders_of_multi_image_records():
    human = [{"from": "human", "value": "first <image> then <image> which"}, {"from": "gpt", "value": "a"}]
    assert normalize_conversations(human, 2, "x") == human  # interleaved placeholders stay where they are
    with pytest.raises(ValueError, match="record y: a record of 3 images needs 3 <image>"):
        normalize_conversations(human, 3, "y")
    answer_with_image = [{"from": "human", "value": "<image> <image> q"}, {"from": "gpt", "value": "<image>"}]
    with pytest.raises(ValueError, match="record z"):
        normalize_conversations(answer_with_image, 3, "z")


def test_a_bad_frame_names_its_file_and_record(dataset, tmp_path):
    (tmp_path / "v" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(BadImageError, match=r"1\.png of record video-0"):
        LlavaDataset(tmp_path / "data.json", tmp_path, check_images=True)
    kept = LlavaDataset(tmp_path / "data.json", tmp_path, skip_bad_images=True)
    assert kept.skipped_ids == ["video-0"] and len(kept) == 3
    empty = [{"id": "e", "image": [], "conversations": records()[2]["conversations"]}]
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    with pytest.raises(ValueError, match="record e: its image list is empty"):
        LlavaDataset(tmp_path / "empty.json", tmp_path)


def test_collated_batch_holds_every_image_and_one_token_each(dataset, tokenizer, family):
    model = tiny_model(family, tokenizer=tokenizer)
    processor = M3Processor(tiny_image_processor(family), tokenizer, model.config)
    items = [dataset[i] for i in range(4)]
    batch = M3Collator(processor, max_length=8192)(items)
    image_token = model.config.image_token_id
    assert (batch["input_ids"] == image_token).sum(dim=1).tolist() == [3, 1, 0, 2]
    in_order = [*items[0]["image"], items[1]["image"], *items[3]["image"]]
    expected = processor.image_processor(in_order, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(batch["pixel_values"], expected)
    if family == "llava_next":
        assert batch["image_sizes"].tolist() == [[96, 150], [200, 96], [96, 96], [120, 100], [120, 100], [96, 96]]
    decoded = [processor.tokenizer.decode(row[row != IGNORE_INDEX]) for row in batch["labels"]]
    assert decoded == ["red </s> 3 </s>", "left </s>", "a digit </s>", "dots </s>"]  # answers only, every turn


def test_multi_image_batch_loss_equals_the_official_per_scale_design(dataset, tokenizer, family):
    """The compact multi-image batch through ``m3_scales`` (one vision pass, pooled 5 ways) gives the loss of the
    official design at every scale: the prompt expanded for the scale and a full forward with the vision tower
    re-run on the pixels (``m3_scale=s``)."""
    model = tiny_model(family, tokenizer=tokenizer).eval()
    processor = M3Processor(tiny_image_processor(family), tokenizer, model.config)
    batch = M3Collator(processor, max_length=8192)([dataset[i] for i in range(4)])
    with torch.no_grad():
        ours = model(**batch, m3_scales=SCALES)
        reference, per_scale = official_design_loss(model, batch, SCALES)
    for scale, loss in zip(SCALES, per_scale):
        torch.testing.assert_close(ours.per_scale_loss[scale], loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.loss, reference, rtol=0, atol=1e-5)
    assert len({round(v.item(), 4) for v in ours.per_scale_loss.values()}) > 1


def test_truncation_keeps_every_image_of_a_record():
    image = 4
    ids, labels = [1, image, image, 5, 6, 6, 8], [-100, -100, -100, -100, 6, 6, 8]
    # 7 compact tokens; the two images need 100 + 200 tokens, so max_length L leaves L - 298 compact positions
    assert truncate_text(ids, labels, 303, image, [100, 200]) == (ids[:5], labels[:5])
    assert truncate_text(ids, labels, 305, image, [100, 200]) == (ids, labels)
    with pytest.raises(ValueError, match=r"cannot hold 2 image\(s\) \(300 image tokens\)"):
        truncate_text(ids, labels, 300, image, [100, 200])
    with pytest.raises(ValueError, match="1 image token counts for 2 image placeholders"):
        truncate_text(ids, labels, 1000, image, [1])


def test_scale_evaluation_of_multi_image_items_equals_answer_images(dataset, tokenizer, family):
    model = tiny_model(family, tokenizer=tokenizer)
    model.generation_config.max_new_tokens = None
    processor = M3Processor(tiny_image_processor(family), tokenizer, model.config)
    items = [dataset[0], dataset[3], dataset[1]]
    rows = evaluate_scales(model, processor, items, [1, 36], max_new_tokens=3, show_progress=False)
    for item in items:
        images = item["image"] if isinstance(item["image"], list) else [item["image"]]
        question = item["conversations"][0]["value"].replace("<image>", "").strip()
        for scale in (1, 36):
            expected = answer_images(model, processor, images, question, scale, max_new_tokens=3).answers[0]
            row = next(r for r in rows if r["id"] == item["id"] and r["scale"] == scale)
            assert row["prediction"] == expected


def test_mixed_scale_passes_form_a_latin_square(dataset, tokenizer):
    """Each drawn multi-image row gives its images their own scale in a pass; over the passes every image meets
    every scale once. Undrawn and single-image rows keep the published pass (every image at the pass's scale)."""
    from m3.training import mixed_scale_passes

    model = tiny_model("llava", tokenizer=tokenizer)
    processor = M3Processor(tiny_image_processor("llava"), tokenizer, model.config)
    batch = M3Collator(processor, max_length=8192)([dataset[i] for i in range(4)])
    args = (batch["input_ids"], batch["attention_mask"], model.config.image_token_id, SCALES)
    assert mixed_scale_passes(*args, 0.0, seed=0, step=3) == SCALES
    passes = mixed_scale_passes(*args, 1.0, seed=0, step=3)
    assert passes == mixed_scale_passes(*args, 1.0, seed=0, step=3)  # seeded by (seed, step)
    assert len(passes) == 5 and all(len(p) == 6 for p in passes)  # 3 + 1 + 0 + 2 images
    for image in range(6):
        assert sorted(p[image] for p in passes) == SCALES
    assert [p[3] for p in passes] == SCALES  # the single-image row keeps the published passes
    steps = [mixed_scale_passes(*args, 1.0, seed=0, step=step) for step in range(20)]
    assert any(len(set(p[:3])) > 1 for passes in steps for p in passes)  # frames of one prompt at different scales
    assert len({str(p) for p in steps}) > 1


def test_mixed_scale_loss_equals_the_official_design_at_each_passes_scales(dataset, tokenizer, family):
    """A pass with one scale per image gives the loss of the full forward with each image expanded to its own
    scale (``m3_scale=[...]``, the vision tower re-run)."""
    from m3.prompting import expand_image_tokens, image_token_counts
    from m3.training import mixed_scale_passes

    model = tiny_model(family, tokenizer=tokenizer).eval()
    processor = M3Processor(tiny_image_processor(family), tokenizer, model.config)
    batch = M3Collator(processor, max_length=8192)([dataset[i] for i in range(4)])
    image_token = model.config.image_token_id
    passes = mixed_scale_passes(batch["input_ids"], batch["attention_mask"], image_token, SCALES, 1.0, 0, 1)
    with torch.no_grad():
        ours = model(**batch, m3_scales=passes)
        losses = []
        for scales in passes:
            counts = image_token_counts(model.config, scales, batch.get("image_sizes"), num_images=len(scales))
            ids, mask, labels = expand_image_tokens(
                batch["input_ids"], image_token, counts, batch["attention_mask"], batch["labels"]
            )
            losses.append(
                model(input_ids=ids, attention_mask=mask, labels=labels, pixel_values=batch["pixel_values"],
                      image_sizes=batch.get("image_sizes"), m3_scale=scales).loss
            )  # fmt: skip
    assert list(ours.per_scale_loss) == [tuple(p) for p in passes]
    for loss, reference in zip(ours.per_scale_loss.values(), losses):
        torch.testing.assert_close(loss, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.loss, torch.stack(losses).mean(), rtol=0, atol=1e-5)
