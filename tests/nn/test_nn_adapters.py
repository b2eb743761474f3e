"""Adapters around a frozen base: gradients, ΔW = 0 at init, merge/unmerge, rank 0."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from manifold_lowrank.manifolds import FixedRankPoint, TuckerPoint
from manifold_lowrank.nn import (
    AdaptedLinear,
    LowRankAdapter,
    LowRankConv2dAdapter,
    TuckerConv2dAdapter,
    adapter_state_dict,
    mark_only_adapters_as_trainable,
)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_close(actual, expected, factor=100.0):
    actual, expected = actual.detach(), expected.detach()
    scale = max(float(expected.abs().max()), 1.0)
    tol = factor * torch.finfo(expected.dtype).eps * scale
    assert actual.shape == expected.shape
    err = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert err <= tol, f"max error {err:.3e} > {tol:.3e}"


def _random_point(m, n, r, seed):
    g = _gen(seed)
    U = torch.linalg.qr(torch.randn(m, r, dtype=F64, generator=g))[0]
    V = torch.linalg.qr(torch.randn(n, r, dtype=F64, generator=g))[0]
    return FixedRankPoint(U, torch.randn(r, r, dtype=F64, generator=g), V)


def _base_linear(n=8, m=6, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n, m, dtype=F64)


def test_delta_zero_at_init_and_only_adapter_grads():
    base = _base_linear()
    ref = _base_linear()
    ad = LowRankAdapter(base, 3, generator=_gen(0), scaling=2.0)
    assert not base.weight.requires_grad and not base.bias.requires_grad
    U, S, V = ad.point()
    assert torch.count_nonzero(S) == 0
    _assert_close(U.T @ U, torch.eye(3, dtype=F64))
    _assert_close(V.T @ V, torch.eye(3, dtype=F64))
    x = torch.randn(4, 8, dtype=F64, generator=_gen(1))
    y = ad(x)
    assert torch.equal(y, ref(x))
    y.square().sum().backward()
    assert base.weight.grad is None and base.bias.grad is None
    assert all(p.grad is not None for p in ad.factors())
    assert {n for n, p in ad.named_parameters() if p.requires_grad} == {
        "adapter_U",
        "adapter_S",
        "adapter_V",
    }
    # at S = 0 the gradient of S is UᵀGV and those of U, V vanish; GV is informative
    assert torch.count_nonzero(ad.adapter_U.grad) == 0
    assert float(ad.projected_grads.GV.abs().max()) > 0


@pytest.mark.parametrize("scaling", [1.0, 0.5])
def test_adapter_projected_grads_are_dLdDeltaW(scaling):
    base = _base_linear()
    ad = LowRankAdapter(base, 3, scaling=scaling, generator=_gen(0))
    ad.set_point(_random_point(6, 8, 3, 1))
    x = torch.randn(2, 5, 8, dtype=F64, generator=_gen(2))
    c = torch.randn(2, 5, 6, dtype=F64, generator=_gen(3))
    loss = lambda y: (y * c).sum() + y.square().sum()  # noqa: E731
    loss(ad(x)).backward()
    U, S, V = (t.clone().requires_grad_() for t in ad.point())
    D = U @ S @ V.T
    D.retain_grad()
    loss(base(x) + scaling * x @ D.T).backward()
    G = D.grad  # ∂L/∂ΔW
    pg = ad.projected_grads
    _assert_close(pg.GV, G @ V.detach())
    _assert_close(pg.UtGV, U.detach().T @ G @ V.detach())
    _assert_close(pg.GtU, G.T @ U.detach())
    _assert_close(ad.adapter_U.grad, U.grad)
    _assert_close(ad.adapter_S.grad, S.grad)
    _assert_close(ad.adapter_V.grad, V.grad)


def test_merge_unmerge_exact():
    base = _base_linear()
    w0 = base.weight.detach().clone()
    ad = LowRankAdapter(base, 3, scaling=0.7, generator=_gen(0))
    ad.set_point(_random_point(6, 8, 3, 1))
    x = torch.randn(5, 8, dtype=F64, generator=_gen(2))
    y = ad(x)
    ad.merge()
    assert ad.merged
    _assert_close(base.weight.detach(), w0 + ad.delta_weight())
    _assert_close(ad(x), y)
    with pytest.raises(RuntimeError, match="unmerge"):
        ad.set_point(_random_point(6, 8, 2, 3))
    with pytest.warns(UserWarning):
        ad.merge()
    ad.unmerge()
    assert not ad.merged
    _assert_close(base.weight.detach(), w0)
    _assert_close(ad(x), y)


def test_disable_adapters_and_dropout_only_on_adapter_path():
    base = _base_linear()
    ad = LowRankAdapter(base, 2, dropout=0.5, generator=_gen(0))
    x = torch.randn(3, 8, dtype=F64, generator=_gen(1))
    ad.train()
    assert torch.equal(ad(x), base(x))  # S = 0: dropout on the adapter input only
    ad.set_point(_random_point(6, 8, 2, 1))
    ad.eval()
    ad.disable_adapters = True
    assert torch.equal(ad(x), base(x))
    ad.disable_adapters = False
    assert not torch.equal(ad(x), base(x))
    with pytest.raises(ValueError, match="dropout"):
        LowRankAdapter(base, 2, dropout=1.0)


def test_rank_zero_adapter():
    base = _base_linear()
    ad = LowRankAdapter(base, 0, max_rank=4, generator=_gen(0))
    assert ad.rank == 0 and ad.adapter_U.shape == (6, 0)
    x = torch.randn(3, 8, dtype=F64, generator=_gen(1), requires_grad=True)
    y = ad(x)
    assert torch.equal(y, base(x))
    y.sum().backward()
    assert ad.projected_grads is None and x.grad is not None
    ad.set_point(_random_point(6, 8, 2, 3))
    assert ad.rank == 2
    ad(x).sum().backward()
    assert ad.projected_grads.GV.shape == (6, 2)
    ad.set_point(_random_point(6, 8, 0, 3))
    assert ad.rank == 0 and ad.adapter_S.numel() == 0
    ad.merge()
    ad.unmerge()


def test_state_dict_restores_adapter_rank():
    ad = LowRankAdapter(_base_linear(), 2, max_rank=5, generator=_gen(0))
    ad.set_point(_random_point(6, 8, 5, 1))
    fresh = LowRankAdapter(_base_linear(seed=7), 2, max_rank=5, generator=_gen(4))
    fresh.load_state_dict(ad.state_dict())
    assert fresh.rank == 5
    x = torch.randn(2, 8, dtype=F64, generator=_gen(2))
    assert torch.equal(fresh(x), ad(x))
    # adapter-only checkpoint into a model with the same base
    fresh2 = LowRankAdapter(_base_linear(), 1, max_rank=5, generator=_gen(4))
    sd = adapter_state_dict(ad)
    assert set(sd) == {"adapter_U", "adapter_S", "adapter_V"}
    _missing, unexpected = fresh2.load_state_dict(sd, strict=False)
    assert fresh2.rank == 5 and not unexpected
    assert torch.equal(fresh2(x), ad(x))


def test_adapted_linear_and_mark_only_adapters():
    model = nn.Sequential(
        AdaptedLinear(8, 6, 2, dtype=F64, generator=_gen(0)),
        nn.ReLU(),
        nn.Linear(6, 3, dtype=F64),
    )
    assert model[0].weight.requires_grad  # loralib default: base trainable until marked
    assert model[0].weight is model[0].base_layer.weight
    mark_only_adapters_as_trainable(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"0.adapter_U", "0.adapter_S", "0.adapter_V"}
    mark_only_adapters_as_trainable(model, bias="adapter_only")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"0.adapter_U", "0.adapter_S", "0.adapter_V", "0.base_layer.bias"}
    mark_only_adapters_as_trainable(model, bias="all")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "2.bias" in trainable and "2.weight" not in trainable
    with pytest.raises(ValueError, match="bias"):
        mark_only_adapters_as_trainable(model, bias="some")
    assert "rank=2" in repr(model[0])


def test_low_precision_base_gets_float32_adapter():
    base = nn.Linear(8, 6, dtype=torch.bfloat16)
    ad = LowRankAdapter(base, 2, generator=_gen(0))
    assert ad.adapter_U.dtype == torch.float32
    ad.set_point(FixedRankPoint(*(t.float() for t in _random_point(6, 8, 2, 1))))
    x = torch.randn(3, 8, generator=_gen(1)).to(torch.bfloat16)
    y = ad(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert ad.projected_grads.GV.dtype == torch.float32


def test_adapter_validation():
    base = _base_linear()
    with pytest.raises(ValueError, match="rank"):
        LowRankAdapter(base, 7)
    with pytest.raises(ValueError, match="rank"):
        LowRankAdapter(base, -1)
    with pytest.raises(ValueError, match="max_rank"):
        LowRankAdapter(base, 2, max_rank=9)
    with pytest.raises(TypeError, match="base"):
        LowRankAdapter(nn.ReLU(), 2)


def test_transformers_conv1d_adapter():
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    torch.manual_seed(0)
    base = pytorch_utils.Conv1D(6, 8).double()  # nf=6 outputs, nx=8 inputs, weight (8, 6)
    w0 = base.weight.detach().clone()
    ad = LowRankAdapter(base, 2, generator=_gen(0))
    assert (ad.in_features, ad.out_features) == (8, 6)
    ad.set_point(_random_point(6, 8, 2, 1))
    x = torch.randn(2, 3, 8, dtype=F64, generator=_gen(2))
    y = ad(x)
    _assert_close(y, x @ (w0 + ad.delta_weight().T) + base.bias)
    ad.merge()
    _assert_close(ad(x), y)
    ad.unmerge()
    _assert_close(base.weight.detach(), w0)


# ----------------------------------------------------------------------------- conv adapters
def _base_conv(seed=0, **kw):
    torch.manual_seed(seed)
    return nn.Conv2d(3, 5, 3, dtype=F64, **kw)


@pytest.mark.parametrize("kind", ["matrix", "tucker"])
def test_conv_adapters_zero_init_merge_and_grads(kind):
    base = _base_conv(stride=2, padding=1)
    ref = _base_conv(stride=2, padding=1)
    if kind == "matrix":
        ad = LowRankConv2dAdapter(base, 2, scaling=0.5, generator=_gen(0))
    else:
        ad = TuckerConv2dAdapter(base, (2, 2), scaling=0.5, generator=_gen(0))
    x = torch.randn(2, 3, 7, 6, dtype=F64, generator=_gen(1))
    assert torch.equal(ad(x), ref(x))
    assert torch.count_nonzero(ad.delta_weight()) == 0
    # move to a non-zero point
    if kind == "matrix":
        ad.set_point(_random_point(5, 27, 2, 2))
    else:
        g = _gen(2)
        fs = (
            torch.linalg.qr(torch.randn(5, 2, dtype=F64, generator=g))[0],
            torch.linalg.qr(torch.randn(3, 2, dtype=F64, generator=g))[0],
            torch.eye(3, dtype=F64),
            torch.eye(3, dtype=F64),
        )
        ad.set_point(TuckerPoint(torch.randn(2, 2, 3, 3, dtype=F64, generator=g), fs))
    y = ad(x)
    dense = nn.functional.conv2d(x, base.weight + ad.delta_weight(), base.bias, 2, 1)
    _assert_close(y, dense)
    y.square().sum().backward()
    assert base.weight.grad is None
    assert ad.projected_grads is not None
    w0 = base.weight.detach().clone()
    ad.merge()
    _assert_close(ad(x), y)
    ad.unmerge()
    _assert_close(base.weight.detach(), w0)
    assert torch.equal(ad(x[0]), ad(x[:1])[0])  # unbatched input


def test_tucker_adapter_identity_factors_stay_frozen():
    model = nn.Sequential(TuckerConv2dAdapter(_base_conv(), 2, generator=_gen(0)))
    mark_only_adapters_as_trainable(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"0.adapter_core", "0.adapter_factors.0", "0.adapter_factors.1"}
    ad = model[0]
    assert ad.ranks == (2, 2, 3, 3)
    ad.set_point(
        TuckerPoint(
            torch.zeros(0, 2, 3, 3, dtype=F64),
            (torch.zeros(5, 0, dtype=F64), *ad.point().factors[1:]),
        )
    )
    x = torch.randn(1, 3, 5, 5, dtype=F64, generator=_gen(1))
    assert torch.equal(ad(x), ad.base_layer(x))


def test_conv_adapter_validation():
    with pytest.raises(ValueError, match="groups"):
        LowRankConv2dAdapter(nn.Conv2d(4, 4, 3, groups=2), 1)
    with pytest.raises(TypeError):
        LowRankConv2dAdapter(nn.Linear(3, 3), 1)
    with pytest.raises(ValueError, match="rank"):
        LowRankConv2dAdapter(_base_conv(), 6)
    with pytest.raises(ValueError, match="full_modes"):
        TuckerConv2dAdapter(_base_conv(), (2, 2, 1, 3))
