"""Bookkeeping of several LoRA adapters on one ``PeftModel``.

peft's own switches either drop adapters from the forward (``PeftModel.set_adapter``) or unfreeze every
adapter they activate (``base_model.set_adapter``, leaving ``disable_adapter()``, ``load_adapter``).
:func:`set_adapter_state` is the one place that says which adapters are in the forward and which train;
call it after every adapter operation, after loading, and before an optimizer is built.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from collections import Counter
from typing import Iterator, Sequence

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
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
    """Every parameter that belongs to ``adapter`` (LoRA's, or any peft tuner's such as OSF's), in a stable order."""
    params = []
    for layer in (m for m in model.modules() if isinstance(m, BaseTunerLayer)):
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
    if model.active_adapter not in model.peft_config:
        # PeftModel's own pointer (read by Trainer through get_base_model) outlived a deleted adapter
        model.active_adapter = (trainable or active or list(model.peft_config))[-1]
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


def _is_quantized(weight) -> bool:
    """bitsandbytes, GPTQ, AWQ, torchao, ...: packed integer storage, or a tensor subclass that is not a plain tensor."""
    return weight is None or not weight.dtype.is_floating_point or hasattr(weight, "quant_state") or (
        type(weight.data) is not torch.Tensor
    )


def check_mergeable(model, adapter: str) -> None:
    """Refuse merging ``adapter`` into base weights that cannot hold the sum exactly (before any training).

    A quantized base would get the update written into its packed storage (corruption). A half-precision base
    rounds every merged entry to 8 (bf16) or 11 (fp16) significant bits, so a small update is partly or wholly
    lost; the error gives the share lost on this model's own weights for an update of 1e-4. (Keeping the merged
    sum in float32 beside the base would cost a dense d_out x d_in matmul per module, more than the adapters.)
    """
    for name, layer in lora_layers(model):
        if adapter not in layer.lora_A:
            continue
        weight = getattr(layer.get_base_layer(), "weight", None)
        if _is_quantized(weight):
            raise ValueError(
                f"merge_finished_adapters=True cannot merge into the quantized base weights of {name!r} "
                f"({type(layer.get_base_layer()).__name__}): the update would be written into packed storage. "
                "Set merge_finished_adapters=False (adapters stay in the forward), or load the base unquantized."
            )
        if weight.dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"merge_finished_adapters=True would round every merged update to {weight.dtype} in {name!r}: "
                f"{100 * half_precision_merge_loss(weight):.0f}% of an update of size 1e-4 is lost on these weights. "
                "Load the base model in float32 (mixed-precision training with bf16=True still works), or set "
                "merge_finished_adapters=False."
            )


@torch.no_grad()
def half_precision_merge_loss(weight: torch.Tensor, update: float = 1e-4) -> float:
    """Mean share of an update of size ``update`` that storing ``weight + update`` in ``weight``'s dtype loses.

    0 means exact; the sum is rounded once, so a merge cannot do better than this.
    """
    with gather_params_ctx([weight]):
        w = weight.detach().reshape(-1)[: 2**16].double()
        delta = torch.full_like(w, update)
        delta[1::2] *= -1  # both signs: rounding is not symmetric
        stored = (w + delta).to(weight.dtype).double() - w
        return ((stored - delta).abs() / update).mean().item()


@torch.no_grad()
def merge_into_base(model, adapter: str) -> None:
    """Add ``adapter``'s dW into the base weights, module by module; the adapter itself stays stored (inactive).

    peft's ``merge_adapter`` is not used on purpose: once one adapter is marked merged, its layers skip *every*
    active adapter in the forward. Only float32 bases are merged (:func:`check_mergeable`).
    """
    check_mergeable(model, adapter)
    for _, layer in lora_layers(model):
        if adapter in layer.lora_A:
            base = layer.get_base_layer().weight
            with gather_params_ctx([base, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight], modifier_rank=0):
                base.add_(layer.get_delta_weight(adapter).to(base.dtype))


# ---------------------------------------------------------------------------------------------- export

