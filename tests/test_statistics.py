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


@pytest.mark.parametrize("ids", [None, (["a0", "a1"], ["b0", "b1"])], ids=["positions", "disjoint ids"])
def test_seeds_then_examples_matches_exact_enumeration(ids):
    """Two seeds of a one-task run: seeds drawn with replacement, every seed's examples drawn once per replicate,
    enumerated. Without ids the two equal-sized test sets are taken to be one: a single draw serves both seeds."""
    seeds = [[0.0, 1.0], [1.0, 1.0]]
    runs = [RunScores.from_lists([[scores]], example_ids=ids and [ids[s]]) for s, scores in enumerate(seeds)]
    exact = Counter()
    for picked in itertools.product(range(2), repeat=2):
        for draws in itertools.product(itertools.product(range(2), repeat=2), repeat=2):  # draws[s]: seed s's examples
            means = [np.mean([seeds[s][k] for k in draws[s if ids else 0]]) for s in picked]
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


# ------------------------------------------------------------------------ examples shared by runs (example_ids)


def named(run: RunScores, prefix: str = "") -> RunScores:
    """The run with ids naming its examples by task and position (``prefix`` tells test sets apart)."""
    ids = [[f"{prefix}{j}:{i}" for i in range(run.num_examples(j))] if run.scored[j] else None
           for j in range(run.num_tasks)]  # fmt: skip
    return RunScores(run.example_scores, run.zero_shot_example_scores, run.scored, tuple(ids))


def permuted(run: RunScores, seed: int) -> RunScores:
    """The same examples, scores and ids of a named run, listed in another order in every task."""
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(run.num_examples(j)) for j in range(run.num_tasks)]

    def cell(values, j):
        return None if values is None else values[orders[j]]

    zero = run.zero_shot_example_scores
    return RunScores(tuple(tuple(cell(c, j) for j, c in enumerate(row)) for row in run.example_scores),
                     None if zero is None else tuple(cell(c, j) for j, c in enumerate(zero)), run.scored,
                     tuple(tuple(np.array(ids)[orders[j]]) for j, ids in enumerate(run.example_ids)))  # fmt: skip


def assert_same_intervals(a: dict, b: dict):
    for m in METRICS:
        assert (a[m].estimate, a[m].low, a[m].high) == pytest.approx((b[m].estimate, b[m].low, b[m].high), rel=1e-9), m


def test_seeds_sharing_one_test_set_have_the_interval_of_one_seed():
    """Three identical seeds on one test set carry no more information than one: same draws, same interval.

    Drawing each seed's examples independently made this interval about 1.7 times narrower."""
    run = random_run(random.Random(10), n=40)
    one = bootstrap_metrics([run], seed=3)
    assert_same_intervals(bootstrap_metrics([run] * 3, seed=3), one)  # no ids: equal-sized test sets share positions
    # with ids, matched by identity whatever the order the runs list their examples in
    assert_same_intervals(bootstrap_metrics([named(run), permuted(named(run), 1), permuted(named(run), 2)], seed=3), one)
    assert_same_intervals(bootstrap_metrics([[named(run)], [permuted(named(run), 3)]], seed=3), one)  # strata too


def width(interval) -> float:
    return interval.high - interval.low


def test_disjoint_test_sets_are_resampled_independently():
    """One score vector on 3 test sets: disjoint ids average out the example noise, shared ids do not."""
    scores = (np.random.default_rng(2).random(300) < 0.5).astype(float)

    def run(ids):
        return RunScores.from_lists([[scores]], example_ids=None if ids is None else [[f"{ids}:{i}" for i in range(300)]])

    def aa(runs):
        return bootstrap_metrics(runs, num_resamples=4000, seed=4)["average_accuracy"]

    single = width(aa([run("a")]))
    # strata are never resampled: 3 independent test sets of n examples are one of 3n, the interval sqrt(3) narrower
    assert single / width(aa([[run("a")], [run("b")], [run("c")]])) == pytest.approx(np.sqrt(3), rel=0.08)
    assert single / width(aa([[run(None)], [run(None)], [run(None)]])) == pytest.approx(np.sqrt(3), rel=0.08)  # no ids
    assert width(aa([[run("a")], [run("a")], [run("a")]])) == pytest.approx(single, rel=1e-9)
    # seeds are: a replicate draws seed s c_s times (multinomial), each with its one draw of examples, so the
    # variance is E[sum c_s^2] / 9 = 5/9 of one test set's, the width sqrt(9/5) narrower
    assert single / width(aa([run("a"), run("b"), run("c")])) == pytest.approx(np.sqrt(9 / 5), rel=0.08)
    assert width(aa([run("a"), run("a"), run("a")])) == pytest.approx(single, rel=1e-9)


