"""Worker functions for the multi-process tests (importable by the worker processes)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from manifold_lowrank.distributed import FederatedBernoulliLoRA, RandK, RandomDithering, TopK
from manifold_lowrank.problems import LinearRegression

SHAPE = (6, 4)
N_SAMPLES = 480


def make_data(noise: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The global regression data set (same on every worker; worker i takes rows i::n)."""
    g = torch.Generator().manual_seed(seed)
    d = SHAPE[0] * SHAPE[1]
    X = torch.randn(N_SAMPLES, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    y = X @ w + noise * torch.randn(N_SAMPLES, generator=g, dtype=torch.float64)
    return X, y


def make_compressor(name: str):
    return {
        "qgd": lambda: RandK(ratio=0.25),
        "qgd_dither": lambda: RandomDithering(levels=4),
        "marina": lambda: RandK(ratio=0.25),
        "ef21": lambda: TopK(ratio=0.25),
    }[name]()


def run_method(rank: int, world: int, name: str, steps: int, seed: int) -> dict:
    """Run one method; return the whole local weight trajectory and the byte counts."""
    X, y = make_data()
    local = LinearRegression(X[rank::world], y[rank::world], SHAPE)
    L = max(LinearRegression(X[j::world], y[j::world], SHAPE).smoothness for j in range(world))
    # deliberately different initial weights per worker: the optimizer syncs them from rank 0
    W = torch.full(SHAPE, float(rank), dtype=torch.float64, requires_grad=True)
    opt = FederatedBernoulliLoRA(
        [W],
        lr=0.5 / L,
        rank=2,
        p=0.5,
        estimator=name.split("_")[0],
        compressor=make_compressor(name),
        marina_prob=0.2 if name == "marina" else None,
        seed=seed,
    )
    traj = [W.detach().clone()]
    nbytes, full_sync = [], []
    for _ in range(steps):
        opt.step(local.closure(W))
        traj.append(W.detach().clone())
        nbytes.append(opt.last_bytes_sent)
        full_sync.append(opt.last_step["full_sync"])
    return {
        "traj": torch.stack(traj),
        "bytes": nbytes,
        "full_sync": full_sync,
        "bytes_sent": opt.bytes_sent,
        "dense_bytes": opt.dense_bytes,
        "payload_bytes": opt.compressor.payload_bytes(opt.d, torch.float64),
    }


def federated_worker(
    rank: int, world: int, names: list[str], steps: int, seed: int, repeat: list[str]
) -> dict:
    """Run every method in ``names``; methods in ``repeat`` run twice with the same seed."""
    out = {}
    for name in names:
        res = run_method(rank, world, name, steps, seed)
        if name in repeat:
            res["repeat_traj"] = run_method(rank, world, name, steps, seed)["traj"]
        out[name] = res
    dist.barrier()
    return out


def failing_worker(rank: int, world: int) -> None:
    """Raises on rank 0 (checks that launch_local reports worker failures)."""
    if rank == 0:
        raise ArithmeticError("worker 0 failed on purpose")
