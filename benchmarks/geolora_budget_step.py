"""Benchmark: the cost of GeoLoRA's global parameter budget in one optimizer step.

37 adapters shaped like MiniLM's (24 of 384×384 for query/key/value/attention output,
6 + 6 feed-forward layers of 1536×384 and 384×1536, and the 384×384 pooler), initial rank 8,
τ = ``--tau`` (default 0: the τ-rule keeps all 2r directions, so the budget binds at every step),
``precondition="factored"``, ``momentum=0.9``, lr 0.1. Two copies of the same
adapters are stepped side by side on the same projected gradients (one backward of a
random linear loss over ``--rows`` input rows per adapter): one with max rank 32 and
``budget = --fraction × Σ 8(m + n)`` (LoRA r=8's parameters), and, for reference at about
the same ranks, one capped at max rank 8 without a budget. Only ``GeoLoRA.step()`` is
timed, in alternating order; the budget's own work (the hook
``GeoLoRA._finalize_updates``: the allocation and the cut of points and momenta) is timed
inside the step. Printed: the medians, the budget's share of its step, the ratio of the
two steps, and the ranks and parameter counts each copy ends at. (Random gradients have
flat spectra, so uncapped and unbudgeted the ranks would double every step up to 32.)

Run ``python benchmarks/geolora_budget_step.py`` (``--threads``, ``--rounds``,
``--warmup``, ``--fraction``, ``--rows``). Measured figures: ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=40, help="timed steps of each copy")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps first (ranks settle)")
    p.add_argument("--fraction", type=float, default=0.95, help="budget / LoRA r=8 parameters")
    p.add_argument("--rows", type=int, default=64, help="input rows of the random loss")
    p.add_argument("--tau", type=float, default=0.0)
    return p.parse_args()


ARGS = _parse()
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = str(ARGS.threads)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from manifold_lowrank.nn import LowRankAdapter  # noqa: E402
from manifold_lowrank.optim import GeoLoRA  # noqa: E402

torch.set_num_threads(ARGS.threads)
SHAPES = [(384, 384)] * 24 + [(1536, 384), (384, 1536)] * 6 + [(384, 384)]


def adapters(seed: int) -> list[LowRankAdapter]:
    torch.manual_seed(seed)
    out = []
    for i, (m, n) in enumerate(SHAPES):
        base = nn.Linear(n, m)
        out.append(LowRankAdapter(base, 8, max_rank=32, generator=torch.Generator().manual_seed(i)))
    return out


def backward(layers: list[LowRankAdapter], step: int) -> None:
    g = torch.Generator().manual_seed(1000 + step)
    for ad in layers:
        m, n = ad.matrix_shape
        x = torch.randn(ARGS.rows, n, generator=g)
        w = torch.randn(ARGS.rows, m, generator=g)
        (ad(x) * w).sum().backward()


def main() -> None:
    capped, budgeted = adapters(0), adapters(0)
    lora = sum(8 * (m + n) for m, n in SHAPES)
    budget = int(ARGS.fraction * lora)
    kw = {"lr": 0.1, "tau": ARGS.tau, "precondition": "factored", "momentum": 0.9}
    opt_b = GeoLoRA(budgeted, max_rank=32, budget=budget, **kw)
    hook_times: list[float] = []
    binding: list[bool] = []
    inner = opt_b._finalize_updates

    def timed_hook(updates, step):  # the budget's own work inside the step
        t0 = time.perf_counter()
        out = inner(updates, step)
        hook_times.append(time.perf_counter() - t0)
        binding.append(any(p.S.shape != q.S.shape for (_, p, _), (_, q, _) in zip(updates, out)))
        return out

    opt_b._finalize_updates = timed_hook  # type: ignore[method-assign]
    runs = {
        "max rank 8, no budget": (capped, GeoLoRA(capped, max_rank=8, **kw)),
        "max rank 32, budget": (budgeted, opt_b),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for step in range(ARGS.warmup + ARGS.rounds):
        order = list(runs) if step % 2 == 0 else list(reversed(runs))
        for name in order:
            layers, opt = runs[name]
            backward(layers, step)
            t0 = time.perf_counter()
            opt.step()
            dt = time.perf_counter() - t0
            opt.zero_grad()
            if step >= ARGS.warmup:
                times[name].append(dt)
    hook = statistics.median(hook_times[ARGS.warmup :])
    print(
        f"37 MiniLM-shaped adapters, threads={ARGS.threads}, budget {ARGS.fraction:g} x LoRA "
        f"r=8 ({budget:,} of {lora:,} parameters), {ARGS.rounds} timed steps after "
        f"{ARGS.warmup}, tau {ARGS.tau:g}; the budget cut ranks in "
        f"{sum(binding[ARGS.warmup :])} of the timed steps"
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, (layers, opt) in runs.items():
        ranks = [ad.rank for ad in layers]
        print(
            f"{name:<22} step {1e3 * med[name]:7.2f} ms (median)  parameters "
            f"{opt.num_adapter_parameters():>8,}  ranks {min(ranks)}-{max(ranks)} "
            f"(mean {statistics.mean(ranks):.1f})"
        )
    b, c = med["max rank 32, budget"], med["max rank 8, no budget"]
    print(f"budget's own work: {1e3 * hook:.2f} ms (median), {100 * hook / b:.1f} % of its step")
    print(f"ratio of the steps, budget / max rank 8: {b / c:.3f}")


if __name__ == "__main__":
    main()
