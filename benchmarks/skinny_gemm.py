"""Benchmark: the product layout of the low-rank layers' forward and backward passes.

A low-rank layer multiplies the long batch dimension ``N`` (tokens × sequences) against a
small rank ``r``. The same arithmetic can be handed to BLAS in two layouts, and on CPU
torch's MKL ``gemm`` is much slower in one of them for ``r < 12``:

* *projection* ``z = x V`` (``N×K · K×r``) against ``zᵀ = Vᵀ xᵀ`` (``r×K · K×N``);
* *reduction* ``GᵀU = xᵀ a`` (``K×N · N×r``) against ``(aᵀ x)ᵀ`` (``r×N · N×K``).

The second form of each is what :class:`manifold_lowrank.nn.functional.LowRankLinearFunction`
uses (its docstring, "Layout"). The reduction in the first form is also what autograd runs
for ``∂L/∂B = δyᵀ (A x)`` in a LoRA layer built from ``nn.Linear``. Both forms are timed
side by side in one process, for every ``(K, r)``, and the ratio naive/ours is printed
(> 1: our layout is faster). A final check compares the two forms' results.

Run ``python benchmarks/skinny_gemm.py`` (``--threads``, ``--n``, ``--dtype``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n", type=int, default=2048, help="batch rows N (tokens)")
    p.add_argument("--dims", type=int, nargs="+", default=[384, 1536])
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8, 12, 16, 32])
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--repeats", type=int, default=30)
    return p.parse_args()


ARGS = _parse()
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = str(ARGS.threads)

import torch  # noqa: E402

torch.set_num_threads(ARGS.threads)


def _median_ms(f: Callable[[], torch.Tensor], repeats: int) -> float:
    for _ in range(3):
        f()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def main() -> None:
    dtype = getattr(torch, ARGS.dtype)
    g = torch.Generator().manual_seed(0)
    print(
        f"torch {torch.__version__}, {ARGS.threads} thread(s), {ARGS.dtype}, N = {ARGS.n}; "
        f"median of {ARGS.repeats} (ms); ratio = naive / ours"
    )
    head = (
        f"{'K':>5} {'r':>3} | {'x@V':>7} {'(Vᵀxᵀ)ᵀ':>8} {'ratio':>6} | "
        f"{'xᵀ@a':>7} {'(aᵀx)ᵀ':>8} {'ratio':>6}"
    )
    print(head)
    print("-" * len(head))
    worst = 0.0
    for k in ARGS.dims:
        for r in ARGS.ranks:
            x = torch.randn(ARGS.n, k, generator=g, dtype=dtype)
            v = torch.randn(k, r, generator=g, dtype=dtype)
            a = torch.randn(ARGS.n, r, generator=g, dtype=dtype)
            p_naive = _median_ms(lambda x=x, v=v: x @ v, ARGS.repeats)
            p_ours = _median_ms(lambda x=x, v=v: (v.T @ x.T).T, ARGS.repeats)
            r_naive = _median_ms(lambda x=x, a=a: x.T @ a, ARGS.repeats)
            r_ours = _median_ms(lambda x=x, a=a: (a.T @ x).T, ARGS.repeats)
            print(
                f"{k:>5} {r:>3} | {p_naive:7.2f} {p_ours:8.2f} {p_naive / p_ours:6.2f} | "
                f"{r_naive:7.2f} {r_ours:8.2f} {r_naive / r_ours:6.2f}"
            )
            for ref, ours in ((x @ v, (v.T @ x.T).T), (x.T @ a, (a.T @ x).T)):
                scale = float(ref.abs().max()) or 1.0
                worst = max(worst, float((ref - ours).abs().max()) / scale)
    print(f"largest relative difference between the two forms: {worst:.1e}")


if __name__ == "__main__":
    main()
