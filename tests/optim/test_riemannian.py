"""Tests for manifold_lowrank.optim.riemannian and for geoopt's optimizers on our manifolds.

Convergence is checked against known optima (Eckart–Young for FixedRank, tensorly's HOOI
for Tucker); identities in float64 with tolerances derived from machine epsilon.
"""

from __future__ import annotations

import copy
import io
import itertools
import math
import warnings
from unittest import mock

import geoopt
import pytest
import tensorly as tl
import torch
from tensorly.decomposition import tucker as tl_tucker

from manifold_lowrank.manifolds import FixedRank, ProjectedGradients, Tucker
from manifold_lowrank.optim import RiemannianAdam, RiemannianSGD

DT = torch.float64
EPS = torch.finfo(DT).eps


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _spectral_target(m: int, n: int, sv: list[float], tail: float, seed: int) -> torch.Tensor:
    """``A = Q₁ diag(σ) Q₂ᵀ`` with the given leading singular values and a small tail."""
    g = _gen(seed)
    k = min(m, n)
    s = torch.cat([torch.tensor(sv, dtype=DT), tail * torch.rand(k - len(sv), generator=g)])
    q1 = torch.linalg.qr(torch.randn(m, k, dtype=DT, generator=g))[0]
    q2 = torch.linalg.qr(torch.randn(n, k, dtype=DT, generator=g))[0]
    return (q1 * s) @ q2.T


def _best_rank(a: torch.Tensor, r: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r]


def _orth_err(q: torch.Tensor) -> float:
    eye = torch.eye(q.shape[-1], dtype=q.dtype)
    return float((q.transpose(-2, -1) @ q - eye).abs().max())


def _assert_fixed_rank_point(M: FixedRank, x: torch.Tensor, tol: float = 100 * EPS) -> None:
    U, S, V = M.unpack(x)
    assert _orth_err(U) <= tol and _orth_err(V) <= tol
    assert bool(torch.isfinite(S).all())


def _assert_tucker_point(M: Tucker, x: torch.Tensor, tol: float = 100 * EPS) -> None:
    _, factors = M.unpack(x)
    for f in factors:
        assert _orth_err(f) <= tol


def _fixed_rank_tangency(M: FixedRank, x: torch.Tensor, u: torch.Tensor) -> float:
    """``max(‖UᵀUp‖, ‖VᵀVp‖) / ‖u‖`` — zero for a tangent vector."""
    U, _, V = M.unpack(x)
    Up, _, Vp = M.unpack_tangent(u)
    off = max(float((U.T @ Up).norm()), float((V.T @ Vp).norm()))
    return off / max(float(u.norm()), 1e-300)


def _tucker_tangency(M: Tucker, x: torch.Tensor, u: torch.Tensor) -> float:
    _, fs = M.unpack(x)
    _, dfs = M.unpack_tangent(u)
    off = max(float((f.T @ df).norm()) for f, df in zip(fs, dfs))
    return off / max(float(u.norm()), 1e-300)


def _quadratic_closure(opt, M, x, A):
    def closure():
        opt.zero_grad()
        loss = 0.5 * ((M.embed(x) - A) ** 2).sum()
        loss.backward()
        return loss

    return closure


# =====================================================================================
# Must show: convergence to the known optima, with ours and with geoopt's optimizers
# =====================================================================================
@pytest.mark.parametrize("opt_cls", [RiemannianSGD, geoopt.optim.RiemannianSGD])
def test_sgd_fixed_rank_reaches_eckart_young(opt_cls):
    """min ½‖X − A‖² over FixedRank(m, n, r) → the truncated SVD A_r (Eckart–Young).

    The Hessian of the objective is the identity, so lr = 1 is the natural step; the
    spectral gap σ_r/σ_{r+1} ≥ 30 makes the optimum unique and convergence fast.
    """
    m, n, r = 30, 20, 3
    A = _spectral_target(m, n, [10.0, 8.0, 6.0], tail=0.2, seed=0)
    Ar = _best_rank(A, r)
    M = FixedRank(m, n, r)
    x = geoopt.ManifoldParameter(M.random(dtype=DT, generator=_gen(1)), manifold=M)
    opt = opt_cls([x], lr=1.0)
    closure = _quadratic_closure(opt, M, x, A)
    losses = []
    for _ in range(40):
        losses.append(float(opt.step(closure).detach()))
        _assert_fixed_rank_point(M, x.detach())
    rel = float((M.embed(x.detach()) - Ar).norm() / Ar.norm())
    assert rel < 1e-8, rel
    optimum = 0.5 * float(((A - Ar) ** 2).sum())
    assert losses[-1] == pytest.approx(optimum, rel=1e-12)
    # the objective decreases monotonically (up to rounding)
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(losses))


