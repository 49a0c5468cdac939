import json

import numpy as np
import pyarrow as pa
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from predictor.reference import (
    ReferenceRouter,
    compare_reference_routers,
    sample_attributes,
    threshold_sweep,
    tokens_to_match,
)

SCALES = [1, 9, 36, 144, 576]
QUESTIONS = {"background": "what color is the background ?", "color": "what color is the square ?"}


def oracle_table(tmp_path, n: int = 200, seed: int = 0, name: str = "data.json") -> pa.Table:
    """An oracle where ``color`` questions need 9 tokens for a big square (side >= 16) and 576 for a small one,
    and ``background`` questions need 1 token; the sides live only in the data file, as in a granularity split."""
    rng = np.random.default_rng(seed)
    rows, records = [], []
    for i in range(n):
        family = ("background", "color")[i % 2]
        side = int(rng.integers(4, 29))
        need = 0 if family == "background" else (1 if side >= 16 else 4)
        correct = [j >= need for j in range(len(SCALES))]
        sample_id = f"s{i}"
        records.append({"id": sample_id, "attributes": {"side": side, "big_size": 30}})
        row = {"sample_id": sample_id, "image_id": f"im{i // 2}", "image": f"im{i // 2}.png", "family": family}
        row["question"] = QUESTIONS[family]
        for scale, ok in zip(SCALES, correct):
            row[f"correct_{scale}"], row[f"tokens_{scale}"] = ok, scale
        rows.append(row)
    (tmp_path / name).write_text(json.dumps(records))
    manifest = {"model": {"scales": SCALES}, "data": {"path": str(tmp_path / name)}}
    table = pa.Table.from_pylist(rows)
    return table.replace_schema_metadata({b"manifest": json.dumps(manifest).encode()})


ATTRIBUTES = {"color": ("side",), "background": ()}


def test_an_unfitted_router_and_bad_settings_are_refused(tmp_path):
    table = oracle_table(tmp_path)
    with pytest.raises(NotFittedError, match="not fitted"):
        ReferenceRouter().predict_proba(table)
    with pytest.raises(ValueError, match="unknown grouping"):
        ReferenceRouter(grouping="pixels").fit(table)
    with pytest.raises(ValueError, match="n_bins and min_count"):
        ReferenceRouter(n_bins=0).fit(table)
    with pytest.raises(ValueError, match="unknown estimator"):
        ReferenceRouter(grouping="attribute", estimator="forest").fit(table)
    router = ReferenceRouter().fit(table)
    other = table.drop_columns(["correct_576", "tokens_576"]).replace_schema_metadata(None)
    with pytest.raises(ValueError, match="scales"):
        router.predict_proba(other)


def test_question_only_router_learns_the_family_rate_and_falls_back_to_the_overall_rate(tmp_path):
    table = oracle_table(tmp_path)
    router = ReferenceRouter(grouping="family").fit(table)
    assert clone(router).get_params() == {**router.get_params()} and not hasattr(clone(router), "group_rates_")
    proba = router.predict_proba(table)
    families = np.array(table.column("family").to_pylist())
    correct = np.stack([np.array(table.column(f"correct_{s}").to_pylist()) for s in SCALES], 1).astype(float)
    for family in ("background", "color"):
        rows = families == family
        np.testing.assert_allclose(proba[rows], np.tile(correct[rows].mean(0), (rows.sum(), 1)))
    np.testing.assert_array_equal(proba[families == "background"][0], [1, 1, 1, 1, 1])
    unseen = table.set_column(table.schema.get_field_index("family"), "family", pa.array(["new"] * len(table)))
    np.testing.assert_allclose(router.predict_proba(unseen), np.tile(correct.mean(0), (len(table), 1)))
    # one question per family: grouping by question text gives the same estimates
    np.testing.assert_allclose(ReferenceRouter(grouping="question").fit(table).predict_proba(table), proba)
    # the colour family as a whole reaches 0.9 only at 576 tokens
    chosen = router.predict(table, threshold=0.9)
    assert set(chosen[families == "background"]) == {1} and set(chosen[families == "color"]) == {576}


def test_attribute_router_routes_by_the_joined_attribute(tmp_path):
    table = oracle_table(tmp_path)
    router = ReferenceRouter(grouping="attribute", attributes=ATTRIBUTES, estimator="buckets", n_bins=4).fit(table)
    sides = np.array([a["side"] for a in sample_attributes(table)])
    families = np.array(table.column("family").to_pylist())
    assert set(router.bin_edges_) == {"background", "color"} and len(router.bin_edges_["color"]["side"]) == 3
    chosen = router.predict(table, threshold=0.99)
    assert set(chosen[families == "background"]) == {1}
    colour = families == "color"
    # buckets wholly above or below the 16 px step route to 9 or 576; the mixed bucket goes to 576
    assert set(chosen[colour & (sides >= 16)]) <= {9, 576} and set(chosen[colour & (sides < 16)]) == {576}
    assert (chosen[colour & (sides >= 22)] == 9).all()
    # a router built without explicit attributes uses the granularity benchmark's names, absent here
    renamed = table.set_column(table.schema.get_field_index("family"), "family", pa.array(["white_frame"] * len(table)))
    with pytest.raises(KeyError, match="attribute"):
        ReferenceRouter(grouping="attribute").fit(renamed)