# Options whose adapter is not the plain sum s * B @ A of one Linear-like layer: several such adapters have no
# exact single-LoRA form. (peft's add_weighted_adapter ignores most of them silently.)
_NOT_CONCATENABLE = {
    "use_dora": "use_dora=True", "modules_to_save": "modules_to_save", "trainable_token_indices": "trainable_token_indices",
    "lora_bias": "lora_bias=True", "target_parameters": "target_parameters", "layer_replication": "layer_replication",
    "alora_invocation_tokens": "alora_invocation_tokens", "use_qalora": "use_qalora=True", "use_bdlora": "use_bdlora",
    "arrow_config": "arrow_config",
}  # fmt: skip


def check_concatenable(model, adapter: str) -> None:
    """Refuse adapters whose sum with others cannot be exported exactly as one LoRA (rank concatenation)."""
    config = model.peft_config[adapter]
    options = [text for key, text in _NOT_CONCATENABLE.items() if getattr(config, key, None)]
    if config.bias != "none":
        options.append(f"bias={config.bias!r}")
    for name, layer in lora_layers(model):
        if adapter in getattr(layer, "lora_variant", {}):
            options.append(f"a LoRA variant ({type(layer.lora_variant[adapter]).__name__}) in {name!r}")
        elif adapter in getattr(layer, "lora_embedding_A", {}) or (
            adapter in layer.lora_A and not isinstance(layer.lora_A[adapter], torch.nn.Linear)
        ):
            options.append(f"a layer type other than Linear/Conv1D ({type(layer.get_base_layer()).__name__}) in {name!r}")
        if len(options) > 2:
            break
    if options:
        raise ValueError(
            f"adapter {adapter!r} uses {', '.join(dict.fromkeys(options))}: several task adapters of this kind have no "
            "exact single-LoRA form for the exported root adapter. Use plain LoRA on Linear/Conv1D modules "
            "(rsLoRA, rank_pattern/alpha_pattern and 'all-linear' are fine)."
        )


@torch.no_grad()
def concatenated_lora(model, adapters: Sequence[str], like: LoraConfig):
    """The exact sum of ``adapters`` as one LoRA: (state dict in peft's saved layout, plain ``LoraConfig``).

    Per module, A = [A_1; ...; A_n] and B = [s_1 B_1, ..., s_n B_n], so B @ A = sum_t s_t B_t A_t; every scaling is
    folded into B and the config gives scaling 1 (use_rslora=False, lora_alpha = rank, per module through
    rank_pattern/alpha_pattern where ranks differ). ``like`` gives the remaining options (fan_in_fan_out, base model).
    """
    for adapter in adapters:
        check_concatenable(model, adapter)
    prefix = "base_model.model."
    tensors, ranks = {}, {}
    for name, layer in lora_layers(model):
        present = [a for a in adapters if a in layer.lora_A]
        if not present:
            continue
        params = [p for a in present for p in (layer.lora_A[a].weight, layer.lora_B[a].weight)]
        with gather_params_ctx(params):
            A = torch.cat([layer.lora_A[a].weight.float() for a in present], dim=0)
            B = torch.cat([layer.lora_B[a].weight.float() * layer.scaling[a] for a in present], dim=1)
        dtype = layer.lora_A[present[0]].weight.dtype
        tensors[f"{name}.lora_A.weight"] = A.to(dtype).contiguous()
        tensors[f"{name}.lora_B.weight"] = B.to(dtype).contiguous()
        ranks[name.removeprefix(prefix)] = A.shape[0]
    if not tensors:
        raise ValueError(f"adapters {list(adapters)} have no LoRA modules in this model")
    rank = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {re.escape(module): r for module, r in ranks.items() if r != rank}
    config = LoraConfig(
        r=rank, lora_alpha=rank, rank_pattern=pattern, alpha_pattern=dict(pattern), use_rslora=False,
        target_modules=sorted(ranks), fan_in_fan_out=like.fan_in_fan_out, lora_dropout=0.0, bias="none",
        task_type=like.task_type, base_model_name_or_path=like.base_model_name_or_path,
        revision=like.revision,
    )  # fmt: skip
    return tensors, config
