"""The theory problem suite: one consistent oracle, correct constants, known optima."""

from __future__ import annotations

import pytest
import torch

from manifold_lowrank.problems import (
    LinearRegression,
    LogisticRegression,
    MatrixQuadratic,
    make_regression_pair,
    run_lora_baseline,
)

F64 = torch.float64
EPS = torch.finfo(F64).eps


def gen(seed):
    return torch.Generator().manual_seed(seed)


def _linreg(reg=0.0):
    g = gen(0)
    X = torch.randn(60, 12, generator=g, dtype=F64)
    y = torch.randn(60, generator=g, dtype=F64)
    return LinearRegression(X, y, (4, 3), reg=reg)


def _logreg():
    g = gen(1)
    X = torch.randn(80, 5, generator=g, dtype=F64)
    y = torch.randint(0, 3, (80,), generator=g)
    return LogisticRegression(X, y, 3, l2=0.1)


PROBLEMS = {
    "quadratic": lambda: MatrixQuadratic.random(3, 4, condition=7.0, generator=gen(2)),
    "linreg": _linreg,
    "linreg_nonconvex": lambda: _linreg(reg=0.5),
    "logreg": _logreg,
}


def _autograd_grad(prob, W, batch=None):
    W = W.clone().requires_grad_(True)
    prob.loss(W, batch).backward()
    return W.grad


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_analytic_gradient_equals_autograd(name):
    prob = PROBLEMS[name]()
    W = torch.randn(prob.shape, generator=gen(3), dtype=F64)
    ga, gb = prob.grad(W), _autograd_grad(prob, W)
    assert torch.allclose(ga, gb, rtol=0, atol=100 * EPS * float(gb.abs().max() + 1))
    if prob.n_samples is not None:
        batch = prob.sample_batch(7, gen(4))
        ga, gb = prob.grad(W, batch), _autograd_grad(prob, W, batch)
        assert torch.allclose(ga, gb, rtol=0, atol=100 * EPS * float(gb.abs().max() + 1))


@pytest.mark.parametrize("name", ["linreg", "linreg_nonconvex", "logreg"])
def test_full_oracle_is_the_mean_of_the_minibatch_oracles(name):
    """One consistent oracle: over a partition into equal batches, the mean of the batch
    losses and gradients is exactly the full loss and gradient (so E f_batch = f)."""
    prob = PROBLEMS[name]()
    W = torch.randn(prob.shape, generator=gen(5), dtype=F64)
    perm = torch.randperm(prob.n_samples, generator=gen(6))
    parts = perm.reshape(-1, 10 if prob.n_samples % 10 == 0 else 4)
    loss = sum(prob.loss(W, b) for b in parts) / len(parts)
    grad = sum(prob.grad(W, b) for b in parts) / len(parts)
    assert abs(float(loss - prob.loss(W))) <= 100 * EPS * abs(float(prob.loss(W)))
    assert torch.allclose(grad, prob.grad(W), rtol=0, atol=100 * EPS * float(grad.abs().max()))


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_smoothness_and_strong_convexity_bound_the_hessian(name):
    prob = PROBLEMS[name]()
    W = torch.randn(prob.shape, generator=gen(7), dtype=F64)
    H = torch.autograd.functional.hessian(lambda w: prob.loss(w.reshape(prob.shape)), W.reshape(-1))
    ev = torch.linalg.eigvalsh(0.5 * (H + H.T))
    assert float(ev[-1]) <= prob.smoothness * (1 + 1e-10)
    assert float(ev[0]) >= prob.strong_convexity * (1 - 1e-10) - 1e-12
    if name == "logreg":
        assert torch.allclose(prob.hessian(W), H, rtol=0, atol=1e3 * EPS)
    if name in ("quadratic", "linreg"):  # exact constants
        assert float(ev[-1]) == pytest.approx(prob.smoothness, rel=1e-10)
        assert float(ev[0]) == pytest.approx(prob.strong_convexity, rel=1e-8)


