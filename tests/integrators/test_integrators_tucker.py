"""Tucker integrators (orders 3 and 4, with held full-rank modes) against theory."""

from __future__ import annotations

import math

import pytest
import torch
from _integrators_helpers import (
    DT,
    EPS,
    loglog_slope,
    one_thread,
    rand_orth,
    rand_tucker,
    tucker_tangent_projection,
)

from manifold_lowrank.integrators import (
    DenseOracle,
    TuckerFrozenTangentOracle,
    tucker_augment,
    tucker_augmented_bug,
    tucker_bug,
    tucker_galerkin_step,
    tucker_parallel,
    tucker_truncate,
)
from manifold_lowrank.integrators._tensor import mode_dot, tucker_to_dense
from manifold_lowrank.linalg import RankRule
from manifold_lowrank.manifolds.types import TuckerPoint

__all__ = ["one_thread"]

CASES = [
    pytest.param((7, 6, 5), (3, 2, 3), (), id="order3"),
    pytest.param((6, 5, 3, 3), (3, 2, 3, 3), (2, 3), id="order4-full23"),
]


def _dense(p: TuckerPoint) -> torch.Tensor:
    return tucker_to_dense(p.core, p.factors)


def _orth_err(q: torch.Tensor) -> float:
    return float((q.T @ q - torch.eye(q.shape[1], dtype=q.dtype)).abs().max())


@pytest.mark.parametrize(("shape", "ranks", "full"), CASES)
def test_tucker_parallel_identity(shape, ranks, full):
    """Before truncation ``Ĉ ×_j Û_j = X₀ − h P_T(G)``, with ``P_T`` computed
    independently from the Jacobian of the Tucker parametrisation."""
    g = torch.Generator().manual_seed(0)
    p = rand_tucker(shape, ranks, g, full)
    grad = torch.randn(*shape, dtype=DT, generator=g)
    pg = DenseOracle(lambda y: grad).project(p)
    h = 0.3
    res = tucker_parallel(p, pg, h, None, full_modes=full)
    expected = _dense(p) - h * tucker_tangent_projection(p, grad)
    scale = float(grad.norm()) + float(p.core.norm())
    assert torch.allclose(_dense(res.point), expected, atol=1e3 * EPS * scale, rtol=0)
    for k, f in enumerate(res.point.factors):
        assert _orth_err(f) < 100 * EPS * shape[k]
        if k in full:
            assert torch.equal(f, p.factors[k])
    # the one-pass augmented BUG is the same step
    res2 = tucker_augmented_bug(p, pg, h, None, full_modes=full)
    assert torch.allclose(_dense(res2.point), _dense(res.point), atol=1e-13)
    # frozen tangent oracle = projections of the dense P_T(G) at other bases
    pt = tucker_tangent_projection(p, grad)
    other = rand_tucker(shape, [min(r + 1, n) for r, n in zip(ranks, shape)], g)
    a = TuckerFrozenTangentOracle(p, pg).project(other)
    b = DenseOracle(lambda y: pt).project(other)
    assert torch.allclose(a.core, b.core, atol=1e-12)
    assert all(torch.allclose(x, y, atol=1e-12) for x, y in zip(a.partials, b.partials))


def test_tucker_parallel_at_zero_core_and_transitions():
    g = torch.Generator().manual_seed(1)
    p = rand_tucker((8, 7, 6), (2, 2, 2), g)
    p = TuckerPoint(torch.zeros_like(p.core), p.factors)
    target = torch.randn(8, 7, 6, dtype=DT, generator=g)
    oracle = DenseOracle(lambda y: y - target)
    res = tucker_parallel(p, oracle, 0.5, RankRule(rtol=0.3))
    assert torch.isfinite(res.point.core).all() and float(res.point.core.norm()) > 0
    assert float((_dense(res.point) - target).norm()) < float(target.norm())
    for i in range(3):
        m_i = res.point.factors[i].T @ p.factors[i]
        assert torch.allclose(res.transitions[i], m_i, atol=1e-13)
    aug = tucker_augment(p, oracle)
    assert torch.allclose(_dense(aug.point), _dense(p), atol=1e-14)
    for i in range(3):
        assert torch.equal(aug.point.factors[i][:, :2], p.factors[i])


def _trajectory(shape, ranks, full, seed=2):
    g = torch.Generator().manual_seed(seed)
    p0 = rand_tucker(shape, ranks, g, full)
    ws = []
    for k, n in enumerate(shape):
        w = torch.randn(n, n, dtype=DT, generator=g) / math.sqrt(n)
        ws.append(torch.zeros(n, n, dtype=DT) if k in full else w - w.T)
    c1 = torch.randn(*ranks, dtype=DT, generator=g)

    def x(t):
        fs = [torch.linalg.matrix_exp(t * w) @ f for w, f in zip(ws, p0.factors)]
        return tucker_to_dense(p0.core + t * c1, fs)

    return x, p0


@pytest.mark.parametrize(("shape", "ranks", "full"), CASES)
@pytest.mark.parametrize("method", ["bug", "augmented_bug"])
def test_tucker_exactness(shape, ranks, full, method):
    x, p = _trajectory(shape, ranks, full)
    h = 0.1
    for k in range(8):
        inc = (x((k + 1) * h) - x(k * h)) / h
        oracle = DenseOracle(lambda y, inc=inc: inc, kind="field")
        if method == "bug":
            p = tucker_bug(p, oracle, h, full_modes=full).point
        else:
            p = tucker_augmented_bug(p, oracle, h, RankRule(rtol=1e-12), full_modes=full).point
        assert p.ranks == tuple(ranks)
        exact = x((k + 1) * h)
        assert float((_dense(p) - exact).norm()) < 1e-12 * float(exact.norm())


