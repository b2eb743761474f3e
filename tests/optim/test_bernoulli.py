"""Bernoulli-LoRA / RAC-LoRA: sketches, estimators, both forms, theory checks, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from manifold_lowrank.nn import LowRankAdapter, LowRankConv2dAdapter
from manifold_lowrank.optim.bernoulli import (
    BernoulliLoRA,
    BernoulliLoRAChain,
    RACLoRA,
    RACLoRAChain,
)
from manifold_lowrank.optim.estimators import MVR, PAGE, SGD, make_estimator
from manifold_lowrank.optim.sketches import (
    apply_projection,
    expected_projection_scale,
    projection_matrix,
    range_basis,
    sample_sketch,
)
from manifold_lowrank.problems import LinearRegression, MatrixQuadratic, run_lora_baseline

F64 = torch.float64
EPS = torch.finfo(F64).eps


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- sketches
def _mc_projection(d, r, n, distribution, seed, sampler=None):
    g = gen(seed)
    hs = []
    for _ in range(n):
        b = sampler(g) if sampler else sample_sketch(d, r, distribution=distribution, generator=g)
        q = b if distribution == "haar" else range_basis(b)
        hs.append(q @ q.T)
    return torch.stack(hs)


def _max_clt_deviation(hs, target):
    """max_ij |mean − target| / (std/√n): a standard-normal-like statistic per entry."""
    n = hs.shape[0]
    se = hs.std(0) / math.sqrt(n)
    return float(((hs.mean(0) - target).abs() / se.clamp_min(1e-15)).max())


@pytest.mark.parametrize("distribution", ["gaussian", "haar"])
def test_expected_projection_is_r_over_d_identity(distribution):
    """E[H] = (r/d) I (Monte Carlo; every entry within 5 standard errors)."""
    d, r, n = 6, 2, 800
    hs = _mc_projection(d, r, n, distribution, seed=11)
    lam = expected_projection_scale(d, r)
    assert lam == r / d
    # trace is exactly r for every draw; H is an orthogonal projection
    assert torch.allclose(
        torch.diagonal(hs, dim1=1, dim2=2).sum(1),
        torch.full((n,), float(r), dtype=hs.dtype),
        atol=1e-5,
    )
    assert _max_clt_deviation(hs, lam * torch.eye(d, dtype=hs.dtype)) < 5.0


def test_expected_projection_check_has_power():
    """Negative control: an anisotropic sketch fails the same E[H] = (r/d) I check."""
    d, r = 6, 2
    scale = torch.tensor([4.0, 1, 1, 1, 1, 1])
    hs = _mc_projection(
        d,
        r,
        800,
        "gaussian",
        seed=11,
        sampler=lambda g: scale[:, None] * torch.randn(d, r, generator=g),
    )
    assert _max_clt_deviation(hs, (r / d) * torch.eye(d)) > 10.0


def test_sketch_shapes_dtype_and_haar_orthonormal():
    b = sample_sketch(7, 3, distribution="haar", generator=gen(0), dtype=F64)
    assert b.shape == (7, 3) and b.dtype == F64
    assert torch.allclose(b.T @ b, torch.eye(3, dtype=F64), atol=10 * EPS)
    # same seed, same sketch; CPU generator is the source of truth
    assert torch.equal(b, sample_sketch(7, 3, distribution="haar", generator=gen(0), dtype=F64))


def test_projection_identities_float64():
    """range_basis gives H = B(BᵀB)⁺Bᵀ; apply_projection matches the dense H on both sides."""
    g = gen(3)
    m, n, r = 7, 5, 2
    B = sample_sketch(m, r, generator=g, dtype=F64)
    A = sample_sketch(n, r, generator=g, dtype=F64)  # input side, stored as n×r (= Aᵀ)
    G = torch.randn(m, n, generator=g, dtype=F64)
    HB, HA = projection_matrix(B), projection_matrix(A)
    tol = 100 * EPS * float(G.abs().max())
    qb, qa = range_basis(B), range_basis(A)
    assert torch.allclose(qb @ qb.T, HB, atol=100 * EPS)
    assert torch.allclose(apply_projection(qb, G, side="output"), HB @ G, atol=tol)
    assert torch.allclose(apply_projection(qa, G, side="input"), G @ HA, atol=tol)
    assert torch.allclose(HB @ HB, HB, atol=100 * EPS)  # idempotent
    assert torch.allclose(HB, HB.T, atol=100 * EPS)  # symmetric
    # a rank-deficient "sketch" projects onto its true range
    Bd = torch.cat([B[:, :1], 2 * B[:, :1]], 1)
    assert range_basis(Bd).shape == (m, 1)
    assert torch.allclose(range_basis(Bd) @ range_basis(Bd).T, projection_matrix(Bd), atol=1e-12)


# ---------------------------------------------------------------------------- factor = projected
def _quadratic_on_adapter(adapter, prob):
    U, S, V = adapter.factors()
    W = adapter.base_layer.weight + adapter.scaling * (U @ S @ V.T)
    return prob.loss(W)


@pytest.mark.parametrize("p", [1.0, 0.0])
@pytest.mark.parametrize("sketch", ["gaussian", "haar"])
def test_one_link_with_one_exact_step_equals_projected_step(p, sketch):
    """RAC-LoRA link (freeze sketch, one SGD step on the other factor, merge) =
    W − γ H_B ∇f(W) (p = 1) or W − γ ∇f(W) H_A (p = 0), as a float64 identity."""
    m, n, r, gamma = 6, 5, 2, 0.37
    prob = MatrixQuadratic.random(m, n, condition=5.0, generator=gen(1))
    base = nn.Linear(n, m, bias=False, dtype=F64)
    with torch.no_grad():
        base.weight.copy_(torch.randn(m, n, generator=gen(2), dtype=F64))
    W0 = base.weight.detach().clone()
    adapter = LowRankAdapter(base, r, scaling=1.0, generator=gen(3))
    chain = BernoulliLoRAChain(
        adapter,
        lambda ps: torch.optim.SGD(ps, lr=gamma),
        p=p,
        link_steps=1,
        sketch=sketch,
        generator=gen(9),
    )
    chain.zero_grad()
    _quadratic_on_adapter(adapter, prob).backward()
    chain.step()  # one inner step, then merge + resample
    W_factor = adapter.base_layer.weight.detach().clone()

    # the same coin and sketch (same generator stream): projected form
    g = gen(9)
    coin = bool(torch.rand((), generator=g) < p)
    sk = sample_sketch(m if coin else n, r, distribution=sketch, generator=g, dtype=F64)
    H = projection_matrix(sk)
    G = prob.grad(W0)
    W_expected = W0 - gamma * (H @ G if coin else G @ H)
    scale = float(W0.abs().max() + gamma * G.abs().max())
    assert torch.allclose(W_factor, W_expected, rtol=0, atol=100 * EPS * scale)

    W = W0.clone().requires_grad_(True)
    opt = BernoulliLoRA([W], lr=gamma, rank=r, p=p, sketch=sketch, generator=gen(9))
    opt.step(prob.closure(W))
    assert torch.allclose(W.detach(), W_expected, rtol=0, atol=100 * EPS * scale)
    # after the link the adapter holds ΔW = 0 again with a fresh frozen factor
    assert float(adapter.delta_weight().abs().max()) == 0.0
    assert chain.links == 2


def test_conv2d_matrix_form_factor_and_projected_agree():
    """Conv2d in matrix form (out, in·kh·kw): the factor form over LowRankConv2dAdapter and
    the projected form on the conv weight take the same step."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False, dtype=F64)
    W0 = conv.weight.detach().clone()
    x = torch.randn(2, 3, 5, 5, generator=gen(4), dtype=F64)
    target = torch.randn(2, 4, 5, 5, generator=gen(5), dtype=F64)
    gamma, r = 0.05, 2

    adapter = LowRankConv2dAdapter(conv, r, generator=gen(6))
    chain = RACLoRAChain(
        adapter, lambda ps: torch.optim.SGD(ps, lr=gamma), link_steps=1, generator=gen(7)
    )
    chain.zero_grad()
    (0.5 * ((adapter(x) - target) ** 2).sum()).backward()
    chain.step()
    W_factor = adapter.base_layer.weight.detach().clone()

    W = W0.clone().requires_grad_(True)

    def closure():
        loss = 0.5 * ((torch.nn.functional.conv2d(x, W, padding=1) - target) ** 2).sum()
        loss.backward()
        return loss

    opt = RACLoRA([W], lr=gamma, rank=r, generator=gen(7))
    opt.step(closure)
    assert W_factor.shape == W.shape == (4, 3, 3, 3)
    scale = float(W0.abs().max())
    assert torch.allclose(W_factor, W.detach(), rtol=0, atol=1e3 * EPS * scale)
    # the update has rank <= r as an (out, in·kh·kw) matrix
    delta = (W.detach() - W0).reshape(4, -1)
    assert int(torch.linalg.matrix_rank(delta)) <= r


