"""Learn-then-Test for routing thresholds: p-values are valid, fixed-sequence testing controls the error, and a
certified threshold keeps its promise on fresh data."""

import numpy as np
import pytest
from scipy import stats

from predictor.risk_control import (
    P_VALUES,
    Certificate,
    berger_boos_p_value,
    betting_p_value,
    binomial_p_value,
    certify,
    fixed_sequence,
    paired_outcomes,
)
from predictor.thresholds import route_by_threshold

SCALES = np.array([1, 9, 36, 144, 576])


def test_paired_outcomes_on_a_hand_made_case():
    correct = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0], [0, 1, 1, 0, 1]], dtype=bool)
    losses, gains = paired_outcomes(correct, np.array([0, 1, 0, 2]))
    assert losses.tolist() == [False, True, False, False]  # row 1: largest right, scale 9 wrong
    assert gains.tolist() == [False, False, True, False]  # row 2: largest wrong, scale 1 right
    many_losses, many_gains = paired_outcomes(correct, np.array([[0, 1, 0, 2], [4, 4, 4, 4]]))
    assert many_losses.shape == (2, 4) and not many_losses[1].any() and not many_gains[1].any()


def test_binomial_p_value_is_the_binomial_cdf():
    assert binomial_p_value(3, 200, 0.05) == pytest.approx(stats.binom.cdf(3, 200, 0.05))
    assert binomial_p_value(0, 500, 0.02) == pytest.approx(0.98**500)
    assert binomial_p_value(5, 100, 0.02) > binomial_p_value(1, 100, 0.02)  # more losses, weaker evidence


@pytest.mark.parametrize("gain_rate", [0.0, 0.03, 0.1])
def test_null_p_values_are_valid(gain_rate):
    """At the boundary of H0 (loss rate - gain rate = epsilon), P(p <= alpha) <= alpha, for every p-value."""
    rng = np.random.default_rng(0)
    n, epsilon, alpha, draws = 150, 0.05, 0.1, 600
    loss_rate = gain_rate + epsilon
    outcomes = rng.choice(3, size=(draws, n), p=[loss_rate, gain_rate, 1 - loss_rate - gain_rate])
    rejected = {name: 0 for name in P_VALUES}
    for row in outcomes:
        losses, gains = int((row == 0).sum()), int((row == 1).sum())
        paired = (row == 0).astype(float) - (row == 1)
        rejected["binomial"] += binomial_p_value(losses, n, epsilon) <= alpha
        rejected["berger_boos"] += berger_boos_p_value(losses, gains, n, epsilon, 0.01) <= alpha
        rejected["betting"] += betting_p_value(paired, epsilon) <= alpha
    slack = 3 * np.sqrt(alpha * (1 - alpha) / draws)
    for name, count in rejected.items():
        assert count / draws <= alpha + slack, (name, count / draws)


def test_berger_boos_credits_gains_and_betting_uses_them_too():
    """With gains offsetting losses, the paired tests certify a drop the loss-event test cannot."""
    n, epsilon = 1000, 0.03
    losses, gains = 60, 50  # 6 % loss events, but a net drop of 1 %
    binomial = binomial_p_value(losses, n, epsilon)
    assert binomial > 0.99
    assert berger_boos_p_value(losses, gains, n, epsilon, 0.01) < 0.1
    paired = np.array([1.0] * losses + [-1.0] * gains + [0.0] * (n - losses - gains))
    assert betting_p_value(paired, epsilon) < binomial / 2
    # without gains the loss-event test is exact and Berger-Boos pays only its gamma (0.01) and the interval
    assert berger_boos_p_value(0, 0, 400, epsilon, 0.01) < binomial_p_value(0, 400, epsilon) + 0.02


def test_fixed_sequence_stops_at_the_first_non_rejection():
    assert fixed_sequence([0.01, 0.02, 0.5, 0.01], delta=0.1) == 2
    assert fixed_sequence([0.2, 0.01], delta=0.1) == 0
    assert fixed_sequence([0.01, 0.05], delta=0.1) == 2
    with pytest.raises(ValueError, match="delta"):
        fixed_sequence([0.1], delta=0)


