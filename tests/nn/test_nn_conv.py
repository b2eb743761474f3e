"""LowRankConv2d and TuckerConv2d against autograd of the dense convolution (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from manifold_lowrank.manifolds import FixedRankPoint, TuckerPoint, TuckerProjectedGradients
from manifold_lowrank.nn import LowRankConv2d, TuckerConv2d, hosvd
from manifold_lowrank.nn._utils import mode_dot

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_close(actual, expected, factor=200.0):
    actual, expected = actual.detach(), expected.detach()
    scale = max(float(expected.abs().max()), 1.0)
    tol = factor * torch.finfo(expected.dtype).eps * scale
    assert actual.shape == expected.shape
    err = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert err <= tol, f"max error {err:.3e} > {tol:.3e}"


def _loss(y, c):
    return (y * c).sum() + 0.5 * y.square().sum()


CONV_CASES = [
    {"kernel_size": 3, "stride": 1, "padding": 1, "dilation": 1},
    {"kernel_size": (3, 2), "stride": 2, "padding": (1, 0), "dilation": 1},
    {"kernel_size": 3, "stride": (1, 2), "padding": 2, "dilation": 2},
]


@pytest.mark.parametrize("cfg", CONV_CASES)
def test_low_rank_conv_matches_dense_autograd(cfg):
    cin, cout, r = 3, 5, 2
    layer = LowRankConv2d(cin, cout, rank=r, dtype=F64, generator=_gen(0), **cfg)
    x = torch.randn(2, cin, 7, 8, dtype=F64, generator=_gen(1), requires_grad=True)
    y = layer(x)
    c = torch.randn(y.shape, dtype=F64, generator=_gen(2))
    _loss(y, c).backward()

    U, S, V = (t.clone().requires_grad_() for t in layer.point())
    b = layer.bias.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    Wm = U @ S @ V.T
    Wm.retain_grad()
    W = Wm.reshape(cout, *layer.kernel_shape)
    yd = F.conv2d(xr, W, b, layer.stride, layer.padding, layer.dilation)
    _assert_close(y, yd)
    _loss(yd, c).backward()
    G = Wm.grad
    for got, want in [
        (layer.U.grad, U.grad),
        (layer.S.grad, S.grad),
        (layer.V.grad, V.grad),
        (layer.bias.grad, b.grad),
        (x.grad, xr.grad),
    ]:
        _assert_close(got, want)
    pg = layer.projected_grads
    Ud, Vd = U.detach(), V.detach()
    _assert_close(pg.GV, G @ Vd)
    _assert_close(pg.UtGV, Ud.T @ G @ Vd)
    _assert_close(pg.GtU, G.T @ Ud)


def test_low_rank_conv_from_dense_exact_and_rank_change():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, stride=2, dtype=F64)
    low = LowRankConv2d.from_dense(conv)
    assert low.rank == 6
    x = torch.randn(2, 4, 9, 9, dtype=F64, generator=_gen(1))
    _assert_close(low(x), conv(x))
    back = low.to_dense()
    _assert_close(back.weight, conv.weight)
    assert back.stride == conv.stride and back.padding == conv.padding
    low.set_point(
        FixedRankPoint(
            *(
                t[..., :2].clone() if i != 1 else t[:2, :2].clone()
                for i, t in enumerate(low.point())
            )
        )
    )
    assert low.rank == 2 and low.V.shape == (36, 2)
    fresh = LowRankConv2d(4, 6, 3, 5, padding=1, stride=2, dtype=F64)
    fresh.load_state_dict(low.state_dict())
    assert fresh.rank == 2
    assert torch.equal(fresh(x), low(x))
    assert "rank=2" in repr(low)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel_size": 0}, "kernel_size"),
        ({"kernel_size": (3, 3, 3)}, "kernel_size"),
        ({"kernel_size": 3, "groups": 2}, "groups"),
        ({"kernel_size": 3, "rank": 0}, "rank"),
        ({"kernel_size": 1, "rank": 5}, "rank"),
        ({"kernel_size": 3, "padding": "same"}, "padding"),
        ({"kernel_size": 3, "stride": 0}, "stride"),
    ],
)
def test_conv_validation(kwargs, match):
    kw = {"rank": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        LowRankConv2d(4, 4, **kw)


def _dense_tucker(core, factors):
    t = core
    for k, f in enumerate(factors):
        t = mode_dot(t, f, k)
    return t


@pytest.mark.parametrize("cfg", CONV_CASES)
@pytest.mark.parametrize("full_modes", [(2, 3), (3,), ()])
def test_tucker_conv_matches_dense_autograd(cfg, full_modes):
    cin, cout = 4, 5
    ks = cfg["kernel_size"]
    kh, kw = (ks, ks) if isinstance(ks, int) else ks
    ranks = [3, 2, min(2, kh), min(2, kw)]
    for k in full_modes:
        ranks[k] = (cout, cin, kh, kw)[k]
    layer = TuckerConv2d(
        cin,
        cout,
        ranks=tuple(ranks),
        full_modes=full_modes,
        dtype=F64,
        generator=_gen(0),
        **cfg,
    )
    x = torch.randn(2, cin, 7, 8, dtype=F64, generator=_gen(1), requires_grad=True)
    y = layer(x)
    c = torch.randn(y.shape, dtype=F64, generator=_gen(2))
    _loss(y, c).backward()

    core = layer.point().core.clone().requires_grad_()
    fs = [f.clone().requires_grad_() for f in layer.point().factors]
    b = layer.bias.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    W = _dense_tucker(core, fs)
    W.retain_grad()
    yd = F.conv2d(xr, W, b, layer.stride, layer.padding, layer.dilation)
    _assert_close(y, yd)
    _loss(yd, c).backward()
    G = W.grad
    pcore, pfs = layer.tucker_parameters()
    _assert_close(pcore.grad, core.grad)
    for k in range(4):
        if k in full_modes:
            assert pfs[k].grad is None and not pfs[k].requires_grad
        else:
            _assert_close(pfs[k].grad, fs[k].grad)
    _assert_close(layer.bias.grad, b.grad)
    _assert_close(x.grad, xr.grad)
    pg = layer.projected_grads
    assert isinstance(pg, TuckerProjectedGradients)
    Us = [f.detach() for f in fs]
    _assert_close(pg.core, _dense_tucker(G, [u.T for u in Us]))
    for k in range(4):
        want = G
        for j in range(4):
            if j != k:
                want = mode_dot(want, Us[j].T, j)
        _assert_close(pg.partials[k], want)
        _assert_close(mode_dot(pg.partials[k], Us[k].T, k), pg.core)


def test_tucker_accumulates_and_set_point_folds_full_modes():
    layer = TuckerConv2d(3, 4, 3, ranks=2, padding=1, dtype=F64, generator=_gen(0))
    x = torch.randn(1, 3, 5, 5, dtype=F64, generator=_gen(1))
    layer(x).sum().backward()
    one = layer.projected_grads
    layer(x).sum().backward()
    _assert_close(layer.projected_grads.core, 2 * one.core)
    # a rotation Q of a full mode is folded into the core; the kernel is unchanged
    Q = torch.linalg.qr(torch.randn(3, 3, dtype=F64, generator=_gen(2)))[0]
    core, fs = layer.point()
    W = layer.dense_kernel().clone()
    rot = TuckerPoint(mode_dot(core, Q.T, 2), (fs[0], fs[1], Q, fs[3]))
    _assert_close(_dense_tucker(*rot), W)
    ptr = layer.core.data_ptr()
    layer.set_point(rot)
    assert torch.equal(layer.factors[2].detach(), torch.eye(3, dtype=F64))
    assert layer.core.data_ptr() != ptr and layer.projected_grads is None
    _assert_close(layer.dense_kernel(), W)


def test_tucker_from_dense_exact_round_trip_and_state_dict():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, dtype=F64)
    tk = TuckerConv2d.from_dense(conv)
    assert tk.ranks == (6, 4, 3, 3)
    x = torch.randn(2, 4, 6, 6, dtype=F64, generator=_gen(1))
    _assert_close(tk(x), conv(x))
    _assert_close(tk.to_dense().weight, conv.weight)
    small = TuckerConv2d.from_dense(conv, ranks=(2, 3))
    assert small.ranks == (2, 3, 3, 3)
    fresh = TuckerConv2d(4, 6, 3, ranks=(5, 4), padding=1, dtype=F64)
    fresh.load_state_dict(small.state_dict())
    assert fresh.ranks == (2, 3, 3, 3)
    assert torch.equal(fresh(x), small(x))
    assert "ranks=(2, 3, 3, 3)" in repr(small)


def test_hosvd_tolerance_bound():
    g = _gen(0)
    low = _dense_tucker(
        torch.randn(2, 2, 3, 3, dtype=F64, generator=g),
        [
            torch.randn(6, 2, dtype=F64, generator=g),
            torch.randn(5, 2, dtype=F64, generator=g),
            torch.eye(3, dtype=F64),
            torch.eye(3, dtype=F64),
        ],
    )
    X = low + 1e-4 * torch.randn(6, 5, 3, 3, dtype=F64, generator=g)
    for tol in (1e-2, 0.5):
        core, fs = hosvd(X, tol=tol, full_modes=(2, 3))
        err = torch.linalg.vector_norm(_dense_tucker(core, fs) - X)
        assert float(err) <= tol * float(torch.linalg.vector_norm(X))
    core, _ = hosvd(X, tol=1e-2, full_modes=(2, 3))
    assert tuple(core.shape) == (2, 2, 3, 3)


def test_tucker_validation():
    with pytest.raises(ValueError, match="ranks"):
        TuckerConv2d(4, 6, 3, ranks=7)
    with pytest.raises(ValueError, match="ranks"):
        TuckerConv2d(4, 6, 3, ranks=0)
    with pytest.raises(ValueError, match="full_modes"):
        TuckerConv2d(4, 6, 3, ranks=2, full_modes=(4,))
    with pytest.raises(ValueError, match="full_modes"):
        TuckerConv2d(4, 6, 3, ranks=(2, 2, 2, 3))
    with pytest.raises(ValueError, match="kernel_size"):
        TuckerConv2d(4, 6, -1, ranks=2)
    layer = TuckerConv2d(4, 6, 3, ranks=2, max_ranks=(3, 3, 3, 3))
    pt = layer.point()
    with pytest.raises(ValueError, match="max_ranks"):
        layer.set_point(TuckerPoint(torch.zeros(4, 2, 3, 3), (torch.zeros(6, 4), *pt.factors[1:])))
