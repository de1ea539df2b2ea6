"""Model card and Hub upload of a saved continual run; builds on :mod:`persistence`, which knows nothing of it."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import tempfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Optional, Union

from huggingface_hub import HfApi, ModelCard, ModelCardData, constants, get_session
from huggingface_hub.errors import LocalTokenNotFoundError

from .methods import registered_methods
from .metrics import ContinualResult
from .retention import format_change, format_value
from .persistence import STATE_FILE, save_continual

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


def published_base(base_model: Optional[str], card: dict[str, Any]) -> Optional[str]:
    """The base model a card and an upload name: ``finetuned_from``, else ``base_model`` if it is a Hub id."""
    return card.get("finetuned_from") or hub_id(base_model)


LOCAL_BASE_NOTE = (
    "\nThe base model was loaded from a local folder, whose path is not published: `finetuned_from=\"owner/name\"` "
    "(of `push_to_hub` or `create_model_card`) names it."
)


def check_card_keywords(card: dict[str, Any]) -> None:
    unknown = sorted(set(card) - set(CARD_KEYWORDS))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown}; model card keywords: {', '.join(CARD_KEYWORDS)}")


def _as_list(value: Union[str, list[str], None]) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _scoring_note(task: dict[str, Any], protocols: list[str]) -> str:
    """How the run scored ``task``: generation tasks by their metric on a greedy answer; classification tasks by the
    run's primary protocol."""
    if task.get("kind") == "generation":
        limit = f" (at most {task['max_new_tokens']} new tokens)" if task.get("max_new_tokens") else ""
        return f"generate greedily after the prompt{limit}; the answer is scored by {task.get('metric') or 'exact_match'}"
    if protocols[0] == "rank":
        how = "rank the labels by their log-likelihood after the prompt; the likeliest one is the answer"
    else:
        how = "generate greedily after the prompt; the answer must be the label"
    return f"{how}, scored by {task.get('metric') or 'accuracy'}"


def _prompt_section(state: dict[str, Any]) -> str:
    trainer = state.get("trainer", {})
    protocols = trainer.get("evaluation_method") or ["rank"]
    protocols = [protocols] if isinstance(protocols, str) else protocols
    if state.get("chat_template_applied"):
        rendering = ("rendered by the tokenizer's chat template as it was trained, with the system turn the template "
                     "writes; nothing comes before it")  # fmt: skip
    else:
        rendering = "as it was trained; the tokenizer's own prefix (e.g. BOS) comes first"
    lines = [f"Each task's prompt, {rendering}. `{{text}}` (a generation task's `{{prompt}}`) is the input; an "
             f"over-long input is shortened to fit {trainer.get('max_source_length', '?')} prompt tokens. The target "
             "that follows the prompt carries the loss; `{label}` (`{completion}`) is the answer."]  # fmt: skip
    for task in state["tasks"]:
        if "prompt_format" not in task:
            continue
        what = f"labels: {', '.join(task['labels'])}" if task["labels"] else "generation"
        lines.append(f"\n**{task['name']}** ({what}): {_scoring_note(task, protocols)}.\n\n```text\n{task['prompt_format']}\n```")
        if "target_format" in task:
            lines.append(f"Target (follows the prompt directly):\n\n```text\n{task['target_format']}\n```")
    return "\n".join(lines)


