"""SQuAD v1.1 exact match and F1, computed offline.

A line-by-line port of the official evaluation script (`evaluate-v1.1.py`, Rajpurkar et al. 2016), which is
also what the Hub's `squad` metric runs: answers are normalized (lower case, punctuation, the articles
a/an/the and extra whitespace removed), each prediction is scored against every gold answer and the best
score counts; the dataset score is the mean over questions, in percent.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (the official v1.1 order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-level F1 between the normalized answers (bag of tokens, as in the official script)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def metric_max_over_ground_truths(metric_fn, prediction: str, ground_truths: Iterable[str]) -> float:
    """The best score of `prediction` against any of the gold answers (0 when there are none)."""
    return max((metric_fn(prediction, gt) for gt in ground_truths), default=0.0)


def squad_metrics(predictions: Iterable[Mapping], references: Iterable[Mapping]) -> dict[str, float]:
    """Exact match and F1 in percent, plus `accuracy` = exact match / 100.

    `predictions`: `{"id", "prediction_text"}` dicts; `references`: `{"id", "answers": {"text": [...]}}` dicts
    (the Hub `squad` metric's input format). Every reference must have a prediction.
    """
    predicted = {p["id"]: p["prediction_text"] for p in predictions}
    exact = f1 = 0.0
    total = 0
    for ref in references:
        qid = ref["id"]
        if qid not in predicted:
            raise ValueError(f"No prediction for question id {qid!r}; every reference needs one.")
        golds = list(ref["answers"]["text"])
        exact += metric_max_over_ground_truths(exact_match_score, predicted[qid], golds)
        f1 += metric_max_over_ground_truths(f1_score, predicted[qid], golds)
        total += 1
    if total == 0:
        raise ValueError("squad_metrics needs at least one reference.")
    exact_match = 100.0 * exact / total
    return {"exact_match": exact_match, "f1": 100.0 * f1 / total, "accuracy": exact_match / 100.0}
