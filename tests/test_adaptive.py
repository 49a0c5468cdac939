import numpy as np
import pytest
import torch
from PIL import Image

from adaptive import AdaptiveM3
from adaptive.model import load_rgb
from m3.data.llava import BadImageError
from m3.processing import M3Processor, llava_prompt
from m3.prompting import image_token_counts
from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model
from oracle_data.synthetic import write_synthetic_oracle
from predictor import (
    CalibratedRouter,
    LGBMScalePredictor,
    MLPScalePredictor,
    PredictorMismatchError,
    as_oracle_set,
    load_predictor,
)

HIDDEN = 32


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    oracle = write_synthetic_oracle(tmp_path_factory.mktemp("oracle"), num_images=40, embedding_dim=HIDDEN)
    return MLPScalePredictor(hidden_sizes=(16,), max_epochs=5, use_image=True).fit(oracle)


def make_adaptive(family: str, predictor) -> AdaptiveM3:
    tokenizer = build_tiny_tokenizer()
    model = tiny_model(family, tokenizer=tokenizer, hidden_size=HIDDEN)
    model.generation_config.max_new_tokens = None
    processor = M3Processor(tiny_image_processor(family), tokenizer, model.config)
    return AdaptiveM3(model, processor, predictor)


@pytest.fixture(scope="module")
def adaptive(predictor):
    return make_adaptive("llava", predictor)


@pytest.fixture(scope="module")
def adaptive_next(predictor):
    return make_adaptive("llava_next", predictor)


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(n)]


def test_a_forced_scale_answers_as_m3_generate_at_that_scale(adaptive):
    image, question = images(1)[0], "what color is the background ?"
    for scale in (1, 9, 576):
        result = adaptive.generate(image, question, scale=scale, max_new_tokens=3)
        assert result.forced and result.scale == scale and result.visual_tokens == scale
        inputs = adaptive.processor(llava_prompt(question), Image.fromarray(image), m3_scale=scale)
        with torch.inference_mode():
            out = adaptive.model.generate(**inputs, m3_scale=scale, max_new_tokens=3, do_sample=False)
        expected = adaptive.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        assert result.answer == expected[0].strip()


def test_threshold_extremes_and_the_token_cap(adaptive):
    image, question = images(1)[0], "what color is in the white frame ?"
    low = adaptive.generate(image, question, threshold=0.0, max_new_tokens=2)
    high = adaptive.generate(image, question, threshold=1.0, max_new_tokens=2)
    assert (low.scale, high.scale) == (1, 576)  # every probability reaches 0; a sigmoid never reaches 1
    assert set(low.probabilities) == {1, 9, 36, 144, 576} and not low.forced
    capped = adaptive.generate(image, question, threshold=1.0, max_tokens=40, max_new_tokens=2)
    assert capped.scale == 36 and capped.visual_tokens == 36
    with pytest.raises(ValueError, match="below the smallest scale"):
        adaptive.generate(image, question, max_tokens=0)
    with pytest.raises(ValueError, match="threshold"):
        adaptive.generate(image, question, threshold=1.5)


def test_a_batch_equals_one_query_at_a_time(adaptive):
    pictures = images(4, seed=1)
    questions = ["what color is the background ?", "what color is in the black frame ?"] * 2
    batch = adaptive.generate(pictures, questions, threshold=0.5, max_new_tokens=3)
    for picture, question, result in zip(pictures, questions, batch):
        alone = adaptive.generate(picture, question, threshold=0.5, max_new_tokens=3)
        assert (alone.answer, alone.scale) == (result.answer, result.scale)
        assert alone.probabilities == pytest.approx(result.probabilities, abs=1e-5)


def test_frame_budgets_are_never_exceeded(adaptive):
    frames = images(12, seed=2)
    for budget in (12, 50, 200, 1000, 12 * 576):
        allocation = adaptive.allocate_frames(frames, "what is in the picture ?", budget)
        assert allocation.total_tokens <= budget and len(allocation.scales) == 12
        assert allocation.visual_tokens == allocation.scales  # LLaVA-1.5: tokens == scale
    with pytest.raises(ValueError, match="sample fewer frames"):
        adaptive.allocate_frames(frames, "what is in the picture ?", 11)