def test_chain_trains_only_the_free_factor_and_merges():
    m, n, r = 5, 4, 1
    prob = MatrixQuadratic.random(m, n, generator=gen(8))
    base = nn.Linear(n, m, bias=False, dtype=F64)
    adapter = LowRankAdapter(base, r, generator=gen(1))
    chain = BernoulliLoRAChain(
        adapter, lambda ps: torch.optim.AdamW(ps, lr=1e-2), p=0.5, link_steps=5, generator=gen(2)
    )
    U, S, V = adapter.factors()
    for _ in range(4):
        frozen, free = (U, V) if chain.side == "output" else (V, U)
        assert not frozen.requires_grad and free.requires_grad and not S.requires_grad
        frozen_before = frozen.detach().clone()
        chain.zero_grad()
        _quadratic_on_adapter(adapter, prob).backward()
        chain.step()
        if chain._steps_in_link:  # still inside the link: the frozen factor did not move
            assert torch.equal(frozen.detach(), frozen_before)
    f_before = float(_quadratic_on_adapter(adapter, prob).detach())
    chain.merge()
    assert float(adapter.delta_weight().abs().max()) == 0.0
    f_after = float(_quadratic_on_adapter(adapter, prob).detach())
    assert abs(f_after - f_before) <= 1e-10 * abs(f_before)


