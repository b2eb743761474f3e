"""Tests for manifold_lowrank.linalg: sign-fixed QR, basis augmentation, rank rules, SVD."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold_lowrank.linalg import (
    RankRule,
    augment_basis,
    check_finite,
    orthonormalize,
    qr_signfix,
    select_rank,
    truncated_svd,
)

EPS = torch.finfo(torch.float64).eps


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", [(7, 3), (5, 5), (4, 6, 2)])
def test_qr_signfix_unique_and_exact(shape):
    a = torch.randn(*shape, dtype=torch.float64, generator=_gen(0))
    q, r = qr_signfix(a)
    torch.testing.assert_close(q @ r, a, atol=50 * EPS * a.abs().max(), rtol=0)
    d = torch.diagonal(r, dim1=-2, dim2=-1)
    assert bool((d >= 0).all())
    # uniqueness: flipping column signs of the input flips Q's columns the same way
    sign = torch.tensor([(-1.0) ** j for j in range(a.shape[-1])], dtype=torch.float64)
    q2, _ = qr_signfix(a * sign)
    k = q2.shape[-1]
    torch.testing.assert_close(q2, q[..., :k] * sign[:k], atol=1e-12, rtol=0)


def test_orthonormalize_is_orthonormal_and_idempotent():
    a = torch.randn(40, 6, dtype=torch.float64, generator=_gen(1))
    q = orthonormalize(a)
    torch.testing.assert_close(q.T @ q, torch.eye(6, dtype=torch.float64), atol=100 * EPS, rtol=0)
    torch.testing.assert_close(orthonormalize(q), q, atol=100 * EPS, rtol=0)


@pytest.mark.parametrize("method", ["householder", "cgs2"])
def test_augment_basis_properties(method):
    u = orthonormalize(torch.randn(30, 4, dtype=torch.float64, generator=_gen(2)))
    x = torch.randn(30, 3, dtype=torch.float64, generator=_gen(3))
    q = augment_basis(u, x, method=method)
    assert q.shape == (30, 3)
    torch.testing.assert_close(q.T @ q, torch.eye(3, dtype=torch.float64), atol=200 * EPS, rtol=0)
    assert (u.T @ q).abs().max() < 200 * EPS
    # range([U Q]) contains x
    b = torch.cat([u, q], 1)
    res = x - b @ (b.T @ x)
    assert res.norm() < 1e3 * EPS * x.norm()


def test_augment_basis_rank_deficient_householder():
    u = orthonormalize(torch.randn(20, 3, dtype=torch.float64, generator=_gen(4)))
    x = u @ torch.randn(3, 2, dtype=torch.float64, generator=_gen(5))  # inside range(U)
    q = augment_basis(u, x)
    torch.testing.assert_close(q.T @ q, torch.eye(2, dtype=torch.float64), atol=200 * EPS, rtol=0)
    assert (u.T @ q).abs().max() < 200 * EPS


def test_augment_basis_bad_input():
    u = torch.zeros(5, 3)
    with pytest.raises(ValueError, match="r \\+ k <= m"):
        augment_basis(u, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="rows"):
        augment_basis(u, torch.zeros(4, 1))
    with pytest.raises(ValueError, match="method"):
        augment_basis(u, torch.zeros(5, 1), method="nope")


def _brute_tail_rank(s: list[float], bound: float) -> int:
    for r in range(len(s) + 1):
        if math.hypot(*s[r:]) <= bound:  # hypot: no underflow for tiny values
            return r
    return len(s)


@settings(max_examples=60, deadline=None)
@given(
    # values whose squares do not underflow relative to the largest (>= 1e-100)
    st.lists(st.one_of(st.just(0.0), st.floats(1e-100, 10.0)), min_size=1, max_size=12),
    st.floats(0.0, 0.99),
    st.integers(0, 3),
)
def test_rtol_rule_matches_definition(values, rtol, min_rank):
    s = sorted(values, reverse=True)
    rule = RankRule(rtol=rtol, min_rank=min_rank)
    r = select_rank(torch.tensor(s, dtype=torch.float64), rule)
    expected = _brute_tail_rank(s, rtol * math.hypot(*s))
    assert r == min(max(expected, min_rank), len(s))


@pytest.mark.parametrize(
    "scale, dtype",
    [(c, torch.float64) for c in (1e-300, 1e-160, 1.0, 1e160, 1e300)]
    + [(c, d) for c in (1e-20, 1.0, 1e20) for d in (torch.float32, torch.bfloat16)],
)
def test_rules_are_scale_invariant_near_under_and_overflow(scale, dtype):
    """σ and c·σ get the same rank (rtol; atol scaled along) even where σ² under- or
    overflows in float64; float32/bfloat16 values are widened before squaring."""
    base = [3.0, 2.0, 1.0, 0.5, 0.25, 0.0]
    s = torch.tensor([v * scale for v in base], dtype=dtype)
    for rtol in (0.0, 0.05, 0.2, 0.5, 0.9):
        exp = _brute_tail_rank(base, rtol * math.hypot(*base))
        assert select_rank(s, RankRule(rtol=rtol, min_rank=0)) == exp, rtol
    for atol in (0.1, 0.6, 2.0):
        exp = _brute_tail_rank(base, atol)
        got = select_rank(s, RankRule(atol=atol * scale, min_rank=0))
        assert got == exp, atol


def test_rules_include_last_singular_value_and_can_keep_all():
    # the DLRT/GeoLoRA code drops the last value from the tail norm; we do not
    s = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert RankRule(rtol=0.1).select(s) == 4
    assert RankRule(rtol=0.51).select(s) == 3  # tail ||(1)|| = 1 <= 0.51*2
    assert RankRule(atol=1.0).select(s) == 3
    assert RankRule(atol=1.0, rtol=0.1).select(s) == 4  # both bounds must hold
    assert RankRule(rank=2).select(s) == 2
    assert RankRule(rtol=0.9, min_rank=2).select(s) == 2
    assert RankRule(rtol=0.0, max_rank=3).select(s) == 3
    assert RankRule(rank=9).select(s) == 4  # never more than available
    assert RankRule(rtol=0.5, min_rank=0).select(torch.zeros(3)) == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rtol": 1.0}, "rtol must be in \\[0, 1\\)"),
        ({"rtol": -0.1}, "rtol"),
        ({"atol": -1.0}, "atol must be >= 0"),
        ({"rank": -1}, "rank must be an integer >= 0"),
        ({"rank": 2, "rtol": 0.1}, "exclusive"),
        ({}, "give one of"),
        ({"rtol": 0.1, "min_rank": 3, "max_rank": 2}, "max_rank"),
        ({"rtol": 0.1, "max_rank": 0}, "max_rank must be an integer >= 1"),
        ({"rtol": 0.1, "min_rank": -1}, "min_rank"),
    ],
)
def test_rank_rule_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RankRule(**kwargs)


def test_truncated_svd_eckart_young():
    g = _gen(6)
    a = torch.randn(30, 20, dtype=torch.float64, generator=g)
    u, s, v = truncated_svd(a, RankRule(rank=5))
    full = torch.linalg.svdvals(a)
    err = (a - u @ torch.diag(s) @ v.T).norm()
    torch.testing.assert_close(err, full[5:].norm(), atol=1e3 * EPS * full[0], rtol=0)
    torch.testing.assert_close(u.T @ u, torch.eye(5, dtype=torch.float64), atol=100 * EPS, rtol=0)
    # relative tolerance bounds the relative error
    u, s, v = truncated_svd(a, RankRule(rtol=0.3))
    assert (a - u @ torch.diag(s) @ v.T).norm() <= 0.3 * a.norm() * (1 + 1e-12)


def test_truncated_svd_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        truncated_svd(torch.zeros(3), RankRule(rank=1))
    with pytest.raises(TypeError, match="RankRule"):
        truncated_svd(torch.zeros(3, 3), 2)  # type: ignore[arg-type]


def test_check_finite():
    check_finite("x", torch.ones(3))
    with pytest.raises(FloatingPointError, match="grad contains NaN"):
        check_finite("grad", torch.ones(2), torch.tensor([float("nan")]))


def test_all_finite_skips_integer_tensors_and_check_finite_uses_it():
    from manifold_lowrank.linalg import all_finite, check_finite

    ints = [torch.arange(4), torch.tensor([True, False]), torch.empty(0)]
    assert all_finite(ints)
    bad = torch.tensor([1.0, float("nan")], dtype=torch.float64)
    assert not all_finite([*ints, bad])
    check_finite("x", *ints, torch.ones(3))
    with pytest.raises(FloatingPointError, match="x contains NaN or Inf"):
        check_finite("x", torch.ones(3), bad)
