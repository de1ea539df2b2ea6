"""95 % intervals and paired comparisons for the continual-learning metrics, by bootstrap over examples and seeds.

A run's test examples are a sample, and so is its seed: a metric's interval must cover both. The bootstrap here
is hierarchical, as the runs were drawn: within each stratum (e.g. a task order, a fixed design choice that is
never resampled) draw the seeds with replacement, and draw the test examples with replacement. The metric of a
replicate is the mean over its drawn seeds, averaged over strata with equal weight. The interval is the percentile
interval of the replicates; the estimate is the metric on the data as observed.

Examples are resampled by identity, not by position in a run: within a replicate, an example scored by several runs
(seeds, methods, strata sharing a fixed test set) gets one weight, the number of times it was drawn, in all of
them. Drawing a shared test set independently for every seed would count it as several test sets and narrow the
interval (three seeds on one test set: 1.7 times too narrow). For each group of overlapping test sets the union of
their example identities is drawn with replacement (as many draws as identities); runs whose examples are disjoint
are drawn independently. A run averages every cell of its accuracy matrix (and its zero-shot row) over its own
examples with these weights, the same for every row, since every row scores the same test set. So a seed drawn
twice counts its examples' one draw twice, exactly as two seeds on the same test set do (for seeds on disjoint test
sets this is somewhat wider than a fresh draw per copy: one rule for shared, partly shared and disjoint test sets,
erring on the wide side). Where test sets overlap only in part, a replicate that draws none of some run's examples
is drawn again (probability below e^-n for a run of n examples).

Identities are ``example_ids`` (one per test example, e.g. a hash of its prompt and reference), recorded by
:class:`~peft_continual.ContinualResult`; equal ids are one example wherever they occur. Results without them
(saved before they were recorded) are taken, conservatively, to score one test set in one order: within a stratum,
runs whose task has the same number of examples share them position by position, runs of another length are
independent of them, and strata are independent of each other. If such seeds in fact drew different examples,
pairing them by position costs little (unrelated examples add no covariance on average); the opposite assumption,
when wrong, narrows the interval by up to the square root of the number of seeds. Runs with and without ids are
not mixed in one bootstrap.

A paired comparison draws seeds and example weights once for both methods (same seeds, same test examples), so the
noise both share cancels in the difference; the difference is called significant only when its interval
excludes 0. The p-value is the two-sided bootstrap one: twice the share of replicates on the far side of 0.

Inputs are per-example scores (0/1 for exact match or ranking, any float for ROUGE-L and the like), as
:class:`~peft_continual.ContinualResult` records them in ``example_scores`` and ``zero_shot_example_scores``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np

METRICS = ("average_accuracy", "backward_transfer", "forward_transfer", "forgetting")


class MissingExampleScores(ValueError):
    """A result without per-example scores: its metrics have a value but no interval."""


@dataclass(frozen=True)
class RunScores:
    """Per-example scores of one run: ``example_scores[i][j]`` holds task j's test scores after training task i.

    A run is complete (one row per task) or joint (one row scoring every task: the multi-task bound, whose only
    metric is AA). Cells that were not evaluated are ``None``; so is every cell of a task the protocol cannot
    score (``scored[j]`` False, e.g. a generation task under label ranking), which the metrics leave out. Every
    present cell of task j and its zero-shot entry score the same test examples, so they have one length.
    ``example_ids[j]`` names those examples, one id each in the cells' order (``None``: no ids, see the module
    docstring); ids given for a task the protocol cannot score are dropped, as the task is.
    """

    example_scores: tuple[tuple[Optional[np.ndarray], ...], ...]
    zero_shot_example_scores: Optional[tuple[Optional[np.ndarray], ...]] = None
    scored: Optional[tuple[bool, ...]] = None  # None: every task
    example_ids: Optional[tuple[Optional[tuple[str, ...]], ...]] = None

    def __post_init__(self):
        rows, T = len(self.example_scores), len(self.example_scores[0]) if self.example_scores else 0
        if T == 0 or any(len(row) != T for row in self.example_scores):
            raise ValueError("example_scores must be a non-empty list of rows, each with one entry per task")
        if rows not in (1, T):
            raise ValueError(f"example_scores has {rows} rows for {T} tasks: a run must be complete or joint (one row)")
        scored = (True,) * T if self.scored is None else tuple(bool(s) for s in self.scored)
        if len(scored) != T or not any(scored):
            raise ValueError(f"scored must mark {T} tasks, at least one of them scored; got {self.scored!r}")
        object.__setattr__(self, "scored", scored)
        zero = self.zero_shot_example_scores
        if zero is not None and len(zero) != T:
            raise ValueError(f"zero_shot_example_scores has {len(zero)} entries for {T} tasks")
        for j in range(T):
            cells = [row[j] for row in self.example_scores] + [zero[j] if zero is not None else None]
            if not scored[j]:
                if any(c is not None for c in cells):
                    raise ValueError(f"task {j} is marked as not scored but has scores")
                continue
            if self.example_scores[-1][j] is None or (rows == T and self.example_scores[j][j] is None):
                raise ValueError(f"task {j}: the last row and the diagonal of example_scores must score it")
            lengths = {len(c) for c in cells if c is not None}
            if len(lengths) > 1 or 0 in lengths:
                raise ValueError(f"task {j}: cells score {sorted(lengths)} examples; every cell must score the same "
                                 "non-empty test set")  # fmt: skip
        if self.example_ids is not None:
            if len(self.example_ids) != T:
                raise ValueError(f"example_ids has {len(self.example_ids)} entries for {T} tasks")
            ids = tuple(tuple(i) if s and i is not None else None for i, s in zip(self.example_ids, scored))
            for j in range(T):
                if scored[j] and (ids[j] is None or len(ids[j]) != self.num_examples(j)):
                    raise ValueError(f"task {j}: {0 if ids[j] is None else len(ids[j])} example ids for "
                                     f"{self.num_examples(j)} examples; give one id per test example of every scored "
                                     "task")  # fmt: skip
            object.__setattr__(self, "example_ids", ids)

    @classmethod
    def from_lists(cls, example_scores: Sequence[Sequence[Optional[Sequence[float]]]],
                   zero_shot_example_scores: Optional[Sequence[Optional[Sequence[float]]]] = None,
                   scored: Optional[Sequence[bool]] = None,
                   example_ids: Optional[Sequence[Optional[Sequence[str]]]] = None) -> "RunScores":  # fmt: skip
        def cell(values):
            return None if values is None else np.asarray(values, dtype=np.float64)

        zero = None if zero_shot_example_scores is None else tuple(cell(v) for v in zero_shot_example_scores)
        return cls(tuple(tuple(cell(v) for v in row) for row in example_scores), zero,
                   None if scored is None else tuple(scored),
                   None if example_ids is None else tuple(example_ids))  # fmt: skip

    @classmethod
    def from_result(cls, data: dict[str, Any], protocol: Optional[str] = None) -> "RunScores":
        """From a ``ContinualResult.to_dict()`` (or a benchmark JSON carrying one under ``result``).

        ``protocol`` picks a secondary scoring of the same run (``result["secondary"][protocol]``, with its own
        ``example_scores``); ``None`` is the primary one. Tasks whose ``task_metrics`` entry is ``None`` are
        the ones that protocol cannot score. Every protocol scores the same test examples, so a secondary result
        without ``example_ids`` takes the primary one's.
        """
        result = primary = data.get("result", data)
        if protocol is not None:
            secondary = result.get("secondary") or {}
            if protocol not in secondary:
                raise MissingExampleScores(f"no secondary protocol {protocol!r} (have: {sorted(secondary)})")
            result = secondary[protocol]
        rows, metrics = result.get("example_scores"), result.get("task_metrics")
        scored = [m is not None for m in metrics] if metrics else None
        if not rows or all(cell is None for cell in rows[-1]) or (
            scored and any(cell is None for cell, s in zip(rows[-1], scored) if s)
        ):
            raise MissingExampleScores("the result has no per-example scores (example_scores)")
        ids = result.get("example_ids") or primary.get("example_ids")
        return cls.from_lists(rows, result.get("zero_shot_example_scores"), scored, ids)

    @property
    def num_tasks(self) -> int:
        return len(self.example_scores[0])

    def num_examples(self, task: int) -> int:
        """Test examples of a scored task (0 for a task the protocol cannot score)."""
        cell = self.example_scores[-1][task]
        return 0 if cell is None else len(cell)

    def cell_means(self, weights: Optional[Sequence[Optional[np.ndarray]]] = None) -> tuple[list[list], Optional[list]]:
        """Each cell's mean over its examples or, with ``weights[j]`` of shape (B, n_j) (how often each example of
        task j was drawn in each of B resamples), its B weighted means."""
        totals = None if weights is None else [None if w is None else w.sum(axis=-1) for w in weights]

        def mean(scores, j):
            if scores is None:
                return None
            return scores.mean() if weights is None else weights[j] @ scores / totals[j]

        matrix = [[mean(cell, j) for j, cell in enumerate(row)] for row in self.example_scores]
        zero = None
        if self.zero_shot_example_scores is not None:
            zero = [mean(cell, j) for j, cell in enumerate(self.zero_shot_example_scores)]
        return matrix, zero


def metrics_from_matrix(matrix: list[list], zero_shot: Optional[list] = None,
                        scored: Optional[Sequence[bool]] = None) -> dict[str, Any]:  # fmt: skip
    """AA, BWT, FWT and forgetting (the definitions of :mod:`peft_continual.metrics`) over a matrix of cells.

    Cells may be floats or equal-shaped arrays (one value per bootstrap replicate); ``None`` marks a cell not
    evaluated (forgetting takes its maximum over the evaluated cells). Tasks with ``scored[j]`` False are left out
    of every mean. A joint run (one row, several tasks)
    has AA only. A metric whose cells are missing is ``None``.
    """
    T, rows = len(matrix[0]), len(matrix)
    tasks = [j for j in range(T) if scored is None or scored[j]]
    last = matrix[-1]
    out: dict[str, Any] = dict.fromkeys(METRICS)
    out["average_accuracy"] = sum(last[j] for j in tasks) / len(tasks)
    if rows != T:
        return out
    earlier, later = [j for j in tasks if j < T - 1], [j for j in tasks if j > 0]
    if earlier:
        out["backward_transfer"] = sum(last[j] - matrix[j][j] for j in earlier) / len(earlier)
        out["forgetting"] = sum(np.maximum.reduce([matrix[l][j] for l in range(j, T - 1) if matrix[l][j] is not None])
                                - last[j] for j in earlier) / len(earlier)  # fmt: skip
    if zero_shot is not None and later and all(matrix[j - 1][j] is not None and zero_shot[j] is not None for j in later):
        out["forward_transfer"] = sum(matrix[j - 1][j] - zero_shot[j] for j in later) / len(later)
    return out


@dataclass(frozen=True)
class Interval:
    """A metric's estimate on the observed data and its bootstrap interval (same units as the scores)."""

    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class Difference(Interval):
    """Method A minus method B, paired; ``significant`` only when the interval excludes 0."""

    p_value: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


