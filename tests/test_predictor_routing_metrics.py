import math

import numpy as np
import pytest

from predictor import Curve, apgr, cpt, route_by_threshold
from predictor.routing_metrics import auc, routing_point, selection_rates, tokens_for_accuracy
from predictor.thresholds import candidate_thresholds, check_threshold, clip_probabilities
from routing_study.baselines import (
    cascade_cutoffs,
    cascade_processed_tokens,
    cascade_routing,
    fixed_hull_scales,
    fixed_hull_weights,
    random_routing_weights,
)

SCALES = [1, 9, 36, 144, 576]
WEAK, STRONG = (1.0, 0.2), (576.0, 0.8)


def test_route_by_threshold_by_hand():
    proba = np.array([[0.9, 0.9, 0.9, 0.9, 0.9], [0.1, 0.6, 0.4, 0.8, 0.95], [0.1, 0.1, 0.1, 0.1, 0.1]])
    assert route_by_threshold(proba, SCALES, 0.5).tolist() == [1, 9, 576]
    assert route_by_threshold(proba, SCALES, 0.7).tolist() == [1, 144, 576]
    assert route_by_threshold(proba, SCALES, 0.0).tolist() == [1, 1, 1]
    assert route_by_threshold(proba, SCALES, 1.01).tolist() == [576, 576, 576]  # none reaches: the largest
    with pytest.raises(ValueError, match="5 scales"):
        route_by_threshold(proba[:, :3], SCALES, 0.5)


def test_higher_threshold_never_picks_a_smaller_scale():
    proba = np.random.default_rng(0).random((500, 5))  # not monotone across scales on purpose
    thresholds = np.linspace(0, 1.01, 60)
    routes = np.stack([route_by_threshold(proba, SCALES, t) for t in thresholds])
    assert np.all(np.diff(routes, axis=0) >= 0)