# ---------------------------------------------------------------------------- counterexample
@pytest.mark.parametrize("seed", [0, 1])
def test_counterexample_3x3_rank1_step_one_over_L(seed):
    """Strongly convex quadratic over 3×3, rank 1, γ = 1/L: LoRA and chain-of-LoRA diverge
    or stall, asymmetric LoRA stalls, RAC-LoRA and Bernoulli-LoRA reach the optimum."""
    prob = MatrixQuadratic.random(3, 3, condition=5.0, generator=gen(seed))
    W0 = torch.zeros(3, 3, dtype=F64)
    f0 = float(prob.loss(W0))
    lr, steps = 1.0 / prob.smoothness, 200
    for method in ("lora", "cola"):
        _, hist = run_lora_baseline(
            prob,
            W0,
            method=method,
            rank=1,
            lr=lr,
            steps=steps,
            merge_every=10,
            generator=gen(100 + seed),
        )
        assert not hist[-1] < 1e-3 * f0, (method, hist[-1])  # diverged (inf) or stalled
    _, hist = run_lora_baseline(
        prob, W0, method="asymm", rank=1, lr=lr, steps=steps, generator=gen(100 + seed)
    )
    assert hist[-1] > 1e-2 * f0  # stalled at the best point of one fixed rank-1 subspace
    assert abs(hist[-1] - hist[-50]) <= 1e-10 * f0  # ... and does not move any more
    for p in (1.0, 0.0, 0.5):
        W = W0.clone().requires_grad_(True)
        opt = BernoulliLoRA([W], lr=lr, rank=1, p=p, generator=gen(200 + seed))
        for _ in range(steps):
            opt.step(prob.closure(W))
        assert float(prob.loss(W.detach())) <= 1e-10 * f0, p
        assert torch.allclose(W.detach(), prob.W_star, atol=1e-5)


