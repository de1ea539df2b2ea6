"""CL metrics against hand-computed matrices, JSON round trip, printed table."""

import math

import pytest

from peft_continual import ContinualResult


def result():
    return ContinualResult(
        task_names=["a", "b", "c"],
        accuracy_matrix=[[0.9, 0.2, 0.1], [0.6, 0.8, 0.3], [0.5, 0.7, 0.95]],
        zero_shot=[0.1, 0.15, 0.2],
    )


def test_metrics_hand_computed():
    r = result()
    assert r.average_accuracy == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert r.backward_transfer == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert r.task_backward_transfer == pytest.approx([0.5 - 0.9, 0.7 - 0.8])
    r.secondary = {"generate": ContinualResult(task_names=r.task_names, evaluation_method="generate")}
    assert list(r.by_protocol().items()) == [("rank", r), ("generate", r.secondary["generate"])]  # primary first
    assert r.forgetting == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    assert r.forward_transfer == pytest.approx(((0.2 - 0.15) + (0.3 - 0.2)) / 2)


def test_forgetting_uses_the_best_earlier_accuracy():
    r = ContinualResult(task_names=["a", "b", "c"], accuracy_matrix=[[0.5, None, None], [0.9, 0.6, None], [0.4, 0.6, 0.7]])
    assert r.forgetting == pytest.approx(((0.9 - 0.4) + (0.6 - 0.6)) / 2)
    assert r.backward_transfer == pytest.approx(((0.4 - 0.5) + 0.0) / 2)
    assert r.forward_transfer is None  # no zero-shot, no upper triangle


def test_metrics_over_the_needed_cells_only():
    """Diagonal and last row (ContinualTrainer's default): forgetting's maximum is over the evaluated cells."""
    r = ContinualResult(task_names=["a", "b", "c"],
                        accuracy_matrix=[[0.9, None, None], [None, 0.8, None], [0.5, 0.6, 0.7]])  # fmt: skip
    assert r.average_accuracy == pytest.approx(0.6)
    assert r.backward_transfer == pytest.approx(((0.5 - 0.9) + (0.6 - 0.8)) / 2)
    assert r.forgetting == pytest.approx(((0.9 - 0.5) + (0.8 - 0.6)) / 2)
    middle = ContinualResult(task_names=["a", "b", "c"], accuracy_matrix=[[0.9, None, None], [None, 0.8, None]])
    assert middle.average_accuracy is None and middle.backward_transfer is None and middle.forgetting is None
    assert "AA n/a" in middle.format_table()
    with pytest.raises(ValueError, match=r"accuracy_matrix\[1\]\[1\]"):  # the diagonal is always evaluated
        ContinualResult.from_dict({"task_names": ["a", "b"], "accuracy_matrix": [[0.5, None], [0.4, None]]})


def test_single_task_has_no_transfer():
    r = ContinualResult(task_names=["a"], accuracy_matrix=[[0.8]])
    assert r.average_accuracy == pytest.approx(0.8)
    assert r.backward_transfer is None and r.forgetting is None


def test_partial_run_uses_tasks_trained_so_far():
    r = ContinualResult(task_names=["a", "b", "c"], accuracy_matrix=[[0.8, None, None], [0.6, 0.9, None]])
    assert r.average_accuracy == pytest.approx(0.75)
    assert r.backward_transfer == pytest.approx(-0.2)


def test_json_round_trip(tmp_path):
    r = result()
    path = tmp_path / "result.json"
    r.to_json(str(path))
    back = ContinualResult.from_json(str(path))
    assert back.accuracy_matrix == r.accuracy_matrix and back.zero_shot == r.zero_shot
    assert math.isclose(back.average_accuracy, r.average_accuracy)
    assert '"average_accuracy"' in r.to_json()


def test_corrupted_matrix_is_refused():
    with pytest.raises(ValueError, match=r"accuracy_matrix\[1\]\[0\]"):
        ContinualResult.from_dict({"task_names": ["a", "b"], "accuracy_matrix": [[0.5, None], [1.5, 0.2]]})
    with pytest.raises(ValueError, match="one per task"):
        ContinualResult.from_dict({"task_names": ["a"], "accuracy_matrix": [[0.5, 0.1]]})


def test_table_shows_matrix_and_summary():
    table = result().format_table()
    assert "zero-shot" in table and "95.0" in table and "AA 71.7%" in table and "BWT -25.0" in table


def test_example_ids_round_trip_and_are_checked():
    scores = [[[1.0, 0.0], None], [[1.0, 1.0], [0.0, 1.0, 1.0]]]
    r = ContinualResult(task_names=["a", "b"], accuracy_matrix=[[0.5, None], [1.0, 2 / 3]], example_scores=scores,
                        example_ids=[["x", "y"], ["u", "v", "w"]])  # fmt: skip
    assert ContinualResult.from_json(r.to_json()).example_ids == [["x", "y"], ["u", "v", "w"]]
    old = {k: v for k, v in r.to_dict().items() if k != "example_ids"}  # saved before ids were recorded
    assert ContinualResult.from_dict(old).example_ids is None
    with pytest.raises(ValueError, match=r"example_ids\[1\] names 2 examples"):
        ContinualResult.from_dict({**r.to_dict(), "example_ids": [["x", "y"], ["u", "v"]]})
    with pytest.raises(ValueError, match="one entry per task"):
        ContinualResult.from_dict({**r.to_dict(), "example_ids": [["x", "y"]]})
    assert ContinualResult.from_dict({**r.to_dict(), "example_ids": [["x", "y"], None]}).example_ids[1] is None
