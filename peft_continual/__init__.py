"""Continual learning of language models with PEFT: N-LoRA, O-LoRA, I-LoRA and replay on the HF stack."""

from .collision import collision_report
from .configs import ContinualOSFConfig, GeneralRehearsalConfig, IncLoraConfig, ILoraConfig, LwfConfig, NLoraConfig, NLoraReplayConfig, OLoraConfig, ReplayConfig, SsrConfig
from .evaluation import TaskEvaluation, evaluate_protocols, evaluate_task
from .general_ability import evaluate_general_ability
from .metrics import ContinualResult
from .scoring import METRICS, normalize_answer
from .tasks import (
    GENERATION_ORDER,
    STANDARD_ORDERS,
    ContinualCollator,
    ContinualTask,
    TaskSpecError,
    load_continual_tasks,
)
from .guard import install as _install_guard
from .trainer import ContinualTrainer

_install_guard()  # a continual config trained by another trainer stops instead of training plain LoRA

__version__ = "0.1.0"


def __getattr__(name: str):
    """``ContinualSFTTrainer`` is imported on first use: TRL is an optional extra (``peft_continual[trl]``)."""
    if name == "ContinualSFTTrainer":
        from .sft_trainer import ContinualSFTTrainer

        return ContinualSFTTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ContinualOSFConfig",
    "ContinualCollator",
    "ContinualResult",
    "ContinualSFTTrainer",
    "ContinualTask",
    "ContinualTrainer",
    "GENERATION_ORDER",
    "ILoraConfig",
    "METRICS",
    "IncLoraConfig",
    "LwfConfig",
    "NLoraConfig",
    "NLoraReplayConfig",
    "OLoraConfig",
    "ReplayConfig",
    "STANDARD_ORDERS",
    "GeneralRehearsalConfig",
    "SsrConfig",
    "TaskEvaluation",
    "TaskSpecError",
    "collision_report",
    "evaluate_general_ability",
    "evaluate_protocols",
    "evaluate_task",
    "load_continual_tasks",
    "normalize_answer",
]
