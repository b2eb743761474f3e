"""Faults: NaN/Inf never corrupt factors or state; the rank-0 rule; extreme learning rates.

NaN policy (every optimizer of the library, see :mod:`manifold_lowrank.optim.lowrank_base`):
on a non-finite gradient or update nothing is written; ``"skip"`` warns and counts,
``"raise"`` raises :class:`FloatingPointError`. Rank-0 rule: a relative tolerance never
truncates a non-zero core to rank 0; an exactly zero core goes to ``min_rank`` (default 1:
a zero core of rank 1 that the next gradient revives); ``min_rank=0`` (GeoLoRA only) switches
the layer off, and rank 0 is absorbing.
"""

from __future__ import annotations

import warnings

import geoopt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from manifold_lowrank.checkpoint import pack_state
from manifold_lowrank.linalg import RankRule
from manifold_lowrank.manifolds import FixedRank
from manifold_lowrank.manifolds.types import FixedRankPoint, ProjectedGradients
from manifold_lowrank.nn import LowRankLinear, TuckerConv2d
from manifold_lowrank.nn.debora import DeboraLinearAdapter
from manifold_lowrank.optim import DEBORA, GeoLoRA, RiemannianAdam, RiemannianSGD
from manifold_lowrank.optim.dlrt import DLRT

F64 = torch.float64
EPS64 = torch.finfo(F64).eps


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is much faster (and deterministic) than several."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------- harness
def _without_counter(skel):
    """The packed optimizer state without the ``nan_skips`` counter (which must change)."""
    if isinstance(skel, list):
        if len(skel) == 2 and skel[0] == "nan_skips":
            return ["nan_skips", None]
        return [_without_counter(x) for x in skel]
    if isinstance(skel, dict):
        return {k: _without_counter(v) for k, v in skel.items()}
    return skel


class Case:
    """A tiny model, its optimizer and one training step with an optional poison."""

    def __init__(self, name: str, policy: str):
        self.name = name
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(12, 6, generator=g, dtype=F64)
        self.y = torch.randn(12, 4, generator=g, dtype=F64)
        self.closure_based = False
        if name.startswith("riemannian"):
            M = FixedRank(4, 6, 2)
            W = geoopt.ManifoldParameter(M.random(generator=g, dtype=F64), manifold=M)
            self.model = nn.Module()
            self.model.W = W
            cls = RiemannianSGD if name == "riemannian_sgd" else RiemannianAdam
            kw = {"momentum": 0.5} if cls is RiemannianSGD else {}
            self.opt = cls([W], lr=0.05, nonfinite=policy, **kw)
            return
        if name == "geolora_tucker":
            self.model = nn.Sequential(TuckerConv2d(2, 3, 3, 2, dtype=F64, generator=g))
            self.x = torch.randn(4, 2, 5, 5, generator=g, dtype=F64)
            self.y = torch.randn(4, 3, 3, 3, generator=g, dtype=F64)
            self.opt = GeoLoRA(
                self.model,
                lr=0.1,
                tau=0.05,
                precondition="layer_rms",
                momentum=0.9,
                nan_policy=policy,
            )
            return
        if name.startswith("debora"):
            self.model = nn.Sequential(
                DeboraLinearAdapter(nn.Linear(6, 4, dtype=F64), 3, generator=g, dtype=F64)
            )
            self.opt = DEBORA(self.model, tau=2.0, eps=0.05, lr=0.05, nan_policy=policy)
            return
        self.model = nn.Sequential(
            LowRankLinear(6, 8, 2, max_rank=6, dtype=F64, generator=g),
            nn.Tanh(),
            LowRankLinear(8, 4, 2, max_rank=4, dtype=F64, generator=g),
        )
        if name == "geolora":
            self.opt = GeoLoRA(self.model, lr=0.3, tau=0.05, momentum=0.9, nan_policy=policy)
        elif name in ("dlrt_augment", "dlrt_coefficient"):
            self.opt = DLRT(self.model, lr=0.05, tau=0.05, augment_every=2, nan_policy=policy)
        elif name == "dlrt_parallel":
            self.opt = DLRT(
                self.model,
                lr=0.2,
                tau=0.05,
                integrator="parallel",
                substep_optimizer="momentum",
                nan_policy=policy,
            )
        elif name == "dlrt_bug":
            self.closure_based = True
            self.opt = DLRT(
                self.model,
                lr=0.2,
                tau=0.05,
                integrator="bug",
                substep_optimizer="sgd",
                nan_policy=policy,
            )
        else:
            raise ValueError(name)

    def loss(self, poison: float | None) -> torch.Tensor:
        if self.name.startswith("riemannian"):
            U, S, V = self.model.W.manifold.unpack(self.model.W)
            out = ((self.x @ V) @ S.T) @ U.T
        elif self.name == "geolora_tucker":
            out = self.model(self.x)
        else:
            out = self.model(self.x)
        loss = ((out - self.y) ** 2).mean()
        return loss * poison if poison is not None else loss

    def step(self, poison: float | None = None) -> None:
        if self.name.startswith("debora"):
            level = "upper" if self.name == "debora_upper" else "lower"
            self.opt.zero_grad()
            self.loss(poison).backward()
            if level == "lower":
                self.opt.lower_step()
            else:
                self.opt.upper_step()
            return
        if self.closure_based:

            def closure():
                self.opt.zero_grad()
                loss = self.loss(poison)
                loss.backward()
                return loss

            self.opt.step(closure)
            return
        self.opt.zero_grad()
        self.loss(poison).backward()
        self.opt.step()

    def snapshot(self):
        sd = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        skel, tens = pack_state(self.opt.state_dict())
        return sd, _without_counter(skel), {k: v.clone() for k, v in tens.items()}

    def assert_unchanged(self, snap):
        sd, skel, tens = snap
        now = self.model.state_dict()
        assert list(now) == list(sd)
        for k in sd:
            assert torch.equal(now[k], sd[k]), f"{self.name}: {k} changed"
        skel2, tens2 = pack_state(self.opt.state_dict())
        assert _without_counter(skel2) == skel, f"{self.name}: optimizer bookkeeping changed"
        assert set(tens2) == set(tens)
        for k in tens:
            assert torch.equal(tens[k], tens2[k]) or (
                torch.isnan(tens[k]).any() and torch.equal(tens[k].isnan(), tens2[k].isnan())
            ), f"{self.name}: optimizer state {k} changed"


