"""Probe predictors: the model's own answer at a cheap scale as routing input, recorded by the oracle build,
reproduced by AdaptiveM3 (which reuses the probe's answer), and counted in every cost."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from adaptive import AdaptiveM3
from m3.data.granularity import VOCABULARY, write_split
from m3.inference import compact_prompts, encode_images, generate_at_scale
from m3.loading import load_m3_model
from m3.processing import M3Processor, llava_prompt
from m3.tiny import build_tiny_tokenizer, tiny_image_processor, tiny_model
from oracle_data import build_oracle, load_oracle, read_manifest
from oracle_data.synthetic import write_synthetic_oracle
from predictor import CalibratedRouter, LGBMScalePredictor, MLPScalePredictor, as_oracle_set, split_oracle
from predictor.costs import routing_costs
from predictor.tuning import validation_loss
from routing_study.evaluation import evaluate_routing, summarize_routing

HIDDEN = 32
SCALES = [1, 9, 36, 144, 576]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny LLaVA (hidden size 32) that knows the granularity words, and a 3-image granularity split."""
    path = tmp_path_factory.mktemp("model") / "tiny"
    tokenizer = build_tiny_tokenizer(extra_words=VOCABULARY)
    model = tiny_model("llava", tokenizer=tokenizer, hidden_size=HIDDEN)
    model.generation_config.max_new_tokens = None
    model.save_pretrained(path)
    M3Processor(tiny_image_processor("llava"), tokenizer, model.config).save_pretrained(path)
    split = write_split(tmp_path_factory.mktemp("data"), "test", num_images=3, seed=0)
    return path, split


def test_the_hidden_state_is_what_the_first_answer_token_is_predicted_from(tiny):
    model = load_m3_model(tiny[0]).eval()
    processor = M3Processor.from_pretrained(tiny[0], config=model.config)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (96, 96, 3), dtype=np.uint8)) for i in (0, 1)]
    questions = ["where is the big shape ?", "what color is the small square ?"]
    grids, sizes = encode_images(model, processor, images)
    compact = compact_prompts(processor, questions)
    for scale in (1, 9):
        output = generate_at_scale(model, processor, compact, grids, sizes, scale, 3, return_hidden=True)
        assert output.hidden.shape == (2, HIDDEN)
        for row, (image, question) in enumerate(zip(images, questions)):  # one prompt alone: no padding at all
            inputs = processor(llava_prompt(question), image, m3_scale=scale)
            with torch.inference_mode():
                logits = model(**inputs, m3_scale=scale).logits[0, -1]
                from_hidden = model.lm_head(torch.from_numpy(output.hidden[row]))
            assert torch.allclose(from_hidden, logits, atol=1e-4)
    assert generate_at_scale(model, processor, compact, grids, sizes, 9, 3).hidden is None  # only when asked


def test_the_oracle_records_the_probe_and_adaptive_m3_reads_the_same(tiny, tmp_path):
    model_dir, split = tiny
    out = build_oracle(model_dir, split, tmp_path / "oracle", batch_size=4, max_new_tokens=4, progress=False).parent
    manifest = read_manifest(out)
    assert manifest["settings"]["hidden_scales"] == [1, 9] and manifest["schema_version"] == 2
    data = as_oracle_set(out)
    assert data.hidden(1).shape == (len(data), HIDDEN) and not np.allclose(data.hidden(1), data.hidden(9))
    with pytest.raises(ValueError, match="no hidden state at scale 36"):
        data.hidden(36)
    predictor = MLPScalePredictor(probe="hidden", hidden_sizes=(8,), max_epochs=2).fit(data)
    adaptive = AdaptiveM3.from_pretrained(model_dir, predictor.save_pretrained(tmp_path / "probe"))
    records = json.loads(split.read_text())[:4]
    images = [split.parent / record["image"] for record in records]
    questions = [record["conversations"][0]["value"].replace("<image>\n", "") for record in records]
    pil, grids, sizes = adaptive.encode(images)
    probe = adaptive.probe(compact_prompts(adaptive.processor, questions), grids, sizes, max_new_tokens=4)
    np.testing.assert_allclose(probe.hidden, data.hidden(1)[:4], atol=1e-5)
    np.testing.assert_allclose(probe.confidences, data.confidences()[:4, 0], atol=1e-5)
    assert probe.answers == data.column("answer_1")[:4].tolist()
    np.testing.assert_allclose(
        adaptive.probabilities(pil, grids, questions, probe), predictor.predict_proba(data.take(range(4))), atol=1e-5
    )


def test_an_old_oracle_folder_is_refused_with_a_hint(tmp_path):
    out = write_synthetic_oracle(tmp_path / "old", num_images=4)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(dict(manifest, schema_version=1)))
    with pytest.raises(ValueError, match="schema version 1.*probe columns hidden_.*rebuild"):
        load_oracle(out)


