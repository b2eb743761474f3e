"""Training scenarios for tests/test_checkpoint.py, also run by a fresh Python process.

``python tests/_checkpoint_scenarios.py <checkpoint root> <output json> <steps>`` resumes
every scenario from ``<root>/<name>`` and writes the continued losses (``float.hex``).
"""

from __future__ import annotations

import json
import sys
import warnings

import geoopt
import torch
from torch import nn

from manifold_lowrank.checkpoint import load_checkpoint
from manifold_lowrank.manifolds import FixedRank
from manifold_lowrank.nn import LowRankLinear
from manifold_lowrank.optim import GeoLoRA, RiemannianAdam
from manifold_lowrank.optim.dlrt import DLRT

F64 = torch.float64
SCENARIOS = ("geolora", "dlrt", "riemannian_adam")


def deterministic() -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    X = torch.randn(64, 8, generator=g, dtype=F64)
    A = torch.randn(4, 8, generator=g, dtype=F64)
    Y = torch.tanh(X @ A.T) + 0.05 * torch.randn(64, 4, generator=g, dtype=F64)
    return X, Y


def build(name: str, seed: int) -> dict:
    """Fresh objects; ``seed`` only affects the initial weights (overwritten on resume)."""
    g = torch.Generator().manual_seed(seed)
    data_gen = torch.Generator().manual_seed(seed + 1)
    if name == "riemannian_adam":
        M = FixedRank(4, 8, 2)
        W = geoopt.ManifoldParameter(M.random(generator=g, dtype=F64), manifold=M)
        model = nn.Module()
        model.W = W
        opts = {"optimizer": RiemannianAdam([W], lr=0.05, stabilize=3)}
        return {"model": model, "opts": opts, "gens": {"data": data_gen}}
    model = nn.Sequential(
        LowRankLinear(8, 12, 2, max_rank=8, dtype=F64, generator=g),
        nn.Tanh(),
        nn.Dropout(0.2),
        LowRankLinear(12, 6, 2, max_rank=6, dtype=F64, generator=g),
        nn.Linear(6, 4, dtype=F64),
    )
    if name == "geolora":
        opts = {
            "optimizer": GeoLoRA(
                model, lr=0.5, tau=0.02, max_rank=8, momentum=0.9, precondition="layer_rms"
            ),
            "head": torch.optim.AdamW(
                [model[0].bias, model[3].bias, *model[4].parameters()], lr=1e-2
            ),
        }
    elif name == "dlrt":
        opts = {"optimizer": DLRT(model, lr=0.02, tau=0.05, augment_every=3)}
    else:
        raise ValueError(name)
    return {"model": model, "opts": opts, "gens": {"data": data_gen}}


def ranks(obj: dict) -> list[int]:
    m = obj["model"]
    if isinstance(m, nn.Sequential):
        return [m[0].rank, m[3].rank]
    return []


def run(obj: dict, steps: int) -> list[float]:
    """``steps`` minibatch steps; returns the losses."""
    X, Y = data()
    model, opts, gen = obj["model"], obj["opts"], obj["gens"]["data"]
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, X.shape[0], (16,), generator=gen)
        for o in opts.values():
            o.zero_grad()
        if isinstance(model, nn.Sequential):
            loss = ((model(X[idx]) - Y[idx]) ** 2).mean()
        else:  # a fixed-rank linear map W = U S Vᵀ (4×8)
            loss = ((_fixed_rank_out(model, X[idx]) - Y[idx]) ** 2).mean()
        loss.backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for o in opts.values():
                o.step()
        losses.append(float(loss.detach()))
    return losses


def _fixed_rank_out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    U, S, V = model.W.manifold.unpack(model.W)
    return ((x @ V) @ S.transpose(0, 1)) @ U.transpose(0, 1)


def resume_main(root: str, out: str, steps: int) -> None:
    deterministic()
    result = {}
    for name in SCENARIOS:
        torch.manual_seed(12345)  # scrambled global RNG: the checkpoint must restore it
        obj = build(name, seed=999)  # different initial weights: the checkpoint restores them
        info = load_checkpoint(f"{root}/{name}", obj["model"], obj["opts"], generators=obj["gens"])
        result[name] = {
            "losses": [x.hex() for x in run(obj, steps)],
            "ranks_loaded": info.ranks,
            "restored": info.restored,
        }
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    resume_main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
