"""DLRT: schedule = the integrators, exact state transport, orthonormality, checkpoints, errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from manifold_lowrank.integrators import augmented_bug, parallel, tucker_parallel
from manifold_lowrank.linalg import RankRule
from manifold_lowrank.manifolds.types import FixedRankPoint, ProjectedGradients, TuckerPoint
from manifold_lowrank.nn import LowRankConv2d, LowRankLinear, TuckerConv2d
from manifold_lowrank.optim import DLRT
from manifold_lowrank.optim.dlrt import transport_second_moment
from manifold_lowrank.optim.lowrank_base import transport_core

D = torch.float64
EPS = torch.finfo(D).eps


# ----------------------------------------------------------------------------- fixtures
def _orth(n: int, r: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, r, generator=g, dtype=D))[0]


def _layer(m=9, n=7, r=2, *, seed=0, bias=False, max_rank=None):
    g = torch.Generator().manual_seed(seed)
    la = LowRankLinear(n, m, r, bias=bias, dtype=D, generator=g, max_rank=max_rank)
    la.set_point(
        FixedRankPoint(_orth(m, r, g), torch.randn(r, r, generator=g, dtype=D), _orth(n, r, g))
    )
    x = torch.randn(23, n, generator=g, dtype=D)
    y = torch.randn(23, m, generator=g, dtype=D)
    return la, x, y


def _loss_of_W(W, x, y):
    return 0.5 * (x @ W.T - y).pow(2).sum()


def _dense_G(W, x, y):
    W = W.detach().clone().requires_grad_(True)
    (G,) = torch.autograd.grad(_loss_of_W(W, x, y), W)
    return G


def _W(la):
    U, S, V = la.point()
    return U @ S @ V.T


def _backward(opt, la, x, y):
    opt.zero_grad()
    (0.5 * (la(x) - y).pow(2).sum()).backward()


def _proj(U, V, G):
    return G @ V @ V.T + U @ U.T @ G - U @ U.T @ G @ V @ V.T


def _close(a, b, scale=1.0, k=1000):
    return torch.allclose(a, b, rtol=0, atol=k * EPS * max(1.0, scale))


# ----------------------------------------------------------------- integrator identities
@pytest.mark.parametrize("tau", [0.0, 0.2, None])
def test_parallel_step_equals_parallel_integrator(tau):
    """integrator='parallel' + SGD: one step = integrators.parallel (truncated) exactly."""
    la, x, y = _layer(m=10, n=8, r=3, seed=1)
    h = 0.01
    opt = DLRT(la, lr=h, tau=tau, integrator="parallel", substep_optimizer="sgd")
    point = FixedRankPoint(*(t.clone() for t in la.point()))
    _backward(opt, la, x, y)
    pg = la.projected_grads
    rule = (
        RankRule(rank=3, min_rank=0) if tau is None else RankRule(rtol=tau, min_rank=1, max_rank=8)
    )
    ref = parallel(point, pg, h, rule)
    opt.step()
    assert la.rank == ref.point.rank
    assert _close(_W(la), ref.point.to_dense(), float(ref.point.S.abs().max()))
    assert opt.last_step_kind == "augment+truncate"


def test_augmented_bug_cycle_is_parallel_then_galerkin_then_truncation():
    """A cycle of k=3 (SGD): X₁ = X₀ − h P_T(G₀) (in Û⊗V̂), X₂,₃ = X − h Π(G) with
    Π(G) = ÛÛᵀGV̂V̂ᵀ, then the best rank-r₁ approximation by the τ rule."""
    la, x, y = _layer(m=12, n=9, r=2, seed=2)
    h, tau = 0.02, 0.05
    opt = DLRT(la, lr=h, tau=tau, augment_every=3, substep_optimizer="sgd")
    U0, S0, V0 = (t.clone() for t in la.point())
    W0 = U0 @ S0 @ V0.T
    G0 = _dense_G(W0, x, y)
    _backward(opt, la, x, y)
    opt.step()
    assert opt.last_step_kind == "augment" and la.rank == 4
    U1, _, V1 = la.point()
    X = W0 - h * _proj(U0, V0, G0)
    assert _close(_W(la), X, float(G0.abs().max()))
    # the augmented bases contain the old ones and the gradient directions
    assert _close(U1 @ U1.T @ U0, U0) and _close(
        U1 @ U1.T @ G0 @ V0, G0 @ V0, float(G0.abs().max())
    )
    for _ in range(2):
        G = _dense_G(X, x, y)
        _backward(opt, la, x, y)
        opt.step()
        X = X - h * U1 @ U1.T @ G @ V1 @ V1.T
        if opt.last_step_kind == "coefficient":
            assert _close(_W(la), X, float(G.abs().max()))
    assert opt.last_step_kind == "coefficient+truncate"
    u, s, vh = torch.linalg.svd(X)
    r1 = RankRule(rtol=tau, min_rank=1, max_rank=7).select(s[:4])
    assert la.rank == r1
    best = u[:, :r1] @ torch.diag(s[:r1]) @ vh[:r1]
    assert _close(_W(la), best, float(s[0]))
    assert opt.truncation_history[-1] == (3, [r1])
    assert opt.cycle_position() == 0


def test_bug_closure_equals_augmented_bug_integrator():
    """integrator='bug' + SGD: step(closure) = integrators.augmented_bug with the exact
    Galerkin gradient Ûᵀ G(Û S V̂ᵀ) V̂ (the original re-evaluating DLRT step)."""
    la, x, y = _layer(m=11, n=8, r=2, seed=3)
    h, tau = 0.03, 0.1
    for separate in (False, True):
        lb = copy.deepcopy(la)
        opt = DLRT(
            lb,
            lr=h,
            tau=tau,
            integrator="bug",
            substep_optimizer="sgd",
            separate_kl_passes=separate,
        )
        point = FixedRankPoint(*(t.clone() for t in lb.point()))
        W0 = point.to_dense()
        G0 = _dense_G(W0, x, y)
        pg = ProjectedGradients(G0 @ point.V, point.U.T @ G0 @ point.V, G0.T @ point.U)
        calls = []

        def closure(lb=lb, opt=opt, calls=calls):
            calls.append(1)
            opt.zero_grad()
            loss = 0.5 * (lb(x) - y).pow(2).sum()
            loss.backward()
            return loss

        def core_grad(p):
            return p.U.T @ _dense_G(p.U @ p.S @ p.V.T, x, y) @ p.V

        ref = augmented_bug(
            point, pg, h, RankRule(rtol=tau, min_rank=1, max_rank=7), core_grad=core_grad
        )
        loss = opt.step(closure)
        assert len(calls) == (3 if separate else 2)
        assert float(loss.detach()) == pytest.approx(float(_loss_of_W(W0, x, y)), rel=1e-12)
        assert lb.rank == ref.point.rank
        assert _close(_W(lb), ref.point.to_dense(), float(ref.point.S.abs().max()))
        assert opt.last_step_kind == "closure"


def test_bug_requires_a_closure():
    la, x, y = _layer()
    opt = DLRT(la, lr=0.1, integrator="bug")
    _backward(opt, la, x, y)
    with pytest.raises(ValueError, match="closure"):
        opt.step()


def test_tucker_augment_step_is_untruncated_parallel_tucker():
    g = torch.Generator().manual_seed(4)
    conv = TuckerConv2d(4, 6, 3, (2, 2), dtype=D, generator=g, bias=False)
    x = torch.randn(3, 4, 6, 6, generator=g, dtype=D)
    h = 0.01
    opt = DLRT(conv, lr=h, tau=0.1, augment_every=2, substep_optimizer="sgd")
    core, fs = conv.point()
    point = TuckerPoint(core.clone(), tuple(f.clone() for f in fs))
    opt.zero_grad()
    conv(x).pow(2).sum().backward()
    ref = tucker_parallel(point, conv.projected_grads, h, None, full_modes=(2, 3))
    opt.step()
    assert conv.ranks == ref.point.ranks == (4, 4, 3, 3)
    assert torch.allclose(conv.point().core, ref.point.core, atol=1e-12)
    for f, fr in zip(conv.point().factors, ref.point.factors):
        assert torch.allclose(f, fr, atol=1e-12)
    opt.zero_grad()
    conv(x).pow(2).sum().backward()
    opt.step()
    assert opt.last_step_kind == "coefficient+truncate"
    for k in (0, 1):
        f = conv.point().factors[k]
        assert 1 <= conv.ranks[k] <= 4
        assert torch.allclose(f.T @ f, torch.eye(f.shape[1], dtype=D), atol=1e-12)


# ----------------------------------------------------------------------------- state transport
def test_transport_second_moment_formula():
    g = torch.Generator().manual_seed(5)
    v = torch.rand(4, 4, generator=g, dtype=D)
    A = torch.randn(3, 4, generator=g, dtype=D)
    B = torch.randn(3, 4, generator=g, dtype=D)
    assert torch.allclose(transport_second_moment(v, A, B), (A @ v.sqrt() @ B.T) ** 2)
    # exact for signed permutations and for zero padding
    P = torch.eye(4, dtype=D)[[2, 0, 3, 1]] * torch.tensor([1.0, -1, 1, -1], dtype=D)[:, None]
    assert torch.allclose(transport_second_moment(v, P, P), P.abs() @ v @ P.abs().T)
    pad = torch.cat([torch.eye(4, dtype=D), torch.zeros(2, 4, dtype=D)])
    out = transport_second_moment(v, pad, pad)
    assert torch.allclose(out[:4, :4], v, rtol=10 * EPS, atol=0)
    assert not out[4:].any() and not out[:, 4:].any()


@pytest.mark.parametrize("kind", ["momentum", "adam"])
def test_state_is_carried_through_augmentation_and_truncation(kind):
    """Buffers follow Z ← A Z Bᵀ (A = U₊ᵀÛ, B = V₊ᵀV̂), Adam's v ← (A√v Bᵀ)², exactly."""
    la, x, y = _layer(m=30, n=24, r=2, seed=6)
    mu, (b1, b2) = 0.9, (0.8, 0.95)
    opt = DLRT(
        la, lr=0.02, tau=0.1, augment_every=2, substep_optimizer=kind, momentum=mu, betas=(b1, b2)
    )
    keys = ["momentum_buffer"] if kind == "momentum" else ["exp_avg", "exp_avg_sq"]

    def state():
        return {k: opt.state[la.U][k].clone() for k in keys}

    for cycle in range(3):
        # augment step: the state is zero-padded, then updated with Ĝ
        old = state() if cycle else None
        r = la.rank
        U0, _, V0 = (t.clone() for t in la.point())
        _backward(opt, la, x, y)
        GV, UtGV, GtU = la.projected_grads
        opt.step()
        Uh, _, Vh = la.point()
        assert la.rank == 2 * r
        G_hat = torch.zeros(2 * r, 2 * r, dtype=D)
        G_hat[:r, :r] = UtGV
        G_hat[:r, r:] = GtU.T @ Vh[:, r:]
        G_hat[r:, :r] = Uh[:, r:].T @ GV
        assert torch.allclose(Uh[:, :r], U0) and torch.allclose(Vh[:, :r], V0)
        new = state()
        if kind == "momentum":
            exp = G_hat.clone()
            if old is not None:
                exp[:r, :r] += mu * old["momentum_buffer"]
            assert torch.allclose(new["momentum_buffer"], exp, atol=1e-13)
        else:
            m_exp, v_exp = (1 - b1) * G_hat, (1 - b2) * G_hat**2
            if old is not None:
                m_exp[:r, :r] += b1 * old["exp_avg"]
                v_exp[:r, :r] += b2 * old["exp_avg_sq"]
            assert torch.allclose(new["exp_avg"], m_exp, atol=1e-13)
            assert torch.allclose(new["exp_avg_sq"], v_exp, atol=1e-13)
        # coefficient step then truncation: A = U₊ᵀÛ, B = V₊ᵀV̂
        old = state()
        _backward(opt, la, x, y)
        gS = la.S.grad.clone()
        opt.step()
        assert opt.last_step_kind == "coefficient+truncate"
        U1, _, V1 = la.point()
        A, B = U1.T @ Uh, V1.T @ Vh
        new = state()
        if kind == "momentum":
            exp = transport_core(mu * old["momentum_buffer"] + gS, A, B)
            assert torch.allclose(new["momentum_buffer"], exp, atol=1e-12)
        else:
            m_pre = b1 * old["exp_avg"] + (1 - b1) * gS
            v_pre = b2 * old["exp_avg_sq"] + (1 - b2) * gS**2
            assert torch.allclose(new["exp_avg"], A @ m_pre @ B.T, atol=1e-12)
            assert torch.allclose(new["exp_avg_sq"], (A @ v_pre.sqrt() @ B.T) ** 2, atol=1e-12)
        assert opt.state[la.U]["step"] == 2 * (cycle + 1)


