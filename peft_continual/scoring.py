"""Per-task metrics by name: each scores one prediction against its reference, in [0, 1].

* ``accuracy`` / ``exact_match``: 1 if the normalised answers are equal (under label ranking the prediction is an
  option, so this is plain accuracy). The normalisation is the one of the papers' evaluation code (Super-
  NaturalInstructions' ``compute_metrics``, used by O-LoRA, N-LoRA and TRACE): lower case, no punctuation, single
  spaces. It is SQuAD's without the removal of articles, which would turn the answer "A" of a multiple-choice item
  into the empty string (so that "", "The" and "A" would all match it). The whole answer counts: a right first
  line followed by more text is not a match;
* ``f1``: SQuAD v1.1's token F1 (its normalisation, articles removed; 0 when no token is shared);
* ``rouge_l``: ROUGE-L F-measure (``rouge-score``, the reference implementation; Porter stemming, as in TRACE),
  with a tokenizer that keeps the words of every script: rouge-score's default keeps only ``[a-z0-9]`` and scores
  two identical Russian or Chinese answers 0. On ASCII text it tokenises exactly as the default does; Chinese,
  Japanese kana and other unspaced CJK text count one token per character;
* ``edit_similarity``: normalised Indel similarity of the raw strings (``rapidfuzz``'s ``fuzz.ratio`` / 100, the
  fuzzy ratio TRACE uses for code completion).

SARI (text simplification) is not offered: its maintained implementations (EASSE, ``evaluate``'s metric script)
are not installable from PyPI or need the network.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Callable

CLASSIFICATION_DEFAULT, GENERATION_DEFAULT = "accuracy", "exact_match"
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, no ASCII punctuation, single spaces: the papers' exact-match normalisation (articles are kept)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(text.split())


def squad_normalize(text: str) -> str:
    """SQuAD v1.1's normalisation: :func:`normalize_answer` and the articles a, an, the removed."""
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", normalize_answer(text)).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD v1.1's F1 over the normalised words (no shared word, including two empty answers: 0)."""
    predicted, gold = squad_normalize(prediction).split(), squad_normalize(reference).split()
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def _unspaced(ch: str) -> bool:
    """Scripts written without spaces between words, where ROUGE counts characters (CJK ideographs, kana)."""
    code = ord(ch)
    return (0x3040 <= code <= 0x30FF or 0x3400 <= code <= 0x4DBF or 0x4E00 <= code <= 0x9FFF
            or 0xF900 <= code <= 0xFAFF or 0x20000 <= code <= 0x2FA1F)  # fmt: skip


def rouge_tokens(text: str, stemmer=None) -> list[str]:
    """Lower-cased runs of letters, digits and combining marks of any script; one token per CJK character.

    ASCII tokens longer than 3 characters are Porter-stemmed, as rouge-score's default tokenizer does (which this
    equals on ASCII text)."""
    tokens, word = [], []
    for ch in text.lower():
        if _unspaced(ch):
            tokens += ["".join(word), ch]
            word = []
        elif unicodedata.category(ch)[0] in "LNM":
            word.append(ch)
        else:
            tokens.append("".join(word))
            word = []
    tokens = [t for t in tokens + ["".join(word)] if t]
    if stemmer is None:
        return tokens
    return [stemmer.stem(t) if len(t) > 3 and t.isascii() else t for t in tokens]


@lru_cache(maxsize=1)
def _rouge_scorer():
    from nltk.stem import porter
    from rouge_score import rouge_scorer, tokenizers

    class UnicodeTokenizer(tokenizers.Tokenizer):
        stemmer = porter.PorterStemmer()

        def tokenize(self, text):
            return rouge_tokens(text, self.stemmer)

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=UnicodeTokenizer())


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