def population(seed: int = 0, n: int = 4000):
    """Queries that need a scale (0..4); right at or above it with 93 %, below it with 25 % (gains happen);
    the router's score is the true probability plus noise."""
    rng = np.random.default_rng(seed)
    need = rng.choice(5, size=n, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    p_right = np.where(np.arange(5)[None, :] >= need[:, None], 0.93, 0.25)
    correct = rng.random((n, 5)) < p_right
    proba = np.clip(p_right + rng.normal(0, 0.15, (n, 5)), 0, 1)
    return correct, proba


THRESHOLDS = np.linspace(0, 1, 201)[::-1]  # strictest first, fixed before seeing any label


def routed_indices(proba):
    return np.stack([np.searchsorted(SCALES, route_by_threshold(proba, SCALES, t)) for t in THRESHOLDS])


@pytest.mark.parametrize("method", P_VALUES)
def test_certified_thresholds_keep_their_promise_on_fresh_data(method):
    """Validity: over 200 random calibration / test resplits (n = 400 calibration queries), the share whose test
    drop below always-576 exceeds epsilon is at most delta (plus binomial slack)."""
    correct, proba = population()
    tokens = np.tile(SCALES.astype(float), (len(correct), 1))
    epsilon, delta, resplits, exceeded, used = 0.05, 0.1, 200, 0, []
    for seed in range(resplits):
        order = np.random.default_rng(seed + 1).permutation(len(correct))
        cal, test = order[:400], order[400:]
        certificate = certify(correct[cal], routed_indices(proba[cal]), THRESHOLDS, tokens[cal], epsilon, delta, method)
        if certificate.threshold is None:
            chosen = np.full(len(test), 4)
        else:
            chosen = np.searchsorted(SCALES, route_by_threshold(proba[test], SCALES, certificate.threshold))
        drop = correct[test, 4].mean() - correct[test, chosen].mean()
        exceeded += drop > epsilon
        used.append(SCALES[chosen].mean())
    assert exceeded / resplits <= delta + 3 * np.sqrt(delta * (1 - delta) / resplits)
    assert np.mean(used) < 576  # and it certifies something: a certificate that never saves is useless


def test_certify_reports_what_it_certified():
    correct, proba = population(seed=3, n=600)
    tokens = np.tile(SCALES.astype(float), (len(correct), 1))
    certificate = certify(correct, routed_indices(proba), THRESHOLDS, tokens, 0.05, 0.1, "berger_boos", data_sha256="x")
    assert certificate.threshold is not None and certificate.p_value <= 0.1
    chosen = np.searchsorted(SCALES, route_by_threshold(proba, SCALES, certificate.threshold))
    assert certificate.calibration_tokens == pytest.approx(SCALES[chosen].mean())
    assert certificate.calibration_drop == pytest.approx(correct[:, 4].mean() - correct[np.arange(600), chosen].mean())
    assert Certificate.from_dict(certificate.to_dict()) == certificate
    # a tolerance too tight to certify anything: no threshold, i.e. always the largest scale
    strict = certify(correct[:50], routed_indices(proba[:50]), THRESHOLDS, tokens[:50], 0.001, 0.1, "binomial")
    assert strict.threshold is None and strict.tested >= 1
    with pytest.raises(ValueError, match="unknown p-value"):
        certify(correct, routed_indices(proba), THRESHOLDS, tokens, 0.05, 0.1, "hoeffding")


def test_certified_router_fits_saves_and_loads_its_certificate(tmp_path):
    from oracle_data.synthetic import write_synthetic_oracle
    from predictor import CertifiedRouter, LGBMScalePredictor, load_predictor, saved_certificate, split_oracle
    from predictor.data import as_oracle_set

    data = as_oracle_set(write_synthetic_oracle(tmp_path / "oracle", num_images=300, noise=0.02, seed=1))
    fit_part, calibration = split_oracle(data, 0.5, seed=0)
    predictor = LGBMScalePredictor(n_estimators=60).fit(fit_part)
    router = CertifiedRouter(predictor, max_drop=0.05, delta=0.1).fit(calibration)
    certificate = router.certificate_
    assert certificate.threshold is not None and certificate.n == len(calibration) == router.n_calibration_
    assert router.threshold_ == certificate.threshold and router.tokens_ < 576  # it saves tokens
    assert router.target_accuracy_ - router.accuracy_ == pytest.approx(certificate.calibration_drop)
    assert predictor.threshold_ == 0.5  # the wrapped predictor is left as it was
    router.save_pretrained(tmp_path / "certified")
    loaded = load_predictor(tmp_path / "certified")
    assert loaded.threshold_ == router.threshold_ and saved_certificate(loaded) == certificate
    assert np.array_equal(loaded.predict(calibration), router.predict(calibration))
    assert saved_certificate(predictor) is None
    with pytest.raises(ValueError, match="max_drop and delta"):
        CertifiedRouter(predictor, max_drop=0).fit(calibration)


def test_auto_chooses_the_p_value_from_n_eps_and_delta_alone():
    from predictor.risk_control import resolve_p_value

    # at n = 200 Berger-Boos cannot certify even a loss-free candidate at eps 0.02 (its nuisance interval is too
    # wide), the binomial test can; with more queries Berger-Boos has room to credit gains
    assert berger_boos_p_value(0, 0, 200, 0.02, 0.01) > 0.1 > binomial_p_value(0, 200, 0.02)
    assert resolve_p_value("auto", 200, 0.02, 0.1) == "binomial"
    assert resolve_p_value("auto", 800, 0.02, 0.1) == "berger_boos"
    assert resolve_p_value("betting", 200, 0.02, 0.1) == "betting"
    correct, proba = population(seed=4, n=200)
    tokens = np.tile(SCALES.astype(float), (len(correct), 1))
    certificate = certify(correct, routed_indices(proba), THRESHOLDS, tokens, 0.05, 0.1, "auto")
    assert certificate.p_value_method == resolve_p_value("auto", 200, 0.05, 0.1)


def test_a_certified_reference_router_that_certifies_nothing_answers_at_the_largest_scale(tmp_path):
    from oracle_data.synthetic import write_synthetic_oracle
    from predictor import CertifiedRouter
    from predictor.data import as_oracle_set
    from predictor.reference import ReferenceRouter

    data = as_oracle_set(write_synthetic_oracle(tmp_path / "oracle", num_images=20, noise=0.0, seed=2))
    reference = ReferenceRouter(grouping="family").fit(data)
    assert reference.predict_proba(data).max() == 1.0  # "background" is right at every scale: a rate of exactly 1
    router = CertifiedRouter(reference, max_drop=0.001, delta=0.1).fit(data)
    assert router.certificate_.threshold is None and router.threshold_ == 1.0
    assert (router.predict(data) == 576).all()  # threshold 1 means the largest scale, whatever is wrapped
