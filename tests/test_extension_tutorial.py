"""The extension tutorial's claim, tested: a manifold written outside the package
(``tutorials/plot_custom_manifold.py``: fixed-rank PSD matrices ``U D Uᵀ``) passes the
conformance kit and the library's optimizers solve a problem with a known optimum on it.

The class and helpers are taken from the tutorial file itself: its top-level imports,
functions and classes are executed (not the tutorial's cells, which make plots), so the
code under test is exactly the code the tutorial shows.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any

import geoopt
import pytest
import torch

from manifold_lowrank.manifolds import LowRankManifold
from manifold_lowrank.optim import RiemannianAdam, RiemannianSGD
from manifold_lowrank.testing import check_manifold

TUTORIAL = Path(__file__).resolve().parents[1] / "tutorials" / "plot_custom_manifold.py"
EPS64 = torch.finfo(torch.float64).eps


def _load_definitions(path: Path) -> dict[str, Any]:
    """Execute the imports, functions and classes of a tutorial (not its cells)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    keep = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names]
            module = getattr(node, "module", None) or ""
            if "matplotlib" in module or any("matplotlib" in n for n in names):
                continue
            keep.append(node)
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            keep.append(node)
    namespace: dict[str, Any] = {"__name__": "plot_custom_manifold_definitions"}
    code = compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec")
    exec(code, namespace)
    return namespace


@pytest.fixture(scope="module")
def tut() -> dict[str, Any]:
    return _load_definitions(TUTORIAL)


def test_tutorial_defines_a_library_manifold(tut: dict[str, Any]) -> None:
    M = tut["PSDFixedRank"](7, 2)
    assert isinstance(M, LowRankManifold) and isinstance(M, geoopt.Manifold)
    assert M.dim == 7 * 2 - 1 and M.shape == (9, 2)
    with pytest.raises(ValueError, match="r \\(rank\\)"):
        tut["PSDFixedRank"](4, 5)
    with pytest.raises(TypeError, match="n must be an int"):
        tut["PSDFixedRank"](4.0, 2)


@pytest.mark.parametrize(("n", "r"), [(12, 3), (5, 5), (6, 4)])
def test_check_manifold_passes(tut: dict[str, Any], n: int, r: int) -> None:
    # (5, 5): full rank, the open cone of SPD matrices; (6, 4): n < 2r in the retraction.
    report = check_manifold(tut["PSDFixedRank"](n, r), seed=n + r)
    assert report.passed
    assert not report.skipped, [c.name for c in report.skipped]
    assert report["dim.consistent"].message == f"rank(proju) = dim = {n * r - r * (r - 1) // 2}"


def test_check_manifold_float32_smoke(tut: dict[str, Any]) -> None:
    report = check_manifold(tut["PSDFixedRank"](10, 3), dtype=torch.float32, seed=3)
    assert report.passed


def test_adam_step_stays_tangent(tut: dict[str, Any]) -> None:
    """RiemannianAdam divides by ``component_inner``: blockwise constant → still tangent."""
    M = tut["PSDFixedRank"](20, 3)
    gen = torch.Generator().manual_seed(0)
    x = geoopt.ManifoldParameter(M.random(dtype=torch.float64, generator=gen), manifold=M)
    A = torch.randn(20, 20, dtype=torch.float64, generator=gen)
    opt = RiemannianAdam([x], lr=0.05)
    tol = 100 * EPS64 * math.sqrt(x.numel())
    for _ in range(5):
        opt.zero_grad()
        (0.5 * (M.embed(x) - A).square().sum()).backward()
        opt.step()
        assert M.check_point_on_manifold(x.detach(), atol=tol, rtol=tol)
        m = opt.state[x]["exp_avg"]
        ok, reason = M.check_vector_on_tangent(x.detach(), m, explain=True, atol=tol, rtol=tol)
        assert ok, reason


def test_weight_decay_goes_through_the_scale_point_hook(tut: dict[str, Any]) -> None:
    """With a zero gradient, one step of decoupled weight decay maps X to (1 − ηλ)X."""
    M = tut["PSDFixedRank"](9, 2)
    gen = torch.Generator().manual_seed(4)
    x0 = M.random(dtype=torch.float64, generator=gen)
    x = geoopt.ManifoldParameter(x0.clone(), manifold=M)
    opt = RiemannianSGD([x], lr=0.1, weight_decay=2.0)
    x.grad = torch.zeros_like(x)
    opt.step()
    X0 = M.embed(x0)
    tol = 100 * EPS64 * float(torch.linalg.matrix_norm(X0))
    torch.testing.assert_close(M.embed(x.detach()), 0.8 * X0, atol=tol, rtol=0)