def _tucker_problem():
    shape, ranks = (8, 7, 6), (3, 2, 2)
    M = Tucker(shape, ranks)
    g = _gen(0)
    A = 3.0 * M.embed(M.random(dtype=DT, generator=g)) + 0.1 * torch.randn(
        *shape, dtype=DT, generator=g
    )
    with tl.backend_context("pytorch"):
        core, factors = tl_tucker(A, rank=list(ranks), n_iter_max=500, tol=1e-14, init="svd")
        X_hooi = tl.tucker_to_tensor((core, factors))
    return M, A, X_hooi


@pytest.mark.parametrize("opt_cls", [RiemannianSGD, geoopt.optim.RiemannianSGD])
def test_sgd_tucker_reaches_hooi(opt_cls):
    """min ½‖X − A‖² over Tucker → the HOOI (tensorly) optimum's error and point."""
    M, A, X_hooi = _tucker_problem()
    err_hooi = float((X_hooi - A).norm())
    x = geoopt.ManifoldParameter(M.random(dtype=DT, generator=_gen(1)), manifold=M)
    opt = opt_cls([x], lr=1.0)
    closure = _quadratic_closure(opt, M, x, A)
    first = float(opt.step(closure).detach())
    for _ in range(30):
        last = float(opt.step(closure).detach())
        _assert_tucker_point(M, x.detach())
    assert last < first
    X = M.embed(x.detach())
    err = float((X - A).norm())
    assert abs(err - err_hooi) / err_hooi < 1e-6
    assert float((X - X_hooi).norm() / X_hooi.norm()) < 1e-6


@pytest.mark.parametrize("opt_cls", [RiemannianAdam, geoopt.optim.RiemannianAdam])
def test_adam_fixed_rank_converges(opt_cls):
    """Adam (ours and geoopt's, unchanged) converges on FixedRank with a decaying lr."""
    m, n, r = 30, 20, 3
    A = _spectral_target(m, n, [10.0, 8.0, 6.0], tail=0.2, seed=0)
    Ar = _best_rank(A, r)
    M = FixedRank(m, n, r)
    x = geoopt.ManifoldParameter(M.random(dtype=DT, generator=_gen(1)), manifold=M)
    opt = opt_cls([x], lr=0.5)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.985)
    closure = _quadratic_closure(opt, M, x, A)
    first = float(closure().detach())
    for _ in range(300):
        opt.step(closure)
        sched.step()
    # polar retraction (default): orthonormality error grows ~0.2 ε per step, see
    # test_orthonormality_holds_over_a_long_run
    _assert_fixed_rank_point(M, x.detach(), tol=2e3 * EPS)
    assert float(closure().detach()) < 1e-3 * first
    rel = float((M.embed(x.detach()) - Ar).norm() / Ar.norm())
    assert rel < 1e-3, rel  # measured 5e-5


@pytest.mark.parametrize("opt_cls", [RiemannianAdam, geoopt.optim.RiemannianAdam])
def test_adam_tucker_decreases_and_stays_on_manifold(opt_cls):
    M, A, X_hooi = _tucker_problem()
    x = geoopt.ManifoldParameter(M.random(dtype=DT, generator=_gen(1)), manifold=M)
    opt = opt_cls([x], lr=0.5)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.97)
    closure = _quadratic_closure(opt, M, x, A)
    first = float(closure().detach())
    for _ in range(60):
        opt.step(closure)
        sched.step()
        _assert_tucker_point(M, x.detach())
    optimum = 0.5 * float(((X_hooi - A) ** 2).sum())
    assert float(closure().detach()) - optimum < 1e-2 * (first - optimum)


# =====================================================================================
# Plain tensors: exactly torch's optimizers
# =====================================================================================
def _run_plain(opt_factory, steps: int = 6) -> list[torch.Tensor]:
    g = _gen(3)
    w = torch.nn.Parameter(torch.randn(5, 4, dtype=DT, generator=g))
    b = torch.nn.Parameter(torch.randn(4, dtype=DT, generator=g))
    X = torch.randn(16, 5, dtype=DT, generator=g)
    y = torch.randn(16, 4, dtype=DT, generator=g)
    opt = opt_factory([w, b])
    for _ in range(steps):
        opt.zero_grad()
        loss = ((torch.tanh(X @ w + b) - y) ** 2).mean()
        loss.backward()
        opt.step()
    return [w.detach().clone(), b.detach().clone()]


@pytest.mark.parametrize(
    "kw",
    [
        dict(lr=0.1),
        dict(lr=0.1, momentum=0.9),
        dict(lr=0.1, momentum=0.9, dampening=0.3),
        dict(lr=0.1, momentum=0.8, nesterov=True),
        dict(lr=0.1, weight_decay=0.05),
    ],
)
def test_sgd_on_plain_tensors_equals_torch_sgd(kw):
    ours = _run_plain(lambda p: RiemannianSGD(p, **kw))
    ref = _run_plain(lambda p: torch.optim.SGD(p, **kw))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=20 * EPS, rtol=20 * EPS)


