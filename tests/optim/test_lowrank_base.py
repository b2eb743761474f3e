"""LowRankOptimizer bookkeeping: bounded rank history and the adapter parameter count."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

from manifold_lowrank.manifolds.types import FixedRankPoint, TuckerPoint
from manifold_lowrank.nn import LowRankAdapter, LowRankConv2d, LowRankLinear, TuckerConv2d
from manifold_lowrank.nn.base import TuckerModule
from manifold_lowrank.nn.debora import DeboraLinearAdapter
from manifold_lowrank.optim import DEBORA, DLRT, GeoLoRA
from manifold_lowrank.optim.lowrank_base import BoundedHistory

F64 = torch.float64


# ---------------------------------------------------------------------------- BoundedHistory
def test_bounded_history_keeps_the_last_entries_and_is_a_list():
    h = BoundedHistory(range(5), maxlen=3)
    assert h == [2, 3, 4] and isinstance(h, list)
    h.append(5)
    assert h == [3, 4, 5]
    h.extend([6, 7])
    assert h == [5, 6, 7] and h[-1] == 7 and h[:2] == [5, 6]
    h += [8]
    assert h == [6, 7, 8] and isinstance(h, BoundedHistory)
    unbounded = BoundedHistory(maxlen=None)
    unbounded.extend(range(1000))
    assert len(unbounded) == 1000
    c = copy.deepcopy(h)
    c.append(9)
    assert c == [7, 8, 9] and c.maxlen == 3 and h == [6, 7, 8]


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-2, ValueError), (2.0, TypeError),
                                      ("3", TypeError), (True, TypeError)])  # fmt: skip
def test_history_maxlen_is_validated(bad, exc):
    with pytest.raises(exc, match="maxlen"):
        BoundedHistory(maxlen=bad)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(LowRankLinear(6, 5, 2, generator=g))
    with pytest.raises(exc, match="rank_history_maxlen"):
        DLRT(model, lr=0.1, rank_history_maxlen=bad)
    opt = GeoLoRA(model, lr=0.1, tau=0.1)
    with pytest.raises(exc, match="rank_history_maxlen"):
        opt.rank_history_maxlen = bad
    assert opt.rank_history_maxlen is None


# ---------------------------------------------------------------------------- rank history
def _mlp(seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    return nn.Sequential(
        LowRankLinear(8, 10, 2, max_rank=6, dtype=F64, generator=g),
        nn.Tanh(),
        LowRankLinear(10, 4, 2, max_rank=4, dtype=F64, generator=g),
    )


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 8, generator=g, dtype=F64)
    y = torch.randn(16, 4, generator=g, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(steps):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()


def test_dlrt_history_maxlen_keeps_the_tail_of_the_unbounded_histories():
    ref_model, model = _mlp(0), _mlp(0)
    ref = DLRT(ref_model, lr=0.05, tau=0.1, augment_every=2)
    opt = DLRT(model, lr=0.05, tau=0.1, augment_every=2, rank_history_maxlen=4)
    _train(ref_model, ref, 15)
    _train(model, opt, 15)
    assert len(ref.rank_history) == 15 and len(ref.truncation_history) == 7
    assert opt.rank_history == ref.rank_history[-4:]
    assert opt.truncation_history == ref.truncation_history[-4:]
    assert [s for s, _ in opt.rank_history] == [12, 13, 14, 15]
    # round trip into a fresh optimizer: entries kept, bound of the new optimizer applies
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    model2 = _mlp(0)
    model2.load_state_dict(model.state_dict())
    opt2 = DLRT(model2, lr=0.05, tau=0.1, augment_every=2, rank_history_maxlen=3)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert opt2.rank_history == ref.rank_history[-3:]
    assert opt2.truncation_history == ref.truncation_history[-3:]
    _train(model2, opt2, 5)
    assert len(opt2.rank_history) == 3 and opt2.rank_history[-1][0] == 20
    assert len(opt2.truncation_history) == 3


def test_history_length_is_constant_over_many_steps_and_the_bound_is_settable():
    """GeoLoRA and DEBORA take the bound as an attribute (it trims at once)."""
    model = _mlp(2)
    opt = GeoLoRA(model, lr=0.05, tau=0.1)
    _train(model, opt, 10)
    assert len(opt.rank_history) == 10
    opt.rank_history_maxlen = 3
    assert [s for s, _ in opt.rank_history] == [8, 9, 10]
    lengths = set()
    for _ in range(20):
        _train(model, opt, 10)
        lengths.add(len(opt.rank_history))
    assert lengths == {3} and opt.rank_history[-1][0] == 210
    opt.rank_history = [(0, [1, 1])] * 10  # assignment (e.g. a load) is bounded too
    assert len(opt.rank_history) == 3
    opt.rank_history_maxlen = None
    _train(model, opt, 4)
    assert len(opt.rank_history) == 7

    hists = []
    for maxlen in (None, 2):
        g = torch.Generator().manual_seed(3)
        dm = nn.Sequential(
            DeboraLinearAdapter(nn.Linear(6, 4, dtype=F64), 3, generator=g, dtype=F64)
        )
        dopt = DEBORA(dm, tau=2.0, eps=0.05, lr=0.05)
        dopt.rank_history_maxlen = maxlen
        x = torch.randn(8, 6, generator=g, dtype=F64)
        for t in range(1, 9):
            dopt.zero_grad()
            (dm(x) ** 2).mean().backward()
            dopt.upper_step() if t % 2 == 0 else dopt.lower_step()
        hists.append(list(dopt.rank_history))
    assert len(hists[0]) == 4 and hists[1] == hists[0][-2:]


# ---------------------------------------------------------------------------- parameter count
def _manual_count(layer: nn.Module) -> int:
    if isinstance(layer, TuckerModule):
        count = 1
        for r in layer.ranks:
            count *= r
        return count + sum(
            n * r
            for k, (n, r) in enumerate(zip(layer.dims, layer.ranks))
            if k not in layer.full_modes
        )
    m, n = layer.matrix_shape
    r = layer.rank
    return r * (m + n) + r * r


def _orth(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=F64))[0]


def _set_rank(layer: nn.Module, r: int, g: torch.Generator) -> None:
    if isinstance(layer, TuckerModule):
        ranks = [layer.dims[k] if k in layer.full_modes else min(r, layer.max_ranks[k])
                 for k in range(4)]  # fmt: skip
        core = torch.randn(*ranks, generator=g, dtype=F64)
        factors = tuple(_orth(n, rk, g) for n, rk in zip(layer.dims, ranks))
        layer.set_point(TuckerPoint(core, factors))
    else:
        m, n = layer.matrix_shape
        layer.set_point(
            FixedRankPoint(
                _orth(m, r, g), torch.randn(r, r, generator=g, dtype=F64), _orth(n, r, g)
            )
        )


def _zoo(g: torch.Generator) -> nn.Module:
    return nn.Sequential(
        LowRankLinear(10, 8, 3, max_rank=6, dtype=F64, generator=g),
        LowRankConv2d(3, 4, 3, 2, max_rank=4, dtype=F64, generator=g),
        TuckerConv2d(4, 5, 3, (3, 2), max_ranks=(5, 4, 3, 3), dtype=F64, generator=g),
        LowRankAdapter(nn.Linear(7, 6, dtype=F64), 2, max_rank=5, dtype=F64, generator=g),
    )


@pytest.mark.parametrize("method", ["geolora", "dlrt"])
@pytest.mark.parametrize("frozen", [False, True])
def test_num_adapter_parameters_matches_a_manual_count_at_changed_ranks(method, frozen):
    g = torch.Generator().manual_seed(7)
    model = _zoo(g)
    opt = GeoLoRA(model, lr=0.1, tau=0.1) if method == "geolora" else DLRT(model, lr=0.1)
    layers = list(model)
    # at construction: r(m+n) + r² per matrix layer, core + adaptive factors for Tucker
    expected = [3 * 18 + 9, 2 * (4 + 27) + 4, 3 * 2 * 3 * 3 + 5 * 3 + 4 * 2, 2 * 13 + 4]
    assert [_manual_count(la) for la in layers] == expected
    assert opt.num_adapter_parameters() == sum(expected)
    for r in (1, 4):
        for la in layers:
            _set_rank(la, r, g)
        if frozen:  # a frozen layer (inference, DLRT's bases) still holds its factors
            for la in layers:
                for p in la.parameters():
                    p.requires_grad_(False)
        assert opt.num_adapter_parameters() == sum(_manual_count(la) for la in layers)
    assert [la.rank for la in (layers[0], layers[1], layers[3])] == [4, 4, 4]
    assert layers[2].ranks == (4, 4, 3, 3)


def test_num_adapter_parameters_of_debora_counts_the_factors_not_the_base():
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(
        DeboraLinearAdapter(nn.Linear(6, 4, dtype=F64), 3, generator=g, dtype=F64)
    )
    opt = DEBORA(model, tau=2.0, eps=0.05, lr=0.05)
    assert opt.num_adapter_parameters() == 3 * (4 + 6) + 9
    model[0].requires_grad_(False)
    assert opt.num_adapter_parameters() == 3 * (4 + 6) + 9


def test_geolora_and_debora_take_the_history_bound_in_the_constructor():
    model = _mlp(4)
    opt = GeoLoRA(model, lr=0.05, tau=0.1, rank_history_maxlen=2)
    _train(model, opt, 6)
    assert opt.rank_history_maxlen == 2 and [s for s, _ in opt.rank_history] == [5, 6]
    with pytest.raises(ValueError, match="rank_history_maxlen"):
        GeoLoRA(_mlp(4), lr=0.05, rank_history_maxlen=0)

    g = torch.Generator().manual_seed(5)
    dm = nn.Sequential(DeboraLinearAdapter(nn.Linear(6, 4, dtype=F64), 3, generator=g, dtype=F64))
    dopt = DEBORA(dm, tau=2.0, eps=0.05, lr=0.05, rank_history_maxlen=2, record_weights=True)
    x = torch.randn(8, 6, generator=g, dtype=F64)
    for _ in range(5):
        dopt.zero_grad()
        (dm(x) ** 2).mean().backward()
        dopt.upper_step()
    # both the rank history and the per-step upper-level history (with weights) are bounded
    assert len(dopt.rank_history) == 2 and len(dopt.history) == 2
    assert "weights" in dopt.history[-1]


# ---------------------------------------------------------------------------- finiteness check
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_all_finite_is_exact_when_a_2_norm_would_overflow(dtype):
    """Huge finite entries (whose 2-norm is inf in their dtype) are finite; any NaN or
    infinity in any tensor of any dtype group is found."""
    from manifold_lowrank.linalg import all_finite as _all_finite

    big = torch.finfo(dtype).max / 2
    huge = torch.full((50, 7), big, dtype=dtype)  # finite, ‖·‖₂ = inf in this dtype
    assert not torch.isfinite(torch.linalg.vector_norm(huge))
    ok = [torch.randn(5, 3, dtype=dtype), huge, torch.empty(0, 3, dtype=dtype)]
    assert _all_finite(ok)
    assert _all_finite([])
    for poison in (float("nan"), float("inf"), -float("inf")):
        for where in range(2):
            ts = [t.clone() for t in ok]
            ts[where][1, 2] = poison
            assert not _all_finite(ts)
            # mixed dtypes: checked per group
            assert not _all_finite([torch.ones(3, dtype=torch.float64), *ts])


def test_optimizer_steps_through_gradients_whose_norm_overflows_in_float32():
    """Finite float32 projected gradients whose 2-norm overflows are not a NaN skip."""
    torch.manual_seed(0)
    layer = LowRankLinear(8, 6, 2, max_rank=4, dtype=torch.float32)
    opt = GeoLoRA([layer], lr=1e-3, tau=0.1, precondition="layer_rms", nan_policy="raise")
    layer(torch.randn(3, 8)).sum().backward()
    GV, M, GtU = layer.projected_grads
    big = torch.finfo(torch.float32).max / 4
    layer.set_projected_grads(type(layer.projected_grads)(GV.sign() * big, M, GtU))
    opt.step()  # "raise" would raise FloatingPointError on a false positive
    assert all(torch.isfinite(t).all() for t in layer.point())
    assert opt.nan_skips == 0


@pytest.mark.parametrize("kind", ["linear", "conv", "adapter", "tucker"])
def test_set_point_assume_finite_skips_only_the_finiteness_check(kind):
    """``assume_finite=True`` (the optimizers' commit, after one check of all layers) still
    validates shapes and dtypes; without it a NaN point is refused and nothing changes."""
    torch.manual_seed(0)
    layer = {
        "linear": lambda: LowRankLinear(7, 5, 2, max_rank=4, dtype=F64),
        "conv": lambda: LowRankConv2d(3, 4, 3, 2, max_rank=4, dtype=F64),
        "adapter": lambda: LowRankAdapter(nn.Linear(7, 5).double(), 2, max_rank=4),
        "tucker": lambda: TuckerConv2d(3, 4, 3, (2, 2, 3, 3), dtype=F64),
    }[kind]()
    pt = layer.point()
    before = [t.clone() for t in (pt if kind != "tucker" else (pt.core, *pt.factors))]
    if kind == "tucker":
        bad = TuckerPoint(pt.core.clone().fill_(float("nan")), pt.factors)
        wrong_shape = TuckerPoint(pt.core[:1], pt.factors)
    else:
        bad = FixedRankPoint(pt.U, pt.S.clone().fill_(float("nan")), pt.V)
        wrong_shape = FixedRankPoint(pt.U[:, :1], pt.S, pt.V)
    with pytest.raises(FloatingPointError):
        layer.set_point(bad)
    for assume in (False, True):
        with pytest.raises(ValueError):
            layer.set_point(wrong_shape, assume_finite=assume)
    now = layer.point()
    now = now if kind != "tucker" else (now.core, *now.factors)
    assert all(torch.equal(a, b) for a, b in zip(now, before))
    layer.set_point(bad, assume_finite=True)  # the caller's word is taken
    now = layer.point()
    core = now.core if kind == "tucker" else now.S
    assert torch.isnan(core).all()
