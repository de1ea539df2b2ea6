"""Methods that protect earlier tasks through the adapters alone, storing no data: SeqLoRA (the unprotected
reference), IncLoRA (one frozen adapter per task), N-LoRA (a collision penalty) and O-LoRA (orthogonality).

The penalties' maths lives in :mod:`peft_continual.regularizers`.
"""

from __future__ import annotations

import re

import torch
from peft import LoraConfig
from peft.utils.integrations import gather_params_ctx

from ..adapters import (adapter_factors, adapter_parameters, check_concatenable, check_mergeable, merge_into_base,
                        set_adapter_state)  # fmt: skip
from ..configs import IncLoraConfig, NLoraConfig, OLoraConfig
from ..regularizers import delta_w_l1, l2_penalty, orthogonality_penalty, rank_product_l1
from .base import ContinualMethod, register_method


@register_method
class SeqLoraMethod(ContinualMethod):
    """SeqLoRA: the one adapter get_peft_model created is trained on task after task (no protection)."""

    name = "seqlora"
    title = "SeqLoRA (sequential LoRA, no protection)"
    config_class = LoraConfig

    def training_adapters(self):
        return [self.initial_adapter], [self.initial_adapter]

    def eval_adapters(self):
        return [self.initial_adapter]


def task_adapter_name(task_index: int, task_name: str) -> str:
    return f"task_{task_index + 1}_{re.sub(r'[^0-9A-Za-z_-]', '_', task_name)}"


@register_method
class TaskAdapterMethod(ContinualMethod):
    """IncLoRA: a new adapter per task; finished ones stay in the forward (or merged into the base), frozen."""

    name = "inclora"
    title = "IncLoRA (one frozen LoRA per task)"
    config_class = IncLoraConfig

    def __init__(self, config, initial_adapter):
        super().__init__(config, initial_adapter)
        self.adapters: list[str] = []
        self.merged: list[str] = []

    def begin_task(self, model, task_index: int, task_name: str) -> None:
        name = task_adapter_name(task_index, task_name)
        if name in model.peft_config:
            raise ValueError(f"adapter {name!r} already exists: task names must be unique")
        model.add_adapter(name, self.config)
        self.adapters.append(name)
        self.restore_adapter_state(model)
        if self.initial_adapter in model.peft_config and self.initial_adapter not in self.adapters:
            model.delete_adapter(self.initial_adapter)  # it only lent its config to the task adapters
        super().begin_task(model, task_index, task_name)  # cooperative: a composed method's other half runs too

    def training_adapters(self):
        active = [a for a in self.adapters if a not in self.merged]
        return active, active[-1:]

    def eval_adapters(self):
        return [a for a in self.adapters if a not in self.merged]

    def task_adapters(self):
        return list(self.adapters)

    def task_aware_adapters(self):
        return [self.adapters[: j + 1] for j in range(len(self.adapters))]

    def export_adapters(self):
        return list(self.adapters)

    def check_before_training(self, model, num_tasks):
        adapter = self.adapters[0] if self.adapters else self.initial_adapter
        check_concatenable(model, adapter)  # the root adapter is their sum: refuse what it cannot export exactly
        if self.config.merge_finished_adapters:
            check_mergeable(model, adapter)

    def end_task(self, model, task_index, train_features):
        super().end_task(model, task_index, train_features)
        if self.config.merge_finished_adapters:
            merge_into_base(model, self.adapters[-1])
            self.merged.append(self.adapters[-1])
        set_adapter_state(model, self.eval_adapters(), [])

    def state_dict(self):
        meta, tensors = super().state_dict()
        return {**meta, "adapters": self.adapters, "merged": self.merged}, tensors

    def load_state_dict(self, meta, tensors, model):
        super().load_state_dict(meta, tensors, model)
        self.adapters = list(meta["adapters"])
        for adapter in meta["merged"]:  # merge what the (reloaded, unmerged) base lacks; idempotent
            if adapter not in self.merged:
                merge_into_base(model, adapter)
                self.merged.append(adapter)


@register_method
class NLoraMethod(TaskAdapterMethod):
    """N-LoRA: lambda * l1 of the current task's dW (all modules), see :func:`regularizers.delta_w_l1`."""

    name = "nlora"
    title = "N-LoRA (collision-regularised task LoRAs, arXiv 2410.10179)"
    config_class = NLoraConfig

    def check_before_training(self, model, num_tasks):
        super().check_before_training(model, num_tasks)
        if num_tasks > 0:
            self.config.lambda_for_task(num_tasks - 1)
        if self.config.collision_form == "rank_product":
            adapter = self.adapters[0] if self.adapters else self.initial_adapter
            factors = adapter_factors(model, adapter)
            with gather_params_ctx([p for f in factors for p in (f.A, f.B)]):  # collectively, on every rank
                for f in factors:
                    rank_product_l1(f.A.detach(), f.B.detach(), f.module_name)

    def loss_terms(self, model, inputs, wrapped=None, accumulation=1):
        weight = self.config.lambda_for_task(self.task_index)
        if weight == 0:
            return 1.0, {}
        factors = adapter_factors(model, self.adapters[-1])
        rank_product = self.config.collision_form == "rank_product"
        with gather_params_ctx([p for f in factors for p in (f.A, f.B)]):  # shapes too are sharded under ZeRO-3
            if rank_product:
                norms = [rank_product_l1(f.A, f.B, f.module_name) for f in factors]
            else:
                norms = [delta_w_l1(f.A, f.B, f.scaling, self.config.collision_chunk_elements) for f in factors]
            # entries of each penalised matrix: r x r (A @ B) or d_out x d_in (dW)
            sizes = [f.A.shape[0] ** 2 if rank_product else f.B.shape[0] * f.A.shape[1] for f in factors]
        reduction = self.config.collision_reduction
        if reduction == "sqrt_numel":
            penalty = sum(norm / size**0.5 for norm, size in zip(norms, sizes))
        else:
            penalty = torch.stack(norms).sum() / (sum(sizes) if reduction == "mean" else 1)
        return 1.0, {"loss_collision": weight * penalty}


@register_method
class OLoraMethod(TaskAdapterMethod):
    """O-LoRA: lambda_1 * sum |A_i A_t^T| over earlier tasks i, plus lambda_2 * sum ||P||_2 of the current adapter."""

    name = "olora"
    title = "O-LoRA (orthogonal task LoRAs, arXiv 2310.14152)"
    config_class = OLoraConfig

    def loss_terms(self, model, inputs, wrapped=None, accumulation=1):
        terms = {}
        current = self.adapters[-1]
        if self.config.orthogonal_lambda > 0 and len(self.adapters) > 1:
            earlier = [{f.module_name: f.A for f in adapter_factors(model, a)} for a in self.adapters[:-1]]
            factors = adapter_factors(model, current)
            with gather_params_ctx([f.A for f in factors] + [A for e in earlier for A in e.values()]):
                total = torch.stack([
                    orthogonality_penalty(f.A, [e[f.module_name] for e in earlier], self.config.orthogonal_form)
                    for f in factors
                ]).sum()  # fmt: skip
            terms["loss_orthogonal"] = self.config.orthogonal_lambda * total
        if self.config.l2_lambda > 0:
            params = adapter_parameters(model, current)
            with gather_params_ctx(params):
                terms["loss_l2"] = self.config.l2_lambda * l2_penalty(params)
        return 1.0, terms
