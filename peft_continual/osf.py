"""OSF over a task sequence inside one ``PeftModel``: merge a finished task into the base, start the next one.

peft's OSF adapter trains the complement of a weight's top singular directions and adds its update in the forward.
Its documented recipe for a sequence unwraps between tasks; in peft 0.21 ``unload()`` drops the training (the update
is not in the weights) and ``merge_and_unload()`` returns a new module the trainer does not hold. So the finished
adapter is merged into the base layers in place and released, and the next task's adapter decomposes the merged
weights: its frozen top subspace holds what the earlier tasks wrote. The saved state is therefore the merged target
weights themselves (peft's OSF adapter files hold neither the base they refer to nor their SVD buffers).
"""

from __future__ import annotations

import torch
from peft.tuners.osf.layer import OSFLayer


def osf_layers(model) -> list[tuple[str, OSFLayer]]:
    """(base-model parameter name of the weight, layer) for every OSF layer, in module order."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, OSFLayer):
            key = name.removeprefix("base_model.model.") + ".weight"
            out.append((key, module))
    return out


def check_osf_targets(model) -> None:
    """OSF decomposes and rewrites each target weight: refuse what it cannot (quantized or non-float storage)."""
    layers = osf_layers(model)
    if not layers:
        raise ValueError("the model has no OSF layers: wrap it with get_peft_model(model, ContinualOSFConfig(...))")
    for key, layer in layers:
        weight = layer.get_base_layer().weight
        if not weight.dtype.is_floating_point or type(weight.data) is not torch.Tensor or hasattr(weight, "quant_state"):
            raise ValueError(
                f"OSF cannot train {key!r} ({type(weight.data).__name__}, {weight.dtype}): it decomposes and rewrites "
                "each target weight, which quantized storage does not allow. Load the base in bf16/fp32, or use a LoRA "
                "method (e.g. olora) on a quantized base"
            )


@torch.no_grad()
def merge_into_base_weights(model, adapter: str) -> None:
    """Write ``adapter``'s update into the base weights for good (the adapter is then to be deleted)."""
    for _, layer in osf_layers(model):
        if adapter in layer.osf_svd_params:
            layer.merge(adapter_names=[adapter])
            layer.merged_adapters.remove(adapter)  # OSF cannot unmerge: peft must not try when adapters change


@torch.no_grad()
def rebuild_on_current_weights(model, adapter: str) -> None:
    """Re-decompose ``adapter`` on the base weights as they are now, keeping its trained values.

    A reloaded adapter was decomposed on the weights it was loaded onto (the original base); once the earlier
    tasks' merged weights are back, its frozen subspace and reference factors must come from those, as in the run.
    """
    trained = {key: {n: p.detach().clone() for n, p in layer.osf_svd_params[adapter].items()}
               for key, layer in osf_layers(model) if adapter in layer.osf_svd_params}  # fmt: skip
    config = model.peft_config[adapter]
    active = list(model.base_model.active_adapters)
    model.delete_adapter(adapter)
    model.add_adapter(adapter, config)
    model.base_model.set_adapter(active)
    for key, layer in osf_layers(model):
        for name, value in trained.get(key, {}).items():
            layer.osf_svd_params[adapter][name].copy_(value)


@torch.no_grad()
def project_off_preserved(model, adapter: str) -> None:
    """Put ``adapter``'s trainable factors back into the complement of the preserved (top) singular subspace.

    peft projects the *gradients* of ``U_low``/``V_low``; Adam's per-coordinate scaling and weight decay then move
    the factors out of that complement again (measured on a tiny Llama: 25-47 % of the update's largest entry lands
    in the preserved subspace after AdamW, about 1e-6 after SGD). Projecting the factors after every optimizer step
    keeps the preserved directions untouched whatever the optimizer. Same projectors as peft's hooks.
    """
    for _, layer in osf_layers(model):
        if adapter not in layer.osf_svd_params:
            continue
        params = layer.osf_svd_params[adapter]
        U, V = params["U_low"], params["V_low"]
        if adapter in layer._osf_U_high:
            high = layer._osf_U_high[adapter]
            U.sub_(high @ (high.T @ U))
        else:  # square: the complement is spanned by the initial trainable factor
            low = layer._osf_U_low_init[adapter]
            U.copy_(low @ (low.T @ U))
        if adapter in layer._osf_V_high:
            high = layer._osf_V_high[adapter]
            V.sub_((V @ high.T) @ high)
        else:
            low = layer._osf_V_low_init[adapter]
            V.copy_((V @ low.T) @ low)


def base_weights(model) -> dict[str, torch.Tensor]:
    """The target modules' base weights (the earlier tasks merged in), by base-model parameter name."""
    return {key: layer.get_base_layer().weight.detach().contiguous() for key, layer in osf_layers(model)}


@torch.no_grad()
def load_base_weights(model, weights: dict[str, torch.Tensor]) -> None:
    """Put saved merged weights back into the base layers (before any adapter is decomposed on them)."""
    layers = dict(osf_layers(model))
    missing = set(weights) - set(layers)
    if missing:
        raise ValueError(f"saved OSF weights for modules this model has no OSF layer for: {sorted(missing)[:3]}")
    for key, weight in weights.items():
        layers[key].get_base_layer().weight.copy_(weight)


@torch.no_grad()
def continual_weights(model, adapter: str) -> dict[str, torch.Tensor]:
    """The continual model's target weights (merged base + the current adapter's update): what a user loads into the
    original base with ``model.load_state_dict(weights, strict=False)``, no peft needed."""
    out = {}
    for key, layer in osf_layers(model):
        weight = layer.get_base_layer().weight
        delta = layer.get_delta_weight(adapter) if adapter in layer.osf_svd_params else 0
        out[key] = (weight + delta).to(weight.dtype).detach().contiguous()
    return out
