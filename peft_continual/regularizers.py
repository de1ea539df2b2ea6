"""Regularisers of the task-adapter methods, as pure tensor functions.

Shapes follow peft: ``A`` is ``lora_A.weight`` (r x d_in), ``B`` is ``lora_B.weight`` (d_out x r) and the
update is ``dW = s * B @ A`` (d_out x d_in). For GPT-2's ``Conv1D`` (fan_in_fan_out) the base weight is dW
transposed, which changes neither its l1 norm nor its singular values, so these functions serve both.
All results are fp32 whatever the parameters' dtype.
"""

from __future__ import annotations

from typing import Sequence

import torch


class _ChunkedDeltaWL1(torch.autograd.Function):
    """``||s * B @ A||_1`` without materialising dW: row chunks, value and gradient in one pass.

    d/dB = s * sign(dW) @ A^T and d/dA = s * B^T @ sign(dW); both are accumulated chunk by chunk while the
    value is computed, so backward only rescales them. Every chunk of dW is written into one workspace, and its
    l1 norm is a reduction (no ``abs()`` copy): one large block per call, which the CPU allocator reuses instead
    of fragmenting its heap with blocks of varying size.
    """

    @staticmethod
    def forward(ctx, A, B, scaling: float, chunk_rows: int):
        A32 = A.detach().float()
        B32 = B.detach().float()
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_A = torch.zeros_like(A32) if need_grad else None
        grad_B = torch.empty_like(B32) if need_grad else None
        total = torch.zeros((), dtype=torch.float32, device=A.device)
        workspace = A32.new_empty(min(chunk_rows, B32.shape[0]), A32.shape[1])
        for start in range(0, B32.shape[0], chunk_rows):
            rows = B32[start : start + chunk_rows]
            delta = torch.mm(rows, A32, out=workspace[: rows.shape[0]]).mul_(scaling)
            total += torch.linalg.vector_norm(delta, ord=1)
            if need_grad:
                sign = delta.sign_()
                torch.mm(sign, A32.T, out=grad_B[start : start + chunk_rows]).mul_(scaling)
                grad_A.addmm_(rows.T, sign, alpha=scaling)
        ctx.save_for_backward(grad_A, grad_B)
        ctx.dtypes = (A.dtype, B.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_A, grad_B = ctx.saved_tensors
        dA = (grad_A * grad_output).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        dB = (grad_B * grad_output).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return dA, dB, None, None


def delta_w_l1(A: torch.Tensor, B: torch.Tensor, scaling: float, max_chunk_elements: int = 2**22) -> torch.Tensor:
    """Entrywise l1 norm of ``dW = scaling * B @ A`` (N-LoRA's collision penalty), memory-bounded.

    At most ``max_chunk_elements`` entries of dW (plus their signs) exist at any time.
    """
    if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
        raise ValueError(f"expected A (r x d_in) and B (d_out x r), got {tuple(A.shape)} and {tuple(B.shape)}")
    chunk_rows = max(1, max_chunk_elements // max(1, A.shape[1]))
    return _ChunkedDeltaWL1.apply(A, B, float(scaling), chunk_rows)


def rank_product_l1(A: torch.Tensor, B: torch.Tensor, module_name: str = "module") -> torch.Tensor:
    """``||A @ B||_1`` over the r x r product: what the public N-LoRA code computes. Square modules only."""
    if A.shape[1] != B.shape[0]:
        raise ValueError(
            f"collision_form='rank_product' needs square modules (d_in == d_out), but {module_name} maps "
            f"{A.shape[1]} -> {B.shape[0]} features. Use collision_form='delta_w' (the paper's form), or restrict "
            "target_modules to square projections."
        )
    return (A.float() @ B.float()).abs().sum()


def orthogonality_penalty(A_current: torch.Tensor, A_previous: Sequence[torch.Tensor], form: str = "abs") -> torch.Tensor:
    """O-LoRA's term: sum over earlier tasks i of the entries of ``A_i @ A_current^T`` (abs or squared)."""
    total = torch.zeros((), dtype=torch.float32, device=A_current.device)
    current = A_current.float()
    for previous in A_previous:
        product = previous.detach().float() @ current.T
        total = total + (product.abs().sum() if form == "abs" else product.pow(2).sum())
    return total


def l2_penalty(parameters: Sequence[torch.Tensor]) -> torch.Tensor:
    """O-LoRA's lambda_2 term: the sum of the l2 (Frobenius) norms of the given parameters."""
    norms = [p.float().norm() for p in parameters]
    return torch.stack(norms).sum() if norms else torch.zeros(())
