"""Many frames, one budget (issue 15): AdaptiveM3.answer_frames / answer_collage, the per-frame oracle and the
accuracy-vs-budget evaluation, on tiny random models of both families."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adaptive import AdaptiveM3
from m3.data import frames as frames_data
from m3.data.granularity import FAMILIES
from m3.data.llava import LlavaDataset
from m3.inference import answer_images
from m3.processing import M3Processor
from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model
from m3.video import collage, is_square_only
from oracle_data.frames import build_frame_oracle
from oracle_data.synthetic import write_synthetic_oracle
from predictor import MLPScalePredictor
from predictor.base import ScalePredictor
from predictor.budget import uniform_scale
from predictor.training import fit_frame_predictor
from routing_study.frames import evaluate_frames, known_frame_scales

HIDDEN = 32
QUESTION = "what color is in the white frame ?"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    oracle = write_synthetic_oracle(tmp_path_factory.mktemp("oracle"), num_images=40, embedding_dim=HIDDEN)
    return MLPScalePredictor(hidden_sizes=(16,), max_epochs=5, use_image=True).fit(oracle)


def make_adaptive(family: str, predictor) -> AdaptiveM3:
    from m3.data.granularity import VOCABULARY

    tokenizer = build_tiny_tokenizer(extra_words=VOCABULARY)
    model = tiny_model(family, tokenizer=tokenizer, hidden_size=HIDDEN)
    model.generation_config.max_new_tokens = None
    return AdaptiveM3(model, M3Processor(tiny_image_processor(family), tokenizer, model.config), predictor)


@pytest.fixture(scope="module", params=["llava", "llava_next"])
def adaptive(request, predictor):
    return make_adaptive(request.param, predictor)


def video(seed: int, shapes=((96, 96),) * 4) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


MIXED_SHAPES = ((96, 96), (96, 288), (150, 200), (288, 96))  # anyres counts differ per frame


def vision_passes(model) -> tuple[list[int], object]:
    passes: list[int] = []
    hook = model.model.vision_tower.register_forward_hook(lambda module, args, out: passes.append(args[0].shape[0]))
    return passes, hook


def test_answer_frames_never_exceeds_the_budget(adaptive):
    frames = video(0, MIXED_SHAPES)
    cheapest = adaptive.answer_frames(frames, QUESTION, scale=1, max_new_tokens=1).total_tokens
    for budget in (cheapest, cheapest + 7, 50, 150, 400, 1000, 2304, 3500):
        for allocation in ("predictor", "uniform"):
            result = adaptive.answer_frames(frames, QUESTION, budget=budget, allocation=allocation, max_new_tokens=2)
            assert result.total_tokens <= budget and result.budget == budget and result.allocation == allocation
            assert len(result.scales) == 4 and result.probabilities.shape == (4, len(adaptive.scales))
            if allocation == "uniform":
                assert len(set(result.scales)) == 1
    # the uniform baseline takes the largest common scale within the budget
    totals = adaptive.encode_frames([frames], [QUESTION]).tokens.sum(axis=0)  # every frame at each scale
    for budget in (totals[2], totals[3] - 1, 3500):
        result = adaptive.answer_frames(frames, QUESTION, budget=int(budget), allocation="uniform", max_new_tokens=1)
        largest = max(s for s, total in zip(adaptive.scales, totals) if total <= budget)
        assert result.scales == [largest] * 4 and result.total_tokens == totals[adaptive.scales.index(largest)]


def test_a_budget_below_one_token_per_frame_is_a_clear_error(adaptive):
    frames = video(1, MIXED_SHAPES)
    passes, hook = vision_passes(adaptive.model)
    try:
        with pytest.raises(ValueError, match="below one token per frame for 4 frames"):
            adaptive.answer_frames(frames, QUESTION, budget=3)
        assert passes == []  # refused before any work
    finally:
        hook.remove()
    cheapest = adaptive.answer_frames(frames, QUESTION, scale=1, max_new_tokens=1).total_tokens
    if cheapest > 4:  # LLaVA-NeXT: a frame's cheapest scale is several tokens (base crop, grid, newlines)
        for allocation in ("predictor", "uniform"):
            with pytest.raises(ValueError, match=f"cannot give each of the 4 frames its cheapest scale .{cheapest}"):
                adaptive.answer_frames(frames, QUESTION, budget=cheapest - 1, allocation=allocation)


def test_uniform_and_given_scales_equal_answer_images(adaptive):
    """scale=s is the multi-image prompt at s (m3.inference.answer_images); scale=[...] gives each frame its own."""
    frames = video(2, MIXED_SHAPES)
    model, processor = adaptive.model, adaptive.processor
    for scale in ([36, 36, 36, 36], 9, [1, 576, 9, 144]):
        ours = adaptive.answer_frames(frames, QUESTION, scale=scale, max_new_tokens=4, min_new_tokens=4)
        theirs = answer_images(model, processor, frames, QUESTION, scale, max_new_tokens=4, min_new_tokens=4)
        assert ours.answer == theirs.answers[0] and ours.allocation == "given"
        assert ours.confidence == pytest.approx(theirs.confidences[0], abs=1e-5)
        assert ours.total_tokens == theirs.tokens[0]  # the real feature length of the prompt
    budget = adaptive.answer_frames(frames, QUESTION, scale=36, max_new_tokens=1).total_tokens
    uniform = adaptive.answer_frames(frames, QUESTION, budget=budget, allocation="uniform", max_new_tokens=4)
    assert uniform.scales == [36] * 4
    assert uniform.answer == answer_images(model, processor, frames, QUESTION, 36, max_new_tokens=4).answers[0]


def test_predictor_allocation_is_the_knapsack_of_allocate_frames(adaptive):
    frames = video(3, MIXED_SHAPES)
    for budget in (100, 700):
        allocation = adaptive.allocate_frames(frames, QUESTION, budget)
        result = adaptive.answer_frames(frames, QUESTION, budget=budget, max_new_tokens=3)
        assert result.scales == allocation.scales and result.visual_tokens == allocation.visual_tokens
        np.testing.assert_allclose(result.probabilities, allocation.probabilities, atol=1e-6)
        given = adaptive.answer_frames(frames, QUESTION, scale=allocation.scales, max_new_tokens=3)
        assert given.answer == result.answer


def test_one_vision_pass_per_call_and_a_batch_equals_each_video_alone(adaptive):
    videos = [video(4, MIXED_SHAPES), video(5, ((96, 96), (120, 100)))]
    questions = [QUESTION, "what color is in the black frame ?"]
    passes, hook = vision_passes(adaptive.model)
    try:
        batch = adaptive.answer_frames(videos, questions, budget=300, max_new_tokens=3)
        assert len(passes) == 1
        adaptive.answer_frames(videos[0], QUESTION, budget=300, allocation="uniform", max_new_tokens=1)
        assert len(passes) == 2
        adaptive.answer_collage(videos, questions, scale=36, max_new_tokens=1)
        assert len(passes) == 3
        encoded = adaptive.encode_frames(videos, questions)
        for budget in (50, 300, 2000):  # any number of allocations and answers from one pass
            adaptive.answer_encoded_frames(encoded, adaptive.frame_scales(encoded, budget), max_new_tokens=1)
        assert len(passes) == 4
    finally:
        hook.remove()
    for frames, question, result in zip(videos, questions, batch):
        alone = adaptive.answer_frames(frames, question, budget=300, max_new_tokens=3)
        assert (alone.answer, alone.scales, alone.total_tokens) == (result.answer, result.scales, result.total_tokens)


def test_collage_token_count_equals_the_real_feature_length(adaptive):
    model, processor = adaptive.model, adaptive.processor
    frames = video(6, ((60, 80),) * 6)
    square = is_square_only(model.config)
    picture = collage(frames, square=square)
    if square:
        assert picture.size == (180, 180)  # 2 x 3 frames of 80 x 60, centred on a square: nothing is cropped
    else:
        assert picture.size == (160, 180)  # anyres reads the grid as it is
    pixels = processor.image_processor([picture], return_tensors="pt")
    for scale in adaptive.scales:
        with torch.no_grad():
            features = model.model.get_image_features(
                pixels["pixel_values"], image_sizes=pixels.get("image_sizes"), m3_scale=scale
            )
        result = adaptive.answer_collage(frames, QUESTION, scale=scale, max_new_tokens=2)
        assert result.visual_tokens == [features.pooler_output[0].shape[0]] and result.scales == [scale]
        assert result.total_tokens == answer_images(model, processor, [picture], QUESTION, scale, 2).tokens[0]
        by_budget = adaptive.answer_collage(frames, QUESTION, budget=result.total_tokens, max_new_tokens=2)
        assert by_budget.scales == [scale] and by_budget.answer == result.answer  # the largest scale that fits
    with pytest.raises(ValueError, match="cannot give each of the 1 frames"):
        adaptive.answer_collage(frames, QUESTION, budget=0)


def test_bad_settings_are_named(adaptive):
    frames = video(7)
    with pytest.raises(ValueError, match="not both"):
        adaptive.answer_frames(frames, QUESTION)
    with pytest.raises(ValueError, match="not both"):
        adaptive.answer_frames(frames, QUESTION, budget=100, scale=9)
    with pytest.raises(ValueError, match="unknown allocation 'greedy'"):
        adaptive.answer_frames(frames, QUESTION, budget=100, allocation="greedy")
    with pytest.raises(ValueError, match="one scale per frame"):
        adaptive.answer_frames(frames, QUESTION, scale=[1, 9])
    with pytest.raises(ValueError, match="valid"):
        adaptive.answer_frames(frames, QUESTION, scale=10)
    with pytest.raises(TypeError, match="budget must be an integer"):
        adaptive.answer_frames(frames, QUESTION, budget=100.0)
    with pytest.raises(ValueError, match="without frames"):
        adaptive.answer_frames([], QUESTION, budget=100)
    with pytest.raises(ValueError, match="<image>"):
        adaptive.answer_frames(frames, "<image> what", budget=100)


def test_uniform_scale_and_the_known_frame_reference():
    scales = [1, 9, 36, 144, 576]
    tokens = np.tile(scales, (4, 1))
    assert [uniform_scale(tokens, b, scales=scales) for b in (4, 35, 36, 575, 576, 2303, 2304)] == [
        1, 1, 9, 36, 144, 144, 576,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="cannot give each of the 4 frames"):
        uniform_scale(tokens, 3, scales=scales)
    assert known_frame_scales(tokens, 4, 2, scales) == [1, 1, 1, 1]
    assert known_frame_scales(tokens, 147, 2, scales) == [1, 1, 144, 1]
    assert known_frame_scales(tokens, 146, 0, scales) == [36, 1, 1, 1]


@pytest.fixture(scope="module")
def frames_split(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    frames_data.write_split(folder, "test", 3, seed=0, config=frames_data.FramesConfig(num_frames=3))
    return folder / "test.json"


def test_frame_oracle_rows_answer_each_frame_in_its_video(frames_split, tmp_path, predictor):
    """Row (frame f, scale s) holds the answer of the whole prompt with frame f at s and the others at 1; the
    predictor fitted on it pairs with the model."""
    adaptive = make_adaptive("llava", predictor)
    model_dir = tmp_path / "model"
    adaptive.model.save_pretrained(model_dir)
    adaptive.processor.save_pretrained(model_dir)
    build_frame_oracle(model_dir, frames_split, tmp_path / "oracle", limit=4, batch_size=3, progress=False)
    from oracle_data import load_oracle_dataframe

    table = load_oracle_dataframe(tmp_path / "oracle")
    # 4 records of 3-frame videos: the first video's questions, then the second's first
    assert len(table) == 4 * 3 and table["image_id"].nunique() == 1 + (4 > len(FAMILIES))
    dataset = LlavaDataset(frames_split, frames_split.parent)
    for _, row in table.iloc[[0, 4, 8, 11]].iterrows():
        record_id, frame = row["sample_id"].split("#frame")
        item = next(dataset[i] for i in range(len(dataset)) if dataset[i]["id"] == record_id)
        assert row["image"] == f"images/test/{item['image_id']}_{frame}.png"
        for scale in (1, 36, 576):
            plan = [scale if i == int(frame) else 1 for i in range(3)]
            question = item["conversations"][0]["value"].replace("<image>\n", "")
            expected = answer_images(adaptive.model, adaptive.processor, item["image"], question, plan, 4)
            assert row[f"answer_{scale}"] == expected.answers[0] and row[f"tokens_{scale}"] == scale
    fitted = fit_frame_predictor(tmp_path / "oracle", tmp_path / "predictor", name="lgbm")
    assert isinstance(fitted, ScalePredictor)
    paired = AdaptiveM3.from_pretrained(model_dir, tmp_path / "predictor")  # fingerprints match
    assert paired.answer_frames(item["image"], QUESTION, budget=20, max_new_tokens=1).total_tokens <= 20
    single = [{"id": "one", "image": item["image_path"][0], "conversations": item["conversations"][:2]}]
    single[0]["conversations"][0] = {"from": "human", "value": QUESTION}
    (tmp_path / "single.json").write_text(json.dumps(single))
    with pytest.raises(ValueError, match="no record with several images"):
        build_frame_oracle(model_dir, tmp_path / "single.json", tmp_path / "other")


def test_evaluation_rows_are_the_answers_of_each_method(frames_split, predictor):
    adaptive = make_adaptive("llava", predictor)
    dataset = LlavaDataset(frames_split, frames_split.parent)
    items = [dataset[i] for i in range(6)]
    budgets = [3, 40, 600]
    rows = evaluate_frames(adaptive, items, budgets, batch_size=4, max_new_tokens=3, progress=False)
    assert len(rows) == len(items) * len(budgets) * 4
    for row in rows:
        assert row["total_tokens"] <= row["budget"]
        item = next(i for i in items if i["id"] == row["id"])
        question = item["conversations"][0]["value"].replace("<image>\n", "")
        if row["method"] == "collage":
            expected = adaptive.answer_collage(item["image"], question, budget=row["budget"], max_new_tokens=3)
        elif row["method"] == "known":
            expected = adaptive.answer_frames(item["image"], question, scale=row["scales"], max_new_tokens=3)
            assert row["scales"][item["target_frame"]] == max(row["scales"])
        else:
            expected = adaptive.answer_frames(
                item["image"], question, budget=row["budget"], allocation=row["method"], max_new_tokens=3
            )
        assert (row["prediction"], row["scales"]) == (expected.answer, expected.scales), row
    with pytest.raises(ValueError, match="every budget must give each of the 3 frames"):
        evaluate_frames(adaptive, items, [2, 100], progress=False)


def test_evaluate_script_refuses_bad_budgets_in_one_line(tmp_path):
    script = REPO / "scripts" / "evaluate_frames.py"
    command = [sys.executable, str(script), "--model", str(tmp_path), "--predictor", str(tmp_path), "--data", "x"]
    bad = subprocess.run([*command, "--budgets", "4,many"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--budgets must be comma-separated integers" in bad.stderr
    missing = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 2 and missing.stderr.startswith("error:") and len(missing.stderr.splitlines()) == 1
