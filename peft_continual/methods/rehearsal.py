"""Methods that replay stored training rows: ER, I-LoRA (a slow learner following the fast one, with a consistency
loss on the replayed rows) and N-LoRA + ER.

The buffer is :class:`peft_continual.replay.ReservoirBuffer`; I-LoRA's maths lives in
:mod:`peft_continual.interpolation`; the base model's answers to general prompts, which any of them may replay beside
the buffer, in :mod:`peft_continual.self_rehearsal`.
"""

from __future__ import annotations

from typing import Optional

import torch
from peft.utils.integrations import gather_params_ctx

from ..adapters import adapter_parameters, adapters_active, copy_adapter_weights
from ..configs import ILoraConfig, NLoraReplayConfig, ReplayConfig
from ..interpolation import consistency_loss, ema_decay_at, ema_update, select_layers
from ..replay import ReservoirBuffer
from ..self_rehearsal import GeneralRows
from ..target_logits import with_target_logits
from ..tasks import IGNORE_INDEX
from .base import register_method
from .lora import NLoraMethod, SeqLoraMethod


@register_method
class ReplayMethod(SeqLoraMethod):
    """ER: from task 2 on, loss = (CE_current + CE_replay) / 2 with a replay batch from a reservoir buffer.

    With ``general_rehearsal_examples`` the replay batch is drawn from the buffer and the base model's answers to
    general prompts together (:mod:`peft_continual.self_rehearsal`), written before the first task and replayed from
    the first task on (their share of a batch: ``general_rehearsal_share``); they are kept apart from the reservoir,
    which would otherwise evict them.
    """

    name = "replay"
    title = "ER (experience replay)"
    config_class = ReplayConfig
    data_tensor_prefixes = ("buffer.", "general.")

    def setup(self, model, *, collator, batch_size, seed, process_index=0, num_processes=1, logits_on_targets_only=False):
        self.collator = collator
        self.logits_on_targets_only = logits_on_targets_only
        self.replay_batch_size = self.config.replay_batch_size or batch_size
        self.seed, config = seed, self.config
        self.buffer = ReservoirBuffer(config.replay_buffer_size, seed=seed)  # identical on every process
        self.general = GeneralRows(config.general_rehearsal_examples, config.general_prompts, config.general_answer_tokens,
                                   seed, what="general_rehearsal_examples")  # fmt: skip
        self.process_index, self.num_processes = process_index, num_processes
        self.micro_step, self.step_rows = 0, []

    def check_before_training(self, model, num_tasks):
        super().check_before_training(model, num_tasks)
        self.general.check()

    def prepare_task(self, trainer, task_index, resumed_meta=None):
        """The base answers the general self-rehearsal prompts before the first task (not again once held)."""
        self.general.fill(trainer, self.restore_adapter_state, resumed_meta)

    def replay_batch(self, device, accumulation: int = 1) -> Optional[tuple[dict[str, torch.Tensor], float, float]]:
        """This process's slice, for this micro-batch, of one replay batch per optimizer step, with its normalisers.

        At its first micro-batch, each optimizer step draws the rows of all its micro-batches on all processes
        (the same draw on every process: same seed). Each slice is divided by the counts of target tokens and of
        positions over the whole draw, over processes x micro-batches: summed over micro-batches and averaged over
        processes, the terms equal one process's on the whole draw without accumulation.
        """
        if len(self.buffer) + len(self.general) == 0:
            return None
        shards, micro = self.num_processes * accumulation, self.micro_step % accumulation
        if micro == 0:
            self.step_rows = self.buffer.sample(self.replay_batch_size * shards, extra=self.general.examples,
                                                extra_share=self.config.general_rehearsal_share)  # fmt: skip
        self.micro_step += 1
        drawn = self.step_rows
        start = (micro * self.num_processes + self.process_index) * self.replay_batch_size
        batch = self.collator(drawn[start : start + self.replay_batch_size])
        if self.logits_on_targets_only:
            batch = with_target_logits(batch)
        targets = sum(sum(t != IGNORE_INDEX for t in e["labels"][1:]) for e in drawn) / shards
        positions = sum(len(e["input_ids"]) for e in drawn) / shards
        return {k: v.to(device) for k, v in batch.items()}, targets, positions

    def begin_task(self, model, task_index, task_name):
        super().begin_task(model, task_index, task_name)
        self.micro_step = 0

    def after_optimizer_step(self, model):
        self.micro_step = 0  # the next micro-batch starts a step

    def loss_terms(self, model, inputs, wrapped=None, accumulation=1):
        replay = self.replay_batch(inputs["input_ids"].device, accumulation)
        if replay is None:
            return 1.0, {}
        batch, targets, _ = replay
        return 0.5, {"loss_replay": 0.5 * (wrapped or model)(**batch, num_items_in_batch=targets).loss}

    def end_task(self, model, task_index, train_features):
        """Offer every training example of the finished task once (evaluation data never enters)."""
        for ids, labels in zip(train_features["input_ids"], train_features["labels"]):
            self.buffer.add(ids, labels, task_index)

    def state_dict(self):
        meta, tensors = super().state_dict()
        buffer = {f"buffer.{k}": v for k, v in self.buffer.state_dict().items()}
        return {**meta, **self.general.meta()}, {**tensors, **buffer, **self.general.state_dict()}

    def load_state_dict(self, meta, tensors, model):
        super().load_state_dict(meta, tensors, model)
        self.buffer.load_state_dict({k[len("buffer.") :]: v for k, v in tensors.items() if k.startswith("buffer.")})
        self.general.load_state_dict(tensors)


