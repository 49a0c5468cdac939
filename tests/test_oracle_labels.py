import numpy as np
import pytest

from oracle_data.labels import monotone_oracle, paper_oracle

SCALES = [1, 9, 36, 144, 576]
CORRECT = [
    [0, 1, 0, 1, 1],  # right at 9, wrong at 36: paper 9, monotone 144
    [0, 0, 0, 0, 0],  # never right: smallest scale, flagged by both
    [1, 1, 1, 1, 0],  # right up to 144 only: paper 1; monotone unreachable (576 wrong)
    [0, 0, 0, 0, 1],  # only the full scale
    [1, 1, 1, 1, 1],
    [1, 0, 0, 0, 1],  # paper 1, monotone 576
]


def test_paper_oracle_on_a_hand_made_matrix():
    scales, none_correct = paper_oracle(CORRECT, SCALES)
    assert scales.tolist() == [9, 1, 1, 576, 1, 1]
    assert none_correct.tolist() == [False, True, False, False, False, False]


def test_monotone_oracle_on_a_hand_made_matrix():
    scales, unreachable = monotone_oracle(CORRECT, SCALES)
    assert scales.tolist() == [144, 1, 1, 576, 1, 576]
    assert unreachable.tolist() == [False, True, True, False, False, False]


def test_oracles_agree_on_monotone_rows_and_monotone_never_asks_fewer_tokens():
    rng = np.random.default_rng(0)
    correct = rng.random((500, 5)) < 0.5
    paper, none_correct = paper_oracle(correct, SCALES)
    monotone, unreachable = monotone_oracle(correct, SCALES)
    reachable = ~unreachable
    assert np.all(monotone[reachable] >= paper[reachable])
    column = {s: i for i, s in enumerate(SCALES)}
    for row, (p, m) in enumerate(zip(paper, monotone)):
        if not none_correct[row]:
            assert correct[row, column[p]] and not correct[row, : column[p]].any()
        if reachable[row]:
            assert correct[row, column[m] :].all()
    is_monotone = np.all(np.diff(correct.astype(int), axis=1) >= 0, axis=1) & correct[:, -1]
    assert np.array_equal(paper[is_monotone], monotone[is_monotone])


def test_label_inputs_are_checked():
    with pytest.raises(ValueError, match=r"\(samples, 5 scales\)"):
        paper_oracle([[1, 0]], SCALES)
    with pytest.raises(ValueError, match="increasing"):
        monotone_oracle([[1, 0]], [9, 1])
    scales, flags = paper_oracle(np.zeros((0, 5), bool), SCALES)
    assert scales.shape == flags.shape == (0,)
