"""The matrix integrators against theory: exactness, order, robustness to small singular
values, rank adaptivity, and the dense reference solver."""

from __future__ import annotations

import math

import pytest
import torch
from _integrators_helpers import DT, loglog_slope, one_thread, rand_orth, skew

from manifold_lowrank.integrators import (
    DenseOracle,
    GlobalBudget,
    augmented_bug,
    bug,
    ksl,
    parallel,
)
from manifold_lowrank.integrators.reference import (
    EmergingDirectionProblem,
    rk4,
    run_tracking,
    solve_dense,
)
from manifold_lowrank.linalg import RankRule
from manifold_lowrank.manifolds.types import FixedRankPoint

__all__ = ["one_thread"]

METHODS = {
    "ksl": lambda p, o, h, r: ksl(p, o, h),
    "bug": lambda p, o, h, r: bug(p, o, h),
    "augmented_bug": lambda p, o, h, r: augmented_bug(p, o, h, r),
    "parallel": lambda p, o, h, r: parallel(p, o, h, r),
}


def _rank_r_trajectory(m=24, n=18, r=4, seed=0, tiny=False):
    """``A(t) = e^{tW₁} U₀ (D + t D₁) V₀ᵀ e^{tW₂}ᵀ``: rank ``r`` for all ``t`` used;
    with ``tiny`` the singular values of ``D + t D₁`` go down to ``1e-12``."""
    g = torch.Generator().manual_seed(seed)
    w1, w2 = skew(m, g), skew(n, g)
    u0, v0 = rand_orth(m, r, g), rand_orth(n, r, g)
    if tiny:
        d0 = torch.diag(torch.tensor([1.0, 1e-4, 1e-8, 1e-12], dtype=DT))
        d1 = torch.diag(torch.tensor([0.5, -1e-4, 2e-8, 1e-12], dtype=DT))
    else:
        d0 = torch.randn(r, r, dtype=DT, generator=g)
        d1 = torch.randn(r, r, dtype=DT, generator=g)

    def a(t):
        return (
            torch.linalg.matrix_exp(t * w1)
            @ u0
            @ (d0 + t * d1)
            @ v0.T
            @ torch.linalg.matrix_exp(t * w2).T
        )

    return a, FixedRankPoint(u0, d0, v0)


@pytest.mark.parametrize("tiny", [False, True], ids=["generic", "sigma-to-1e-12"])
@pytest.mark.parametrize("method", ["ksl", "bug", "augmented_bug"])
def test_exactness_on_rank_r_trajectory(method, tiny):
    """Lubich–Oseledets / Ceruti–Lubich exactness: if ``A(t)`` has rank ``r`` and the
    increment of a step is ``A(t₁) − A(t₀)``, the integrator reproduces ``A(t₁)`` — also
    when its singular values go down to 1e-12 (no ``S⁻¹`` anywhere)."""
    a, p = _rank_r_trajectory(tiny=tiny)
    h, r = 0.1, 4
    rule = RankRule(rank=r) if tiny else RankRule(rtol=1e-12)
    for k in range(10):
        inc = (a((k + 1) * h) - a(k * h)) / h
        oracle = DenseOracle(lambda y, inc=inc: inc, kind="field")
        if method == "augmented_bug":
            p = augmented_bug(p, oracle, h, rule).point
        else:
            p = METHODS[method](p, oracle, h, r).point
        assert p.rank == r
        exact = a((k + 1) * h)
        assert float((p.to_dense() - exact).norm()) < 1e-12 * float(exact.norm())