@register_method
class ILoraMethod(ReplayMethod):
    """I-LoRA: the initial adapter is the fast learner; ``slow`` follows it by EMA after every optimizer step."""

    name = "ilora"
    title = "I-LoRA (interpolated fast/slow LoRA with replay, arXiv 2402.18865)"
    config_class = ILoraConfig
    slow = "slow"

    def setup(self, model, **kwargs):
        super().setup(model, **kwargs)
        self.steps_in_task = 0
        if self.slow not in model.peft_config:
            model.add_adapter(self.slow, self.config)
            copy_adapter_weights(model, self.initial_adapter, self.slow)
        self.restore_adapter_state(model)

    def eval_adapters(self):
        return [self.slow if self.config.eval_learner == "slow" else self.initial_adapter]

    def begin_task(self, model, task_index, task_name):
        super().begin_task(model, task_index, task_name)
        self.steps_in_task = 0

    def loss_terms(self, model, inputs, wrapped=None, accumulation=1):
        replay = self.replay_batch(inputs["input_ids"].device, accumulation)
        if replay is None:
            return 1.0, {}
        batch, targets, positions = replay
        wrapped = wrapped or model
        out = wrapped(**batch, num_items_in_batch=targets, output_hidden_states=True)
        terms = {"loss_replay": 0.5 * out.loss}
        if self.config.consistency_weight > 0:
            was_training = wrapped.training
            wrapped.eval()  # the teacher's forward is deterministic (no dropout)
            try:
                with torch.no_grad(), adapters_active(model, [self.slow]):
                    slow_hidden = wrapped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                          output_hidden_states=True).hidden_states  # fmt: skip
            finally:
                wrapped.train(was_training)
            layers = self.config.consistency_layers
            terms["loss_consistency"] = self.config.consistency_weight * consistency_loss(
                select_layers(out.hidden_states, layers), select_layers(slow_hidden, layers),
                batch["attention_mask"], self.config.consistency_target, num_positions=positions,
            )  # fmt: skip
        return 0.5, terms

    def after_optimizer_step(self, model):
        super().after_optimizer_step(model)
        self.steps_in_task += 1
        decay = ema_decay_at(self.steps_in_task, self.config.ema_decay, self.config.ema_warmup_steps)
        slow, fast = adapter_parameters(model, self.slow), adapter_parameters(model, self.initial_adapter)
        with gather_params_ctx(slow + fast, modifier_rank=0):
            ema_update(slow, fast, decay)

    def end_task(self, model, task_index, train_features):
        super().end_task(model, task_index, train_features)
        if self.config.resync_slow_at_task_end:
            copy_adapter_weights(model, self.initial_adapter, self.slow)

    def state_dict(self):
        meta, tensors = super().state_dict()
        return {**meta, "steps_in_task": self.steps_in_task}, tensors

    def load_state_dict(self, meta, tensors, model):
        super().load_state_dict(meta, tensors, model)
        self.steps_in_task = int(meta.get("steps_in_task", 0))


@register_method
class NLoraReplayMethod(NLoraMethod, ReplayMethod):
    """N-LoRA's task adapters and collision penalty plus ER's buffer: loss = (CE_current + CE_replay) / 2 + penalty.

    The penalty keeps each task's update sparse; the replayed examples (through every active adapter, only the
    current one training) keep earlier tasks' decisions, which the penalty alone does not (benchmarks/RESULTS.md).
    The hooks compose by the class order: N-LoRA's adapters first, ER's buffer after them.
    """

    name = "nlora_replay"
    title = "N-LoRA + ER (collision-regularised task LoRAs with experience replay)"
    config_class = NLoraReplayConfig

    def loss_terms(self, model, inputs, wrapped=None, accumulation=1):
        task_weight, replay = ReplayMethod.loss_terms(self, model, inputs, wrapped, accumulation)
        _, collision = NLoraMethod.loss_terms(self, model, inputs, wrapped, accumulation)
        return task_weight, {**replay, **collision}