Strata = Union[Sequence["RunScores"], Sequence[Sequence["RunScores"]]]


def _as_strata(runs: Strata) -> list[list[RunScores]]:
    """A flat list of runs is one stratum; a list of lists is one stratum per inner list."""
    if not runs:
        raise ValueError("no runs given")
    strata = [list(runs)] if isinstance(runs[0], RunScores) else [list(s) for s in runs]
    if any(not s for s in strata):
        raise ValueError("every stratum needs at least one run")
    return strata


def _check_runs(paired_strata: Sequence[Sequence[tuple[RunScores, ...]]]) -> None:
    """Runs with and without ids cannot be matched example by example; paired runs must score the same examples."""
    runs = [run for stratum in paired_strata for paired in stratum for run in paired]
    if len({run.example_ids is None for run in runs}) > 1:
        raise ValueError("some runs carry example_ids and some do not: their test examples cannot be matched (results "
                         "saved before ids were recorded); bootstrap them separately or rerun the old ones")  # fmt: skip

    def examples(run: RunScores) -> tuple:
        ids = run.example_ids or (None,) * run.num_tasks
        return (len(run.example_scores), run.scored,
                [(run.num_examples(j), None if i is None else frozenset(i)) for j, i in enumerate(ids)])  # fmt: skip

    for stratum in paired_strata:
        for paired in stratum:
            if any(examples(run) != examples(paired[0]) for run in paired[1:]):
                raise ValueError("paired runs must have the same tasks, rows and test examples per task")