def test_sgd_decay_with_momentum_is_decoupled_on_plain_tensors():
    """With momentum, our decay is SGDW: p ← (1−ηλ)p − η b, b built from ∇f only."""
    kw = dict(lr=0.1, momentum=0.9)
    lam = 0.05
    ours = _run_plain(lambda p: RiemannianSGD(p, weight_decay=lam, **kw), steps=1)
    plain = _run_plain(lambda p: RiemannianSGD(p, **kw), steps=0)
    nodecay = _run_plain(lambda p: RiemannianSGD(p, **kw), steps=1)
    for o, p0, p1 in zip(ours, plain, nodecay):
        # one step: p1 = p0 − η g; ours = (1 − ηλ) p0 − η g
        torch.testing.assert_close(o, p1 - 0.1 * lam * p0, atol=20 * EPS, rtol=0)


@pytest.mark.parametrize(
    "kw",
    [
        dict(lr=0.05),
        dict(lr=0.05, weight_decay=0.1),
        dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, amsgrad=True),
    ],
)
def test_adam_on_plain_tensors_equals_torch_adamw(kw):
    ours = _run_plain(lambda p: RiemannianAdam(p, **kw))
    ref = _run_plain(lambda p: torch.optim.AdamW(p, **{"weight_decay": 0.0, **kw}))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=100 * EPS, rtol=100 * EPS)


# =====================================================================================
# Weight decay acts on the core only
# =====================================================================================
@pytest.mark.parametrize("opt_cls", [RiemannianSGD, RiemannianAdam])
def test_weight_decay_fixed_rank_is_frobenius_decay_of_W(opt_cls):
    M = FixedRank(12, 9, 3)
    x0 = M.random(dtype=DT, generator=_gen(0))
    x = geoopt.ManifoldParameter(x0.clone(), manifold=M)
    lr, lam = 0.1, 0.3
    opt = opt_cls([x], lr=lr, weight_decay=lam)
    for k in range(1, 4):
        x.grad = torch.zeros_like(x)
        opt.step()
        W0 = M.embed(x0)
        torch.testing.assert_close(
            M.embed(x.detach()), (1 - lr * lam) ** k * W0, atol=50 * EPS * float(W0.norm()), rtol=0
        )
        _assert_fixed_rank_point(M, x.detach())
        # the bases span the same subspaces (only S shrinks)
        U0, _, V0 = M.unpack(x0)
        U, _, V = M.unpack(x.detach())
        torch.testing.assert_close(U @ U.T, U0 @ U0.T, atol=100 * EPS, rtol=0)
        torch.testing.assert_close(V @ V.T, V0 @ V0.T, atol=100 * EPS, rtol=0)


def test_geoopt_adam_weight_decay_is_not_a_decay_of_W_but_ours_is():
    """Why our own Adam: geoopt's L2 term goes through Adam's normalisation."""
    M = FixedRank(12, 9, 3)
    x0 = M.random(dtype=DT, generator=_gen(0))
    W0 = M.embed(x0)
    dev = {}
    for cls in (RiemannianAdam, geoopt.optim.RiemannianAdam):
        x = geoopt.ManifoldParameter(x0.clone(), manifold=M)
        opt = cls([x], lr=0.1, weight_decay=0.3)
        x.grad = torch.zeros_like(x)
        opt.step()
        dev[cls] = float((M.embed(x.detach()) - 0.97 * W0).norm() / W0.norm())
    assert dev[RiemannianAdam] < 50 * EPS
    assert dev[geoopt.optim.RiemannianAdam] > 1e-2


@pytest.mark.parametrize("opt_cls", [RiemannianSGD, RiemannianAdam])
def test_weight_decay_tucker_scales_the_tensor(opt_cls):
    M = Tucker((6, 5, 4), (2, 3, 2))
    x0 = M.random(dtype=DT, generator=_gen(0))
    x = geoopt.ManifoldParameter(x0.clone(), manifold=M)
    lr, lam = 0.1, 0.3
    opt = opt_cls([x], lr=lr, weight_decay=lam)
    for _ in range(2):
        x.grad = torch.zeros_like(x)
        opt.step()
    X0 = M.embed(x0)
    torch.testing.assert_close(
        M.embed(x.detach()), (1 - lr * lam) ** 2 * X0, atol=50 * EPS * float(X0.norm()), rtol=0
    )
    _assert_tucker_point(M, x.detach())