# ---------------------------------------------------------------------------- linear rate vs theory
def test_linear_rate_matches_theory_bound_and_scales_with_rank():
    """E[f(Wᵗ) − f*] ≤ (1 − γ μ λ)ᵗ (f(W⁰) − f*), λ = r/m (RAC-LoRA, γ = 1/L); and a larger
    rank converges faster."""
    m, n, T, runs = 4, 3, 60, 6
    prob = MatrixQuadratic.random(m, n, condition=4.0, generator=gen(21))
    W0 = torch.zeros(m, n, dtype=F64)
    f0 = float(prob.loss(W0))
    lr = 1.0 / prob.smoothness
    finals = {}
    for r in (1, 3):
        gaps = []
        for k in range(runs):
            W = W0.clone().requires_grad_(True)
            opt = RACLoRA([W], lr=lr, rank=r, generator=gen(1000 * r + k))
            for _ in range(T):
                opt.step(prob.closure(W))
            gaps.append(float(prob.loss(W.detach())))
        mean_gap = sum(gaps) / runs
        bound = (1 - lr * prob.strong_convexity * r / m) ** T * f0
        assert mean_gap <= bound, (r, mean_gap, bound)
        finals[r] = mean_gap
    assert finals[3] < 1e-3 * finals[1]


# ---------------------------------------------------------------------------- estimators
class _FakeOracle:
    def __init__(self, cur, prev, full):
        self.cur, self.prev, self.fullg = cur, prev, full
        self.calls = []

    def current(self):
        self.calls.append("current")
        return [t.clone() for t in self.cur]

    def previous(self):
        self.calls.append("previous")
        return [t.clone() for t in self.prev]

    def full(self):
        self.calls.append("full")
        return [t.clone() for t in self.fullg]


def test_estimator_formulas():
    g = gen(0)
    cur, prev, full, mem = ([torch.randn(3, 2, generator=g, dtype=F64)] for _ in range(4))
    o = _FakeOracle(cur, prev, full)
    # PAGE: prob 1 → full gradient; t = 0 (no memory) → full gradient
    assert torch.equal(PAGE(1.0).estimate(o, mem, gen(1))[0], full[0])
    assert torch.equal(PAGE(0.01).estimate(o, None, gen(1))[0], full[0])
    # PAGE recursion: find a seed whose coin says "no full gradient"
    est = PAGE(0.5)
    for s in range(20):
        u = float(torch.rand((), generator=gen(s)))
        if u >= 0.5:
            out = est.estimate(o, mem, gen(s))[0]
            assert torch.allclose(out, mem[0] + cur[0] - prev[0], atol=10 * EPS)
            break
    # MVR: G = cur + (1 − β)(mem − prev); G⁰ = cur
    beta = 0.3
    out = MVR(beta).estimate(o, mem, gen(0))[0]
    assert torch.allclose(out, cur[0] + (1 - beta) * (mem[0] - prev[0]), atol=10 * EPS)
    assert torch.equal(MVR(beta).estimate(o, None, gen(0))[0], cur[0])
    # MVR with noise: the same draw enters both evaluations
    out = MVR(beta, noise_std=0.5).estimate(o, mem, gen(4))[0]
    z = 0.5 * torch.randn(3, 2, generator=gen(4), dtype=F64)
    assert torch.allclose(out, cur[0] + z + (1 - beta) * (mem[0] - prev[0] - z), atol=10 * EPS)
    # SGD noise has the requested scale
    big = [torch.zeros(200, 200, dtype=F64)]
    noisy = SGD(noise_std=0.05).estimate(_FakeOracle(big, big, big), None, gen(2))[0]
    assert abs(float(noisy.std()) - 0.05) < 0.002


def _finite_sum_problem():
    g = gen(5)
    X = torch.randn(200, 12, generator=g, dtype=F64)
    y = X @ torch.randn(12, generator=g, dtype=F64) + 0.1 * torch.randn(200, generator=g, dtype=F64)
    return LinearRegression(X, y, (4, 3))


@pytest.mark.parametrize(
    ("estimator", "kwargs", "tol"),
    [
        ("gd", {}, 1e-12),
        ("page", {"prob": 0.2}, 1e-12),
        ("mvr", {"beta": 0.2}, 1e-2),
        ("sgd", {}, 1e-1),
    ],
)
def test_estimators_converge_on_finite_sum(estimator, kwargs, tol):
    """Bernoulli-LoRA with each estimator on least squares (minibatch 10 of 200);
    variance-reduced PAGE reaches the exact optimum like GD."""
    prob = _finite_sum_problem()
    W = torch.zeros(4, 3, dtype=F64, requires_grad=True)
    g0 = prob.grad_norm_sq(W)
    opt = BernoulliLoRA(
        [W],
        lr=0.5 / prob.smoothness,
        rank=2,
        p=0.5,
        estimator=estimator,
        estimator_kwargs=kwargs,
        generator=gen(3),
    )
    bg = gen(4)
    for _ in range(400):
        batch = None if estimator == "gd" else prob.sample_batch(10, bg)
        opt.step(prob.closure(W, batch), full_closure=prob.closure(W))
    assert prob.grad_norm_sq(W) <= tol * g0, prob.grad_norm_sq(W) / g0


