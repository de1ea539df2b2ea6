"""Per-task metrics against hand-computed values; the score matrix keeps per-example scores and secondary protocols."""

import json
import string

import pytest

from peft_continual import ContinualResult, TaskSpecError
from peft_continual.scoring import (
    METRICS,
    edit_similarity,
    exact_match,
    rouge_l,
    rouge_tokens,
    score_predictions,
    token_f1,
)


# (prediction, reference, score) as the papers' evaluation code (Super-NaturalInstructions' compute_metrics.py:
# lower, drop string.punctuation, single spaces, articles kept, whole answer) computes them.
PAPERS_EXACT_MATCH = [
    ("The Cat!", "the cat", 1.0),
    ("  Very   negative. ", "very negative", 1.0),
    ("World", "world.", 1.0),
    ("cat sat", "cat", 0.0),
    ("", "A", 0.0),  # SQuAD's article removal would make both empty: an empty answer matched "A"
    ("The", "A", 0.0),
    ("an apple", "apple", 0.0),  # articles are part of the answer
    ("Paris\nThe capital of Germany is Berlin.", "Paris", 0.0),  # the whole answer counts, not its first line
    ("Paris\n", "Paris", 1.0),  # surrounding whitespace is not an answer
    ("Sci/Tech", "scitech", 1.0),
]

# (prediction, reference, F1) as SQuAD v1.1's evaluate-v1.1.py computes them (its normalisation removes articles;
# no shared token, two empty answers included, gives 0).
SQUAD_F1 = [
    ("The cat sat on the mat", "cat sat mat down", 0.75),  # [cat sat on mat] vs [cat sat mat down]: P = R = 3/4
    ("dog", "cat", 0.0),
    ("", "", 0.0),
    ("", "A", 0.0),
    ("Preheat the oven.", "Preheat the oven to 200C.\nMix the flour.\nBake for 20 minutes.", 2 * 1 * (2 / 10) / (1 + 2 / 10)),
    ("a big red apple", "the red apple", 2 * (2 / 3) * 1 / (2 / 3 + 1)),
]


@pytest.mark.parametrize("prediction, reference, expected", PAPERS_EXACT_MATCH)
def test_exact_match_as_the_papers_compute_it(prediction, reference, expected):
    assert exact_match(prediction, reference) == expected
    assert METRICS["accuracy"](prediction, reference) == expected


@pytest.mark.parametrize("prediction, reference, expected", SQUAD_F1)
def test_token_f1_as_squad_computes_it(prediction, reference, expected):
    assert token_f1(prediction, reference) == pytest.approx(expected)


def test_rouge_l_by_hand():
    # LCS = "the cat was under the bed" (6 tokens); P = 6/7, R = 6/6: F = 2PR/(P+R) = 12/13
    assert rouge_l("the cat was found under the bed", "the cat was under the bed") == pytest.approx(12 / 13)
    assert rouge_l("completely different", "the cat") == 0.0


def test_rouge_l_scores_every_script():
    """rouge-score's default tokenizer keeps only [a-z0-9]: identical non-Latin answers scored 0."""
    assert rouge_l("привет мир", "привет мир") == 1.0
    assert rouge_l("привет мир", "привет всем") == pytest.approx(0.5)
    assert rouge_l("我爱北京", "我爱上海") == pytest.approx(0.5)  # one token per character: LCS 2 of 4
    assert rouge_l("नमस्ते दुनिया", "नमस्ते दुनिया") == 1.0  # combining marks stay inside their word
    assert rouge_l("Café crème", "café crème") == 1.0


def test_rouge_tokens_equal_rouge_scores_default_on_ascii():
    import random

    from nltk.stem import porter
    from rouge_score.tokenizers import DefaultTokenizer

    default, stemmer, rng = DefaultTokenizer(use_stemmer=True), porter.PorterStemmer(), random.Random(0)
    alphabet = string.ascii_letters + string.digits + "  _-.,'!\n\t/"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert rouge_tokens(text, stemmer) == default.tokenize(text), text
    assert rouge_tokens("The cats were running", stemmer) == ["the", "cat", "were", "run"]