@pytest.mark.parametrize("kind", ["fixed_rank", "tucker"])
def test_weight_decay_step_direction_is_re_expressed_at_decayed_point(kind):
    """Linear f = ⟨B, X⟩ (G = B everywhere): one decayed step must equal
    R_{cX}(−η P_{cX} B) — the tangent direction represents the same ambient vector at
    the decayed point (for Tucker this requires the transport; for FixedRank the
    representation does not involve S)."""
    if kind == "fixed_rank":
        M = FixedRank(10, 8, 3)
        shape = (10, 8)
    else:
        M = Tucker((6, 5, 4), (2, 3, 2))
        shape = (6, 5, 4)
    g = _gen(5)
    x0 = M.random(dtype=DT, generator=g)
    B = torch.randn(*shape, dtype=DT, generator=g)
    lr, lam = 0.05, 2.0
    x = geoopt.ManifoldParameter(x0.clone(), manifold=M)
    opt = RiemannianSGD([x], lr=lr, weight_decay=lam)
    (M.embed(x) * B).sum().backward()
    opt.step()
    c = 1 - lr * lam
    if kind == "fixed_rank":
        U, S, V = M.unpack(x0)
        xc = M.pack((U, c * S, V))
    else:
        core, fs = M.unpack(x0)
        xc = M.pack((c * core, fs))
    expect = M.embed(M.retr(xc, -lr * M.proju_dense(xc, B)))
    torch.testing.assert_close(M.embed(x.detach()), expect, atol=1e3 * EPS, rtol=0)


