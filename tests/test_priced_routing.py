"""The priced rule (scale = argmax P(correct) - price * tokens / tokens_largest): the pure function, its monotonicity,
the price chosen for a budget or certified by Learn-then-Test, and the saved router that routes by it."""

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pytest

from m3.files import DamagedFileError
from oracle_data.synthetic import write_synthetic_oracle
from predictor import (
    CalibratedRouter,
    CertifiedRouter,
    LGBMScalePredictor,
    as_oracle_set,
    load_predictor,
    saved_certificate,
    split_oracle,
)
from predictor.budget import budget_routing
from predictor.calibration import certificate_at, certified_point, operating_point_of
from predictor.costs import routing_costs
from predictor.risk_control import Certificate
from predictor.routing_metrics import routing_point
from predictor.thresholds import PRICE_GRID, candidate_prices, route_by_price, route_by_rule, route_by_threshold

SCALES = np.array([1, 9, 36, 144, 576])


def test_the_priced_rule_on_hand_made_rows():
    proba = np.array(
        [
            [0.10, 0.20, 0.90, 0.95, 0.96],  # 36 answers; the last two scales add little
            [0.10, 0.10, 0.10, 0.10, 0.10],  # no scale answers: every price keeps it at 1 token
            [0.50, 0.50, 0.60, 0.70, 1.00],
        ]
    )
    assert route_by_price(proba, SCALES, 0.0).tolist() == [576, 1, 576]  # price 0: the most probable scale
    assert route_by_price(proba, SCALES, 0.1).tolist() == [144, 1, 576]
    assert route_by_price(proba, SCALES, 1.0).tolist() == [36, 1, 36]
    assert route_by_price(proba, SCALES, 100.0).tolist() == [1, 1, 1]  # a high price: the smallest scale
    # the threshold rule sends the unanswerable row to 576 at any threshold above 0.1
    assert route_by_threshold(proba, SCALES, 0.5).tolist() == [36, 576, 1]
    # an exact tie (gain per token equal to the price) goes to the smaller scale
    tie = np.array([[0.2, 0.2, 0.2, 0.2, 0.2 + 0.5 * (576 - 1) / 576]])
    assert route_by_price(tie, SCALES, 0.5).tolist() == [1] and route_by_price(tie, SCALES, 0.499).tolist() == [576]
    # allowed scales only; each row's tokens divided by its own largest scale's
    allowed = np.ones_like(proba, bool)
    allowed[:, -2:] = False
    assert route_by_price(proba, SCALES, 0.0, allowed=allowed).tolist() == [36, 1, 36]
    tokens = np.array([[1, 9, 36, 144, 576], [2, 18, 72, 288, 1152], [1, 2, 3, 4, 5]])
    assert route_by_price(proba, SCALES, 1.0, tokens=tokens).tolist() == [36, 1, 1]
    assert route_by_rule(proba, SCALES, "price", 1.0).tolist() == [36, 1, 36]
    for bad, message in ((-0.1, "price"), (float("nan"), "price"), (float("inf"), "price")):
        with pytest.raises(ValueError, match=message):
            route_by_price(proba, SCALES, bad)
    with pytest.raises(ValueError, match="tokens must be positive"):
        route_by_price(proba, SCALES, 0.1, tokens=[0, 9, 36, 144, 576])
    # a probe at 9 tokens: answering at 9 reuses the probe, so 1 token costs more than 9 (10 against 9); a tie in
    # value goes to the fewer tokens
    probe = [10, 9, 45, 153, 585]
    assert route_by_price(np.array([[0.5, 0.5, 0.5, 0.5, 0.5]]), SCALES, 1.0, tokens=probe).tolist() == [9]
    assert route_by_price(np.array([[0.9, 0.5, 0.5, 0.5, 0.5]]), SCALES, 1.0, tokens=probe).tolist() == [1]
    with pytest.raises(ValueError, match="unknown routing rule"):
        route_by_rule(proba, SCALES, "cost", 1.0)


