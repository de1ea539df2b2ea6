"""Collision analysis against dense computations on small shapes."""

import pytest
import torch

from peft_continual.adapters import LoraFactors
from peft_continual.collision import module_collision_rate, module_nuclear_norm, module_overlap


def factors(seed, d_out=12, d_in=9, r=3, s=2.0):
    g = torch.Generator().manual_seed(seed)
    return LoraFactors("m", torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g), s)


def dense(f):
    return f.scaling * f.B @ f.A


@pytest.mark.parametrize("relative,eps", [(True, 0.3), (False, 2.0)])
def test_collision_rate_matches_dense(relative, eps):
    fi, fj = factors(0), factors(1)
    wi, wj = dense(fi), dense(fj)
    ti = eps * wi.abs().max() if relative else eps
    tj = eps * wj.abs().max() if relative else eps
    expected = ((wi.abs() > ti) & (wj.abs() > tj)).float().mean().item()
    assert 0 < expected < 1
    for chunk in (9, 30, 10_000):
        assert module_collision_rate(fi, fj, eps, relative, max_chunk_elements=chunk) == pytest.approx(expected)


def test_collision_rate_of_disjoint_updates_is_zero():
    A = torch.zeros(1, 4)
    A[0, :2] = 1.0
    B = torch.ones(3, 1)
    A2 = torch.zeros(1, 4)
    A2[0, 2:] = 1.0
    assert module_collision_rate(LoraFactors("m", A, B, 1.0), LoraFactors("m", A2, B, 1.0), 1e-6) == 0.0


def test_overlap_and_nuclear_norm_match_dense():
    fi, fj = factors(2), factors(3)
    assert module_overlap(fi, fj) == pytest.approx(abs((dense(fi) * dense(fj)).sum().item()), rel=1e-5)
    assert module_nuclear_norm(fi) == pytest.approx(torch.linalg.matrix_norm(dense(fi), ord="nuc").item(), rel=1e-5)
