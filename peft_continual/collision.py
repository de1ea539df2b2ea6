"""N-LoRA's analysis of how task adapters share parameters: collision rate, overlap, nuclear norms.

All functions work from the LoRA factors and never hold more than a row chunk of one dW per adapter.
The overlap and nuclear norm are exact through r x r algebra: <B_i A_i, B_j A_j>_F = tr((B_i^T B_j)(A_j A_i^T)),
and the singular values of B A are those of R_B R_A^T from the QR factors of B and A^T.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from .adapters import LoraFactors, adapter_factors


def _delta_chunks(f: LoraFactors, chunk_rows: int) -> Iterator[torch.Tensor]:
    A, B = f.A.detach().float(), f.B.detach().float()
    for start in range(0, B.shape[0], chunk_rows):
        yield (B[start : start + chunk_rows] @ A).mul_(f.scaling)


def _chunk_rows(f: LoraFactors, max_chunk_elements: int) -> int:
    return max(1, max_chunk_elements // f.A.shape[1])


@torch.no_grad()
def max_abs_delta(f: LoraFactors, max_chunk_elements: int = 2**22) -> float:
    return max(chunk.abs().max().item() for chunk in _delta_chunks(f, _chunk_rows(f, max_chunk_elements)))


@torch.no_grad()
def module_collision_rate(
    fi: LoraFactors, fj: LoraFactors, eps: float, relative: bool = True, max_chunk_elements: int = 2**22
) -> float:
    """Share of positions where both |dW_i| and |dW_j| exceed their threshold (eps, or eps * max|dW|)."""
    ti = eps * max_abs_delta(fi, max_chunk_elements) if relative else eps
    tj = eps * max_abs_delta(fj, max_chunk_elements) if relative else eps
    rows = _chunk_rows(fi, max_chunk_elements)
    both = sum(
        ((ci.abs() > ti) & (cj.abs() > tj)).sum().item()
        for ci, cj in zip(_delta_chunks(fi, rows), _delta_chunks(fj, rows))
    )
    return both / (fi.B.shape[0] * fi.A.shape[1])


@torch.no_grad()
def module_overlap(fi: LoraFactors, fj: LoraFactors) -> float:
    """|<vec dW_i, vec dW_j>| without forming either dW."""
    Ai, Bi, Aj, Bj = (t.detach().float() for t in (fi.A, fi.B, fj.A, fj.B))
    return abs(fi.scaling * fj.scaling * torch.trace((Bi.T @ Bj) @ (Aj @ Ai.T)).item())


@torch.no_grad()
def module_nuclear_norm(f: LoraFactors) -> float:
    _, r_b = torch.linalg.qr(f.B.detach().float())
    _, r_a = torch.linalg.qr(f.A.detach().float().T)
    return abs(f.scaling) * torch.linalg.svdvals(r_b @ r_a.T).sum().item()


def _paired(model, name_i: str, name_j: str) -> list[tuple[LoraFactors, LoraFactors]]:
    fj = {f.module_name: f for f in adapter_factors(model, name_j)}
    return [(f, fj[f.module_name]) for f in adapter_factors(model, name_i) if f.module_name in fj]


def collision_report(
    model, adapters: Sequence[str], eps: Sequence[float] = (0.001, 0.01, 0.1), relative: bool = True
) -> dict:
    """Pairwise collision rates (one matrix per eps, averaged over modules), overlaps and nuclear norms."""
    n = len(adapters)
    rates = {str(e): [[None] * n for _ in range(n)] for e in eps}
    overlap = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            pairs = _paired(model, adapters[i], adapters[j])
            for e in eps:
                value = sum(module_collision_rate(a, b, e, relative) for a, b in pairs) / len(pairs)
                rates[str(e)][i][j] = rates[str(e)][j][i] = value
            overlap[i][j] = overlap[j][i] = sum(module_overlap(a, b) for a, b in pairs)
    nuclear = {name: {f.module_name: module_nuclear_norm(f) for f in adapter_factors(model, name)} for name in adapters}
    return {
        "adapters": list(adapters),
        "threshold": "relative to each dW's max |entry|" if relative else "absolute",
        "collision_rate": rates,
        "overlap": overlap,
        "nuclear_norm": nuclear,
    }


def mean_offdiagonal(matrix: list[list]) -> float | None:
    values = [v for i, row in enumerate(matrix) for j, v in enumerate(row) if i != j and v is not None]
    return sum(values) / len(values) if values else None
