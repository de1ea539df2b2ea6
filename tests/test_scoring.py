"""Per-task metrics against hand-computed values; the score matrix keeps per-example scores and secondary protocols."""

import json

import pytest

from peft_continual import ContinualResult, TaskSpecError
from peft_continual.scoring import METRICS, edit_similarity, exact_match, rouge_l, score_predictions, token_f1


def test_exact_match_after_squad_normalisation():
    assert exact_match("The Cat!", "cat") == 1.0
    assert exact_match("  an apple.\nmore text", "Apple") == 1.0
    assert exact_match("cat sat", "cat") == 0.0


def test_token_f1_by_hand():
    # normalised: [cat, sat, on, mat] vs [cat, sat, mat, down]: 3 in common, P = R = 3/4
    assert token_f1("The cat sat on the mat", "cat sat mat down") == pytest.approx(0.75)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "cat") == 0.0


def test_rouge_l_by_hand():
    # LCS = "the cat was under the bed" (6 tokens); P = 6/7, R = 6/6: F = 2PR/(P+R) = 12/13
    assert rouge_l("the cat was found under the bed", "the cat was under the bed") == pytest.approx(12 / 13)
    assert rouge_l("completely different", "the cat") == 0.0


def test_edit_similarity_by_hand():
    # kitten/sitting: LCS "ittn" (4), Indel distance 6 + 7 - 2*4 = 5, similarity 1 - 5/13
    assert edit_similarity("kitten", "sitting") == pytest.approx(8 / 13)
    assert edit_similarity("def f(x):", "def f(x):") == 1.0


def test_scores_are_per_example_and_named():
    assert set(METRICS) == {"accuracy", "exact_match", "f1", "rouge_l", "edit_similarity"}
    assert score_predictions("exact_match", ["a cat", "dog"], ["cat", "cat"]) == [1.0, 0.0]
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
