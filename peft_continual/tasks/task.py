"""``ContinualTask``: one task of a sequence, classification or generation, validated when built."""

from __future__ import annotations

import hashlib

from dataclasses import dataclass, field
from typing import Optional, Sequence

import datasets

from ..scoring import CLASSIFICATION_DEFAULT, GENERATION_DEFAULT, check_metric
from .formats import CLASSIFICATION, GENERATION, GENERATION_COLUMNS, TaskSpecError, check_label_options, detect_format
from .prompts import prompt_parts


@dataclass
class ContinualTask:
    """One task of a sequence.

    * classification: rows with ``text`` and ``label``; ``labels`` are the options (shown in the prompt, ranked);
    * generation: rows with ``prompt``, ``completion`` and ``context`` (earlier chat turns, JSON); no ``labels``.

    ``metric`` names how it is scored (see :mod:`peft_continual.scoring`; default accuracy for classification,
    exact match for generation). ``max_new_tokens`` bounds generated answers (default: the longest reference, at least 32 tokens).
    Rows in another format (TRL's ``messages``, Alpaca, other column names): build the task with :meth:`from_dataset`.
    """

    name: str
    train: Optional[datasets.Dataset]  # None for a task restored from a saved run (trained already)
    eval: datasets.Dataset
    labels: list[str] = field(default_factory=list)
    instruction: str = ""
    task_type: Optional[str] = None
    show_options: bool = True
    source: str = field(default="", repr=False)
    kind: str = CLASSIFICATION
    metric: Optional[str] = None
    max_new_tokens: Optional[int] = None

    def __post_init__(self):
        where = self.where
        if not self.name or not isinstance(self.name, str):
            raise TaskSpecError(f"{where}: a task needs a non-empty name")
        if self.kind not in (CLASSIFICATION, GENERATION):
            raise TaskSpecError(f"{where}: kind must be {CLASSIFICATION!r} or {GENERATION!r}, got {self.kind!r}")
        if self.kind == CLASSIFICATION:
            self.labels = check_label_options(self.labels, where)
        elif self.labels:
            raise TaskSpecError(f"{where}: a generation task has no label options, got {self.labels!r}")
        self.metric = check_metric(self.metric or (GENERATION_DEFAULT if self.kind == GENERATION else CLASSIFICATION_DEFAULT), where)
        if self.max_new_tokens is not None and self.max_new_tokens <= 0:
            raise TaskSpecError(f"{where}: max_new_tokens must be positive, got {self.max_new_tokens}")
        for split_name in ("train", "eval"):
            split = getattr(self, split_name)
            if split is None and split_name == "train":
                continue
            if isinstance(split, (list, tuple)):
                split = datasets.Dataset.from_list(list(split)) if split else datasets.Dataset.from_dict({c: [] for c in self.columns})
            if self.kind == GENERATION and "context" not in split.column_names and "prompt" in split.column_names:
                split = split.add_column("context", [""] * len(split))
            setattr(self, split_name, split)
            self._validate(split, f"{where}, {split_name} split")

    @classmethod
    def from_dataset(cls, name: str, dataset: datasets.Dataset | datasets.DatasetDict, **options) -> "ContinualTask":
        """A task from an in-memory dataset, in any row format that :func:`load_continual_tasks` reads from files.

        * a ``datasets.Dataset``: like a single file, a part of its rows (``eval_fraction``) is held out for
          evaluation (logged);
        * a ``datasets.DatasetDict``: a ``train`` split and an evaluation split, ``eval_split`` (default ``test``) or
          else ``eval``/``dev``/``validation``; a split whose labels are hidden (all -1, as GLUE's test splits) is
          skipped for a labelled one, with a warning. With only ``train``, a part of it is held out.

        ``options``: ``kind``, ``text_column``, ``label_column``, ``prompt_column``, ``completion_column``,
        ``instruction``, ``eval_split``, ``eval_fraction``, ``seed``, as for :func:`load_continual_tasks`.
        Integer labels of a ``ClassLabel`` column become its names.
        """
        from .sources import task_from_dataset  # sources builds tasks with this class: imported on use

        return task_from_dataset(name, dataset, **options)

    @property
    def where(self) -> str:
        return f"task {self.name!r}" + (f" ({self.source})" if self.source and self.source != self.name else "")

    @property
    def columns(self) -> tuple[str, ...]:
        return GENERATION_COLUMNS if self.kind == GENERATION else ("text", "label")

    def _validate(self, split: datasets.Dataset, where: str) -> None:
        missing = set(self.columns) - set(split.column_names)
        if missing:
            if {"prompt", "completion"} <= set(split.column_names) and self.kind == CLASSIFICATION:
                hint = " (a generation task: pass kind='generation'?)"
            else:
                fmt = detect_format(split.column_names)
                seen = f" these rows are in the {fmt} format;" if fmt != CLASSIFICATION else ""
                hint = (f";{seen} ContinualTask.from_dataset(name, dataset) reads every supported format (text_column=/"
                        "label_column=/prompt_column=/completion_column= name other columns)")  # fmt: skip
            raise TaskSpecError(f"{where}: missing column(s) {sorted(missing)}; found {split.column_names}{hint}")
        if len(split) == 0:
            raise TaskSpecError(f"{where}: no examples (empty dataset)")
        if self.kind == GENERATION:
            for i, (prompt, completion) in enumerate(zip(split["prompt"], split["completion"])):
                if not isinstance(prompt, str) or not prompt.strip():
                    conversational = ": a list of messages (TRL's conversational format), read by ContinualTask.from_dataset"
                    hint = conversational if isinstance(prompt, list) else ""
                    raise TaskSpecError(f"{where}: row {i} has an empty or non-string prompt ({prompt!r:.120}){hint}")
                if not isinstance(completion, str) or not completion.strip():
                    raise TaskSpecError(f"{where}: row {i} has an empty completion ({completion!r}): every row needs a target")
            return
        allowed = set(self.labels)
        for i, (text, label) in enumerate(zip(split["text"], split["label"])):
            if not isinstance(text, str) or not text.strip():
                raise TaskSpecError(f"{where}: row {i} has an empty or non-string text ({text!r})")
            if not isinstance(label, str):
                raise TaskSpecError(
                    f"{where}: row {i} has a non-string label {label!r}; labels are generated as text, so map them to "
                    "words first (e.g. 0 -> 'negative')"
                )
            if label not in allowed:
                raise TaskSpecError(f"{where}: row {i} has label {label!r}, which is not one of the options {list(self.labels)}")

    def example_ids(self) -> list[str]:
        """A stable id per evaluation row (a hash of its columns): runs that score the same example share its id,
        which the bootstrap needs to resample shared test examples jointly (:mod:`peft_continual.statistics`)."""
        return [example_id(*(str(row[c]) for c in self.columns)) for row in self.eval]

    def prompt_parts(self, text: str) -> tuple[str, str, str]:
        """(head, text, tail) of the reference prompt around ``text``: only the text may be shortened."""
        return prompt_parts(self, {"text": text, "prompt": text, "context": ""}, chat=False)

    def prompt(self, text: str) -> str:
        return "".join(self.prompt_parts(text))


def example_id(*fields: str) -> str:
    """64 bits of SHA-1 over the fields: ample to tell a task's test examples apart, short to store per example."""
    return hashlib.sha1("\0".join(fields).encode("utf-8")).hexdigest()[:16]


def check_unique_names(tasks: Sequence[ContinualTask]) -> None:
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TaskSpecError(f"duplicate task name(s) {duplicates}: rename with NAME=SPEC, e.g. 'agnews2=agnews'")
