"""Retention tasks: what a continual run does to the model beyond its tasks, on the base and after every task.

Users of instruct models ask first whether their chat model is still a good chat model, and a score matrix of the
trained tasks cannot say it: a model can keep every task and answer "What is the capital of Australia?" with a
task label. A retention task is never trained; it is scored on the base model (adapters disabled, before the first
task) and after every task, and kept apart from the task matrix in ``ContinualResult.retention``: one
:class:`RetentionTrack` per measure, T + 1 scores with their per-example scores, whose drift from the base comes
with a paired interval over the items. Three sources (:func:`build_retention_sources`):

* a :class:`~peft_continual.ContinualTask` with an evaluation split (a held-out classification or generation set),
  scored by its own metric under the run's primary protocol;
* ``"general"`` (or ``"general:N"``, N items a part): the quick form of the built-in suite of
  :mod:`peft_continual.general_ability` (facts, leak of task labels, KL from the base and token agreement);
  ``"general:full"``: the whole suite, instructions with verifiable constraints included;
* ``"lm_eval:TASK[,TASK]"``: lm-evaluation-harness tasks on the model in memory (:mod:`peft_continual.lm_eval_bridge`).
"""

from __future__ import annotations

import abc
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence, Union

from .statistics import Difference, paired_item_difference

GENERAL = "general"
LM_EVAL = "lm_eval:"
# Items a part of the built-in suite in the default "general" spec: a tight interval on KL and agreement, and facts
# to within about +-10 points, at a cost a run can afford after every task (README: the overhead measured on the demo).
GENERAL_DEFAULT_ITEMS = 64


@dataclass
class RetentionTrack:
    """One retention measure: ``scores[0]`` on the base model, ``scores[i]`` after task i (None: not measured).

    ``example_scores`` holds the per-item scores behind each value, for paired intervals against the base;
    ``metric`` names the measure (``"kl"`` is in nats per token, lower is better; the rest are shares in [0, 1]).
    One source can measure several tracks (the general suite: five).
    """

    name: str
    metric: str
    higher_is_better: bool
    scores: list[Optional[float]]
    example_scores: list[Optional[list[float]]]
    source: str = ""  # the retention spec that measures it ("general", a task's name, "lm_eval:...")

    def drift(self, after: int = -1, *, confidence: float = 0.95, num_resamples: int = 2000,
              seed: int = 0) -> Optional[Difference]:  # fmt: skip
        """Score after task ``after`` (default: the last) minus the base's, paired over items, with a bootstrap
        interval; None when either was not measured."""
        base, later = self.example_scores[0], self.example_scores[after] if len(self.example_scores) > 1 else None
        if base is None or later is None or len(base) != len(later) or not base:
            return None
        return paired_item_difference(later, base, confidence=confidence, num_resamples=num_resamples, seed=seed)

    def summary(self) -> dict[str, Any]:
        """Base, final score, and the final drift with its 95 % interval (what logs, cards and JSON show)."""
        difference = self.drift()
        return {
            "metric": self.metric, "higher_is_better": self.higher_is_better, "base": self.scores[0],
            "final": self.scores[-1] if len(self.scores) > 1 else None,
            "drift": None if difference is None else {"estimate": difference.estimate, "low": difference.low,
                                                       "high": difference.high, "p_value": difference.p_value},
        }  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RetentionTrack":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def format_value(track: RetentionTrack, value: Optional[float], signed: bool = False) -> str:
    """A score as points (KL: nats)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if track.metric == "kl":
        return f"{value:+.3f}" if signed else f"{value:.3f}"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def format_change(track: RetentionTrack) -> str:
    """"-4.0 [-9.0, +1.0]": the final drift from the base with its 95 % interval ("-" when not measured)."""
    difference = track.drift()
    if difference is None:
        return "-"
    return (f"{format_value(track, difference.estimate, True)} [{format_value(track, difference.low, True)}, "
            f"{format_value(track, difference.high, True)}]")  # fmt: skip


def format_drift(track: RetentionTrack) -> str:
    """"41.0 (base 45.0, -4.0 [-9.0, +1.0])": the final score, the base's, the change with its interval."""
    return f"{format_value(track, track.scores[-1])} (base {format_value(track, track.scores[0])}, {format_change(track)})"