def test_weight_decay_skips_other_manifolds_with_one_warning():
    st = geoopt.Stiefel()
    x0 = st.projx(torch.randn(6, 3, dtype=DT, generator=_gen(0)))
    x = geoopt.ManifoldParameter(x0.clone(), manifold=st)
    opt = RiemannianSGD([x], lr=0.1, weight_decay=0.5)
    with pytest.warns(UserWarning, match="weight_decay is not applied"):
        x.grad = torch.zeros_like(x)
        opt.step()
    torch.testing.assert_close(x.detach(), x0, atol=100 * EPS, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x.grad = torch.zeros_like(x)
        opt.step()  # warned once only


class _SphereWithDecayHook(geoopt.Sphere):
    """A third-party manifold declaring how weight decay acts on it (``scale_point``)."""

    def __init__(self):
        super().__init__()
        self.factors = []

    def scale_point(self, x, factor):
        self.factors.append(factor)
        return x.clone(), False  # (a real manifold would return a point representing factor·X)


@pytest.mark.parametrize("opt_cls", [RiemannianSGD, RiemannianAdam])
def test_weight_decay_uses_the_scale_point_hook_of_a_new_manifold(opt_cls):
    M = _SphereWithDecayHook()
    x0 = M.projx(torch.randn(5, dtype=DT, generator=_gen(1)))
    x = geoopt.ManifoldParameter(x0.clone(), manifold=M)
    lr, wd = 0.1, 0.5
    opt = opt_cls([x], lr=lr, weight_decay=wd)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not applied" warning: the hook is used
        x.grad = torch.zeros_like(x)
        opt.step()
    assert M.factors == [pytest.approx(1 - lr * wd, rel=0, abs=EPS)]
    torch.testing.assert_close(x.detach(), x0, atol=100 * EPS, rtol=0)


# =====================================================================================
# Tangency of the Adam direction and of the transported momenta
# =====================================================================================
def _capture_retr_direction(M, run):
    """Record (x, u) of every ``M.retr_transp(x, u, v)`` call, copied at call time."""
    calls = []
    orig = M.retr_transp

    def spy(x, u, v):
        calls.append((x.detach().clone(), u.detach().clone()))
        return orig(x, u, v)

    with mock.patch.object(M, "retr_transp", side_effect=spy):
        run()
    return calls


@pytest.mark.parametrize("kind", ["fixed_rank", "tucker"])
def test_adam_direction_is_tangent(kind):
    """The block-scalar second moment keeps the Adam direction tangent to ~eps, while an
    entrywise second moment (torch's Adam) would not."""
    if kind == "fixed_rank":
        M = FixedRank(15, 11, 4)
        shape = (15, 11)
        tangency = _fixed_rank_tangency
    else:
        M = Tucker((6, 5, 4), (2, 3, 2))
        shape = (6, 5, 4)
        tangency = _tucker_tangency
    g = _gen(2)
    x = geoopt.ManifoldParameter(M.random(dtype=DT, generator=g), manifold=M)
    targets = [torch.randn(*shape, dtype=DT, generator=g) for _ in range(4)]
    opt = RiemannianAdam([x], lr=0.01)

    def run():
        for t in targets:
            opt.zero_grad()
            (0.5 * ((M.embed(x) - t) ** 2).sum()).backward()
            opt.step()

    calls = _capture_retr_direction(M, run)
    assert len(calls) == len(targets)
    for xk, uk in calls:
        assert tangency(M, xk, uk) < 100 * EPS
    # the test can fail: an entrywise-normalised tangent vector is not tangent
    xk, uk = calls[-1]
    assert tangency(M, xk, uk / (uk.abs() + 1e-3)) > 1e-3
    # momentum is tangent at the new point
    assert tangency(M, x.detach(), opt.state[x]["exp_avg"]) < 100 * EPS


@pytest.mark.parametrize("kind", ["fixed_rank", "tucker"])
def test_sgd_momentum_is_transported_and_tangent(kind):
    if kind == "fixed_rank":
        M = FixedRank(15, 11, 4)
        shape = (15, 11)
        tangency = _fixed_rank_tangency
    else:
        M = Tucker((6, 5, 4), (2, 3, 2))
        shape = (6, 5, 4)
        tangency = _tucker_tangency
    g = _gen(4)
    x = geoopt.ManifoldParameter(M.random(dtype=DT, generator=g), manifold=M)
    opt = RiemannianSGD([x], lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)
    for _ in range(5):
        t = torch.randn(*shape, dtype=DT, generator=g)
        opt.zero_grad()
        (0.5 * ((M.embed(x) - t) ** 2).sum()).backward()
        x_old = x.detach().clone()
        buf_old = opt.state[x].get("momentum_buffer")
        buf_old = None if buf_old is None else buf_old.clone()
        opt.step()
        buf = opt.state[x]["momentum_buffer"]
        assert tangency(M, x.detach(), buf) < 100 * EPS
        assert not torch.equal(x.detach(), x_old)
    # the buffer is not a stale copy in the old representation: the old buffer is not
    # tangent at the new point while the stored one is
    assert buf_old is not None
    assert tangency(M, x.detach(), buf_old) > 1e-6


@pytest.mark.parametrize("retraction, stabilize", [("orthographic", None), ("polar", 50)])
def test_orthonormality_holds_over_a_long_run(retraction, stabilize):
    """300 noisy momentum steps keep ‖UᵀU − I‖ at rounding level. The orthographic (and
    KSL) retraction re-orthonormalises the whole basis and needs no ``projx``; the polar
    retraction updates ``U ← [U Q_u] W`` and inherits U's error, which grows by about
    0.2 ε per step (measured: 674 ε after 3000 steps), so it is run with ``stabilize``."""
    M = FixedRank(20, 15, 4, retraction=retraction)
    g = _gen(6)
    x = geoopt.ManifoldParameter(M.random(dtype=DT, generator=g), manifold=M)
    opt = RiemannianSGD([x], lr=0.02, momentum=0.9, stabilize=stabilize)
    for _ in range(300):
        x.grad = torch.randn(x.shape, dtype=DT, generator=g)
        opt.step()
    _assert_fixed_rank_point(M, x.detach(), tol=100 * EPS)
    assert _fixed_rank_tangency(M, x.detach(), opt.state[x]["momentum_buffer"]) < 100 * EPS


# =====================================================================================
# torch.optim behaviour: closure, state_dict, stabilize, gradient kinds, mixing
# =====================================================================================
def test_step_closure_returns_loss_and_matches_manual_loop():
    M = FixedRank(10, 8, 2)
    A = _spectral_target(10, 8, [3.0, 2.0], tail=0.1, seed=1)
    x0 = M.random(dtype=DT, generator=_gen(0))
    xa = geoopt.ManifoldParameter(x0.clone(), manifold=M)
    xb = geoopt.ManifoldParameter(x0.clone(), manifold=M)
    oa = RiemannianAdam([xa], lr=0.05)
    ob = RiemannianAdam([xb], lr=0.05)
    closure = _quadratic_closure(oa, M, xa, A)
    for _ in range(3):
        loss = oa.step(closure)
        ob.zero_grad()
        ref = 0.5 * ((M.embed(xb) - A) ** 2).sum()
        ref.backward()
        assert ob.step() is None
        assert isinstance(loss, torch.Tensor) and float(loss.detach()) == float(ref.detach())
    assert torch.equal(xa.detach(), xb.detach())


def _mixed_params(seed: int):
    g = _gen(seed)
    Mf = FixedRank(9, 7, 2)
    Mt = Tucker((5, 4, 3), (2, 2, 2))
    xf = geoopt.ManifoldParameter(Mf.random(dtype=DT, generator=g), manifold=Mf)
    xt = geoopt.ManifoldParameter(Mt.random(dtype=DT, generator=g), manifold=Mt)
    w = torch.nn.Parameter(torch.randn(3, 4, dtype=DT, generator=g))
    return [xf, xt, w], (Mf, Mt)


def _mixed_loss(params, manifolds, k: int):
    xf, xt, w = params
    Mf, Mt = manifolds
    g = _gen(100 + k)
    tf = torch.randn(9, 7, dtype=DT, generator=g)
    tt = torch.randn(5, 4, 3, dtype=DT, generator=g)
    return (
        0.5 * ((Mf.embed(xf) - tf) ** 2).sum()
        + 0.5 * ((Mt.embed(xt) - tt) ** 2).sum()
        + (w**2).sum() * 0.1
        + (w.sum() - 1.0) ** 2
    )


@pytest.mark.parametrize(
    "factory",
    [
        lambda p: RiemannianSGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
        lambda p: RiemannianAdam(p, lr=0.02, weight_decay=0.01, amsgrad=True),
    ],
    ids=["sgd", "adam"],
)
def test_state_dict_round_trip_gives_identical_trajectory(factory):
    params, mans = _mixed_params(0)
    opt = factory(params)

    def run(opt, params, ks):
        for k in ks:
            opt.zero_grad()
            _mixed_loss(params, mans, k).backward()
            opt.step()

    run(opt, params, range(5))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    saved_params = copy.deepcopy(params)
    run(opt, params, range(5, 10))  # uninterrupted

    buf.seek(0)
    opt2 = factory(saved_params)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    run(opt2, saved_params, range(5, 10))
    for a, b in zip(params, saved_params):
        assert torch.equal(a.detach(), b.detach())
    for a, b in zip(params, saved_params):
        sa, sb = opt.state[a], opt2.state[b]
        assert sa.keys() == sb.keys()
        for key in sa:
            if isinstance(sa[key], torch.Tensor):
                assert torch.equal(sa[key], sb[key])
            else:
                assert sa[key] == sb[key]


def test_optimizer_deepcopy_continues_identically():
    """deepcopy (like pickling) goes through __getstate__/__setstate__ and copies the
    parameters consistently; the copy must keep stepping exactly like the original."""
    params, mans = _mixed_params(4)
    opt = RiemannianSGD(params, lr=0.05, momentum=0.9, weight_decay=0.1)
    opt.zero_grad()
    _mixed_loss(params, mans, 0).backward()
    opt.step()
    opt2 = copy.deepcopy(opt)
    params2 = opt2.param_groups[0]["params"]
    assert all(a is not b for a, b in zip(params, params2))
    for o, ps in ((opt, params), (opt2, params2)):
        o.zero_grad()
        _mixed_loss(ps, mans, 1).backward()
        o.step()
    for a, b in zip(params, params2):
        assert torch.equal(a.detach(), b.detach())


def test_stabilize_is_a_no_op_up_to_rounding_for_fixed_rank_and_works_on_stiefel():
    M = FixedRank(12, 10, 3)
    A = _spectral_target(12, 10, [4.0, 3.0, 2.0], tail=0.1, seed=2)
    x0 = M.random(dtype=DT, generator=_gen(0))
    runs = []
    for stab in (None, 1):
        x = geoopt.ManifoldParameter(x0.clone(), manifold=M)
        opt = RiemannianSGD([x], lr=0.3, momentum=0.5, stabilize=stab)
        closure = _quadratic_closure(opt, M, x, A)
        for _ in range(10):
            opt.step(closure)
        runs.append(M.embed(x.detach()))
    torch.testing.assert_close(runs[0], runs[1], atol=1e3 * EPS, rtol=0)

    st = geoopt.Stiefel()
    y = geoopt.ManifoldParameter(st.projx(torch.randn(7, 3, dtype=DT, generator=_gen(1))), st)
    opt = RiemannianAdam([y], lr=0.05, stabilize=2)
    T = torch.randn(7, 3, dtype=DT, generator=_gen(2))
    for _ in range(6):
        opt.zero_grad()
        ((y - T) ** 2).sum().backward()
        opt.step()
    assert _orth_err(y.detach()) < 100 * EPS


def test_riemannian_gradient_input_matches_euclidean_path():
    """gradient='riemannian' with FixedRank.rgrad_from_projected(GV, UᵀGV, GᵀU) (no S⁻¹)
    gives the same iterates as autograd's factor gradients + egrad2rgrad."""
    M = FixedRank(14, 10, 3)
    A = _spectral_target(14, 10, [5.0, 4.0, 3.0], tail=0.1, seed=3)
    x0 = M.random(dtype=DT, generator=_gen(0))
    xa = geoopt.ManifoldParameter(x0.clone(), manifold=M)
    xb = geoopt.ManifoldParameter(x0.clone(), manifold=M)
    oa = RiemannianAdam([xa], lr=0.05)
    ob = RiemannianAdam([xb], lr=0.05, gradient="riemannian")
    for _ in range(5):
        oa.zero_grad()
        (0.5 * ((M.embed(xa) - A) ** 2).sum()).backward()
        oa.step()
        U, _, V = M.unpack(xb.detach())
        G = M.embed(xb.detach()) - A
        xb.grad = M.rgrad_from_projected(
            xb.detach(), ProjectedGradients(G @ V, U.T @ G @ V, G.T @ U)
        )
        ob.step()
    torch.testing.assert_close(xa.detach(), xb.detach(), atol=1e4 * EPS, rtol=0)


def test_mixed_manifolds_in_one_optimizer():
    g = _gen(9)
    sph, st = geoopt.Sphere(), geoopt.Stiefel()
    ps = [
        geoopt.ManifoldParameter(sph.projx(torch.randn(5, dtype=DT, generator=g)), sph),
        geoopt.ManifoldParameter(st.projx(torch.randn(6, 2, dtype=DT, generator=g)), st),
    ]
    params, mans = _mixed_params(1)
    opt = RiemannianAdam([{"params": ps, "lr": 0.05}, {"params": params}], lr=0.01)
    for k in range(5):
        opt.zero_grad()
        loss = _mixed_loss(params, mans, k) + ps[0][0] + (ps[1] ** 3).sum()
        loss.backward()
        opt.step()
    assert abs(float(ps[0].detach().norm()) - 1) < 100 * EPS
    assert _orth_err(ps[1].detach()) < 100 * EPS
    _assert_fixed_rank_point(mans[0], params[0].detach())
    _assert_tucker_point(mans[1], params[1].detach())


def test_float32_runs_and_keeps_orthonormality():
    M = FixedRank(20, 16, 3)
    x = geoopt.ManifoldParameter(M.random(dtype=torch.float32, generator=_gen(0)), manifold=M)
    A = _spectral_target(20, 16, [5.0, 4.0, 3.0], tail=0.1, seed=4).float()
    opt = RiemannianSGD([x], lr=1.0)
    closure = _quadratic_closure(opt, M, x, A)
    for _ in range(15):
        opt.step(closure)
    Ar = _best_rank(A.double(), 3)
    assert float((M.embed(x.detach()).double() - Ar).norm() / Ar.norm()) < 1e-5
    U, _, V = M.unpack(x.detach())
    assert max(_orth_err(U), _orth_err(V)) < 100 * torch.finfo(torch.float32).eps


def test_changed_parameter_shape_raises_clear_error():
    M = FixedRank(8, 6, 2)
    x = geoopt.ManifoldParameter(M.random(dtype=DT, generator=_gen(0)), manifold=M)
    opt = RiemannianSGD([x], lr=0.1, momentum=0.9)
    x.grad = torch.randn(x.shape, dtype=DT, generator=_gen(1))
    opt.step()
    M3 = FixedRank(8, 6, 3)
    with torch.no_grad():
        x.data = M3.random(dtype=DT, generator=_gen(2))
    x.manifold = M3
    x.grad = torch.randn(x.shape, dtype=DT, generator=_gen(3))
    before = x.detach().clone()
    with pytest.raises(RuntimeError, match="momentum_buffer"):
        opt.step()
    assert torch.equal(x.detach(), before)


# =====================================================================================
# Argument validation and non-finite gradients
# =====================================================================================
_P = [torch.nn.Parameter(torch.zeros(2))]


@pytest.mark.parametrize(
    "factory, name",
    [
        (lambda: RiemannianSGD(_P, lr=-0.1), "lr"),
        (lambda: RiemannianSGD(_P, lr=float("nan")), "lr"),
        (lambda: RiemannianSGD(_P, lr=0.1, momentum=1.0), "momentum"),
        (lambda: RiemannianSGD(_P, lr=0.1, momentum=-0.1), "momentum"),
        (lambda: RiemannianSGD(_P, lr=0.1, dampening=1.5), "dampening"),
        (lambda: RiemannianSGD(_P, lr=0.1, weight_decay=-1e-3), "weight_decay"),
        (lambda: RiemannianSGD(_P, lr=0.1, nesterov=True), "nesterov"),
        (lambda: RiemannianSGD(_P, lr=0.1, stabilize=0), "stabilize"),
        (lambda: RiemannianSGD(_P, lr=0.1, gradient="dense"), "gradient"),
        (lambda: RiemannianSGD(_P, lr=0.1, nonfinite="ignore"), "nonfinite"),
        (lambda: RiemannianAdam(_P, lr=-1.0), "lr"),
        (lambda: RiemannianAdam(_P, betas=(1.0, 0.999)), r"betas\[0\]"),
        (lambda: RiemannianAdam(_P, betas=(0.9, -0.1)), r"betas\[1\]"),
        (lambda: RiemannianAdam(_P, betas=(0.9,)), "betas"),
        (lambda: RiemannianAdam(_P, eps=0.0), "eps"),
        (lambda: RiemannianAdam(_P, eps=-1e-8), "eps"),
        (lambda: RiemannianAdam(_P, weight_decay=-0.1), "weight_decay"),
        (lambda: RiemannianAdam(_P, lr=0.5, weight_decay=2.0), "weight_decay"),
        (lambda: RiemannianAdam([{"params": _P, "lr": -1.0}]), "lr"),
        (lambda: RiemannianAdam([{"params": _P, "betas": (0.9, 1.0)}]), r"betas\[1\]"),
    ],
)
def test_invalid_hyperparameters_raise_value_error_naming_the_argument(factory, name):
    with pytest.raises(ValueError, match=name):
        factory()


def test_invalid_types_raise_type_error():
    with pytest.raises(TypeError, match="lr"):
        RiemannianSGD(_P, lr="0.1")
    with pytest.raises(TypeError, match="amsgrad"):
        RiemannianAdam(_P, amsgrad=1)


def test_add_param_group_is_validated():
    opt = RiemannianSGD(_P, lr=0.1)
    with pytest.raises(ValueError, match="momentum"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "momentum": 2.0})
    assert len(opt.param_groups) == 1


