"""Bookkeeping of several LoRA adapters on one ``PeftModel``.

peft's own switches either drop adapters from the forward (``PeftModel.set_adapter``) or unfreeze every
adapter they activate (``base_model.set_adapter``, leaving ``disable_adapter()``, ``load_adapter``).
:func:`set_adapter_state` is the one place that says which adapters are in the forward and which train;
call it after every adapter operation, after loading, and before an optimizer is built.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from peft.tuners.lora import LoraLayer
from peft.utils.integrations import gather_params_ctx


@dataclass
class LoraFactors:
    """One module's factors of one adapter: dW = scaling * B @ A."""

    module_name: str
    A: torch.Tensor
    B: torch.Tensor
    scaling: float


def lora_layers(model: torch.nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def adapter_factors(model: torch.nn.Module, adapter: str) -> list[LoraFactors]:
    """The (A, B, scaling) of ``adapter`` in every LoRA module, in module order."""
    factors = [
        LoraFactors(name, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight, float(layer.scaling[adapter]))
        for name, layer in lora_layers(model)
        if adapter in layer.lora_A
    ]
    if not factors:
        raise ValueError(f"adapter {adapter!r} has no LoRA modules in this model")
    return factors


def adapter_parameters(model: torch.nn.Module, adapter: str) -> list[torch.nn.Parameter]:
    """Every parameter that belongs to ``adapter``, in a stable order."""
    params = []
    for _, layer in lora_layers(model):
        for attr in layer.adapter_layer_names:
            container = getattr(layer, attr, None)
            if container is not None and adapter in container:
                entry = container[adapter]
                params.extend(entry.parameters() if isinstance(entry, torch.nn.Module) else [entry])
    return params


def set_adapter_state(model, active: Sequence[str], trainable: Sequence[str] = ()) -> None:
    """Put exactly ``active`` in the forward pass, and give gradients to exactly ``trainable`` (a subset).

    Every other adapter parameter, active or not, is frozen; base weights are left as peft set them (frozen).
    """
    active, trainable = list(active), list(trainable)
    missing = [name for name in active if name not in model.peft_config]
    if missing:
        raise ValueError(f"unknown adapter(s) {missing}; this model has {sorted(model.peft_config)}")
    if not set(trainable) <= set(active):
        raise ValueError(f"trainable adapters {trainable} must be active ({active})")
    model.base_model.set_adapter(active, inference_mode=False)
    for name in model.peft_config:
        for param in adapter_parameters(model, name):
            param.requires_grad_(name in trainable)


@contextlib.contextmanager
def adapters_active(model, active: Sequence[str]):
    """Temporarily run the forward with ``active`` only, everything frozen; restores the previous state after."""
    previous_active = list(model.base_model.active_adapters)
    previous_grad = {id(p): p.requires_grad for name in model.peft_config for p in adapter_parameters(model, name)}
    try:
        model.base_model.set_adapter(list(active), inference_mode=True)
        yield
    finally:
        model.base_model.set_adapter(previous_active, inference_mode=False)
        for name in model.peft_config:
            for p in adapter_parameters(model, name):
                p.requires_grad_(previous_grad[id(p)])


@torch.no_grad()
def copy_adapter_weights(model, source: str, target: str) -> None:
    """target <- source, parameter by parameter (both adapters must share one config)."""
    src, dst = adapter_parameters(model, source), adapter_parameters(model, target)
    with gather_params_ctx(src + dst, modifier_rank=0):
        for s, d in zip(src, dst, strict=True):
            d.copy_(s)


@torch.no_grad()
def merge_into_base(model, adapter: str) -> None:
    """Add ``adapter``'s dW into the base weights, module by module; the adapter itself stays stored (inactive).

    peft's ``merge_adapter`` is not used on purpose: once one adapter is marked merged, its layers skip *every*
    active adapter in the forward.
    """
    for _, layer in lora_layers(model):
        if adapter in layer.lora_A:
            base = layer.get_base_layer().weight
            with gather_params_ctx([base, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight], modifier_rank=0):
                base.add_(layer.get_delta_weight(adapter).to(base.dtype))
