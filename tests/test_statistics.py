"""Bootstrap intervals and paired comparisons against independent computations (exact enumeration, normal theory)."""

import itertools
import random
from collections import Counter

import numpy as np
import pytest

from peft_continual import ContinualResult
from peft_continual.statistics import (
    METRICS,
    MissingExampleScores,
    RunScores,
    bootstrap_metrics,
    bootstrap_replicates,
    metrics_from_matrix,
    paired_comparison,
)


def random_run(rng: random.Random, T: int = 3, n: int = 6, zero_shot: bool = True, unseen: str = "next") -> RunScores:
    """A complete run whose cells hold 0/1 scores; the super-diagonal is evaluated when ``unseen == "next"``."""
    sizes = [n + j for j in range(T)]  # tasks have different test-set sizes
    rows = [[[float(rng.random() < 0.6) for _ in range(sizes[j])] if j <= i or (unseen == "next" and j == i + 1) else None
             for j in range(T)] for i in range(T)]  # fmt: skip
    zero = [[float(rng.random() < 0.3) for _ in range(sizes[j])] for j in range(T)] if zero_shot else None
    return RunScores.from_lists(rows, zero)


def frequencies(values) -> dict:
    counts = Counter(np.round(values, 9).tolist())
    return {v: c / len(values) for v, c in counts.items()}


def assert_distribution(replicates, exact: dict, tol: float):
    observed = frequencies(replicates)
    assert set(observed) <= set(exact)
    for value, probability in exact.items():
        assert observed.get(value, 0.0) == pytest.approx(probability, abs=tol), value


def test_metrics_from_matrix_match_continual_result():
    rng = random.Random(0)
    for T in (2, 3, 5):
        matrix = [[rng.random() if j <= i + 1 else None for j in range(T)] for i in range(T)]
        zero = [rng.random() for _ in range(T)]
        ours = metrics_from_matrix(matrix, zero)
        reference = ContinualResult(task_names=[str(j) for j in range(T)], accuracy_matrix=matrix, zero_shot=zero).summary()
        for m in METRICS:
            assert ours[m] == pytest.approx(reference[m]), (T, m)
    assert metrics_from_matrix(matrix)["forward_transfer"] is None


def test_joint_run_has_average_accuracy_only():
    out = metrics_from_matrix([[0.2, 0.4, 0.9]])
    assert out["average_accuracy"] == pytest.approx(0.5)
    assert out["backward_transfer"] is None and out["forgetting"] is None and out["forward_transfer"] is None


def test_estimate_is_the_metric_of_the_observed_cell_means():
    run = random_run(random.Random(1))
    matrix, zero = [[None if c is None else float(np.mean(c)) for c in row] for row in run.example_scores], [
        float(np.mean(c)) for c in run.zero_shot_example_scores
    ]
    reference = ContinualResult(task_names=["a", "b", "c"], accuracy_matrix=matrix, zero_shot=zero).summary()
    intervals = bootstrap_metrics([run], num_resamples=200)
    for m in METRICS:
        assert intervals[m].estimate == pytest.approx(reference[m])
        assert intervals[m].low <= intervals[m].high


def test_one_run_matches_exact_enumeration_of_example_resamples():
    """T = 2, two examples per task: all 4 x 4 equally likely index draws, enumerated."""
    rows = [[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 1.0]]]
    run = RunScores.from_lists(rows)
    exact_aa, exact_bwt = Counter(), Counter()
    for i0, i1 in itertools.product(itertools.product(range(2), repeat=2), repeat=2):
        cell = lambda r, j, idx: np.mean([rows[r][j][k] for k in idx])  # noqa: E731
        R = [[cell(0, 0, i0), cell(0, 1, i1)], [cell(1, 0, i0), cell(1, 1, i1)]]
        exact_aa[round((R[1][0] + R[1][1]) / 2, 9)] += 1 / 16
        exact_bwt[round(R[1][0] - R[0][0], 9)] += 1 / 16
    replicates = bootstrap_replicates([[(run,)]], num_resamples=40000, seed=3)
    assert_distribution(replicates["average_accuracy"][0], exact_aa, tol=0.01)
    assert_distribution(replicates["backward_transfer"][0], exact_bwt, tol=0.01)