def _counts(rng: np.random.Generator, B: int, n: int) -> np.ndarray:
    """How often each of n items is drawn in each of B resamples of n draws with replacement: shape (B, n)."""
    draws = rng.integers(0, n, size=(B, n)) + n * np.arange(B)[:, None]
    return np.bincount(draws.ravel(), minlength=B * n).reshape(B, n)


def _example_weights(paired_strata: Sequence[Sequence[tuple[RunScores, ...]]], rng: np.random.Generator,
                     B: int) -> dict[tuple[int, int, int, int], np.ndarray]:  # fmt: skip
    """Resampling weights, shape (B, n_j), of every scored task j of every run, keyed (stratum, seed, run, j).

    Tasks whose examples share an identity form one group (union-find); each group draws the union of its
    identities, and a task's example takes its identity's count. Groups are drawn in order of first appearance.
    """
    cells, keys = [], []
    for k, stratum in enumerate(paired_strata):
        for s, paired in enumerate(stratum):
            for p, run in enumerate(paired):
                for j in (j for j in range(run.num_tasks) if run.scored[j]):
                    n = run.num_examples(j)
                    cells.append((k, s, p, j))
                    keys.append(run.example_ids[j] if run.example_ids else [(k, j, n, i) for i in range(n)])
    parent = list(range(len(cells)))  # each group's root is its first cell

    def root(c: int) -> int:
        while parent[c] != c:
            parent[c] = c = parent[parent[c]]
        return c

    owner: dict = {}
    for c, identities in enumerate(keys):
        for key in identities:
            a, b = sorted((root(owner.setdefault(key, c)), root(c)))
            parent[b] = a
    groups = defaultdict(list)
    for c in range(len(cells)):
        groups[root(c)].append(c)
    weights = {}
    for members in groups.values():
        index: dict = {}
        for c in members:
            for key in keys[c]:
                index.setdefault(key, len(index))
        positions = [np.array([index[key] for key in keys[c]], dtype=np.intp) for c in members]
        partial = [pos for pos in positions if len(np.unique(pos)) < len(index)]
        counts = _counts(rng, B, len(index))
        while partial:  # redraw the replicates that miss every example of some task
            missed = np.logical_or.reduce([counts[:, pos].sum(axis=1) == 0 for pos in partial])
            if not missed.any():
                break
            counts[missed] = _counts(rng, int(missed.sum()), len(index))
        for c, pos in zip(members, positions):
            weights[cells[c]] = counts[:, pos].astype(np.float64)
    return weights


