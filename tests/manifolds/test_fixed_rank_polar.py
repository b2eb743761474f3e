"""Code paths of :meth:`FixedRank.retr_polar`: the Gram (eigendecomposition) fast path and
the Householder-QR fallback give the same point — the truncated SVD of ``X + ξ`` — with
orthonormal factors; each input class takes the documented path."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import manifold_lowrank.manifolds.fixed_rank as fr
from manifold_lowrank.manifolds import FixedRank

F64 = torch.float64
EPS = torch.finfo(F64).eps
# The Gram path is orthonormal to O(ε κ) with κ ≤ _POLAR_KAPPA_MAX; Householder to O(ε).
ORTH = 2 * fr._POLAR_KAPPA_MAX * EPS  # per column of r; ≈ 2.8e-14 (≪ the 1e-12·r budget)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


@pytest.fixture
def paths(monkeypatch):
    """Counts the sides that took each path: {"gram": k, "qr": k}."""
    calls = {"gram": 0, "qr": 0}
    gram, qr = fr._basis_from_gram, fr._basis_from_qr

    def spy_gram(*a):
        calls["gram"] += 1
        return gram(*a)

    def spy_qr(*a):
        calls["qr"] += 1
        return qr(*a)

    monkeypatch.setattr(fr, "_basis_from_gram", spy_gram)
    monkeypatch.setattr(fr, "_basis_from_qr", spy_qr)
    return calls


def householder_only(M: FixedRank, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """retr_polar with the Gram fast path refused (reference computation)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fr, "_gram_ok", lambda stats: (False, False))
        return M.retr_polar(x, u)


def truncated_svd(M: FixedRank, x: torch.Tensor, u: torch.Tensor):
    Y = M.embed(x) + M.embed_tangent(x, u)
    Uf, s, Vh = torch.linalg.svd(Y)
    r = M.r
    return Uf[..., :r] @ torch.diag_embed(s[..., :r]) @ Vh[..., :r, :], s[..., :r]


def orth_err(M: FixedRank, y: torch.Tensor) -> float:
    U, _, V = M.unpack(y)
    eye = torch.eye(M.r, dtype=y.dtype)
    return max(float((U.mT @ U - eye).abs().max()), float((V.mT @ V - eye).abs().max()))


def check_is_truncated_svd(M, x, u, y, tol):
    best, s = truncated_svd(M, x, u)
    assert rel(M.embed(y), best) < tol
    S = M.unpack(y).S
    assert torch.allclose(S, torch.diag_embed(s), rtol=tol, atol=tol * float(s.max()))


def test_common_case_takes_the_gram_path_on_both_sides(paths):
    M = FixedRank(60, 40, 5)
    g = gen(1)
    x = M.random(dtype=F64, generator=g)
    u = M.random_tangent(x, generator=g)
    y = M.retr_polar(x, u)
    assert paths == {"gram": 2, "qr": 0}
    check_is_truncated_svd(M, x, u, y, 100 * EPS * M.r)
    assert orth_err(M, y) < ORTH * M.r


def test_gram_and_householder_paths_give_the_same_point():
    M = FixedRank(50, 35, 6)
    g = gen(2)
    x = M.random(dtype=F64, generator=g)
    for scale in (1e-8, 1e-3, 1.0, 1e3):
        u = scale * M.random_tangent(x, generator=g)
        a, b = M.retr_polar(x, u), householder_only(M, x, u)
        X = M.embed(b)
        assert rel(M.embed(a), X) < 100 * EPS * M.r, scale
        # same singular values, same subspaces (singular vectors agree up to sign)
        Ua, Sa, Va = M.unpack(a)
        Ub, Sb, Vb = M.unpack(b)
        assert torch.allclose(Sa, Sb, rtol=100 * EPS * M.r, atol=0)
        assert float((Ua @ Ua.mT - Ub @ Ub.mT).norm()) < 1e3 * EPS * M.r
        assert float((Va @ Va.mT - Vb @ Vb.mT).norm()) < 1e3 * EPS * M.r


@pytest.mark.parametrize("which", ["Up", "Vp", "both"])
def test_zero_direction_takes_the_gram_path_and_is_exact(paths, which):
    """U_p = 0 (or V_p = 0): PᵀP = 0 exactly, N is empty, nothing is lost."""
    M = FixedRank(30, 25, 4)
    g = gen(3)
    x = M.random(dtype=F64, generator=g)
    u = M.random_tangent(x, generator=g)
    Up, _, Vp = M.unpack_tangent(u)
    if which in ("Up", "both"):
        Up.zero_()
    if which in ("Vp", "both"):
        Vp.zero_()
    y = M.retr_polar(x, u)
    assert paths == {"gram": 2, "qr": 0}
    check_is_truncated_svd(M, x, u, y, 100 * EPS * M.r)
    assert orth_err(M, y) < ORTH * M.r
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("scale", [1e-8, 1.0, 1e4])
def test_rank_deficient_direction_falls_back_and_stays_exact(paths, rank, scale):
    M = FixedRank(30, 25, 4)
    g = gen(4)
    x = M.random(dtype=F64, generator=g)
    U = M.unpack(x).U
    a = torch.randn(30, rank, dtype=F64, generator=g) @ torch.randn(rank, 4, dtype=F64, generator=g)
    Up = scale * (a - U @ (U.mT @ a))
    Vp = 0.3 * M.unpack_tangent(M.random_tangent(x, generator=g)).Vp
    Mm = 0.1 * torch.randn(4, 4, dtype=F64, generator=g)
    u = M.pack_tangent((Up, Mm, Vp))
    y = M.retr_polar(x, u)
    assert paths == {"gram": 1, "qr": 1}  # V side fast, U side (rank < r) Householder
    check_is_truncated_svd(M, x, u, y, 100 * EPS * M.r * max(1.0, scale))
    assert orth_err(M, y) < 20 * EPS * M.r


