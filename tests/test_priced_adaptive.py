"""The priced rule on the committed tiny model: AdaptiveM3.generate routes one query at a price (given, or saved with
the predictor or the AdaptiveM3 folder), and scripts/ask.py prints the rule and operating point it routed by."""

import json

import numpy as np
import pytest

from predictor import load_predictor
from predictor.risk_control import Certificate
from predictor.thresholds import route_by_price


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The committed tiny model with its shipped predictor, and one granularity test image with its questions."""
    from adaptive import AdaptiveM3
    from m3.data.granularity import write_split

    from .damage import TINY_M3

    data = write_split(tmp_path_factory.mktemp("data"), "test", num_images=1, seed=0)
    records = json.loads(data.read_text())
    questions = [r["conversations"][0]["value"].replace("<image>", "").strip() for r in records]
    return (
        AdaptiveM3.from_pretrained(TINY_M3, TINY_M3.parent / "tiny-m3-router"),
        data.parent / records[0]["image"],
        questions,
    )


def test_adaptive_m3_routes_one_query_at_a_price(tiny, tmp_path):
    from adaptive import AdaptiveM3

    adaptive, image, questions = tiny
    question = questions[0]
    scales = []
    for price in (0.0, 0.05, 0.5, 100.0):
        answer = adaptive.generate(image, question, price=price, max_new_tokens=2)
        probabilities = np.array([[answer.probabilities[s] for s in adaptive.scales]])
        expected = route_by_price(probabilities, adaptive.scales, price)[0]
        assert (answer.rule, answer.price, answer.threshold, answer.scale) == ("price", price, None, expected)
        assert answer.certificate is None  # the shipped certificate holds at its threshold, not at a price
        scales.append(answer.scale)
    assert scales == sorted(scales, reverse=True) and scales[-1] == 1
    with pytest.raises(ValueError, match="not both"):
        adaptive.generate(image, question, threshold=0.5, price=0.1)
    with pytest.raises(ValueError, match="price"):
        adaptive.generate(image, question, price=-1)
    # a predictor saved at a price routes by it without being told, and so does the AdaptiveM3 folder it goes into
    priced = tmp_path / "priced"
    adaptive.predictor.save_pretrained(priced, price=0.5)
    model_dir = adaptive.model.config.name_or_path
    again = AdaptiveM3.from_pretrained(model_dir, priced)
    answer = again.generate(image, question, max_new_tokens=2)
    assert (answer.rule, answer.price, answer.scale) == ("price", 0.5, scales[2])
    reloaded = AdaptiveM3.from_pretrained(again.save_pretrained(tmp_path / "adaptive"))
    assert reloaded.operating_point() == ("price", 0.5)
    # an AdaptiveM3 default price is saved in adaptive_config.json and overrides the predictor's rule
    folder = AdaptiveM3(again.model, again.processor, adaptive.predictor, price=100.0).save_pretrained(tmp_path / "p")
    assert AdaptiveM3.from_pretrained(folder).generate(image, question, max_new_tokens=2).scale == 1


def test_ask_prints_the_rule_and_operating_point(tiny, tmp_path, capsys):
    from .damage import TINY_M3, load_script

    adaptive, image, questions = tiny
    argv = ["--model", str(TINY_M3), "--image", str(image), "--question", questions[0], "--max-new-tokens", "2"]
    router = TINY_M3.parent / "tiny-m3-router"
    load_script("ask").main([*argv, "--predictor", str(router), "--price", "0.05"])
    out = capsys.readouterr().out
    certified = f"{load_predictor(router).threshold_:.4f}"  # the shipped predictor's certified threshold
    assert "routing: price 0.0500 (--price)" in out
    assert "not certified: routed at price 0.0500" in out and f"holds at threshold {certified} only" in out
    load_script("ask").main([*argv, "--predictor", str(router)])
    assert f"routing: threshold {certified} (the saved operating point)" in capsys.readouterr().out
    # a predictor certified at a price: the certificate is shown where it holds
    certificate = Certificate(0.02, 0.1, 600, 0.05, "berger_boos", 0.08, 0.004, 120.0, 300, rule="price")
    adaptive.predictor.save_pretrained(
        tmp_path / "priced", price=0.05, calibration={"certificate": certificate.to_dict()}
    )
    load_script("ask").main([*argv, "--predictor", str(tmp_path / "priced")])
    out = capsys.readouterr().out
    assert "routing: price 0.0500 (the saved operating point)" in out and "certified price 0.0500: drop <= 0.02" in out
    with pytest.raises(SystemExit) as exit_info:
        load_script("ask").main([*argv, "--predictor", str(router), "--price", "0.1", "--threshold", "0.5"])
    assert exit_info.value.code == 2 and "not both" in capsys.readouterr().err
