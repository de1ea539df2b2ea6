"""No silent plain LoRA: a continual config trained by a trainer that does not know it stops before the first step.

``get_peft_model(model, NLoraConfig(...))`` gives a ``PeftModel`` that any trainer can train; a plain ``Trainer`` or
TRL's ``SFTTrainer(peft_config=NLoraConfig(...))`` would train it as plain LoRA (no collision penalty, no frozen
earlier tasks, no replay) while the config still reads ``NLoraConfig``. So importing this package adds
:class:`ContinualConfigGuard` to every ``transformers.Trainer``'s default callbacks (transformers'
``DEFAULT_CALLBACKS``, the list every Trainer copies its defaults from); it refuses to start training such a model.
The continual trainers remove it from themselves.
"""

from __future__ import annotations

from peft import LoraConfig
from transformers import TrainerCallback
from transformers import trainer as transformers_trainer


def continual_adapters(model) -> dict[str, str]:
    """The adapters of ``model`` whose config is one of this package's continual configs, with their class names."""
    from .methods import config_classes

    continual = {klass for klass in config_classes().values() if klass is not LoraConfig}
    configs = getattr(model, "peft_config", None) or {}
    return {name: type(config).__name__ for name, config in configs.items() if type(config) in continual}


class ContinualConfigGuard(TrainerCallback):
    """Stops a trainer other than the continual ones from training a model with a continual config."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        found = continual_adapters(model)
        if found:
            adapter, config = next(iter(found.items()))
            raise RuntimeError(
                f"adapter {adapter!r} has a {config}, which only peft_continual's trainers train as {config}: this "
                "trainer would train it as plain LoRA, without the method. Use peft_continual.ContinualTrainer "
                "(transformers) or peft_continual.ContinualSFTTrainer (TRL) and call train_continual(tasks); to train "
                "plain LoRA on purpose, build the model with a peft.LoraConfig instead"
            )


def install() -> None:
    """Add the guard to transformers' default callbacks (once)."""
    if ContinualConfigGuard not in transformers_trainer.DEFAULT_CALLBACKS:
        transformers_trainer.DEFAULT_CALLBACKS.append(ContinualConfigGuard)
