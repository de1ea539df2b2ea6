"""Saving a continual run and continuing it later, in another process.

Layout of a saved folder (JSON and safetensors only, never pickle, so that loading runs no code from it)::

    adapter_config.json, adapter_model.safetensors   root adapter: *the* continual model for plain peft
                                                     (all task adapters concatenated, or I-LoRA's eval learner)
    <adapter>/adapter_config.json, ...               every adapter of the run (task_1_x, ..., or default + slow)
    continual_state.json                             method config, task definitions with their evaluation rows,
                                                     accuracy matrix, method state, base-weight fingerprint
    continual_state.safetensors                      method tensors (replay buffer, random state)
    README.md                                        model card (written by :mod:`hub`, which builds on this module)

Saved with ``include_data=False`` (what uploads do), the folder carries no rows of data: no evaluation rows, no
replay buffer; it serves inference and the record of the run, and ``from_continual`` refuses it.

The folder is written to a staging directory and moved into place, so an interrupted save never leaves a folder
that looks complete (``continual_state.json`` comes last). Saving into a folder that holds other things (a run
folder with its checkpoints, progress and predictions, a user's own files) replaces only the files the save writes,
and removes the adapter files of an earlier save there that this one lacks; everything else stays.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import datasets
import torch
from peft import LoraConfig, PeftModel, TaskType, set_peft_model_state_dict
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from peft.utils.integrations import gather_params_ctx
from safetensors.torch import load_file, save_file

from .adapters import concatenated_lora
from .configs import as_lora_config
from .io_utils import staged_entries
from .methods import config_classes
from .osf import continual_weights
from .tasks import GENERATION, ContinualTask, PromptEncoder

STATE_FILE = "continual_state.json"
TENSORS_FILE = "continual_state.safetensors"
CONTINUAL_WEIGHTS_FILE = "continual_weights.safetensors"  # OSF's root: base.load_state_dict(weights, strict=False)
TASK_AWARE_DIR = "task_aware"  # one plain-peft adapter per task: the model as it was after that task
FORMAT_VERSION = 1
ADAPTER_FILES = ("adapter_config.json", SAFETENSORS_WEIGHTS_NAME, "README.md")  # what peft's save_pretrained writes
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class ContinualStateError(ValueError):
    """A saved continual folder is incomplete, corrupted, unsafe or does not fit the given base model."""


def plain_config(config):
    """The adapter's config as plain peft's own class (LoRA's for every LoRA method, OSF's for OSF)."""
    if isinstance(config, LoraConfig):
        return plain_lora_config(config)
    peft_class = next(c for c in type(config).__mro__ if c.__module__.startswith("peft."))
    fields = {f.name for f in dataclasses.fields(peft_class) if f.init}
    return peft_class(**{k: v for k, v in config.to_dict().items() if k in fields})


def plain_lora_config(config: LoraConfig) -> LoraConfig:
    """``config`` as a plain ``LoraConfig`` (what plain peft loads silently), for a causal LM unless it says otherwise."""
    plain = as_lora_config(config)  # any config class, registered by a contributor too
    plain.task_type = plain.task_type or TaskType.CAUSAL_LM  # else plain peft builds a PeftModel, not ...ForCausalLM
    return plain


def _save_adapter(model: PeftModel, adapter: str, destination: Path) -> None:
    """Save one adapter into ``destination`` with a plain ``LoraConfig``."""
    with tempfile.TemporaryDirectory(dir=destination.parent) as tmp:
        model.save_pretrained(tmp, selected_adapters=[adapter])
        source = Path(tmp) if adapter == "default" else Path(tmp) / adapter
        destination.mkdir(parents=True, exist_ok=True)
        for file in source.iterdir():
            if file.is_file():
                shutil.move(str(file), destination / file.name)
    plain_config(model.peft_config[adapter]).save_pretrained(str(destination))


def save_root_adapter(model: PeftModel, adapters: list[str], destination: Path) -> None:
    """The continual model as one adapter for plain peft: the sum of ``adapters`` on the unmodified base.

    One adapter is saved as it is (every option kept: rsLoRA, DoRA, modules_to_save, ...); several are saved as
    their exact rank concatenation (:func:`~peft_continual.adapters.concatenated_lora`).
    """
    destination.mkdir(parents=True, exist_ok=True)
    if len(adapters) == 1:
        _save_adapter(model, adapters[0], destination)
        return
    config = plain_lora_config(model.peft_config[adapters[0]])
    tensors, root_config = concatenated_lora(model, adapters, like=config)
    save_file(tensors, str(destination / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
    root_config.save_pretrained(str(destination))


def task_to_dict(task: ContinualTask, include_data: bool = True) -> dict[str, Any]:
    """A task's definition, and its evaluation rows if ``include_data`` (enough to keep evaluating it after a reload)."""
    return {
        "name": task.name, "kind": task.kind, "metric": task.metric, "max_new_tokens": task.max_new_tokens,
        "labels": task.labels, "instruction": task.instruction, "task_type": task.task_type,
        "show_options": task.show_options, "source": task.source, "eval_examples": len(task.eval),
        "eval": {column: list(task.eval[column]) for column in task.columns} if include_data else None,
    }  # fmt: skip


