"""LwF: distillation to the base model (the same model, adapters disabled), storing no data. The KL's maths lives in
:mod:`peft_continual.distillation`."""

from __future__ import annotations

import inspect

import torch

from ..configs import LwfConfig
from ..distillation import distillation_kl, distillation_positions
from ..self_rehearsal import GeneralRows
from .base import register_method
from .lora import SeqLoraMethod


@register_method
class LwfMethod(SeqLoraMethod):
    """LwF: SeqLoRA plus ``distill_weight * KL(base || tuned)`` of the next-token distributions on the current batch.

    The teacher is the same model with its adapter disabled, so no data or model copy is kept between tasks. That
    teacher is the base only while the base weights are untouched: SeqLoRA never merges, and the config refuses
    initialisations that rewrite the base (PiSSA, OLoRA, ...), so there is nothing to check before training.

    Per micro-batch: one no-grad teacher forward (eval mode, no dropout) and one student forward with gradients, on
    ``input_ids``/``attention_mask`` only, the LM head restricted to the compared positions. The trainer does not
    pass the task forward's logits to :meth:`loss_terms`, hence the second student forward. With
    ``distill_general_examples`` the same KL is also taken on a batch of the base's own answers to general prompts
    (their answer tokens), written before the first task: two more forwards per micro-batch.
    """

    name = "lwf"
    title = "LwF (distillation to the base model, no stored data)"
    config_class = LwfConfig

    data_tensor_prefixes = ("general.",)

    def setup(self, model, *, collator, batch_size, seed, process_index=0, num_processes=1, **kwargs):
        super().setup(model, collator=collator, batch_size=batch_size, seed=seed, **kwargs)
        # transformers' causal LMs run the head on given positions only; other models give every position's logits
        self.head_on_positions = "logits_to_keep" in inspect.signature(model.get_base_model().forward).parameters
        self.collator, self.general_batch_size = collator, batch_size
        self.process_index, self.num_processes = process_index, num_processes
        config = self.config
        self.general = GeneralRows(config.distill_general_examples, config.general_prompts, config.general_answer_tokens,
                                   seed, what="distill_general_examples")  # fmt: skip

    def check_before_training(self, model, num_tasks):
        super().check_before_training(model, num_tasks)
        self.general.check()

    def prepare_task(self, trainer, task_index, resumed_meta=None):
        """The base answers the general prompts before the first task (not again once held)."""
        self.general.fill(trainer, self.restore_adapter_state, resumed_meta)

    def kl_to_base(self, model, wrapped, batch: dict[str, torch.Tensor], positions: str) -> torch.Tensor:
        """KL(base || tuned) on ``batch`` at ``positions``: a no-grad teacher forward (eval mode, no dropout, adapters
        disabled) and a student forward, on ``input_ids``/``attention_mask`` only, the LM head on those positions."""
        ids = batch["input_ids"]
        attention = batch.get("attention_mask", torch.ones_like(ids))
        keep, mask = distillation_positions(batch["labels"], attention, positions)
        inputs = {"input_ids": ids, "attention_mask": attention}
        if self.head_on_positions:
            inputs["logits_to_keep"] = keep
        was_training = wrapped.training
        wrapped.eval()
        try:
            with torch.no_grad(), model.disable_adapter():
                teacher = wrapped(**inputs).logits
        finally:
            wrapped.train(was_training)
            self.restore_adapter_state(model)  # leaving disable_adapter() unfreezes every adapter
        student = wrapped(**inputs).logits
        if not self.head_on_positions:
            teacher, student = teacher[:, keep], student[:, keep]
        return distillation_kl(student, teacher, mask, self.config.distill_temperature)

    def loss_terms(self, model, inputs, wrapped=None, accumulation=1):
        if self.config.distill_weight == 0:
            return 1.0, {}
        wrapped = wrapped or model
        weight = self.config.distill_weight
        terms = {"loss_distill": weight * self.kl_to_base(model, wrapped, inputs, self.config.distill_positions)}
        if len(self.general):  # the base's answers to general prompts: the KL on the answer tokens
            # one draw for all processes (same seed), each taking its own slice, as a replay batch is split
            size, start = self.general_batch_size, self.process_index * self.general_batch_size
            rows = self.general.sample(size * self.num_processes)[start : start + size]
            batch = {k: v.to(inputs["input_ids"].device) for k, v in self.collator(rows).items()}
            terms["loss_distill_general"] = weight * self.kl_to_base(model, wrapped, batch, "targets")
        return 1.0, terms

    def state_dict(self):
        meta, tensors = super().state_dict()
        return {**meta, **self.general.meta()}, {**tensors, **self.general.state_dict()}

    def load_state_dict(self, meta, tensors, model):
        super().load_state_dict(meta, tensors, model)
        self.general.load_state_dict(tensors)