def test_rsgd_reaches_the_eigen_truncation_at_the_predicted_rate(tut: dict[str, Any]) -> None:
    """Nearest rank-r PSD matrix to an RBF kernel matrix of real data (digits).

    Riemannian GD with step 1 is a subspace iteration: near the optimum the error
    ``E`` of the basis evolves as ``E_ij ← (λ_i / λ_j) E_ij`` (i > r ≥ j), so
    ``‖X_k − X⋆‖`` contracts by at most ``ρ = λ_{r+1}/λ_r`` per step. The optimum itself
    is determined to ``O(ε ‖A‖ / (λ_r − λ_{r+1}))`` (eigenspace conditioning).
    """
    pytest.importorskip("sklearn")
    from manifold_lowrank.datasets import load_digits

    torch.manual_seed(0)
    dtype = torch.float64
    feats = load_digits(dtype=dtype, test_fraction=0.2, seed=0).X_train[:150]
    gamma = 1.0 / (feats.shape[1] * float(feats.var()))
    A = torch.exp(-gamma * torch.cdist(feats, feats).square())
    A = A / torch.linalg.matrix_norm(A, ord=2)
    n, r = A.shape[0], 4
    lam = torch.linalg.eigvalsh(A).flip(0)
    rho = float(lam[r].abs() / lam[r - 1])
    assert rho < 0.9  # the problem has a usable gap
    X_star, f_star = tut["eigen_truncation"](A, r)
    assert math.isclose(f_star, 0.5 * float(lam[r:].square().sum()), rel_tol=1e-10)

    tol = 100 * EPS64 * math.sqrt(n) / float(lam[r - 1] - lam[r])
    steps = math.ceil(math.log(tol / 10) / math.log(rho)) + 15  # + burn-in from a random start
    M = tut["PSDFixedRank"](n, r)
    x0 = M.random(dtype=dtype, generator=torch.Generator().manual_seed(1))

    errs: list[float] = []

    def make_opt(params: list[torch.Tensor]) -> RiemannianSGD:
        return RiemannianSGD(params, lr=1.0)

    x = geoopt.ManifoldParameter(x0.clone(), manifold=M)
    opt = make_opt([x])
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (M.embed(x) - A).square().sum()).backward()
        opt.step()
        errs.append(float(torch.linalg.norm(M.embed(x.detach()) - X_star) / X_star.norm()))

    assert errs[-1] <= tol, (errs[-1], tol, steps)
    assert M.check_point_on_manifold(x.detach(), atol=tol, rtol=tol)
    # the asymptotic rate: over 10-step windows in the linear regime, at most ρ¹⁰ (+10 %)
    window = [k for k in range(len(errs) - 10) if 1e-10 < errs[k + 10] and errs[k] < 1e-3]
    assert len(window) >= 10
    for k in window:
        assert errs[k + 10] / errs[k] <= 1.1 * rho**10, (k, errs[k + 10] / errs[k], rho**10)

    # the tutorial's own driver gives the same answer
    x_fit, losses = tut["fit"](M, A, x0, make_opt, steps)
    assert torch.allclose(x_fit, x.detach(), atol=tol, rtol=0)
    assert abs(losses[-1] - f_star) <= tol * f_star + 100 * EPS64 * n


def test_completion_recovers_the_matrix(tut: dict[str, Any]) -> None:
    """PSD matrix completion of a synthetic rank-3 matrix from 40 % of its entries."""
    gen = torch.Generator().manual_seed(5)
    dtype = torch.float64
    n, r, p = 60, 3, 0.4
    M = tut["PSDFixedRank"](n, r)
    Y = torch.randn(n, r, dtype=dtype, generator=gen)
    X_star = Y @ Y.T
    upper = torch.triu(torch.rand(n, n, dtype=dtype, generator=gen) < p)
    mask = (upper | upper.T).to(dtype)
    X_init, _ = tut["eigen_truncation"](mask * X_star / p, r)
    lam0, V0 = torch.linalg.eigh(X_init)
    x = geoopt.ManifoldParameter(
        M.pack((V0[:, -r:].contiguous(), torch.diag(lam0[-r:]))), manifold=M
    )
    opt = RiemannianSGD([x], lr=0.5, momentum=0.5)  # f/p is scale-free: Hessian ≈ I on T_X
    for _ in range(250):
        opt.zero_grad()
        (0.5 * (mask * (M.embed(x) - X_star)).square().sum() / p).backward()
        opt.step()
    err = float(torch.linalg.norm(M.embed(x.detach()) - X_star) / X_star.norm())
    lam = torch.linalg.eigvalsh(X_star)[-r:]
    tol = 100 * EPS64 * math.sqrt(n) * float(lam[-1] / lam[0])  # rounding × cond(X⋆ on range)
    assert err <= tol, (err, tol)