def test_partial_overlap_matches_exact_enumeration():
    """Seed 0 scores examples x, y; seed 1 scores y, z (listed z, y). A replicate draws 3 times from {x, y, z},
    again when a seed drew none of its own, then 2 seeds with replacement; each seed averages its drawn examples."""
    runs = [RunScores.from_lists([[[1.0, 0.0]]], example_ids=[["x", "y"]]),
            RunScores.from_lists([[[0.0, 1.0]]], example_ids=[["z", "y"]])]  # fmt: skip
    scores = [{"x": 1.0, "y": 0.0}, {"z": 0.0, "y": 1.0}]
    kept = [Counter(d) for d in itertools.product("xyz", repeat=3)]
    kept = [c for c in kept if all(sum(c[e] for e in s) for s in scores)]  # all x or all z: drawn again
    exact = Counter()
    for counts in kept:
        means = [sum(counts[e] * v for e, v in s.items()) / sum(counts[e] for e in s) for s in scores]
        for picked in itertools.product(range(2), repeat=2):
            exact[round(float(np.mean([means[s] for s in picked])), 9)] += 1 / (len(kept) * 4)
    replicates = bootstrap_replicates([[(r,) for r in runs]], num_resamples=40000, seed=6)
    assert_distribution(replicates["average_accuracy"][0], exact, tol=0.01)


def naive_bootstrap(strata: list[list[dict]], B: int, rng: random.Random) -> dict[str, np.ndarray]:
    """A loop over replicates: every task's union of ids drawn with replacement once per replicate (again while a
    run draws none of its own examples), then seeds per stratum; metrics by ContinualResult. Runs are dicts of
    ``rows`` (cells: {id: score}) and ``zero`` (as ``rows``' cells), T tasks complete, every cell evaluated."""
    runs = [run for stratum in strata for run in stratum]
    T = len(runs[0]["rows"])
    unions = [sorted({e for run in runs for e in run["rows"][-1][j]}) for j in range(T)]
    out = {m: [] for m in METRICS}
    for _ in range(B):
        counts = []
        for j, union in enumerate(unions):
            while True:
                c = Counter(rng.choice(union) for _ in union)
                if all(sum(c[e] for e in run["rows"][-1][j]) for run in runs):
                    break
            counts.append(c)

        def mean(cell, j):
            return None if cell is None else sum(counts[j][e] * v for e, v in cell.items()) / sum(counts[j][e] for e in cell)

        def summary(run):
            matrix = [[mean(cell, j) for j, cell in enumerate(row)] for row in run["rows"]]
            zero = [mean(cell, j) for j, cell in enumerate(run["zero"])]
            return ContinualResult(task_names=[str(j) for j in range(T)], accuracy_matrix=matrix, zero_shot=zero).summary()

        per_stratum = []
        for stratum in strata:
            drawn = [summary(rng.choice(stratum)) for _ in stratum]
            per_stratum.append({m: np.mean([d[m] for d in drawn]) for m in METRICS})
        for m in METRICS:
            out[m].append(np.mean([s[m] for s in per_stratum]))
    return {m: np.array(v) for m, v in out.items()}


def test_partial_overlap_matches_a_naive_bootstrap():
    """Two orders (3 and 2 seeds), every seed with its own 14 of a task's 20 examples, easy or hard for all of them:
    the vectorised bootstrap and a loop over replicates agree in distribution."""
    rng, T = random.Random(11), 2
    pools = [[f"t{j}-{i}" for i in range(20)] for j in range(T)]
    easy = {e: rng.random() < 0.5 for pool in pools for e in pool}

    def make():
        ids = [rng.sample(pool, 14) for pool in pools]
        cells = [[{e: float(rng.random() < (0.8 if easy[e] else 0.1) + 0.1 * (i - j)) for e in ids[j]} for j in range(T)]
                 for i in range(T)]  # fmt: skip
        zero = [{e: float(rng.random() < 0.3 * easy[e]) for e in ids[j]} for j in range(T)]
        return {"rows": cells, "zero": zero, "ids": ids}

    strata = [[make() for _ in range(3)], [make() for _ in range(2)]]

    def as_run(run):
        return RunScores.from_lists([[list(cell.values()) for cell in row] for row in run["rows"]],
                                    [list(cell.values()) for cell in run["zero"]], example_ids=run["ids"])  # fmt: skip

    fast = bootstrap_replicates([[(as_run(r),) for r in stratum] for stratum in strata], num_resamples=4000, seed=12)
    slow = naive_bootstrap(strata, 2000, random.Random(13))
    for m in METRICS:
        f, s = fast[m][0], slow[m]
        assert np.mean(f) == pytest.approx(np.mean(s), abs=0.1 * np.std(s)), m
        assert np.std(f) == pytest.approx(np.std(s), rel=0.06), m
        assert np.quantile(f, [0.025, 0.975]) == pytest.approx(np.quantile(s, [0.025, 0.975]), abs=0.3 * np.std(s)), m


def shifted_named(run: RunScores, c: float) -> RunScores:
    """``shifted`` keeping the run's ids."""
    moved = shifted(run, c)
    return RunScores(moved.example_scores, moved.zero_shot_example_scores, run.scored, run.example_ids)


