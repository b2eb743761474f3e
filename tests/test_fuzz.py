"""Bad-input fuzzing of every public constructor and configuration.

For each target, hypothesis starts from a valid set of arguments and replaces one or two of
them by values drawn from a pool mixing valid and invalid ones (wrong types, negative, zero,
huge, NaN/Inf, bools, strings, tuples of the wrong length, unsupported dtypes and
unavailable devices, non-matching ``target_modules``). Each input must either

* **work**: the object is built *and used* (a forward/backward pass and an optimizer step,
  a rank selection, a random point, an adapter injection) without any exception, or
* raise :class:`ValueError` or :class:`TypeError` whose message **names one of the changed
  arguments**.

Anything else (``RuntimeError`` from deep inside torch, ``NotImplementedError``,
``AssertionError``, a silently accepted NaN scaling, …) fails. The number of inputs tried is
printed in the terminal summary (``fuzz: N inputs tried``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from typing import Any

import geoopt
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from manifold_lowrank.adapters import AdapterConfig, get_adapter_model
from manifold_lowrank.linalg import RankRule
from manifold_lowrank.manifolds import FixedRank, Tucker
from manifold_lowrank.nn import (
    AdaptedLinear,
    LowRankAdapter,
    LowRankConv2d,
    LowRankConv2dAdapter,
    LowRankLinear,
    TuckerConv2d,
    TuckerConv2dAdapter,
)
from manifold_lowrank.optim import GeoLoRA, RiemannianAdam, RiemannianSGD
from manifold_lowrank.optim.dlrt import DLRT

TRIED: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()
EXAMPLES = int(os.environ.get("MLR_FUZZ_EXAMPLES", "30"))  # per target

NAN, INF = float("nan"), float("inf")
# (no astronomically large sizes: an allocation failure is not an input-validation matter)
INTS = [0, 1, 2, 3, 5, 300, -1, 1.5, 2.0, True, None, "3", NAN, (2,), [2, 2]]
SMALL_INTS = [0, 1, 2, 3, -1, 1.5, True, None, "2", (1, 1), (1, 2, 3)]
FLOATS = [
    0.0,
    1e-3,
    0.1,
    0.5,
    0.99,
    1.0,
    1.5,
    -0.1,
    -1.0,
    1e3,
    NAN,
    INF,
    -INF,
    None,
    "0.1",
    True,
    1,
]
DTYPES = [
    None,
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.complex64,
    torch.bool,
    "float32",
]
DEVICES = [None, "cpu", torch.device("cpu"), "cpu:0", "cuda", "cuda:0", "nope", 0, -1, 3.5]
GENERATORS = [None, torch.Generator().manual_seed(1), 3, "seed"]
BOOLS = [True, False, None, 0, 1, "yes"]


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    total = sum(TRIED.values())
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    per = ", ".join(f"{k}={v}" for k, v in sorted(TRIED.items()))
    outs = ", ".join(f"{k}={v}" for k, v in sorted(OUTCOMES.items()))
    line = f"fuzz: {total} inputs tried ({per}); outcomes: {outs}"
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if tr is not None and capman is not None:
        with capman.global_and_fixture_disabled():  # visible without -s
            tr.write_line(line)
    else:
        print(line)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------- smoke uses
def _train_layer(layer: nn.Module, x: torch.Tensor) -> None:
    model = nn.Sequential(layer)
    opt = GeoLoRA(model, lr=0.01)
    out = model(x)
    assert torch.isfinite(out).all()
    if out.requires_grad:  # (a rank-0 adapter around a frozen base has nothing to train)
        out.float().pow(2).mean().backward()
    opt.step()
    assert opt.nan_skips == 0


def _layer_input(layer: nn.Module, dtype: torch.dtype | None) -> torch.Tensor:
    base = getattr(layer, "base_layer", None)
    if base is not None:  # adapters: the input has the dtype of the frozen base layer
        dt = base.weight.dtype
    else:
        dt = dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None
        dt = dt or torch.get_default_dtype()
    dev = next(layer.parameters()).device
    base = base if base is not None else layer
    if isinstance(layer, (LowRankConv2d, TuckerConv2d)) or isinstance(base, nn.Conv2d):
        return torch.randn(2, base.in_channels, 7, 7, dtype=dt, device=dev)
    return torch.randn(3, base.in_features, dtype=dt, device=dev)


def _use_layer(obj: nn.Module, kw: dict) -> None:
    if next(obj.parameters()).device.type == "meta":
        return  # meta tensors have no values: construction is all there is to check
    _train_layer(obj, _layer_input(obj, kw.get("dtype")))


def _use_optimizer(opt: torch.optim.Optimizer, model: nn.Module, x: torch.Tensor) -> None:
    for _ in range(2):
        opt.zero_grad()
        if hasattr(model, "W"):
            U, S, V = model.W.manifold.unpack(model.W)
            out = ((x @ V) @ S.T) @ U.T
        else:
            out = model(x)
        (out**2).mean().backward()
        opt.step()


# ---------------------------------------------------------------------------- targets
def _seq():
    g = torch.Generator().manual_seed(0)
    return nn.Sequential(LowRankLinear(6, 5, 2, max_rank=4, generator=g), nn.Tanh())


def _geoopt_model():
    M = FixedRank(5, 6, 2)
    model = nn.Module()
    model.W = geoopt.ManifoldParameter(
        M.random(generator=torch.Generator().manual_seed(0)), manifold=M
    )
    return model


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.query = nn.Linear(6, 6)
        self.value = nn.Linear(6, 6)
        self.conv = nn.Conv2d(2, 3, 3)
        self.classifier = nn.Linear(6, 2)

    def forward(self, x):
        return self.classifier(self.value(self.query(x)))


TARGETS: dict[str, dict[str, Any]] = {
    "LowRankLinear": {
        "make": lambda **k: LowRankLinear(**k),
        "base": {"in_features": 6, "out_features": 5, "rank": 2},
        "pools": {
            "in_features": INTS,
            "out_features": INTS,
            "rank": INTS,
            "max_rank": INTS,
            "bias": BOOLS,
            "dtype": DTYPES,
            "device": DEVICES,
            "generator": GENERATORS,
        },
        "use": _use_layer,
    },
    "LowRankConv2d": {
        "make": lambda **k: LowRankConv2d(**k),
        "base": {"in_channels": 2, "out_channels": 3, "kernel_size": 3, "rank": 2},
        "pools": {
            "in_channels": INTS,
            "out_channels": INTS,
            "kernel_size": SMALL_INTS,
            "rank": INTS,
            "stride": SMALL_INTS,
            "padding": [*SMALL_INTS, "valid", "same"],
            "dilation": SMALL_INTS,
            "groups": [1, 2, 0],
            "max_rank": INTS,
            "dtype": DTYPES,
            "device": DEVICES,
            "generator": GENERATORS,
        },
        "use": _use_layer,
    },
    "TuckerConv2d": {
        "make": lambda **k: TuckerConv2d(**k),
        "base": {"in_channels": 2, "out_channels": 3, "kernel_size": 3, "ranks": 2},
        "pools": {
            "in_channels": INTS,
            "out_channels": INTS,
            "kernel_size": SMALL_INTS,
            "ranks": [2, 1, 0, 4, -1, (2, 2), (2, 2, 3, 3), (2, 2, 2), (5, 5), None, "2", 1.5],
            "full_modes": [(2, 3), (), (0,), (3, 2), (4,), (2, 2), None, "23", (1.0,)],
            "max_ranks": [None, (3, 2, 3, 3), (1, 1, 1, 1), (0, 0, 0, 0), (3, 2), 5, "x"],
            "stride": SMALL_INTS,
            "padding": SMALL_INTS,
            "dtype": DTYPES,
            "device": DEVICES,
            "generator": GENERATORS,
        },
        "use": _use_layer,
    },
    "LowRankAdapter": {
        "make": lambda **k: LowRankAdapter(**k),
        "base": {"base": "linear", "rank": 2},
        "pools": {
            "base": ["linear", "conv", None, "linear64", 3],
            "rank": INTS,
            "max_rank": INTS,
            "scaling": FLOATS,
            "dropout": FLOATS,
            "dtype": DTYPES,
            "generator": GENERATORS,
            "freeze_base": BOOLS,
        },
        "use": _use_layer,
    },
    "AdaptedLinear": {
        "make": lambda **k: AdaptedLinear(**k),
        "base": {"in_features": 6, "out_features": 5, "rank": 2},
        "pools": {
            "in_features": INTS,
            "out_features": INTS,
            "rank": INTS,
            "max_rank": INTS,
            "scaling": FLOATS,
            "dropout": FLOATS,
            "dtype": DTYPES,
            "device": DEVICES,
        },
        "use": _use_layer,
    },
    "LowRankConv2dAdapter": {
        "make": lambda **k: LowRankConv2dAdapter(**k),
        "base": {"base": "conv", "rank": 2},
        "pools": {
            "base": ["conv", "linear", "conv_same", None],
            "rank": INTS,
            "max_rank": INTS,
            "scaling": FLOATS,
            "dropout": FLOATS,
            "dtype": DTYPES,
            "generator": GENERATORS,
        },
        "use": _use_layer,
    },
    "TuckerConv2dAdapter": {
        "make": lambda **k: TuckerConv2dAdapter(**k),
        "base": {"base": "conv", "ranks": 2},
        "pools": {
            "base": ["conv", "linear", None],
            "ranks": [2, 1, 0, 3, -1, (2, 2), (2, 2, 3, 3), None, "2"],
            "full_modes": [(2, 3), (), (0,), (4,), None],
            "max_ranks": [None, (3, 2, 3, 3), (1, 1, 1, 1), (3,)],
            "scaling": FLOATS,
            "dropout": FLOATS,
            "dtype": DTYPES,
        },
        "use": _use_layer,
    },
    "RankRule": {
        "make": lambda **k: RankRule(**k),
        "base": {"rtol": 0.1},
        "pools": {
            "rank": [None, 0, 1, 3, -1, 1.5, True, "2"],
            "rtol": [None, *FLOATS],
            "atol": [None, *FLOATS],
            "min_rank": SMALL_INTS,
            "max_rank": [None, *SMALL_INTS],
        },
        "use": lambda obj, kw: obj.select(torch.tensor([3.0, 2.0, 1.0, 1e-3])),
    },
    "FixedRank": {
        "make": lambda **k: FixedRank(**k),
        "base": {"m": 5, "n": 4, "r": 2},
        "pools": {
            "m": INTS,
            "n": INTS,
            "r": INTS,
            "retraction": ["polar", "orthographic", "ksl", "qr", None, 1],
            "check_finite": BOOLS,
        },
        "use": lambda obj, kw: obj.random(generator=torch.Generator().manual_seed(0)),
    },
    "Tucker": {
        "make": lambda **k: Tucker(**k),
        "base": {"shape": (4, 3, 2), "ranks": (2, 2, 2)},
        "pools": {
            "shape": [(4, 3, 2), (4,), (4, 0, 2), (4, -1, 2), "432", 4, None, (4.0, 3, 2)],
            "ranks": [(2, 2, 2), (1, 1, 1), (5, 2, 2), (2, 2), (0, 2, 2), (4, 1, 1), None, 2],
            "check_finite": BOOLS,
        },
        "use": lambda obj, kw: obj.random(generator=torch.Generator().manual_seed(0)),
    },
    "GeoLoRA": {
        "make": lambda **k: GeoLoRA(_seq(), **k),
        "base": {"lr": 0.01},
        "pools": {
            "lr": FLOATS,
            "tau": FLOATS,
            "max_rank": INTS,
            "min_rank": INTS,
            "truncate_every": INTS,
            "momentum": FLOATS,
            "precondition": ["none", "layer_rms", "factored", "x"],
            "beta2": FLOATS,
            "eps": FLOATS,
            "weight_decay": FLOATS,
            "nan_policy": ["skip", "raise", "ignore", None],
        },
        "use": lambda opt, kw: _use_optimizer(opt, opt._model, torch.randn(3, 6)),
    },
    "DLRT": {
        "make": lambda **k: DLRT(_seq(), **k),
        "base": {"lr": 0.01},
        "pools": {
            "lr": FLOATS,
            "tau": FLOATS,
            "integrator": ["augmented_bug", "parallel", "bug", "x"],
            "augment_every": [None, *INTS],
            "substep_optimizer": ["sgd", "momentum", "adam", "adamw", None],
            "momentum": FLOATS,
            "betas": [(0.9, 0.999), (0.9,), (1.0, 0.9), (NAN, 0.9), 0.9],
            "eps": FLOATS,
            "weight_decay": FLOATS,
            "min_rank": INTS,
            "max_rank": [None, *INTS],
            "nan_policy": ["skip", "raise", "x"],
        },
        "use": lambda opt, kw: _use_dlrt(opt),
    },
    "RiemannianSGD": {
        "make": lambda **k: RiemannianSGD(list(_geoopt_model().parameters()), **k),
        "base": {"lr": 0.01},
        "pools": {
            "lr": FLOATS,
            "momentum": FLOATS,
            "dampening": FLOATS,
            "weight_decay": FLOATS,
            "nesterov": BOOLS,
            "stabilize": [None, *INTS],
            "gradient": ["euclidean", "riemannian", "x"],
            "nonfinite": ["raise", "skip", "x"],
        },
        "use": lambda opt, kw: _use_riemannian(opt),
    },
    "RiemannianAdam": {
        "make": lambda **k: RiemannianAdam(list(_geoopt_model().parameters()), **k),
        "base": {"lr": 0.01},
        "pools": {
            "lr": FLOATS,
            "betas": [(0.9, 0.999), (0.9,), (1.0, 0.9), (-0.1, 0.9), "x"],
            "eps": FLOATS,
            "weight_decay": FLOATS,
            "amsgrad": BOOLS,
            "stabilize": [None, *INTS],
            "nonfinite": ["raise", "skip", "x"],
        },
        "use": lambda opt, kw: _use_riemannian(opt),
    },
    "AdapterConfig": {
        "make": lambda **k: AdapterConfig(**k),
        "base": {"target_modules": ["query", "value"]},
        "pools": {
            "r": INTS,
            "max_rank": INTS,
            "min_rank": INTS,
            "tau": FLOATS,
            "target_modules": [
                ["query"],
                ["query", "value"],
                "query|value",
                ".*",
                "all-linear",
                ["conv"],
                ["nothing"],
                [],
                "(",
                None,
                3,
                ["query", 3],
                "key",
            ],
            "exclude_modules": [None, ["value"], "value", 3, [None]],
            "modules_to_save": [None, ["classifier"], ["nope"], "classifier", [1]],
            "dropout": FLOATS,
            "scaling": FLOATS,
            "conv_format": ["matrix", "tucker", "x", None],
            "tucker_full_modes": [[2, 3], [], [5], None, 3, ["a"], [2.5]],
            "rank_pattern": [{}, {"query": 1}, {"query": -1}, {"query": 1.5}, [], {"(": 1}],
            "method": ["geolora", "debora", "nope", None],
            "init_seed": [0, None, -1, "x", 1.5],
        },
        "use": lambda cfg, kw: _use_config(cfg),
    },
}


def _use_dlrt(opt):
    model = opt._model
    x = torch.randn(3, 6)
    if opt.integrator == "bug":

        def closure():
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            loss.backward()
            return loss

        for _ in range(2):
            opt.step(closure)
    else:
        _use_optimizer(opt, model, x)


def _use_riemannian(opt):
    W = opt.param_groups[0]["params"][0]
    model = nn.Module()
    model.W = W
    if opt.param_groups[0]["gradient"] == "riemannian":
        for _ in range(2):
            opt.zero_grad()
            W.grad = W.manifold.proju(W.detach(), torch.randn_like(W))
            opt.step()
        return
    _use_optimizer(opt, model, torch.randn(3, 6))


def _use_config(cfg):
    model = get_adapter_model(_Tiny(), cfg)
    layers = model.adapter_layers()
    assert layers
    x = torch.randn(3, 6)
    outs = [model(x)]
    if any(isinstance(la, (LowRankConv2dAdapter, TuckerConv2dAdapter)) for la in layers.values()):
        outs.append(model.get_base_model().conv(torch.randn(1, 2, 5, 5)))
    for out in outs:
        assert torch.isfinite(out).all()
        if out.requires_grad:  # (rank-0 adapters around frozen layers: nothing to train)
            out.sum().backward()


def _materialise(name: str, kw: dict) -> dict:
    """Replace placeholder base layers by fresh modules."""
    out = dict(kw)
    b = out.get("base")
    if isinstance(b, str):
        out["base"] = {
            "linear": lambda: nn.Linear(6, 5),
            "linear64": lambda: nn.Linear(6, 5, dtype=torch.float64),
            "conv": lambda: nn.Conv2d(2, 3, 3),
            "conv_same": lambda: nn.Conv2d(2, 3, 3, padding="same"),
        }[b]()
    return out


def _names_in(msg: str, names: list[str]) -> bool:
    low = msg.lower()
    aliases = {
        "in_features": ["in"],
        "out_features": ["out"],
        "r": ["rank", "r "],
        "m": ["m "],
        "n": ["n "],
        "base": ["base"],
        "ranks": ["rank"],
        "max_ranks": ["max_rank"],
    }
    for n in names:
        if n.lower() in low or any(a in low for a in aliases.get(n, [])):
            return True
    return False


def _run_one(target: str, changes: dict) -> None:
    spec = TARGETS[target]
    kw = {**spec["base"], **changes}
    TRIED[target] += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = spec["make"](**_materialise(target, kw))
            if target in ("GeoLoRA", "DLRT"):
                obj._model = nn.Sequential(*[la for la in obj.layers])
            spec["use"](obj, kw)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        assert _names_in(msg, list(kw)), (
            f"{target}({changes!r}) raised {type(exc).__name__} not naming the argument: {msg}"
        )
        OUTCOMES[type(exc).__name__] += 1
        return
    except Exception as exc:  # any other exception is a finding
        raise AssertionError(
            f"{target}({changes!r}) raised {type(exc).__name__} (expected success, ValueError or "
            f"TypeError naming the argument): {exc}"
        ) from exc
    OUTCOMES["works"] += 1


_HYPER = (
    "scaling",
    "dropout",
    "lr",
    "tau",
    "rtol",
    "atol",
    "eps",
    "momentum",
    "beta2",
    "weight_decay",
    "dampening",
)


def _check_accepted_values(target: str, changes: dict) -> None:
    """Values that must never be silently accepted (NaN/Inf hyper-parameters)."""
    for k, v in changes.items():
        if k == "atol" and v == INF:
            continue  # RankRule(atol=inf) is meaningful: keep min_rank
        if isinstance(v, float) and not math.isfinite(v) and k in _HYPER:
            raise AssertionError(f"{target}: {k}={v!r} was accepted")


@pytest.mark.parametrize("target", sorted(TARGETS))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_public_constructors_work_or_raise_naming_the_argument(target, data):
    pools = TARGETS[target]["pools"]
    names = data.draw(
        st.lists(st.sampled_from(sorted(pools)), min_size=1, max_size=2, unique=True),
        label="arguments",
    )
    changes = {n: data.draw(st.sampled_from(pools[n]), label=n) for n in names}
    before = OUTCOMES["works"]
    _run_one(target, changes)
    if OUTCOMES["works"] > before:
        _check_accepted_values(target, changes)