# ----------------------------------------------------------------------------------------------- sources


@dataclass
class Measure:
    """What one source returns per measure at one evaluation."""

    metric: str
    higher_is_better: bool
    example_scores: Optional[list[float]]  # None: not measurable at this point (KL after a merge, without a saved top-k)


class RetentionSource(abc.ABC):
    """One retention spec; ``measure`` scores the model as the trainer set it up (base or current adapters)."""

    name: str

    @abc.abstractmethod
    def measure(self, trainer, *, base: bool, stage: str) -> dict[str, Measure]:
        """``{track name: Measure}``; ``base``: the adapters are disabled (the first row)."""

    def spec(self, include_data: bool = True) -> Union[str, dict]:
        """How a saved run names this source (rebuilt by :func:`build_retention_sources`); ``include_data=False``
        leaves out a held-out task's rows (uploads)."""
        return self.name

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class TaskRetention(RetentionSource):
    """A held-out task, scored by its own metric under the run's primary protocol."""

    def __init__(self, task):
        self.task = task
        self.name = task.name

    def measure(self, trainer, *, base, stage):
        evaluation = trainer._cl_evaluate_task(trainer.peft_model, self.task, f"{stage}/retention")[trainer.evaluation_method]
        return {self.name: Measure(self.task.metric, True, evaluation.example_scores)}

    def spec(self, include_data: bool = True):
        from .persistence import task_to_dict

        return {"task": task_to_dict(self.task, include_data)}


class GeneralRetention(RetentionSource):
    """The built-in general-ability suite; the base's report is kept as the reference for KL and agreement.

    ``"general"`` and ``"general:N"`` are the quick form, cheap enough for every task: facts (16-token answers) and
    chat prompts (the base's 32-token answers, on which KL and token agreement are teacher-forced; 8-token answers
    of the tuned model for the leak check, which reads an answer's start). ``"general:full"`` is the whole suite,
    instructions with verifiable constraints included (64-token answers, the dominant cost), as
    :func:`evaluate_general_ability` runs it. The suite's prompts are short, so it runs in batches of at least
    ``SHORT_PROMPT_BATCH`` whatever the tasks' evaluation batch.
    """

    QUICK = {"parts": ("facts", "chat"), "max_new_tokens": 32, "short_answer_tokens": 16, "leak_answer_tokens": 8}

    def __init__(self, limit: Optional[int]):
        self.limit = limit
        self.name = GENERAL if limit == GENERAL_DEFAULT_ITEMS else f"{GENERAL}:{limit or 'full'}"
        self.options = {} if limit is None else self.QUICK
        self.reference = None  # the base's GeneralAbilityReport, from the first measurement or a saved run

    def measure(self, trainer, *, base, stage):
        from .general_ability import SHORT_PROMPT_BATCH, evaluate_general_ability

        labels = sorted({label for task in trainer.tasks for label in task.labels})
        options = {"limit": self.limit, "chat_template": "on" if trainer.chat else "off", "labels": labels,
                   "batch_size": max(trainer.args.per_device_eval_batch_size, SHORT_PROMPT_BATCH), **self.options}  # fmt: skip
        model, tokenizer = trainer.peft_model, trainer.processing_class
        if base:  # the trainer has disabled the adapters: this is the base model
            self.reference = report = evaluate_general_ability(model, tokenizer, **options)
            report.kl, report.agreement = [0.0] * len(report.chat_answer_ids), [1.0] * len(report.chat_answer_ids)
        else:
            report = evaluate_general_ability(model, tokenizer, reference=self.reference,
                                              measure_drift=trainer._cl_base_intact(), **options)  # fmt: skip
        lower_is_better = {"leak", "kl"}
        return {f"{GENERAL}/{part}": Measure(part, part not in lower_is_better, getattr(report, part))
                for part in report.PARTS if part in report.scores() or part in ("kl", "agreement")}  # fmt: skip

    def state_dict(self):
        return {"reference": None if self.reference is None else self.reference.to_dict()}

    def load_state_dict(self, state):
        from .general_ability import GeneralAbilityReport

        self.reference = state.get("reference") and GeneralAbilityReport.from_dict(state["reference"])


