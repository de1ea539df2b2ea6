"""Model card and Hub upload of a saved continual run; builds on :mod:`persistence`, which knows nothing of it."""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Optional, Union

from huggingface_hub import HfApi, ModelCard, ModelCardData

from .methods import registered_methods
from .metrics import ContinualResult
from .persistence import save_continual

def _pct(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


# Trainer.create_model_card's keywords (what run_clm-style scripts pass to push_to_hub); all go into the card.
CARD_KEYWORDS = ("language", "license", "tags", "model_name", "finetuned_from", "tasks", "dataset_tags", "dataset",
                 "dataset_args")  # fmt: skip
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def hub_id(name_or_path: Optional[str]) -> Optional[str]:
    """``name_or_path`` if it names a Hub repo, else None (a local folder is no base model a card reader can fetch)."""
    if not name_or_path or os.path.exists(name_or_path) or not _HUB_ID.fullmatch(name_or_path) or ".." in name_or_path:
        return None
    return name_or_path


def check_card_keywords(card: dict[str, Any]) -> None:
    unknown = sorted(set(card) - set(CARD_KEYWORDS))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown}; model card keywords: {', '.join(CARD_KEYWORDS)}")


def _as_list(value: Union[str, list[str], None]) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _prompt_section(state: dict[str, Any]) -> str:
    trainer = state.get("trainer", {})
    chat = "" if trainer.get("chat_template", "off") == "off" else (
        f" With chat_template={trainer['chat_template']!r} and a tokenizer that has a chat template, the text before "
        "`Answer:` is the user turn instead and the target is the assistant turn, followed by the end-of-turn."
    )  # fmt: skip
    lines = ["Each task's prompt (`{text}` is the input), followed by a space, the label and EOS (for a generation "
             "task its completion and EOS), which carry the loss. "
             "The tokenizer's own prefix (e.g. BOS) comes first; an over-long input is shortened in the middle of "
             f"`{{text}}` to {state.get('trainer', {}).get('max_source_length', '?')} prompt tokens. Score a new input by "
             "the option with the highest log-likelihood after the prompt, or by greedy generation." + chat]  # fmt: skip
    for task in state["tasks"]:
        if "prompt_format" in task:
            what = f"labels: {', '.join(task['labels'])}" if task["labels"] else f"generation, {task.get('metric')}"
            lines.append(f"\n{task['name']} ({what}):\n\n```text\n{task['prompt_format']}\n```")
    return "\n".join(lines)


def _noise_note(state: dict[str, Any]) -> str:
    sizes = {t["name"]: t.get("eval_examples") for t in state["tasks"] if t.get("eval_examples")}
    if not sizes:
        return ""
    smallest = min(sizes.values())
    return (
        "Evaluation examples per task: " + ", ".join(f"{name} {n}" for name, n in sizes.items()) + ". One score "
        f"measured on n examples is uncertain by up to ±{50 / math.sqrt(smallest):.1f} points (one standard error, "
        f"50/√n at n = {smallest}); read differences below about twice that as noise.\n"
    )


