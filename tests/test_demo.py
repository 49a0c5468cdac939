"""The demo's parts without a browser: pooled views against m3.pooling, savings against m3.flops, one vision pass
per question with answers equal to AdaptiveM3.generate, the default predictor's resolution, and the page's messages."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from adaptive import AdaptiveM3
from m3.data.granularity import FAMILIES
from m3.flops import estimate_prefill, llava_15_config
from m3.pooling import pool_tokens
from m3.processing import M3Processor
from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model
from m3_demo.examples import load_examples
from m3_demo.page import scale_card_html, summary_html
from m3_demo.router import CERTIFICATES_NAME, load_certificates
from m3_demo.session import ROOT, SHIPPED_PREDICTOR, Asked, DemoModel, load_demo_model, predictor_matches
from m3_demo.views import model_input_pixels, patch_means, pooled_cells, pooled_view, saving
from oracle_data.synthetic import write_synthetic_oracle
from predictor import MLPScalePredictor

from . import extras

SCALES = (1, 9, 36, 144, 576)


def _random_pixels(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# ---- pooled views: the pooling's arithmetic on pixels


@pytest.mark.parametrize("size", [96, 336])
def test_pooled_cells_are_m3_pooling_of_the_patch_means(size):
    pixels = _random_pixels(size)
    side = 24
    patch = size // side
    tokens = torch.from_numpy(patch_means(pixels)).reshape(side * side, 3)  # one "token" per patch, row-major
    assert np.allclose(tokens[0].numpy(), pixels[:patch, :patch].reshape(-1, 3).mean(0))
    for scale in SCALES:
        k = math.isqrt(scale)
        expected = pool_tokens(tokens, scale).reshape(k, k, 3).numpy()
        np.testing.assert_allclose(pooled_cells(pixels, scale), expected, rtol=0, atol=1e-9)


def test_pooled_view_paints_each_cell_over_its_pixels():
    pixels = _random_pixels(96, seed=1)
    assert np.array_equal(pooled_view(pixels, 1), np.broadcast_to(np.rint(pixels.reshape(-1, 3).mean(0)), (96, 96, 3)))
    view = pooled_view(pixels, 9)
    cells = np.rint(pooled_cells(pixels, 9)).astype(np.uint8)
    assert view.shape == (96, 96, 3) and view.dtype == np.uint8
    for row in range(3):
        for col in range(3):
            block = view[row * 32 : (row + 1) * 32, col * 32 : (col + 1) * 32]
            assert (block == cells[row, col]).all()
    full = pooled_view(pixels, 576)  # 576 tokens: every 4x4 patch is its mean, so the picture is the patch grid
    assert np.array_equal(full[::4, ::4], np.rint(patch_means(pixels)).astype(np.uint8))
    larger = pooled_view(pixels, 36, display_size=200)  # a whole factor (3) keeps the cells sharp
    assert larger.shape == (288, 288, 3) and np.array_equal(larger[::3, ::3], pooled_view(pixels, 36))


def test_pooled_view_refuses_what_pooling_refuses():
    with pytest.raises(ValueError, match="unknown scale 10"):
        pooled_view(_random_pixels(96), 10)
    with pytest.raises(ValueError, match="does not cut into a 24x24 grid"):
        pooled_view(_random_pixels(100), 9)


def test_model_input_pixels_are_what_the_processor_feeds_the_tower():
    processor = M3Processor(tiny_image_processor("llava"), build_tiny_tokenizer(), tiny_model("llava").config)
    pixels = _random_pixels(96, seed=2)
    seen = model_input_pixels(processor, Image.fromarray(pixels))
    assert seen.shape == (96, 96, 3) and np.abs(seen.astype(int) - pixels).max() <= 1  # 96 px: no resize
    wide = model_input_pixels(processor, Image.fromarray(_random_pixels(192)[:, :150]))
    assert wide.shape == (96, 96, 3)  # resized and centre-cropped to the model's input


# ---- savings: m3.flops at the routed scale against 576 tokens


def test_saving_is_the_flops_estimate_against_576_tokens():
    at_36 = saving(36)
    config = llava_15_config("7b")
    assert at_36.llm_flops == estimate_prefill(config, 36).llm_flops
    assert at_36.full_llm_flops == estimate_prefill(config, 576).llm_flops
    assert at_36.tokens_saved == 540
    assert at_36.llm_flops / 1e12 == pytest.approx(0.86, abs=0.01)  # the paper's Table 9: 0.9 at 36 tokens
    assert at_36.full_llm_flops / 1e12 == pytest.approx(8.04, abs=0.01)
    assert saving(576).tokens_saved == 0 and saving(576).llm_share_saved == 0
    assert saving(36, "LLaVA-1.5-13B").full_llm_flops > at_36.full_llm_flops
    assert 0 < at_36.total_share_saved < at_36.llm_share_saved  # the vision tower runs at every scale
    with pytest.raises(ValueError, match="unknown model"):
        saving(36, "LLaVA-70B")


# ---- the model side: one vision pass, answers equal to AdaptiveM3.generate


@pytest.fixture(scope="module")
def shipped():
    return load_demo_model()


def _count_vision_passes(adaptive: AdaptiveM3, monkeypatch) -> list:
    calls = []
    original = adaptive.model.model.encode_images

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(adaptive.model.model, "encode_images", counted)
    return calls


def test_the_default_is_the_tiny_model_with_its_certified_shipped_predictor(shipped):
    assert "tiny-m3-router" in shipped.source and "checkpoints/tiny-m3" in shipped.source
    assert [c.epsilon for c in shipped.certificates] == [0.01, 0.02, 0.05, 0.1]
    certificate = shipped.adaptive.predictor.calibration_["certificate"]
    assert shipped.rule == "threshold" and shipped.default_value == certificate["threshold"]  # its certified one
    assert predictor_matches(ROOT / SHIPPED_PREDICTOR, ROOT / "checkpoints" / "tiny-m3")


def test_ask_answers_every_scale_from_one_vision_pass_as_generate_does(shipped, monkeypatch):
    examples = load_examples()
    image, question = examples.images[0], examples.questions["white_frame"]
    calls = _count_vision_passes(shipped.adaptive, monkeypatch)
    asked = shipped.ask(str(image), question)
    assert len(calls) == 1
    monkeypatch.undo()
    assert asked.scales == list(SCALES) and asked.visual_tokens == list(SCALES)
    for scale, answer in zip(asked.scales, asked.answers):
        assert answer == shipped.adaptive.generate(str(image), question, scale=scale).answer
    routed = shipped.adaptive.generate(str(image), question)
    assert shipped.route(asked) == routed.scale
    assert asked.probabilities == pytest.approx([routed.probabilities[s] for s in SCALES])
    for threshold, cap in ((0.0, None), (1.0, None), (1.0, 36), (0.5, 9)):
        expected = shipped.adaptive.generate(str(image), question, threshold=threshold, max_tokens=cap).scale
        assert shipped.route(asked, threshold, cap) == expected
    assert asked.answers[0] != asked.answers[-1]  # this example: the framed colour is lost at 1 token


def test_ask_matches_generate_on_llava_next_too(tmp_path, monkeypatch):
    oracle = write_synthetic_oracle(tmp_path / "oracle", num_images=20, embedding_dim=32)
    predictor = MLPScalePredictor(hidden_sizes=(8,), max_epochs=2).fit(oracle)
    tokenizer = build_tiny_tokenizer()
    model = tiny_model("llava_next", tokenizer=tokenizer, hidden_size=32)
    model.generation_config.max_new_tokens = None
    processor = M3Processor(tiny_image_processor("llava_next"), tokenizer, model.config)
    demo = DemoModel(AdaptiveM3(model, processor, predictor), "a random tiny LLaVA-NeXT")
    image, question = _random_pixels(96, seed=3)[:, :80], "what color is the background ?"
    calls = _count_vision_passes(demo.adaptive, monkeypatch)
    asked = demo.ask(image, question, max_new_tokens=3)
    assert len(calls) == 1
    monkeypatch.undo()
    assert asked.visual_tokens[-1] > 576  # anyres: several crops
    for scale, answer in zip(asked.scales, asked.answers):
        assert answer == demo.adaptive.generate(image, question, scale=scale, max_new_tokens=3).answer
    assert demo.route(asked) == demo.adaptive.generate(image, question, max_new_tokens=3).scale


def test_ask_refuses_an_empty_question_and_a_bad_image(shipped, tmp_path):
    with pytest.raises(ValueError, match="type a question"):
        shipped.ask(str(load_examples().images[0]), "   ")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(OSError, match="cannot read image file"):
        shipped.ask(str(broken), "what color is the background ?")


# ---- which predictor the demo uses


def _fake_root(tmp_path, weights_sha256: str | None = None):
    """A repository root holding the committed model and a copy of the shipped predictor (its recorded weights
    hash replaced when given)."""
    root = tmp_path / "repo"
    (root / "checkpoints").mkdir(parents=True)
    shutil.copytree(ROOT / "checkpoints" / "tiny-m3", root / "checkpoints" / "tiny-m3")
    shutil.copytree(ROOT / SHIPPED_PREDICTOR, root / SHIPPED_PREDICTOR)
    if weights_sha256 is not None:
        path = root / SHIPPED_PREDICTOR / "predictor.json"
        state = json.loads(path.read_text())
        from m3.fingerprint import METHOD

        state["fingerprint"]["model_fingerprint"].update(method=METHOD, weights_sha256=weights_sha256)
        path.write_text(json.dumps(state))
    return root


def test_a_stale_shipped_predictor_falls_back_to_the_quickstart_or_says_how_to_build_one(tmp_path):
    root = _fake_root(tmp_path, weights_sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="fitted on other weights.*build_demo_predictor.py"):
        load_demo_model(root=root)
    fresh = _fake_root(tmp_path / "fresh")
    adaptive = AdaptiveM3.from_pretrained(fresh / "checkpoints" / "tiny-m3", fresh / SHIPPED_PREDICTOR)
    adaptive.save_pretrained(root / "runs" / "quickstart" / "adaptive")
    model = load_demo_model(root=root)
    assert "quickstart" in model.source and "other weights" in model.source
    assert [c.epsilon for c in model.certificates] == [0.02]  # the one saved with the predictor, no menu file
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        load_demo_model(model_dir=tmp_path / "nowhere", root=root)
    with pytest.raises(ValueError, match="not both"):
        load_demo_model(adaptive_dir=root / "runs" / "quickstart" / "adaptive", model_dir=root)


def test_certificates_come_from_the_menu_file_or_the_saved_predictor(shipped, tmp_path):
    menu = load_certificates(shipped.adaptive.predictor, ROOT / SHIPPED_PREDICTOR)
    assert [c.epsilon for c in menu] == [0.01, 0.02, 0.05, 0.1]
    assert all(c.delta == 0.1 and c.n == 200 * len(FAMILIES) for c in menu)  # 200 validation images
    thresholds = [c.threshold for c in menu]
    assert thresholds == sorted(thresholds, reverse=True)  # a larger tolerated drop certifies a lower threshold
    assert [c.epsilon for c in load_certificates(shipped.adaptive.predictor, tmp_path)] == [0.02]
    assert (ROOT / SHIPPED_PREDICTOR / CERTIFICATES_NAME).is_file()


# ---- the page's HTML and handlers


def _asked() -> Asked:
    return Asked(
        question="what color is in the white frame ?",
        pixels=_random_pixels(96),
        scales=list(SCALES),
        answers=["red", "red", "<green>", "green", "green"],
        confidences=[-0.7, -0.5, -0.1, -0.05, -0.01],
        visual_tokens=list(SCALES),
        probabilities=[0.1, 0.5, 0.95, 0.96, 0.97],
    )


def test_scale_cards_carry_what_the_browser_reads():
    asked = _asked()
    card = scale_card_html(asked, 2, routed=36, threshold=0.9, max_tokens=None, grid_tokens=576, truth="green")
    assert 'data-scale="36"' in card and 'data-routed="true"' in card and "m3-card routed" in card
    assert 'data-answer="&lt;green&gt;"' in card and "<green>" not in card  # answers are escaped
    assert "m3-wrong" in card  # "<green>" is not "green"
    other = scale_card_html(asked, 4, routed=36, threshold=0.9, max_tokens=144, grid_tokens=576)
    assert 'data-routed="false"' in other and "over-cap" in other and "over the token cap" in other
    summary = summary_html(asked, 36, saving(36), 0.9, None)
    assert 'data-routed-scale="36"' in summary and "540" in summary and "not certified" in summary


def test_page_handlers_turn_every_user_error_into_a_message(shipped, tmp_path):
    extras.need("gradio", "demo")
    from m3_demo.app import NO_IMAGE, NO_QUESTION, _Page

    page = _Page(shipped, load_examples(), text_tokens=30)
    image = str(load_examples().images[1])
    state, message, *rest = page.ask(None, "what color is the background ?", 0.9, 576, "LLaVA-1.5-7B")
    assert state is None and NO_IMAGE in message and "error" in message
    state, message, *rest = page.ask(image, "  ", 0.9, 576, "LLaVA-1.5-7B")
    assert state is None and NO_QUESTION in message
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    shown, message = page.upload(str(broken))
    assert shown is None and "broken.png is not an image the demo can read" in message and "Traceback" not in message
    assert page.upload(image) == (image, "")
    certified = {c.epsilon: c.threshold for c in shipped.certificates}
    state, message, *cards, summary = page.ask(
        image, "what color is in the black frame ?", certified[0.02], 576, "LLaVA-1.5-7B"
    )
    assert message == "" and state["truth"] == load_examples().truth(image, "what color is in the black frame ?")
    assert state["truth"] == "red" and len(cards) == 5  # examples.json, image 1
    routed = shipped.adaptive.generate(image, "what color is in the black frame ?").scale  # at the certified threshold
    assert f'data-routed-scale="{routed}"' in summary and "certified at ε = 0.02" in summary
    message, *cards, summary = page.reroute(state, certified[0.02], 9, "LLaVA-1.5-13B")
    assert 'data-routed-scale="9"' in summary and "LLaVA-1.5-13B" in summary
    assert page.certified_at(certified[0.02]).epsilon == 0.02 and page.certified_at(0.5) is None
    threshold, certificate = page.epsilon_changed(0.1)
    assert threshold["value"] == certified[0.1] and "ε = 0.1" in certificate


def test_write_examples_regenerates_the_bundled_examples_from_the_generator(tmp_path):
    from m3.data.granularity import iter_records
    from m3_demo.examples import write_examples

    index = write_examples(tmp_path / "examples", num_images=2)
    examples = load_examples(index.parent)
    assert [p.name for p in examples.images] == ["test_000000.png", "test_000001.png"]
    for path, (_, records) in zip(examples.images, iter_records("test", 2, 0)):
        for record in records:
            assert examples.truth(path, record["conversations"][0]["value"].split("\n")[-1]) == record["answer"]
    bundled = load_examples()  # the committed examples are what the generator writes today
    assert bundled.questions == examples.questions
    assert bundled.truth(bundled.images[0], bundled.questions["background"]) == examples.truth(
        examples.images[0], examples.questions["background"]
    )


def test_a_model_that_routes_by_price_shows_and_moves_its_price(shipped, tmp_path):
    """A predictor saved with the priced rule: the page's control is a price, routing follows AdaptiveM3.generate at
    that price, and the summary names the rule (a certificate at the price is shown as certified)."""
    extras.need("gradio", "demo")
    from m3_demo.app import _Page, build_demo
    from predictor.risk_control import Certificate

    certificate = Certificate(0.02, 0.1, 600, 0.05, "berger_boos", 0.08, 0.004, 120.0, 300, rule="price")
    record = {"certificate": certificate.to_dict()}
    shipped.adaptive.predictor.save_pretrained(tmp_path / "priced", price=0.05, calibration=record)
    model = load_demo_model(model_dir=ROOT / "checkpoints" / "tiny-m3", predictor_dir=tmp_path / "priced")
    assert (model.rule, model.default_value) == ("price", 0.05) and model.certificates == [certificate]
    page = _Page(model, load_examples(), text_tokens=30)
    image, question = str(load_examples().images[1]), "what color is in the black frame ?"
    state, message, *cards, summary = page.ask(image, question, 0.05, 576, "LLaVA-1.5-7B")
    routed = model.adaptive.generate(image, question).scale
    assert message == "" and f'data-routed-scale="{routed}"' in summary
    assert "price 0.050, certified at ε = 0.02" in summary and "after price" in cards[0]
    for price in (0.0, 0.3, 2.0):
        _, *_, summary = page.reroute(state, price, 576, "LLaVA-1.5-7B")
        expected = model.adaptive.generate(image, question, price=price).scale
        assert f'data-routed-scale="{expected}"' in summary and f"price {price:.3f}, not certified" in summary
    assert page.value_of(0.02) == 0.05 and page.certified_at(0.05).epsilon == 0.02
    blocks = build_demo(model)
    sliders = {
        c.elem_id: c for c in blocks.blocks.values() if getattr(c, "elem_id", None) in ("m3-price", "m3-threshold")
    }
    assert list(sliders) == ["m3-price"] and sliders["m3-price"].value == 0.05