class LmEvalRetention(RetentionSource):
    """lm-evaluation-harness tasks on the model in memory; one track per task, on its first per-example metric."""

    def __init__(self, tasks: list[str], include_path=None, limit=None):
        if include_path is not None:  # as text: a saved run records it in JSON
            include_path = str(include_path) if isinstance(include_path, (str, os.PathLike)) else [str(p) for p in include_path]
        self.tasks, self.include_path, self.limit = tasks, include_path, limit
        self.name = LM_EVAL + ",".join(tasks)

    def measure(self, trainer, *, base, stage):
        from .lm_eval_bridge import lm_eval_scores

        scores = lm_eval_scores(trainer.peft_model, trainer.processing_class, self.tasks, include_path=self.include_path,
                                limit=self.limit, batch_size=trainer.args.per_device_eval_batch_size)  # fmt: skip
        out = {}
        for task, result in scores.items():
            if not result["per_example"]:
                continue  # a corpus-level metric only: no item scores to pair
            key = next(iter(result["per_example"]))  # e.g. "acc,none"
            metric = key.split(",")[0]
            higher = bool(result["higher_is_better"].get(metric, True))
            out[f"{LM_EVAL}{task}/{key}"] = Measure(metric, higher, result["per_example"][key])
        return out

    def spec(self, include_data: bool = True):
        """An upload names no local folder (include path): it serves inference, a local save continues the run."""
        include_path = self.include_path if include_data else None
        return {"lm_eval": self.tasks, "include_path": include_path, "limit": self.limit}


def _general_limit(spec: str) -> Optional[int]:
    option = spec[len(GENERAL) + 1 :] if spec != GENERAL else str(GENERAL_DEFAULT_ITEMS)
    if option == "full":
        return None
    if not option.isdigit() or int(option) <= 0:
        raise ValueError(f"retention spec {spec!r}: write 'general' ({GENERAL_DEFAULT_ITEMS} items a part), "
                         "'general:N' (N items a part) or 'general:full'")  # fmt: skip
    return int(option)


def build_retention_sources(specs: Sequence, *, lm_eval_include_path=None, lm_eval_limit=None) -> list[RetentionSource]:
    """The sources of ``specs``: ``ContinualTask`` objects (evaluation split only), ``"general[:N|full]"``,
    ``"lm_eval:TASK[,TASK]"``, the dicts a saved run holds, or sources built before (kept as they are). Everything is
    checked here, before any training: an unknown suite, lm-eval missing, an unknown lm-eval task or include path,
    duplicate names."""
    from .persistence import task_from_dict
    from .tasks import ContinualTask

    sources: list[RetentionSource] = []
    for spec in specs:
        if isinstance(spec, RetentionSource):  # built before (runs on the same base share what they kept of it)
            sources.append(spec)
        elif isinstance(spec, ContinualTask):
            sources.append(TaskRetention(spec))
        elif isinstance(spec, dict) and "task" in spec:
            sources.append(TaskRetention(task_from_dict(spec["task"])))
        elif isinstance(spec, dict) and "lm_eval" in spec:
            sources.append(LmEvalRetention(list(spec["lm_eval"]), spec.get("include_path"), spec.get("limit")))
        elif isinstance(spec, str) and (spec == GENERAL or spec.startswith(GENERAL + ":")):
            sources.append(GeneralRetention(_general_limit(spec)))
        elif isinstance(spec, str) and spec.startswith(LM_EVAL):
            tasks = [t.strip() for t in spec[len(LM_EVAL) :].split(",") if t.strip()]
            sources.append(LmEvalRetention(tasks, lm_eval_include_path, lm_eval_limit))
        else:
            raise ValueError(
                f"unknown retention task {spec!r}: pass a ContinualTask (its evaluation split is scored), 'general' "
                "(the built-in general-ability suite; 'general:N' or 'general:full' for its size) or "
                "'lm_eval:TASK[,TASK]' (lm-evaluation-harness tasks)"
            )
    for source in sources:
        if isinstance(source, LmEvalRetention):
            from .lm_eval_bridge import check_tasks

            check_tasks(source.tasks, source.include_path)
    names = [s.name for s in sources]
    if len(set(names)) != len(names) or sum(isinstance(s, GeneralRetention) for s in sources) > 1:
        raise ValueError(f"retention tasks must have distinct names, and the general suite can be given once: got {names}")
    return sources