def test_dense_parameters_get_the_standard_update():
    """Biases and the head follow torch.optim.Adam exactly; U, V are never decayed."""
    torch.manual_seed(0)
    model = nn.Sequential(LowRankLinear(12, 8, 3, dtype=D), nn.Tanh(), nn.Linear(8, 3, dtype=D))
    ref_head = copy.deepcopy(model[2])
    x, y = torch.randn(17, 12, dtype=D), torch.randint(0, 3, (17,))
    opt = DLRT(model, lr=1e-2, tau=0.1, augment_every=2)
    ref = torch.optim.Adam(ref_head.parameters(), lr=1e-2)
    assert {id(p) for g in opt.dense_param_groups for p in g["params"]} == {
        id(model[0].bias),
        id(model[2].weight),
        id(model[2].bias),
    }
    for _ in range(5):
        opt.zero_grad()
        ref.zero_grad()
        h = torch.tanh(model[0](x)).detach()
        F.cross_entropy(model[2](torch.tanh(model[0](x))), y).backward()
        F.cross_entropy(ref_head(h), y).backward()
        opt.step()
        ref.step()
        assert torch.allclose(model[2].weight, ref_head.weight, atol=1e-14)
    # train_dense=False leaves them to a user optimizer
    opt2 = DLRT(model, lr=1e-2, train_dense=False)
    assert opt2.dense_param_groups == []


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("steps", [300, pytest.param(5000, marks=pytest.mark.slow)])
def test_orthonormality_after_many_float32_steps(steps):
    """‖UᵀU − I‖, ‖VᵀV − I‖ ≤ 1e-5 after 5,000 float32 steps with rank changes
    (no drift: the truncation re-orthonormalises)."""
    g = torch.Generator().manual_seed(0)
    la = LowRankLinear(24, 20, 4, generator=g, bias=False)
    target = torch.randn(20, 6, generator=g) @ torch.randn(6, 24, generator=g) / 4
    x = torch.randn(32, 24, generator=g)
    y = x @ target.T
    opt = DLRT(la, lr=0.1, tau=0.02, augment_every=2, substep_optimizer="momentum")
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (la(x) - y).pow(2).mean(0).sum()).backward()
        opt.step()
    U, _, V = la.point()
    r = la.rank
    assert len(opt.truncation_history) == steps // 2
    assert len({ranks[0] for _, ranks in opt.truncation_history}) > 1  # ranks did change
    assert float((U.T @ U - torch.eye(r)).abs().max()) <= 1e-5
    assert float((V.T @ V - torch.eye(r)).abs().max()) <= 1e-5


