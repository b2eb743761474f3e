"""Tests of :class:`manifold_lowrank.manifolds.FixedRank` (math against dense formulas)."""

from __future__ import annotations

import math

import geoopt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold_lowrank.manifolds import FixedRank, FixedRankPoint, FixedRankTangent
from manifold_lowrank.manifolds.base import LowRankManifold
from manifold_lowrank.manifolds.types import ProjectedGradients

F64 = torch.float64
EPS = torch.finfo(F64).eps
TOL = 1000 * EPS


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The CI machine is shared; small matrices are fastest (and deterministic) on 1 thread.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


def dense_proj(U: torch.Tensor, V: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """P_T(Z) = UUᵀZ + ZVVᵀ − UUᵀZVVᵀ."""
    PU, PV = U @ U.mT, V @ V.mT
    return PU @ Z + Z @ PV - PU @ Z @ PV


SIZES = [(50, 30, 5), (30, 50, 5), (20, 20, 4), (12, 9, 9), (7, 7, 7)]


# ----------------------------------------------------------------------------- construction
def test_is_a_geoopt_manifold_with_documented_shapes():
    M = FixedRank(50, 30, 5)
    assert isinstance(M, geoopt.Manifold) and isinstance(M, LowRankManifold)
    assert M.shape == (50 + 5 + 30, 5)
    assert M.dim == (50 + 30 - 5) * 5
    assert M.ndim == 2
    assert "m=50" in repr(M) and "retraction='polar'" in repr(M)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((5, 4, 0), {}, r"r \(rank\) must be in \[1, 4\], got 0"),
        ((5, 4, 5), {}, r"r \(rank\) must be in \[1, 4\], got 5"),
        ((5, 4, -1), {}, r"r \(rank\)"),
        ((5.0, 4, 2), {}, r"m must be an int"),
        ((5, "4", 2), {}, r"n must be an int"),
        ((5, 4, True), {}, r"r \(rank\) must be an int"),
        ((0, 4, 1), {}, r"m must be in"),
        ((5, 4, 2), {"retraction": "qr"}, r"retraction must be one of"),
    ],
)
def test_constructor_validation(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FixedRank(*args, **kwargs)


# ----------------------------------------------------------------------------- packing
def test_unpack_is_a_zero_copy_view_and_pack_roundtrips():
    M = FixedRank(6, 4, 2)
    x = M.random(3, dtype=F64, generator=gen())
    p = M.unpack(x)
    assert isinstance(p, FixedRankPoint)
    assert p.U.shape == (3, 6, 2) and p.S.shape == (3, 2, 2) and p.V.shape == (3, 4, 2)
    assert p.U.data_ptr() == x.data_ptr()
    p.S[0, 0, 0] = 123.0  # writes through
    assert x[0, 6, 0] == 123.0
    assert torch.equal(M.pack(p), x)
    t = M.unpack_tangent(x)
    assert isinstance(t, FixedRankTangent) and t.M.data_ptr() == p.S.data_ptr()
    assert torch.equal(M.pack_tangent(t), x)


def test_pack_broadcasts_and_validates():
    M = FixedRank(6, 4, 2)
    U = torch.zeros(6, 2, dtype=F64)
    S = torch.zeros(5, 2, 2, dtype=F64)
    V = torch.zeros(4, 2, dtype=F64)
    assert M.pack((U, S, V)).shape == (5, 12, 2)
    with pytest.raises(ValueError, match="third factor must have trailing shape"):
        M.pack((U, S, torch.zeros(5, 2, dtype=F64)))
    with pytest.raises(TypeError, match="mixed dtypes"):
        M.pack((U.float(), S, V))


def test_wrong_shapes_dtypes_devices_are_rejected():
    M = FixedRank(6, 4, 2)
    x = M.random(dtype=F64, generator=gen())
    with pytest.raises(ValueError, match=r"trailing shape \(12, 2\)"):
        M.proju(x, torch.zeros(11, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"`x` must have trailing shape"):
        M.unpack(torch.zeros(12, 3, dtype=F64))
    with pytest.raises(TypeError, match="dtype"):
        M.proju(x, torch.zeros(12, 2, dtype=torch.float32))
    with pytest.raises(TypeError, match="floating-point"):
        M.proju(x, torch.zeros(12, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        M.inner(x, [[0.0] * 2] * 12)
    with pytest.raises(ValueError, match="device"):
        M.proju(x, torch.zeros(12, 2, dtype=F64, device="meta"))
    with pytest.raises(ValueError, match="do not broadcast"):
        M.proju(M.random(3, dtype=F64), torch.zeros(2, 12, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"Z must be a dense tensor of trailing shape \(6, 4\)"):
        M.proju_dense(x, torch.zeros(4, 6, dtype=F64))


# ----------------------------------------------------------------------------- random / origin
def test_random_points_orthonormal_full_core_and_reproducible():
    M = FixedRank(40, 25, 6)
    x = M.random(2, dtype=F64, generator=gen(1))
    U, S, V = M.unpack(x)
    eye = torch.eye(6, dtype=F64)
    assert (U.mT @ U - eye).abs().max() < TOL and (V.mT @ V - eye).abs().max() < TOL
    sv = torch.linalg.svdvals(S)
    assert float((sv[..., 0] / sv[..., -1]).max()) < 10.0  # well spread, cond < 10
    assert (S - torch.diag_embed(torch.diagonal(S, dim1=-2, dim2=-1))).abs().max() > 1e-3  # full
    assert torch.equal(x, M.random(2, dtype=F64, generator=gen(1)))
    # full packed shape is accepted too
    assert torch.equal(x, M.random(2, 71, 6, dtype=F64, generator=gen(1)))
    assert M.random(dtype=torch.float32).dtype == torch.float32


def test_origin_is_seeded_without_touching_global_rng():
    M = FixedRank(8, 5, 3)
    state = torch.get_rng_state()
    a = M.origin(dtype=F64)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, M.origin(dtype=F64))
    assert not torch.equal(a, M.origin(dtype=F64, seed=1))
    assert M.check_point_on_manifold(a, atol=1e-12)


# ----------------------------------------------------------------------------- projections
@pytest.mark.parametrize(("m", "n", "r"), SIZES)
def test_proju_matches_dense_projection_of_factored_ambient(m, n, r):
    M = FixedRank(m, n, r)
    g = gen(2)
    x = M.random(dtype=F64, generator=g)
    U, _, V = M.unpack(x)
    z = torch.randn(M.shape, dtype=F64, generator=g)  # arbitrary Up, M, Vp
    Zp, Zm, Zv = M.unpack_tangent(z)
    Z = Zp @ V.mT + U @ Zm @ V.mT + U @ Zv.mT
    p = M.proju(x, z)
    assert rel(M.embed_tangent(x, p), dense_proj(U, V, Z)) < TOL
    Up, _, Vp = M.unpack_tangent(p)
    assert (U.mT @ Up).abs().max() < TOL and (V.mT @ Vp).abs().max() < TOL
    assert rel(M.proju(x, p), p) < TOL  # idempotent
    # dense and factored projections of a general (not low-rank) matrix
    W = torch.randn(m, n, dtype=F64, generator=g)
    assert rel(M.embed_tangent(x, M.proju_dense(x, W)), dense_proj(U, V, W)) < TOL
    A, B = torch.randn(m, 3, dtype=F64, generator=g), torch.randn(n, 3, dtype=F64, generator=g)
    assert rel(M.proju_factored(x, A, B), M.proju_dense(x, A @ B.mT)) < TOL


def test_projected_gradients_need_no_inverse_of_S():
    """rgrad_from_projected equals P_T(G) even when S is singular (egrad2rgrad cannot)."""
    M = FixedRank(20, 15, 4)
    g = gen(3)
    x = M.random(dtype=F64, generator=g)
    U, S, V = M.unpack(x)
    S.copy_(torch.diag(torch.tensor([1.0, 0.5, 1e-3, 0.0], dtype=F64)))  # singular core
    G = torch.randn(20, 15, dtype=F64, generator=g)
    pg = ProjectedGradients(G @ V, U.mT @ G @ V, G.mT @ U)
    assert rel(M.rgrad_from_projected(x, pg), M.proju_dense(x, G)) < TOL
    assert rel(M.egrad2rgrad_dense(x, G), M.proju_dense(x, G)) < TOL
    with pytest.raises(ValueError, match=r"pg.UtGV must have trailing shape \(4, 4\)"):
        M.rgrad_from_projected(x, ProjectedGradients(G @ V, G @ V, G.mT @ U))


@pytest.mark.parametrize(("m", "n", "r"), SIZES)
def test_egrad2rgrad_from_autograd_factor_gradients(m, n, r):
    M = FixedRank(m, n, r)
    g = gen(4)
    x = M.random(dtype=F64, generator=g).requires_grad_(True)
    T = torch.randn(m, n, dtype=F64, generator=g)

    def f(X):
        return 0.5 * ((X - T) ** 2).sum() + torch.cos(X).sum()

    f(M.embed(x)).backward()
    Xd = M.embed(x).detach().requires_grad_(True)
    f(Xd).backward()
    rg = M.egrad2rgrad(x.detach(), x.grad)
    assert rel(rg, M.proju_dense(x.detach(), Xd.grad)) < 10 * TOL


# ----------------------------------------------------------------------------- metric
@pytest.mark.parametrize(("m", "n", "r"), SIZES)
def test_inner_is_the_ambient_frobenius_product(m, n, r):
    M = FixedRank(m, n, r)
    g = gen(5)
    x = M.random(4, dtype=F64, generator=g)
    u = M.random_tangent(x, generator=g)
    v = M.random_tangent(x, generator=g)
    amb = (M.embed_tangent(x, u) * M.embed_tangent(x, v)).sum((-2, -1))
    assert rel(M.inner(x, u, v), amb) < TOL
    assert M.inner(x, u, v, keepdim=True).shape == (4, 1, 1)
    assert rel(M.norm(x, u) ** 2, M.inner(x, u)) < TOL


def test_component_inner_is_blockwise_and_keeps_adam_direction_tangent():
    M = FixedRank(9, 7, 3)
    g = gen(6)
    x = M.random(2, dtype=F64, generator=g)
    u = M.random_tangent(x, generator=g)
    c = M.component_inner(x, u)
    assert c.shape == (2, 9 + 3 + 7, 1)
    Up, Mm, Vp = M.unpack_tangent(u)
    blocks = [(Up**2).sum((-2, -1)), (Mm**2).sum((-2, -1)), (Vp**2).sum((-2, -1))]
    rows = [(0, 9), (9, 12), (12, 19)]
    for b, (lo, hi) in zip(blocks, rows):
        assert torch.allclose(c[:, lo:hi, 0], b[:, None].expand(2, hi - lo), rtol=TOL, atol=0)
    # geoopt's RiemannianAdam direction: u / (sqrt(component_inner) + eps)
    d = u / (c.sqrt() + 1e-8)
    assert M.check_vector_on_tangent(x, d, atol=1e-13, rtol=1e-13)


# ----------------------------------------------------------------------------- retractions
@pytest.mark.parametrize("retraction", ["polar", "orthographic", "ksl"])
@pytest.mark.parametrize(("m", "n", "r"), [(50, 30, 5), (30, 50, 5), (12, 9, 9)])
def test_retractions_on_manifold_and_first_order(retraction, m, n, r):
    M = FixedRank(m, n, r, retraction=retraction)
    g = gen(7)
    x = M.random(dtype=F64, generator=g)
    u = M.random_tangent(x, generator=g)
    u = u / M.norm(x, u)
    X, xi = M.embed(x), M.embed_tangent(x, u)
    ts = [1e-3, 1e-2, 1e-1]
    errs = []
    for t in ts:
        y = M.retr(x, t * u)
        assert torch.equal(y, getattr(M, f"retr_{retraction}")(x, t * u))
        assert M.check_point_on_manifold(y, atol=1e-12, rtol=1e-12)
        errs.append(float((M.embed(y) - X - t * xi).norm()))
    if r < min(m, n):
        slope = math.log(errs[-1] / errs[0]) / math.log(ts[-1] / ts[0])
        assert slope > 1.8, errs
    else:  # open subset of R^{m×n}: every retraction is X + ξ up to rounding
        assert max(errs) < TOL * 10
    assert torch.equal(M.expmap(x, u), M.retr(x, u))


@pytest.mark.parametrize("retraction", ["polar", "orthographic", "ksl"])
def test_retraction_reads_a_non_gauged_vector_as_the_tangent_it_represents(retraction):
    """geoopt's RiemannianSGD seeds momentum with the raw (non-tangent) gradient."""
    M = FixedRank(30, 20, 4, retraction=retraction)
    g = gen(21)
    x = M.random(dtype=F64, generator=g)
    z = 0.1 * torch.randn(M.shape, dtype=F64, generator=g)  # UᵀUp ≠ 0, VᵀVp ≠ 0
    y = M.retr(x, z)
    assert M.check_point_on_manifold(y, atol=1e-13, rtol=1e-13)
    assert rel(M.embed(y), M.embed(M.retr(x, M.proju(x, z)))) < TOL


def test_polar_retraction_is_the_truncated_svd_of_x_plus_xi():
    M = FixedRank(40, 30, 4)
    g = gen(8)
    x = M.random(dtype=F64, generator=g)
    u = 0.5 * M.random_tangent(x, generator=g)
    Y = M.embed(x) + M.embed_tangent(x, u)
    Uf, s, Vh = torch.linalg.svd(Y)
    best = Uf[:, :4] @ torch.diag(s[:4]) @ Vh[:4]
    y = M.retr_polar(x, u)
    assert rel(M.embed(y), best) < TOL
    _, S, _ = M.unpack(y)
    assert torch.allclose(S, torch.diag(s[:4]), rtol=TOL, atol=0)


@pytest.mark.parametrize(
    "case", ["fast", "ill_conditioned_Up", "rank_deficient_Up", "non_gauged", "drifted_U"]
)
def test_polar_retraction_both_paths_match_truncated_svd_with_orthonormal_output(case):
    """Every code path of retr_polar (Gram/Cholesky-QR fast path and the Householder
    QR of [U U_p] fallback) returns the truncated SVD of X + Z(u), with bases orthonormal
    to O(ε) even when U itself carries an orthonormality error."""
    m, n, r = 40, 30, 4
    M = FixedRank(m, n, r)
    g = gen(31)
    x = M.random(dtype=F64, generator=g)
    u = 0.5 * M.random_tangent(x, generator=g)
    U = M.unpack(x).U
    Up = M.unpack_tangent(u).Up
    if case == "ill_conditioned_Up":  # cond(U_p) = 1e6: beyond the fast path's bound
        Up.mul_(torch.logspace(0, -6, r, dtype=F64))
    elif case == "rank_deficient_Up":
        Up[:, -1] = Up[:, 0]
    elif case == "non_gauged":  # large component of U_p in range(U)
        Up.add_(U @ torch.randn(r, r, dtype=F64, generator=g))
    elif case == "drifted_U":  # U with ‖UᵀU − I‖ ≈ 1e-9 (as after many unchecked steps)
        U.add_(1e-9 * torch.randn(m, r, dtype=F64, generator=g))
    Y = M.embed(x) + M.embed_tangent(x, u)
    Uf, s, Vh = torch.linalg.svd(Y)
    best = Uf[:, :r] @ torch.diag(s[:r]) @ Vh[:r]
    y = M.retr_polar(x, u)
    assert rel(M.embed(y), best) < TOL
    U1, S1, V1 = M.unpack(y)
    eye = torch.eye(r, dtype=F64)
    assert (U1.mT @ U1 - eye).abs().max() < 20 * EPS * r
    assert (V1.mT @ V1 - eye).abs().max() < 20 * EPS * r
    assert torch.allclose(S1, torch.diag(s[:r]), rtol=TOL, atol=0)


def _orthonormality_after_steps(dtype: torch.dtype, steps: int, retraction: str) -> float:
    M = FixedRank(40, 30, 4, retraction=retraction)
    g = gen(32)
    x = M.random(dtype=dtype, generator=g)
    eye = torch.eye(4, dtype=dtype)
    worst = 0.0
    for k in range(steps):
        u = M.random_tangent(x, generator=g)
        x = M.retr(x, 0.3 * u / M.norm(x, u))  # moderate steps (‖S‖ ≈ 1)
        if k % 50 == 49 or k == steps - 1:
            U, _, V = M.unpack(x)
            err = max(float((U.mT @ U - eye).abs().max()), float((V.mT @ V - eye).abs().max()))
            worst = max(worst, err)
    return worst


@pytest.mark.parametrize(
    ("retraction", "steps"),
    [
        ("polar", 1000),
        pytest.param("polar", 3000, marks=pytest.mark.slow),
        ("orthographic", 300),
        ("ksl", 300),
    ],
)
def test_long_runs_keep_orthonormality_float64(retraction, steps):
    """DESIGN: orthonormality is maintained by the geometry — ‖UᵀU − I‖ must not grow.
    (The previous polar retraction inherited U's error, ≈ 0.1–0.2 ε per step: ≥ 100 ε
    after 1000 steps, ≈ 250 ε after 2000.)"""
    assert _orthonormality_after_steps(F64, steps, retraction) <= 50 * EPS


def test_long_run_keeps_orthonormality_float32():
    assert _orthonormality_after_steps(torch.float32, 500, "polar") <= 1e-5


@pytest.mark.slow
def test_very_long_run_keeps_orthonormality_float32():
    assert _orthonormality_after_steps(torch.float32, 10_000, "polar") <= 1e-5


def test_ksl_retraction_is_one_projector_splitting_step():
    """Dense KSL step (Lubich–Oseledets) with F = ξ frozen, compared factor by factor."""
    M = FixedRank(15, 11, 3)
    g = gen(9)
    x = M.random(dtype=F64, generator=g)
    u = M.random_tangent(x, generator=g)
    U, S, V = M.unpack(x)
    F = M.embed_tangent(x, u)
    U1, Sh = torch.linalg.qr(U @ S + F @ V)
    St = Sh - U1.mT @ F @ V
    V1, S1t = torch.linalg.qr(V @ St.mT + F.mT @ U1)
    dense = U1 @ S1t.mT @ V1.mT
    assert rel(M.embed(M.retr_ksl(x, u)), dense) < TOL


@pytest.mark.parametrize("retraction", ["polar", "orthographic", "ksl"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("row", [4, 11, 15], ids=["Up", "M", "Vp"])
def test_retraction_rejects_non_finite_tangents_and_leaves_x_untouched(retraction, bad, row):
    M = FixedRank(10, 8, 3, retraction=retraction)  # rows: Up 0..9, M 10..12, Vp 13..20
    x = M.random(dtype=F64, generator=gen(10))
    x0 = x.clone()
    u = M.random_tangent(x, generator=gen(11))
    u[row, 1] = bad
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        M.retr(x, u)
    with pytest.raises(FloatingPointError):
        M.retr_transp(x, u, u)
    assert torch.equal(x, x0)


def test_geoopt_step_with_nan_gradient_raises_and_keeps_the_parameter():
    M = FixedRank(10, 8, 3)
    x0 = M.random(dtype=F64, generator=gen(10))
    p = geoopt.ManifoldParameter(x0.clone(), manifold=M)
    opt = geoopt.optim.RiemannianSGD([p], lr=0.1)
    p.grad = torch.full_like(x0, float("nan"))
    with pytest.raises(FloatingPointError):
        opt.step()
    assert torch.equal(p.data, x0)


def test_retraction_keeps_orthonormality_for_rank_deficient_directions():
    """Up, Vp of rank 0/1 (QR gives arbitrary Q columns with zero R rows)."""
    M = FixedRank(30, 20, 5)
    g = gen(12)
    x = M.random(dtype=F64, generator=g)
    U, _, _ = M.unpack(x)
    eye = torch.eye(5, dtype=F64)
    for k in (0, 1):
        a = torch.randn(30, 1, dtype=F64, generator=g) @ torch.randn(1, 5, dtype=F64, generator=g)
        Up = k * (a - U @ (U.mT @ a))
        Vp = torch.zeros(20, 5, dtype=F64)
        Mm = torch.randn(5, 5, dtype=F64, generator=g)
        for scale in (1e-8, 1.0, 1e3):
            u = M.pack_tangent((scale * Up, scale * Mm * 1e-3, scale * Vp))
            for name in ("retr_polar", "retr_orthographic", "retr_ksl"):
                y = getattr(M, name)(x, u)
                U1, _, V1 = M.unpack(y)
                assert (U1.mT @ U1 - eye).abs().max() < TOL, (name, k, scale)
                assert (V1.mT @ V1 - eye).abs().max() < TOL, (name, k, scale)


# ----------------------------------------------------------------------------- transport
@pytest.mark.parametrize(("m", "n", "r"), SIZES)
def test_transport_is_projection_of_the_ambient_vector(m, n, r):
    M = FixedRank(m, n, r)
    g = gen(13)
    x = M.random(dtype=F64, generator=g)
    u = M.random_tangent(x, generator=g)
    v = M.random_tangent(x, generator=g)
    y = M.retr(x, 0.3 * u / M.norm(x, u))
    tv = M.transp(x, y, v)
    assert rel(tv, M.proju_dense(y, M.embed_tangent(x, v))) < TOL
    assert M.check_vector_on_tangent(y, tv, atol=1e-13, rtol=1e-13)
    assert float(M.norm(y, tv)) <= float(M.norm(x, v)) * (1 + TOL)
    assert rel(M.transp(x, x, v), v) < TOL
    y2, tv2 = M.retr_transp(x, 0.3 * u / M.norm(x, u), v)
    assert torch.equal(y2, y) and torch.equal(tv2, tv)


# ----------------------------------------------------------------------------- projx / checks
def test_projx_reorthonormalises_preserving_the_matrix_and_the_gauge():
    M = FixedRank(25, 18, 4)
    g = gen(14)
    x = M.random(2, dtype=F64, generator=g)
    assert rel(M.projx(x), x) < TOL  # identity on points: no gauge change
    z = x + 1e-2 * torch.randn(x.shape, dtype=F64, generator=g)
    U, S, V = M.unpack(z)
    p = M.projx(z)
    assert M.check_point_on_manifold(p, atol=1e-13, rtol=1e-13)
    assert not M.check_point_on_manifold(z, atol=1e-8)
    assert rel(M.embed(p), U @ S @ V.mT) < TOL  # same matrix
    assert rel(M.projx(p), p) < TOL  # idempotent


def test_check_point_explains_the_failure():
    M = FixedRank(10, 8, 3)
    x = M.random(dtype=F64, generator=gen(15))
    bad = x.clone()
    bad[0, 0] += 0.1
    ok, reason = M.check_point_on_manifold(bad, explain=True)
    assert not ok and "U does not have orthonormal columns" in reason and "projx" in reason
    bad = x.clone()
    M.unpack(bad).S.zero_()
    ok, reason = M.check_point_on_manifold(bad, explain=True)
    assert not ok and "S is numerically singular" in reason
    ok, reason = M.check_point_on_manifold(torch.zeros(5, 3, dtype=F64), explain=True)
    assert not ok and "trailing shape (21, 3)" in reason
    u = torch.randn(M.shape, dtype=F64, generator=gen(16))
    ok, reason = M.check_vector_on_tangent(x, u, explain=True)
    assert not ok and "UᵀUp ≠ 0" in reason
    with pytest.raises(ValueError, match="not lying on"):
        M.assert_check_point_on_manifold(bad)


def test_from_dense_is_eckart_young():
    M = FixedRank(30, 20, 5)
    W = torch.randn(30, 20, dtype=F64, generator=gen(17))
    x = M.from_dense(W)
    s = torch.linalg.svdvals(W)
    assert math.isclose(float((M.embed(x) - W).norm()), float(s[5:].norm()), rel_tol=1e-12)
    assert M.check_point_on_manifold(x, atol=1e-12)


# ----------------------------------------------------------------------------- batching / dtypes
def test_batched_operations_equal_loops_and_broadcast():
    M = FixedRank(12, 10, 3)
    g = gen(18)
    x = M.random(2, 3, dtype=F64, generator=g)
    u = M.random_tangent(x, generator=g)
    v = M.random_tangent(x, generator=g)
    for fn in (M.proju, M.retr_polar, M.retr_orthographic, M.retr_ksl, M.egrad2rgrad):
        batched = fn(x, u)
        for i in range(2):
            for j in range(3):
                looped = fn(x[i, j], u[i, j])
                if fn in (M.proju, M.egrad2rgrad):
                    assert rel(batched[i, j], looped) < TOL
                else:
                    assert rel(M.embed(batched[i, j]), M.embed(looped)) < TOL
    y = M.retr(x, u)
    tv = M.transp(x, y, v)
    assert rel(tv[1, 2], M.transp(x[1, 2], y[1, 2], v[1, 2])) < TOL
    # an unbatched ambient vector broadcasts against batched points
    z = torch.randn(M.shape, dtype=F64, generator=g)
    assert rel(M.proju(x, z)[0, 1], M.proju(x[0, 1], z)) < TOL


def test_float32_operations_stay_accurate():
    M = FixedRank(64, 48, 8)
    g = gen(19)
    x = M.random(dtype=torch.float32, generator=g)
    u = M.random_tangent(x, generator=g)
    u = u / M.norm(x, u)
    y = x
    for _ in range(50):  # many retractions keep float32 orthonormality at O(eps)
        y = M.retr(y, 0.05 * M.random_tangent(y, generator=g))
    assert M.check_point_on_manifold(y, atol=1e-5, rtol=1e-5)
    assert y.dtype == torch.float32


# ----------------------------------------------------------------------------- geoopt optimizers
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_geoopt_optimizers_recover_a_rank_r_matrix(opt_name):
    """min ½‖X − A‖² over rank-r X with rank A = r: the optimum is A (Eckart–Young)."""
    m, n, r = 30, 20, 3
    M = FixedRank(m, n, r)
    g = gen(20)
    target = M.embed(M.random(dtype=F64, generator=g))
    p = geoopt.ManifoldParameter(M.random(dtype=F64, generator=g), manifold=M)
    if opt_name == "sgd":
        opt = geoopt.optim.RiemannianSGD([p], lr=0.5, momentum=0.5)
        steps = 200
    else:
        opt = geoopt.optim.RiemannianAdam([p], lr=0.05)
        steps = 400
    err0 = float((M.embed(p.detach()) - target).norm())
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * ((M.embed(p) - target) ** 2).sum()
        loss.backward()
        opt.step()
    err = float((M.embed(p.detach()) - target).norm())
    assert M.check_point_on_manifold(p.detach(), atol=1e-10, rtol=1e-10)
    assert err < 1e-3 * err0, (err0, err)


# ----------------------------------------------------------------------------- properties
@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 12),
    n=st.integers(1, 12),
    data=st.data(),
)
def test_property_projection_and_retraction(m, n, data):
    r = data.draw(st.integers(1, min(m, n)))
    seed = data.draw(st.integers(0, 2**16))
    M = FixedRank(m, n, r)
    g = gen(seed)
    x = M.random(dtype=F64, generator=g)
    z = torch.randn(M.shape, dtype=F64, generator=g)
    p = M.proju(x, z)
    assert rel(M.proju(x, p), p) < TOL
    U, _, V = M.unpack(x)
    Z = M.embed_tangent(x, z)
    assert rel(M.embed_tangent(x, p), dense_proj(U, V, Z)) < TOL
    y = M.retr(x, 0.1 * p / max(float(M.norm(x, p)), 1e-12))
    assert M.check_point_on_manifold(y, atol=1e-12, rtol=1e-12)
    assert M.dim == (m + n - r) * r