def test_every_row_reuses_the_same_example_draw_of_a_task():
    """Task 0 scored identically before and after task 1: every replicate must see BWT exactly 0."""
    run = RunScores.from_lists([[[1, 0, 1, 0, 0], None], [[1, 0, 1, 0, 0], [1, 1, 0]]])
    replicates = bootstrap_replicates([[(run,)]], num_resamples=500, seed=0)
    assert np.all(replicates["backward_transfer"] == 0)
    assert np.ptp(replicates["average_accuracy"]) > 0


def test_seeds_then_examples_matches_exact_enumeration():
    """Two seeds of a one-task run: seeds drawn with replacement, then each drawn seed's examples, enumerated."""
    seeds = [[0.0, 1.0], [1.0, 1.0]]
    runs = [RunScores.from_lists([[scores]]) for scores in seeds]
    exact = Counter()
    for picked in itertools.product(range(2), repeat=2):
        for draws in itertools.product(itertools.product(range(2), repeat=2), repeat=2):
            means = [np.mean([seeds[s][k] for k in idx]) for s, idx in zip(picked, draws)]
            exact[round(float(np.mean(means)), 9)] += 1 / (4 * 16)
    replicates = bootstrap_replicates([[(r,) for r in runs]], num_resamples=40000, seed=5)
    assert_distribution(replicates["average_accuracy"][0], exact, tol=0.01)


def test_large_sample_interval_matches_normal_theory():
    rng = np.random.default_rng(0)
    scores = (rng.random(4000) < 0.3).astype(float)
    interval = bootstrap_metrics([RunScores.from_lists([[scores]])], num_resamples=4000, seed=1)["average_accuracy"]
    p = scores.mean()
    half = 1.959964 * np.sqrt(p * (1 - p) / len(scores))
    assert interval.estimate == pytest.approx(p)
    assert interval.low == pytest.approx(p - half, abs=0.1 * half)
    assert interval.high == pytest.approx(p + half, abs=0.1 * half)


def test_confidence_widens_the_interval():
    run = random_run(random.Random(2), n=40)
    narrow = bootstrap_metrics([run], confidence=0.5, num_resamples=1000)["average_accuracy"]
    wide = bootstrap_metrics([run], confidence=0.99, num_resamples=1000)["average_accuracy"]
    assert wide.low < narrow.low <= narrow.high < wide.high
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_metrics([run], confidence=95)


def test_deterministic_for_a_seed():
    runs = [random_run(random.Random(s)) for s in range(3)]
    first = bootstrap_replicates([[(r,) for r in runs]], num_resamples=300, seed=7)
    again = bootstrap_replicates([[(r,) for r in runs]], num_resamples=300, seed=7)
    other = bootstrap_replicates([[(r,) for r in runs]], num_resamples=300, seed=8)
    for m in METRICS:
        np.testing.assert_array_equal(first[m], again[m])
    assert not np.array_equal(first["average_accuracy"], other["average_accuracy"])


def test_strata_weigh_the_same_whatever_their_seed_count():
    order1 = [RunScores.from_lists([[[1.0, 1.0]]]), RunScores.from_lists([[[0.0, 0.0]]])]  # mean 0.5
    order2 = [RunScores.from_lists([[[1.0, 1.0]]])]  # mean 1.0
    interval = bootstrap_metrics([order1, order2], num_resamples=2000)["average_accuracy"]
    assert interval.estimate == pytest.approx(0.75)
    # order 2 never varies; order 1 draws seeds: {0, 0.5, 1} with probabilities 1/4, 1/2, 1/4
    replicates = bootstrap_replicates([[(r,) for r in order1], [(r,) for r in order2]], num_resamples=20000)
    assert_distribution(replicates["average_accuracy"][0], {0.5: 0.25, 0.75: 0.5, 1.0: 0.25}, tol=0.015)


