"""OSF as a continual method: peft's OSF adapters, merged into the base between tasks, each freezing a larger top
singular subspace than the last. The weight surgery lives in :mod:`peft_continual.osf`."""

from __future__ import annotations

import copy

import torch
from transformers.integrations import is_deepspeed_zero3_enabled

from ..adapters import set_adapter_state
from ..configs import ContinualOSFConfig
from ..osf import (base_weights, check_osf_targets, load_base_weights, merge_into_base_weights, project_off_preserved,
                   rebuild_on_current_weights)  # fmt: skip
from .base import ContinualMethod, register_method
from .lora import task_adapter_name


@register_method
class OsfMethod(ContinualMethod):
    """OSF: each task's peft OSF adapter trains off the weights' top singular subspace (frozen); at the next task's
    start it is merged into the base, and the new adapter freezes a larger top subspace of the merged weights, so the
    directions earlier tasks wrote stay untouched (:mod:`peft_continual.osf`). Stores no data."""

    name = "osf"
    title = "OSF (orthogonal subspace fine-tuning on peft's OSFConfig; stores no data)"
    config_class = ContinualOSFConfig
    exports_root_adapter = False  # the base is rewritten: the root is continual_weights.safetensors
    MERGED_PREFIX = "merged_weights."
    # Not data, but like data only needed to continue the run: an upload serves inference from continual_weights.
    data_tensor_prefixes = (MERGED_PREFIX,)

    def __init__(self, config, initial_adapter):
        super().__init__(config, initial_adapter)
        self.adapters: list[str] = []
        self.merged: list[str] = []  # the trainer reads it: the base is no longer the base model
        self.merged_weights: dict[str, torch.Tensor] = {}  # the target weights since the last merge
        self.num_tasks = 0

    @classmethod
    def hyperparameters(cls) -> list[str]:
        return ["target_modules", "preserved_ranks", "project_updates"]

    def after_optimizer_step(self, model):
        if self.config.project_updates:
            project_off_preserved(model, self.adapters[-1])

    def check_before_training(self, model, num_tasks):
        if is_deepspeed_zero3_enabled():
            raise ValueError("OSF under DeepSpeed ZeRO-3 is not supported: it decomposes, merges and saves whole target "
                             "weights, which ZeRO-3 shards; use DDP (one process per GPU)")  # fmt: skip
        check_osf_targets(model)
        ranks = self.config.preserved_ranks
        if ranks is not None and len(ranks) < num_tasks:
            raise ValueError(f"preserved_ranks lists {len(ranks)} ranks for {num_tasks} tasks: give one per task")
        self.num_tasks = num_tasks

    def preserved_rank(self, task_index: int):
        """Task t of T (0-based) freezes rank 1, then t/T of each matrix's smaller dimension, unless given."""
        if self.config.preserved_ranks is not None:
            return self.config.preserved_ranks[task_index]
        return 1 if task_index == 0 else task_index / self.num_tasks

    def begin_task(self, model, task_index, task_name):
        previous = self.adapters[-1] if self.adapters else None
        if previous is not None:
            merge_into_base_weights(model, previous)
            self.merged.append(previous)
            self.merged_weights = base_weights(model)
        config = copy.deepcopy(self.config)
        config.effective_rank = self.preserved_rank(task_index)
        name = task_adapter_name(task_index, task_name)
        model.add_adapter(name, config)  # decomposes the weights as they are now: earlier tasks merged in
        self.adapters.append(name)
        set_adapter_state(model, [name], [name])
        for other in [a for a in model.peft_config if a != name]:  # the merged one, or get_peft_model's untrained one
            model.delete_adapter(other)
        super().begin_task(model, task_index, task_name)

    def training_adapters(self):
        current = self.adapters[-1:] or [self.initial_adapter]
        return current, current

    def eval_adapters(self):
        return self.adapters[-1:] or [self.initial_adapter]

    def state_dict(self):
        meta, tensors = super().state_dict()
        meta = {**meta, "adapters": self.adapters, "merged": self.merged, "num_tasks": self.num_tasks}
        # what earlier tasks wrote into the base: needed before the current adapter can be rebuilt on reload
        return meta, {**tensors, **{self.MERGED_PREFIX + k: v for k, v in self.merged_weights.items()}}

    def load_state_dict(self, meta, tensors, model):
        super().load_state_dict(meta, tensors, model)
        self.adapters, self.merged, self.num_tasks = list(meta["adapters"]), list(meta["merged"]), int(meta["num_tasks"])
        merged = {k[len(self.MERGED_PREFIX) :]: v for k, v in tensors.items() if k.startswith(self.MERGED_PREFIX)}
        if merged:
            load_base_weights(model, merged)
            self.merged_weights = base_weights(model)
            rebuild_on_current_weights(model, self.adapters[-1])
        self.restore_adapter_state(model)