def _training_section(state: dict[str, Any]) -> str:
    """The TrainingArguments each task trained with: one list when they agree, else a table with a column per task."""
    details = state["result"].get("details", [])
    per_task = {d["task"]: d["training_arguments"] for d in details if d.get("training_arguments")}
    if not per_task:
        return "- not recorded"
    missing = [d["task"] for d in details if d["task"] not in per_task]
    note = f"\n\nNot recorded for {', '.join(missing)} (trained before peft_continual recorded them)." if missing else ""
    values = list(per_task.values())
    if all(v == values[0] for v in values):
        return "\n".join(f"- `{k}`: `{v}`" for k, v in values[0].items()) + note
    keys = list(dict.fromkeys(k for v in values for k in v))
    table = "| argument | " + " | ".join(per_task) + " |\n|---|" + "---|" * len(per_task) + "\n"
    table += "".join(f"| `{k}` | " + " | ".join(f"`{v.get(k, '')}`" for v in values) + " |\n" for k in keys)
    return table + note


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
    s = result.summary()
    base = published_base(base_model, card)
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
{"LoRA adapters" if method_class.exports_root_adapter else "Adapters"} trained task after task with [peft_continual](https://pypi.org/project/peft-continual/){f" on `{base}`" if base else ""}.{"" if base else LOCAL_BASE_NOTE}
{_loading_section(method_class)}{continuing}
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
{_task_aware_line(result)}
{_noise_note(state)}{_retention_section(result)}
## Method and hyper-parameters

Method: `{method}`

{params}

## Training arguments (each task)

{_training_section(state)}
"""
    return ModelCard(content)


def _loading_section(method_class) -> str:
    """How to load the continual model: the root adapter with plain peft, or (OSF, whose training rewrote the base)
    the target weights into the base model itself."""
    if method_class.exports_root_adapter:
        return """The root adapter is the whole continual model and loads with plain peft:

```python
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "<this repo>")
```

Each task's adapter is in its own subfolder; `continual_state.json` holds the task order, the method's
configuration and the accuracy matrix"""
    return """Each task's training was merged into the base model's weights, so the continual model is the base with its
target modules rewritten: `continual_weights.safetensors` holds those weights and loads without peft:

```python
from safetensors.torch import load_file
model.load_state_dict(load_file("continual_weights.safetensors"), strict=False)  # model: the base model
```

The last task's peft adapter is in its subfolder (it refers to the merged weights, not to the base model);
`continual_state.json` holds the task order, the method's configuration and the accuracy matrix"""


def _task_aware_line(result: ContinualResult) -> str:
    if result.task_aware_accuracy is None:
        return ""
    return (f"- Task-aware average accuracy: {_pct(result.task_aware_accuracy)}: each task served by its own folder "
            "under `task_aware/` (its adapter and the earlier ones: the model as after its training), for a server that "
            "knows the task (multi-LoRA); a separate protocol, not comparable with the average accuracy above\n")


def _retention_section(result: ContinualResult) -> str:
    """What the run did beyond its tasks: each retention measure on the base and after the last task, with the change
    and its 95 % interval over the items (the card's reader asks whether the model is still a good chat model)."""
    if not result.retention:
        return ""
    rows = "".join(
        f"| `{name}` | {track.metric}{'' if track.higher_is_better else ' (lower is better)'} | "
        f"{format_value(track, track.scores[0])} | {format_value(track, track.scores[-1])} | {format_change(track)} |\n"
        for name, track in result.retention.items()
    )  # fmt: skip
    return (
        "\n## Beyond the tasks: retention (never trained)\n\nScored on the base model and after every task (points; KL "
        "in nats per token from the base on the base's own answers). Final score, base, and the change with its 95 % "
        "interval over the items, one run:\n\n| measure | metric | base | after the last task | change [95 %] |\n"
        "|---|---|---|---|---|\n"
        f"{rows}"
    )


def write_model_card(folder: Path, state: dict[str, Any], base_model: Optional[str] = None, **card: Any) -> None:
    render_model_card(state, base_model, **card).save(str(Path(folder) / "README.md"))


def save_continual_with_card(trainer, output_dir, *, include_data: bool = True, **card: Any) -> Path:
    """:func:`persistence.save_continual` plus the model card, written into the same atomic folder."""
    base = trainer.method.config.base_model_name_or_path
    return save_continual(
        trainer, output_dir, include_data=include_data,
        extra_files=lambda staging, state: write_model_card(staging, state, base, **card),
    )  # fmt: skip


class HubAccessError(ValueError):
    """``push_to_hub`` cannot work as set up (no network, no or a read-only token, a repo that cannot be written):
    raised before training, so that no run is trained for an upload that cannot happen."""


class HubUploadError(RuntimeError):
    """An upload to the Hub failed: names the repo and the Hub (the cause is chained), and where the run is saved."""

    def __init__(self, repo_id: str, cause: BaseException, saved: Optional[str | os.PathLike] = None):
        self.repo_id, self.saved = repo_id, saved
        where = (
            f"; your run is saved in {saved} (ContinualTrainer.from_continual loads it; its push_to_hub() retries the "
            "upload)" if saved is not None else ""
        )  # fmt: skip
        super().__init__(
            f"upload to {repo_id!r} on the Hugging Face Hub ({constants.ENDPOINT}) failed: {type(cause).__name__}: "
            f"{cause}{where}"
        )


HUB_PROBE_TIMEOUT = 5.0  # seconds: one request, where huggingface_hub retries a failed download for about a minute


def _offline_mode() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it at import, or as set since (the demo and peft read the variable)."""
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any((f or "").strip().upper() in ("1", "ON", "YES", "TRUE") for f in flags)


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT) -> Optional[str]:
    """Why the Hub cannot be reached now (offline mode, no network), or None when it answers.

    One request without retries and with a short timeout, so that a caller can fail (or go offline) at once, where a
    download would retry for a minute and huggingface_hub's own requests have no timeout.
    """
    if _offline_mode():
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as exc:  # the HTTP client's errors (httpx or requests, by huggingface_hub version)
        return f"{type(exc).__name__}: {exc}"
    return None


def enable_offline_mode() -> None:
    """Make huggingface_hub, transformers and peft use the local cache only, without retries: as HF_HUB_OFFLINE=1
    at start-up would (huggingface_hub reads it once, at import; peft reads the variable at every adapter save)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True


def default_repo_id(args) -> str:
    """The repo a trainer with ``args`` pushes to: ``hub_model_id``, else the output folder's name (as Trainer)."""
    return args.hub_model_id or Path(args.output_dir).name


def check_push_access(args) -> None:
    """Before training with ``args.push_to_hub``: the Hub answers, the token is valid and may write, and the repo
    exists or is created now (as Trainer creates it when it starts). Raises :class:`HubAccessError` naming what to fix.

    Runs on the main process only (the one that uploads).
    """
    if not args.should_save:
        return
    repo_id = default_repo_id(args)
    problem = hub_unreachable()
    if problem is not None:
        raise HubAccessError(
            f"push_to_hub uploads the run to {repo_id!r} on the Hugging Face Hub ({constants.ENDPOINT}), which cannot "
            f"be reached: {problem}. Checked before training so that no run waits for an upload that cannot happen: "
            f"{'unset HF_HUB_OFFLINE' if _offline_mode() else 'connect to the Hub'}, or train without push_to_hub and "
            "push the saved run later with "
            "ContinualTrainer.from_continual(folder, base_model, args, processing_class=tokenizer).push_to_hub()"
        )
    api = HfApi(token=args.hub_token)
    try:
        user = api.whoami()
    except LocalTokenNotFoundError:
        raise HubAccessError(
            f"push_to_hub needs a Hugging Face token that may write to {repo_id!r}: log in with `hf auth login`, set "
            "HF_TOKEN, or pass hub_token (--hub_token)"
        ) from None
    except Exception as exc:
        raise HubAccessError(
            f"the Hugging Face Hub refused the token for pushing to {repo_id!r} ({type(exc).__name__}: {exc}): create "
            "a token with write access at https://huggingface.co/settings/tokens"
        ) from exc
    if ((user.get("auth") or {}).get("accessToken") or {}).get("role") == "read":
        raise HubAccessError(
            f"the Hugging Face token of {user.get('name')!r} is read-only, so the upload to {repo_id!r} would fail "
            "after training: use a token with write access (https://huggingface.co/settings/tokens)"
        )
    try:
        api.create_repo(repo_id, private=args.hub_private_repo, exist_ok=True, repo_type="model")
    except Exception as exc:
        raise HubAccessError(
            f"cannot create or write the model repo {repo_id!r} as {user.get('name')!r} ({type(exc).__name__}: "
            f"{exc}): choose a repo in your namespace or an organisation you may write to (hub_model_id, --hub_model_id)"
        ) from exc


def source_name(source: str) -> str:
    """A task's data source as an upload may name it: a local path by its last component, a Hub dataset as is."""
    if source and (os.path.isabs(source) or os.path.exists(source) or source.startswith(("~", "."))):
        return Path(source).name
    return source


def strip_local_paths(folder: Path, state: dict[str, Any], base: Optional[str]) -> None:
    """Remove what names the uploader's machine from a saved folder about to be uploaded: the base model's local
    path (in every ``adapter_config.json`` and the state) becomes ``base`` (a Hub id, or None), data sources are
    named without their folder, and peft's per-adapter READMEs (cards naming the local base) are left out.

    The local save keeps them: there they name the user's own files, and ``from_continual`` does not read ``source``
    (only its error messages name it).
    """
    for config_file in folder.rglob("adapter_config.json"):
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = base
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    for readme in folder.glob("*/README.md"):
        readme.unlink()
    state = copy.deepcopy(state)
    state["config"]["base_model_name_or_path"] = base
    state["base_model"]["name_or_path"] = base
    for task in state["tasks"]:
        task["source"] = source_name(task["source"])
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")


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
    """Save ``trainer``'s run (without training or evaluation data unless ``include_data``, without local paths) with
    its card and upload it; a failed upload raises :class:`HubUploadError`."""
    card = card or {}
    check_card_keywords(card)  # before the save: a typo must not cost one
    base_model = trainer.method.config.base_model_name_or_path

    def card_and_cleanup(staging: Path, state: dict[str, Any]) -> None:
        write_model_card(staging, state, base_model, **card)
        strip_local_paths(staging, state, published_base(base_model, card))

    tmp = tempfile.mkdtemp()
    try:
        folder = save_continual(trainer, Path(tmp) / "continual", include_data=include_data, extra_files=card_and_cleanup)
        try:
            upload = push_folder_to_hub(folder, repo_id, **kwargs)
        except Exception as exc:
            raise HubUploadError(repo_id, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if isinstance(upload, Future):  # blocking=False: the folder must outlive the call
        upload.add_done_callback(lambda _: shutil.rmtree(tmp, ignore_errors=True))
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return upload


def push_saved_run(trainer, saved: str | os.PathLike):
    """``trainer.push_to_hub()`` of a run already saved in ``saved``: a failed upload says where the run is."""
    try:
        return trainer.push_to_hub()
    except HubUploadError as exc:
        raise HubUploadError(exc.repo_id, exc.__cause__, saved) from exc.__cause__