def test_forward_transfer_needs_zero_shot_scores():
    run = random_run(random.Random(4), zero_shot=False)
    intervals = bootstrap_metrics([run], num_resamples=100)
    assert intervals["forward_transfer"] is None and intervals["backward_transfer"] is not None
    no_unseen = random_run(random.Random(4), unseen="no")
    assert bootstrap_metrics([no_unseen], num_resamples=100)["forward_transfer"] is None


def shifted(run: RunScores, c: float) -> RunScores:
    """The same run with every trained cell's per-example scores raised by ``c`` (zero-shot unchanged)."""
    rows = [[None if cell is None else (cell + c).tolist() for cell in row] for row in run.example_scores]
    return RunScores.from_lists(rows, [cell.tolist() for cell in run.zero_shot_example_scores])


def test_paired_difference_of_a_constant_shift_is_exact():
    rng = random.Random(6)
    runs_b = [[random_run(rng) for _ in range(3)], [random_run(rng)]]  # two orders, 3 and 1 seeds
    runs_a = [[shifted(r, 0.05) for r in stratum] for stratum in runs_b]
    out = paired_comparison(runs_a, runs_b, num_resamples=500)
    for m, expected in (("average_accuracy", 0.05), ("forward_transfer", 0.05)):
        d = out[m]
        assert (d.estimate, d.low, d.high) == pytest.approx((expected, expected, expected))
        assert d.p_value == 0 and d.significant
    for m in ("backward_transfer", "forgetting"):  # a shift of every cell cancels in these
        d = out[m]
        assert (d.estimate, d.low, d.high) == pytest.approx((0, 0, 0), abs=1e-12)
        assert d.p_value == 1 and not d.significant


def test_pairing_removes_the_noise_both_methods_share():
    rng = np.random.default_rng(1)
    base = (rng.random(300) < 0.5).astype(float)  # example difficulty shared by both methods
    better = base.copy()
    better[np.flatnonzero(base == 0)[:12]] = 1.0  # method A also gets 12 more examples right (+4 points)
    a, b = RunScores.from_lists([[better]]), RunScores.from_lists([[base]])
    d = paired_comparison([a], [b], num_resamples=2000)["average_accuracy"]
    assert d.estimate == pytest.approx(0.04)
    assert d.significant and d.p_value < 0.05
    # unpaired, the two intervals overlap: the same difference would look like no difference
    ia, ib = bootstrap_metrics([a])["average_accuracy"], bootstrap_metrics([b], seed=1)["average_accuracy"]
    assert ia.low < ib.high


def test_paired_comparison_rejects_unmatched_runs():
    rng = random.Random(7)
    with pytest.raises(ValueError, match="same number of runs"):
        paired_comparison([random_run(rng), random_run(rng)], [random_run(rng)])
    with pytest.raises(ValueError, match="test examples"):
        paired_comparison([random_run(rng, n=6)], [random_run(rng, n=7)])


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="complete or joint"):
        RunScores.from_lists([[[1.0], None, None], [[1.0], [1.0], None]])
    with pytest.raises(ValueError, match="same non-empty test set"):
        RunScores.from_lists([[[1.0, 0.0], None], [[1.0], [1.0]]])
    with pytest.raises(ValueError, match="last row"):
        RunScores.from_lists([[[1.0], None], [[1.0], None]])
    with pytest.raises(ValueError, match="zero_shot"):
        RunScores.from_lists([[[1.0]]], [[1.0], [0.0]])


