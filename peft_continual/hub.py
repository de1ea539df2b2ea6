"""Model card and Hub upload of a saved continual run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from huggingface_hub import HfApi, ModelCard, ModelCardData

from .metrics import ContinualResult

METHOD_TITLES = {
    "seqlora": "SeqLoRA (sequential LoRA, no protection)",
    "inclora": "IncLoRA (one frozen LoRA per task)",
    "nlora": "N-LoRA (collision-regularised task LoRAs, arXiv 2410.10179)",
    "olora": "O-LoRA (orthogonal task LoRAs, arXiv 2310.14152)",
    "replay": "ER (experience replay)",
    "ilora": "I-LoRA (interpolated fast/slow LoRA with replay, arXiv 2402.18865)",
}
HYPERPARAMETERS = (
    "r", "lora_alpha", "lora_dropout", "target_modules", "merge_finished_adapters", "collision_lambda", "collision_form",
    "collision_reduction", "orthogonal_lambda", "orthogonal_form", "l2_lambda", "replay_buffer_size", "replay_batch_size",
    "ema_decay", "ema_warmup_steps", "consistency_weight", "consistency_layers", "consistency_target", "eval_learner",
)  # fmt: skip


def _pct(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def render_model_card(state: dict[str, Any], base_model: Optional[str]) -> ModelCard:
    result = ContinualResult.from_dict(state["result"])
    method = state["method"]
    names = result.task_names
    header = "| after \\ on | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    rows = "".join(
        f"| {i + 1}. {names[i]} | " + " | ".join("–" if a is None else _pct(a) for a in row) + " |\n"
        for i, row in enumerate(result.accuracy_matrix)
    )
    if result.zero_shot is not None:
        rows = "| zero-shot | " + " | ".join(_pct(a) for a in result.zero_shot) + " |\n" + rows
    config = state["config"]
    params = "\n".join(f"- `{k}`: `{config[k]}`" for k in HYPERPARAMETERS if k in config)
    s = result.summary()
    data = ModelCardData(
        base_model=base_model or None,
        library_name="peft",
        tags=["peft", "lora", "continual-learning", "peft_continual", method],
    )
    content = f"""---
{data.to_yaml()}
---

# {METHOD_TITLES.get(method, method)} on {len(names)} tasks

LoRA adapters trained task after task with [peft_continual](https://pypi.org/project/peft-continual/).
The root adapter is the whole continual model and loads with plain peft:

```python
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "<this repo>")
```

Each task's adapter is in its own subfolder; `continual_state.json` holds the task order, the method's
configuration and the accuracy matrix, and lets `ContinualTrainer.from_continual` train further tasks.

## Task order

{" → ".join(names)}

## Accuracy (%) after each task ({result.evaluation_method} scoring)

{header}{rows}
- Average accuracy: **{_pct(s["average_accuracy"])}**
- Backward transfer: {_pct(s["backward_transfer"], True)}
- Forward transfer: {_pct(s["forward_transfer"], True)}
- Forgetting: {_pct(s["forgetting"], True)}

## Method and hyper-parameters

Method: `{method}`

{params}
"""
    return ModelCard(content)


def write_model_card(folder: Path, state: dict[str, Any], base_model: Optional[str]) -> None:
    render_model_card(state, base_model).save(str(Path(folder) / "README.md"))


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    commit_message: str = "Upload continual LoRA adapters",
    api: Optional[HfApi] = None,
):
    """Create the model repo if needed and upload a folder written by ``save_continual``."""
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, revision=revision, repo_type="model"
    )


def push_continual_to_hub(trainer, repo_id: str, **kwargs):
    """Save ``trainer``'s run to a temporary folder and upload it."""
    with tempfile.TemporaryDirectory() as tmp:
        from .persistence import save_continual

        folder = save_continual(trainer, Path(tmp) / "continual")
        return push_folder_to_hub(folder, repo_id, **kwargs)