def bootstrap_replicates(paired_strata: Sequence[Sequence[tuple[RunScores, ...]]], *, num_resamples: int = 2000,
                         seed: int = 0) -> dict[str, Optional[np.ndarray]]:  # fmt: skip
    """Hierarchical bootstrap replicates of every metric: arrays of shape (runs per tuple, ``num_resamples``).

    ``paired_strata[k][s]`` is a tuple of runs sharing seed s of stratum k (one run per method compared; a single
    method passes 1-tuples). Each replicate draws example weights once, by identity (see the module docstring),
    then seeds with replacement within each stratum; every run of a tuple goes with its seed.
    """
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be positive, got {num_resamples}")
    _check_runs(paired_strata)
    rng, B = np.random.default_rng(seed), num_resamples
    weights = _example_weights(paired_strata, rng, B)
    totals: dict[str, Optional[np.ndarray]] = {}
    for k, stratum in enumerate(paired_strata):
        per_seed = [[metrics_from_matrix(*run.cell_means([weights.get((k, s, p, j)) for j in range(run.num_tasks)]),
                                         run.scored) for p, run in enumerate(paired)]
                    for s, paired in enumerate(stratum)]  # fmt: skip
        picks = rng.integers(0, len(stratum), size=(B, len(stratum)))
        for m in METRICS:  # whether a metric is defined depends on the runs, never on the draw
            if totals.get(m, 0) is None or any(r[m] is None for runs in per_seed for r in runs):
                totals[m] = None
                continue
            values = np.stack([np.stack([r[m] for r in runs]) for runs in per_seed])  # (seeds, runs per tuple, B)
            drawn = values[picks, :, np.arange(B)[:, None]]  # (B, seeds drawn, runs per tuple)
            totals[m] = totals.get(m, 0) + drawn.mean(axis=1).T
    return {m: None if v is None else v / len(paired_strata) for m, v in totals.items()}