def test_a_probe_predictor_learns_what_only_the_probe_shows(tmp_path):
    """A hidden share of questions needs one scale more than its family and image say; only the probe's hidden
    state shows it. The probe predictor predicts correctness better and matches full accuracy with fewer tokens."""
    data = as_oracle_set(write_synthetic_oracle(tmp_path / "o", num_images=400, probe_signal=True, noise=0.02, seed=1))
    train, test = split_oracle(data, 0.4, seed=0)
    plain = LGBMScalePredictor(use_embedding=True, n_estimators=80).fit(train)
    probe = LGBMScalePredictor(use_embedding=True, n_estimators=80, probe="hidden").fit(train)
    confidence = LGBMScalePredictor(use_embedding=True, n_estimators=80, probe="confidence").fit(train)
    assert probe.probe_scale_ == 1 and plain.probe_scale_ is None
    assert "probe_hidden_0" in probe.feature_builder_.feature_names_
    assert validation_loss(probe, test) < validation_loss(plain, test) - 0.02
    assert validation_loss(confidence, test) < validation_loss(plain, test)  # scale 1's confidence helps too
    rows = {r["router"]: r for r in summarize_routing(evaluate_routing(test, {"plain": plain, "probe": probe}))}
    assert rows["probe"]["tokens_at_match"] < rows["plain"]["tokens_at_match"]


def test_every_cost_counts_the_probe(tmp_path):
    tokens = np.array([[1, 9, 36, 144, 576], [1, 9, 36, 144, 576]], dtype=float)
    assert routing_costs(tokens, SCALES, 1)[0].tolist() == [1, 10, 37, 145, 577]
    assert routing_costs(tokens, SCALES, 9)[0].tolist() == [10, 9, 45, 153, 585]
    assert routing_costs(tokens, SCALES, None) is not None and routing_costs(tokens, SCALES)[0].tolist()[1] == 9
    with pytest.raises(ValueError, match="probe scale 2"):
        routing_costs(tokens, SCALES, 2)
    data = as_oracle_set(write_synthetic_oracle(tmp_path / "o", num_images=80, seed=2))
    train, test = split_oracle(data, 0.5, seed=0)
    probe = LGBMScalePredictor(n_estimators=20, probe="confidence").fit(train)
    router = CalibratedRouter(probe).fit(test)
    chosen = np.searchsorted(SCALES, router.predict(test))
    expected = routing_costs(test.tokens(), SCALES, 1)[np.arange(len(test)), chosen].mean()
    assert router.tokens_ == pytest.approx(expected)  # calibration counts the probe
    result = evaluate_routing(test, {"probe": router}).router("probe")
    point = result.points[result.calibrated_index]
    assert point["tokens"] == pytest.approx(expected) and point["processed_tokens"] == pytest.approx(expected)


@pytest.fixture(scope="module")
def probe_adaptive(tmp_path_factory):
    oracle = write_synthetic_oracle(tmp_path_factory.mktemp("o"), num_images=40, embedding_dim=HIDDEN, seed=3)
    predictor = MLPScalePredictor(probe="hidden", hidden_sizes=(16,), max_epochs=3).fit(oracle)
    tokenizer = build_tiny_tokenizer()
    model = tiny_model("llava", tokenizer=tokenizer, hidden_size=HIDDEN)
    model.generation_config.max_new_tokens = None
    return AdaptiveM3(model, M3Processor(tiny_image_processor("llava"), tokenizer, model.config), predictor)


def test_adaptive_m3_probes_first_reuses_the_probe_answer_and_counts_its_cost(probe_adaptive):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(2)]
    questions = ["what color is the background ?", "what shape is the big object ?"]
    calls = []
    hook = probe_adaptive.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(1), with_kwargs=True
    )
    try:
        low = probe_adaptive.generate(images, questions, threshold=0.0, max_new_tokens=2)
        prefill_calls_low = len(calls)
        calls.clear()
        high = probe_adaptive.generate(images, questions, threshold=1.0, max_new_tokens=2)
        prefill_calls_high = len(calls)
    finally:
        hook.remove()
    assert prefill_calls_high > prefill_calls_low  # the second batch generated again at 576; the first did not
    forced_1 = probe_adaptive.generate(images, questions, scale=1, max_new_tokens=2)
    forced_576 = probe_adaptive.generate(images, questions, scale=576, max_new_tokens=2)
    for answer, reference in zip(low, forced_1):  # routed to the probe scale: the probe's own answer
        assert answer.scale == 1 and answer.reused_probe and answer.probe_scale == 1
        assert answer.processed_tokens == answer.visual_tokens == 1
        assert answer.answer == reference.answer and answer.confidence == pytest.approx(reference.confidence)
    for answer, reference in zip(high, forced_576):  # routed elsewhere: answered again, probe tokens counted
        assert answer.scale == 576 and not answer.reused_probe
        assert answer.visual_tokens == 576 and answer.processed_tokens == 577
        assert answer.answer == reference.answer
    assert forced_1[0].reused_probe and forced_576[0].processed_tokens == 577  # a forced scale pays the probe too
    with pytest.raises(ValueError, match="without a probe"):
        probe_adaptive.allocate_frames(images, "what is it ?", budget=100)
