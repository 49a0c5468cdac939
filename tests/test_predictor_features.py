import json

import numpy as np
import pytest
from PIL import Image
from sklearn.exceptions import NotFittedError

from predictor import FeatureBuilder, Queries, image_features, question_features
from predictor.features import (
    IMAGE_FEATURE_NAMES,
    QUESTION_FEATURE_NAMES,
    tfidf_rows,
    tfidf_vectorizer,
    word_ngrams,
)

QUESTIONS = [
    "what color is the background ?",
    "where is the big shape ?",
    "what shape is the big object ?",
    "what color is the small square ?",
    "How many dots are there?",
    "Is there a dog in the image?",
]


def feature(values: np.ndarray, name: str) -> float:
    return float(values[IMAGE_FEATURE_NAMES.index(name)])


def busy_image(seed: int = 0, size: int = 96) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def queries(n: int = 12, dim: int = 8, seed: int = 0) -> Queries:
    rng = np.random.default_rng(seed)
    return Queries(
        questions=[QUESTIONS[i % len(QUESTIONS)] for i in range(n)],
        embeddings=rng.normal(size=(n, dim)).astype(np.float32),
        images=[busy_image(seed + i, 32) if i % 2 else Image.new("RGB", (40, 20), (90, 20, 140)) for i in range(n)],
    )


def test_image_features_of_known_images():
    flat_grey = image_features(Image.new("RGB", (96, 96), (128, 128, 128)))
    assert flat_grey.shape == (len(IMAGE_FEATURE_NAMES),)
    for name in ("image_edge_density", "image_luma_entropy", "image_colourfulness", "image_chroma"):
        assert feature(flat_grey, name) == 0.0, name
    assert feature(flat_grey, "image_luma_contrast") == 0.0
    assert feature(flat_grey, "image_mean_luma") == pytest.approx(128 / 255)

    wide_red = image_features(Image.new("RGB", (300, 100), (230, 30, 30)))
    assert (feature(wide_red, "image_width"), feature(wide_red, "image_height")) == (300, 100)  # the original size
    assert feature(wide_red, "image_aspect_ratio") == pytest.approx(3.0)
    assert feature(wide_red, "image_log_pixels") == pytest.approx(np.log(30000))
    # uniform red: no spread, so colourfulness = 0.3 * hypot(mean Cb - 128, mean Cr - 128), chroma = |Cb| + |Cr|
    _, cb, cr = (value - 128 for value in Image.new("RGB", (1, 1), (230, 30, 30)).convert("YCbCr").getpixel((0, 0)))
    assert feature(wide_red, "image_colourfulness") == pytest.approx(0.3 * np.hypot(cb, cr) / 255)
    assert feature(wide_red, "image_chroma") == pytest.approx((abs(cb) + abs(cr)) / 255)

    busy = image_features(busy_image())
    for name in ("image_edge_density", "image_luma_entropy", "image_compressed_bytes_per_pixel"):
        assert feature(busy, name) > feature(flat_grey, name), name


def test_question_features():
    values = dict(zip(QUESTION_FEATURE_NAMES, question_features("How many dots are there?")))
    assert values["question_words"] == 5 and values["question_chars"] == 24
    assert values["question_starts_how"] == values["question_how_many"] == 1
    assert values["question_yes_no"] == values["question_other_start"] == 0
    yes_no = dict(zip(QUESTION_FEATURE_NAMES, question_features("Is there a dog in image 2?")))
    assert yes_no["question_yes_no"] == yes_no["question_has_digit"] == 1 and yes_no["question_starts_what"] == 0
    other = dict(zip(QUESTION_FEATURE_NAMES, question_features("Name the animal.")))
    assert other["question_other_start"] == 1


def test_tfidf_rows_equal_scikit_learn():
    train = QUESTIONS * 3 + ["what is written on the sign ?"]
    fitted = tfidf_vectorizer((1, 2), 50).fit(train)
    vocabulary = fitted.get_feature_names_out().tolist()
    unseen = [*QUESTIONS, "what what color color ?", "completely new words here", ""]
    index = {term: column for column, term in enumerate(vocabulary)}
    ours = tfidf_rows(unseen, index, fitted.idf_, (1, 2))
    np.testing.assert_allclose(ours, fitted.transform(unseen).toarray(), rtol=0, atol=1e-15)
    assert word_ngrams("What color?", (1, 2)) == ["what", "color", "what color"]


def test_feature_builder_is_deterministic_and_round_trips(tmp_path):
    train, other = queries(12, seed=0), queries(5, seed=100)
    first = FeatureBuilder().fit(train)
    second = FeatureBuilder().fit(train)
    assert json.dumps(first.to_dict()) == json.dumps(second.to_dict())
    features = first.transform(other)
    assert features.dtype == np.float32 and features.shape == (5, first.n_features_)
    np.testing.assert_array_equal(features, second.transform(other))
    np.testing.assert_array_equal(features, first.transform(other))  # transforming twice changes nothing
    first.save(tmp_path / "features.json")
    loaded = FeatureBuilder.load(tmp_path / "features.json")
    np.testing.assert_array_equal(loaded.transform(other), features)
    assert loaded.feature_names_ == first.feature_names_
    np.testing.assert_array_equal(loaded.std_, first.std_)
    # a features.json of format 1 (standard deviations saved as "scale") is refused by name, not with a KeyError
    old = json.loads((tmp_path / "features.json").read_text())
    old["format"], old["scale"] = 1, old.pop("std")
    with pytest.raises(ValueError, match="format 1 .*refit"):
        FeatureBuilder.from_dict(old)
    # dense blocks are standardised with the TRAINING statistics
    train_features = first.transform(train)
    dense = [i for i, name in enumerate(first.feature_names_) if not name.startswith("tfidf[")]
    np.testing.assert_allclose(train_features[:, dense].mean(axis=0), 0, atol=1e-5)


def test_feature_builder_blocks_and_errors():
    data = queries(6)
    only_question = FeatureBuilder(use_embedding=False, use_image=False).fit(Queries(data.questions))
    assert not any(n.startswith(("embedding_", "image_")) for n in only_question.feature_names_)
    assert only_question.transform(Queries(["where is the big shape ?"])).shape == (1, only_question.n_features_)
    with pytest.raises(NotFittedError, match="not fitted"):
        FeatureBuilder().transform(data)
    with pytest.raises(ValueError, match="at least one"):
        FeatureBuilder(use_embedding=False, use_question=False, use_image=False).fit(data)
    builder = FeatureBuilder().fit(data)
    wrong = Queries(data.questions, np.zeros((6, 4), np.float32), images=data.images)
    with pytest.raises(ValueError, match="8-dimensional embeddings, these queries have 4"):
        builder.transform(wrong)
    with pytest.raises(ValueError, match="neither images nor image_features"):
        builder.transform(Queries(data.questions, data.embeddings))
    with pytest.raises(ValueError, match="embeddings must have shape"):
        Queries(["a", "b"], np.zeros((3, 4)))