def test_boosted_attribute_router_learns_the_step_and_reads_text_attributes(tmp_path):
    """Trees on the attribute values find the 16 px step that quantile buckets blur, never give a larger scale a
    lower estimate, and take text attributes (colours) as categories."""
    table = oracle_table(tmp_path)
    router = ReferenceRouter(grouping="attribute", attributes=ATTRIBUTES).fit(table)
    assert router.estimator == "boosted" and set(router.boosters_) == {"color"}  # background: all right, its rate
    sides = np.array([a["side"] for a in sample_attributes(table)])
    families = np.array(table.column("family").to_pylist())
    proba = router.predict_proba(table)
    assert (np.diff(proba, axis=1) >= -1e-12).all()
    chosen = router.predict(table, threshold=0.9)
    colour = families == "color"
    assert set(chosen[families == "background"]) == {1}
    assert (chosen[colour & (sides >= 16)] == 9).all() and (chosen[colour & (sides < 16)] == 576).all()
    # a colour attribute that decides instead of the side: red squares need 576, the others 9
    records = json.loads((tmp_path / "data.json").read_text())
    for index, record in enumerate(records):
        record["attributes"]["tint"] = "red" if index % 4 == 1 else "blue"
    (tmp_path / "data.json").write_text(json.dumps(records))
    tinted = [r["attributes"]["tint"] for r in records]
    correct = {f"correct_{s}": [True] * len(table) for s in SCALES}
    for s in SCALES[:-1]:
        correct[f"correct_{s}"] = [not (f == "color" and t == "red") for f, t in zip(families, tinted)]
    recoloured = table
    for name, values in correct.items():
        recoloured = recoloured.set_column(recoloured.schema.get_field_index(name), name, pa.array(values))
    router = ReferenceRouter(grouping="attribute", attributes={"color": ("tint",)}).fit(recoloured)
    assert router.categories_["color"] == {"tint": {"blue": 0, "red": 1}}
    chosen = router.predict(recoloured, threshold=0.9)
    red = np.array(tinted) == "red"
    assert (chosen[colour & red] == 576).all() and (chosen[colour & ~red] == 1).all()


def test_sample_attributes_joins_by_sample_id_and_names_problems(tmp_path):
    table = oracle_table(tmp_path)
    attributes = sample_attributes(table)
    records = json.loads((tmp_path / "data.json").read_text())
    assert attributes == [r["attributes"] for r in records]  # rows are in the data file's order here
    reversed_table = table.take(pa.array(np.arange(len(table))[::-1]))
    assert sample_attributes(reversed_table) == attributes[::-1]
    (tmp_path / "short.json").write_text(json.dumps(records[:5]))
    with pytest.raises(ValueError, match="195 oracle sample"):
        sample_attributes(table, tmp_path / "short.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sample_attributes(table, tmp_path / "missing.json")
    with pytest.raises(ValueError, match="names no data file"):
        sample_attributes(table.replace_schema_metadata(None))


def test_sweep_and_tokens_to_match_full_accuracy(tmp_path):
    train, test = oracle_table(tmp_path, seed=0, name="train.json"), oracle_table(tmp_path, seed=1, name="test.json")
    test_set_correct = np.stack([np.array(test.column(f"correct_{s}").to_pylist()) for s in SCALES], 1)
    tokens = np.tile(np.array(SCALES, float), (len(test), 1))
    router = ReferenceRouter(grouping="family").fit(train)
    points = threshold_sweep(router.predict_proba(test), test_set_correct, tokens, SCALES)
    assert points[0]["tokens"] == 1 and points[-1]["tokens"] == 576  # threshold 0: all at 1; above 1: all at 576
    match = tokens_to_match(points, 1.0)
    assert match["interpolated"] == pytest.approx((1 + 576) / 2)  # background at 1, colour at 576
    assert match["realised"]["tokens"] == pytest.approx((1 + 576) / 2)

    results = compare_reference_routers(train, test, ("family", "attribute"), n_bins=4, attributes=ATTRIBUTES)
    assert results["full_scale_accuracy"] == 1.0
    family, attribute = results["routers"]["family"], results["routers"]["attribute"]
    assert family["interpolated"] == pytest.approx(288.5)
    # the sides tell which colour questions 9 tokens answer: the attribute router needs far fewer tokens
    assert attribute["interpolated"] < 0.75 * family["interpolated"]
