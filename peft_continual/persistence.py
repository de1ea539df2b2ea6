"""Saving a continual run and continuing it later, in another process.

Layout of a saved folder (JSON and safetensors only, never pickle, so that loading runs no code from it)::

    adapter_config.json, adapter_model.safetensors   root adapter: *the* continual model for plain peft
                                                     (all task adapters concatenated, or I-LoRA's eval learner)
    <adapter>/adapter_config.json, ...               every adapter of the run (task_1_x, ..., or default + slow)
    continual_state.json                             method config, task definitions, accuracy matrix, method state
    continual_state.safetensors                      method tensors (replay buffer, random state)
    README.md                                        model card

The folder is written to a staging directory and renamed into place, so an interrupted save never leaves a
folder that looks complete.
"""

from __future__ import annotations

import copy
import json
import re
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import datasets
import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from .configs import CONTINUAL_CONFIG_CLASSES
from .io_utils import atomic_directory
from .metrics import ContinualResult
from .tasks import ContinualTask

STATE_FILE = "continual_state.json"
TENSORS_FILE = "continual_state.safetensors"
FORMAT_VERSION = 1
ROOT_ADAPTER = "continual_root"
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class ContinualStateError(ValueError):
    """A saved continual folder is incomplete, corrupted, unsafe or does not fit the given base model."""


def _save_adapter(model: PeftModel, adapter: str, destination: Path, plain_config: bool = False) -> None:
    """Save one adapter into ``destination``; ``plain_config`` writes a plain ``LoraConfig`` (silent in plain peft)."""
    with tempfile.TemporaryDirectory(dir=destination.parent) as tmp:
        model.save_pretrained(tmp, selected_adapters=[adapter])
        source = Path(tmp) if adapter == "default" else Path(tmp) / adapter
        destination.mkdir(parents=True, exist_ok=True)
        for file in source.iterdir():
            if file.is_file():
                shutil.move(str(file), destination / file.name)
    if plain_config:
        config = model.peft_config[adapter]
        to_plain = getattr(config, "to_lora_config", None)
        (to_plain() if to_plain else config).save_pretrained(str(destination))


def _save_root(model: PeftModel, adapters: list[str], destination: Path) -> None:
    """The exact sum of ``adapters`` as one LoRA (rank concatenation), saved with a plain ``LoraConfig``."""
    previous = list(model.base_model.active_adapters)
    model.add_weighted_adapter(adapters, [1.0] * len(adapters), ROOT_ADAPTER, combination_type="cat")
    try:
        model.peft_config[ROOT_ADAPTER].base_model_name_or_path = model.peft_config[adapters[0]].base_model_name_or_path
        _save_adapter(model, ROOT_ADAPTER, destination, plain_config=True)
    finally:
        model.delete_adapter(ROOT_ADAPTER)
        model.base_model.set_adapter(previous)


def task_to_dict(task: ContinualTask) -> dict[str, Any]:
    """A task's definition and evaluation rows (enough to keep evaluating it after a reload)."""
    return {
        "name": task.name, "labels": task.labels, "instruction": task.instruction, "task_type": task.task_type,
        "show_options": task.show_options, "source": task.source,
        "eval": {"text": list(task.eval["text"]), "label": list(task.eval["label"])},
    }  # fmt: skip


def task_from_dict(data: dict[str, Any]) -> ContinualTask:
    return ContinualTask(
        name=data["name"], train=None, eval=datasets.Dataset.from_dict(data["eval"]), labels=data["labels"],
        instruction=data["instruction"], task_type=data["task_type"], show_options=data["show_options"],
        source=data["source"],
    )  # fmt: skip