def test_the_token_cap_restricts_the_rule_to_the_allowed_scales():
    proba = np.array([[0.9, 0.9, 0.9, 0.9, 0.9], [0.1, 0.6, 0.4, 0.8, 0.95], [0.1, 0.1, 0.1, 0.1, 0.1]])
    allowed = np.array([[0, 1, 1, 0, 0], [1, 0, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
    # the smallest ALLOWED scale that reaches 0.5, else the largest allowed one
    assert route_by_threshold(proba, SCALES, 0.5, allowed).tolist() == [9, 144, 576]
    assert route_by_threshold(proba, SCALES, 0.99, allowed).tolist() == [36, 144, 576]
    assert route_by_threshold(proba, SCALES, 0.0, allowed).tolist() == [9, 1, 1]
    # an all-true mask is no mask; the rule is the same for probabilities and the cascade's confidences
    everything = np.ones_like(proba, bool)
    for threshold in (0.0, 0.3, 0.7, 1.0):
        np.testing.assert_array_equal(
            route_by_threshold(proba, SCALES, threshold, everything), route_by_threshold(proba, SCALES, threshold)
        )
        np.testing.assert_array_equal(
            cascade_routing(proba, SCALES, threshold), route_by_threshold(proba, SCALES, threshold)
        )
    with pytest.raises(ValueError, match=r"row\(s\) \[1\] allow no scale"):
        route_by_threshold(proba, SCALES, 0.5, np.array([[1] * 5, [0] * 5, [1] * 5], bool))
    with pytest.raises(ValueError, match="allowed must have"):
        route_by_threshold(proba, SCALES, 0.5, everything[:, :3])


def test_valid_thresholds_cover_the_whole_curve():
    for value in (0, 0.25, 1, np.float32(1.0)):
        assert check_threshold(value) == float(value)
    for invalid in (-1e-9, 1 + 1e-9, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
            check_threshold(invalid)
    # a cumulative sum that rounded above 1 and a saturated sigmoid: below the largest scale, never sure
    raw = np.array([[0.3, 1.0000000000000002, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0], [-1e-17, 0.2, 0.4, 0.6, 0.8]])
    proba = clip_probabilities(raw)
    assert proba.min() >= 0 and np.all(proba[:, :-1] < 1) and proba[:, -1].tolist() == [1.0, 1.0, 0.8]
    assert np.abs(proba - raw).max() < 1e-15  # at most one float step
    assert route_by_threshold(proba, SCALES, 1.0).tolist() == [576, 576, 576]
    assert route_by_threshold(proba, SCALES, 0.0).tolist() == [1, 1, 1]
    candidates = candidate_thresholds(proba)
    assert candidates.min() == 0.0 and candidates.max() == 1.0 and np.all(np.diff(candidates) > 0)


def test_apgr_and_cpt_on_hand_made_curves():
    # the random router between weak and strong: a straight line, half the gap on average
    line = Curve.from_points([1, 576], [0.2, 0.8])
    assert apgr(line, WEAK, STRONG) == pytest.approx(0.5)
    assert cpt(line, 0.5, WEAK, STRONG) == pytest.approx(1 + 0.5 * 575)
    # a router that reaches strong accuracy at 100 tokens and stays there
    knee = Curve.from_points([1, 100, 576], [0.2, 0.8, 0.8])
    area = (0.5 * 99 + 0.8 * 476) / 575  # triangle-ish ramp, then flat
    assert auc(knee, 1, 576) == pytest.approx(area)
    assert apgr(knee, WEAK, STRONG) == pytest.approx((area - 0.2) / 0.6)
    for fraction in (0.5, 0.8, 0.95):
        assert cpt(knee, fraction, WEAK, STRONG) == pytest.approx(1 + fraction * 99)
    # over log tokens a flat line still has APGR = its gap share, and the knee at 100 tokens weighs more
    assert apgr(line, WEAK, STRONG, log_tokens=True) < 0.5  # the chord is low for most doublings of tokens
    flat = Curve.from_points([1, 576], [0.5, 0.5])
    assert apgr(flat, WEAK, STRONG, log_tokens=True) == pytest.approx(0.5)
    # exactly: mean over ln t of the knee = 0.2 + 0.6 * (mean over [0, ln 100] of (t - 1) / 99 plus the flat part)
    ln_high, ln_knee = np.log(576), np.log(100)
    ramp = (99 - ln_knee) / 99  # integral over ln t in [0, ln 100] of (t - 1) / 99 = (100 - 1 - ln 100) / 99
    expected = 0.2 + 0.6 * (ramp + (ln_high - ln_knee)) / ln_high
    assert auc(knee, 1, 576, log_tokens=True) == pytest.approx(expected, abs=1e-5)
    # a curve that only starts at 36 tokens is extended to the weak point; one above strong counts above 1
    late = Curve.from_points([36, 576], [0.8, 0.8])
    assert apgr(late, WEAK, STRONG) == pytest.approx(1 - 0.5 * 35 / 575)
    better = Curve.from_points([1, 50, 576], [0.2, 1.0, 1.0])
    assert apgr(better, WEAK, STRONG) > 1
    # no gap: undefined; never reaching: NaN
    assert math.isnan(apgr(line, (1, 0.5), (576, 0.5)))
    assert math.isnan(apgr(line, (1, 0.5), (576, 0.4)))  # the largest scale is worse: nothing to recover
    assert math.isnan(cpt(line, 0.5, (1, 0.5), (576, 0.5)))
    assert math.isnan(tokens_for_accuracy(line, 0.9))


def test_curve_keeps_the_best_point_per_token_count():
    curve = Curve.from_points([9, 1, 9, 36], [0.4, 0.2, 0.5, 0.6])
    assert curve.tokens.tolist() == [1, 9, 36] and curve.accuracy.tolist() == [0.2, 0.5, 0.6]
    assert curve.at(5) == pytest.approx(0.35)


def test_routing_point_and_selection_rates():
    correct = np.array([[0, 1, 1, 1, 1], [0, 0, 0, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], float)
    tokens = np.tile(np.array(SCALES, float), (4, 1))
    routing = np.array([9, 36, 576, 1])
    assert routing_point(routing, correct, tokens, SCALES) == (pytest.approx((9 + 36 + 576 + 1) / 4), 0.5)
    oracle = np.array([9, 144, 1, 1])
    assert selection_rates(routing, oracle, SCALES) == {"under": 0.25, "exact": 0.5, "over": 0.25}
    with pytest.raises(ValueError, match=r"scale\(s\) \[7\]"):
        routing_point(np.array([7, 1, 1, 1]), correct, tokens, SCALES)


def test_random_routing_matches_tokens_and_interpolates_accuracy():
    rng = np.random.default_rng(0)
    correct = (rng.random((200, 5)) < np.array([0.2, 0.4, 0.6, 0.7, 0.8])).astype(float)
    tokens = np.tile(np.array(SCALES, float), (200, 1))
    for target in (1, 5, 9, 90, 400, 576, 1000):
        weights = random_routing_weights(tokens, target)
        mean_tokens, accuracy = routing_point(weights, correct, tokens, SCALES)
        assert mean_tokens == pytest.approx(min(target, 576))
        fixed = correct.mean(axis=0)
        assert accuracy == pytest.approx(np.interp(min(target, 576), SCALES, fixed))


def test_the_fixed_scale_hull_is_the_best_mix_of_two_fixed_scales():
    tokens = np.tile(np.array(SCALES, float), (4, 1))
    # 36 tokens (0.25) lies below the chord from 9 (0.5) to 144 (0.75): the hull skips it, random routing does not
    correct = np.array([[0, 1, 0, 1, 1], [0, 1, 1, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 1, 1]], float)
    assert correct.mean(axis=0).tolist() == [0, 0.5, 0.25, 0.75, 1.0]
    assert fixed_hull_scales(tokens, correct).tolist() == [0, 1, 3, 4]
    rng = np.random.default_rng(0)
    for target in (1, 5, 9, 20, 36, 90, 144, 400, 576):
        hull = fixed_hull_weights(tokens, correct, target)
        mean_tokens, accuracy = routing_point(hull, correct, tokens, SCALES)
        assert mean_tokens == pytest.approx(target)
        assert accuracy == pytest.approx(np.interp(target, [1, 9, 144, 576], [0, 0.5, 0.75, 1.0]))
        assert np.count_nonzero(hull[0]) <= 2 and hull[0, 2] == 0  # never the scale under the envelope
        _, random_accuracy = routing_point(random_routing_weights(tokens, target), correct, tokens, SCALES)
        assert accuracy >= random_accuracy - 1e-12  # never below random routing, above it around 36
        # no mix of fixed scales with the same mean tokens does better
        for _ in range(50):
            weights = rng.dirichlet(np.ones(5))
            mixed_tokens = weights @ np.array(SCALES, float)
            if abs(mixed_tokens - target) < 1e-9:
                assert weights @ correct.mean(axis=0) <= accuracy + 1e-12
    _, at_36 = routing_point(fixed_hull_weights(tokens, correct, 36), correct, tokens, SCALES)
    _, random_36 = routing_point(random_routing_weights(tokens, 36), correct, tokens, SCALES)
    assert at_36 == pytest.approx(0.55) and random_36 == pytest.approx(0.25)


def test_a_concave_fixed_curve_makes_the_hull_random_routing():
    tokens = np.tile(np.array(SCALES, float), (100, 1))
    correct = (np.arange(100)[:, None] < np.array([20, 50, 60, 65, 68])).astype(float)  # accuracy 0.2 ... 0.68
    assert fixed_hull_scales(tokens, correct).tolist() == [0, 1, 2, 3, 4]
    for target in (3, 20, 100, 300):
        np.testing.assert_allclose(fixed_hull_weights(tokens, correct, target), random_routing_weights(tokens, target))


def test_confidence_cascade():
    confidence = np.array([[-0.1, -0.1, -0.1, -0.1, -0.1], [-2.0, -1.5, -0.2, -0.1, -0.1], [-3, -3, -3, -3, -3.0]])
    tokens = np.tile(np.array(SCALES, float), (3, 1))
    assert cascade_routing(confidence, SCALES, -0.5).tolist() == [1, 36, 576]
    assert cascade_processed_tokens(confidence, tokens, SCALES, -0.5).tolist() == [1, 1 + 9 + 36, sum(SCALES)]
    cutoffs = cascade_cutoffs(confidence)
    assert cascade_routing(confidence, SCALES, cutoffs[0]).tolist() == [1, 1, 1]
    assert cascade_routing(confidence, SCALES, cutoffs[-1]).tolist() == [576, 576, 576]