def _estimates(paired_strata) -> dict[str, Optional[np.ndarray]]:
    """Each metric on the observed data: mean over seeds within a stratum, then over strata; shape (len,)."""
    out = {}
    for m in METRICS:
        per_stratum = []
        for stratum in paired_strata:
            values = [[metrics_from_matrix(*run.cell_means(), run.scored)[m] for run in runs] for runs in stratum]
            per_stratum.append(None if any(v is None for vs in values for v in vs) else np.mean(values, axis=0))
        out[m] = None if any(v is None for v in per_stratum) else np.mean(per_stratum, axis=0)
    return out


def _check_confidence(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return (1 - confidence) / 2


def _difference(estimate: float, replicates: np.ndarray, tail: float) -> Difference:
    """A difference's percentile interval and two-sided bootstrap p-value from its replicates."""
    low, high = np.quantile(replicates, [tail, 1 - tail])
    p_value = min(1.0, 2 * min(np.mean(replicates <= 0), np.mean(replicates >= 0)))
    return Difference(float(estimate), float(low), float(high), float(p_value))


def paired_item_difference(scores_a: Sequence, scores_b: Sequence, *, confidence: float = 0.95,
                           num_resamples: int = 2000, seed: int = 0) -> Difference:  # fmt: skip
    """Mean of ``scores_a - scores_b`` over items scored by both, with a paired bootstrap.

    One run each: 1-D scores, one per item. Several seeds: rows are seeds (row s of A pairs with row s of B) over
    the same items (e.g. a fixed suite), drawn as this module draws runs on a shared test set: each replicate draws
    the items once for every seed, then the seeds with replacement.
    """
    tail = _check_confidence(confidence)
    diff = np.atleast_2d(np.asarray(scores_a, dtype=np.float64) - np.asarray(scores_b, dtype=np.float64))
    seeds, n = diff.shape
    rng = np.random.default_rng(seed)
    per_seed = _counts(rng, num_resamples, n) @ diff.T / n  # (B, seeds)
    if seeds > 1:
        per_seed = per_seed * _counts(rng, num_resamples, seeds)
    return _difference(diff.mean(), per_seed.mean(axis=1), tail)


def bootstrap_metrics(runs: Strata, *, confidence: float = 0.95, num_resamples: int = 2000,
                      seed: int = 0) -> dict[str, Optional[Interval]]:  # fmt: skip
    """Estimate and interval of AA, BWT, FWT and forgetting for one method (``None`` where a metric is undefined).

    ``runs``: the runs (seeds) of one stratum, or one list of runs per stratum (e.g. per order; strata weigh the
    same). With one seed per stratum the interval covers the test examples only.
    """
    tail = _check_confidence(confidence)
    strata = [[(run,) for run in stratum] for stratum in _as_strata(runs)]
    replicates, estimates = bootstrap_replicates(strata, num_resamples=num_resamples, seed=seed), _estimates(strata)
    out = {}
    for m in METRICS:
        if replicates[m] is None:
            out[m] = None
            continue
        low, high = np.quantile(replicates[m][0], [tail, 1 - tail])
        out[m] = Interval(float(estimates[m][0]), float(low), float(high))
    return out


def paired_comparison(runs_a: Strata, runs_b: Strata, *, confidence: float = 0.95, num_resamples: int = 2000,
                      seed: int = 0) -> dict[str, Optional[Difference]]:  # fmt: skip
    """A minus B for each metric, paired on seeds and test examples: ``runs_a[k][s]`` pairs with ``runs_b[k][s]``.

    Pair only runs that share their seed and test set (same order, same data seed); the function checks that the
    shapes agree and, where runs carry ``example_ids``, that they score the same examples.
    """
    tail = _check_confidence(confidence)
    strata_a, strata_b = _as_strata(runs_a), _as_strata(runs_b)
    if [len(s) for s in strata_a] != [len(s) for s in strata_b]:
        raise ValueError("paired comparison needs the same number of runs per stratum for both methods")
    strata = [list(zip(a, b)) for a, b in zip(strata_a, strata_b)]
    replicates, estimates = bootstrap_replicates(strata, num_resamples=num_resamples, seed=seed), _estimates(strata)
    out = {}
    for m in METRICS:
        if replicates[m] is None:
            out[m] = None
            continue
        out[m] = _difference(estimates[m][0] - estimates[m][1], replicates[m][0] - replicates[m][1], tail)
    return out
