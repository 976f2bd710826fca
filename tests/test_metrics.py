"""Evaluation metrics: hand-worked examples, plus property tests against brute-force references."""

from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minitune.metrics import (
    accuracy, exact_match, key_fact_recall, lcs_length, macro_f1, normalize_answer, rouge_l, token_f1,
)

PROPS = settings(max_examples=150, deadline=None)  # light: a timing run may share the machine


# ---------------------------------------------------------------- normalisation, EM, token F1


def test_normalize_answer():
    assert normalize_answer("  The  Cat, sat on a MAT! ") == "cat sat on mat"
    assert normalize_answer("An apple\tand\nthe pear.") == "apple and pear"
    assert normalize_answer("Theatre and anthem") == "theatre and anthem"  # articles only as whole words
    assert normalize_answer("don't") == "dont"
    assert normalize_answer("") == ""


def test_exact_match():
    assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert exact_match("Eiffel Tower", "Tower Eiffel") == 0.0
    assert exact_match("", "the") == 1.0  # both normalise to ""


def test_token_f1_hand_worked():
    # pred tokens: cat sat mat; ref tokens: cat sat on mat -> overlap 3, P = 3/3, R = 3/4, F1 = 6/7
    assert token_f1("the cat sat mat", "The cat sat on the mat") == pytest.approx(6 / 7)
    # repeated tokens count min(2, 1) = 1 time: P = 1/2, R = 1/1, F1 = 2/3
    assert token_f1("paris paris", "Paris") == pytest.approx(2 / 3)
    assert token_f1("london", "paris") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("the", "paris") == 0.0  # prediction is empty once articles are gone
    with pytest.raises(TypeError):
        token_f1(None, "x")


# ---------------------------------------------------------------- LCS and ROUGE-L


def test_lcs_length_examples():
    assert lcs_length("ABCBDAB", "BDCABA") == 4  # classic textbook pair: BCBA
    assert lcs_length([1, 2, 3], [3, 2, 1]) == 1
    assert lcs_length("", "abc") == 0
    assert lcs_length(["a", "b"], ["a", "b"]) == 2


def brute_force_lcs(a, b) -> int:
    short, long = (a, b) if len(a) <= len(b) else (b, a)

    def is_subsequence(sub, seq) -> bool:
        it = iter(seq)
        return all(any(x == y for y in it) for x in sub)

    for k in range(len(short), 0, -1):
        if any(is_subsequence(sub, long) for sub in combinations(short, k)):
            return k
    return 0


small_seqs = st.lists(st.sampled_from("abc"), max_size=8)


@PROPS
@given(small_seqs, small_seqs)
def test_lcs_matches_brute_force_and_is_symmetric(a, b):
    n = lcs_length(a, b)
    assert n == brute_force_lcs(a, b)
    assert n == lcs_length(b, a)
    assert n <= min(len(a), len(b))


def test_rouge_l_hand_worked():
    # pred: the cat sat on the mat (6); ref: the cat is on the mat (6); LCS = the cat on the mat = 5
    scores = rouge_l("The cat sat on the mat.", "the cat is on the mat")
    assert scores["precision"] == pytest.approx(5 / 6)
    assert scores["recall"] == pytest.approx(5 / 6)
    assert scores["f1"] == pytest.approx(5 / 6)
    # pred: police gunman (2); ref: police kill the gunman (4); LCS = 2 -> P = 1, R = 1/2, F1 = 2/3
    scores = rouge_l("police gunman", "police kill the gunman")
    assert (scores["precision"], scores["recall"]) == (1.0, 0.5)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert rouge_l("In 1999, 3 cats!", "in 1999 3 cats")["f1"] == 1.0  # punctuation dropped, numbers kept


def test_rouge_l_empty_cases():
    assert rouge_l("", "...") == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert rouge_l("", "a cat") == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert rouge_l("dog", "a cat") == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


words = st.lists(st.sampled_from(["the", "cat", "sat", "on", "mat", "7"]), max_size=10).map(" ".join)


