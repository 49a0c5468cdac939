"""Answer scoring: one function per benchmark metric, all ``(prediction, answers, choices) -> score``.

Every metric returns a score in [0, 1]; a sample counts as answered correctly at a scale when its score is at
least :data:`CORRECT_THRESHOLD` (0.5). Exact match, relaxed accuracy, multiple choice and POPE only give 0 or 1;
VQA accuracy (0, 1/3, 2/3, 1 with 10 answers) and ANLS (0 or [0.5, 1]) are soft, so the threshold matters there.
Definitions follow lmms-eval / LLaVA's evaluation code (see each function). ``scripts/evaluate.py``, the oracle
and every report score answers here, so their accuracies agree.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

CORRECT_THRESHOLD = 0.5
OVERALL = "overall"
Metric = Callable[[str, Sequence[str], "Sequence[str] | None"], float]


def is_correct(score: float) -> bool:
    """Whether a metric score counts as a correct answer (``score >= 0.5``)."""
    return score >= CORRECT_THRESHOLD


# ----------------------------------------------------------------------------------------------------
# exact match (the granularity benchmark's metric; short free-form answers)

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = re.compile(r"(?!(?<=\d)[.,](?=\d))[^\w\s]|_")  # keeps the "." / "," inside numbers
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation (not a decimal point) and articles, number words -> digits, collapse spaces.

    ``"The Red Circle."`` -> ``"red circle"``; ``"Three"`` -> ``"3"``; ``"1,000"`` -> ``"1000"``.
    """
    text = _THOUSANDS.sub("", text.lower())
    text = _PUNCTUATION.sub(" ", text)
    words = [_NUMBER_WORDS.get(word, word) for word in text.split() if word not in _ARTICLES]
    return " ".join(words)


def _exact_match_one(prediction: str, answer: str) -> float:
    prediction, answer = normalize_answer(prediction), normalize_answer(answer)
    if prediction == answer:
        return 1.0
    words = prediction.split()
    return float(bool(words) and len(answer.split()) == 1 and words[0] == answer)


def exact_match(prediction: str, answers: Sequence[str], choices: Sequence[str] | None = None) -> float:
    """1.0 if the normalized prediction (:func:`normalize_answer`) equals a normalized answer, or (free-form
    generation) its first word equals a one-word answer; else 0.0."""
    return max((_exact_match_one(prediction, answer) for answer in answers), default=0.0)


def majority_baseline(families: Sequence[str | None], answers: Sequence[str]) -> dict[str, float]:
    """Accuracy of always answering a family's most common (normalized) answer: per family, sorted, then
    ``"overall"`` (the families' values weighted by their sizes). A family of None is counted as ``"(none)"``."""
    if len(families) != len(answers):
        raise ValueError(f"{len(families)} families for {len(answers)} answers")
    counts: dict[str, Counter] = {}
    for family, answer in zip(families, answers):
        counts.setdefault("(none)" if family is None else family, Counter())[normalize_answer(answer)] += 1
    baseline = {family: c.most_common(1)[0][1] / c.total() for family, c in sorted(counts.items())}
    baseline[OVERALL] = sum(c.most_common(1)[0][1] for c in counts.values()) / max(1, len(answers))
    return baseline


