"""GeoLoRA: the projected-gradient identity, truncation, state transport, NaN policy."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from manifold_lowrank.integrators import GlobalBudget, parameter_count, tucker_parallel
from manifold_lowrank.linalg import RankRule
from manifold_lowrank.manifolds.types import FixedRankPoint, ProjectedGradients, TuckerPoint
from manifold_lowrank.nn.adapters import (
    LowRankAdapter,
    LowRankConv2dAdapter,
    TuckerConv2dAdapter,
)
from manifold_lowrank.optim import GeoLoRA
from manifold_lowrank.optim.geolora import FACTORED_FLOOR, rescaled_tangent
from manifold_lowrank.optim.lowrank_base import transport_core, transport_tangent

D = torch.float64
EPS = torch.finfo(D).eps


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny matrices: one intra-op thread is fastest (and robust on a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _orth(n: int, r: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, r, generator=g, dtype=D))[0]


def _linear_adapter(m=9, n=7, r=3, *, zero_s=False, seed=0, scaling=1.0):
    g = torch.Generator().manual_seed(seed)
    base = nn.Linear(n, m).to(D)
    with torch.no_grad():
        base.weight.copy_(torch.randn(m, n, generator=g, dtype=D))
        base.bias.copy_(torch.randn(m, generator=g, dtype=D))
    ad = LowRankAdapter(base, r, max_rank=min(m, n), scaling=scaling, generator=g)
    if not zero_s:
        ad.set_point(
            FixedRankPoint(_orth(m, r, g), torch.randn(r, r, generator=g, dtype=D), _orth(n, r, g))
        )
    x = torch.randn(31, n, generator=g, dtype=D)
    y = torch.randn(31, m, generator=g, dtype=D)
    return ad, x, y


def _loss_linear(ad, x, y, X):
    """Loss with ΔW = X (dense), for the reference gradient G = ∂L/∂X."""
    w = ad.base_layer.weight + ad.scaling * X
    return 0.5 * (F.linear(x, w, ad.base_layer.bias) - y).pow(2).sum()


def _dense_grad(ad, x, y):
    U, S, V = (t.clone() for t in ad.point())
    X = (U @ S @ V.T).requires_grad_(True)
    (G,) = torch.autograd.grad(_loss_linear(ad, x, y, X), X)
    return U, S, V, G


def _proj(U, V, G):
    return G @ V @ V.T + U @ U.T @ G - U @ U.T @ G @ V @ V.T


def _dense(ad):
    U, S, V = ad.point()
    return U @ S @ V.T


def _backward(ad, x, y):
    ad.clear_projected_grads()
    (0.5 * (ad(x) - y).pow(2).sum()).backward()


# ----------------------------------------------------------------------------- identity
@pytest.mark.parametrize("scaling", [1.0, 0.5])
@pytest.mark.parametrize("zero_s", [False, True])
def test_one_step_equals_projected_gradient_step(zero_s, scaling):
    """X₁ = X₀ − λ P_T(G) exactly (float64) when nothing is truncated (τ = 0)."""
    ad, x, y = _linear_adapter(zero_s=zero_s, scaling=scaling)
    U, S, V, G = _dense_grad(ad, x, y)
    lr = 0.013
    opt = GeoLoRA(ad, lr=lr, tau=0.0, max_rank=7, min_rank=0)
    _backward(ad, x, y)
    opt.step()
    expected = U @ S @ V.T - lr * _proj(U, V, G)
    scale = max(1.0, float(expected.abs().max()), float(G.abs().max()))
    assert torch.allclose(_dense(ad), expected, rtol=0, atol=1000 * EPS * scale)
    # the rank is the rank of the exact update (≤ 2r), up to the numerical-zero tolerance
    sv = torch.linalg.svdvals(expected)
    assert ad.rank == int((sv > 1e-10 * sv[0]).sum())


@pytest.mark.parametrize("tau", [0.05, 0.3, 0.6])
def test_one_step_is_projected_step_then_truncation(tau):
    """X₁ = best rank-r₁ approximation of X₀ − λ P_T(G), r₁ from the documented τ rule."""
    ad, x, y = _linear_adapter(m=11, n=8, r=3, seed=3)
    U, S, V, G = _dense_grad(ad, x, y)
    lr = 0.02
    opt = GeoLoRA(ad, lr=lr, tau=tau, max_rank=8, min_rank=1)
    _backward(ad, x, y)
    opt.step()
    Y = U @ S @ V.T - lr * _proj(U, V, G)
    u, s, vh = torch.linalg.svd(Y)
    r1 = RankRule(rtol=tau, min_rank=1, max_rank=8).select(s)
    assert ad.rank == r1
    best = u[:, :r1] @ torch.diag(s[:r1]) @ vh[:r1]
    assert torch.allclose(_dense(ad), best, rtol=0, atol=1000 * EPS * float(s[0]))
    # the truncation error is the tail norm, at most τ‖Y‖_F
    err = torch.linalg.matrix_norm(_dense(ad) - Y)
    assert err <= tau * torch.linalg.matrix_norm(Y) * (1 + 1e-12)
    # S is diagonal with non-increasing non-negative entries; bases orthonormal
    Un, Sn, Vn = ad.point()
    assert torch.equal(Sn, torch.diag(torch.diagonal(Sn)))
    assert torch.allclose(Un.T @ Un, torch.eye(r1, dtype=D), atol=100 * EPS)
    assert torch.allclose(Vn.T @ Vn, torch.eye(r1, dtype=D), atol=100 * EPS)


def test_max_and_min_rank_are_respected():
    ad, x, y = _linear_adapter(m=12, n=10, r=3)
    opt = GeoLoRA(ad, lr=0.05, tau=0.0, max_rank=4, min_rank=2)
    for _ in range(4):
        _backward(ad, x, y)
        opt.step()
        assert 2 <= ad.rank <= 4
    opt = GeoLoRA(ad, lr=0.05, tau=0.99, max_rank=4, min_rank=2)
    _backward(ad, x, y)
    opt.step()
    assert ad.rank == 2


def test_conv2d_matrix_adapter_identity():
    g = torch.Generator().manual_seed(5)
    base = nn.Conv2d(3, 6, 3, padding=1).to(D)
    ad = LowRankConv2dAdapter(base, 2, generator=g)
    m, n = ad.matrix_shape
    ad.set_point(
        FixedRankPoint(_orth(m, 2, g), torch.randn(2, 2, generator=g, dtype=D), _orth(n, 2, g))
    )
    x = torch.randn(4, 3, 5, 5, generator=g, dtype=D)
    U, S, V = (t.clone() for t in ad.point())
    X = (U @ S @ V.T).requires_grad_(True)
    out = F.conv2d(x, base.weight + X.reshape(base.weight.shape), base.bias, padding=1)
    (G,) = torch.autograd.grad(out.pow(2).sum(), X)
    ad(x).pow(2).sum().backward()
    opt = GeoLoRA(ad, lr=1e-3, tau=0.0, max_rank=6)
    opt.step()
    expected = U @ S @ V.T - 1e-3 * _proj(U, V, G)
    assert torch.allclose(_dense(ad), expected, atol=1000 * EPS * float(G.abs().max()))


def test_tucker_step_is_the_parallel_tucker_integrator():
    g = torch.Generator().manual_seed(7)
    base = nn.Conv2d(4, 6, 3).to(D)
    ad = TuckerConv2dAdapter(base, 2, generator=g)
    x = torch.randn(3, 4, 6, 6, generator=g, dtype=D)
    # a first step leaves the zero core
    opt = GeoLoRA(ad, lr=0.01, tau=0.1, max_rank=4)
    ad(x).pow(2).sum().backward()
    opt.step()
    assert ad.ranks[2:] == (3, 3)
    point = TuckerPoint(
        *(
            t.clone() if isinstance(t, torch.Tensor) else tuple(f.clone() for f in t)
            for t in ad.point()
        )
    )
    ad(x).pow(2).sum().backward()
    pg = ad.projected_grads
    rule = RankRule(rtol=0.1, min_rank=1, max_rank=4)
    ref = tucker_parallel(point, pg, 0.01, [rule, rule, None, None], full_modes=(2, 3))
    opt.step()
    core, fs = ad.point()
    assert core.shape == ref.point.core.shape
    assert torch.allclose(core, ref.point.core, atol=1e-12)
    for f, fr in zip(fs, ref.point.factors):
        assert torch.allclose(f, fr, atol=1e-12)
    for k in (0, 1):
        assert torch.allclose(fs[k].T @ fs[k], torch.eye(fs[k].shape[1], dtype=D), atol=1e-12)


# ----------------------------------------------------------------------------- options
def test_momentum_is_transported_heavy_ball():
    """Step 2 equals X₁ − λ P_{T₁}(β P_{T₀}(G₀) + G₁) (dense float64 check)."""
    ad, x, y = _linear_adapter(m=10, n=8, r=2, seed=11)
    lr, beta = 0.01, 0.9
    opt = GeoLoRA(ad, lr=lr, tau=0.0, max_rank=8, momentum=beta)
    U0, _, V0, G0 = _dense_grad(ad, x, y)
    _backward(ad, x, y)
    opt.step()
    U1, S1, V1, G1 = _dense_grad(ad, x, y)
    xi = beta * _proj(U0, V0, G0) + G1
    expected = U1 @ S1 @ V1.T - lr * _proj(U1, V1, xi)
    _backward(ad, x, y)
    opt.step()
    scale = float(expected.abs().max()) + float(xi.abs().max())
    assert torch.allclose(_dense(ad), expected, atol=1000 * EPS * scale)


def test_transport_formulas():
    g = torch.Generator().manual_seed(2)
    m, n, r, r1 = 9, 7, 3, 4
    U, V = _orth(m, r, g), _orth(n, r, g)
    U1, V1 = _orth(m, r1, g), _orth(n, r1, g)
    G = torch.randn(m, n, generator=g, dtype=D)
    xi = _proj(U, V, G)
    from manifold_lowrank.manifolds.types import ProjectedGradients

    pg = ProjectedGradients(G @ V, U.T @ G @ V, G.T @ U)
    t = transport_tangent(pg, FixedRankPoint(U, None, V), FixedRankPoint(U1, None, V1))
    assert torch.allclose(t.GV, xi @ V1, atol=100 * EPS * 10)
    assert torch.allclose(t.GtU, xi.T @ U1, atol=100 * EPS * 10)
    assert torch.allclose(t.UtGV, U1.T @ xi @ V1, atol=100 * EPS * 10)
    M = torch.randn(r, r, generator=g, dtype=D)
    assert torch.allclose(
        transport_core(M, U1.T @ U, V1.T @ V), U1.T @ (U @ M @ V.T) @ V1, atol=100 * EPS * 10
    )


def test_layer_rms_step_has_length_lr():
    """With precondition='layer_rms' (β₁ = 0) the first step has Frobenius length lr."""
    for seed, gscale in ((0, 1.0), (1, 1e4)):
        ad, x, y = _linear_adapter(seed=seed)
        y = y * gscale
        X0 = _dense(ad).clone()
        opt = GeoLoRA(ad, lr=0.05, tau=0.0, max_rank=7, precondition="layer_rms", eps=0.0)
        _backward(ad, x, y)
        opt.step()
        step = torch.linalg.matrix_norm(_dense(ad) - X0)
        assert math.isclose(float(step), 0.05, rel_tol=1e-10)


# ----------------------------------------------------------------------------- factored
@pytest.mark.parametrize(("m", "n", "r", "seed"), [(9, 7, 3, 0), (30, 20, 4, 1), (6, 40, 2, 2)])
def test_rescaled_tangent_is_the_projection_of_the_rescaled_vector(m, n, r, seed):
    """``rescaled_tangent`` = the projections of ``P_T(diag(a) Z diag(b))`` (float64)."""
    g = torch.Generator().manual_seed(seed)
    U, V = _orth(m, r, g), _orth(n, r, g)
    Z = _proj(U, V, torch.randn(m, n, generator=g, dtype=D))  # a tangent vector
    a = torch.rand(m, generator=g, dtype=D) * 10 + 0.1
    b = torch.rand(n, generator=g, dtype=D) * 10 + 0.1
    xi = _proj(U, V, torch.diag(a) @ Z @ torch.diag(b))
    got = rescaled_tangent(ProjectedGradients(Z @ V, U.T @ Z @ V, Z.T @ U), U, V, a, b)
    tol = 100 * EPS * float(xi.abs().max())
    assert torch.allclose(got.GV, xi @ V, rtol=0, atol=tol)
    assert torch.allclose(got.UtGV, U.T @ xi @ V, rtol=0, atol=tol)
    assert torch.allclose(got.GtU, xi.T @ U, rtol=0, atol=tol)
    assert float((Z * xi).sum()) > 0  # a descent direction for -Z


def test_rescaled_tangent_batches_vectors_at_one_point():
    g = torch.Generator().manual_seed(3)
    U, V = _orth(12, 3, g), _orth(8, 3, g)
    a, b = torch.rand(12, generator=g, dtype=D) + 0.5, torch.rand(8, generator=g, dtype=D) + 0.5
    zs = [_proj(U, V, torch.randn(12, 8, generator=g, dtype=D)) for _ in range(2)]
    pgs = [ProjectedGradients(Z @ V, U.T @ Z @ V, Z.T @ U) for Z in zs]
    both = rescaled_tangent(ProjectedGradients(*(torch.stack(t) for t in zip(*pgs))), U, V, a, b)
    for i, pg in enumerate(pgs):
        for x, y in zip(both, rescaled_tangent(pg, U, V, a, b)):
            assert torch.allclose(x[i], y, rtol=0, atol=100 * EPS)


def _factored_weights_dense(U, V, G):
    rho, gam = (G @ V).pow(2).sum(1), (G.T @ U).pow(2).sum(1)
    return (
        (rho / rho.mean() + FACTORED_FLOOR).rsqrt(),
        (gam / gam.mean() + FACTORED_FLOOR).rsqrt(),
    )


@pytest.mark.parametrize("zero_s", [False, True])
def test_factored_first_step_is_the_documented_formula(zero_s):
    """β₁ = 0, τ = 0: ``X₁ = X₀ − lr ξ/‖ξ‖_F`` with ``ξ = P_T(diag(a) P_T(G) diag(b))``,
    ``a``, ``b`` from the row norms of ``GV`` and ``GᵀU`` (dense float64 reference)."""
    ad, x, y = _linear_adapter(m=12, n=9, r=3, zero_s=zero_s, seed=21)
    U, S, V, G = _dense_grad(ad, x, y)
    a, b = _factored_weights_dense(U, V, G)
    xi = _proj(U, V, torch.diag(a) @ _proj(U, V, G) @ torch.diag(b))
    lr = 0.05
    opt = GeoLoRA(ad, lr=lr, tau=0.0, max_rank=9, min_rank=0, precondition="factored", eps=0.0)
    _backward(ad, x, y)
    opt.step()
    expected = U @ S @ V.T - lr * xi / torch.linalg.matrix_norm(xi)
    assert torch.allclose(_dense(ad), expected, rtol=0, atol=1000 * EPS)
    assert set(opt.state[opt.param_groups[0]["params"][0]]) >= {"row_sq", "col_sq"}


def test_factored_steps_do_not_depend_on_the_basis_gauge():
    """The same ``X = U S Vᵀ`` written in rotated bases ``(U Q₁, Q₁ᵀ S Q₂, V Q₂)`` gives the
    same iterates: the factored moments (row norms) are rotation invariant, and the
    momentum is transported basis-free, through rank changes."""
    ad1, x, y = _linear_adapter(m=14, n=10, r=3, seed=22, zero_s=True)
    ad2, _, _ = _linear_adapter(m=14, n=10, r=3, seed=22, zero_s=True)
    g = torch.Generator().manual_seed(5)
    q1, q2 = _orth(3, 3, g), _orth(3, 3, g)
    U, S, V = ad1.point()
    ad2.set_point(FixedRankPoint(U @ q1, q1.T @ S @ q2, V @ q2))
    kw = {"lr": 0.05, "tau": 0.15, "max_rank": 8, "momentum": 0.9, "precondition": "factored"}
    opts = [GeoLoRA(ad1, **kw), GeoLoRA(ad2, **kw)]
    for _ in range(5):
        for ad, opt in zip((ad1, ad2), opts):
            _backward(ad, x, y)
            opt.step()
        assert torch.allclose(_dense(ad1), _dense(ad2), rtol=0, atol=1e4 * EPS)
    assert [r for _, r in opts[0].rank_history] == [r for _, r in opts[1].rank_history]
    assert any(r[0] != 3 for _, r in opts[0].rank_history)  # the rank did change


def test_factored_spreads_a_step_dominated_by_one_input_feature():
    """One input feature 100× larger (as BERT's outlier features): the layer-RMS step puts
    almost all of its length into that input column, the factored step far less."""
    shares = {}
    for pre in ("layer_rms", "factored"):
        ad, x, y = _linear_adapter(m=16, n=12, r=3, seed=23)
        x = x.clone()
        x[:, 0] *= 100.0
        X0 = _dense(ad).clone()
        opt = GeoLoRA(ad, lr=0.05, tau=0.0, max_rank=12, precondition=pre)
        _backward(ad, x, y)
        opt.step()
        step = _dense(ad) - X0
        shares[pre] = float(step[:, 0].pow(2).sum() / step.pow(2).sum())
    assert shares["layer_rms"] > 0.9
    assert shares["factored"] < 0.5 * shares["layer_rms"]


def test_factored_rejects_tucker_layers_but_groups_can_mix():
    g = torch.Generator().manual_seed(25)
    tk = TuckerConv2dAdapter(nn.Conv2d(4, 6, 3).to(D), 2, generator=g)
    lin, x, y = _linear_adapter(seed=26)
    with pytest.raises(ValueError, match="matrix adapters only"):
        GeoLoRA([lin, tk], lr=0.1, precondition="factored")
    opt = GeoLoRA(
        [{"layers": [lin]}, {"layers": [tk], "precondition": "layer_rms"}],
        lr=0.1,
        precondition="factored",
    )
    _backward(lin, x, y)
    tk(torch.randn(2, 4, 6, 6, generator=g, dtype=D)).pow(2).sum().backward()
    opt.step()
    opt.param_groups[1]["precondition"] = "factored"  # changed after construction
    before = [t.clone() for t in lin.point()]
    _backward(lin, x, y)
    tk(torch.randn(2, 4, 6, 6, generator=g, dtype=D)).pow(2).sum().backward()
    with pytest.raises(ValueError, match="matrix adapters only"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(lin.point(), before))  # nothing committed


def test_weight_decay_acts_on_s_only():
    ad, x, y = _linear_adapter(seed=4)
    U, S, V, G = _dense_grad(ad, x, y)
    lr, wd = 0.01, 0.5
    opt = GeoLoRA(ad, lr=lr, tau=0.0, max_rank=7, weight_decay=wd)
    _backward(ad, x, y)
    opt.step()
    expected = (1 - lr * wd) * (U @ S @ V.T) - lr * _proj(U, V, G)
    assert torch.allclose(_dense(ad), expected, atol=1000 * EPS * float(G.abs().max()))
    Un, _, Vn = ad.point()
    assert torch.allclose(Un.T @ Un, torch.eye(ad.rank, dtype=D), atol=100 * EPS)
    assert torch.allclose(Vn.T @ Vn, torch.eye(ad.rank, dtype=D), atol=100 * EPS)


def test_truncate_every_k():
    """Between τ-truncations the step is the exact projected step; every k-th step truncates."""
    ad, x, y = _linear_adapter(m=40, n=30, r=2, zero_s=True, seed=8)
    lr, tau = 0.01, 0.5
    opt = GeoLoRA(ad, lr=lr, tau=tau, max_rank=30, truncate_every=3)
    for step in (1, 2, 3):
        U, S, V, G = _dense_grad(ad, x, y)
        expected = U @ S @ V.T - lr * _proj(U, V, G)
        _backward(ad, x, y)
        opt.step()
        err = torch.linalg.matrix_norm(_dense(ad) - expected)
        ref = torch.linalg.matrix_norm(expected)
        if step < 3:
            assert err <= 1e-12 * ref  # no truncation: exact
            assert ad.rank > U.shape[1]  # the rank grew
        else:
            assert 1e-6 * ref < err <= tau * ref  # truncated, within the tolerance
            sv = torch.linalg.svdvals(expected)
            assert ad.rank == RankRule(rtol=tau, min_rank=1, max_rank=30).select(sv)


def test_orthonormality_over_a_long_float32_run():
    torch.manual_seed(0)
    base = nn.Linear(24, 32)
    ad = LowRankAdapter(base, 4, max_rank=None, generator=torch.Generator().manual_seed(0))
    opt = GeoLoRA(ad, lr=0.02, tau=0.05, max_rank=16, momentum=0.9)
    x = torch.randn(64, 24)
    y = torch.randn(64, 32)
    for _ in range(150):
        F.mse_loss(ad(x), y).backward()
        opt.step()
        opt.zero_grad()
    U, _, V = ad.point()
    r = ad.rank
    eps32 = torch.finfo(torch.float32).eps
    assert torch.linalg.matrix_norm(U.T @ U - torch.eye(r)) < 1000 * eps32
    assert torch.linalg.matrix_norm(V.T @ V - torch.eye(r)) < 1000 * eps32


def test_recovers_a_low_rank_target():
    """Full-batch least squares with a rank-3 target: rank and weights are recovered."""
    g = torch.Generator().manual_seed(0)
    m, n = 14, 12
    base = nn.Linear(n, m, bias=False).to(D)
    target = _orth(m, 3, g) @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=D)) @ _orth(n, 3, g).T
    ad = LowRankAdapter(base, 1, max_rank=12, generator=g)
    x = torch.randn(400, n, generator=g, dtype=D)
    y = base(x) + x @ target.T
    opt = GeoLoRA(ad, lr=0.5, tau=1e-3, max_rank=12)
    for _ in range(150):
        (0.5 * (ad(x) - y).pow(2).sum(1).mean()).backward()
        opt.step()
        opt.zero_grad()
    assert ad.rank == 3
    rel = torch.linalg.matrix_norm(_dense(ad) - target) / torch.linalg.matrix_norm(target)
    assert rel < 1e-6


# ----------------------------------------------------------------------------- robustness
def _nan_setup(policy):
    ad, x, y = _linear_adapter(seed=9)
    opt = GeoLoRA(ad, lr=0.1, tau=0.1, nan_policy=policy, momentum=0.5)
    _backward(ad, x, y)
    opt.step()  # creates state
    before = [t.clone() for t in ad.point()]
    state_before = {
        k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in opt._state_of(0).items()
    }
    _backward(ad, x, y * float("nan"))
    return ad, opt, before, state_before


def test_nan_skip_leaves_everything_untouched():
    ad, opt, before, state_before = _nan_setup("skip")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step()
    assert opt.nan_skips == 1
    for a, b in zip(ad.point(), before):
        assert torch.equal(a, b)
    st = opt._state_of(0)
    for k, v in state_before.items():
        assert torch.equal(st[k], v) if isinstance(v, torch.Tensor) else st[k] == v
    assert ad.projected_grads is None


def test_nan_raise_leaves_everything_untouched():
    ad, opt, before, _ = _nan_setup("raise")
    with pytest.raises(FloatingPointError, match="non-finite"):
        opt.step()
    for a, b in zip(ad.point(), before):
        assert torch.equal(a, b)


@pytest.mark.parametrize("precondition", ["layer_rms", "factored"])
def test_huge_learning_rate_never_produces_nan(precondition):
    ad, x, y = _linear_adapter(seed=10)
    opt = GeoLoRA(ad, lr=1e6, tau=0.1, precondition=precondition)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(20):
            _backward(ad, x, y)
            opt.step()
    assert all(bool(torch.isfinite(t).all()) for t in ad.point())


# ----------------------------------------------------------------------------- plumbing
@pytest.mark.parametrize("precondition", ["layer_rms", "factored"])
def test_state_dict_round_trip_after_rank_changes(precondition):
    def make():
        ad, x, y = _linear_adapter(m=12, n=10, r=2, zero_s=True, seed=12)
        return ad, x, y

    ad, x, y = make()
    opt = GeoLoRA(ad, lr=0.02, tau=0.2, max_rank=10, momentum=0.9, precondition=precondition)
    for _ in range(4):
        _backward(ad, x, y)
        opt.step()
    assert ad.rank != 2
    sd_layer = {k: v.clone() for k, v in ad.state_dict().items()}
    sd_opt = opt.state_dict()

    ad2, _, _ = make()
    opt2 = GeoLoRA(ad2, lr=0.02, tau=0.2, max_rank=10, momentum=0.9, precondition=precondition)
    with pytest.raises(ValueError, match="rank"):
        opt2.load_state_dict(sd_opt)  # ranks differ: nothing loaded
    ad2.load_state_dict(sd_layer)
    opt2.load_state_dict(sd_opt)
    assert opt2.rank_history == opt.rank_history
    for a in (ad, ad2):
        _backward(a, x, y)
    opt.step()
    opt2.step()
    assert torch.equal(_dense(ad), _dense(ad2))


def test_param_groups_and_scheduler_survive_rank_changes():
    ad, x, y = _linear_adapter(seed=13, zero_s=True)
    opt = GeoLoRA(ad, lr=0.1, tau=0.3)
    params = [id(p) for p in opt.param_groups[0]["params"]]
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        _backward(ad, x, y)
        opt.step()
        sched.step()
    assert [id(p) for p in opt.param_groups[0]["params"]] == params
    assert [id(p) for p in ad.factors()] == params
    assert math.isclose(opt.param_groups[0]["lr"], 0.1 * 0.5**3)
    assert len(opt.rank_history) == 3
    assert all(p.grad is None for p in ad.factors())


@pytest.mark.parametrize("precondition", ["none", "layer_rms", "factored"])
def test_step_uses_the_scheduled_learning_rate(precondition):
    """A scheduler's rate is the one the next step takes: the linear decay of
    ``benchmarks/finetune_minilm.py --schedule linear`` reaches 0 after ``steps`` steps,
    and a step at rate 0 leaves ``ΔW`` unchanged (τ = 0 keeps every non-zero σ)."""
    ad, x, y = _linear_adapter(seed=5)
    opt = GeoLoRA(ad, lr=0.1, tau=0.0, momentum=0.5, precondition=precondition)
    steps = 2
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: max(0.0, 1.0 - t / steps))
    moved = []
    for _ in range(steps + 1):
        before = ad.delta_weight().clone()
        _backward(ad, x, y)
        opt.step()
        sched.step()
        moved.append(float((ad.delta_weight() - before).norm()))
    assert moved[0] > 1e-3 and moved[1] > 1e-3  # rates 0.1 and 0.05
    assert moved[2] <= 1e3 * EPS * float(ad.delta_weight().norm())  # rate 0


def test_layers_without_gradient_are_skipped_and_zero_grad_clears():
    ad1, x, y = _linear_adapter(seed=14)
    ad2, _, _ = _linear_adapter(seed=15)
    opt = GeoLoRA([ad1, ad2], lr=0.1)
    before = _dense(ad2).clone()
    _backward(ad1, x, y)
    opt.step()
    assert torch.equal(_dense(ad2), before)
    _backward(ad1, x, y)
    opt.zero_grad()
    assert ad1.projected_grads is None


def test_group_dicts_override_options():
    ad1, _, _ = _linear_adapter(seed=16)
    ad2, _, _ = _linear_adapter(seed=17)
    opt = GeoLoRA([{"layers": [ad1], "lr": 0.5}, {"layers": [ad2]}], lr=0.1, tau=0.2)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.1]
    assert opt.layers == [ad1, ad2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1.0}, "lr"),
        ({"tau": 1.0}, "tau"),
        ({"max_rank": 0}, "max_rank"),
        ({"min_rank": 5, "max_rank": 3}, "min_rank"),
        ({"precondition": "adam"}, "precondition"),
        ({"momentum": 1.0}, "momentum"),
        ({"truncate_every": 0}, "truncate_every"),
        ({"nan_policy": "ignore"}, "nan_policy"),
    ],
)
def test_invalid_arguments(kwargs, match):
    ad, _, _ = _linear_adapter()
    with pytest.raises(ValueError, match=match):
        GeoLoRA(ad, **kwargs)


def test_model_without_lowrank_layers_is_rejected():
    with pytest.raises(ValueError, match="no low-rank layer"):
        GeoLoRA(nn.Sequential(nn.Linear(3, 3)), lr=0.1)
    with pytest.raises(TypeError, match="not a low-rank layer"):
        GeoLoRA([nn.Linear(3, 3)], lr=0.1)


def test_step_on_a_merged_adapter_is_refused():
    ad, x, y = _linear_adapter(seed=18)
    opt = GeoLoRA(ad, lr=0.1)
    _backward(ad, x, y)
    before = [t.clone() for t in ad.point()]
    ad.merge()
    with pytest.raises(RuntimeError, match="merged"):
        opt.step()
    ad.unmerge()
    assert all(torch.equal(a, b) for a, b in zip(ad.point(), before))


# ----------------------------------------------------------------------------- budget
def _pair(seed=30):
    """Two adapters of different shapes (their own data), full-rank cores at rank 3."""
    return [
        _linear_adapter(m=12, n=9, r=3, seed=seed),
        _linear_adapter(m=8, n=14, r=3, seed=seed + 1),
    ]


def _cost(ads):
    return sum(parameter_count(ad.matrix_shape, ad.rank) for ad in ads)


@pytest.mark.parametrize("budget", [60, 140, 230])
def test_budget_keeps_the_globally_largest_singular_values(budget):
    """Each layer ends at the best rank-r_l approximation of its τ-step Y_l = X_l − λ P_T(G_l),
    with (r_l) the allocation of GlobalBudget over the singular values of all Y_l (float64)."""
    pairs = _pair()
    lr = 0.05
    ys = []
    for ad, x, y in pairs:
        U, S, V, G = _dense_grad(ad, x, y)
        ys.append(U @ S @ V.T - lr * _proj(U, V, G))
    sv = [torch.linalg.svdvals(Y) for Y in ys]
    free = [int((s > 1e-10 * s[0]).sum()) for s in sv]  # the τ = 0 ranks (≤ 2r)
    shapes = [ad.matrix_shape for ad, _, _ in pairs]
    if sum(parameter_count(sh, r) for sh, r in zip(shapes, free)) <= budget:
        expected = free
    else:
        expected = GlobalBudget(budget, unit="params", normalize="none").allocate(
            sv, shapes=shapes, max_ranks=free
        )
    ads = [ad for ad, _, _ in pairs]
    opt = GeoLoRA(ads, lr=lr, tau=0.0, max_rank=8, budget=budget)
    for ad, x, y in pairs:
        _backward(ad, x, y)
    opt.step()
    assert [ad.rank for ad in ads] == expected
    assert _cost(ads) <= budget
    for ad, Y, r in zip(ads, ys, expected):
        u, s, vh = torch.linalg.svd(Y)
        best = u[:, :r] @ torch.diag(s[:r]) @ vh[:r]
        assert torch.allclose(_dense(ad), best, rtol=0, atol=1000 * EPS * float(s[0]))
        Un, Sn, Vn = ad.point()
        assert torch.equal(Sn, torch.diag(torch.diagonal(Sn)))
        assert torch.allclose(Un.T @ Un, torch.eye(r, dtype=D), atol=100 * EPS)
        assert torch.allclose(Vn.T @ Vn, torch.eye(r, dtype=D), atol=100 * EPS)


def test_budget_binding_case_is_exercised():
    """The allocation of the middle budget above really cuts (it is not the τ = 0 step)."""
    pairs = _pair()
    free_cost = 0
    for ad, x, y in pairs:
        U, S, V, G = _dense_grad(ad, x, y)
        s = torch.linalg.svdvals(U @ S @ V.T - 0.05 * _proj(U, V, G))
        free_cost += parameter_count(ad.matrix_shape, int((s > 1e-10 * s[0]).sum()))
    assert free_cost > 140


@pytest.mark.parametrize("precondition", ["none", "layer_rms", "factored"])
def test_budget_that_does_not_bind_changes_nothing(precondition):
    """With a budget above every reachable cost the iterates are bit-identical."""
    runs = []
    for budget in (None, 10**6):
        pairs = _pair(seed=40)
        ads = [ad for ad, _, _ in pairs]
        opt = GeoLoRA(
            ads,
            lr=0.05,
            tau=0.1,
            max_rank=6,
            momentum=0.9,
            precondition=precondition,
            budget=budget,
        )
        for _ in range(5):
            for ad, x, y in pairs:
                _backward(ad, x, y)
            opt.step()
        runs.append(([t.clone() for ad in ads for t in ad.point()], opt.state_dict()["state"]))
    (pa, sa), (pb, sb) = runs
    assert all(torch.equal(a, b) for a, b in zip(pa, pb))
    for k in sa:
        for key in sa[k]:
            a, b = sa[k][key], sb[k][key]
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_budget_cuts_the_momentum_by_the_projection_transport():
    """The momentum kept for a layer whose rank the budget lowered is P_{T₊}(ξ) at the
    point actually committed (dense float64 check of the three stored projections)."""
    pairs = _pair(seed=50)
    ads = [ad for ad, _, _ in pairs]
    opt = GeoLoRA(ads, lr=0.05, tau=0.0, max_rank=8, momentum=0.9, budget=140)
    olds, grads = [], []
    for ad, x, y in pairs:
        U, _, V, G = _dense_grad(ad, x, y)
        olds.append((U, V))
        grads.append(G)
        _backward(ad, x, y)
    opt.step()
    assert _cost(ads) <= 140
    for i, (ad, (U, V), G) in enumerate(zip(ads, olds, grads)):
        xi = _proj(U, V, G)  # the first momentum is the Riemannian gradient (β-free start)
        U1, _, V1 = ad.point()
        st = opt._state_of(i)
        scale = 1000 * EPS * float(G.abs().max())
        assert torch.allclose(st["momentum_GV"], xi @ V1, atol=scale * 10)
        assert torch.allclose(st["momentum_GtU"], xi.T @ U1, atol=scale * 10)
        assert torch.allclose(st["momentum_UtGV"], U1.T @ xi @ V1, atol=scale * 10)


def test_budget_cuts_layers_of_the_fallback_path_to_their_best_approximation():
    """Nearly square layers (2r > min(m, n)) take the public-function path of the step;
    it too ends in the SVD gauge the budget relies on, and the cut keeps each layer's best
    approximation of its τ-step (float64)."""
    pairs = [_linear_adapter(m=7, n=5, r=3, seed=60), _linear_adapter(m=6, n=6, r=4, seed=61)]
    ads = [ad for ad, _, _ in pairs]
    ys = []
    for ad, x, y in pairs:
        U, S, V, G = _dense_grad(ad, x, y)
        ys.append(U @ S @ V.T - 0.05 * _proj(U, V, G))
        _backward(ad, x, y)
    free = [int((torch.linalg.svdvals(Y) > 1e-10 * torch.linalg.svdvals(Y)[0]).sum()) for Y in ys]
    free_cost = sum(parameter_count(ad.matrix_shape, r) for ad, r in zip(ads, free))
    budget = free_cost - 15
    opt = GeoLoRA(ads, lr=0.05, tau=0.0, max_rank=5, momentum=0.5, budget=budget)
    opt.step()
    assert _cost(ads) <= budget < free_cost
    for ad, Y in zip(ads, ys):
        r = ad.rank
        Un, Sn, Vn = ad.point()
        assert torch.equal(Sn, torch.diag(torch.diagonal(Sn)))
        assert bool((torch.diagonal(Sn)[:-1] >= torch.diagonal(Sn)[1:]).all())
        u, s, vh = torch.linalg.svd(Y)
        best = u[:, :r] @ torch.diag(s[:r]) @ vh[:r]
        assert torch.allclose(Un @ Sn @ Vn.T, best, atol=1000 * EPS * float(s[0]))


def test_budget_holds_after_every_step_and_allocates_unevenly():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(20, 40), nn.Tanh(), nn.Linear(40, 30), nn.Tanh(), nn.Linear(30, 5)
    )
    ads = []
    for i in (0, 2, 4):
        base = model[i].to(D)
        model[i] = LowRankAdapter(
            base, 4, max_rank=None, generator=torch.Generator().manual_seed(i)
        )
        ads.append(model[i])
    model = model.to(D)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 20, generator=g, dtype=D)
    y = torch.randn(64, 5, generator=g, dtype=D)
    budget = 500
    opt = GeoLoRA(
        model, lr=0.05, tau=0.01, max_rank=16, momentum=0.9, precondition="factored", budget=budget
    )
    losses, seen = [], set()
    for _ in range(40):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        assert opt.num_adapter_parameters() <= budget
        seen.add(tuple(ad.rank for ad in ads))
    assert losses[-1] < 0.8 * losses[0]
    assert any(len(set(r)) > 1 for r in seen)  # ranks are allocated, not uniform


def test_budget_sees_only_finite_updates_a_nan_update_goes_to_the_nan_policy():
    """A non-finite new point is skipped by the NaN policy before the budget looks at it
    (the allocation would otherwise reject its singular values)."""
    pairs = _pair(seed=75)
    ads = [ad for ad, _, _ in pairs]
    opt = GeoLoRA(ads, lr=0.05, tau=0.0, max_rank=8, budget=140)
    inner = opt._compute_update

    def poisoned(layer, group, state, pg, step):
        point, st = inner(layer, group, state, pg, step)
        if layer is ads[0]:
            point = FixedRankPoint(point.U, point.S * float("nan"), point.V)
        return point, st

    opt._compute_update = poisoned
    for ad, x, y in pairs:
        _backward(ad, x, y)
    before = [t.clone() for a in ads for t in a.point()]
    with pytest.warns(RuntimeWarning, match="non-finite update"):
        opt.step()
    assert opt.nan_skips == 1
    assert all(torch.equal(a, b) for a, b in zip(before, [t for a in ads for t in a.point()]))


def test_budget_failure_at_step_time_modifies_nothing():
    """Layers without gradients keep their cost; if the rest cannot fit, nothing is written."""
    pairs = _pair(seed=70)
    ads = [ad for ad, _, _ in pairs]
    floor = sum(parameter_count(ad.matrix_shape, 1) for ad in ads)
    opt = GeoLoRA(ads, lr=0.05, tau=0.0, budget=floor + 5)
    ad, x, y = pairs[0]
    _backward(ad, x, y)  # only the first layer; the second holds rank 3 (cost > what is left)
    before = [t.clone() for a in ads for t in a.point()]
    with pytest.raises(ValueError, match="nothing was modified"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, [t for a in ads for t in a.point()]))
    assert all(not opt._state_of(i) for i in range(2))


@pytest.mark.parametrize(
    ("budget", "match"),
    [
        (-1, "budget must be"),
        (1.5, "budget must be"),
        (True, "budget must be"),
        (GlobalBudget(100, unit="rank"), "unit='params'"),
        (10, r"valid range is budget >= 44"),
    ],
)
def test_budget_invalid(budget, match):
    ad, _, _ = _linear_adapter(m=12, n=9, r=3)
    with pytest.raises(ValueError, match=match):
        GeoLoRA([ad, _linear_adapter(m=12, n=9, r=3, seed=1)[0]], lr=0.1, budget=budget)


def test_budget_rejects_tucker_layers():
    g = torch.Generator().manual_seed(80)
    tk = TuckerConv2dAdapter(nn.Conv2d(4, 6, 3).to(D), 2, generator=g)
    with pytest.raises(ValueError, match="matrix layers only"):
        GeoLoRA(tk, lr=0.1, budget=10**6)
