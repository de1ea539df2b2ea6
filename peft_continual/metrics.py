"""Continual-learning metrics over the score matrix R, where R[i][j] is the score on task j after task i.

Each task has its own metric (accuracy, exact match, F1, ROUGE-L, edit similarity; all in [0, 1]), named in
``task_metrics``; the matrix keeps its historical name ``accuracy_matrix`` (``score_matrix`` is an alias).

Definitions (per task, i.e. macro; 0-based indices, T tasks trained so far):

* average accuracy  AA  = mean_j R[T-1][j]
* backward transfer BWT = mean_{j<T-1} (R[T-1][j] - R[j][j])   (per task: ``task_backward_transfer``)
* forward transfer  FWT = mean_{j>0} (R[j-1][j] - R0[j]), R0 = the base model's zero-shot accuracy
* forgetting        F   = mean_{j<T-1} (max_{l<T-1} R[l][j] - R[T-1][j])

R[i][j] for j < i (earlier tasks before the last row) is only known with ``evaluate_seen="all"``; forgetting
takes its maximum over the evaluated cells. R[i][j] for j > i is only known when tasks are evaluated before they are trained (``evaluate_unseen``); FWT
needs R[j-1][j] (``evaluate_unseen="next"`` is enough) and R0, and is ``None`` otherwise. BWT and forgetting are ``None`` for a single task.
A task a protocol cannot score (a generation task under label ranking, in a secondary protocol) has no scores and
is left out of the means.

Per-example scores are kept beside each cell (``example_scores``, same shape as R, ``None`` where not evaluated)
for bootstrap intervals and paired comparisons; ``secondary`` holds the same result for every further protocol.
``example_ids[j]`` names task j's test examples (one id each, in the order of its cells' scores; ``None`` for a task
without ids, and for the whole field in results saved before it), so that the bootstrap resamples an example that
several runs score (a fixed test set) once for all of them; secondary results share the primary one's ids.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from .retention import RetentionTrack, format_drift


def _mean(values: list[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _diff(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b


@dataclass
class ContinualResult:
    task_names: list[str] = field(default_factory=list)
    accuracy_matrix: list[list[Optional[float]]] = field(default_factory=list)
    zero_shot: Optional[list[float]] = None
    evaluation_method: str = "rank"
    method: str = ""
    details: list[dict[str, Any]] = field(default_factory=list)
    collision: Optional[dict[str, Any]] = None
    task_metrics: list[Optional[str]] = field(default_factory=list)  # None: this protocol cannot score the task
    example_scores: list[list[Optional[list[float]]]] = field(default_factory=list)
    zero_shot_example_scores: Optional[list[Optional[list[float]]]] = None
    example_ids: Optional[list[Optional[list[str]]]] = None  # per task, one id per test example
    secondary: dict[str, "ContinualResult"] = field(default_factory=dict)
    # Never-trained tasks scored on the base and after every task (ContinualTrainer(retention_tasks=...)), by name.
    retention: dict[str, RetentionTrack] = field(default_factory=dict)
    task_aware: bool = False  # the method keeps each task's model (task adapters): see task_aware_accuracy

    @property
    def score_matrix(self) -> list[list[Optional[float]]]:
        return self.accuracy_matrix

    def by_protocol(self) -> dict[str, "ContinualResult"]:
        """This result and every secondary one, by scoring protocol (this one first)."""
        return {self.evaluation_method: self, **self.secondary}

    @property
    def num_trained(self) -> int:
        return len(self.accuracy_matrix)

    def _final(self) -> Optional[list[Optional[float]]]:
        """The last row over the trained tasks; None while it is incomplete (in the middle of a run that evaluates
        only the task just trained, see ``ContinualTrainer(evaluate_seen=...)``). Unscored tasks stay None in it."""
        if not self.accuracy_matrix:
            raise ValueError("no task has been trained yet")
        final = self.accuracy_matrix[-1][: self.num_trained]
        return None if any(a is None for j, a in enumerate(final) if self._scored(j)) else final

    @property
    def average_accuracy(self) -> Optional[float]:
        final = self._final()
        return None if final is None else _mean(final)

    @property
    def task_backward_transfer(self) -> Optional[list[Optional[float]]]:
        """R[T-1][j] - R[j][j] for each earlier task j: what the later tasks did to it (None where not scored)."""
        R, T, final = self.accuracy_matrix, self.num_trained, self._final()
        return None if final is None else [_diff(final[j], R[j][j]) for j in range(T - 1)]

    @property
    def backward_transfer(self) -> Optional[float]:
        per_task = self.task_backward_transfer
        return None if per_task is None else _mean(per_task)

    @property
    def forgetting(self) -> Optional[float]:
        R, T, final = self.accuracy_matrix, self.num_trained, self._final()
        if final is None:
            return None
        return _mean([max(R[l][j] for l in range(j, T - 1) if R[l][j] is not None) - final[j] for j in range(T - 1) if self._scored(j)])

    @property
    def forward_transfer(self) -> Optional[float]:
        R, T = self.accuracy_matrix, self.num_trained
        scored = [j for j in range(1, T) if self._scored(j)]
        if self.zero_shot is None or not scored or any(R[j - 1][j] is None or self.zero_shot[j] is None for j in scored):
            return None
        return _mean([R[j - 1][j] - self.zero_shot[j] for j in scored])

    def _scored(self, j: int) -> bool:
        return not self.task_metrics or self.task_metrics[j] is not None

    @property
    def task_aware_accuracy(self) -> Optional[float]:
        """Mean over tasks of R[j][j]: each task served by the model as it was right after it was trained, which a
        task-adapter method keeps exactly (its adapters up to the task's own, exported under ``task_aware/``) for
        users who know the task at inference. Its own protocol, never to be compared with the task-agnostic AA."""
        if not self.task_aware or not self.accuracy_matrix:
            return None
        return _mean([self.accuracy_matrix[j][j] for j in range(self.num_trained) if self._scored(j)])

    def summary(self) -> dict[str, Optional[float]]:
        return {
            "average_accuracy": self.average_accuracy,
            "backward_transfer": self.backward_transfer,
            "forward_transfer": self.forward_transfer,
            "forgetting": self.forgetting,
        }

    # ------------------------------------------------------------------------------------ (de)serialising

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["secondary"] = {name: result.to_dict() for name, result in self.secondary.items()}
        data["retention"] = {name: track.to_dict() for name, track in self.retention.items()}
        return {**data, **self.summary(), "task_aware_accuracy": self.task_aware_accuracy}

    def to_json(self, path: Optional[str] = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            from .io_utils import atomic_write_text

            atomic_write_text(path, text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ContinualResult":
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        fields["secondary"] = {name: cls.from_dict(sub) for name, sub in (fields.get("secondary") or {}).items()}
        fields["retention"] = {name: RetentionTrack.from_dict(t) for name, t in (fields.get("retention") or {}).items()}
        result = cls(**fields)
        # Results saved before per-task metrics and per-example scores: accuracy everywhere, no example scores.
        if not result.task_metrics:
            result.task_metrics = ["accuracy"] * len(result.task_names)
        if not result.example_scores:
            result.example_scores = [[None] * len(row) for row in result.accuracy_matrix]
        if result.zero_shot is not None and result.zero_shot_example_scores is None:
            result.zero_shot_example_scores = [None] * len(result.zero_shot)
        result.validate()
        return result

    @classmethod
    def from_json(cls, text_or_path: str) -> "ContinualResult":
        text = text_or_path
        if not text_or_path.lstrip().startswith("{"):
            with open(text_or_path, encoding="utf-8") as f:
                text = f.read()
        return cls.from_dict(json.loads(text))

    def validate(self) -> None:
        """Reject a matrix that is not square-by-rows, or scores outside [0, 1] (a corrupted state)."""
        T = len(self.task_names)
        if len(self.accuracy_matrix) > T or any(len(row) != T for row in self.accuracy_matrix):
            raise ValueError(f"accuracy_matrix must have at most {T} rows of {T} entries (one per task)")
        if len(self.task_metrics) != T:
            raise ValueError(f"task_metrics must name one metric per task ({T}), got {self.task_metrics!r}")
        if len(self.example_scores) != len(self.accuracy_matrix) or any(len(r) != T for r in self.example_scores):
            raise ValueError("example_scores must have the shape of accuracy_matrix")
        if self.example_ids is not None:
            if len(self.example_ids) != T:
                raise ValueError(f"example_ids must hold one entry per task ({T}), got {len(self.example_ids)}")
            for j, ids in enumerate(self.example_ids):
                cells = [row[j] for row in self.example_scores] + (self.zero_shot_example_scores or [])[j : j + 1]
                lengths = {len(c) for c in cells if c is not None}
                if ids is not None and lengths - {len(ids)}:
                    raise ValueError(f"example_ids[{j}] names {len(ids)} examples, but task {j}'s example_scores "
                                     f"score {sorted(lengths)}")  # fmt: skip
        for i, row in enumerate(self.accuracy_matrix):
            for j, value in enumerate(row):
                needed = j == i and self._scored(j)
                if (needed or value is not None) and (value is None or not 0.0 <= value <= 1.0 or math.isnan(value)):
                    raise ValueError(f"accuracy_matrix[{i}][{j}] = {value!r} is not a score in [0, 1]")

    # ---------------------------------------------------------------------------------------- printing

    def format_table(self) -> str:
        """The score matrix (%) as a text table, rows = after training task i, with the summary below."""
        names = self.task_names
        width = max([len(n) for n in names] + [len(m or "") for m in self.task_metrics] + [8])
        lines = ["after \\ on".ljust(width + 2) + "".join(n[:width].rjust(width + 2) for n in names)]
        if self.task_metrics:
            lines.append("metric".ljust(width + 2) + "".join((m or "-")[:width].rjust(width + 2) for m in self.task_metrics))
        if self.zero_shot is not None:
            cells = ["-" if a is None else f"{100 * a:.1f}" for a in self.zero_shot]
            lines.append("zero-shot".ljust(width + 2) + "".join(c.rjust(width + 2) for c in cells))
        for i, row in enumerate(self.accuracy_matrix):
            cells = ["-" if a is None else f"{100 * a:.1f}" for a in row]
            lines.append(f"{i + 1}:{names[i]}"[: width + 2].ljust(width + 2) + "".join(c.rjust(width + 2) for c in cells))
        s = self.summary()

        def pct(value, signed=True):
            return "n/a" if value is None else f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}%"

        lines.append(
            f"AA {pct(s['average_accuracy'], signed=False)}  BWT {pct(s['backward_transfer'])}  "
            f"FWT {pct(s['forward_transfer'])}  forgetting {pct(s['forgetting'])}  "
            f"({self.evaluation_method} scoring, macro over tasks)"
        )
        if self.task_aware_accuracy is not None:
            lines.append(f"Task-aware average accuracy {pct(self.task_aware_accuracy, signed=False)} (each task served by the adapters up "
                         "to its own, as after its training: for users who know the task at inference; not comparable "
                         "with AA)")  # fmt: skip
        if self.retention:
            lines.append("Retention (never trained; final score, base, change with its 95 % interval over the items):")
            width = max(len(name) for name in self.retention)
            lines += [f"  {name.ljust(width)}  {format_drift(track)}" for name, track in self.retention.items()]
        for name, result in self.secondary.items():
            lines.append(f"\n{name} scoring:\n{result.format_table()}")
        return "\n".join(lines)
