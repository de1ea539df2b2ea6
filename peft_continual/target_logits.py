"""The LM head on target positions only: the training loss needs logits where a target token is predicted.

A causal LM's head maps every position to a vocabulary-sized row; with the loss masked to the answer tokens
(a few per example) almost all of that work, and the memory of the (batch, length, vocab) logits, is thrown
away. Transformers models take ``logits_to_keep`` (positions whose hidden states reach the head) and their loss
takes ``shift_labels`` (labels already aligned with those positions), so the model's own loss function, with its
``num_items_in_batch`` normalisation, computes exactly the full-logits loss from the kept rows.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .tasks import IGNORE_INDEX


def supports_target_logits(model) -> bool:
    """Whether ``model`` (a PeftModel or a plain causal LM) slices before its head and aligns ``shift_labels``.

    Needs ``logits_to_keep`` in the forward and transformers' default causal-LM loss, which reads ``shift_labels``;
    a model with its own loss would ignore them and see misaligned labels.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return False
    if hasattr(base, "_loss_function"):  # a custom loss set by the user
        return False
    return getattr(base, "loss_type", None) in (None, "ForCausalLM")


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions ``t`` whose next token is a target in at least one row (1-D, shared by the batch)."""
    return (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(-1)


def with_target_logits(inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` plus ``logits_to_keep`` and the matching ``shift_labels``: the loss is unchanged, the head shrinks.

    Rows with fewer targets than the union keep ``IGNORE_INDEX`` there, so they add nothing to the loss.
    """
    labels = inputs["labels"]
    keep = target_positions(labels)
    return {**inputs, "logits_to_keep": keep, "shift_labels": labels[:, keep + 1].contiguous()}