def test_decay_factor_is_rechecked_at_step_time():
    w = torch.nn.Parameter(torch.ones(3, dtype=DT))
    opt = RiemannianSGD([w], lr=0.1, weight_decay=1.0)
    opt.param_groups[0]["lr"] = 2.0  # e.g. a scheduler
    w.grad = torch.ones_like(w)
    with pytest.raises(ValueError, match="weight_decay"):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(3, dtype=DT))


@pytest.mark.parametrize("opt_cls", [RiemannianSGD, RiemannianAdam])
def test_nan_gradient_raises_and_modifies_nothing(opt_cls):
    params, mans = _mixed_params(2)
    kw = dict(lr=0.05, momentum=0.9) if opt_cls is RiemannianSGD else dict(lr=0.05)
    opt = opt_cls(params, **kw)
    opt.zero_grad()
    _mixed_loss(params, mans, 0).backward()
    opt.step()
    snap_p = [p.detach().clone() for p in params]
    snap_s = copy.deepcopy(opt.state_dict())
    opt.zero_grad()
    _mixed_loss(params, mans, 1).backward()
    params[2].grad[0, 1] = math.nan  # the LAST parameter: the others must be untouched too
    with pytest.raises(FloatingPointError, match="parameter 2 of param group 0"):
        opt.step()
    for p, s in zip(params, snap_p):
        assert torch.equal(p.detach(), s)
    st = opt.state_dict()
    for k, v in snap_s["state"].items():
        for key, val in v.items():
            cur = st["state"][k][key]
            assert torch.equal(cur, val) if isinstance(val, torch.Tensor) else cur == val