@pytest.mark.parametrize("method", ["bug", "augmented_bug"])
def test_tucker_exactness_with_tiny_core_singular_values(method):
    """Robustness: the unfoldings of the core have singular values down to 1e-12 and the
    integrators stay exact (no inverse of an unfolding anywhere)."""
    g = torch.Generator().manual_seed(7)
    shape, ranks = (7, 6, 5), (3, 2, 3)
    core = torch.zeros(*ranks, dtype=DT)
    core[0, 0, 0], core[1, 1, 1], core[0, 1, 2], core[2, 0, 2] = 1.0, 1e-6, 1e-3, 1e-12
    c1 = 1e-12 * torch.randn(*ranks, dtype=DT, generator=g)
    fs = [rand_orth(n, r, g) for n, r in zip(shape, ranks)]
    ws = []
    for n in shape:
        w = torch.randn(n, n, dtype=DT, generator=g) / math.sqrt(n)
        ws.append(w - w.T)

    def x(t):
        return tucker_to_dense(
            core + t * c1, [torch.linalg.matrix_exp(t * w) @ f for w, f in zip(ws, fs)]
        )

    p, h = TuckerPoint(core, tuple(fs)), 0.1
    for k in range(10):
        inc = (x((k + 1) * h) - x(k * h)) / h
        oracle = DenseOracle(lambda y, inc=inc: inc, kind="field")
        if method == "bug":
            p = tucker_bug(p, oracle, h).point
        else:
            p = tucker_augmented_bug(p, oracle, h, list(ranks)).point
    assert float((_dense(p) - x(1.0)).norm()) < 1e-12


@pytest.mark.parametrize(("shape", "ranks", "full"), CASES)
@pytest.mark.parametrize("method", ["bug", "augmented_bug", "parallel"])
def test_tucker_first_order(shape, ranks, full, method):
    """``Ẋ = Σ_i X ×_i W_i`` has the solution ``X₀ ×_i e^{tW_i}`` (constant ranks)."""
    g = torch.Generator().manual_seed(3)
    p0 = rand_tucker(shape, ranks, g, full)
    ws = [0.5 * torch.randn(n, n, dtype=DT, generator=g) / math.sqrt(n) for n in shape]

    def field(y):
        return sum(mode_dot(y, w, i) for i, w in enumerate(ws))

    exact = tucker_to_dense(_dense(p0), [torch.linalg.matrix_exp(w) for w in ws])
    oracle = DenseOracle(field, kind="field")
    hs, errs = [], []
    for steps in (8, 16, 32):
        h = 1.0 / steps
        p = p0
        for _ in range(steps):
            if method == "bug":
                p = tucker_bug(p, oracle, h, full_modes=full).point
            elif method == "augmented_bug":
                p = tucker_augmented_bug(p, oracle, h, list(ranks), full_modes=full).point
            else:
                p = tucker_parallel(p, oracle, h, list(ranks), full_modes=full).point
        hs.append(h)
        errs.append(float((_dense(p) - exact).norm()))
    slope = loglog_slope(hs, errs)
    assert 0.85 <= slope <= 1.15, (errs, slope)


@pytest.mark.parametrize(("shape", "ranks", "full"), CASES)
@pytest.mark.parametrize("start", ["low", "high"])
def test_tucker_rank_recovery(shape, ranks, full, start):
    """A target of multilinear rank ``k`` plus noise below the tolerance is recovered
    from ranks 1 and ``3k`` (capped by the dimensions); full modes stay full."""
    g = torch.Generator().manual_seed(4)
    tp = rand_tucker(shape, ranks, g, full)
    core = tp.core / tp.core.norm() * 2.0
    noise = torch.randn(*shape, dtype=DT, generator=g)
    target = tucker_to_dense(core, tp.factors) + 1e-7 * noise / noise.norm()
    oracle = DenseOracle(lambda y: y - target)
    if start == "low":
        r0 = [n if k in full else 1 for k, n in enumerate(shape)]
    else:
        r0 = [n if k in full else min(3 * r, n) for k, (n, r) in enumerate(zip(shape, ranks))]
    factors = tuple(
        torch.eye(n, dtype=DT) if k in full else rand_orth(n, r, g)
        for k, (n, r) in enumerate(zip(shape, r0))
    )
    p = TuckerPoint(torch.zeros(*r0, dtype=DT), factors)
    for _ in range(30):
        p = tucker_parallel(p, oracle, 0.7, RankRule(rtol=1e-4), full_modes=full).point
    assert p.ranks == tuple(ranks)
    assert float((_dense(p) - target).norm()) < 1e-5


def test_tucker_truncate_and_galerkin_blocks():
    g = torch.Generator().manual_seed(5)
    p = rand_tucker((8, 7, 6), (4, 4, 4), g)
    res = tucker_truncate(p, [2, RankRule(rank=3), 4])
    assert res.point.ranks == (2, 3, 4)
    # HOSVD: error bounded by the root sum of squared discarded values
    tails = [float(s[r:].norm()) for s, r in zip(res.singular_values, (2, 3, 4))]
    err = float((_dense(res.point) - _dense(p)).norm())
    assert err <= math.sqrt(sum(t * t for t in tails)) + 1e-12
    target = torch.randn(8, 7, 6, dtype=DT, generator=g)
    q = tucker_galerkin_step(p, DenseOracle(lambda y: y - target), 1.0)
    best = tucker_to_dense(target, [f.T for f in p.factors])
    assert torch.allclose(q.core, best, atol=1e-13)
    # multilinear-rank validity is enforced: r_i <= prod of the others
    res = tucker_truncate(p, [4, 1, 1])
    assert res.point.ranks == (1, 1, 1)