def task_from_dict(data: dict[str, Any]) -> ContinualTask:
    """Runs saved before generation tasks have no kind, metric or max_new_tokens: classification by accuracy."""
    return ContinualTask(
        name=data["name"], train=None, eval=datasets.Dataset.from_dict(data["eval"]), labels=data["labels"],
        instruction=data["instruction"], task_type=data["task_type"], show_options=data["show_options"],
        source=data["source"], kind=data.get("kind", "classification"), metric=data.get("metric"),
        max_new_tokens=data.get("max_new_tokens"),
    )  # fmt: skip


def trained_format(task: ContinualTask, encoder: PromptEncoder) -> dict[str, str]:
    """The task's prompt and target exactly as trained (chat template and its system turn included), around the
    placeholders ``{text}``/``{label}`` (generation: ``{prompt}``/``{completion}``): what the model card shows."""
    if task.kind == GENERATION:
        row = {"prompt": "{prompt}", "completion": "{completion}", "context": ""}
    else:
        row = {"text": "{text}", "label": "{label}"}
    prompt, ids = encoder.prompt(task, row)
    target = encoder.target(task, row, prompt, ids)
    return {"prompt_format": prompt, "target_format": encoder.tokenizer.decode(target)}


# What the state records of the TrainingArguments each task trained with (never tokens or paths).
TRAINING_ARGUMENTS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "world_size", "lr_scheduler_type", "warmup_steps", "weight_decay", "optim", "max_grad_norm", "seed", "bf16",
    "fp16",
)  # fmt: skip


def training_arguments(args) -> dict[str, Any]:
    return {k: getattr(getattr(args, k), "value", getattr(args, k)) for k in TRAINING_ARGUMENTS}


def continual_state(trainer, method_meta: dict, include_data: bool) -> dict:
    """The JSON record of ``trainer``'s run (method, config, adapters, tasks, result, options): what
    ``continual_state.json`` holds and the model card describes. ``method_meta``: the method's ``state_dict()[0]``.
    Each task's TrainingArguments are in its ``result.details`` entry, recorded as it trained."""
    if not trainer.result.accuracy_matrix:
        raise ValueError("nothing to save yet: train at least one task first")
    config = trainer.method.config
    encoder = PromptEncoder(trainer.processing_class, sys.maxsize, trainer.chat)  # the whole prompt, never shortened
    return {
        "format_version": FORMAT_VERSION,
        "method": trainer.method.name,
        "config_class": type(config).__name__,
        "config": json.loads(json.dumps(config.to_dict(), default=list)),
        "adapters": list(trainer.peft_model.peft_config),
        "method_state": method_meta,
        "data_included": include_data,
        "base_model": {"name_or_path": config.base_model_name_or_path, "fingerprint": trainer.base_fingerprint},
        "tasks": [{**task_to_dict(t, include_data), **trained_format(t, encoder)} for t in trainer.tasks],
        "chat_template_applied": trainer.chat,
        "result": trainer.result.to_dict(),
        "trainer": {"evaluation_method": trainer.evaluation_methods, "max_source_length": trainer.max_source_length,
                    "evaluate_unseen": trainer.evaluate_unseen, "evaluate_seen": trainer.evaluate_seen,
                    "evaluate_zero_shot": trainer.evaluate_zero_shot,
                    "chat_template": trainer.chat_template_mode, "max_new_tokens": trainer.max_new_tokens,
                    "retention_tasks": [source.spec(include_data) for source in trainer.retention]},
        # what retention sources need to continue (the general suite's base answers, for KL and agreement)
        "retention_state": {source.name: source.state_dict() for source in trainer.retention},
    }  # fmt: skip