def _linear_ode(m=20, n=16, r=3, seed=3):
    """``Ẏ = W₁ Y + Y W₂ᵀ``: ``Y(t) = e^{tW₁} Y₀ e^{tW₂}ᵀ`` keeps rank ``r``."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(m, m, dtype=DT, generator=g) / math.sqrt(m)
    w2 = torch.randn(n, n, dtype=DT, generator=g) / math.sqrt(n)
    p0 = FixedRankPoint(
        rand_orth(m, r, g), torch.diag(torch.tensor([1.0, 0.5, 0.25], dtype=DT)), rand_orth(n, r, g)
    )

    def exact(t):
        return torch.linalg.matrix_exp(t * w1) @ p0.to_dense() @ torch.linalg.matrix_exp(t * w2).T

    return (lambda y: w1 @ y + y @ w2.T), p0, exact


@pytest.mark.parametrize("method", list(METHODS))
def test_first_order_convergence(method):
    field, p0, exact = _linear_ode()
    oracle = DenseOracle(field, kind="field")
    t_end, errs, hs = 1.0, [], []
    for steps in (8, 16, 32, 64):
        h = t_end / steps
        p = p0
        for _ in range(steps):
            p = METHODS[method](p, oracle, h, 3).point
        errs.append(float((p.to_dense() - exact(t_end)).norm()))
        hs.append(h)
    slope = loglog_slope(hs, errs)
    assert 0.85 <= slope <= 1.15, (errs, slope)


def test_dense_reference_solvers():
    field, p0, exact = _linear_ode()
    y_ref = solve_dense(lambda t, y: field(y), p0.to_dense(), (0.0, 1.0))
    assert float((y_ref - exact(1.0)).norm()) < 1e-9
    y_rk4 = rk4(lambda t, y: field(y), p0.to_dense(), 0.0, 1.0, 40)
    assert float((y_rk4 - exact(1.0)).norm()) < 1e-6
    ys = solve_dense(lambda t, y: field(y), p0.to_dense(), (0.0, 1.0), t_eval=[0.5, 1.0])
    assert ys.shape == (2, *p0.to_dense().shape)
    assert torch.allclose(ys[0], exact(0.5), atol=1e-9)


def test_robust_to_small_singular_values():
    """Tracking problem whose ``r``-th singular value emerges from ``σ_min`` (table in
    ``benchmarks/integrators.py``). At a fixed step the robust integrators match
    full-matrix gradient descent for ``σ_min = 1e-2`` and ``1e-12`` alike, while
    factor gradient descent and the ``S⁻¹`` Euler scheme degrade."""
    err = {}
    for smin in (1e-2, 1e-12):
        prob = EmergingDirectionProblem(30, 24, 5, smin)
        for meth in ("dense", "ksl", "bug", "parallel", "factor_gd", "sinv"):
            err[meth, smin] = run_tracking(meth, prob, steps=50, h=0.2)
    for meth in ("ksl", "bug", "parallel"):
        assert err[meth, 1e-12] <= 1.05 * err[meth, 1e-2]
        assert err[meth, 1e-12] <= 1.2 * err["dense", 1e-12]
    assert err["factor_gd", 1e-12] > 2 * err["factor_gd", 1e-2]
    assert err["factor_gd", 1e-12] > 4 * err["ksl", 1e-12]
    assert err["sinv", 1e-12] > 10 * err["sinv", 1e-2]


def _rank_k_target(m=30, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    sig = torch.tensor([1.0, 0.7, 0.5, 0.3], dtype=DT)
    t = rand_orth(m, 4, g) @ torch.diag(sig) @ rand_orth(n, 4, g).T
    noise = torch.randn(m, n, dtype=DT, generator=g)
    return t + 1e-6 * noise / noise.norm(), g


@pytest.mark.parametrize("method", ["parallel", "augmented_bug"])
@pytest.mark.parametrize("r0", [1, 12])
def test_rank_recovery(method, r0):
    """From rank 1 and from rank 3k, starting at ``S = 0``, the rank-adaptive methods
    converge to the rank ``k = 4`` of the target (noise ``1e-6`` below ``rtol = 1e-3``)."""
    target, g = _rank_k_target()
    oracle = DenseOracle(lambda y: y - target)
    p = FixedRankPoint(rand_orth(30, r0, g), torch.zeros(r0, r0, dtype=DT), rand_orth(24, r0, g))
    fn = parallel if method == "parallel" else augmented_bug
    ranks = []
    for _ in range(25):
        p = fn(p, oracle, 0.7, RankRule(rtol=1e-3)).point
        ranks.append(p.rank)
    assert ranks[-5:] == [4] * 5
    assert float((p.to_dense() - target).norm()) < 1e-5


def test_rank_recovery_under_global_budget():
    """Two layers (targets of rank 4 and 2) trained jointly with a budget of 5 ranks:
    every step respects the budget and the kept directions are the largest."""
    t1, g = _rank_k_target(seed=1)
    t2 = (
        rand_orth(20, 2, g) @ torch.diag(torch.tensor([2.0, 1.5], dtype=DT)) @ rand_orth(16, 2, g).T
    )
    targets = [t1, t2]
    points = [
        FixedRankPoint(rand_orth(30, 1, g), torch.zeros(1, 1, dtype=DT), rand_orth(24, 1, g)),
        FixedRankPoint(rand_orth(20, 1, g), torch.zeros(1, 1, dtype=DT), rand_orth(16, 1, g)),
    ]
    budget = GlobalBudget(5, unit="rank", normalize="fro")
    for _ in range(30):
        aug = [
            parallel(p, DenseOracle(lambda y, t=t: y - t), 0.7, None).point
            for p, t in zip(points, targets)
        ]
        points = [res.point for res in budget.truncate(aug)]
        assert sum(p.rank for p in points) <= 5
    # normalised values: layer 2 (2, 1.5)/2.5 = (0.8, 0.6); layer 1 (1, .7, .5, .3)/1.39
    # = (0.72, 0.50, 0.36, 0.22): the five largest are 0.8, 0.72, 0.6, 0.5, 0.36
    assert [p.rank for p in points] == [3, 2]
    err2 = float((points[1].to_dense() - t2).norm())
    assert err2 < 1e-8
    u, sig, vh = torch.linalg.svd(t1)
    best3 = u[:, :3] @ torch.diag(sig[:3]) @ vh[:3]
    # the fixed point of the budgeted iteration is the best rank-3 approximation
    assert float((points[0].to_dense() - best3).norm()) < 1e-3