def test_nan_gradient_skip_policy_skips_the_whole_step():
    params, mans = _mixed_params(3)
    opt = RiemannianAdam(params, lr=0.05, nonfinite="skip")
    opt.zero_grad()
    _mixed_loss(params, mans, 0).backward()
    params[0].grad[0, 0] = math.inf
    snap = [p.detach().clone() for p in params]
    with pytest.warns(RuntimeWarning, match="non-finite gradient at step 1 in parameter 0"):
        assert opt.step() is None
    assert opt.nan_skips == 1
    for p, s in zip(params, snap):
        assert torch.equal(p.detach(), s)
    assert len(opt.state) == 0
    opt.zero_grad()
    _mixed_loss(params, mans, 1).backward()
    opt.step()
    assert all(opt.state[p]["step"] == 1 for p in params)
    assert not torch.equal(params[0].detach(), snap[0])


@pytest.mark.parametrize("opt_cls", [RiemannianSGD, RiemannianAdam])
def test_skip_policy_warns_counts_and_round_trips_the_counter(opt_cls):
    """NaN at step k = 3: factors and state before == after, one warning naming the step
    and the parameter, ``nan_skips == 1``, and the counter survives ``state_dict``."""
    params, mans = _mixed_params(4)
    kw = dict(lr=0.05, momentum=0.9) if opt_cls is RiemannianSGD else dict(lr=0.05)
    opt = opt_cls(params, nonfinite="skip", **kw)
    for k in range(2):
        opt.zero_grad()
        _mixed_loss(params, mans, k).backward()
        opt.step()
    assert opt.nan_skips == 0
    snap_p = [p.detach().clone() for p in params]
    snap_s = copy.deepcopy(opt.state_dict())
    opt.zero_grad()
    _mixed_loss(params, mans, 2).backward()
    params[1].grad[3] = math.nan  # the Tucker parameter only
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        opt.step()
    msgs = [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1
    assert f"{opt_cls.__name__}: non-finite gradient at step 3" in msgs[0]
    assert "parameter 1 of param group 0" in msgs[0] and "skip #1" in msgs[0]
    assert opt.nan_skips == 1
    for p, s in zip(params, snap_p):
        assert torch.equal(p.detach(), s)
    st = opt.state_dict()
    for k, v in snap_s["state"].items():
        for key, val in v.items():
            cur = st["state"][k][key]
            assert torch.equal(cur, val) if isinstance(val, torch.Tensor) else cur == val
    assert st["riemannian"] == {"nan_skips": 1}
    buf = io.BytesIO()
    torch.save(st, buf)
    buf.seek(0)
    opt2 = opt_cls(params, nonfinite="skip", **kw)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert opt2.nan_skips == 1
    assert all(opt2.state[p]["step"] == 2 for p in params)
    opt2.load_state_dict({k: v for k, v in st.items() if k != "riemannian"})  # a torch one
    assert opt2.nan_skips == 0


def test_skip_policy_in_one_group_raise_in_another_raises():
    """A NaN in a ``"raise"`` group raises even when another group skips; nothing counted."""
    params, mans = _mixed_params(5)
    opt = RiemannianSGD(
        [{"params": params[:2], "nonfinite": "skip"}, {"params": params[2:]}], lr=0.05
    )
    opt.zero_grad()
    _mixed_loss(params, mans, 0).backward()
    params[0].grad[0, 0] = math.nan
    params[2].grad[0, 0] = math.nan
    snap = [p.detach().clone() for p in params]
    with pytest.raises(FloatingPointError, match="parameter 0 of param group 1"):
        opt.step()
    assert opt.nan_skips == 0
    assert all(torch.equal(p.detach(), s) for p, s in zip(params, snap))
