"""The hooks :class:`~peft_continual.ContinualTrainer` calls on a continual-learning method, and the registry of methods.

A method is one PEFT config class (in :mod:`peft_continual.configs`) plus one :class:`ContinualMethod` subclass marked
with :func:`register_method`; the registry is what the trainer, saving and loading, the model card and the example
script's flags read, so nothing else changes when a method is added.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from typing import Any, ClassVar, Optional

import torch
from peft import LoraConfig, PeftConfig

from ..adapters import set_adapter_state
from ..configs import check_base_preserved

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