def test_rank_recovery_of_a_low_rank_target():
    """Least squares towards a rank-3 target: DLRT finds rank 3 and the target."""
    g = torch.Generator().manual_seed(7)
    m, n = 14, 12
    target = _orth(m, 3, g) @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=D)) @ _orth(n, 3, g).T
    la, _, _ = _layer(m, n, r=1, seed=7)
    x = torch.eye(n, dtype=D)
    y = target.T.clone()  # ½‖x Wᵀ − y‖² = ½‖W − target‖², G = W − target
    opt = DLRT(la, lr=0.3, tau=1e-3, augment_every=3, substep_optimizer="sgd")
    for _ in range(150):
        _backward(opt, la, x, y)
        opt.step()
    assert la.rank == 3
    assert torch.linalg.matrix_norm(_W(la) - target) < 1e-6


def test_fixed_rank_and_truncation_reallocates():
    la, x, y = _layer(m=16, n=12, r=3, seed=8)
    U_id, S_id = id(la.U), id(la.S)
    opt = DLRT(la, lr=0.01, tau=None, augment_every=2, substep_optimizer="adam")
    ranks = []
    for _ in range(6):
        _backward(opt, la, x, y)
        opt.step()
        ranks.append(la.rank)
        # storage really has the current size (no slicing of a max-size buffer)
        assert la.U.untyped_storage().nbytes() == 16 * la.rank * 8
        assert la.V.untyped_storage().nbytes() == 12 * la.rank * 8
    assert ranks == [6, 3] * 3
    assert id(la.U) == U_id and id(la.S) == S_id
    assert not la.U.requires_grad and la.S.requires_grad
    assert opt.rank_history[-1] == (6, [3])