def save_continual(
    trainer, output_dir: str | os.PathLike, *, include_data: bool = True, extra_files: Optional[Callable[[Path, dict], None]] = None
) -> Path:
    """Write adapters, root adapter and state of ``trainer``'s run to ``output_dir`` (atomically).

    ``include_data=False`` leaves out every row of data: the tasks' evaluation rows and the method's data tensors
    (e.g. the replay buffer's training examples). Such a folder serves inference and the record of the run, not
    ``from_continual``. ``extra_files(staging, state)`` may add files (e.g. a model card) before the folder appears.
    """
    model, method = trainer.peft_model, trainer.method
    output_dir = Path(output_dir)
    meta, tensors = method.state_dict()
    if not include_data:
        tensors = {k: v for k, v in tensors.items() if not k.startswith(method.data_tensor_prefixes)}
    state = continual_state(trainer, meta, include_data)
    with staged_entries(output_dir, marker=STATE_FILE, stale=_earlier_adapter_files(output_dir, state["adapters"])) as staging:
        for adapter in model.peft_config:
            _save_adapter(model, adapter, staging / adapter)
        if method.exports_root_adapter:
            save_root_adapter(model, method.export_adapters(), staging)
        else:  # the base itself was rewritten (OSF): the continual model's target weights, loaded without peft
            save_file(continual_weights(model, method.export_adapters()[-1]), str(staging / CONTINUAL_WEIGHTS_FILE))
        for adapters in method.task_aware_adapters():  # named after the task's own adapter, the last of them
            save_root_adapter(model, adapters, staging / TASK_AWARE_DIR / adapters[-1])
        method.restore_adapter_state(model)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging / TENSORS_FILE))
        (staging / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        if extra_files is not None:
            extra_files(staging, state)
    return output_dir


def _earlier_adapter_files(folder: Path, adapters: list[str]) -> list[str]:
    """The adapter files an earlier save wrote into ``folder`` for adapters that a save of ``adapters`` lacks (its
    adapter folders may hold more: Trainer's checkpoints of that task, which stay)."""
    try:
        earlier = json.loads((folder / STATE_FILE).read_text(encoding="utf-8")).get("adapters", [])
    except (OSError, ValueError, AttributeError):
        return []
    gone = [name for name in earlier if name not in adapters and name not in ("default", ".", "..") and Path(name).name == name]
    return [f"{name}/{file}" for name in gone for file in ADAPTER_FILES if (folder / name / file).is_file()]


# ---------------------------------------------------------------------------------------------- base fingerprint

FINGERPRINT_SAMPLES = 8


@torch.no_grad()
def base_fingerprint(model: PeftModel) -> dict[str, list]:
    """A few entries of every base weight at fixed positions, per parameter name.

    Cheap at any size (8 values a tensor), and it tells apart two bases of the same shapes (another model family,
    another initialisation); the same weights loaded in another float dtype agree within :func:`base_differences`'s
    tolerance. Adapter parameters and modules_to_save copies are left out; quantized storage gives its shape only.
    """
    fingerprint = {}
    for name, param in model.named_parameters():
        if ".lora_" in name or ".osf_svd_params." in name or ".modules_to_save." in name or "trainable_tokens_" in name:
            continue
        key = name.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".original_module.", ".")
        with gather_params_ctx([param]):
            flat = param.detach().reshape(-1)
            values = []
            if flat.dtype.is_floating_point and type(param.data) is torch.Tensor and flat.numel():
                # integer positions: a float32 linspace rounds past the end beyond 2**24 entries
                positions = torch.arange(FINGERPRINT_SAMPLES, device=flat.device) * (flat.numel() - 1) // (FINGERPRINT_SAMPLES - 1)
                values = [round(v, 6) for v in flat[positions].float().tolist()]
        fingerprint[key] = [list(param.shape), values]
    return fingerprint


