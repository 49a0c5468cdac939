import pytest

from m3.metrics import (
    CORRECT_THRESHOLD,
    METRICS,
    anls,
    answer_letter,
    exact_match,
    extract_choice,
    get_metric,
    is_correct,
    levenshtein,
    multiple_choice,
    pope,
    pope_answer,
    pope_summary,
    relaxed_accuracy,
    score,
    vqa_accuracy,
    vqa_normalize,
)

CHOICES = ["cat", "dog", "bird", "fish"]


@pytest.mark.parametrize(
    "prediction, answers, expected",
    [
        ("The Red.", ["blue", "red"], 1.0),  # any answer, normalised
        ("red circle", ["red"], 1.0),  # first word of a free-form answer
        ("Three", ["3"], 1.0),
        ("blue", ["red"], 0.0),
        ("red", [], 0.0),
    ],
)
def test_exact_match(prediction, answers, expected):
    assert exact_match(prediction, answers) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Two dogs.", "2 dogs"),
        ("dont", "don't"),
        ("1,000", "1000"),
        ("yes!", "yes"),
        ("a red-car", "red car"),
        ("3.5", "3.5"),
        ("  The\tcat ", "cat"),
    ],
)
def test_vqa_normalize(text, expected):
    assert vqa_normalize(text) == expected


@pytest.mark.parametrize(
    "matching, expected",
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_vqa_accuracy_leave_one_out_of_ten(matching, expected):
    answers = ["yes"] * matching + ["no"] * (10 - matching)
    assert vqa_accuracy("Yes.", answers) == pytest.approx(expected)


def test_vqa_accuracy_normalises_and_handles_one_answer():
    assert vqa_accuracy("Two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("Cat.", ["cat"]) == 1.0  # one reference: plain normalised match
    assert vqa_accuracy("dog", ["cat"]) == 0.0
    assert vqa_accuracy("dog", []) == 0.0
    assert not is_correct(vqa_accuracy("yes", ["yes"] + ["no"] * 9))  # 0.3: soft credit, not correct
    assert is_correct(vqa_accuracy("yes", ["yes"] * 2 + ["no"] * 8))  # 0.6


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == levenshtein("abc", "") == 3
    assert levenshtein("same", "same") == 0


@pytest.mark.parametrize(
    "prediction, answers, expected",
    [
        ("hello world", ["Hello  World"], 1.0),  # case and whitespace do not count
        ("helo world", ["hello world"], 1 - 1 / 11),
        ("abcd", ["abxy"], 0.5),  # exactly 0.5 is kept
        ("abcde", ["abxyz"], 0.0),  # 0.4 < 0.5 -> 0
        ("abc", ["xyz", "abd"], pytest.approx(2 / 3)),  # best reference
        ("", [""], 1.0),
    ],
)
def test_anls(prediction, answers, expected):
    assert anls(prediction, answers) == pytest.approx(expected)


@pytest.mark.parametrize(
    "prediction, answers, expected",
    [
        ("12", ["12.5"], 1.0),  # 4 % off
        ("11", ["12.5"], 0.0),  # 12 % off
        (" 5.2 ", ["5"], 1.0),
        ("5.3", ["5"], 0.0),
        ("12%", ["0.12"], 1.0),  # a trailing % is divided by 100
        ("Yes", ["yes"], 1.0),  # non-numeric: case-insensitive exact match
        ("0", ["0"], 1.0),  # zero reference: no relative error, string match
        ("0.01", ["0"], 0.0),
        ("red", ["blue", "Red"], 1.0),
    ],
)
def test_relaxed_accuracy(prediction, answers, expected):
    assert relaxed_accuracy(prediction, answers) == expected


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("B", "B"),
        ("(C)", "C"),
        ("A. cat", "A"),
        ("D) fish", "D"),
        ("The answer is D.", "D"),
        ("I think the answer is (B) because", "B"),
        ("Answer: C", "C"),
        ("a dog", "B"),  # the text of exactly one option
        ("E", None),  # only 4 options
        ("I think so", None),  # "I" is a word, not an option
        ("the answer is a cat", None),  # lowercase "a" is an article, not option A
        ("", None),
    ],
)
def test_extract_choice(prediction, expected):
    assert extract_choice(prediction, CHOICES) == expected


def test_multiple_choice_score_and_answer_letters():
    assert multiple_choice("B.", ["B"], CHOICES) == 1.0
    assert multiple_choice("The answer is B", ["dog"], CHOICES) == 1.0  # reference given as option text
    assert multiple_choice("C", ["B"], CHOICES) == 0.0
    assert multiple_choice("no idea", ["B"], CHOICES) == 0.0
    assert answer_letter("(c)", CHOICES) == "C"
    with pytest.raises(ValueError, match="neither an option letter"):
        answer_letter("horse", CHOICES)


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("Yes, there is a dog.", "yes"),
        ("No.", "no"),
        ("There is not a dog in the image.", "no"),
        ("Yes. No other dog is there.", "yes"),  # first sentence only
        ("no", "no"),
        ("Nope", "yes"),  # only the words no / not / No count
    ],
)
def test_pope_answer(prediction, expected):
    assert pope_answer(prediction) == expected


def test_pope_score_and_summary():
    assert pope("No, there is none.", ["no"]) == 1.0
    assert pope("Yes", ["no"]) == 0.0
    summary = pope_summary(["yes", "yes", "Yes it is", "no"], ["yes", "yes", "no", "no"])
    assert summary == pytest.approx({"accuracy": 0.75, "precision": 2 / 3, "recall": 1.0, "f1": 0.8, "yes_ratio": 0.75})


def test_registry_and_threshold():
    assert set(METRICS) == {"exact_match", "vqa_accuracy", "anls", "relaxed_accuracy", "multiple_choice", "pope"}
    assert CORRECT_THRESHOLD == 0.5 and is_correct(0.5) and not is_correct(0.49)
    assert score("anls", "abcd", ["abxy"]) == 0.5
    with pytest.raises(ValueError, match=r"unknown metric 'bleu'; known metrics: exact_match, vqa_accuracy"):
        get_metric("bleu")