@pytest.mark.parametrize(("cond", "path"), [(4.0, "gram"), (1e3, "qr"), (1e7, "qr")])
def test_conditioning_of_the_direction_selects_the_path(paths, cond, path):
    """κ(U_pᵀU_p) = cond(U_p)²: 16 ≤ 64 → Gram path; 1e6, 1e14 → Householder."""
    M = FixedRank(40, 30, 4)
    g = gen(5)
    x = M.random(dtype=F64, generator=g)
    u = M.random_tangent(x, generator=g)
    U = M.unpack(x).U
    Q = torch.linalg.qr(torch.randn(40, 4, dtype=F64, generator=g)).Q
    Q = Q - U @ (U.mT @ Q)
    Q = torch.linalg.qr(Q).Q
    W = torch.linalg.qr(torch.randn(4, 4, dtype=F64, generator=g)).Q
    Up = M.unpack_tangent(u).Up
    Up.copy_(0.5 * Q @ torch.diag(torch.logspace(0, -math.log10(cond), 4, dtype=F64)) @ W)
    Up.copy_(Up - U @ (U.mT @ Up))
    y = M.retr_polar(x, u)
    assert paths[path] >= 1
    if path == "qr":
        assert paths == {"gram": 1, "qr": 1}
    else:
        assert paths == {"gram": 2, "qr": 0}
    check_is_truncated_svd(M, x, u, y, 100 * EPS * M.r)
    assert orth_err(M, y) < ORTH * M.r


def test_small_gauge_component_stays_on_the_gram_path(paths):
    """A non-gauged u (UᵀU_p ≠ 0, small) is read as Z(u) exactly on the fast path."""
    M = FixedRank(40, 30, 4)
    g = gen(6)
    x = M.random(dtype=F64, generator=g)
    u = M.random_tangent(x, generator=g)
    U, _, V = M.unpack(x)
    Up, _, Vp = M.unpack_tangent(u)
    Up.add_(0.05 * U @ torch.randn(4, 4, dtype=F64, generator=g))
    Vp.add_(0.05 * V @ torch.randn(4, 4, dtype=F64, generator=g))
    y = M.retr_polar(x, u)
    assert paths == {"gram": 2, "qr": 0}
    check_is_truncated_svd(M, x, u, y, 100 * EPS * M.r)
    assert rel(M.embed(y), M.embed(householder_only(M, x, M.proju(x, u)))) < 100 * EPS * M.r


def test_batch_mixing_zero_and_regular_directions_equals_the_loop(paths):
    M = FixedRank(20, 16, 3)
    g = gen(7)
    x = M.random(3, dtype=F64, generator=g)
    u = M.random_tangent(x, generator=g)
    M.unpack_tangent(u).Up[1].zero_()
    y = M.retr_polar(x, u)
    assert paths["qr"] == 0
    for k in range(3):
        assert rel(M.embed(y[k]), M.embed(M.retr_polar(x[k], u[k]))) < 100 * EPS
    assert orth_err(M, y) < ORTH * M.r


def test_overflowing_gram_is_not_mistaken_for_a_non_finite_tangent(paths):
    """float32 U_p with entries 1e20: U_pᵀU_p overflows, U_p is finite → Householder."""
    M = FixedRank(20, 16, 3)
    g = gen(8)
    x = M.random(dtype=torch.float32, generator=g)
    u = M.random_tangent(x, generator=g)
    M.unpack_tangent(u).Up.mul_(1e20)
    y = M.retr_polar(x, u)
    assert paths["qr"] == 1
    assert torch.isfinite(y).all()
    assert orth_err(M, y) < 1e-5
    u[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="Up block"):
        M.retr_polar(x, u)


def test_drifted_point_is_reorthonormalised_on_the_gram_path(paths):
    M = FixedRank(40, 30, 4)
    g = gen(9)
    x = M.random(dtype=F64, generator=g)
    u = 0.5 * M.random_tangent(x, generator=g)
    U, _, V = M.unpack(x)
    U.add_(1e-7 * torch.randn(40, 4, dtype=F64, generator=g))
    V.add_(1e-7 * torch.randn(30, 4, dtype=F64, generator=g))
    y = M.retr_polar(x, u)
    assert paths == {"gram": 2, "qr": 0}
    check_is_truncated_svd(M, x, u, y, 100 * EPS * M.r)
    assert orth_err(M, y) < ORTH * M.r


@settings(max_examples=25, deadline=None)
@given(
    r=st.integers(1, 5),
    dm=st.integers(0, 25),
    dn=st.integers(0, 25),
    log_scale=st.sampled_from([-6.0, -2.0, 0.0, 1.0, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_property_both_paths_are_the_truncated_svd(r, dm, dn, log_scale, seed):
    m, n = r + dm, r + dn  # includes m < 2r (Householder only) and r = min(m, n)
    M = FixedRank(m, n, r)
    g = gen(seed)
    x = M.random(dtype=F64, generator=g)
    u = M.random_tangent(x, generator=g)
    u = (10.0**log_scale) * u / M.norm(x, u)
    a, b = M.retr_polar(x, u), householder_only(M, x, u)
    scale = max(1.0, 10.0**log_scale)
    best, s = truncated_svd(M, x, u)
    for y in (a, b):
        assert rel(M.embed(y), best) < 200 * EPS * r * scale
        assert orth_err(M, y) < ORTH * r
        S = M.unpack(y).S
        assert torch.equal(S, torch.diag_embed(torch.diagonal(S)))
        assert torch.allclose(torch.diagonal(S), s, rtol=200 * EPS * r * scale, atol=0)
