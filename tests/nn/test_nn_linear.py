"""LowRankLinear and its autograd function: gradients, projected gradients, rank changes."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from manifold_lowrank.manifolds import FixedRankPoint, ProjectedGradients
from manifold_lowrank.nn import LowRankLinear, low_rank_linear

EPS64 = torch.finfo(torch.float64).eps


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, factor: float = 100.0) -> None:
    actual, expected = actual.detach(), expected.detach()
    scale = max(float(expected.abs().max()), 1.0)
    tol = factor * torch.finfo(expected.dtype).eps * scale
    err = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert actual.shape == expected.shape
    assert err <= tol, f"max error {err:.3e} > {tol:.3e}"


def _loss(y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    # non-linear, so δy depends on the output
    return (y * c).sum() + 0.5 * y.square().sum()


def _dense_reference(layer: LowRankLinear, x: torch.Tensor, c: torch.Tensor, scaling=1.0):
    """Autograd of the dense product: grads of U, S, V, x, b and G = ∂L/∂W."""
    U, S, V = (t.detach().clone().requires_grad_() for t in layer.point())
    xr = x.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_() if layer.bias is not None else None
    W = U @ S @ V.T
    W.retain_grad()
    y = scaling * (xr @ W.T)
    if b is not None:
        y = y + b
    _loss(y, c).backward()
    G = W.grad
    return {
        "U": U.grad,
        "S": S.grad,
        "V": V.grad,
        "x": xr.grad,
        "b": b.grad if b is not None else None,
        "G": G,
    }


@pytest.mark.parametrize("lead", [(), (5,), (2, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_gradients_match_dense_autograd(lead, bias):
    m, n, r = 7, 9, 3
    layer = LowRankLinear(n, m, r, bias=bias, dtype=torch.float64, generator=_gen(0))
    g = _gen(1)
    x = torch.randn(*lead, n, dtype=torch.float64, generator=g, requires_grad=True)
    c = torch.randn(*lead, m, dtype=torch.float64, generator=g)
    y = layer(x)
    assert y.shape == (*lead, m)
    _loss(y, c).backward()
    ref = _dense_reference(layer, x, c)
    _assert_close(layer.U.grad, ref["U"])
    _assert_close(layer.S.grad, ref["S"])
    _assert_close(layer.V.grad, ref["V"])
    _assert_close(x.grad, ref["x"])
    if bias:
        _assert_close(layer.bias.grad, ref["b"])
    U, _, V = layer.point()
    G = ref["G"]
    pg = layer.projected_grads
    assert isinstance(pg, ProjectedGradients)
    _assert_close(pg.GV, G @ V)
    _assert_close(pg.UtGV, U.T @ G @ V)
    _assert_close(pg.GtU, G.T @ U)


@settings(max_examples=15, deadline=None)
@given(
    m=st.integers(1, 12),
    n=st.integers(1, 12),
    batch=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_projected_grads_property(m, n, batch, seed, data):
    r = data.draw(st.integers(1, min(m, n)))
    layer = LowRankLinear(n, m, r, dtype=torch.float64, generator=_gen(seed))
    g = _gen(seed + 1)
    x = torch.randn(batch, n, dtype=torch.float64, generator=g)
    c = torch.randn(batch, m, dtype=torch.float64, generator=g)
    _loss(layer(x), c).backward()
    ref = _dense_reference(layer, x, c)
    U, _, V = layer.point()
    pg = layer.projected_grads
    _assert_close(pg.GV, ref["G"] @ V)
    _assert_close(pg.UtGV, U.T @ ref["G"] @ V)
    _assert_close(pg.GtU, ref["G"].T @ U)
    _assert_close(layer.S.grad, ref["S"])


def test_projected_grads_accumulate_like_grad():
    layer = LowRankLinear(6, 5, 2, dtype=torch.float64, generator=_gen(0))
    g = _gen(3)
    xs = [torch.randn(4, 6, dtype=torch.float64, generator=g) for _ in range(2)]
    cs = [torch.randn(4, 5, dtype=torch.float64, generator=g) for _ in range(2)]
    singles = []
    for x, c in zip(xs, cs):
        layer.clear_projected_grads()
        _loss(layer(x), c).backward()
        singles.append(layer.projected_grads)
    assert layer.projected_grads is not None
    layer.clear_projected_grads()
    assert layer.projected_grads is None
    for x, c in zip(xs, cs):
        _loss(layer(x), c).backward()
    acc = layer.projected_grads
    for k in range(3):
        _assert_close(acc[k], singles[0][k] + singles[1][k])


def test_weight_sharing_sums_contributions():
    # the same layer used twice in one graph: G is the sum of both uses
    layer = LowRankLinear(4, 4, 2, dtype=torch.float64, generator=_gen(0))
    x = torch.randn(3, 4, dtype=torch.float64, generator=_gen(1))
    y = layer(torch.tanh(layer(x)))
    y.square().sum().backward()
    U, S, V = (t.detach().clone() for t in layer.point())
    W = (U @ S @ V.T).requires_grad_()
    b = layer.bias.detach()
    yd = torch.tanh(x @ W.T + b) @ W.T + b
    yd.square().sum().backward()
    _assert_close(layer.projected_grads.GV, W.grad @ V)
    _assert_close(layer.projected_grads.GtU, W.grad.T @ U)


def test_recording_disabled_and_functional_recorder():
    layer = LowRankLinear(6, 5, 2, dtype=torch.float64, generator=_gen(0))
    layer.record_projected_grads = False
    layer(torch.ones(2, 6, dtype=torch.float64)).sum().backward()
    assert layer.projected_grads is None
    assert layer.U.grad is not None
    got = []
    U, S, V = (t.detach() for t in layer.point())
    x = torch.randn(3, 6, dtype=torch.float64, generator=_gen(1), requires_grad=True)
    low_rank_linear(x, U, S, V, recorder=got.append).sum().backward()
    assert len(got) == 1 and isinstance(got[0], ProjectedGradients)
    G = torch.ones(3, 5, dtype=torch.float64).T @ x.detach()
    _assert_close(got[0].GV, G @ V)


def test_mixed_precision_activations():
    layer = LowRankLinear(16, 8, 4, dtype=torch.float32, generator=_gen(0))
    x32 = torch.randn(5, 16, generator=_gen(1))
    for low in (torch.bfloat16, torch.float16):
        layer.clear_projected_grads()
        xl = x32.to(low).requires_grad_()
        y = layer(xl)
        assert y.dtype == low
        y.float().sum().backward()
        assert xl.grad.dtype == low
        assert layer.U.grad.dtype == torch.float32
        pg_low = layer.projected_grads
        layer.clear_projected_grads()
        layer(xl.detach().float()).sum().backward()
        pg_ref = layer.projected_grads
        # the activation was rounded to `low`; compare with the float32 computation on the
        # same rounded input: differences are float32 rounding only
        for a, b in zip(pg_low, pg_ref):
            assert a.dtype == torch.float32
            _assert_close(a, b, factor=1e3)


def test_float32_works_and_matches_float64():
    l64 = LowRankLinear(10, 6, 3, dtype=torch.float64, generator=_gen(0))
    l32 = LowRankLinear(10, 6, 3, dtype=torch.float32, generator=_gen(0))
    l32.set_point(FixedRankPoint(*(t.float() for t in l64.point())))
    l32.bias.data.copy_(l64.bias.data)
    x = torch.randn(4, 10, dtype=torch.float64, generator=_gen(2))
    y64, y32 = l64(x), l32(x.float())
    assert y32.dtype == torch.float32
    assert float((y64 - y32.double()).detach().abs().max()) < 1e3 * torch.finfo(torch.float32).eps


def test_init_orthonormal_and_scale():
    layer = LowRankLinear(50, 30, 5, dtype=torch.float64, generator=_gen(0))
    U, S, V = layer.point()
    _assert_close(U.T @ U, torch.eye(5, dtype=torch.float64))
    _assert_close(V.T @ V, torch.eye(5, dtype=torch.float64))
    s = torch.diagonal(S)
    assert torch.all(s[:-1] >= s[1:]) and float(s[-1]) > 0
    # top singular value of a U(-1/√n, 1/√n) matrix is about (√m + √n)/√(3n)
    expected = (30**0.5 + 50**0.5) / (3 * 50) ** 0.5
    assert 0.7 * expected < float(s[0]) < 1.3 * expected
    # seeded: same generator seed -> same factors
    again = LowRankLinear(50, 30, 5, dtype=torch.float64, generator=_gen(0))
    assert all(torch.equal(a, b) for a, b in zip(layer.point(), again.point()))


def _random_point(m, n, r, seed, dtype=torch.float64):
    g = _gen(seed)
    U = torch.linalg.qr(torch.randn(m, r, dtype=dtype, generator=g))[0]
    V = torch.linalg.qr(torch.randn(n, r, dtype=dtype, generator=g))[0]
    S = torch.randn(r, r, dtype=dtype, generator=g)
    return FixedRankPoint(U, S, V)


@pytest.mark.parametrize("new_rank", [1, 2, 6])
def test_set_point_reallocates_and_keeps_identity(new_rank):
    layer = LowRankLinear(9, 8, 3, max_rank=6, dtype=torch.float64, generator=_gen(0))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    ids = [id(p) for p in layer.factors()]
    ptrs = [p.data_ptr() for p in layer.factors()]
    layer(torch.ones(2, 9, dtype=torch.float64)).sum().backward()
    assert layer.projected_grads is not None
    pt = _random_point(8, 9, new_rank, 5)
    layer.set_point(pt)
    assert [id(p) for p in layer.factors()] == ids
    assert all(p.data_ptr() != q for p, q in zip(layer.factors(), ptrs))
    assert layer.U.numel() == 8 * new_rank and layer.S.numel() == new_rank**2
    assert layer.V.numel() == 9 * new_rank
    assert layer.rank == new_rank
    assert all(p.grad is None for p in layer.factors())
    assert layer.projected_grads is None
    assert all(torch.equal(a, b) for a, b in zip(layer.point(), pt))
    # a copy, not an alias of the caller's tensors
    assert layer.U.data_ptr() != pt.U.data_ptr()
    # the optimizer still owns the same Parameters and can step at the new rank
    assert {id(p) for p in opt.param_groups[0]["params"]} >= set(ids)
    layer(torch.ones(2, 9, dtype=torch.float64)).sum().backward()
    opt.step()
    assert layer.projected_grads.GV.shape == (8, new_rank)


def test_set_point_rejects_bad_points_without_changes():
    layer = LowRankLinear(9, 8, 3, max_rank=4, dtype=torch.float64, generator=_gen(0))
    before = [t.clone() for t in layer.point()]
    bad = [
        _random_point(8, 9, 5, 0),  # rank > max_rank
        _random_point(7, 9, 2, 0),  # wrong m
        FixedRankPoint(*(t.float() for t in _random_point(8, 9, 2, 0))),  # dtype
        _random_point(8, 9, 2, 0)._replace(S=torch.full((2, 2), float("nan"), dtype=torch.float64)),
        FixedRankPoint(
            torch.zeros(8, 2, dtype=torch.float64),
            torch.zeros(3, 3, dtype=torch.float64),
            torch.zeros(9, 2, dtype=torch.float64),
        ),
    ]
    for pt in bad:
        with pytest.raises((ValueError, TypeError, FloatingPointError)):
            layer.set_point(pt)
        assert all(torch.equal(a, b) for a, b in zip(layer.point(), before))


def test_stale_backward_does_not_record():
    layer = LowRankLinear(6, 5, 2, dtype=torch.float64, generator=_gen(0))
    y = layer(torch.ones(1, 6, dtype=torch.float64))
    layer.set_point(layer.point())  # same shapes, but a new point version
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        y.sum().backward()
    assert layer.projected_grads is None
    assert any(issubclass(x.category, RuntimeWarning) for x in w)


def test_state_dict_round_trip_across_rank_change():
    layer = LowRankLinear(12, 10, 4, max_rank=8, dtype=torch.float64, generator=_gen(0))
    layer.set_point(_random_point(10, 12, 7, 3))
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(10, 2, dtype=torch.float64))
    sd = model.state_dict()
    fresh = nn.Sequential(
        LowRankLinear(12, 10, 4, max_rank=8, dtype=torch.float64, generator=_gen(9)),
        nn.ReLU(),
        nn.Linear(10, 2, dtype=torch.float64),
    )
    ids = [id(p) for p in fresh[0].factors()]
    fresh.load_state_dict(sd)
    assert fresh[0].rank == 7
    assert [id(p) for p in fresh[0].factors()] == ids
    x = torch.randn(3, 12, dtype=torch.float64, generator=_gen(4))
    assert torch.equal(fresh(x), model(x))
    # beyond max_rank: error, not silent truncation
    small = LowRankLinear(12, 10, 2, max_rank=5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="max_rank"):
        small.load_state_dict(layer.state_dict())


def test_from_dense_to_dense_exact_at_full_rank():
    lin = nn.Linear(7, 5, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(5, 7, dtype=torch.float64, generator=_gen(0)))
    low = LowRankLinear.from_dense(lin)
    assert low.rank == 5
    back = low.to_dense()
    _assert_close(back.weight, lin.weight)
    assert torch.equal(back.bias, lin.bias)
    x = torch.randn(3, 7, dtype=torch.float64, generator=_gen(1))
    _assert_close(low(x), lin(x))
    U, _, V = low.point()
    _assert_close(U.T @ U, torch.eye(5, dtype=torch.float64))
    _assert_close(V.T @ V, torch.eye(5, dtype=torch.float64))


def test_from_dense_truncation_rules():
    g = _gen(0)
    A = torch.randn(20, 3, dtype=torch.float64, generator=g) @ torch.randn(
        3, 15, dtype=torch.float64, generator=g
    )
    A = A + 1e-6 * torch.randn(20, 15, dtype=torch.float64, generator=g)
    lin = nn.Linear(15, 20, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(A)
    assert LowRankLinear.from_dense(lin, rank=2).rank == 2
    low = LowRankLinear.from_dense(lin, tol=1e-3)
    assert low.rank == 3
    err = torch.linalg.matrix_norm(low.to_dense().weight - A)
    assert float(err) <= 1e-3 * float(torch.linalg.matrix_norm(A))
    assert LowRankLinear.from_dense(lin, tol=1e-3, max_rank=2).rank == 2
    with pytest.raises(ValueError, match="rank"):
        LowRankLinear.from_dense(lin, rank=16)
    with pytest.raises(TypeError):
        LowRankLinear.from_dense(nn.Conv2d(1, 1, 1))


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((10, 6, 0), {}, "rank"),
        ((10, 6, 7), {}, "rank"),
        ((10, 6, 3), {"max_rank": 7}, "max_rank"),
        ((10, 6, 5), {"max_rank": 4}, "rank"),
        ((0, 6, 1), {}, "in_features"),
        ((10, -1, 1), {}, "out_features"),
        ((10, 6, 2.0), {}, "rank"),
    ],
)
def test_constructor_validation(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        LowRankLinear(*args, **kwargs)


def test_repr_and_wrong_input():
    layer = LowRankLinear(10, 6, 3)
    assert "rank=3" in repr(layer) and "max_rank=6" in repr(layer)
    with pytest.raises(ValueError, match="in_features"):
        layer(torch.ones(2, 9))