def test_from_result_reads_primary_and_secondary_protocols():
    primary = {"example_scores": [[[1, 0], None], [[1, 1], [0, 0, 1]]], "zero_shot_example_scores": [[0, 0], [0, 1, 0]]}
    secondary = {"example_scores": [[[1, 1], None], [[0, 1], [1, 1, 1]]], "zero_shot_example_scores": None}
    data = {"result": {**primary, "accuracy_matrix": [[0.5, None], [1.0, 1 / 3]], "secondary": {"rank": secondary}}}
    run = RunScores.from_result(data)
    assert run.num_tasks == 2 and run.num_examples(1) == 3 and run.zero_shot_example_scores is not None
    ranked = RunScores.from_result(data, protocol="rank")
    assert ranked.example_scores[1][1].tolist() == [1, 1, 1] and ranked.zero_shot_example_scores is None
    assert RunScores.from_result(data["result"]).num_tasks == 2  # a bare ContinualResult dict
    with pytest.raises(MissingExampleScores, match="generate"):
        RunScores.from_result(data, protocol="generate")
    with pytest.raises(MissingExampleScores, match="example_scores"):
        RunScores.from_result({"accuracy_matrix": [[1.0]]})


def test_tasks_a_protocol_cannot_score_are_left_out():
    """Task 1 is a generation task under label ranking: no scores at all; the means run over tasks 0 and 2."""
    a, c = [1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0]
    rows = [[a, None, c], [[0.0, 0.0, 1.0, 1.0], None, c], [[0.0, 0.0, 0.0, 1.0], None, [1.0, 1.0, 1.0]]]
    run = RunScores.from_lists(rows, [[0.0] * 4, None, [0.0, 0.0, 1.0]], scored=[True, False, True])
    intervals = bootstrap_metrics([run], num_resamples=200)
    assert intervals["average_accuracy"].estimate == pytest.approx((0.25 + 1.0) / 2)
    assert intervals["backward_transfer"].estimate == pytest.approx(0.25 - 0.75)  # task 0 only (task 2 is last)
    assert intervals["forgetting"].estimate == pytest.approx(0.75 - 0.25)
    assert intervals["forward_transfer"].estimate == pytest.approx(2 / 3 - 1 / 3)  # task 2 only: R[1][2] - R0[2]
    with pytest.raises(ValueError, match="not scored but has scores"):
        RunScores.from_lists(rows, scored=[False, False, True])
    data = {"example_scores": rows, "task_metrics": ["accuracy", None, "accuracy"], "zero_shot_example_scores": None}
    assert RunScores.from_result(data).scored == (True, False, True)


def test_missing_zero_shot_scores_leave_forward_transfer_undefined():
    run = random_run(random.Random(8))
    partial = RunScores(run.example_scores, (run.zero_shot_example_scores[0], None, run.zero_shot_example_scores[2]))
    intervals = bootstrap_metrics([partial], num_resamples=100)
    assert intervals["forward_transfer"] is None and intervals["average_accuracy"] is not None


def test_results_saved_without_scores_have_none():
    """ContinualResult.from_dict fills old results' example_scores with None cells: no scores, not an error."""
    with pytest.raises(MissingExampleScores):
        RunScores.from_result({"example_scores": [[None, None], [None, None]], "accuracy_matrix": [[1, 0], [1, 1]]})
    with pytest.raises(MissingExampleScores):
        RunScores.from_result({"example_scores": [], "accuracy_matrix": [[1.0]]})


def test_forgetting_takes_the_maximum_over_evaluated_cells_only():
    """Only the diagonal and the last row evaluated (ContinualTrainer's evaluate_seen="needed")."""
    rows = [[[1.0, 1.0], None, None], [None, [1.0, 0.0], None], [[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]]
    intervals = bootstrap_metrics([RunScores.from_lists(rows)], num_resamples=50)
    assert intervals["forgetting"].estimate == pytest.approx(((1.0 - 0.5) + (0.5 - 0.0)) / 2)
    assert intervals["backward_transfer"].estimate == pytest.approx(-0.5)