def test_mvr_with_beta_one_is_sgd():
    """β = 1 removes the correction: the trajectory equals SGD's bit for bit."""
    prob = _finite_sum_problem()
    trajs = []
    for est, kw in (("sgd", {}), ("mvr", {"beta": 1.0})):
        W = torch.zeros(4, 3, dtype=F64, requires_grad=True)
        opt = BernoulliLoRA(
            [W], lr=0.1, rank=1, estimator=est, estimator_kwargs=kw, generator=gen(1)
        )
        bg = gen(2)
        for _ in range(20):
            opt.step(prob.closure(W, prob.sample_batch(5, bg)))
        trajs.append(W.detach().clone())
    assert torch.equal(trajs[0], trajs[1])


def test_polyak_step_on_nonsmooth_convex():
    """f(W) = Σ|W − W*| (convex, non-smooth, f* = 0): the Polyak step converges, a
    constant step stalls at a level proportional to it."""
    Wstar = torch.randn(4, 4, generator=gen(0), dtype=F64)

    def closure_for(W):
        def c():
            loss = (W - Wstar).abs().sum()
            loss.backward()
            return loss

        return c

    W = torch.zeros(4, 4, dtype=F64, requires_grad=True)
    f0 = float((W - Wstar).abs().sum())
    opt = BernoulliLoRA([W], lr="polyak", f_star=0.0, rank=2, generator=gen(1))
    for _ in range(400):
        opt.step(closure_for(W))
    f_polyak = float((W.detach() - Wstar).abs().sum())
    W2 = torch.zeros(4, 4, dtype=F64, requires_grad=True)
    opt2 = BernoulliLoRA([W2], lr=0.05, rank=2, generator=gen(1))
    for _ in range(400):
        opt2.step(closure_for(W2))
    f_const = float((W2.detach() - Wstar).abs().sum())
    assert f_polyak <= 1e-4 * f0
    assert f_const > 10 * f_polyak


# ---------------------------------------------------------------------------- determinism
def _trajectory(seed, estimator="mvr", kwargs=None):
    prob = _finite_sum_problem()
    W = torch.zeros(4, 3, dtype=F64, requires_grad=True)
    opt = BernoulliLoRA(
        [W],
        lr=0.05,
        rank=1,
        p=0.5,
        estimator=estimator,
        estimator_kwargs=kwargs or {"beta": 0.5, "noise_std": 0.1},
        generator=gen(seed),
    )
    bg = gen(seed + 1)
    out = []
    for _ in range(15):
        opt.step(prob.closure(W, prob.sample_batch(8, bg)), full_closure=prob.closure(W))
        out.append(W.detach().clone())
    return torch.stack(out)


def test_same_seed_same_trajectory():
    assert torch.equal(_trajectory(7), _trajectory(7))
    assert torch.equal(_trajectory(7, "page", {"prob": 0.3}), _trajectory(7, "page", {"prob": 0.3}))
    assert not torch.equal(_trajectory(7), _trajectory(8))


