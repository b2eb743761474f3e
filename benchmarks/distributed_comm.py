"""Benchmark: bytes communicated per step, projected-gradient all-reduce vs dense DDP.

Model: the 784-500-500-500-10 MLP of the DLRT paper. Ours: the three hidden layers are
:class:`~manifold_lowrank.nn.LowRankLinear` of rank ``r`` (the 500→10 head is dense),
trained by GeoLoRA (``min_rank = max_rank = r``, so the rank stays ``r`` and the row is
labelled by it; GeoLoRA's head is trained by SGD) and by DLRT (``augmented_bug``,
``augment_every=5``, Adam substeps, ``tau=0`` with ``max_rank = r`` — the augmented rank
can reach ``2r``), each wrapped in
:class:`~manifold_lowrank.distributed.DistributedLowRank`. Anchor: the dense MLP (all four
layers ``nn.Linear``) under :class:`~torch.nn.parallel.DistributedDataParallel`.

Everything is *measured* on 2 gloo processes on 127.0.0.1 (``launch_local``), not
computed: ours counts the bytes of the buffers handed to ``all_reduce`` (payload) plus the
pre-flight shape check; DDP's are counted by a communication hook wrapped around its
default all-reduce hook (the bucket buffers DDP actually reduces). A ring all-reduce moves
``2 (N−1)/N`` times the payload per worker, the same factor for both, so the ratio of
payloads is the ratio of traffic. Wall time per step (both workers on this machine) is
printed for information only.

Run ``python benchmarks/distributed_comm.py`` (``--quick``: two ranks, fewer steps).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

HIDDEN = (784, 500, 500, 500)
OUT = 10
BATCH = 64  # per worker


def _dense() -> nn.Module:
    dims = [*HIDDEN, OUT]
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _lowrank(r: int) -> nn.Module:
    from manifold_lowrank.nn import LowRankLinear

    g = torch.Generator().manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(len(HIDDEN) - 1):
        n, m = HIDDEN[i], HIDDEN[i + 1]
        layers += [LowRankLinear(n, m, r, max_rank=min(m, n, 2 * r), generator=g), nn.ReLU()]
    layers.append(nn.Linear(HIDDEN[-1], OUT))
    return nn.Sequential(*layers)


def _data(rank: int, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(100 + rank)
    return [
        (torch.randn(BATCH, HIDDEN[0], generator=g), torch.randint(0, OUT, (BATCH,), generator=g))
        for _ in range(steps)
    ]


def _dense_worker(rank: int, world: int, steps: int) -> dict:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(_dense())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    counted = {"bytes": 0, "calls": 0}

    def hook(state, bucket):
        buf = bucket.buffer()
        counted["bytes"] += buf.numel() * buf.element_size()
        counted["calls"] += 1
        return default_hooks.allreduce_hook(None, bucket)

    model.register_comm_hook(None, hook)
    per_step, times = [], []
    for x, y in _data(rank, steps):
        before = counted["bytes"]
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        per_step.append(counted["bytes"] - before)
    n_params = sum(p.numel() for p in model.parameters())
    return {"bytes": per_step, "times": times, "params": n_params, "calls": counted["calls"]}


def _ours_worker(rank: int, world: int, method: str, r: int, steps: int) -> dict:
    from manifold_lowrank.distributed import DistributedLowRank
    from manifold_lowrank.optim import GeoLoRA
    from manifold_lowrank.optim.dlrt import DLRT

    torch.manual_seed(0)
    model = _lowrank(r)
    if method == "geolora":
        head = [p for n, p in model.named_parameters() if not n.endswith((".U", ".S", ".V"))]
        opts = [
            GeoLoRA(model, lr=0.01, tau=0.0, min_rank=r, max_rank=r),
            torch.optim.SGD(head, lr=0.01),
        ]
    else:
        opts = [DLRT(model, lr=1e-3, tau=0.0, max_rank=r, augment_every=5)]
    ddp = DistributedLowRank(model, opts)
    payload, meta, times = [], [], []
    for x, y in _data(rank, steps):
        dist.barrier()
        t0 = time.perf_counter()
        ddp.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        ddp.step()
        times.append(time.perf_counter() - t0)
        payload.append(ddp.last_stats.payload_bytes)
        meta.append(ddp.last_stats.meta_bytes)
    n_params = sum(p.numel() for p in model.parameters())
    ranks = [m.rank for m in model if hasattr(m, "rank")]
    return {
        "payload": payload,
        "meta": meta,
        "times": times,
        "params": n_params,
        "ranks": ranks,
        "in_sync": ddp.in_sync(),
    }


def _kb(x: float) -> str:
    return f"{x / 1024:10.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="two ranks, fewer steps")
    p.add_argument("--ranks", type=int, nargs="*", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--world", type=int, default=2)
    args = p.parse_args()
    ranks = args.ranks or ([16, 64] if args.quick else [8, 16, 32, 64, 128])
    steps = args.steps or (10 if args.quick else 20)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import distributed_comm as me  # importable by the worker processes

    from manifold_lowrank.distributed import launch_local

    print(f"# {args.world} gloo processes, batch {BATCH}/worker, {steps} steps, float32")
    dense = launch_local(me._dense_worker, args.world, (steps,), timeout=600)[0]
    d_bytes = statistics.mean(dense["bytes"][1:])
    d_ms = 1e3 * statistics.median(dense["times"][1:])
    print(
        f"dense DDP: {dense['params']} parameters, {_kb(d_bytes).strip()} KiB/step "
        f"({dense['calls'] // steps} bucket all-reduces/step), {d_ms:.1f} ms/step"
    )
    print()
    hdr = (
        f"{'rank':>5} {'method':>8} {'params':>9} {'payload KiB/step':>17} "
        f"{'check B':>8} {'DDP KiB/step':>13} {'DDP/ours':>9} {'ms/step':>8} {'DDP ms':>7}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in ranks:
        for method in ("geolora", "dlrt"):
            res = launch_local(me._ours_worker, args.world, (method, r, steps), timeout=600)[0]
            pay = statistics.mean(res["payload"][1:])
            ms = 1e3 * statistics.median(res["times"][1:])
            print(
                f"{r:5d} {method:>8} {res['params']:9d} {_kb(pay):>17} "
                f"{statistics.mean(res['meta']):8.0f} {_kb(d_bytes):>13} {d_bytes / pay:9.1f} "
                f"{ms:8.1f} {d_ms:7.1f}" + ("" if res["in_sync"] else "  (REPLICAS DIFFER!)")
            )
    print()
    print("payload = gradient bytes handed to all_reduce per worker and step (DLRT: mean over")
    print("its cycle: 1 augment step sends (m+n)r'+r'^2 per layer, 4 coefficient steps r'^2,")
    print("r' = augmented rank <= 2r); check = the pre-flight size/presence all-reduce.")


if __name__ == "__main__":
    main()
