"""Identities and building blocks of the matrix integrators (float64)."""

from __future__ import annotations

import functools

import pytest
import torch
from _integrators_helpers import DT, EPS, one_thread, rand_orth, rand_point, tangent_projection
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold_lowrank.integrators import (
    DenseOracle,
    FactoredOracle,
    FrozenTangentOracle,
    ProjectionOracle,
    augment,
    augmented_bug,
    bug,
    galerkin_step,
    ksl,
    parallel,
    truncate,
)
from manifold_lowrank.linalg import RankRule
from manifold_lowrank.manifolds.types import FixedRankPoint, ProjectedGradients

__all__ = ["one_thread"]


def _pg(point: FixedRankPoint, g: torch.Tensor) -> ProjectedGradients:
    u, _, v = point
    return ProjectedGradients(g @ v, u.T @ g @ v, g.T @ u)


def _orth_err(q: torch.Tensor) -> float:
    return float((q.T @ q - torch.eye(q.shape[1], dtype=q.dtype)).abs().max())


@settings(max_examples=15, deadline=None)
@given(
    m=st.integers(4, 24),
    n=st.integers(4, 24),
    r=st.integers(1, 6),
    h=st.floats(0.0, 2.0),
    zero_core=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_parallel_geolora_identity(m, n, r, h, zero_core, seed):
    """Before truncation ``[U Ũ] Ŝ [V Ṽ]ᵀ = U S Vᵀ − h P_T(G)``, also at ``S = 0``
    and when ``2r > m`` (fewer new directions)."""
    r = min(r, m, n)
    g = torch.Generator().manual_seed(seed)
    p = rand_point(m, n, r, g, core="zero" if zero_core else "random")
    grad = torch.randn(m, n, dtype=DT, generator=g)
    res = parallel(p, _pg(p, grad), h, None)
    y = res.point.to_dense()
    expected = p.to_dense() - h * tangent_projection(p.U, p.V, grad)
    scale = 1.0 + float(p.S.norm()) + h * float(grad.norm())
    assert torch.allclose(y, expected, atol=200 * EPS * scale, rtol=0)
    assert _orth_err(res.point.U) < 100 * EPS * m
    assert _orth_err(res.point.V) < 100 * EPS * n
    assert res.point.U.shape[1] == r + min(r, m - r)
    assert torch.equal(res.M[:r], torch.eye(r, dtype=DT)) and not res.M[r:].any()


def test_parallel_truncated_is_best_approximation_of_projected_step():
    g = torch.Generator().manual_seed(0)
    p = rand_point(20, 15, 3, g)
    grad = torch.randn(20, 15, dtype=DT, generator=g)
    h = 0.4
    res = parallel(p, _pg(p, grad), h, RankRule(rank=4))
    z = p.to_dense() - h * tangent_projection(p.U, p.V, grad)
    u, s, vh = torch.linalg.svd(z)
    best = u[:, :4] @ torch.diag(s[:4]) @ vh[:4]
    assert torch.allclose(res.point.to_dense(), best, atol=1e-12)
    assert torch.allclose(res.singular_values, s[:6], atol=1e-12)


def test_one_pass_augmented_bug_equals_parallel():
    g = torch.Generator().manual_seed(1)
    p = rand_point(18, 14, 4, g)
    pg = _pg(p, torch.randn(18, 14, dtype=DT, generator=g))
    a = augmented_bug(p, pg, 0.3, RankRule(rtol=0.05))
    b = parallel(p, pg, 0.3, RankRule(rtol=0.05))
    assert a.point.rank == b.point.rank
    assert torch.allclose(a.point.to_dense(), b.point.to_dense(), atol=1e-13)


def test_parallel_with_oracle_calls_it_once():
    g = torch.Generator().manual_seed(2)
    p = rand_point(12, 10, 3, g)
    grad = torch.randn(12, 10, dtype=DT, generator=g)
    calls = []

    def fn(y):
        calls.append(1)
        return grad

    a = parallel(p, DenseOracle(fn), 0.2, 3)
    assert len(calls) == 1
    b = parallel(p, _pg(p, grad), 0.2, 3)
    assert torch.allclose(a.point.to_dense(), b.point.to_dense(), atol=1e-13)


def test_transition_matrices_and_transport():
    g = torch.Generator().manual_seed(3)
    p = rand_point(16, 12, 3, g)
    grad = torch.randn(16, 12, dtype=DT, generator=g)
    z_old = torch.randn(3, 3, dtype=DT, generator=g)
    x = p.U @ z_old @ p.V.T
    for res in (
        ksl(p, _pg(p, grad), 0.3),
        bug(p, _pg(p, grad), 0.3),
        augmented_bug(p, DenseOracle(lambda y: y - grad), 0.3, RankRule(rank=5)),
        parallel(p, _pg(p, grad), 0.3, RankRule(rank=2)),
    ):
        u1, _, v1 = res.point
        assert torch.allclose(res.M, u1.T @ p.U, atol=1e-13)
        assert torch.allclose(res.N, v1.T @ p.V, atol=1e-13)
        # transported coordinates = coordinates of the projection onto the new bases
        assert torch.allclose(res.M @ z_old @ res.N.T, u1.T @ x @ v1, atol=1e-13)


def test_augment_galerkin_truncate_compose():
    """The amortised DLRT schedule: augment, several coefficient steps, truncate."""
    g = torch.Generator().manual_seed(4)
    p = rand_point(14, 11, 3, g)
    target = torch.randn(14, 11, dtype=DT, generator=g)
    oracle = DenseOracle(lambda y: y - target)
    aug = augment(p, oracle)
    u_hat, s_hat, v_hat = aug.point
    assert u_hat.shape == (14, 6) and v_hat.shape == (11, 6)
    assert torch.allclose(aug.point.to_dense(), p.to_dense(), atol=1e-13)
    assert torch.equal(u_hat[:, :3], p.U)
    assert _orth_err(u_hat) < 100 * EPS * 14
    # coefficient steps with a closure giving ∂L/∂Ŝ at the frozen bases
    q = aug.point
    for _ in range(3):
        q = galerkin_step(q, lambda pt: pt.U.T @ (pt.to_dense() - target) @ pt.V, 0.5)
    # the Galerkin flow minimises over span(Û)⊗span(V̂): compare with the closed form
    best_core = u_hat.T @ target @ v_hat
    expected = best_core + (1 - 0.5) ** 3 * (s_hat - best_core)
    assert torch.allclose(q.S, expected, atol=1e-13)
    tr = truncate(q, RankRule(rank=2))
    assert tr.point.rank == 2
    assert torch.allclose(tr.M @ aug.M, tr.point.U.T @ p.U, atol=1e-13)


def test_galerkin_step_with_optimizer_matches_euler():
    g = torch.Generator().manual_seed(5)
    p = rand_point(10, 9, 3, g)
    target = torch.randn(10, 9, dtype=DT, generator=g)
    fn = lambda pt: pt.U.T @ (pt.to_dense() - target) @ pt.V  # noqa: E731
    euler = galerkin_step(p, fn, 0.6, steps=4)
    sgd = galerkin_step(p, fn, 0.6, steps=4, optimizer=torch.optim.SGD)
    assert torch.allclose(euler.S, sgd.S, atol=1e-14)
    adam = galerkin_step(p, fn, 0.05, steps=30, optimizer=functools.partial(torch.optim.Adam))
    loss = lambda s: float(((p.U @ s @ p.V.T) - target).norm())  # noqa: E731
    assert loss(adam.S) < loss(p.S)
    # bug/augmented_bug accept the same optimizer for their Galerkin step
    o = DenseOracle(lambda y: y - target)
    b1 = bug(p, o, 0.6, core_steps=4)
    b2 = bug(p, o, 0.6, core_steps=4, optimizer=torch.optim.SGD)
    assert torch.allclose(b1.point.S, b2.point.S, atol=1e-13)


def test_truncate_rule_is_exact_and_can_keep_everything():
    """The tail norm includes every discarded value, so rank 2r is reachable (unlike
    the research code), and the error equals the tail norm."""
    g = torch.Generator().manual_seed(6)
    u, v = rand_orth(12, 4, g), rand_orth(10, 4, g)
    sig = torch.tensor([1.0, 0.5, 0.1, 0.01], dtype=DT)
    p = FixedRankPoint(u, torch.diag(sig), v)
    keep_all = truncate(p, RankRule(rtol=0.008))
    assert keep_all.point.rank == 4  # ‖σ_4‖ = 0.01 > 0.008 · ‖σ‖ = 0.00898
    tol = 0.101 / float(sig.norm())  # tail ‖(0.1, 0.01)‖ = 0.1005 <= 0.101
    res = truncate(p, RankRule(rtol=tol))
    assert res.point.rank == 2
    err = float((res.point.to_dense() - p.to_dense()).norm())
    assert abs(err - float(sig[2:].norm())) < 1e-13
    assert truncate(p, 3).point.rank == 3


def test_oracle_forms_agree_and_frozen_tangent_matches_dense():
    g = torch.Generator().manual_seed(7)
    p = rand_point(15, 13, 3, g)
    a = torch.randn(15, 2, dtype=DT, generator=g)
    b = torch.randn(13, 2, dtype=DT, generator=g)
    dense = DenseOracle(lambda y: y - a @ b.T)
    fact = FactoredOracle(lambda q: (torch.cat([q.U @ q.S, -a], 1), torch.cat([q.V, b], 1)))
    proj = ProjectionOracle(lambda q: dense.project(q))
    field = DenseOracle(lambda y: a @ b.T - y, kind="field")
    ref = dense.project(p)
    for o in (fact, proj, field):
        assert all(torch.allclose(x, y, atol=1e-13) for x, y in zip(o.project(p), ref))
    # frozen tangent oracle at other bases = projections of the dense P_T(G)
    grad = p.to_dense() - a @ b.T
    frozen = FrozenTangentOracle(p, ref)
    other = rand_point(15, 13, 5, g)
    pt_dense = DenseOracle(lambda y: tangent_projection(p.U, p.V, grad)).project(other)
    assert all(torch.allclose(x, y, atol=1e-13) for x, y in zip(frozen.project(other), pt_dense))
    # KSL in one-pass mode = KSL with the frozen dense P_T(G) oracle
    k1 = ksl(p, ref, 0.3).point.to_dense()
    k2 = ksl(p, DenseOracle(lambda y: tangent_projection(p.U, p.V, grad)), 0.3).point.to_dense()
    assert torch.allclose(k1, k2, atol=1e-13)


def test_substeps_converge_to_exact_substep_solution():
    """With many inner Euler steps the K-step approaches its exact flow: for the linear
    field ``G(Y) = Y`` the K-step is ``K(h) = e^{-h} K₀``, so KSL/BUG give ``e^{-h} Y₀``."""
    g = torch.Generator().manual_seed(8)
    p = rand_point(12, 9, 3, g)
    oracle = DenseOracle(lambda y: y)
    h = 0.5
    exact = torch.exp(torch.tensor(-h, dtype=DT)) * p.to_dense()
    errs = [
        float((bug(p, oracle, h, substeps=s).point.to_dense() - exact).norm()) for s in (1, 4, 16)
    ]
    assert errs[2] < errs[1] < errs[0]
    assert errs[2] < 0.1 * errs[0]
    # KSL: K- and L-steps each shrink by e^{-h}, the backward S-step grows by e^{h}
    ksl_s = ksl(p, oracle, h, substeps=64).point.to_dense()
    assert float((ksl_s - exact).norm()) < 0.02 * float(exact.norm())


def test_float32_and_no_side_effects():
    g = torch.Generator().manual_seed(9)
    p64 = rand_point(20, 16, 4, g)
    p = FixedRankPoint(*(t.float() for t in p64))
    grad = torch.randn(20, 16, generator=g)
    pg = _pg(p, grad)
    saved = [t.clone() for t in (*p, *pg)]
    for res in (
        ksl(p, pg, 0.1),
        bug(p, pg, 0.1),
        augmented_bug(p, pg, 0.1, RankRule(rtol=0.01)),
        parallel(p, pg, 0.1, RankRule(rtol=0.01)),
    ):
        assert res.point.U.dtype == torch.float32
        assert _orth_err(res.point.U) < 1e-5
    assert all(torch.equal(a, b) for a, b in zip(saved, (*p, *pg)))


@pytest.mark.parametrize("method", ["ksl", "bug"])
def test_fixed_rank_methods_do_not_invert_s(method):
    """At ``S = 0`` the fixed-rank methods take a finite, meaningful step."""
    g = torch.Generator().manual_seed(10)
    p = rand_point(10, 8, 2, g, core="zero")
    grad = torch.randn(10, 8, dtype=DT, generator=g)
    fn = ksl if method == "ksl" else bug
    res = fn(p, DenseOracle(lambda y: grad), 0.1)
    assert torch.isfinite(res.point.S).all()
    assert float(res.point.S.norm()) > 0
