"""Budget routing: a knapsack on the predictor's probabilities under a mean visual-token budget, in the equal-budget
table and as an AdaptiveM3 mode; it never spends more than the budget."""

import numpy as np
import pytest

from predictor.budget import budget_routing
from predictor.risk_control import Certificate
from routing_study.evaluation import budget_rows, evaluate_routing

from .routing_cases import SCALES, KnownRouter, oracle_table


@pytest.mark.parametrize("seed", range(20))
def test_budget_routing_never_spends_more_than_the_budget(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    proba = rng.uniform(size=(n, 5))
    costs = np.tile(SCALES, (n, 1)) + (rng.integers(0, 2, n)[:, None] * np.array([0, 1, 1, 1, 1]))  # some probe
    budget = float(rng.uniform(1, 600))
    batch = int(rng.integers(1, 10))
    chosen = budget_routing(proba, costs, SCALES, budget, batch)
    if chosen is None:
        assert any(
            costs[s : s + batch].min(1).sum() > np.floor(budget * len(costs[s : s + batch])) for s in range(0, n, batch)
        )
        return
    spent = costs[np.arange(n), np.searchsorted(SCALES, chosen)]
    for start in range(0, n, batch):
        assert spent[start : start + batch].sum() <= budget * len(spent[start : start + batch]) + 1e-9
    assert budget_routing(proba, costs, SCALES, 0.5) is None  # below every query's cheapest scale


def test_the_knapsack_is_at_least_the_threshold_sweep_at_equal_budget_on_a_hand_made_case():
    """Queries of three kinds: right from 1 token, right from 36, right only at 576. With probabilities that know
    this, the threshold rule can only move a whole kind at a time (or mix two such points at random); the knapsack
    buys each query what it needs while the budget lasts, easy ones first. A deterministic knapsack can leave part
    of the budget unused, at most one query's worth per batch, so over a batch of n queries it is within 1 / n of
    any random mix, and here above it."""
    kinds = np.tile([0] * 6 + [2] * 3 + [4] * 3, 100)
    correct = np.arange(5)[None, :] >= kinds[:, None]
    proba = np.where(correct, 0.95, 0.05)
    evaluation = evaluate_routing(oracle_table(correct), {"known": KnownRouter(proba)})
    shares = (0.02, 0.05, 0.1, 0.25, 0.5)
    rows = {row["router"]: row for row in budget_rows(evaluation, shares=shares, knapsack_batch=None)}
    sweep, knapsack = rows["known"], rows["known (knapsack)"]
    for share in shares:
        key = f"accuracy_at_{share:g}"
        assert knapsack[f"tokens_at_{share:g}"] <= share * 576 + 1e-9  # never over the budget
        assert knapsack[key] >= sweep[key] - 1 / len(kinds), share
        assert knapsack[key] >= rows["random"][key] - 1e-12
    # 10 % of 576 = 57.6 tokens a query, 69120 in all: easy at 1, medium at 36 and hard at 1 take 11700, and the
    # rest buys 99 of the 300 hard ones 576 (575 more each); the sweep mixes "all at 1" (0.5) and "all they need"
    assert knapsack["accuracy_at_0.1"] == pytest.approx((600 + 300 + 99) / 1200)
    assert sweep["accuracy_at_0.1"] == pytest.approx(0.5 + 0.5 * (57.6 - 1) / 152.5)
    assert knapsack["accuracy_at_0.25"] > sweep["accuracy_at_0.25"] + 0.01
    # in batches of 12 the unused remainder costs at most one query per batch
    batched = {row["router"]: row for row in budget_rows(evaluation, shares=shares, knapsack_batch=12)}
    assert batched["known (knapsack)"]["accuracy_at_0.25"] >= sweep["accuracy_at_0.25"] - 1 / 12


@pytest.fixture(scope="module")
def adaptive(tmp_path_factory):
    from oracle_data.synthetic import write_synthetic_oracle
    from predictor import MLPScalePredictor

    from .test_adaptive import make_adaptive

    oracle = write_synthetic_oracle(tmp_path_factory.mktemp("o"), num_images=40, embedding_dim=32)
    return make_adaptive("llava", MLPScalePredictor(hidden_sizes=(16,), max_epochs=5, use_image=True).fit(oracle))


def test_adaptive_m3_routes_a_batch_under_a_mean_budget(adaptive):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(6)]
    questions = [
        "what color is the background ?",
        "what color is in the black frame ?",
        "what color is in the white frame ?",
    ]
    questions = questions * 2
    for budget in (1, 20, 100, 576):
        answers = adaptive.generate(images, questions, budget=budget, max_new_tokens=2)
        assert np.mean([a.processed_tokens for a in answers]) <= budget
    assert {a.scale for a in adaptive.generate(images, questions, budget=1, max_new_tokens=2)} == {1}
    assert {a.scale for a in adaptive.generate(images, questions, budget=576, max_new_tokens=2)} == {576}
    with pytest.raises(ValueError, match="below the cheapest routing"):
        adaptive.generate(images, questions, budget=0.5)
    with pytest.raises(ValueError, match="do not combine"):
        adaptive.generate(images, questions, budget=50, threshold=0.5)


def test_a_certificate_is_visible_on_adaptive_m3_and_survives_saving(adaptive, tmp_path):
    from adaptive import AdaptiveM3
    from oracle_data.synthetic import write_synthetic_oracle
    from predictor import CertifiedRouter

    assert adaptive.certificate is None
    calibration = write_synthetic_oracle(tmp_path / "cal", num_images=100, embedding_dim=32, seed=7)
    router = CertifiedRouter(adaptive.predictor, max_drop=0.1, delta=0.2).fit(calibration)
    certified = AdaptiveM3(adaptive.model, adaptive.processor, router)
    assert isinstance(certified.certificate, Certificate) and certified.certificate == router.certificate_
    certified.save_pretrained(tmp_path / "saved")
    again = AdaptiveM3.from_pretrained(tmp_path / "saved")
    assert again.certificate == router.certificate_ and again.predictor.threshold_ == router.threshold_
    again.save_pretrained(tmp_path / "saved-again")  # a loaded predictor saved again keeps its certificate
    assert AdaptiveM3.from_pretrained(tmp_path / "saved-again").certificate == router.certificate_
