"""``ContinualSFTTrainer``: the continual core on TRL's ``SFTTrainer``, for those who train with TRL.

Every registered method, the task loop, evaluation and saving are :class:`~peft_continual.trainer.ContinualTrainerMixin`'s,
shared with :class:`~peft_continual.ContinualTrainer`. What TRL brings is its own: ``SFTConfig`` (``max_length`` and
``truncation_mode``, ``completion_only_loss``, ``assistant_only_loss``, ``loss_type``, ``pad_token``, ...), its
dataset preparation, collator and loss (the fused LM head, ``num_items_in_batch``, its entropy and token-accuracy
metrics). Each task's rows are written in TRL's prompt/completion format (conversational when the tokenizer's chat
template is used) with the prompt this package would train and score on (the same head, the same shortening to
``max_source_length``), and TRL prepares them, one preparation per task.

Packing is refused: it erases which task a row came from, and the replay buffer needs the task's rows.

Supports TRL 1.7 to 1.x (labels built at dataset preparation, ``SFTTrainer._prepare_dataset`` with this signature);
tested with 1.16.
"""

from __future__ import annotations

from typing import Any

import datasets

try:
    from trl import SFTTrainer
except ImportError as error:  # TRL is an optional extra
    raise ImportError("ContinualSFTTrainer needs TRL: pip install 'peft_continual[trl]'") from error

from .tasks import ContinualTask, PromptEncoder, TaskSpecError, use_chat_template
from .tasks.prompts import answer_text, chat_messages, prompt_parts
from .trainer import ContinualTrainerMixin

_PROBE = "probe"


def trl_rows(task: ContinualTask, encoder: PromptEncoder) -> datasets.Dataset:
    """The task's training rows in TRL's prompt/completion format, each prompt as this package renders it (shortened
    to the encoder's ``max_source_length``); conversational when the encoder renders the chat template."""
    rows = []
    for row in task.train:
        fitted = encoder.fit(task, row)
        answer = answer_text(task, fitted)
        if encoder.chat:
            rows.append({"prompt": chat_messages(task, fitted), "completion": [{"role": "assistant", "content": answer}]})
        else:  # TRL appends EOS to a plain completion, as this package does
            rows.append({"prompt": "".join(prompt_parts(task, fitted, chat=False)), "completion": " " + answer})
    return datasets.Dataset.from_list(rows)


class ContinualSFTTrainer(ContinualTrainerMixin, SFTTrainer):
    """Train a ``PeftModel`` on tasks one after the other with TRL's ``SFTTrainer`` and an ``SFTConfig``.

    ``model`` is a ``PeftModel`` with the method's config (e.g. ``get_peft_model(model, NLoraConfig(...))``); tasks
    go to :meth:`train_continual` (``ContinualTask``, or ``datasets.Dataset`` / ``DatasetDict`` in any TRL format
    through :func:`~peft_continual.load_continual_tasks`), not to ``train_dataset``. The other arguments are
    :class:`~peft_continual.trainer.ContinualTrainerMixin`'s and ``SFTTrainer``'s.
    """

    _cl_target_logits = False  # TRL's fused LM head never builds the full logits

    def __init__(self, model=None, args=None, *, processing_class=None, chat_template: str = "auto", **kwargs):
        for name, hint in (("train_dataset", "pass the tasks to trainer.train_continual(tasks)"),
                           ("peft_config", "wrap the model first: get_peft_model(model, NLoraConfig(...))"),
                           ("formatting_func", "give the tasks as rows (prompt/completion, messages, ...)")):  # fmt: skip
            if kwargs.get(name) is not None:
                raise ValueError(f"ContinualSFTTrainer takes no {name}: {hint}")
        if args is not None and (getattr(args, "packing", False) or getattr(args, "padding_free", False)):
            raise ValueError(
                "ContinualSFTTrainer does not pack: packing (and padding-free batches) erases which task a row came "
                "from, and the replay buffer and the per-task evaluation need rows. Set packing=False and "
                "padding_free=False in SFTConfig"
            )
        if processing_class is None:
            raise ValueError("ContinualSFTTrainer needs the tokenizer: pass processing_class=tokenizer")
        # SFTTrainer prepares a training set when it is built; the tasks are prepared one by one later. A one-row
        # probe in their format lets it settle what depends on the format (completion-only loss, assistant masks).
        chat = use_chat_template(processing_class, chat_template)
        probe = (
            {"prompt": [{"role": "user", "content": _PROBE}], "completion": [{"role": "assistant", "content": _PROBE}]}
            if chat else {"prompt": _PROBE, "completion": " " + _PROBE}
        )  # fmt: skip
        super().__init__(model=model, args=args, processing_class=processing_class, chat_template=chat_template,
                         train_dataset=datasets.Dataset.from_list([probe]), **kwargs)  # fmt: skip

    def _cl_default_collator(self, tokenizer) -> Any:
        return None  # TRL's own collator, built from SFTConfig

    def _cl_features(self, task: ContinualTask) -> datasets.Dataset:
        """TRL's preparation of the task's rows: tokenised by TRL, labels from its completion or assistant masks,
        truncated to ``max_length``."""
        if task.train is None:
            raise TaskSpecError(f"task {task.name!r} has no training data (it was restored from a saved run)")
        rows = trl_rows(task, PromptEncoder(self.processing_class, self.max_source_length, self.chat))
        return self._prepare_dataset(rows, self.processing_class, self.args, False, None, task.name)
