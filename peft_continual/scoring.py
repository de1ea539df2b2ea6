"""Per-task metrics by name: each scores one prediction against its reference, in [0, 1].

* ``accuracy`` / ``exact_match``: 1 if the SQuAD-normalised answers are equal (under label ranking the prediction
  is an option, so this is plain accuracy);
* ``f1``: SQuAD token F1 over normalised words;
* ``rouge_l``: ROUGE-L F-measure (``rouge-score``, the reference implementation; Porter stemming, as in TRACE);
* ``edit_similarity``: normalised Indel similarity of the raw strings (``rapidfuzz``'s ``fuzz.ratio`` / 100, the
  fuzzy ratio TRACE uses for code completion).

SARI (text simplification) is not offered: its maintained implementations (EASSE, ``evaluate``'s metric script)
are not installable from PyPI or need the network.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache
from typing import Callable

CLASSIFICATION_DEFAULT, GENERATION_DEFAULT = "accuracy", "exact_match"


def normalize_answer(text: str) -> str:
    """Lower-case, first line only, no punctuation, articles or extra spaces (SQuAD-style normalisation)."""
    text = text.strip().split("\n")[0].lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not gold:
        return float(predicted == gold)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


def edit_similarity(prediction: str, reference: str) -> float:
    from rapidfuzz import fuzz

    return fuzz.ratio(prediction.strip(), reference.strip()) / 100.0


METRICS: dict[str, Callable[[str, str], float]] = {
    "accuracy": exact_match,
    "exact_match": exact_match,
    "f1": token_f1,
    "rouge_l": rouge_l,
    "edit_similarity": edit_similarity,
}


def check_metric(name: str, where: str = "") -> str:
    if name not in METRICS:
        from .tasks.formats import TaskSpecError

        raise TaskSpecError(f"{where + ': ' if where else ''}unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    return name


def score_predictions(metric: str, predictions: list[str], references: list[str]) -> list[float]:
    """One score per example."""
    function = METRICS[check_metric(metric)]
    return [function(p, r) for p, r in zip(predictions, references)]