def render_model_card(state: dict[str, Any], base_model: Optional[str] = None, **card: Any) -> ModelCard:
    """The card of a saved run; ``card`` takes Trainer.create_model_card's keywords (:data:`CARD_KEYWORDS`)."""
    check_card_keywords(card)
    result = ContinualResult.from_dict(state["result"])
    method = state["method"]
    names = result.task_names
    metrics = result.task_metrics
    header = "| after \\ on | " + " | ".join(f"{n} ({m})" for n, m in zip(names, metrics)) + " |\n|---|" + "---|" * len(names) + "\n"
    rows = "".join(
        f"| {i + 1}. {names[i]} | " + " | ".join("–" if a is None else _pct(a) for a in row) + " |\n"
        for i, row in enumerate(result.accuracy_matrix)
    )
    if result.zero_shot is not None:
        rows = "| zero-shot | " + " | ".join(_pct(a) for a in result.zero_shot) + " |\n" + rows
    config, method_class = state["config"], registered_methods()[method]
    params = "\n".join(f"- `{k}`: `{config[k]}`" for k in method_class.hyperparameters() if k in config)
    training = "\n".join(f"- `{k}`: `{v}`" for k, v in state.get("training_arguments", {}).items())
    s = result.summary()
    base = card.get("finetuned_from") or hub_id(base_model)
    datasets = _as_list(card.get("dataset_tags")) + _as_list(card.get("dataset"))
    dataset_args = _as_list(card.get("dataset_args"))
    data = ModelCardData(
        base_model=base,
        library_name="peft",
        language=card.get("language"),
        license=card.get("license"),
        datasets=list(dict.fromkeys(datasets)) or None,
        tags=list(dict.fromkeys(["peft", "lora", "continual-learning", "peft_continual", method]
                                + _as_list(card.get("tags")) + _as_list(card.get("tasks")))),
    )  # fmt: skip
    title = card.get("model_name") or f"{method_class.title} on {len(names)} tasks"
    subtitle = f"\n{method_class.title} on {len(names)} tasks.\n" if card.get("model_name") else ""
    data_line = (
        f"\nDatasets: {', '.join(datasets)}" + (f" ({', '.join(dataset_args)})" if dataset_args else "") + ".\n"
        if datasets else ""
    )  # fmt: skip
    continuing = (
        ", and lets `ContinualTrainer.from_continual` train further tasks."
        if state.get("data_included", True)
        else ". It carries no training or evaluation data (evaluation rows, replay buffer): further tasks are trained "
        "from the run's local save."
    )
    content = f"""---
{data.to_yaml()}
---

# {title}
{subtitle}
LoRA adapters trained task after task with [peft_continual](https://pypi.org/project/peft-continual/){f" on `{base}`" if base else ""}.
The root adapter is the whole continual model and loads with plain peft:

```python
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "<this repo>")
```

Each task's adapter is in its own subfolder; `continual_state.json` holds the task order, the method's
configuration and the accuracy matrix{continuing}
{data_line}
## Task order

{" → ".join(names)}

## Prompt format

{_prompt_section(state)}

## Scores (%) after each task ({result.evaluation_method} scoring; each task's metric in brackets)

{header}{rows}
- Average accuracy (mean score over tasks): **{_pct(s["average_accuracy"])}**
- Backward transfer: {_pct(s["backward_transfer"], True)}
- Forward transfer: {_pct(s["forward_transfer"], True)}
- Forgetting: {_pct(s["forgetting"], True)}

{_noise_note(state)}
## Method and hyper-parameters

Method: `{method}`

{params}

## Training arguments (each task)

{training or "- not recorded"}
"""
    return ModelCard(content)


def write_model_card(folder: Path, state: dict[str, Any], base_model: Optional[str] = None, **card: Any) -> None:
    render_model_card(state, base_model, **card).save(str(Path(folder) / "README.md"))


def save_continual_with_card(trainer, output_dir, *, include_data: bool = True, **card: Any) -> Path:
    """:func:`persistence.save_continual` plus the model card, written into the same atomic folder."""
    base = trainer.method.config.base_model_name_or_path
    return save_continual(
        trainer, output_dir, include_data=include_data,
        extra_files=lambda staging, state: write_model_card(staging, state, base, **card),
    )  # fmt: skip


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    commit_message: str = "Upload continual LoRA adapters",
    blocking: bool = True,
    api: Optional[HfApi] = None,
):
    """Create the model repo if needed and upload a folder written by ``save_continual``."""
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, revision=revision, repo_type="model",
        run_as_future=not blocking,
    )  # fmt: skip


def push_continual_to_hub(trainer, repo_id: str, *, include_data: bool = False, card: Optional[dict] = None, **kwargs):
    """Save ``trainer``'s run (without training or evaluation data unless ``include_data``) and upload it."""
    check_card_keywords(card or {})  # before the save: a typo must not cost one
    tmp = tempfile.mkdtemp()
    try:
        folder = save_continual_with_card(trainer, Path(tmp) / "continual", include_data=include_data, **(card or {}))
        upload = push_folder_to_hub(folder, repo_id, **kwargs)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if isinstance(upload, Future):  # blocking=False: the folder must outlive the call
        upload.add_done_callback(lambda _: shutil.rmtree(tmp, ignore_errors=True))
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return upload