def save_continual(trainer, output_dir: str | os.PathLike, model_card: bool = True) -> Path:
    """Write adapters, root adapter, state and card of ``trainer``'s run to ``output_dir`` (atomically)."""
    model, method = trainer.peft_model, trainer.method
    if not trainer.result.accuracy_matrix:
        raise ValueError("nothing to save yet: train at least one task first")
    output_dir = Path(output_dir)
    meta, tensors = method.state_dict()
    config = method.config
    state = {
        "format_version": FORMAT_VERSION,
        "method": method.name,
        "config_class": type(config).__name__,
        "config": json.loads(json.dumps(config.to_dict(), default=list)),
        "adapters": list(model.peft_config),
        "method_state": meta,
        "tasks": [task_to_dict(t) for t in trainer.tasks],
        "result": trainer.result.to_dict(),
        "trainer": {"evaluation_method": trainer.evaluation_method, "max_source_length": trainer.max_source_length,
                    "evaluate_unseen": trainer.evaluate_unseen, "evaluate_seen": trainer.evaluate_seen},
    }  # fmt: skip
    with atomic_directory(output_dir) as staging:
        for adapter in model.peft_config:
            _save_adapter(model, adapter, staging / adapter, plain_config=True)
        _save_root(model, method.export_adapters(), staging)
        method.restore_adapter_state(model)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging / TENSORS_FILE))
        (staging / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        if model_card:
            from .hub import write_model_card

            write_model_card(staging, state, base_model=config.base_model_name_or_path)
    return output_dir


METHOD_STATE_FILE = "continual_method.json"
METHOD_TENSORS_FILE = "continual_method.safetensors"


def save_method_state(method, folder: str | os.PathLike) -> None:
    """The method's state inside a Trainer checkpoint (written after Trainer's own files)."""
    meta, tensors = method.state_dict()
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder, METHOD_TENSORS_FILE))
    Path(folder, METHOD_STATE_FILE).write_text(json.dumps(meta), encoding="utf-8")


def load_method_state(method, folder: str | os.PathLike, model) -> None:
    """Restore what :func:`save_method_state` wrote, if the checkpoint has it (a plain Trainer checkpoint has not)."""
    meta_path = Path(folder, METHOD_STATE_FILE)
    if meta_path.is_file():
        method.load_state_dict(json.loads(meta_path.read_text(encoding="utf-8")), load_file(str(Path(folder, METHOD_TENSORS_FILE))), model)


def load_adapter_weights(model: PeftModel, folder: str | os.PathLike, adapters: list[str], config) -> None:
    """Load saved adapters' weights into ``model``, adding those it lacks with ``config``."""
    for adapter in adapters:
        if adapter not in model.peft_config:
            model.add_adapter(adapter, copy.deepcopy(config))
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
    if state["config_class"] not in CONTINUAL_CONFIG_CLASSES:
        raise ContinualStateError(f"unknown config class {state['config_class']!r} in {str(state_path)!r}")
    missing = [a for a in state["adapters"] if not (folder / a / "adapter_model.safetensors").is_file()]
    if missing:
        raise ContinualStateError(f"{str(folder)!r} lacks the weights of adapter(s) {missing}")
    try:
        tensors = load_file(str(folder / TENSORS_FILE)) if (folder / TENSORS_FILE).is_file() else {}
    except Exception as exc:
        raise ContinualStateError(f"{str(folder / TENSORS_FILE)!r} is corrupted: {exc}") from exc
    return state, tensors


def load_continual_model(folder: str | os.PathLike, base_model) -> tuple[PeftModel, dict[str, Any], dict[str, torch.Tensor]]:
    """Rebuild the ``PeftModel`` with every adapter of a saved run on ``base_model`` (a fresh copy of the base)."""
    folder = Path(folder)
    state, tensors = read_state(folder)
    config_class = CONTINUAL_CONFIG_CLASSES[state["config_class"]]
    known = {f for f in config_class.__dataclass_fields__}
    config = config_class(**{k: v for k, v in state["config"].items() if k in known})
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
    for adapter in adapters:  # peft reloads plain LoraConfigs; the method is read from our config class
        model.peft_config[adapter] = copy.deepcopy(config)
    model.set_adapter(adapters[0])  # any adapter: they share the config the method is built from
    return model, state, tensors