@PROPS
@given(words, words)
def test_rouge_l_in_range_and_identity(pred, ref):
    scores = rouge_l(pred, ref)
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert rouge_l(pred, ref)["f1"] == pytest.approx(rouge_l(ref, pred)["f1"])
    if ref:
        assert rouge_l(ref, ref)["f1"] == 1.0


@PROPS
@given(words, words)
def test_token_f1_and_exact_match_symmetric_and_in_range(a, b):
    assert 0.0 <= token_f1(a, b) <= 1.0
    assert token_f1(a, b) == pytest.approx(token_f1(b, a))
    assert exact_match(a, b) == exact_match(b, a) in (0.0, 1.0)
    assert token_f1(a, a) == 1.0
    if exact_match(a, b):
        assert token_f1(a, b) == 1.0


# ---------------------------------------------------------------- classification


def test_accuracy_and_macro_f1_hand_worked():
    golds = ["a", "a", "b", "c"]
    preds = ["a", "b", "b", "b"]
    assert accuracy(preds, golds) == 0.5
    # a: TP 1, FP 0, FN 1 -> 2/3; b: TP 1, FP 2, FN 0 -> 2/4; c: TP 0, FN 1 -> 0
    assert macro_f1(preds, golds) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    # an explicit label that never occurs counts as F1 0
    assert macro_f1(preds, golds, labels=["a", "b", "c", "d"]) == pytest.approx((2 / 3 + 1 / 2) / 4)
    assert macro_f1(preds, golds, labels=["a"]) == pytest.approx(2 / 3)


def test_label_metrics_validate_inputs():
    with pytest.raises(ValueError, match="3 preds, 2 golds"):
        accuracy([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="1 preds, 2 golds"):
        macro_f1([1], [1, 2])
    with pytest.raises(ValueError):
        accuracy([], [])
    with pytest.raises(ValueError):
        macro_f1([1], [1], labels=[])


def reference_macro_f1(preds, golds) -> float:
    labels = set(preds) | set(golds)
    scores = []
    for label in labels:
        tp = sum(p == label and g == label for p, g in zip(preds, golds))
        predicted = sum(p == label for p in preds)
        actual = sum(g == label for g in golds)
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(scores) / len(scores)


label_pairs = st.integers(1, 12).flatmap(
    lambda n: st.tuples(st.lists(st.integers(0, 3), min_size=n, max_size=n),
                        st.lists(st.integers(0, 3), min_size=n, max_size=n)))


@PROPS
@given(label_pairs)
def test_macro_f1_matches_per_label_reference(pair):
    preds, golds = pair
    assert macro_f1(preds, golds) == pytest.approx(reference_macro_f1(preds, golds))
    assert 0.0 <= macro_f1(preds, golds) <= 1.0
    assert macro_f1(golds, golds) == 1.0 == accuracy(golds, golds)
    # renaming labels consistently changes nothing
    assert macro_f1([p + 10 for p in preds], [g + 10 for g in golds]) == pytest.approx(macro_f1(preds, golds))
    if accuracy(preds, golds) == 0.0:
        assert macro_f1(preds, golds) == 0.0


@PROPS
@given(st.lists(st.integers(0, 1), min_size=1, max_size=12))
def test_macro_f1_of_a_constant_predictor(golds):
    # predicting a single constant label: that label's F1 is 2a/(1+a) where a = accuracy, others score 0
    preds = [0] * len(golds)
    a = accuracy(preds, golds)
    n_labels = len(set(golds) | {0})
    assert macro_f1(preds, golds) == pytest.approx((2 * a / (1 + a)) / n_labels)


# ---------------------------------------------------------------- key facts


def test_key_fact_recall():
    text = "Ada Lovelace was born in London on 10 December 1815; the Mayor was away."
    assert key_fact_recall(text, ["ada lovelace", "London", "10  December"]) == 1.0
    assert key_fact_recall(text, ["May", "Paris"]) == 0.0  # "Mayor" is not the word "May"
    assert key_fact_recall(text, ["1815", "Lovelace, Ada", "born"]) == pytest.approx(2 / 3)
    assert key_fact_recall(text, (f for f in ["London"])) == 1.0  # any iterable of facts
    with pytest.raises(ValueError):
        key_fact_recall(text, [])
    with pytest.raises(ValueError):
        key_fact_recall(text, ["  "])