def base_differences(saved: Optional[dict], current: dict) -> list[str]:
    """Names of (up to 3) base tensors whose fingerprints differ; empty for the same base (or none recorded)."""
    if not saved:  # saved before fingerprints were recorded
        return []
    problems = sorted(saved.keys() ^ current.keys())[:3]
    for name in saved.keys() & current.keys():
        (shape_a, a), (shape_b, b) = saved[name], current[name]
        if shape_a != shape_b or (a and b and not torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-2, atol=1e-5)):
            problems.append(name)
        if len(problems) >= 3:
            break
    return sorted(problems)


METHOD_STATE_FILE = "continual_method.json"
METHOD_TENSORS_FILE = "continual_method.safetensors"


def save_method_state(method, folder: str | os.PathLike) -> None:
    """The method's state inside a Trainer checkpoint (written after Trainer's own files)."""
    meta, tensors = method.state_dict()
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder, METHOD_TENSORS_FILE))
    Path(folder, METHOD_STATE_FILE).write_text(json.dumps(meta), encoding="utf-8")


def read_method_meta(folder: str | os.PathLike) -> Optional[dict]:
    """The JSON part of the method's state in a Trainer checkpoint (None where it has none)."""
    meta_path = Path(folder, METHOD_STATE_FILE)
    return json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else None


def load_method_state(method, folder: str | os.PathLike, model) -> None:
    """Restore what :func:`save_method_state` wrote, if the checkpoint has it (a plain Trainer checkpoint has not)."""
    meta_path = Path(folder, METHOD_STATE_FILE)
    if meta_path.is_file():
        method.load_state_dict(json.loads(meta_path.read_text(encoding="utf-8")), load_file(str(Path(folder, METHOD_TENSORS_FILE))), model)


def load_adapter_weights(model: PeftModel, folder: str | os.PathLike, adapters: list[str], config) -> None:
    """Load saved adapters' weights into ``model``, adding those it lacks with ``config``."""
    for adapter in adapters:
        if adapter not in model.peft_config:
            saved = Path(folder, adapter)
            # an OSF adapter's shapes follow its own preserved rank, which its saved config holds
            model.add_adapter(adapter, copy.deepcopy(config) if isinstance(config, LoraConfig)
                              else type(config).from_pretrained(str(saved)))  # fmt: skip
        weights = load_file(str(Path(folder, adapter, "adapter_model.safetensors")))
        result = set_peft_model_state_dict(model, weights, adapter_name=adapter)
        if getattr(result, "unexpected_keys", None):
            raise ContinualStateError(f"adapter {adapter!r} in {str(folder)!r} does not fit this model: {result.unexpected_keys[:3]}")


# Trainer checkpoints cannot avoid torch files; Trainer reads these with weights_only=True (never training_args.bin).
TRAINER_TORCH_FILES = re.compile(r"(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|training_args\.bin)")


def check_folder_is_safe(folder: Path, trainer_checkpoint: bool = False) -> None:
    """Refuse pickle files: we write none (Trainer's own checkpoint files excepted), so they signal tampering."""
    unsafe = sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.suffix.lower() in UNSAFE_SUFFIXES
        and not (trainer_checkpoint and p.parent == folder and TRAINER_TORCH_FILES.fullmatch(p.name))
    )
    if unsafe:
        raise ContinualStateError(
            f"{str(folder)!r} contains pickle-based files {unsafe}: peft_continual saves adapters and state only as "
            "safetensors and JSON, and refuses to load such files; remove them if you trust their origin"
        )