def test_edit_similarity_by_hand():
    # kitten/sitting: LCS "ittn" (4), Indel distance 6 + 7 - 2*4 = 5, similarity 1 - 5/13
    assert edit_similarity("kitten", "sitting") == pytest.approx(8 / 13)
    assert edit_similarity("def f(x):", "def f(x):") == 1.0


def test_scores_are_per_example_and_named():
    assert set(METRICS) == {"accuracy", "exact_match", "f1", "rouge_l", "edit_similarity"}
    assert score_predictions("exact_match", ["Cat.", "dog"], ["cat", "cat"]) == [1.0, 0.0]
    with pytest.raises(TaskSpecError, match="unknown metric 'bleu'; choose one of accuracy, exact_match"):
        score_predictions("bleu", ["a"], ["a"])


def two_protocol_result() -> ContinualResult:
    """Primary generate over a classification and a generation task; rank cannot score the generation task."""
    return ContinualResult(
        task_names=["topics", "titles"], task_metrics=["accuracy", "rouge_l"], evaluation_method="generate",
        accuracy_matrix=[[0.5, None], [0.25, 0.6]], zero_shot=[0.0, 0.1],
        example_scores=[[[1.0, 0.0], None], [[0.0, 0.5], [0.6, 0.6]]], zero_shot_example_scores=[[0.0, 0.0], [0.1, 0.1]],
        secondary={"rank": ContinualResult(
            task_names=["topics", "titles"], task_metrics=["accuracy", None], evaluation_method="rank",
            accuracy_matrix=[[1.0, None], [0.5, None]], example_scores=[[[1.0, 1.0], None], [[1.0, 0.0], None]],
        )},
    )  # fmt: skip


def test_result_round_trips_example_scores_and_secondary():
    result = two_protocol_result()
    data = json.loads(result.to_json())
    assert data["example_scores"][1][1] == [0.6, 0.6] and data["secondary"]["rank"]["task_metrics"] == ["accuracy", None]
    back = ContinualResult.from_json(result.to_json())
    assert back.example_scores == result.example_scores and back.zero_shot_example_scores == result.zero_shot_example_scores
    assert back.secondary["rank"].accuracy_matrix == [[1.0, None], [0.5, None]] and back.score_matrix is back.accuracy_matrix
    # primary: AA = (0.25 + 0.6)/2, BWT = 0.25 - 0.5; secondary rank: only the classification task counts
    assert back.average_accuracy == pytest.approx(0.425) and back.backward_transfer == pytest.approx(-0.25)
    assert back.forward_transfer is None  # R[0][1] (titles before training it) was not evaluated
    rank = back.secondary["rank"]
    assert rank.average_accuracy == pytest.approx(0.5) and rank.backward_transfer == pytest.approx(-0.5)
    assert rank.forgetting == pytest.approx(0.5) and rank.forward_transfer is None
    table = back.format_table()
    assert "rouge_l" in table and "rank scoring:" in table


def test_results_saved_before_example_scores_still_load():
    old = {"task_names": ["a", "b"], "accuracy_matrix": [[0.5, None], [0.5, 1.0]], "zero_shot": [0.1, 0.2],
           "evaluation_method": "rank", "method": "nlora", "details": [], "collision": None}  # fmt: skip
    result = ContinualResult.from_dict(old)
    assert result.task_metrics == ["accuracy", "accuracy"]
    assert result.example_scores == [[None, None], [None, None]] and result.zero_shot_example_scores == [None, None]
    assert result.secondary == {} and result.average_accuracy == 0.75


def test_example_scores_must_have_the_matrix_shape():
    data = two_protocol_result().to_dict()
    data["example_scores"] = data["example_scores"][:1]
    with pytest.raises(ValueError, match="example_scores must have the shape of accuracy_matrix"):
        ContinualResult.from_dict(data)