# ----------------------------------------------------------------------------------------------------
# VQA accuracy (VQAv2 / TextVQA): the EvalAI answer processor, then leave-one-out min(1, matches / 3)

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_VQA_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                    "?", "!"]  # fmt: skip
_PERIOD_STRIP = re.compile(r"\.(?!\d)")  # what the official regex does in effect: drop "." unless a digit follows
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def vqa_normalize(text: str) -> str:
    """The EvalAI / official VQA answer processor: punctuation, periods, number words, articles, contractions.

    ``"Two dogs."`` -> ``"2 dogs"``; ``"dont"`` -> ``"don't"``; ``"1,000"`` -> ``"1000"``.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for mark in _VQA_PUNCTUATION:
        if f"{mark} " in text or f" {mark}" in text or _COMMA_STRIP.search(text):
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    out = _PERIOD_STRIP.sub("", out)
    words = [_NUMBER_WORDS.get(word, word) for word in out.lower().split()]
    words = [_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str], choices: Sequence[str] | None = None) -> float:
    """VQAv2 / TextVQA accuracy: the mean, over leaving each of the human answers out, of
    ``min(1, #other answers equal to the prediction / 3)``, after :func:`vqa_normalize`.

    With the usual 10 answers this is 0, 0.3, 0.6, 0.9 or 1.0 for 0, 1, 2, 3 or 4+ matching annotators. A single
    reference answer has no leave-one-out subset; it is scored as a normalized exact match.
    """
    if not answers:
        return 0.0
    predicted = vqa_normalize(prediction)
    normalized = [vqa_normalize(answer) for answer in answers]
    if len(normalized) == 1:
        return float(predicted == normalized[0])
    matches = sum(answer == predicted for answer in normalized)
    # leaving out a matching answer leaves matches - 1 others; leaving out another one leaves matches
    total = sum(min(1.0, (matches - (answer == predicted)) / 3) for answer in normalized)
    return total / len(normalized)


# ----------------------------------------------------------------------------------------------------
# ANLS (DocVQA, InfographicVQA)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def anls(prediction: str, answers: Sequence[str], choices: Sequence[str] | None = None) -> float:
    """Average Normalized Levenshtein Similarity of one answer: lowercase and collapse whitespace, take
    ``1 - distance / max(len)`` to the closest reference answer, and 0 if that is below 0.5."""

    def clean(text: str) -> str:
        return " ".join(text.lower().split())

    predicted = clean(prediction)
    best = 0.0
    for answer in answers:
        reference = clean(answer)
        length = max(len(reference), len(predicted))
        similarity = 1.0 if length == 0 else 1.0 - levenshtein(reference, predicted) / length
        best = max(best, similarity)
    return best if best >= 0.5 else 0.0


# ----------------------------------------------------------------------------------------------------
# ChartQA relaxed accuracy


def _to_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, answers: Sequence[str], choices: Sequence[str] | None = None) -> float:
    """ChartQA: a numeric answer is right within 5 % relative error (``"12%"`` reads as 0.12), anything else
    needs a case-insensitive exact match. A reference of 0 (no relative error) falls back to the string rule."""
    predicted = prediction.strip()
    predicted_value = _to_float(predicted)
    for answer in answers:
        reference = answer.strip()
        reference_value = _to_float(reference)
        if predicted_value is not None and reference_value:
            if abs(predicted_value - reference_value) / abs(reference_value) <= 0.05:
                return 1.0
        elif predicted.lower() == reference.lower():
            return 1.0
    return 0.0


# ----------------------------------------------------------------------------------------------------
# multiple choice (MMBench, ScienceQA, SEED-Bench ...)

LETTERS = string.ascii_uppercase
_ANSWER_IS = re.compile(r"(?i:\banswer\s*(?:is|:)\s*:?\s*)\(?([A-Z])(?![\w'])")  # the letter itself is upper case
_LEADING_LETTER = re.compile(r"^\(?([A-Z])(?:[.):,]|$)")


def extract_choice(prediction: str, choices: Sequence[str] | None = None) -> str | None:
    """The option letter a free-form answer picks, or None.

    Tried in order: an upper-case letter alone or leading with punctuation (``"B"``, ``"B."``, ``"(B)"``,
    ``"B) cat"``; not ``"A cat"``), ``"The answer is B"`` / ``"Answer: (B)"`` anywhere, then the text of exactly
    one option (after :func:`normalize_answer`). With ``choices`` given, only their letters (A, B,
    ... in order) count.
    """
    text = prediction.strip()
    valid = set(LETTERS[: len(choices)]) if choices else set(LETTERS)
    for pattern in (_LEADING_LETTER, _ANSWER_IS):
        match = pattern.search(text)
        if match and match.group(1) in valid:
            return match.group(1)
    if choices:
        normalized = normalize_answer(text)
        hits = [LETTERS[i] for i, choice in enumerate(choices) if normalize_answer(choice) == normalized]
        if len(hits) == 1:
            return hits[0]
    return None


def answer_letter(answer: str, choices: Sequence[str] | None) -> str:
    """The letter of a reference answer: the answer itself when it is one of the options' letters, else the letter
    of the option whose text it is."""
    stripped = answer.strip().strip("().").strip()
    valid = LETTERS[: len(choices)] if choices else LETTERS
    if len(stripped) == 1 and stripped.upper() in valid:
        return stripped.upper()
    if choices:
        for index, choice in enumerate(choices):
            if normalize_answer(choice) == normalize_answer(answer):
                return LETTERS[index]
    raise ValueError(f"multiple-choice answer {answer!r} is neither an option letter nor one of the choices")


def multiple_choice(prediction: str, answers: Sequence[str], choices: Sequence[str] | None = None) -> float:
    """1.0 if the option letter extracted from the prediction (:func:`extract_choice`) is the answer's letter."""
    letter = extract_choice(prediction, choices)
    return float(letter is not None and any(letter == answer_letter(answer, choices) for answer in answers))


# ----------------------------------------------------------------------------------------------------
# POPE (object hallucination, yes/no)


def pope_answer(prediction: str) -> str:
    """LLaVA's POPE rule: keep the first sentence, drop commas; ``"no"`` if a word is no / not / No, else ``"yes"``."""
    text = prediction.split(".")[0].replace(",", "")
    words = text.split()
    return "no" if any(word in ("No", "not", "no") for word in words) else "yes"


def pope(prediction: str, answers: Sequence[str], choices: Sequence[str] | None = None) -> float:
    """1.0 if :func:`pope_answer` of the prediction equals the (yes/no) reference answer."""
    return float(any(pope_answer(prediction) == answer.strip().lower() for answer in answers))


def pope_summary(predictions: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """POPE's aggregate numbers, "yes" being the positive class: accuracy, precision, recall, F1, yes-ratio."""
    predicted = [pope_answer(prediction) == "yes" for prediction in predictions]
    truth = [answer.strip().lower() == "yes" for answer in answers]
    tp = sum(p and t for p, t in zip(predicted, truth))
    fp = sum(p and not t for p, t in zip(predicted, truth))
    fn = sum(not p and t for p, t in zip(predicted, truth))
    n = len(truth)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": sum(p == t for p, t in zip(predicted, truth)) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": sum(predicted) / n if n else 0.0,
    }


METRICS: dict[str, Metric] = {
    "exact_match": exact_match,
    "vqa_accuracy": vqa_accuracy,
    "anls": anls,
    "relaxed_accuracy": relaxed_accuracy,
    "multiple_choice": multiple_choice,
    "pope": pope,
}


def get_metric(name: str) -> Metric:
    """The metric called ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}") from None


def score(metric: str, prediction: str, answers: Sequence[str], choices: Sequence[str] | None = None) -> float:
    """Score one prediction under the metric called ``metric``."""
    return float(get_metric(metric)(prediction, answers, choices))
