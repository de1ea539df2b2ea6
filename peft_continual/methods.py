"""One small object per continual-learning method, built from the PEFT config on the model, and their registry.

:class:`~peft_continual.ContinualTrainer` only calls the hooks of :class:`ContinualMethod`. A method is one config
class (in :mod:`configs`) plus one subclass here marked with :func:`register_method`; the registry is what the
trainer, saving and loading, the model card and the example script's flags read, so nothing else changes. The
maths lives in :mod:`regularizers`, :mod:`interpolation`, :mod:`replay` and :mod:`distillation`.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import inspect
import json
import re
from typing import Any, ClassVar, Optional

import datasets
import torch
from accelerate.utils import broadcast_object_list
from peft import LoraConfig, PeftConfig
from peft.utils.integrations import gather_params_ctx
from transformers.integrations import is_deepspeed_zero3_enabled

from .adapters import (
    adapter_factors,
    adapter_parameters,
    adapters_active,
    check_concatenable,
    check_mergeable,
    copy_adapter_weights,
    merge_into_base,
    set_adapter_state,
)
from .configs import (
    ContinualOSFConfig,
    GeneralRehearsalConfig,
    IncLoraConfig,
    ILoraConfig,
    LwfConfig,
    NLoraConfig,
    NLoraReplayConfig,
    OLoraConfig,
    ReplayConfig,
    SsrConfig,
    SsrILoraConfig,
    check_base_preserved,
)
from .distillation import distillation_kl, distillation_positions
from .interpolation import consistency_loss, ema_decay_at, ema_update, select_layers
from .osf import (
    base_weights,
    check_osf_targets,
    load_base_weights,
    merge_into_base_weights,
    project_off_preserved,
    rebuild_on_current_weights,
)
from .regularizers import delta_w_l1, l2_penalty, orthogonality_penalty, rank_product_l1
from .replay import ReservoirBuffer
from .self_rehearsal import GeneralRows
from .synthesis import synthesize_rows
from .target_logits import with_target_logits
from .tasks import GENERATION, IGNORE_INDEX, PromptEncoder

# LoRA's own fields that shape every method's adapters; with each config class's added fields, the hyper-parameters.
LORA_HYPERPARAMETERS = ("r", "lora_alpha", "lora_dropout", "target_modules")


class ContinualMethod(abc.ABC):
    """The hooks the trainer calls; a subclass per method says which adapters train and what it adds to the loss.

    Class attributes every registered method sets: ``name`` (``--cl_method``, saved runs, logs), ``title`` (model
    card) and ``config_class`` (the PEFT config that selects it; its fields with ``metadata["help"]`` are the
    method's hyper-parameters).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    config_class: ClassVar[type[LoraConfig]]
    data_tensor_prefixes: ClassVar[tuple[str, ...]] = ()  # state_dict() tensors holding training data (not uploaded)
    # The root of a save is a plain-peft adapter (the sum of export_adapters()); False: the method writes its own.
    exports_root_adapter: ClassVar[bool] = True

    def __init__(self, config: LoraConfig, initial_adapter: str):
        self.config = config
        self.initial_adapter = initial_adapter  # the adapter get_peft_model created; methods may add more from its config
        self.task_index = -1

    @classmethod
    def hyperparameters(cls) -> list[str]:
        """Config fields that define the method: LoRA's basics, then every field its config class adds to LoraConfig."""
        lora = {f.name for f in dataclasses.fields(LoraConfig)}
        return [*LORA_HYPERPARAMETERS, *(f.name for f in dataclasses.fields(cls.config_class) if f.name not in lora)]

    def setup(
        self, model, *, collator, batch_size: int, seed: int, process_index: int = 0, num_processes: int = 1,
        logits_on_targets_only: bool = False,
    ) -> None:  # fmt: skip
        """Once, when the trainer is built (before any saved state is loaded)."""

    def check_before_training(self, model, num_tasks: int) -> None:
        """Raise a clear error for settings that would only fail in the middle of training ``num_tasks`` tasks."""

    def prepare_task(self, trainer, task_index: int, resumed_meta: Optional[dict] = None) -> None:
        """Before task ``task_index`` starts (before :meth:`begin_task`), with the trainer at hand: its tokenizer
        (``trainer.processing_class``), tasks (``trainer.tasks``), how a task becomes training features
        (``trainer._cl_features``) and the model as the previous task left it; e.g. to synthesize rehearsal rows.
        When a run resumes inside the task, ``resumed_meta`` is the JSON part of the state the checkpoint holds
        (loaded after this call), so work the checkpoint already carries can be skipped."""

    def begin_task(self, model, task_index: int, task_name: str) -> None:
        self.task_index = task_index
        self.restore_adapter_state(model)

    @abc.abstractmethod
    def training_adapters(self) -> tuple[list[str], list[str]]:
        """(adapters in the forward, adapters that train) while a task trains."""

    @abc.abstractmethod
    def eval_adapters(self) -> list[str]:
        """Adapters in the forward for evaluation, and combined into the exported root adapter."""

    def export_adapters(self) -> list[str]:
        """Adapters whose sum is the continual model, exported as the root adapter for plain peft."""
        return self.eval_adapters()

    def task_adapters(self) -> list[str]:
        """One adapter per task, for the collision analysis (empty when the method has no such adapters)."""
        return []

    def task_aware_adapters(self) -> list[list[str]]:
        """Per trained task, the adapters whose sum is the model as it was after that task (its own and the earlier
        ones, frozen since): what serves the task when it is known at inference. Empty for a method whose one
        adapter later tasks keep training (SeqLoRA, ER, I-LoRA, LwF): it keeps no such model."""
        return []

    def restore_adapter_state(self, model) -> None:
        set_adapter_state(model, *self.training_adapters())

    def loss_terms(
        self, model, inputs: dict[str, torch.Tensor], wrapped=None, accumulation: int = 1
    ) -> tuple[float, dict[str, torch.Tensor]]:
        """(weight of the task loss, extra named terms already weighted, per micro-batch).

        ``model`` is the ``PeftModel`` (for its parameters); ``wrapped`` is the same model as Trainer runs it
        (DDP, FSDP or DeepSpeed wrapper; ``model`` when unwrapped): extra forward passes go through it, so that
        sharded parameters are gathered and gradients synchronised as for the task loss. ``accumulation`` is the
        number of micro-batches of the current optimizer step.
        """
        return 1.0, {}

    def after_optimizer_step(self, model) -> None:
        pass

    def end_task(self, model, task_index: int, train_features) -> None:
        pass

    def hyperparameter_values(self) -> dict[str, Any]:
        """The config's hyper-parameters as JSON values (sets as sorted lists): a resumed run must match them."""
        values = {}
        for key in self.hyperparameters():
            value = getattr(self.config, key)
            values[key] = sorted(value) if isinstance(value, (set, frozenset)) else value
        return json.loads(json.dumps(values))

    def state_dict(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON-able metadata, tensors): everything beyond the adapters needed to continue later."""
        meta = {"task_index": self.task_index, "initial_adapter": self.initial_adapter}
        return {**meta, "hyperparameters": self.hyperparameter_values()}, {}

    def load_state_dict(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor], model) -> None:
        """Restore what :meth:`state_dict` saved, onto ``model`` whose adapters were reloaded."""
        self.task_index, self.initial_adapter = int(meta["task_index"]), meta["initial_adapter"]


# ------------------------------------------------------------------------------------------------ registry

_REGISTRY: dict[str, type[ContinualMethod]] = {}  # by name, in registration order


def register_method(method_class: type[ContinualMethod]) -> type[ContinualMethod]:
    """Class decorator: make a method known to the trainer, saving and loading, the model card and the example."""
    for attribute in ("name", "title", "config_class"):
        if attribute not in vars(method_class):
            raise TypeError(f"{method_class.__name__} must set its own class attribute {attribute!r} to be registered")
    name, config_class = method_class.name, method_class.config_class
    if not (isinstance(config_class, type) and issubclass(config_class, PeftConfig)):
        raise TypeError(f"{method_class.__name__}.config_class must be a peft config class (e.g. a LoraConfig subclass), got {config_class!r}")
    for other in _REGISTRY.values():
        if other is not method_class and (other.name == name or other.config_class is config_class):
            raise ValueError(f"{method_class.__name__} clashes with the registered {other.__name__} (name or config class)")
    _REGISTRY[name] = method_class
    return method_class


def registered_methods() -> dict[str, type[ContinualMethod]]:
    """Every registered method class by name, in registration order."""
    return dict(_REGISTRY)


def config_classes() -> dict[str, type[LoraConfig]]:
    """The registered config classes by class name (as saved runs name them)."""
    return {m.config_class.__name__: m.config_class for m in _REGISTRY.values()}


def build_method(model) -> ContinualMethod:
    """The method object for the config of the model's active adapter (its most specific registered class)."""
    adapter = model.active_adapter
    config = model.peft_config[adapter]
    by_config = {m.config_class: m for m in _REGISTRY.values()}
    for klass in type(config).__mro__:
        if klass in by_config:
            if isinstance(config, LoraConfig):
                check_base_preserved(config)
            return by_config[klass](config, adapter)
    raise TypeError(
        f"ContinualTrainer needs a LoRA-based config ({', '.join(config_classes())}), got {type(config).__name__}"
    )


# ------------------------------------------------------------------------------------------------ methods


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


@register_method
class SsrMethod(ReplayMethod):
    """SSR: ER whose buffer holds rows the model synthesized for the earlier tasks, never a user's row.

    Before each task from the second on, the base model (``ssr_inputs_from='base'``, adapters disabled) writes inputs
    for every earlier task, the model as the previous task left it (its evaluation adapters, eval mode) answers them,
    and the kept rows, encoded by the trainer exactly as real rows,
    replace the buffer (:mod:`peft_continual.synthesis`). Training then replays them as ER does. The state records
    which task's synthesis the buffer holds, and :meth:`prepare_task` skips a task whose synthesis it already holds.
    A run resumed inside a task skips the synthesis: the checkpoint it resumes from holds that task's buffer.
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
        model = trainer.peft_model
        encoder = PromptEncoder(trainer.processing_class, trainer.max_source_length, trainer.chat)
        was_training = model.training
        model.eval()
        synthesized = []
        writer = model.disable_adapter if self.config.ssr_inputs_from == "base" else None
        try:
            with adapters_active(model, self.eval_adapters()):
                for source, task in enumerate(trainer.tasks[:task_index]):
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
        buffer = ReservoirBuffer(self.config.replay_buffer_size, seed=self.seed + task_index)
        for source, (rows, _) in enumerate(synthesized):
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
        """Unlike ER, the finished task's rows are not kept: its rehearsal rows are synthesized before later tasks."""

    def state_dict(self):
        meta, tensors = super().state_dict()
        return {**meta, "synthesized_for": self.synthesized_for, "synthesis_log": self.synthesis_log}, tensors

    def load_state_dict(self, meta, tensors, model):
        super().load_state_dict(meta, tensors, model)
        self.synthesized_for = int(meta.get("synthesized_for", -1))
        self.synthesis_log = list(meta.get("synthesis_log", []))


@register_method
class SsrILoraMethod(SsrMethod, ILoraMethod):
    """Data-free I-LoRA: SSR's synthesis fills the buffer (written and answered by the slow learner, the evaluation
    model) and I-LoRA trains on it: replay loss, consistency with the slow learner, EMA after every step. The hooks
    compose by the class order; only ``end_task`` needs both halves spelled out."""

    name = "ssr_ilora"
    title = "Data-free I-LoRA (I-LoRA on SSR's synthesized rows; an experiment)"
    config_class = SsrILoraConfig

    def end_task(self, model, task_index, train_features):
        """No real row enters the buffer (SSR); the slow learner resyncs as in I-LoRA."""
        if self.config.resync_slow_at_task_end:
            copy_adapter_weights(model, self.initial_adapter, self.slow)


@register_method
class GeneralRehearsalMethod(ReplayMethod):
    """General self-rehearsal alone: ER whose only replayed rows are the base model's answers to general prompts
    (its buffer keeps no task row: ``replay_buffer_size`` is 0)."""

    name = "self_rehearsal"
    title = "General self-rehearsal (the base's answers to general prompts replayed, no stored rows)"
    config_class = GeneralRehearsalConfig