@pytest.mark.parametrize("name", ["quadratic", "linreg", "logreg"])
def test_optimum_is_stationary(name):
    prob = PROBLEMS[name]()
    W_star, f_star = prob.optimum()
    assert float(prob.grad(W_star).norm()) <= 1e-8
    assert f_star == pytest.approx(float(prob.loss(W_star)), rel=1e-12)
    W = W_star + 1e-3 * torch.randn(prob.shape, generator=gen(8), dtype=F64)
    assert float(prob.loss(W)) > f_star


def test_nonconvex_linreg_has_no_closed_form_optimum():
    assert _linreg(reg=0.5).optimum() is None
    assert _linreg(reg=0.5).strong_convexity == 0.0


def test_make_regression_pair():
    pre, ft, W0 = make_regression_pair(4, 4, n_samples=200, finetune_fraction=0.3, seed=1)
    assert pre.shape == ft.shape == (4, 4)
    assert ft.n_samples == 60 and pre.n_samples == 140
    assert float(pre.grad(W0).norm()) <= 1e-8  # W0 is the pre-training optimum
    assert float(ft.grad(W0).norm()) > 1e-3  # ... but not the fine-tuning optimum
    _, ft_nc, _ = make_regression_pair(4, 4, n_samples=200, reg="L", seed=1)
    assert ft_nc.reg == pytest.approx(ft_nc.data_smoothness)
    # deterministic
    _, ft2, W02 = make_regression_pair(4, 4, n_samples=200, finetune_fraction=0.3, seed=1)
    assert torch.equal(ft.X, ft2.X)
    assert torch.allclose(W0, W02, rtol=0, atol=1e-12)


def test_logistic_from_sklearn():
    prob = LogisticRegression.from_sklearn(n_samples=120, n_features=6, n_classes=3, seed=2)
    assert prob.shape == (3, 6) and prob.n_samples == 120
    assert prob.strong_convexity == prob.l2 > 0


def test_lora_baselines_shapes_and_rank():
    prob = MatrixQuadratic.random(4, 3, generator=gen(9))
    W0 = torch.zeros(4, 3, dtype=F64)
    W, hist = run_lora_baseline(prob, W0, method="lora", rank=1, lr=0.01, steps=5, generator=gen(1))
    assert len(hist) == 5 and W.shape == (4, 3)
    assert int(torch.linalg.matrix_rank(W - W0)) <= 1  # plain LoRA never exceeds rank r
    W, _ = run_lora_baseline(
        prob, W0, method="cola", rank=1, lr=0.01, steps=6, merge_every=2, generator=gen(1)
    )
    assert int(torch.linalg.matrix_rank(W - W0)) <= 3


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: _linreg().loss(torch.zeros(3, 4, dtype=F64)), ValueError, "W must have shape"),
        (lambda: _linreg().sample_batch(0, None), ValueError, "batch_size must lie in"),
        (
            lambda: MatrixQuadratic.random(2, 2).loss(
                torch.zeros(2, 2, dtype=F64), torch.arange(1)
            ),
            ValueError,
            "batch must be None",
        ),
        (lambda: MatrixQuadratic.random(2, 2, condition=0.5), ValueError, "condition must be"),
        (
            lambda: LinearRegression(torch.zeros(3, 4), torch.zeros(3), (3, 3)),
            ValueError,
            "does not match",
        ),
        (
            lambda: LogisticRegression(torch.zeros(3, 2), torch.tensor([0, 1, 5]), 3),
            ValueError,
            "labels",
        ),
        (
            lambda: run_lora_baseline(
                MatrixQuadratic.random(2, 2),
                torch.zeros(2, 2, dtype=F64),
                method="dora",
                rank=1,
                lr=0.1,
                steps=1,
            ),
            ValueError,
            "method must be",
        ),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
