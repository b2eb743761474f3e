"""reorthonormalize / reorthonormalize_tucker: exact re-parametrisations (float64 identities)."""

from __future__ import annotations

import pytest
import torch

from manifold_lowrank.integrators import reorthonormalize, reorthonormalize_tucker
from manifold_lowrank.manifolds.types import FixedRankPoint, TuckerPoint

EPS = torch.finfo(torch.float64).eps


def _drifted(n: int, r: int, g: torch.Generator, drift: float = 1e-6) -> torch.Tensor:
    q = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))[0]
    return q + drift * torch.randn(n, r, generator=g, dtype=torch.float64)


def _orth_err(u: torch.Tensor) -> float:
    eye = torch.eye(u.shape[1], dtype=u.dtype)
    return float(torch.linalg.matrix_norm(u.T @ u - eye))


@pytest.mark.parametrize("diagonalize", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matrix_unchanged_bases_orthonormal_coordinates_mapped(diagonalize, seed):
    g = torch.Generator().manual_seed(seed)
    m, n, r = 30, 20, 5
    U, V = _drifted(m, r, g), _drifted(n, r, g)
    S = torch.diag(torch.linspace(3.0, 0.5, r, dtype=torch.float64))
    assert _orth_err(U) > 1e-7  # really drifted
    new, A, B = reorthonormalize(FixedRankPoint(U, S, V), diagonalize=diagonalize)
    X = U @ S @ V.T
    scale = float(torch.linalg.matrix_norm(X))
    tol = 100 * EPS * scale
    assert torch.allclose(new.U @ new.S @ new.V.T, X, rtol=0, atol=tol)
    assert _orth_err(new.U) <= 50 * EPS and _orth_err(new.V) <= 50 * EPS
    # any coordinate matrix Z in the old bases is carried by Z ← A Z Bᵀ
    Z = torch.randn(r, r, generator=g, dtype=torch.float64)
    assert torch.allclose(new.U @ (A @ Z @ B.T) @ new.V.T, U @ Z @ V.T, rtol=0, atol=100 * EPS)
    if diagonalize:
        assert torch.equal(new.S, torch.diag(torch.diagonal(new.S)))
        assert bool((torch.diagonal(new.S)[:-1] >= torch.diagonal(new.S)[1:]).all())
        # S was diagonal with distinct entries: the bases barely move (no sign flips)
        assert torch.allclose(new.U, U, atol=1e-5) and torch.allclose(new.V, V, atol=1e-5)
    else:
        assert torch.equal(A, torch.triu(A)) and bool((torch.diagonal(A) > 0).all())


def test_matrix_rank_zero_passthrough():
    p = FixedRankPoint(torch.zeros(4, 0), torch.zeros(0, 0), torch.zeros(3, 0))
    new, A, B = reorthonormalize(p, diagonalize=True)
    assert new.U.shape == (4, 0) and A.shape == (0, 0) and B.shape == (0, 0)


@pytest.mark.parametrize("full_modes", [(), (2, 3)])
def test_tucker_unchanged_and_orthonormal(full_modes):
    g = torch.Generator().manual_seed(7)
    dims, ranks = (6, 5, 3, 3), (3, 2, 3, 3)
    factors = tuple(
        torch.eye(d, dtype=torch.float64) if k in full_modes else _drifted(d, rk, g)
        for k, (d, rk) in enumerate(zip(dims, ranks))
    )
    core = torch.randn(*ranks, generator=g, dtype=torch.float64)

    def full(c, fs):
        x = c
        for k, u in enumerate(fs):
            x = torch.tensordot(u, x, dims=([1], [k])).movedim(0, k)
        return x

    new, rs = reorthonormalize_tucker(TuckerPoint(core, factors), full_modes)
    X = full(core, factors)
    assert torch.allclose(full(new.core, new.factors), X, rtol=0, atol=200 * EPS * float(X.norm()))
    for k, (u, r) in enumerate(zip(new.factors, rs)):
        if k in full_modes:
            assert r is None and new.factors[k] is factors[k]
        else:
            assert _orth_err(u) <= 50 * EPS
            assert torch.equal(r, torch.triu(r))
