"""Long float32 runs of every optimizer (shared by tests/test_long_runs.py and benchmarks)."""

from __future__ import annotations

import warnings

import geoopt
import torch
from torch import nn

from manifold_lowrank.manifolds import FixedRank
from manifold_lowrank.nn import LowRankLinear, TuckerConv2d
from manifold_lowrank.nn.debora import DeboraLinearAdapter
from manifold_lowrank.optim import DEBORA, GeoLoRA, RiemannianAdam, RiemannianSGD
from manifold_lowrank.optim.dlrt import DLRT

M_OUT, N_IN, RANK = 16, 20, 4
OPTIMIZERS = (
    "geolora",
    "geolora_rms",
    "geolora_tucker",
    "dlrt_augmented_bug",
    "dlrt_parallel",
    "dlrt_tucker",
    "debora",
    "riemannian_sgd",
    "riemannian_adam",
)


def _data(dtype: torch.dtype, name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    if name.endswith("tucker"):
        X = torch.randn(64, 4, 6, 6, generator=g)
        K = torch.randn(5, 4, 3, 3, generator=g) / 6
        Y = torch.nn.functional.conv2d(X, K) + 0.1 * torch.randn(64, 5, 4, 4, generator=g)
        return X.to(dtype), Y.to(dtype)
    X = torch.randn(128, N_IN, generator=g)
    A = torch.randn(M_OUT, 6, generator=g) @ torch.randn(6, N_IN, generator=g) / 6
    Y = X @ A.T + 0.1 * torch.randn(128, M_OUT, generator=g)
    return X.to(dtype), Y.to(dtype)


def build(name: str, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, torch.optim.Optimizer]:
    g = torch.Generator().manual_seed(5)
    if name.startswith("riemannian"):
        M = FixedRank(M_OUT, N_IN, RANK)
        model = nn.Module()
        model.W = geoopt.ManifoldParameter(M.random(generator=g, dtype=dtype), manifold=M)
        # "<name>_default": stabilize=None; otherwise projx every 50 steps
        stab = None if name.endswith("_default") else 50
        if name.startswith("riemannian_sgd"):
            return model, RiemannianSGD([model.W], lr=0.02, momentum=0.9, stabilize=stab)
        return model, RiemannianAdam([model.W], lr=0.01, stabilize=stab)
    if name.endswith("tucker"):
        model = nn.Sequential(
            TuckerConv2d(4, 5, 3, 2, max_ranks=(5, 4, 3, 3), dtype=dtype, generator=g)
        )
        if name == "geolora_tucker":
            return model, GeoLoRA(model, lr=0.05, tau=0.05, max_rank=5, momentum=0.5)
        return model, DLRT(model, lr=0.005, tau=0.05, augment_every=3)
    if name == "debora":
        model = nn.Sequential(
            DeboraLinearAdapter(nn.Linear(N_IN, M_OUT, dtype=dtype), RANK, generator=g, dtype=dtype)
        )
        return model, DEBORA(model, tau=4.0, eps=0.01, lr=0.01, prune_after=10**9)
    model = nn.Sequential(LowRankLinear(N_IN, M_OUT, RANK, max_rank=12, dtype=dtype, generator=g))
    if name == "geolora":
        return model, GeoLoRA(model, lr=0.05, tau=0.01, max_rank=12, momentum=0.5)
    if name == "geolora_rms":
        return model, GeoLoRA(
            model, lr=0.05, tau=0.01, max_rank=12, momentum=0.9, precondition="layer_rms"
        )
    if name == "dlrt_augmented_bug":
        return model, DLRT(model, lr=0.005, tau=0.01, augment_every=5)
    if name == "dlrt_parallel":
        return model, DLRT(
            model, lr=0.05, tau=0.01, integrator="parallel", substep_optimizer="momentum"
        )
    raise ValueError(name)


def bases(model: nn.Module) -> list[torch.Tensor]:
    if hasattr(model, "W"):
        U, _, V = model.W.manifold.unpack(model.W.detach())
        return [U, V]
    return [p.detach() for p in model[0].basis_parameters()]


def rank_of(model: nn.Module) -> int | tuple[int, ...]:
    if hasattr(model, "W"):
        return int(model.W.manifold.r)
    layer = model[0]
    return tuple(layer.ranks) if hasattr(layer, "ranks") else int(layer.rank)


def orth_error(model: nn.Module) -> float:
    """``max ‖QᵀQ − I‖_max`` over the bases, computed in float64."""
    err = 0.0
    for Q in bases(model):
        q = Q.to(torch.float64)
        err = max(err, float((q.T @ q - torch.eye(q.shape[1], dtype=torch.float64)).abs().max()))
    return err


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "W"):
        U, S, V = model.W.manifold.unpack(model.W)
        return ((x @ V) @ S.T) @ U.T
    return model(x)


def run(name: str, steps: int, *, check_every: int = 50, dtype=torch.float32) -> dict:
    """Minibatch training; records the orthonormality error and ranks every ``check_every``."""
    X, Y = _data(dtype, name)
    model, opt = build(name, dtype)
    gen = torch.Generator().manual_seed(0)
    errs, ranks, losses = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for t in range(1, steps + 1):
            idx = torch.randint(0, X.shape[0], (32,), generator=gen)
            opt.zero_grad()
            loss = ((_forward(model, X[idx]) - Y[idx]) ** 2).mean()
            loss.backward()
            if name == "debora":  # lower steps on the bases, an upper (weights) step every 5
                opt.lower_step() if t % 5 else opt.upper_step()
            else:
                opt.step()
            if t % check_every == 0 or t == steps:
                errs.append(orth_error(model))
                ranks.append(rank_of(model))
                losses.append(float(loss.detach()))
    return {
        "errs": errs,
        "ranks": ranks,
        "losses": losses,
        "nan_skips": getattr(opt, "nan_skips", 0),
    }