CASES = [
    "geolora",
    "geolora_tucker",
    "dlrt_augment",
    "dlrt_coefficient",
    "dlrt_parallel",
    "dlrt_bug",
    "debora_lower",
    "debora_upper",
    "riemannian_sgd",
    "riemannian_adam",
]
WARMUP = {"dlrt_augment": 2, "dlrt_coefficient": 3}  # step k hits an augment / a coefficient step


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", CASES)
def test_nan_at_step_k_is_skipped_and_changes_nothing(name, poison):
    case = Case(name, "skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(WARMUP.get(name, 2)):
            case.step()
    if name == "dlrt_augment":
        assert case.opt.cycle_position() == 0
    if name == "dlrt_coefficient":
        assert case.opt.cycle_position() == 1
    snap = case.snapshot()
    skips = getattr(case.opt, "nan_skips", None)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        case.step(poison)
    case.assert_unchanged(snap)
    if skips is not None:  # the library's rank-adaptive optimizers: a warning and a counter
        assert case.opt.nan_skips == skips + 1
        assert any(
            issubclass(w.category, RuntimeWarning) and "non-finite" in str(w.message) for w in rec
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        case.step()  # training goes on from the untouched state
    now = case.snapshot()[0]
    assert any(not torch.equal(now[k], snap[0][k]) for k in now if k in snap[0])
    assert all(torch.isfinite(v).all() for v in now.values())


@pytest.mark.parametrize("name", CASES)
def test_nan_with_raise_policy_raises_and_changes_nothing(name):
    case = Case(name, "raise")
    for _ in range(WARMUP.get(name, 2)):
        case.step()
    snap = case.snapshot()
    with pytest.raises(FloatingPointError):
        case.step(float("nan"))
    case.assert_unchanged(snap)


@pytest.mark.parametrize("name", ["geolora", "dlrt_parallel"])
def test_nan_in_one_layer_skips_the_whole_step(name):
    """A NaN in the projected gradients of layer 2 only: layer 1 is not updated either."""
    case = Case(name, "skip")
    case.step()
    snap = case.snapshot()
    case.opt.zero_grad()
    case.loss(None).backward()
    GV, UtGV, GtU = case.model[2].projected_grads
    GtU = GtU.clone()
    GtU[0, 0] = float("nan")
    case.model[2].set_projected_grads(ProjectedGradients(GV, UtGV, GtU))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        case.opt.step()
    case.assert_unchanged(snap)
    assert case.opt.nan_skips == 1


# ---------------------------------------------------------------------------- rank 0
@settings(max_examples=50, deadline=None)
@given(
    s=st.lists(st.floats(0.0, 1e6, allow_subnormal=False), min_size=1, max_size=8),
    rtol=st.floats(0.0, 0.999),
)
def test_relative_rule_never_returns_rank_zero_for_a_nonzero_matrix(s, rtol):
    sv = torch.tensor(sorted(s, reverse=True), dtype=F64)
    r = RankRule(rtol=rtol, min_rank=0).select(sv)
    if float(sv.max()) > 0:
        assert r >= 1
    else:
        assert r == 0  # an exactly zero matrix: rank 0 only if min_rank allows it
    assert RankRule(rtol=rtol).select(sv) >= 1  # default min_rank=1


def _zero_core_model(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(LowRankLinear(5, 4, 2, max_rank=4, dtype=F64, generator=g))
    U, S, V = model[0].point()
    model[0].set_point(FixedRankPoint(U, torch.zeros_like(S), V))
    return model


def _zero_loss_step(model, opt):
    opt.zero_grad()
    model(torch.eye(5, dtype=F64)).sum().mul(0.0).backward()
    opt.step()


def test_geolora_zero_core_goes_to_min_rank_and_recovers():
    x = torch.eye(5, dtype=F64)
    # min_rank=1 (default): a zero core of rank 1 (output = bias) that a gradient revives
    model = _zero_core_model()
    opt = GeoLoRA(model, lr=0.5, tau=0.1)
    _zero_loss_step(model, opt)
    assert model[0].rank == 1 and torch.equal(model[0].S, torch.zeros(1, 1, dtype=F64))
    torch.testing.assert_close(model(x), model[0].bias.expand(5, 4), rtol=0, atol=0)
    opt.zero_grad()
    (model(x) - 1.0).pow(2).sum().backward()
    opt.step()
    assert model[0].rank >= 1 and float(model[0].S.detach().abs().max()) > 0
    # min_rank=0: the layer switches off; rank 0 is absorbing and everything keeps working
    model = _zero_core_model()
    opt = GeoLoRA(model, lr=0.5, tau=0.1, min_rank=0)
    _zero_loss_step(model, opt)
    assert model[0].rank == 0 and model[0].U.shape == (4, 0)
    for _ in range(2):
        opt.zero_grad()
        (model(x) - 1.0).pow(2).sum().backward()
        opt.step()
        assert model[0].rank == 0
    torch.testing.assert_close(model(x), model[0].bias.expand(5, 4), rtol=0, atol=0)
    assert opt.nan_skips == 0


def test_dlrt_keeps_at_least_rank_one():
    with pytest.raises(ValueError, match="min_rank"):
        DLRT(_zero_core_model(), min_rank=0)
    model = _zero_core_model()
    opt = DLRT(model, lr=0.1, tau=0.5, integrator="parallel", substep_optimizer="sgd")
    _zero_loss_step(model, opt)
    assert model[0].rank == 1 and float(model[0].S.detach().abs().max()) == 0.0


# ---------------------------------------------------------------------------- extreme lr
def _orth_err(Q: torch.Tensor) -> float:
    if Q.shape[1] == 0:
        return 0.0
    eye = torch.eye(Q.shape[1], dtype=Q.dtype)
    return float((Q.T @ Q - eye).abs().max())


def _bases(model: nn.Module) -> list[torch.Tensor]:
    if hasattr(model, "W"):
        U, _, V = model.W.manifold.unpack(model.W)
        return [U.detach(), V.detach()]
    out = []
    for m in model.modules():
        if hasattr(m, "basis_parameters"):
            out += [p.detach() for p in m.basis_parameters()]
    return out


@pytest.mark.parametrize(
    "name",
    [
        "geolora",
        "geolora_tucker",
        "dlrt_augment",
        "dlrt_parallel",
        "dlrt_bug",
        "riemannian_sgd",
        "riemannian_adam",
    ],
)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_extreme_learning_rate_keeps_bases_orthonormal(name, dtype):
    """lr = 1e3: the loss may blow up (and steps be skipped) but bases stay orthonormal."""
    case = Case(name, "skip")
    case.model.to(dtype)
    case.x, case.y = case.x.to(dtype), case.y.to(dtype)
    for g in case.opt.param_groups:
        g["lr"] = 1e3
    tol = 1e3 * torch.finfo(dtype).eps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(15):
            case.step()
            for Q in _bases(case.model):
                assert torch.isfinite(Q).all()
                err = _orth_err(Q)
                assert err <= tol, f"{name}: ‖QᵀQ − I‖ = {err}"
    assert all(torch.isfinite(v).all() for v in case.model.state_dict().values())