def test_default_generator_follows_torch_manual_seed():
    def run():
        torch.manual_seed(123)
        W = torch.zeros(3, 3, dtype=F64, requires_grad=True)
        opt = BernoulliLoRA([W], lr=0.5, rank=1)
        for _ in range(5):
            opt.step(lambda: ((W - 1) ** 2).sum().backward())
        return W.detach().clone()

    assert torch.equal(run(), run())


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"p": 1.5}, ValueError, r"p must lie in \[0, 1\]"),
        ({"p": -0.01}, ValueError, r"p must lie in \[0, 1\]"),
        ({"rank": 0}, ValueError, "rank must be a positive int"),
        ({"estimator": "adam"}, ValueError, "estimator must be one of"),
        ({"estimator": "page"}, TypeError, "estimator_kwargs"),
        (
            {"estimator": "page", "estimator_kwargs": {"prob": 0.0}},
            ValueError,
            r"prob must lie in \(0, 1\]",
        ),
        (
            {"estimator": "mvr", "estimator_kwargs": {"beta": 2.0}},
            ValueError,
            r"beta must lie in \(0, 1\]",
        ),
        ({"estimator": "sgd", "estimator_kwargs": {"noise_std": -1.0}}, ValueError, "noise_std"),
        ({"sketch": "rademacher"}, ValueError, "sketch must be one of"),
        ({"lr": -1.0}, ValueError, "lr must be a positive float"),
        ({"lr": "polyak"}, ValueError, "f_star is required"),
        ({"lr": "armijo"}, ValueError, "lr must be a positive float or 'polyak'"),
        ({"sketch": "haar", "rank": 4}, ValueError, r"rank must be <= min\(m, n\)"),
        ({"generator": 3}, TypeError, "generator must be a torch.Generator"),
    ],
)
def test_bad_input(kwargs, exc, match):
    W = torch.zeros(3, 3, requires_grad=True)
    args = {"lr": 0.1, "rank": 1} | kwargs
    with pytest.raises(exc, match=match):
        BernoulliLoRA([W], **args)


def test_bad_input_misc():
    with pytest.raises(ValueError, match="ndim >= 2"):
        BernoulliLoRA([torch.zeros(3, requires_grad=True)], lr=0.1, rank=1)
    with pytest.raises(TypeError, match=r"side=\.\.\., not p"):
        RACLoRA([torch.zeros(3, 3, requires_grad=True)], lr=0.1, rank=1, p=0.5)
    with pytest.raises(ValueError, match="side must be"):
        RACLoRA([torch.zeros(3, 3, requires_grad=True)], lr=0.1, rank=1, side="left")
    with pytest.raises(ValueError, match="estimator must be one of"):
        make_estimator("marina")
    W = torch.zeros(3, 3, requires_grad=True)
    opt = BernoulliLoRA([W], lr=0.1, rank=1, estimator="page", estimator_kwargs={"prob": 0.5})
    with pytest.raises(ValueError, match="closure is required"):
        opt.step()
    with pytest.raises(ValueError, match="full_closure is required"):
        opt.step(lambda: W.sum().backward())
    adapter = LowRankAdapter(nn.Linear(3, 3), 1)
    with pytest.raises(ValueError, match="frozen must be"):
        BernoulliLoRAChain(adapter, lambda ps: torch.optim.SGD(ps, lr=0.1), frozen="sketch")
    with pytest.raises(ValueError, match="link_steps must be"):
        BernoulliLoRAChain(adapter, lambda ps: torch.optim.SGD(ps, lr=0.1), link_steps=0)
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
        BernoulliLoRAChain(adapter, lambda ps: torch.optim.SGD(ps, lr=0.1), p=2)
    with pytest.raises(ValueError, match="no LowRankAdapter"):
        BernoulliLoRAChain(nn.Linear(3, 3), lambda ps: torch.optim.SGD(ps, lr=0.1))


def test_failed_step_leaves_weights_untouched():
    W = torch.ones(3, 3, dtype=F64, requires_grad=True)
    opt = BernoulliLoRA([W], lr=0.1, rank=1, estimator="gd", generator=gen(0))
    W.grad = torch.full((3, 3), float("nan"), dtype=F64)
    with pytest.raises(FloatingPointError):
        opt.step()
    assert torch.equal(W.detach(), torch.ones(3, 3, dtype=F64))
    assert len(opt.state[W]) == 0


def test_float32_step():
    W = torch.zeros(5, 4, requires_grad=True)
    target = torch.randn(5, 4, generator=gen(0))
    opt = BernoulliLoRA([W], lr=1.0, rank=2, sketch="haar", generator=gen(1))
    for _ in range(100):
        opt.step(lambda: (0.5 * ((W - target) ** 2).sum()).backward())
    assert W.dtype == torch.float32
    assert torch.allclose(W.detach(), target, atol=1e-5)
