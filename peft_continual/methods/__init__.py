"""One small object per continual-learning method, built from the PEFT config on the model, and their registry.

:class:`~peft_continual.ContinualTrainer` only calls the hooks of :class:`ContinualMethod` (:mod:`.base`). A method is
one config class (in :mod:`peft_continual.configs`) plus one subclass marked with :func:`register_method`, in the
module of its family: :mod:`.lora` (adapters alone), :mod:`.rehearsal` (stored rows), :mod:`.osf`, :mod:`.lwf` and
:mod:`.ssr` (rows the model writes). Importing this package registers them, in this order.
"""

from .base import LORA_HYPERPARAMETERS, ContinualMethod, build_method, config_classes, register_method, registered_methods
from .lora import NLoraMethod, OLoraMethod, SeqLoraMethod, TaskAdapterMethod, task_adapter_name
from .rehearsal import ILoraMethod, NLoraReplayMethod, ReplayMethod
from .osf import OsfMethod
from .lwf import LwfMethod
from .ssr import GeneralRehearsalMethod, SsrMethod

__all__ = [
    "LORA_HYPERPARAMETERS", "ContinualMethod", "build_method", "config_classes", "register_method",
    "registered_methods", "task_adapter_name", "SeqLoraMethod", "TaskAdapterMethod", "NLoraMethod", "OLoraMethod",
    "ReplayMethod", "ILoraMethod", "NLoraReplayMethod", "OsfMethod", "LwfMethod", "SsrMethod",
    "GeneralRehearsalMethod",
]


