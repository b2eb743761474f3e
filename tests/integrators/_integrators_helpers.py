"""Shared helpers for the integrator tests (imported by the test modules)."""

from __future__ import annotations

import math

import pytest
import torch

from manifold_lowrank.integrators._tensor import tucker_to_dense
from manifold_lowrank.linalg import orthonormalize
from manifold_lowrank.manifolds.types import FixedRankPoint, TuckerPoint

DT = torch.float64
EPS = torch.finfo(DT).eps


@pytest.fixture(autouse=True)
def one_thread():
    """Small matrices on a shared machine: BLAS threading only adds contention."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def rand_orth(n: int, r: int, g: torch.Generator) -> torch.Tensor:
    return orthonormalize(torch.randn(n, r, dtype=DT, generator=g))


def rand_point(m: int, n: int, r: int, g: torch.Generator, core: str = "random") -> FixedRankPoint:
    u, v = rand_orth(m, r, g), rand_orth(n, r, g)
    if core == "zero":
        s = torch.zeros(r, r, dtype=DT)
    else:
        s = torch.randn(r, r, dtype=DT, generator=g)
    return FixedRankPoint(u, s, v)


def rand_tucker(shape, ranks, g: torch.Generator, full=()) -> TuckerPoint:
    fs = []
    for k, (n, r) in enumerate(zip(shape, ranks)):
        fs.append(torch.eye(n, dtype=DT) if k in full else rand_orth(n, r, g))
    return TuckerPoint(torch.randn(*ranks, dtype=DT, generator=g), tuple(fs))


def skew(n: int, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    w = torch.randn(n, n, dtype=DT, generator=g)
    return scale * (w - w.T) / math.sqrt(n)


def tangent_projection(u: torch.Tensor, v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Dense ``P_T(G) = G V Vᵀ + U Uᵀ G − U Uᵀ G V Vᵀ``."""
    pu, pv = u @ u.T, v @ v.T
    return g @ pv + pu @ g - pu @ g @ pv


def tucker_tangent_projection(point: TuckerPoint, g: torch.Tensor) -> torch.Tensor:
    """Orthogonal projection onto the tangent space via the Jacobian of the
    parametrisation (core, factors) -> tensor, computed independently by least squares."""
    core, fs = point
    cols = []
    for idx in range(core.numel()):
        e = torch.zeros(core.numel(), dtype=DT)
        e[idx] = 1
        cols.append(tucker_to_dense(e.reshape(core.shape), fs).reshape(-1))
    for i, f in enumerate(fs):
        for a in range(f.shape[0]):
            for b in range(f.shape[1]):
                e = torch.zeros_like(f)
                e[a, b] = 1
                f2 = list(fs)
                f2[i] = e
                cols.append(tucker_to_dense(core, f2).reshape(-1))
    jac = torch.stack(cols, 1)
    x = torch.linalg.lstsq(jac, g.reshape(-1, 1), driver="gelsd").solution
    return (jac @ x).reshape(g.shape)


def loglog_slope(hs, errs) -> float:
    lh = torch.log(torch.tensor(hs, dtype=DT))
    le = torch.log(torch.tensor(errs, dtype=DT))
    lh = lh - lh.mean()
    return float((lh * (le - le.mean())).sum() / (lh * lh).sum())