@pytest.mark.parametrize("seed", range(4))
def test_a_higher_price_never_picks_more_tokens(seed):
    """Monotone in the price at every candidate, the breakpoints included (ties there go to the smaller scale), with
    coarse probabilities (many exact ties) and per-row tokens (a probe's costs)."""
    rng = np.random.default_rng(seed)
    proba = np.round(rng.random((300, 5)), 1 if seed % 2 else 6)
    tokens = routing_costs(np.tile(SCALES.astype(float), (300, 1)), SCALES, (None, None, 1, 9)[seed])
    prices = candidate_prices(proba, tokens)
    chosen = np.stack([np.searchsorted(SCALES, route_by_price(proba, SCALES, p, tokens)) for p in prices])
    spent = np.take_along_axis(np.broadcast_to(tokens, proba.shape), chosen.T, axis=1).T
    assert (np.diff(spent, axis=0) <= 0).all()  # never more tokens (with a probe at 9, 1 token costs more than 9)
    if seed < 3:  # costs that grow with the scale: never a larger scale either
        assert (np.diff(chosen, axis=0) <= 0).all()
    assert (chosen[0] == proba.argmax(axis=1)).mean() > 0.9  # price 0: the most probable (ties to the smaller)
    cheapest = np.broadcast_to(tokens, proba.shape).argmin(axis=1)
    assert (chosen[-1] == cheapest).all()  # the grid ends where every query takes the cheapest scale


def test_the_priced_routing_is_the_best_trade_of_accuracy_for_tokens():
    """Per query it maximises P - price * tokens, so no routing spending as many tokens or fewer expects more correct
    answers: the priced rule lies on the batch knapsack's frontier (the knapsack at its spend is no better, up to
    one query's value)."""
    rng = np.random.default_rng(0)
    proba = np.sort(rng.random((200, 5)), axis=1)
    cost = np.tile(SCALES.astype(float), (200, 1))
    for price in (0.05, 0.3, 1.0):
        routed = np.searchsorted(SCALES, route_by_price(proba, SCALES, price))
        value, spent = proba[np.arange(200), routed].sum(), cost[np.arange(200), routed].sum()
        for _ in range(200):
            other = rng.integers(0, 5, 200)
            other_value, other_spent = proba[np.arange(200), other].sum(), cost[np.arange(200), other].sum()
            assert other_value - price * other_spent / 576 <= value - price * spent / 576 + 1e-9
        knapsack = np.searchsorted(SCALES, budget_routing(proba, cost, SCALES, spent / 200))
        assert proba[np.arange(200), knapsack].sum() <= value + 1.0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    oracle = as_oracle_set(write_synthetic_oracle(tmp_path_factory.mktemp("oracle") / "syn", num_images=60, seed=3))
    return split_oracle(oracle, 0.3, seed=0)


@pytest.fixture(scope="module")
def predictor(data):
    return LGBMScalePredictor(n_estimators=40).fit(data[0])


def test_a_price_fitted_to_a_budget_is_the_smallest_price_within_it(predictor, data):
    calibration = data[1]
    proba, tokens = predictor.predict_proba(calibration), calibration.tokens()
    values = calibration.correct().astype(float)
    for budget in (20.0, 60.0, 150.0):
        router = CalibratedRouter(predictor, rule="price", budget=budget).fit(calibration)
        assert router.rule_ == "price" and router.threshold_ is None and router.tokens_ <= budget + 1e-9
        prices = candidate_prices(proba, tokens)
        cheaper = prices[prices < router.price_]  # every smaller candidate price spends more than the budget
        for price in cheaper[-5:]:
            spent, _ = routing_point(route_by_price(proba, SCALES, price, tokens), values, tokens, SCALES)
            assert spent > budget
        # no label is used: flipping every answer leaves the price as it was
        again = CalibratedRouter(predictor, rule="price", budget=budget).fit(flipped(calibration))
        assert again.price_ == router.price_ and again.accuracy_ != router.accuracy_
    threshold = CalibratedRouter(predictor, budget=60.0).fit(calibration)  # the threshold rule fits a budget too
    assert threshold.rule_ == "threshold" and threshold.tokens_ <= 60.0 and threshold.price_ is None
    with pytest.raises(ValueError, match="below the cheapest routing"):
        CalibratedRouter(predictor, rule="price", budget=0.5).fit(calibration)
    with pytest.raises(ValueError, match="unknown routing rule"):
        CalibratedRouter(predictor, rule="cost").fit(calibration)


