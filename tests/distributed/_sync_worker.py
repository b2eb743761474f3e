"""Worker functions for tests/distributed/test_sync.py (imported by the worker processes).

Every scenario trains a tiny float64 model (two LowRankLinear layers) on a fixed regression
data set; worker ``i`` of ``w`` sees rows ``[i N/w, (i+1) N/w)`` and the loss is the mean
over its rows, so the average of the workers' gradients is the full-batch gradient.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import nn

from manifold_lowrank.distributed import (
    DistributedLowRank,
    broadcast_model,
    ddp_ignore_lowrank_factors,
    replicas_in_sync,
    sync_gradients,
)
from manifold_lowrank.manifolds.types import FixedRankPoint
from manifold_lowrank.nn import LowRankLinear, TuckerConv2d
from manifold_lowrank.optim import GeoLoRA
from manifold_lowrank.optim.dlrt import DLRT
from manifold_lowrank.optim.lowrank_base import find_lowrank_layers, layer_rank

F64 = torch.float64
N, D_IN, D_HID, D_OUT = 24, 6, 10, 3
STEPS = 6


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2024)
    X = torch.randn(N, D_IN, generator=g, dtype=F64)
    W = torch.randn(D_OUT, D_IN, generator=g, dtype=F64)
    Y = torch.tanh(X @ W.T) + 0.1 * torch.randn(N, D_OUT, generator=g, dtype=F64)
    return X, Y


def make_data_conv() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    X = torch.randn(N, 2, 5, 5, generator=g, dtype=F64)
    Y = torch.randn(N, 3, 3, 3, generator=g, dtype=F64)
    return X, Y


def make_model(seed: int, name: str = "") -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    if name == "geolora_tucker":
        return nn.Sequential(TuckerConv2d(2, 3, 3, (1, 1), dtype=F64, generator=g))
    return nn.Sequential(
        LowRankLinear(D_IN, D_HID, 2, max_rank=6, dtype=F64, generator=g),
        nn.Tanh(),
        LowRankLinear(D_HID, D_OUT, 2, max_rank=3, dtype=F64, generator=g),
    )


def make_optimizers(name: str, model: nn.Module) -> list[torch.optim.Optimizer]:
    if name == "geolora_tucker":
        return [GeoLoRA(model, lr=2.0, tau=0.01, max_rank=3, momentum=0.5)]
    biases = [model[0].bias, model[2].bias]
    if name == "geolora":
        return [
            GeoLoRA(model, lr=1.0, tau=0.01, max_rank=6, momentum=0.5),
            torch.optim.SGD(biases, lr=0.1),
        ]
    if name == "dlrt":
        return [DLRT(model, lr=0.05, tau=0.02, augment_every=2, substep_optimizer="adam")]
    if name == "dlrt_bug":
        return [
            DLRT(
                model,
                lr=1.0,
                tau=0.01,
                integrator="bug",
                substep_optimizer="momentum",
                momentum=0.5,
            )
        ]
    raise ValueError(name)


def _ranks(model: nn.Module) -> list:
    return [layer_rank(m) for _, m in find_lowrank_layers(model)]


def snapshot(model: nn.Module) -> tuple[list, torch.Tensor]:
    ranks = _ranks(model)
    flat = torch.cat([t.detach().reshape(-1) for t in model.state_dict().values()])
    return ranks, flat.clone()


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, poison: bool) -> torch.Tensor:
    loss = ((model(x) - y) ** 2).mean()
    return loss * float("nan") if poison else loss


def train(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    ddp: DistributedLowRank | None = None,
    opts: list[torch.optim.Optimizer] | None = None,
    nan_at: int | None = None,
) -> dict:
    """Train STEPS steps; ``ddp=None`` is the single-process reference."""
    opts = opts if ddp is None else ddp.optimizers
    assert opts is not None
    records, payload, kinds, ranks_before = [snapshot(model)], [], [], []
    for t in range(STEPS):
        poison = nan_at is not None and t == nan_at
        ranks_before.append(_ranks(model))

        def closure(poison=poison):
            for o in opts:
                o.zero_grad()
            loss = _loss(model, x, y, poison)
            loss.backward()
            return loss

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if name == "dlrt_bug":
                if ddp is None:
                    opts[0].step(closure)
                else:
                    ddp.step(closure)
            else:
                closure()
                if ddp is None:
                    for o in opts:
                        o.step()
                else:
                    ddp.step()
        kinds.append(getattr(opts[0], "last_step_kind", None))
        payload.append(ddp.last_stats.payload_bytes if ddp is not None else 0)
        records.append(snapshot(model))
    return {
        "ranks": [r for r, _ in records],
        "flat": [f for _, f in records],
        "payload": payload,
        "kinds": kinds,
        "ranks_before": ranks_before,
        "nan_skips": ddp.nan_skips if ddp is not None else None,
    }


def _shard(rank: int, world: int, name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    X, Y = make_data_conv() if name == "geolora_tucker" else make_data()
    n = N // world
    return X[rank * n : (rank + 1) * n], Y[rank * n : (rank + 1) * n]


def sync_worker(rank: int, world: int, names: list[str], extras: bool) -> dict:
    torch.use_deterministic_algorithms(True)
    x, y = _shard(rank, world)
    out: dict = {}
    for name in names:
        xs, ys = _shard(rank, world, name)
        X, Y = _shard(0, 1, name)
        # different initial weights per worker: the wrapper broadcasts rank 0's
        model = make_model(seed=100 + rank, name=name)
        ddp = DistributedLowRank(model, make_optimizers(name, model))
        out[name] = train(name, model, xs, ys, ddp=ddp)
        out[name]["in_sync"] = ddp.in_sync()
        if rank == 0:  # single-process full-batch reference from the same start
            ref = make_model(seed=100, name=name)
            out[name]["ref"] = train(name, ref, X, Y, opts=make_optimizers(name, ref))
    if not extras:
        return out
    # NaN on worker 1 only at step 2: every worker skips the same step
    model = make_model(seed=100)
    ddp = DistributedLowRank(model, make_optimizers("geolora", model))
    out["nan"] = train("geolora", model, x, y, ddp=ddp, nan_at=2 if rank == 1 else None)
    # the DDP fallback: DDP on the fixed-shape parameters, our sync for the factors
    model = make_model(seed=100)
    ddp_ignore_lowrank_factors(model)
    wrapped = nn.parallel.DistributedDataParallel(model)
    opts = make_optimizers("geolora", model)
    recs = [snapshot(model)]
    for _ in range(STEPS):
        for o in opts:
            o.zero_grad()
        ((wrapped(x) - y) ** 2).mean().backward()
        sync_gradients(model, optimizer=opts, sync_dense=False)
        for o in opts:
            o.step()
        recs.append(snapshot(model))
    out["ddp"] = {"ranks": [r for r, _ in recs], "flat": [f for _, f in recs]}
    # BatchNorm statistics (buffers) differ per shard: broadcast from rank 0 after each step
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(
        LowRankLinear(D_IN, D_HID, 2, dtype=F64, generator=g),
        nn.BatchNorm1d(D_HID, dtype=F64),
        nn.Tanh(),
        LowRankLinear(D_HID, D_OUT, 2, dtype=F64, generator=g),
    )
    ddp = DistributedLowRank(model, [GeoLoRA(model, lr=0.1)])
    for _ in range(2):
        ddp.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        ddp.step()
    out["bn_in_sync"] = ddp.in_sync()
    out["bn_buffer_bytes"] = ddp.last_stats.meta_bytes
    # diverged ranks: sync raises the same error everywhere, a broadcast repairs
    model = make_model(seed=100)
    broadcast_model(model)
    if rank == 1:
        U, S, V = model[0].point()
        model[0].set_point(FixedRankPoint(U[:, :1], S[:1, :1], V[:, :1]))
    ((model(x) - y) ** 2).mean().backward()
    try:
        sync_gradients(model)
        out["mismatch_error"] = None
    except RuntimeError as exc:
        out["mismatch_error"] = str(exc)
    out["in_sync_before"] = replicas_in_sync(model)
    broadcast_model(model)
    out["in_sync_after"] = replicas_in_sync(model)
    out["rank_after"] = model[0].rank
    dist.barrier()
    return out
