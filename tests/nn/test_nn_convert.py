"""Whole-model conversion and model-level helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from manifold_lowrank.nn import (
    LowRankConv2d,
    LowRankLinear,
    TuckerConv2d,
    clear_projected_grads,
    convert_to_low_rank,
    low_rank_modules,
    name_matches,
)

F64 = torch.float64


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, dtype=F64)
        self.encoder = nn.Sequential(
            nn.Linear(64, 32, dtype=F64), nn.ReLU(), nn.Linear(32, 32, dtype=F64)
        )
        self.head = nn.Linear(32, 4, dtype=F64)

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean(1).flatten(1)  # (B, 64) for 8×8 input
        return self.head(self.encoder(h))


def _net(seed=0):
    torch.manual_seed(seed)
    return _Net()


def test_exact_conversion_preserves_outputs():
    net = _net()
    x = torch.randn(2, 3, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    y = net(x)
    convert_to_low_rank(net, min_features=4)
    assert isinstance(net.conv, LowRankConv2d)
    assert isinstance(net.encoder[0], LowRankLinear) and isinstance(net.head, LowRankLinear)
    assert net.encoder[0].rank == 32 and net.head.rank == 4
    scale = float(y.detach().abs().max())
    assert float((net(x) - y).detach().abs().max()) <= 1e3 * torch.finfo(F64).eps * max(scale, 1.0)


def test_include_exclude_rank_and_tucker():
    net = convert_to_low_rank(_net(), rank=40, exclude="head", conv="tucker")
    assert isinstance(net.head, nn.Linear) and not isinstance(net.head, LowRankLinear)
    assert net.encoder[0].rank == 32  # clipped to min(m, n)
    assert isinstance(net.conv, TuckerConv2d) and net.conv.ranks == (16, 3, 3, 3)
    net = convert_to_low_rank(_net(), rank=4, include=["encoder.*"], conv=None, max_rank=8)
    assert isinstance(net.conv, nn.Conv2d)
    assert net.encoder[0].rank == 4 and net.encoder[0].max_rank == 8
    assert isinstance(net.encoder[2], LowRankLinear) and not isinstance(net.head, LowRankLinear)
    net = convert_to_low_rank(_net(), rank=2, min_features=8)
    assert isinstance(net.head, nn.Linear) and not isinstance(net.head, LowRankLinear)
    assert [n for n, _ in low_rank_modules(net)] == ["conv", "encoder.0", "encoder.2"]
    single = convert_to_low_rank(nn.Linear(10, 10), rank=3)
    assert isinstance(single, LowRankLinear) and single.rank == 3
    with pytest.raises(ValueError, match="conv"):
        convert_to_low_rank(_net(), conv="cp")
    with pytest.raises(ValueError):
        convert_to_low_rank(_net(), rank=2, tol=0.1)


def test_name_matches():
    assert name_matches("encoder.fc1", "fc1")
    assert name_matches("encoder.fc1", ["x", "encoder.*"])
    assert not name_matches("encoder.fc10", "fc1")
    assert name_matches("layers.3.attn.q_proj", "layers.*.attn.q_proj")


def test_model_with_changed_ranks_loads_into_fresh_model():
    net = convert_to_low_rank(_net(), rank=6, min_features=4, max_rank=12)
    gen = torch.Generator().manual_seed(2)
    for _, mod in low_rank_modules(net):
        m, n = mod.matrix_shape
        r = min(9, m, n)
        U = torch.linalg.qr(torch.randn(m, r, dtype=F64, generator=gen))[0]
        V = torch.linalg.qr(torch.randn(n, r, dtype=F64, generator=gen))[0]
        mod.set_point(mod.point()._replace(U=U, S=torch.randn(r, r, dtype=F64, generator=gen), V=V))
    x = torch.randn(2, 3, 8, 8, dtype=F64, generator=gen)
    y = net(x)
    y.sum().backward()
    assert all(mod.projected_grads is not None for _, mod in low_rank_modules(net))
    clear_projected_grads(net)
    assert all(mod.projected_grads is None for _, mod in low_rank_modules(net))
    fresh = convert_to_low_rank(_net(seed=5), rank=6, min_features=4, max_rank=12)
    fresh.load_state_dict(net.state_dict())
    assert [m.rank for _, m in low_rank_modules(fresh)] == [9, 9, 9, 4]
    assert torch.equal(fresh(x), y)