def flipped(data):
    """The oracle with every answer's correctness (and score) flipped: other labels, the same queries."""
    table = data.table
    for scale in data.scales:
        for name in (f"correct_{scale}", f"score_{scale}"):
            index = table.schema.get_field_index(name)
            column = data.column(name)
            table = table.set_column(index, name, pa.array(1 - column if name[0] == "s" else ~column))
    return dataclasses.replace(data, table=table)


def population(seed: int = 0, n: int = 4000):
    """Queries that need a scale (0..4), right at or above it with 93 %, below with 25 % (gains happen); a tenth that
    no scale answers (7 %); the score is the true probability plus noise."""
    rng = np.random.default_rng(seed)
    need = rng.choice(5, size=n, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    p_right = np.where(np.arange(5)[None, :] >= need[:, None], 0.93, 0.25)
    p_right[rng.random(n) < 0.1] = 0.07
    correct = rng.random((n, 5)) < p_right
    proba = np.clip(p_right + rng.normal(0, 0.15, (n, 5)), 0, 1)
    return correct, proba


def test_certified_prices_keep_their_promise_on_fresh_data():
    """Validity of Learn-then-Test over the ordered prices (CertifiedRouter.choose, the code that certifies): over
    100 resplits (n = 400), the share whose test drop below always-576 exceeds eps is at most delta plus slack."""
    correct, proba = population()
    tokens = np.tile(SCALES.astype(float), (len(correct), 1))
    epsilon, delta, resplits, exceeded, used = 0.05, 0.1, 100, 0, []
    router = CertifiedRouter(predictor=None, max_drop=epsilon, delta=delta, rule="price")
    for seed in range(resplits):
        order = np.random.default_rng(seed + 1).permutation(len(correct))
        cal, test = order[:400], order[400:]
        rule, value = router.choose(proba[cal], correct[cal].astype(float), tokens[cal], SCALES)
        assert router.certificate_.rule == "price" and (rule, value) == certified_point(router.certificate_)
        chosen = np.searchsorted(SCALES, route_by_rule(proba[test], SCALES, rule, value, tokens[test]))
        exceeded += correct[test, 4].mean() - correct[test, chosen].mean() > epsilon
        used.append(SCALES[chosen].mean())
    assert exceeded / resplits <= delta + 3 * np.sqrt(delta * (1 - delta) / resplits)
    assert np.mean(used) < 200  # and it certifies something well below 576


def test_a_certified_price_saves_loads_and_routes_the_same(predictor, data, tmp_path):
    calibration = data[1]
    router = CertifiedRouter(predictor, max_drop=0.05, delta=0.2, rule="price").fit(calibration)
    certificate = router.certificate_
    assert router.rule_ == "price" and router.price_ == certificate.threshold and certificate.rule == "price"
    router.save_pretrained(tmp_path / "priced")
    config = json.loads((tmp_path / "priced" / "predictor.json").read_text())
    assert config["rule"] == "price" and config["price"] == router.price_ and "pickle" not in str(config)
    assert config["calibration"]["router"] == "CertifiedRouter" and config["calibration"]["value"] == router.price_
    loaded = load_predictor(tmp_path / "priced")
    assert operating_point_of(loaded) == ("price", router.price_) and saved_certificate(loaded) == certificate
    np.testing.assert_array_equal(loaded.predict(calibration), router.predict(calibration))
    np.testing.assert_array_equal(loaded.predict(calibration, price=0.3), router.predict(calibration, price=0.3))
    np.testing.assert_array_equal(loaded.predict(calibration, 0.5), predictor.predict(calibration, 0.5))
    loaded.save_pretrained(tmp_path / "again")  # as AdaptiveM3.save_pretrained does: the rule is kept
    assert operating_point_of(load_predictor(tmp_path / "again")) == ("price", router.price_)
    # the certificate holds at its rule and price only
    assert certificate_at(certificate, router.price_, "price") == certificate
    assert certificate_at(certificate, router.price_, "threshold") is None
    assert certificate_at(certificate, router.price_ * 1.1, "price") is None
    with pytest.raises(ValueError, match="not both"):
        router.predict(calibration, threshold=0.5, price=0.1)
    # an old folder (threshold only, no rule) still loads as the threshold rule
    predictor.save_pretrained(tmp_path / "old")
    old_path = tmp_path / "old" / "predictor.json"
    old = json.loads(old_path.read_text())
    for key in ("rule", "price"):
        old.pop(key)
    old_path.write_text(json.dumps(old))
    assert operating_point_of(load_predictor(tmp_path / "old")) == ("threshold", 0.5)
    old_path.write_text(json.dumps({**old, "rule": "price", "price": -1}))
    with pytest.raises(DamagedFileError, match="price"):
        load_predictor(tmp_path / "old")
    old_path.write_text(json.dumps({**old, "rule": "cost"}))
    with pytest.raises(DamagedFileError, match="rule"):
        load_predictor(tmp_path / "old")


def test_a_price_certificate_saved_before_rules_reads_as_a_threshold_and_nothing_certified_is_the_largest():
    old = Certificate(0.02, 0.1, 100, 0.9, "binomial", 0.05, 0.01, 120.0, 30)
    assert Certificate.from_dict({k: v for k, v in old.to_dict().items() if k != "rule"}) == old
    assert certified_point(old) == ("threshold", 0.9)
    nothing = Certificate(0.02, 0.1, 100, None, "binomial", None, None, None, 1, rule="price")
    assert certified_point(nothing) == ("threshold", 1.0) and certificate_at(nothing, 1.0) == nothing
    rng = np.random.default_rng(0)
    correct = rng.random((30, 5)) < 0.5  # too few queries to certify anything
    router = CertifiedRouter(None, max_drop=0.02, delta=0.1, rule="price")
    assert router.choose(rng.random((30, 5)), correct.astype(float), np.tile(SCALES, (30, 1)), SCALES) == (
        "threshold",
        1.0,
    )
    assert router.certificate_.threshold is None and len(PRICE_GRID) > 500


def test_the_deployed_router_is_the_cheapest_certified_one_on_calibration_data():
    """The quickstart deploys the learned router and rule whose CERTIFIED operating point spends the fewest tokens on
    its calibration images: no test label takes part. Ties go to the smaller calibration drop; a router nothing could
    be certified for (it answers at the largest scale) only when nothing else is left."""
    from types import SimpleNamespace

    from predictor.risk_control import Certificate
    from predictor.training import cheapest_certified

    def certified(value, tokens, drop, rule="threshold"):
        certificate = Certificate(0.02, 0.1, 600, value, "binomial", 0.01, drop, tokens, 3, rule=rule)
        return SimpleNamespace(certificate_=certificate, rule=rule)

    routers = {
        "mlp": [certified(0.8, 200.0, 0.01), certified(0.02, 150.0, 0.015, "price")],
        "lgbm": [certified(0.7, 150.0, 0.005), certified(None, None, None, "price")],
        "other": [certified(0.9, 10.0, 0.0)],
    }
    name, router = cheapest_certified(routers, ["mlp", "lgbm"])  # "other" is not a candidate
    assert (name, router.rule, router.certificate_.calibration_tokens) == ("lgbm", "threshold", 150.0)
    name, router = cheapest_certified({"lgbm": routers["lgbm"][1:]}, ["lgbm"])
    assert router.certificate_.threshold is None  # the only one left
    with pytest.raises(ValueError, match="none of"):
        cheapest_certified(routers, ["knn"])
