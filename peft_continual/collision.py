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
def _collision_counts(fi: LoraFactors, fj: LoraFactors, thresholds: Sequence[tuple[float, float]], max_chunk_elements: int) -> list[int]:
    """Positions where |dW_i| > t_i and |dW_j| > t_j, for every (t_i, t_j) at once: one pass over both dW."""
    counts = [0] * len(thresholds)
    rows = _chunk_rows(fi, max_chunk_elements)
    for ci, cj in zip(_delta_chunks(fi, rows), _delta_chunks(fj, rows)):
        ai, aj = ci.abs_(), cj.abs_()
        for k, (ti, tj) in enumerate(thresholds):
            counts[k] += ((ai > ti) & (aj > tj)).sum().item()
    return counts


def module_collision_rate(
    fi: LoraFactors, fj: LoraFactors, eps: float, relative: bool = True, max_chunk_elements: int = 2**22
) -> float:
    """Share of positions where both |dW_i| and |dW_j| exceed their threshold (eps, or eps * max|dW|)."""
    ti = eps * max_abs_delta(fi, max_chunk_elements) if relative else eps
    tj = eps * max_abs_delta(fj, max_chunk_elements) if relative else eps
    return _collision_counts(fi, fj, [(ti, tj)], max_chunk_elements)[0] / (fi.B.shape[0] * fi.A.shape[1])


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


def collision_report(
    model, adapters: Sequence[str], eps: Sequence[float] = (0.001, 0.01, 0.1), relative: bool = True,
    max_chunk_elements: int = 2**22,
) -> dict:
    """Pairwise collision rates (one matrix per eps, averaged over modules), overlaps and nuclear norms.

    Each adapter's max|dW| per module is computed once, and each pair's dW once for all eps.
    """
    n = len(adapters)
    factors = {name: {f.module_name: f for f in adapter_factors(model, name)} for name in adapters}
    scale = {
        (name, module): max_abs_delta(f, max_chunk_elements) if relative else 1.0
        for name in adapters for module, f in factors[name].items()
    }  # fmt: skip
    rates = {str(e): [[None] * n for _ in range(n)] for e in eps}
    overlap = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            a, b = adapters[i], adapters[j]
            modules = [m for m in factors[a] if m in factors[b]]
            totals = [0.0] * len(eps)
            for m in modules:
                fi, fj = factors[a][m], factors[b][m]
                thresholds = [(e * scale[a, m], e * scale[b, m]) for e in eps]
                counts = _collision_counts(fi, fj, thresholds, max_chunk_elements)
                totals = [t + c / (fi.B.shape[0] * fi.A.shape[1]) for t, c in zip(totals, counts)]
            for e, total in zip(eps, totals):
                rates[str(e)][i][j] = rates[str(e)][j][i] = total / len(modules)
            overlap[i][j] = overlap[j][i] = sum(module_overlap(factors[a][m], factors[b][m]) for m in modules)
    nuclear = {name: {m: module_nuclear_norm(f) for m, f in factors[name].items()} for name in adapters}
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
