"""Evaluation metrics, written by hand in plain Python so each formula can be read and checked.

Text answers (question answering, short generation):
    normalize_answer   lower-case, drop punctuation and the articles a/an/the, collapse whitespace
    exact_match        1.0 if the normalised strings are equal, else 0.0
    token_f1           overlap F1 of the two bags of normalised tokens
    rouge_l            precision / recall / F1 of the longest common subsequence of word tokens
    key_fact_recall    fraction of given facts ("14 May", "Ada Lovelace") found in the prediction

Labels (classification):
    accuracy           fraction of predictions equal to the gold label
    macro_f1           per-label F1, averaged with equal weight per label

Empty-input conventions (the same everywhere, so a metric never divides by zero):
    both texts empty -> perfect score (1.0), exactly one empty -> 0.0.
    zero examples (accuracy, macro_f1) or zero facts -> ValueError, since the mean of nothing is undefined.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_WORD = re.compile(r"[^\W_]+")  # runs of letters or digits; punctuation and underscores separate words


def _require_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")


def _harmonic_mean(p: float, r: float) -> float:
    # F1 = 2PR / (P + R); defined as 0 when both are 0
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


# ---------------------------------------------------------------- text answers


def normalize_answer(s: str) -> str:
    """Lower-case, remove punctuation and the articles a/an/the, and collapse runs of whitespace."""
    _require_str("s", s)
    s = s.lower().translate(_PUNCTUATION)  # punctuation is deleted, not spaced: "don't" -> "dont"
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if prediction and reference are equal after normalize_answer, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the overlap between the bags of normalised tokens (both empty -> 1.0, one empty -> 0.0)."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    # overlap counts a token min(count in pred, count in ref) times
    common = sum((Counter(pred) & Counter(ref)).values())
    return _harmonic_mean(common / len(pred), common / len(ref))


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of a and b: O(len a * len b) time, O(min) memory."""
    if len(a) < len(b):
        a, b = b, a  # keep the shorter one along the row, so the row is the O(min) memory
    # row[j] = LCS of the prefix of a seen so far and b[:j]
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # value of row[j - 1] from the previous pass over a
        for j, y in enumerate(b, start=1):
            above = row[j]
            # match extends the diagonal; otherwise take the better of dropping x or dropping y
            row[j] = diagonal + 1 if x == y else max(above, row[j - 1])
            diagonal = above
    return row[-1]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def rouge_l(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-L over lower-cased word tokens: {"precision", "recall", "f1"} from the LCS length.

    precision = LCS / len(prediction tokens), recall = LCS / len(reference tokens), f1 their harmonic mean
    (beta = 1). Both token lists empty -> all three are 1.0; exactly one empty -> all three are 0.0.
    """
    _require_str("prediction", prediction)
    _require_str("reference", reference)
    pred, ref = _words(prediction), _words(reference)
    if not pred or not ref:
        score = float(pred == ref)
        return {"precision": score, "recall": score, "f1": score}
    lcs = lcs_length(pred, ref)
    p, r = lcs / len(pred), lcs / len(ref)
    return {"precision": p, "recall": r, "f1": _harmonic_mean(p, r)}


def key_fact_recall(prediction: str, facts: Iterable[str]) -> float:
    """Fraction of facts found in the prediction as whole-word, case-insensitive phrases."""
    _require_str("prediction", prediction)
    facts = list(facts)
    if not facts:
        raise ValueError("key_fact_recall needs at least one fact")
    found = 0
    for fact in facts:
        _require_str("each fact", fact)
        words = fact.split()
        if not words:
            raise ValueError(f"fact {fact!r} is empty")
        # words of the fact in order, any whitespace between them, and no letter or digit glued on
        # either side: "May" matches "14 May," but not "Mayor"
        pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
        found += re.search(pattern, prediction, flags=re.IGNORECASE) is not None
    return found / len(facts)


# ---------------------------------------------------------------- labels


def _check_pairs(preds: Sequence, golds: Sequence) -> None:
    if len(preds) != len(golds):
        raise ValueError(f"preds and golds differ in length: {len(preds)} preds, {len(golds)} golds")
    if not preds:
        raise ValueError("no examples: the metric of zero predictions is undefined")


def accuracy(preds: Sequence[Hashable], golds: Sequence[Hashable]) -> float:
    """Fraction of positions where the prediction equals the gold label."""
    _check_pairs(preds, golds)
    return sum(p == g for p, g in zip(preds, golds)) / len(golds)


def macro_f1(preds: Sequence[Hashable], golds: Sequence[Hashable],
             labels: Sequence[Hashable] | None = None) -> float:
    """Unweighted mean over labels of the per-label F1 = 2TP / (2TP + FP + FN).

    labels=None scores every label that occurs in golds or preds (so a label nobody predicted and no
    example has is never counted). An explicit labels list scores exactly those labels: one that never
    occurs gets F1 = 0 (zero denominators give 0), and predictions outside the list count only as misses
    of their gold label.
    """
    _check_pairs(preds, golds)
    if labels is None:
        labels = list(dict.fromkeys([*golds, *preds]))  # first-seen order; labels need not be sortable
    else:
        labels = list(dict.fromkeys(labels))
        if not labels:
            raise ValueError("labels is empty")
    tp, fp, fn = Counter(), Counter(), Counter()
    for p, g in zip(preds, golds):
        if p == g:
            tp[g] += 1
        else:
            fp[p] += 1
            fn[g] += 1
    total = 0.0
    for label in labels:
        # 2TP / (2TP + FP + FN) is the harmonic mean of precision and recall, written without dividing by 0
        denominator = 2 * tp[label] + fp[label] + fn[label]
        total += 2 * tp[label] / denominator if denominator else 0.0
    return total / len(labels)