def test_bad_inputs_are_named(adaptive, tmp_path):
    question = "what color is the background ?"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        adaptive.generate(tmp_path / "missing.png", question)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    with pytest.raises(BadImageError, match="corrupt.png"):
        adaptive.generate(corrupt, question)
    with pytest.raises(ValueError, match="non-empty"):
        adaptive.generate(images(1)[0], "   ")
    with pytest.raises(ValueError, match="valid"):
        adaptive.generate(images(1)[0], question, scale=10)
    with pytest.raises(ValueError, match="shape"):
        load_rgb(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(TypeError):
        load_rgb(3)


def test_save_and_load_round_trip_and_a_predictor_for_another_model(adaptive, tmp_path):
    image, question = images(1, seed=3)[0], "what color is in the black frame ?"
    before = adaptive.generate(image, question, max_new_tokens=2)
    adaptive.save_pretrained(tmp_path / "pair")
    loaded = AdaptiveM3.from_pretrained(tmp_path / "pair")
    after = loaded.generate(image, question, max_new_tokens=2)
    assert (after.answer, after.scale) == (before.answer, before.scale)
    assert after.probabilities == pytest.approx(before.probabilities, abs=1e-6)
    # a predictor fitted on another model's 16-d embeddings is refused by a 32-d model
    other = write_synthetic_oracle(tmp_path / "other", num_images=20, embedding_dim=16)
    MLPScalePredictor(hidden_sizes=(8,), max_epochs=2).fit(other).save_pretrained(tmp_path / "wrong")
    with pytest.raises(PredictorMismatchError):
        AdaptiveM3.from_pretrained(tmp_path / "pair" / "model", tmp_path / "wrong")
    with pytest.raises(FileNotFoundError, match="adaptive_config.json"):
        AdaptiveM3.from_pretrained(tmp_path / "pair" / "model")


def test_ask_script_prints_the_answer_and_scale(adaptive, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    adaptive.save_pretrained(tmp_path / "pair")
    image = tmp_path / "image.png"
    Image.fromarray(images(1)[0]).save(image)
    script = Path(__file__).resolve().parents[1] / "scripts" / "ask.py"
    command = [sys.executable, str(script), "--image", str(image), "--adaptive", str(tmp_path / "pair")]
    out = subprocess.run([*command, "--question", "where is it ?", "--scale", "9"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "scale: 9 (forced; 9 visual tokens)" in out.stdout and "answer:" in out.stdout
    bad = subprocess.run([*command, "--question", "where ?", "--scale", "10"], capture_output=True, text=True)
    assert bad.returncode == 2 and "error:" in bad.stderr and "10" in bad.stderr


def expected_answer(model, processor, image: Image.Image, question: str, scale: int, max_new_tokens: int) -> str:
    """What plain ``model.generate(..., m3_scale=scale)`` answers for this image alone (vision tower included)."""
    inputs = processor(llava_prompt(question), image, m3_scale=scale)
    with torch.inference_mode():
        out = model.generate(**inputs, m3_scale=scale, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0].strip()


def count_vision_passes(model) -> tuple[list[int], object]:
    """A forward hook on the vision tower; the list receives the batch size (images or crops) of every pass."""
    passes: list[int] = []
    hook = model.model.vision_tower.register_forward_hook(lambda module, args, out: passes.append(args[0].shape[0]))
    return passes, hook


def test_llava_next_batch_of_aspect_ratios_routes_each_image_like_generate_alone(adaptive_next):
    """Images of four shapes in ONE batch, routed to two scales by the token cap (anyres counts depend on the
    shape): each answer equals plain ``generate`` at its scale on that image alone, so the per-scale subsets of
    the batch (prompts, grids and ``image_sizes``) stay aligned."""
    rng = np.random.default_rng(7)
    shapes = [(96, 96), (288, 96), (96, 288), (150, 200)]  # (height, width): square, tall, wide, odd
    pictures = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]
    questions = ["what color is the background ?", "what color is in the black frame ?"] * 2
    config = adaptive_next.model.config
    cap = 160
    results = adaptive_next.generate(pictures, questions, threshold=1.0, max_tokens=cap, max_new_tokens=3)
    # threshold 1: each image gets the largest scale within the cap; 78 / 45 / 150 / 37 visual tokens
    assert [r.scale for r in results] == [36, 9, 36, 9]
    for picture, question, result in zip(pictures, questions, results):
        size = [[picture.height, picture.width]]
        assert result.visual_tokens == image_token_counts(config, result.scale, size, num_images=1)[0] <= cap
        counts = [image_token_counts(config, s, size, num_images=1)[0] for s in adaptive_next.scales]
        assert max(c for c in counts if c <= cap) == result.visual_tokens  # the largest scale within the cap
        expected = expected_answer(adaptive_next.model, adaptive_next.processor, picture, question, result.scale, 3)
        assert result.answer == expected
        alone = adaptive_next.generate(picture, question, threshold=1.0, max_tokens=cap, max_new_tokens=3)
        assert (alone.scale, alone.answer) == (result.scale, result.answer)
        assert alone.probabilities == pytest.approx(result.probabilities, abs=1e-5)


@pytest.mark.parametrize("which", ["adaptive", "adaptive_next"])
def test_one_vision_pass_per_generate_batch(which, request):
    adaptive = request.getfixturevalue(which)
    pictures = images(4, seed=5)
    questions = ["what color is the background ?", "what color is in the white frame ?"] * 2
    passes, hook = count_vision_passes(adaptive.model)
    try:
        results = adaptive.generate(pictures, questions, threshold=0.5, max_new_tokens=2)
        assert len(passes) == 1  # routing input and every chosen scale come from the same pass
        adaptive.generate(pictures, questions, threshold=0.0, max_tokens=40, max_new_tokens=2)
        assert len(passes) == 2
        adaptive.allocate_frames(pictures, "what is in the picture ?", budget=4 * 576 * 5)
        assert len(passes) == 3
    finally:
        hook.remove()
    assert passes[0] >= len(pictures) and len(results) == 4


def test_a_predictors_own_calibrated_threshold_is_always_accepted(adaptive, tmp_path):
    """Regression: calibration used to pick 1 + 1e-9 (to route everything to the largest scale), which AdaptiveM3
    refuses, so a predictor made ``generate`` raise with its own threshold. A predictor that is 'certain' at the
    smallest scale (cumulative probabilities of 1 everywhere) on data where the smallest scale is worse than the
    largest needs exactly that point."""
    oracle = as_oracle_set(write_synthetic_oracle(tmp_path / "oracle", num_images=20, embedding_dim=HIDDEN))
    certain = LGBMScalePredictor(target="oracle").fit(oracle, y=np.ones(len(oracle), dtype=np.int64))
    assert np.all(certain.predict_proba(oracle) >= 1 - 1e-12)  # sure, at every scale, that 1 token is enough
    router = CalibratedRouter(certain).fit(oracle)
    assert 0.0 <= router.threshold_ <= 1.0 and router.accuracy_ >= router.target_accuracy_
    routed = AdaptiveM3(adaptive.model, adaptive.processor, router)
    answer = routed.generate(images(1)[0], "what color is in the black frame ?", max_new_tokens=2)
    assert answer.scale == 576  # the calibrated point: every query at the largest scale
    router.save_pretrained(tmp_path / "router")
    loaded = AdaptiveM3(adaptive.model, adaptive.processor, load_predictor(tmp_path / "router"))
    assert loaded.generate(images(1)[0], "what color is in the black frame ?", max_new_tokens=2).scale == 576