def test_paired_comparison_matches_examples_by_id():
    """A run against its own shift, listed in another order: paired by identity, the difference is exact."""
    b = named(random_run(random.Random(14), n=30))
    a = permuted(shifted_named(b, 0.05), 5)
    d = paired_comparison([a, a], [b, b], num_resamples=500)["average_accuracy"]
    assert (d.estimate, d.low, d.high) == pytest.approx((0.05, 0.05, 0.05))
    with pytest.raises(ValueError, match="test examples"):
        paired_comparison([named(b, "other")], [b])


def test_bad_example_ids_are_refused():
    rows = [[[1.0, 0.0, 1.0], None], [[1.0, 1.0, 0.0], [1.0, 0.0]]]
    with pytest.raises(ValueError, match="task 0: 2 example ids for 3 examples"):
        RunScores.from_lists(rows, example_ids=[["a", "b"], ["c", "d"]])
    with pytest.raises(ValueError, match="task 1: 0 example ids for 2 examples"):
        RunScores.from_lists(rows, example_ids=[["a", "b", "c"], None])
    with pytest.raises(ValueError, match="example_ids has 1 entries for 2 tasks"):
        RunScores.from_lists(rows, example_ids=[["a", "b", "c"]])
    unscored = RunScores.from_lists([[[1.0], None]], scored=[True, False], example_ids=[["a"], ["b", "c"]])
    assert unscored.example_ids == (("a",), None)  # a task the protocol cannot score keeps no ids
    with pytest.raises(ValueError, match="some runs carry example_ids and some do not"):
        bootstrap_metrics([RunScores.from_lists(rows, example_ids=[["a", "b", "c"], ["d", "e"]]),
                           RunScores.from_lists(rows)])  # fmt: skip


def test_from_result_reads_example_ids_shared_by_protocols():
    rows = [[[1, 0], None], [[1, 1], [0, 0, 1]]]
    ids = [["a", "b"], ["c", "d", "e"]]
    secondary = {"rank": {"example_scores": rows, "example_ids": None}}
    data = {"example_scores": rows, "example_ids": ids, "secondary": secondary}
    assert RunScores.from_result(data).example_ids == (("a", "b"), ("c", "d", "e"))
    assert RunScores.from_result({"result": data}, protocol="rank").example_ids == (("a", "b"), ("c", "d", "e"))
    assert RunScores.from_result({"example_scores": rows}).example_ids is None  # saved before ids were recorded
    result = ContinualResult(task_names=["a", "b"], accuracy_matrix=[[0.5, None], [1.0, 1 / 3]],
                             example_scores=rows, example_ids=ids)  # fmt: skip
    assert RunScores.from_result(ContinualResult.from_json(result.to_json()).to_dict()).example_ids[1] == ("c", "d", "e")


def test_paired_item_difference_matches_a_naive_bootstrap_over_items():
    """Same draws as indexing the differences directly (B x n indices): the count matrix is only a faster form."""
    from peft_continual.statistics import paired_item_difference

    rng = np.random.default_rng(3)
    a, b = rng.random(37), rng.random(37)
    got = paired_item_difference(a, b, num_resamples=500, seed=11)
    diff = a - b
    means = diff[np.random.default_rng(11).integers(0, 37, size=(500, 37))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    p_value = min(1.0, 2 * min(np.mean(means <= 0), np.mean(means >= 0)))
    assert got.estimate == pytest.approx(diff.mean()) and (got.low, got.high) == pytest.approx((low, high))
    assert got.p_value == pytest.approx(p_value)
    constant = paired_item_difference([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert (constant.estimate, constant.low, constant.high, constant.significant) == (0.5, 0.5, 0.5, True)


def test_paired_item_difference_over_seeds_draws_items_once_then_seeds():
    """Seeds x shared items, against a naive loop: each replicate draws the items (the same for every seed), then
    the seeds with replacement; one seed is the plain paired bootstrap over items."""
    from peft_continual.statistics import paired_item_difference

    rng = np.random.default_rng(5)
    a, b = rng.random((3, 20)), rng.random((3, 20)) + np.array([[0.0], [0.5], [1.0]])  # seeds differ a lot
    got = paired_item_difference(a, b, num_resamples=400, seed=2)
    draws, means = np.random.default_rng(2), []
    items = draws.integers(0, 20, size=(400, 20))
    seeds = draws.integers(0, 3, size=(400, 3))
    for r in range(400):
        means.append(np.mean([(a[s, items[r]] - b[s, items[r]]).mean() for s in seeds[r]]))
    low, high = np.quantile(means, [0.025, 0.975])
    assert got.estimate == pytest.approx((a - b).mean()) and (got.low, got.high) == pytest.approx((low, high))
    one_seed = paired_item_difference(a[:1], b[:1], num_resamples=400, seed=2)
    assert one_seed == paired_item_difference(a[0], b[0], num_resamples=400, seed=2)
    assert got.high - got.low > 2 * (one_seed.high - one_seed.low)  # the seeds' spread is in it
