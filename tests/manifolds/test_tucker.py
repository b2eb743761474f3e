"""Tests for the Tucker manifold (geometry identities in float64, convergence vs HOOI)."""

from __future__ import annotations

import math

import geoopt
import numpy as np
import pytest
import tensorly as tl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorly.decomposition import tucker as tl_tucker

from manifold_lowrank.manifolds import Tucker, TuckerPoint, TuckerProjectedGradients

F64 = torch.float64
EPS = torch.finfo(F64).eps

# (shape, ranks): orders 3 and 4, plus modes with n_k == r_k and with 2 r_k > n_k
CASES = [
    ((6, 7, 8), (2, 3, 4)),
    ((5, 4, 6, 3), (2, 3, 2, 2)),
    ((3, 4, 5), (3, 2, 2)),
    ((4, 5, 3), (3, 3, 2)),
]
IDS = ["order3", "order4", "full_mode", "wide_ranks"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _setup(case, seed=0, batch=()):
    shape, ranks = case
    m = Tucker(shape, ranks)
    g = _gen(seed)
    x = (
        m.random(*batch, m.packed_size, dtype=F64, generator=g)
        if batch
        else m.random(dtype=F64, generator=g)
    )
    return m, x, g


def _fro(a: torch.Tensor, b: torch.Tensor, d: int) -> torch.Tensor:
    return (a * b).flatten(-d).sum(-1)


def _tol(*scales: torch.Tensor | float, k: float = 100.0) -> float:
    s = max(float(torch.as_tensor(v).abs().max()) for v in scales) if scales else 1.0
    return k * EPS * max(s, 1.0)


def _ambient_projector(m: Tucker, x: torch.Tensor) -> torch.Tensor:
    """Independent dense orthogonal projector onto T_X M (∏n × ∏n) from a spanning set."""
    eye = torch.eye(m.packed_size, dtype=F64)
    span = torch.stack([m.embed_tangent(x, e).reshape(-1) for e in eye], dim=1)
    q, s, _ = torch.linalg.svd(span, full_matrices=False)
    rank = int((s > s[0] * 1e-10).sum())
    assert rank == m.dim  # the tangent space has the advertised dimension
    q = q[:, :rank]
    return q @ q.T


# ----------------------------------------------------------------------------- basics
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_dim_packing_and_views(case):
    m, x, _ = _setup(case)
    shape, ranks = case
    assert m.dim == math.prod(ranks) + sum(r * (n - r) for n, r in zip(shape, ranks))
    assert m.packed_size == math.prod(ranks) + sum(n * r for n, r in zip(shape, ranks))
    assert x.shape == (m.packed_size,)
    p = m.unpack(x)
    assert isinstance(p, TuckerPoint) and p.ranks == ranks
    assert p.core.shape == ranks
    assert [tuple(f.shape) for f in p.factors] == list(zip(shape, ranks))
    # zero-copy views: writing through a view changes x
    y = x.clone()
    q = m.unpack(y)
    q.factors[-1][0, 0] = 123.0
    q.core.view(-1)[0] = -7.0
    assert y[m.packed_size - ranks[-1] * shape[-1]] == 123.0 and y[0] == -7.0
    torch.testing.assert_close(m.pack(m.unpack(x)), x, atol=0, rtol=0)
    t = m.unpack_tangent(x)
    torch.testing.assert_close(m.pack_tangent(t), x, atol=0, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_random_point_on_manifold_in_hosvd_gauge(case):
    m, x, _ = _setup(case)
    ok, reason = m.check_point_on_manifold(x, explain=True, atol=1e3 * EPS, rtol=0)
    assert ok, reason
    core, factors = m.unpack(x)
    d = m.order
    for k, f in enumerate(factors):
        torch.testing.assert_close(f.T @ f, torch.eye(f.shape[1], dtype=F64), atol=50 * EPS, rtol=0)
        ck = torch.movedim(core, k, 0).reshape(core.shape[k], -1)
        gram = ck @ ck.T
        diag = torch.diagonal(gram)
        off = gram - torch.diag(diag)
        assert float(off.abs().max()) <= 100 * EPS * float(diag.max())
        assert bool((diag[:-1] >= diag[1:]).all())  # non-increasing σ_k
    assert d == len(case[0])


def test_random_batched_dtype_device_and_origin():
    m = Tucker((5, 6, 7), (2, 3, 3))
    xb = m.random(3, 2, m.packed_size, generator=_gen(1), dtype=torch.float32)
    assert xb.shape == (3, 2, m.packed_size) and xb.dtype == torch.float32
    assert m.check_point_on_manifold(xb, atol=1e-5, rtol=1e-5)
    # origin is deterministic and does not touch the global RNG
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    o1, o2 = m.origin(dtype=F64), m.origin(dtype=F64)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.testing.assert_close(o1, o2, atol=0, rtol=0)
    assert not torch.equal(m.origin(dtype=F64, seed=3), o1)
    # same generator seed -> same point
    torch.testing.assert_close(
        m.random(generator=_gen(9), dtype=F64), m.random(generator=_gen(9), dtype=F64)
    )


# ----------------------------------------------------------------------------- projection
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_proju_properties(case):
    m, x, g = _setup(case)
    d = m.order
    u = torch.randn(x.shape, dtype=F64, generator=g)  # arbitrary (ungauged) packed vectors
    w = torch.randn(x.shape, dtype=F64, generator=g)
    pu = m.proju(x, u)
    tol = _tol(u, k=500)
    # gauged, idempotent, represents the same ambient tensor
    assert m.check_vector_on_tangent(x, pu, atol=tol, rtol=0)
    torch.testing.assert_close(m.proju(x, pu), pu, atol=tol, rtol=0)
    torch.testing.assert_close(m.embed_tangent(x, pu), m.embed_tangent(x, u), atol=tol, rtol=0)
    # self-adjoint and residual orthogonal for the manifold's metric
    pw = m.proju(x, w)
    scale = float(m.norm(x, u) * m.norm(x, w))
    assert abs(float(m.inner(x, pu, w) - m.inner(x, u, pw))) <= 100 * EPS * scale
    assert abs(float(m.inner(x, u - pu, w))) <= 100 * EPS * scale
    # the metric on arbitrary packed vectors is the Frobenius product of ξ(u), ξ(w)
    ref = _fro(m.embed_tangent(x, u), m.embed_tangent(x, w), d)
    torch.testing.assert_close(m.inner(x, u, w), ref, atol=100 * EPS * scale, rtol=0)


@pytest.mark.parametrize("case", CASES[:2], ids=IDS[:2])
def test_proju_dense_is_the_orthogonal_projection(case):
    m, x, g = _setup(case)
    z = torch.randn(m.tensor_shape, dtype=F64, generator=g)
    pz = m.proju_dense(x, z)
    dense = m.embed_tangent(x, pz)
    # independent reference: orthogonal projector built from a spanning set of T_X M
    proj = _ambient_projector(m, x)
    ref = (proj @ z.reshape(-1)).reshape(m.tensor_shape)
    torch.testing.assert_close(dense, ref, atol=1e-10 * float(z.norm()), rtol=0)
    # properties: tangent, idempotent, self-adjoint, residual ⊥ tangent space
    tol = _tol(z, k=1000)
    assert m.check_vector_on_tangent(x, pz, atol=tol, rtol=0)
    torch.testing.assert_close(m.proju_dense(x, dense), pz, atol=tol, rtol=0)
    z2 = torch.randn(m.tensor_shape, dtype=F64, generator=g)
    d = m.order
    lhs = _fro(m.embed_tangent(x, m.proju_dense(x, z2)), z, d)
    rhs = _fro(dense, z2, d)
    assert abs(float(lhs - rhs)) <= 1000 * EPS * float(z.norm() * z2.norm())
    xi = m.embed_tangent(x, m.random_tangent(x, generator=g))
    assert abs(float(_fro(z - dense, xi, d))) <= 1000 * EPS * float(z.norm() * xi.norm())
    # fixes (embedded) tangent vectors
    v = m.random_tangent(x, generator=g)
    torch.testing.assert_close(m.proju_dense(x, m.embed_tangent(x, v)), v, atol=tol, rtol=0)


# ----------------------------------------------------------------------------- metric
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_metric_equals_frobenius(case):
    m, x, g = _setup(case, seed=3)
    d = m.order
    u, v = m.random_tangent(x, generator=g), m.random_tangent(x, generator=g)
    eu, ev = m.embed_tangent(x, u), m.embed_tangent(x, v)
    scale = float(eu.norm() * ev.norm())
    torch.testing.assert_close(m.inner(x, u, v), _fro(eu, ev, d), atol=100 * EPS * scale, rtol=0)
    torch.testing.assert_close(m.inner(x, u, v), m.inner(x, v, u), atol=100 * EPS * scale, rtol=0)
    torch.testing.assert_close(m.norm(x, u) ** 2, m.inner(x, u), rtol=100 * EPS, atol=0)
    assert m.inner(x, u, v, keepdim=True).shape == (1,)
    # component_inner: one scalar per block (core, factors); the block values sum to inner
    ci = m.component_inner(x, u, v)
    assert ci.shape == x.shape
    offs = np.cumsum([0, math.prod(m.ranks), *[n * r for n, r in zip(m.tensor_shape, m.ranks)]])
    blocks = [ci[offs[i] : offs[i + 1]] for i in range(d + 1)]
    for b in blocks:
        assert torch.equal(b, b[0].expand_as(b))
    total = sum(float(b[0]) for b in blocks)
    assert abs(total - float(m.inner(x, u, v))) <= 100 * EPS * scale


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_rgrad_from_factor_and_projected_gradients(case):
    m, x, g = _setup(case, seed=4)
    d = m.order
    target = torch.randn(m.tensor_shape, dtype=F64, generator=g)

    def f(dense):  # a non-quadratic cost, G = ∇f(X)
        return (torch.sin(dense) * target).sum() + 0.25 * (dense**4).sum()

    p = x.clone().requires_grad_(True)
    dense = m.embed(p)
    f(dense).backward()
    egrad = p.grad  # packed factor gradients (∂C, ∂U_1, …)
    xd = m.embed(x).requires_grad_(True)
    f(xd).backward()
    big_g = xd.grad
    expected = m.proju_dense(x, big_g)
    tol = _tol(big_g, k=1e4)
    torch.testing.assert_close(m.egrad2rgrad(x, egrad), expected, atol=tol, rtol=0)
    # projected gradients computed independently with tensorly (no G in the formula)
    _, factors = m.unpack(x)
    with tl.backend_context("pytorch"):
        partials = tuple(
            tl.tenalg.multi_mode_dot(big_g, list(factors), skip=k, transpose=True) for k in range(d)
        )
        pcore = tl.tenalg.multi_mode_dot(big_g, list(factors), transpose=True)
    rg = m.rgrad_from_projected(x, TuckerProjectedGradients(pcore, partials))
    torch.testing.assert_close(rg, expected, atol=tol, rtol=0)
    # Riesz property: inner(rgrad, v) = df(X)[ξ(v)] for tangent v
    v = m.random_tangent(x, generator=g)
    lhs = m.inner(x, rg, v)
    rhs = _fro(big_g, m.embed_tangent(x, v), d)
    assert abs(float(lhs - rhs)) <= 1e4 * EPS * float(big_g.norm()) * float(m.norm(x, v))


# ----------------------------------------------------------------------------- retraction
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_retraction(case):
    m, x, g = _setup(case, seed=5)
    big_x = m.embed(x)
    tol = _tol(x, k=500)
    # zero step: identity (packed, since points are in HOSVD gauge)
    torch.testing.assert_close(m.retr(x, torch.zeros_like(x)), x, atol=tol, rtol=0)
    u = m.random_tangent(x, generator=g)
    u = u / m.norm(x, u)
    xi = m.embed_tangent(x, u)
    # on the manifold, in HOSVD gauge, and = ST-HOSVD of the dense X + ξ
    y = m.retr(x, 0.5 * u)
    assert m.check_point_on_manifold(y, atol=1e3 * EPS, rtol=0)
    torch.testing.assert_close(
        m.embed(y), m.embed(m.from_dense(big_x + 0.5 * xi)), atol=1e-10, rtol=0
    )
    torch.testing.assert_close(m.projx(y), y, atol=tol, rtol=0)
    # ungauged input: retr(x, u) = retr(x, proju(x, u))
    w = torch.randn(x.shape, dtype=F64, generator=g) * 0.1
    torch.testing.assert_close(m.retr(x, w), m.retr(x, m.proju(x, w)), atol=tol, rtol=0)
    # first order: ‖R(x, t u) − (X + t ξ)‖ = O(t²)
    ts = np.logspace(-4, -1, 7)
    errs = [float((m.embed(m.retr(x, t * u)) - big_x - t * xi).norm()) for t in ts]
    slope = np.polyfit(np.log(ts), np.log(errs), 1)[0]
    assert slope > 1.9, (slope, errs)


def test_retraction_nan_raises_and_leaves_point_untouched():
    m, x, g = _setup(CASES[0])
    x0 = x.clone()
    u = m.random_tangent(x, generator=g)
    u[3] = float("nan")
    with pytest.raises(FloatingPointError, match="u"):
        m.retr(x, u)
    u[3] = float("inf")
    with pytest.raises(FloatingPointError):
        m.retr_transp(x, u, u)
    assert torch.equal(x, x0)


@pytest.mark.parametrize("case", CASES[:2], ids=IDS[:2])
def test_batched_equals_looped(case):
    m, xb, g = _setup(case, seed=6, batch=(3,))
    ub = m.proju(xb, torch.randn(xb.shape, dtype=F64, generator=g))
    vb = m.proju(xb, torch.randn(xb.shape, dtype=F64, generator=g))
    yb, tb = m.retr_transp(xb, ub, vb)
    ib = m.inner(xb, ub, vb)
    eb = m.egrad2rgrad(xb, vb)
    assert yb.shape == xb.shape and ib.shape == (3,)
    tol = _tol(xb, ub, vb, k=1000)
    for i in range(3):
        torch.testing.assert_close(yb[i], m.retr(xb[i], ub[i]), atol=tol, rtol=0)
        torch.testing.assert_close(tb[i], m.transp(xb[i], yb[i], vb[i]), atol=tol, rtol=0)
        torch.testing.assert_close(ib[i], m.inner(xb[i], ub[i], vb[i]), atol=tol, rtol=0)
        torch.testing.assert_close(eb[i], m.egrad2rgrad(xb[i], vb[i]), atol=tol, rtol=0)
        torch.testing.assert_close(m.projx(xb)[i], m.projx(xb[i]), atol=tol, rtol=0)
    # one point, a batch of tangent vectors: broadcasting
    u1 = m.proju(xb[0], ub)
    y1, t1 = m.retr_transp(xb[0], u1, u1)
    for i in range(3):
        torch.testing.assert_close(y1[i], m.retr(xb[0], u1[i]), atol=tol, rtol=0)
        torch.testing.assert_close(t1[i], m.transp(xb[0], y1[i], u1[i]), atol=tol, rtol=0)


# ----------------------------------------------------------------------------- transport
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_transport(case):
    m, x, g = _setup(case, seed=7)
    u = m.random_tangent(x, generator=g)
    v = m.random_tangent(x, generator=g)
    w = m.random_tangent(x, generator=g)
    y, tv = m.retr_transp(x, 0.3 * u, v)
    tol = _tol(v, w, k=1e3)
    assert m.check_vector_on_tangent(y, tv, atol=tol, rtol=0)
    # equals the dense projection of ξ_x(v) onto T_y M
    torch.testing.assert_close(tv, m.proju_dense(y, m.embed_tangent(x, v)), atol=tol, rtol=0)
    # linear
    torch.testing.assert_close(
        m.transp(x, y, 2.0 * v - 3.0 * w),
        2.0 * m.transp(x, y, v) - 3.0 * m.transp(x, y, w),
        atol=tol,
        rtol=0,
    )
    # identity at the same point, non-expansive
    torch.testing.assert_close(m.transp(x, x, v), v, atol=tol, rtol=0)
    assert float(m.norm(y, tv)) <= float(m.norm(x, v)) * (1 + 100 * EPS)
    torch.testing.assert_close(m.transp_follow_retr(x, 0.3 * u, v), tv, atol=0, rtol=0)


# ----------------------------------------------------------------------------- projx
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_projx_idempotent_gauge_preserving(case):
    m, x, g = _setup(case, seed=8)
    tol = _tol(x, k=200)
    torch.testing.assert_close(m.projx(x), x, atol=tol, rtol=0)
    # perturbed factors: projx restores orthonormality without changing the tensor
    core, factors = m.unpack(x)
    bent = m.pack(
        TuckerPoint(
            core,
            tuple(
                f
                @ (
                    torch.eye(f.shape[1], dtype=F64)
                    + 0.1 * torch.randn(f.shape[1], f.shape[1], dtype=F64, generator=g)
                )
                for f in factors
            ),
        )
    )
    dense = m.embed(bent)
    p = m.projx(bent)
    assert m.check_point_on_manifold(p, atol=1e3 * EPS, rtol=0)
    torch.testing.assert_close(m.embed(p), dense, atol=_tol(dense, k=1e3), rtol=0)
    torch.testing.assert_close(m.projx(p), p, atol=_tol(p, k=200), rtol=0)


# ----------------------------------------------------------------------------- tensorly
@pytest.mark.parametrize("case", CASES[:2], ids=IDS[:2])
def test_tensorly_round_trip(case):
    m, x, g = _setup(case, seed=9)
    tt = m.to_tensorly(x)
    with tl.backend_context("pytorch"):
        dense = tl.tucker_to_tensor(tt)
    torch.testing.assert_close(dense, m.embed(x), atol=_tol(dense), rtol=0)
    torch.testing.assert_close(m.from_tensorly(tt), x, atol=_tol(x, k=500), rtol=0)
    # tensorly's own (non-HOSVD-gauge) output, as numpy arrays
    a = m.embed(x) + 1e-3 * torch.randn(m.tensor_shape, dtype=F64, generator=g)
    core, factors = tl_tucker(tl.tensor(a.numpy()), rank=list(m.ranks), n_iter_max=50)
    assert tl.get_backend() == "numpy"  # we never changed the global backend
    z = m.from_tensorly((core, factors))
    assert z.dtype == F64 and m.check_point_on_manifold(z, atol=1e3 * EPS, rtol=0)
    ref = torch.as_tensor(tl.tucker_to_tensor((core, factors)))
    torch.testing.assert_close(m.embed(z), ref, atol=1e-12 * float(ref.norm()), rtol=0)
    with pytest.raises(ValueError, match="tucker_tensor"):
        m.from_tensorly((core, factors[:-1]))


# ----------------------------------------------------------------------------- bad input
def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="ranks"):
        Tucker((4, 5, 6), (0, 2, 2))
    with pytest.raises(ValueError, match=r"ranks\[1\].*shape\[1\] = 5"):
        Tucker((4, 5, 6), (2, 6, 2))
    with pytest.raises(ValueError, match="Tucker rank constraint"):
        Tucker((4, 5, 6), (4, 1, 2))  # r_1 = 4 > r_2 r_3 = 2
    with pytest.raises(ValueError, match="one entry per mode"):
        Tucker((4, 5, 6), (2, 2))
    with pytest.raises(ValueError, match="at least 2 modes"):
        Tucker((4,), (2,))
    with pytest.raises(TypeError, match="shape"):
        Tucker((4, 5.0, 6), (2, 2, 2))
    with pytest.raises(TypeError, match="ranks"):
        Tucker((4, 5, 6), "222")


def test_bad_call_arguments():
    m, x, g = _setup(CASES[0])
    u = m.random_tangent(x, generator=g)
    with pytest.raises(ValueError, match=rf"trailing shape \({m.packed_size},\)"):
        m.retr(x, u[:-1])
    with pytest.raises(TypeError, match="dtype"):
        m.proju(x, u.float())
    with pytest.raises(TypeError, match="dtype"):
        m.inner(x.float(), u)
    with pytest.raises(ValueError, match="trailing shape"):
        m.proju_dense(x, torch.zeros(6, 7, 9, dtype=F64))
    assert m.random(3, 5, dtype=F64).shape == (3, 5, m.packed_size)  # batch shape
    assert m.shape == (m.packed_size,)
    with pytest.raises(ValueError, match="multilinear rank"):
        core, factors = m.unpack(x)
        m.from_tensorly((torch.zeros_like(core), factors))
    ok, reason = m.check_point_on_manifold(2 * x, explain=True)
    assert not ok and "orthonormal" in reason
    ok, reason = m.check_vector_on_tangent(x, x, explain=True)
    assert not ok and "gauge" in reason


# ----------------------------------------------------------------------------- properties
@st.composite
def _cases(draw):
    d = draw(st.integers(3, 4))
    ranks = [draw(st.integers(1, 3)) for _ in range(d)]
    for k in range(d):  # enforce r_k <= prod_{j != k} r_j
        other = math.prod(ranks) // ranks[k]
        ranks[k] = min(ranks[k], other)
    shape = [r + draw(st.integers(0, 3)) for r in ranks]
    return tuple(shape), tuple(ranks), draw(st.integers(0, 2**16))


@settings(max_examples=15, deadline=None)
@given(_cases())
def test_property_metric_projection_retraction(args):
    shape, ranks, seed = args
    m = Tucker(shape, ranks)
    g = _gen(seed)
    x = m.random(dtype=F64, generator=g)
    u = torch.randn(x.shape, dtype=F64, generator=g)
    v = torch.randn(x.shape, dtype=F64, generator=g)
    eu, ev = m.embed_tangent(x, u), m.embed_tangent(x, v)
    scale = float(eu.norm() * ev.norm()) + 1.0
    ref = _fro(eu, ev, m.order)
    assert abs(float(m.inner(x, u, v) - ref)) <= 1e3 * EPS * scale
    pu = m.proju(x, u)
    assert m.check_vector_on_tangent(x, pu, atol=_tol(u, k=1e3), rtol=0)
    y = m.retr(x, 0.1 * pu)
    assert m.check_point_on_manifold(y, atol=1e4 * EPS, rtol=0)


# ----------------------------------------------------------------------------- convergence
def _problem(seed=11):
    shape, ranks = (10, 11, 12), (3, 4, 5)
    m = Tucker(shape, ranks)
    g = _gen(seed)
    a = m.embed(m.random(dtype=F64, generator=g))
    a = a + 0.05 * float(a.norm()) / math.sqrt(a.numel()) * torch.randn(
        shape, dtype=F64, generator=g
    )
    with tl.backend_context("pytorch"):
        core, factors = tl_tucker(a, rank=list(ranks), n_iter_max=1000, tol=1e-15)
        hooi_err = float((tl.tucker_to_tensor((core, factors)) - a).norm())
    return m, a, hooi_err, g


def test_riemannian_gd_reaches_hooi_optimum():
    m, a, hooi_err, g = _problem()
    x = m.random(dtype=F64, generator=g)
    for _ in range(30):
        # f = ½‖X − A‖² has identity Hessian, so step 1 is a Newton-like step
        x = m.retr(x, -m.proju_dense(x, m.embed(x) - a))
    err = float((m.embed(x) - a).norm())
    assert abs(err - hooi_err) <= 1e-6 * hooi_err, (err, hooi_err)
    assert m.check_point_on_manifold(x, atol=1e3 * EPS, rtol=0)


def test_geoopt_riemannian_sgd_reaches_hooi_optimum():
    m, a, hooi_err, g = _problem(seed=12)
    p = geoopt.ManifoldParameter(m.random(dtype=F64, generator=g), manifold=m)
    opt = geoopt.optim.RiemannianSGD([p], lr=1.0)
    for _ in range(30):
        opt.zero_grad()
        loss = 0.5 * ((m.embed(p) - a) ** 2).sum()
        loss.backward()  # packed factor gradients -> egrad2rgrad -> retr
        opt.step()
    err = float((m.embed(p.detach()) - a).norm())
    assert abs(err - hooi_err) <= 1e-6 * hooi_err, (err, hooi_err)


def test_geoopt_riemannian_adam_stays_on_manifold_and_descends():
    m, a, _, g = _problem(seed=13)
    p = geoopt.ManifoldParameter(m.random(dtype=F64, generator=g), manifold=m)
    opt = geoopt.optim.RiemannianAdam([p], lr=0.2)
    losses = []
    for _ in range(100):
        opt.zero_grad()
        loss = 0.5 * ((m.embed(p) - a) ** 2).sum()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # block-wise scaling (component_inner) keeps every step tangent; progress is real
    assert losses[-1] < 0.01 * losses[0]
    assert m.check_point_on_manifold(p.detach(), atol=1e4 * EPS, rtol=0)
    assert m.check_vector_on_tangent(p.detach(), opt.state[p]["exp_avg"], atol=1e-10, rtol=0)


def test_float32_smoke():
    m = Tucker((6, 7, 8), (2, 3, 4))
    g = _gen(14)
    x = m.random(dtype=torch.float32, generator=g)
    u = m.random_tangent(x, generator=g)
    y, tv = m.retr_transp(x, 0.1 * u, u)
    assert y.dtype == tv.dtype == torch.float32
    assert m.check_point_on_manifold(y, atol=1e-5, rtol=0)
    assert m.check_vector_on_tangent(y, tv, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- conformance kit
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[3]], ids=[IDS[0], IDS[1], IDS[3]])
def test_check_manifold_conformance(case):
    testing = pytest.importorskip("manifold_lowrank.testing")
    testing.check_manifold(Tucker(*case))