def test_fine_tuning_phase_moves_only_s():
    la, x, y = _layer(m=10, n=9, r=2, seed=9)
    opt = DLRT(la, lr=0.01, tau=0.2, augment_every=3)
    for _ in range(4):  # stop mid-cycle: start_fine_tuning truncates first
        _backward(opt, la, x, y)
        opt.step()
    opt.start_fine_tuning()
    r = la.rank
    U, S, V = (t.clone() for t in la.point())
    assert not la.record_projected_grads
    for _ in range(5):
        _backward(opt, la, x, y)
        assert la.projected_grads is None
        opt.step()
        assert opt.last_step_kind == "fine_tune" and la.rank == r
    assert torch.equal(la.U, U) and torch.equal(la.V, V) and not torch.equal(la.S, S)


# ----------------------------------------------------------------------------- checkpoints
def _cnn(seed, dtype=D):
    g = torch.Generator().manual_seed(seed)
    return nn.Sequential(
        LowRankConv2d(1, 6, 3, 2, dtype=dtype, generator=g),
        nn.ReLU(),
        TuckerConv2d(6, 8, 3, (3, 3), dtype=dtype, generator=g),
        nn.ReLU(),
        nn.Flatten(),
        LowRankLinear(8 * 4 * 4, 10, 3, dtype=dtype, generator=g),
        nn.ReLU(),
        nn.Linear(10, 3, dtype=dtype),
    )


