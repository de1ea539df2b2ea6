"""I-LoRA's two learners: the slow one interpolates (EMA) the fast one; a consistency loss ties their features."""

from __future__ import annotations

from typing import Sequence

import torch


@torch.no_grad()
def ema_update(slow: Sequence[torch.Tensor], fast: Sequence[torch.Tensor], decay: float) -> None:
    """slow <- decay * slow + (1 - decay) * fast, in place, parameter by parameter."""
    for s, f in zip(slow, fast, strict=True):
        s.lerp_(f.to(s.dtype), 1.0 - decay)


def ema_decay_at(step: int, decay: float, warmup_steps: int) -> float:
    """The decay used at optimizer step ``step`` (1-based) of a task: ramped linearly over ``warmup_steps``."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return decay
    return decay * step / warmup_steps


def select_layers(hidden_states: Sequence[torch.Tensor], layers) -> list[torch.Tensor]:
    """Pick the transformer layers' outputs (index 0 of HF's tuple is the embeddings, identical for both learners)."""
    outputs = list(hidden_states[1:])
    if layers == "all":
        return outputs
    if layers == "last":
        return outputs[-1:]
    bad = [i for i in layers if not 1 <= i <= len(outputs)]
    if bad:
        raise ValueError(f"consistency_layers {bad} out of range: this model has layers 1..{len(outputs)}")
    return [outputs[i - 1] for i in layers]


def consistency_loss(
    fast: Sequence[torch.Tensor],
    slow: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
    target: str = "slow",
    num_positions: float | None = None,
) -> torch.Tensor:
    """Mean squared error between fast and (no-grad) target features over real tokens, averaged over layers.

    ``target='slow'`` regresses onto the slow learner; ``'max'`` onto the elementwise max(fast, slow) of the
    reference code. Padded positions (``attention_mask == 0``) never count. ``num_positions`` overrides the
    count of real positions in the mean (to normalise one process's share of a batch split across processes).
    """
    mask = attention_mask.unsqueeze(-1).float()
    denominator = (mask.sum() if num_positions is None else num_positions) * fast[0].shape[-1]
    if denominator == 0:
        return fast[0].sum() * 0.0
    total = 0.0
    for f, s in zip(fast, slow, strict=True):
        goal = s.detach().float()
        if target == "max":
            goal = torch.maximum(goal, f.detach().float())
        total = total + ((f.float() - goal).pow(2) * mask).sum() / denominator
    return total / len(fast)