def read_state(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and check ``continual_state.json`` and its tensors; errors name what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ContinualStateError(f"{str(folder)!r} is not a folder saved by save_continual")
    check_folder_is_safe(folder)
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        raise ContinualStateError(f"{str(folder)!r} has no {STATE_FILE}: not a saved continual run (or an interrupted copy)")
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ContinualStateError(f"{str(state_path)!r} is corrupted: {exc}") from exc
    needed = {"format_version", "config_class", "config", "adapters", "method_state", "tasks", "result"}
    if not isinstance(state, dict) or not needed <= set(state):
        raise ContinualStateError(f"{str(state_path)!r} is incomplete: expected keys {sorted(needed)}")
    if state["format_version"] != FORMAT_VERSION:
        raise ContinualStateError(f"{str(state_path)!r} has format {state['format_version']}, this version reads {FORMAT_VERSION}")
    if state["config_class"] not in config_classes():
        raise ContinualStateError(f"unknown config class {state['config_class']!r} in {str(state_path)!r}")
    for entry in state["result"].get("details", []):  # saved before per-task arguments: the run's, if recorded
        entry.setdefault("training_arguments", state.get("training_arguments") or {})
    missing = [a for a in state["adapters"] if not (folder / a / "adapter_model.safetensors").is_file()]
    if missing:
        raise ContinualStateError(f"{str(folder)!r} lacks the weights of adapter(s) {missing}")
    try:
        tensors = load_file(str(folder / TENSORS_FILE)) if (folder / TENSORS_FILE).is_file() else {}
    except Exception as exc:
        raise ContinualStateError(f"{str(folder / TENSORS_FILE)!r} is corrupted: {exc}") from exc
    return state, tensors


def load_continual_model(
    folder: str | os.PathLike, base_model, allow_other_base: bool = False
) -> tuple[PeftModel, dict[str, Any], dict[str, torch.Tensor]]:
    """Rebuild the ``PeftModel`` with every adapter of a saved run on ``base_model`` (a fresh copy of the base).

    The base must be the one the run was trained on (checked by fingerprint) unless ``allow_other_base``; the
    adapters' ``base_model_name_or_path`` becomes ``base_model``'s own name, so later saves and cards name it.
    """
    folder = Path(folder)
    state, tensors = read_state(folder)
    if not state.get("data_included", True):
        raise ContinualStateError(
            f"{str(folder)!r} was saved without its training and evaluation data (the default of push_to_hub): it "
            "loads for inference with PeftModel.from_pretrained, but continuing the run needs the local save "
            "(or a folder pushed with include_data=True)"
        )
    config_class = config_classes()[state["config_class"]]
    known = {f for f in config_class.__dataclass_fields__}
    config = config_class(**{k: v for k, v in state["config"].items() if k in known})
    saved_base = state.get("base_model", {})
    adapters = state["adapters"]
    try:
        model = PeftModel.from_pretrained(base_model, str(folder / adapters[0]), adapter_name=adapters[0], is_trainable=True)
        for adapter in adapters[1:]:
            model.load_adapter(str(folder / adapter), adapter_name=adapter, is_trainable=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ContinualStateError(
            f"the adapters in {str(folder)!r} do not fit this base model (saved for "
            f"{config.base_model_name_or_path!r}): {str(exc).splitlines()[0]}"
        ) from exc
    differences = base_differences(saved_base.get("fingerprint"), base_fingerprint(model))
    if differences and not allow_other_base:
        raise ContinualStateError(
            f"the base model given is not the one the run in {str(folder)!r} was trained on "
            f"({saved_base.get('name_or_path')!r}): its weights differ in {differences}. Pass the same base model; to "
            "continue on another base on purpose, pass allow_other_base=True (--allow_other_base true)."
        )
    given = getattr(base_model, "name_or_path", None) or None
    # the same weights keep the name they were saved under (a Hub id stays, even if this copy came from disk)
    config.base_model_name_or_path = given if differences else (config.base_model_name_or_path or given)
    for adapter in adapters:  # peft reloads plain configs; the method is read from our config class
        loaded, model.peft_config[adapter] = model.peft_config[adapter], copy.deepcopy(config)
        if hasattr(loaded, "effective_rank"):  # OSF: each task's adapter has its own preserved rank
            model.peft_config[adapter].effective_rank = loaded.effective_rank
    model.set_adapter(adapters[0])  # any adapter: they share the config the method is built from
    return model, state, tensors
