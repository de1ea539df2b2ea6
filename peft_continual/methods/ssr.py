"""Rehearsal of rows the model writes itself, no user row kept: SSR (inputs synthesized for each earlier task)
and general self-rehearsal (the base's answers to general prompts).

The synthesis lives in :mod:`peft_continual.synthesis`, the general rows in :mod:`peft_continual.self_rehearsal`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import datasets
import torch
from accelerate.utils import broadcast_object_list

from ..adapters import adapters_active
from ..configs import GeneralRehearsalConfig, SsrConfig
from ..replay import ReservoirBuffer
from ..synthesis import synthesize_rows
from ..tasks import GENERATION, PromptEncoder
from .base import register_method
from .rehearsal import ReplayMethod


@register_method
class SsrMethod(ReplayMethod):
    """SSR: ER whose buffer holds rows the model synthesized for the earlier tasks, never a user's row.

    Before each task from the second on, the base model (``ssr_inputs_from='base'``, adapters disabled) writes inputs
    for the task just learned, the model as that task left it (its evaluation adapters, eval mode) answers them, and
    the kept rows, encoded by the trainer exactly as real rows, join the buffer for every later task, as ER's
    ``end_task`` adds the real ones (:mod:`peft_continual.synthesis`). As in the SSR paper, each task's rows are
    answered by the model at its best on that task, and a run pays one synthesis per task. ``ssr_resynthesize``
    instead rewrites the buffer before every task from all earlier tasks, answered by the current model. The state
    records which task's synthesis the buffer holds, and :meth:`prepare_task` skips a task whose synthesis it already
    holds. A run resumed inside a task skips the synthesis: the checkpoint it resumes from holds that task's buffer.
    """

    name = "ssr"
    title = "SSR (self-synthesized rehearsal, no stored rows)"
    config_class = SsrConfig

    def setup(self, model, **kwargs):
        super().setup(model, **kwargs)
        self.synthesized_for = -1  # the task (index) whose synthesis the buffer holds
        self.synthesis_log: list[dict[str, Any]] = []  # the cost of every synthesis, per task and earlier task

    def prepare_task(self, trainer, task_index, resumed_meta=None):
        super().prepare_task(trainer, task_index, resumed_meta)  # general self-rehearsal's rows, when asked for
        if task_index == 0 or task_index in (self.synthesized_for, (resumed_meta or {}).get("synthesized_for")):
            return  # synthesized already, or the checkpoint being resumed holds this task's buffer
        sources = range(task_index) if self.config.ssr_resynthesize else range(task_index - 1, task_index)
        model = trainer.peft_model
        encoder = PromptEncoder(trainer.processing_class, trainer.max_source_length, trainer.chat)
        was_training = model.training
        model.eval()
        synthesized = []
        writer = model.disable_adapter if self.config.ssr_inputs_from == "base" else None
        try:
            with adapters_active(model, self.eval_adapters()):
                for source in sources:
                    task = trainer.tasks[source]
                    rows, cost = synthesize_rows(
                        model, encoder, task, self.config.ssr_examples_per_task,
                        candidates_factor=self.config.ssr_candidates_factor, temperature=self.config.ssr_temperature,
                        top_p=self.config.ssr_top_p, max_new_tokens=self.config.ssr_max_new_tokens,
                        min_chars=self.config.ssr_min_input_chars, batch_size=trainer.args.per_device_eval_batch_size,
                        seed=self.seed + 1000 * task_index + source, answer_tokens=task.max_new_tokens or trainer.max_new_tokens,
                        demonstrations=self.demonstrations(task, task_index), writer=writer,
                    )  # fmt: skip
                    synthesized.append((rows, {"task_index": task_index, "source_task": task.name, **cost}))
        finally:
            model.train(was_training)
            self.restore_adapter_state(model)
        if trainer.args.world_size > 1:  # every process replays the same rows: process zero's
            synthesized = broadcast_object_list([synthesized], from_process=0)[0]
        buffer = self.buffer
        if self.config.ssr_resynthesize:  # the earlier tasks' rows are replaced, not added to
            buffer = ReservoirBuffer(self.config.replay_buffer_size, seed=self.seed + task_index)
        for source, (rows, _) in zip(sources, synthesized):
            if rows:  # the copy holds the synthetic rows only: the real ones cannot reach the buffer
                rows_set = datasets.Dataset.from_list(rows)
                features = trainer._cl_features(dataclasses.replace(trainer.tasks[source], train=rows_set, eval=rows_set))
                for ids, labels in zip(features["input_ids"], features["labels"]):
                    buffer.add(ids, labels, source)
        self.buffer, self.synthesized_for = buffer, task_index
        entries = [entry for _, entry in synthesized]
        self.synthesis_log += entries
        if trainer.is_world_process_zero():
            detail = ", ".join(f"{e['source_task']} {e['kept']}/{e['candidates']}" for e in entries)
            print(f"    [ssr] before task {task_index + 1}: kept/sampled {detail}, "
                  f"{len(buffer)} rows in the buffer, {sum(e['seconds'] for e in entries):.1f}s", flush=True)  # fmt: skip

    def demonstrations(self, task, task_index: int) -> list[str]:
        """The opted-in real inputs shown to the model (none by default), the same ones for a given seed and task."""
        k = self.config.ssr_demonstrations
        if k == 0:
            return []
        if task.train is None:
            raise ValueError(
                f"ssr_demonstrations={k} needs the training rows of task {task.name!r}, which a run restored from a "
                "saved folder does not have: set ssr_demonstrations=0 to continue it"
            )
        picked = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(self.seed + task_index))[:k]
        column = "prompt" if task.kind == GENERATION else "text"
        return [task.train[i][column] for i in picked.tolist()]

    def end_task(self, model, task_index, train_features):
        """Unlike ER, the finished task's rows are not kept: its rehearsal rows are synthesized before the next task."""

    def state_dict(self):
        meta, tensors = super().state_dict()
        return {**meta, "synthesized_for": self.synthesized_for, "synthesis_log": self.synthesis_log}, tensors

    def load_state_dict(self, meta, tensors, model):
        super().load_state_dict(meta, tensors, model)
        self.synthesized_for = int(meta.get("synthesized_for", -1))
        self.synthesis_log = list(meta.get("synthesis_log", []))


@register_method
class GeneralRehearsalMethod(ReplayMethod):
    """General self-rehearsal alone: ER whose only replayed rows are the base model's answers to general prompts
    (its buffer keeps no task row: ``replay_buffer_size`` is 0)."""

    name = "self_rehearsal"
    title = "General self-rehearsal (the base's answers to general prompts replayed, no stored rows)"
    config_class = GeneralRehearsalConfig