def _dense_weights(model):
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, TuckerConv2d):
            out[name] = mod.dense_kernel()
        elif isinstance(mod, (LowRankConv2d, LowRankLinear)):
            U, S, V = mod.point()
            out[name] = U @ S @ V.T
    return out


@pytest.mark.parametrize("integrator", ["augmented_bug", "parallel", "bug"])
def test_zero_lr_keeps_every_weight_through_augment_and_truncate(integrator):
    """lr = 0, τ = 0: augmentation, state transport, truncation and re-orthonormalisation
    keep every (matrix and Tucker) weight exactly, and the bases stay orthonormal."""
    g = torch.Generator().manual_seed(12)
    model = _cnn(12)
    x = torch.randn(6, 1, 8, 8, generator=g, dtype=D)
    y = torch.randint(0, 3, (6,), generator=g)
    before = {k: v.clone() for k, v in _dense_weights(model).items()}
    opt = DLRT(
        model,
        lr=0.0,
        tau=0.0,
        integrator=integrator,
        augment_every=3 if integrator == "augmented_bug" else None,
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(4):
        if integrator == "bug":
            opt.step(closure)
        else:
            closure()
            opt.step()
    for k, w in _dense_weights(model).items():
        assert torch.allclose(w, before[k], atol=1e-12), k
    for mod in (model[0], model[5]):
        U, _, V = mod.point()
        assert torch.allclose(U.T @ U, torch.eye(U.shape[1], dtype=D), atol=1e-12)
        assert torch.allclose(V.T @ V, torch.eye(V.shape[1], dtype=D), atol=1e-12)


def test_state_dict_round_trip_after_rank_changes_mid_cycle():
    """Model + optimizer checkpoints load into freshly constructed ones (other ranks) and
    continue identically."""
    g = torch.Generator().manual_seed(10)
    x = torch.randn(8, 1, 8, 8, generator=g, dtype=D)
    y = torch.randint(0, 3, (8,), generator=g)
    model = _cnn(10)

    def train(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

    opt = DLRT(model, lr=1e-2, tau=0.3, augment_every=3)
    train(model, opt, 7)  # two truncations, then one augment step (mid-cycle)
    assert opt.cycle_position() == 1
    msd, osd = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    fresh = _cnn(99)
    fopt = DLRT(fresh, lr=1e-2, tau=0.3, augment_every=3)
    with pytest.raises(ValueError, match="rank"):
        fopt.load_state_dict(osd)  # the model checkpoint must be loaded first
    fresh.load_state_dict(msd)
    fopt.load_state_dict(osd)
    assert fopt.ranks() == opt.ranks() and fopt.cycle_position() == 1
    assert fopt.truncation_history == opt.truncation_history
    train(model, opt, 5)
    train(fresh, fopt, 5)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-12), k


# ----------------------------------------------------------------------------- robustness
def test_nan_gradient_skips_without_changes_or_raises():
    la, x, y = _layer(seed=11)
    opt = DLRT(la, lr=0.1, augment_every=2)
    before = [t.clone() for t in la.point()]
    _backward(opt, la, x * float("nan"), y)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        opt.step()
    assert any("non-finite" in str(i.message) for i in w)
    assert opt.nan_skips == 1 and opt.cycle_position() == 0
    assert all(torch.equal(a, b) for a, b in zip(before, la.point()))
    opt_r = DLRT(la, lr=0.1, nan_policy="raise")
    _backward(opt_r, la, x * float("nan"), y)
    with pytest.raises(FloatingPointError):
        opt_r.step()
    assert all(torch.equal(a, b) for a, b in zip(before, la.point()))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"tau": 1.0}, ValueError, "tau"),
        ({"tau": -0.1}, ValueError, "tau"),
        ({"lr": -1.0}, ValueError, "lr"),
        ({"min_rank": 0}, ValueError, "min_rank"),
        ({"min_rank": 8}, ValueError, "min_rank"),  # above the layer's max_rank 7
        ({"max_rank": 0}, ValueError, "max_rank"),
        ({"augment_every": 0}, ValueError, "augment_every"),
        ({"integrator": "parallel", "augment_every": 4}, ValueError, "augment_every"),
        ({"integrator": "kls"}, ValueError, "integrator"),
        ({"substep_optimizer": "rmsprop"}, ValueError, "substep_optimizer"),
        ({"betas": (0.9, 1.0)}, ValueError, "betas"),
        ({"momentum": 1.5}, ValueError, "momentum"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    la, _, _ = _layer()
    with pytest.raises(exc, match=match):
        DLRT(la, **kwargs)


def test_bad_params():
    dense = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"params.*no low-rank layer"):
        DLRT(dense)
    with pytest.raises(TypeError, match=r"params\[0\].*not a low-rank layer"):
        DLRT(list(dense.parameters()))
    with pytest.raises(TypeError, match=r"params\[0\] is a Linear"):
        DLRT([dense[0]])
    with pytest.raises(ValueError, match="rank"):  # rank above the layer's dimensions
        LowRankLinear(4, 3, rank=4)
    # explicit groups: layers plus a dense group work
    la = LowRankLinear(6, 5, 2)
    head = nn.Linear(5, 2)
    opt = DLRT([{"layers": [la], "tau": 0.2}, {"params": head.parameters(), "lr": 0.1}])
    assert opt.param_groups[0]["tau"] == 0.2 and opt.dense_param_groups[-1]["lr"] == 0.1
