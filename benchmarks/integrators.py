"""Benchmark: dynamical low-rank integrators (KSL, BUG, augmented BUG, parallel).

Three tables, all on synthetic problems generated in this process:

1. **Time per step against ``(m, n, r)``** for ``L(W) = ½‖W − A Bᵀ‖²_F`` (``A Bᵀ`` of rank
   ``r``), one step of size ``h`` from the same rank-``r`` point. Ours get the gradient
   from a :class:`~manifold_lowrank.integrators.FactoredOracle` (``G = [US, −A][V, B]ᵀ``,
   never ``m×n``; KSL calls it 3×, BUG/augmented BUG 2×, parallel 1×); "parallel(pg)" is
   the hot path of an optimizer (projected gradients given). Beside them:

   * the **dense reference step** ``W − hG`` followed by a truncated SVD (what a method
     without low-rank structure has to do; ``O(mn min(m, n))``);
   * the **public reference implementation** ``optimizer/low_rank_integrators.py`` of
     ScSteffen/DLRT (functions ``ksl``, ``kls_UV_step``/``kls_S_step``,
     ``kls_adaptive_UV_step``/``kls_adaptive_S_step``), which takes a dense gradient, so
     its time includes forming ``G`` densely. It is read at run time from a local
     mirror (``git show`` on ``$DLRT_MIRROR``, default
     ``/work/.mirror/ScSteffen+DLRT/repo``, or a checkout directory); if absent, those
     columns print "—". Nothing of it is stored in this repository.

   Ratios are ``anchor / ours`` (> 1: ours faster). A float64 agreement check of one
   step (ours with a constant dense gradient vs the reference functions) is printed
   first.
2. **Cost scaling**: time of ``parallel(pg)`` and of ``augmented_bug`` against ``r`` (fixed
   ``m = n``) and against ``m = n`` (fixed ``r``), with fitted log-log slopes and the time
   divided by ``(m + n) r²`` — the cost is ``O((m + n) r² + r³)``.
3. **Robustness to small singular values**: relative error after 50 steps (``h = 0.2``)
   on :class:`~manifold_lowrank.integrators.reference.EmergingDirectionProblem` for
   ``σ_min`` from ``1e-2`` to ``1e-12``: full-matrix gradient descent (dense reference),
   KSL, BUG, augmented BUG, parallel, gradient descent on the factors ``Y = K Lᵀ``, and
   Euler on the ``∂U = (I − UUᵀ) F V S⁻¹`` equations.

Run ``python benchmarks/integrators.py`` (``--quick``: smaller sizes, shorter sweeps).
Single-threaded by default (``--threads``) so that the numbers measure the algorithms.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
import types


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes and sweeps")
    p.add_argument("--threads", type=int, default=1, help="BLAS/torch threads (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    return p.parse_args()


ARGS = _parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from manifold_lowrank.integrators import (  # noqa: E402
    DenseOracle,
    FactoredOracle,
    augmented_bug,
    bug,
    ksl,
    parallel,
)
from manifold_lowrank.integrators.reference import (  # noqa: E402
    EmergingDirectionProblem,
    run_tracking,
)
from manifold_lowrank.linalg import RankRule, orthonormalize  # noqa: E402
from manifold_lowrank.manifolds.types import FixedRankPoint, ProjectedGradients  # noqa: E402

torch.set_num_threads(ARGS.threads)
DTYPE = getattr(torch, ARGS.dtype)
MIRROR = os.environ.get("DLRT_MIRROR", "/work/.mirror/ScSteffen+DLRT/repo")
REF_PATH = "optimizer/low_rank_integrators.py"


def load_reference() -> tuple[types.ModuleType | None, str]:
    """The ScSteffen/DLRT integrator functions from a local mirror, or (None, reason)."""
    if not os.path.isdir(MIRROR):
        return None, f"mirror {MIRROR} absent"
    path = os.path.join(MIRROR, REF_PATH)
    if os.path.isfile(path):  # a checkout
        with open(path) as f:
            src = f.read()
    else:  # a bare git directory
        out = subprocess.run(
            ["git", f"--git-dir={MIRROR}", "show", f"HEAD:{REF_PATH}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            return None, f"cannot read {REF_PATH} from {MIRROR}"
        src = out.stdout
    mod = types.ModuleType("dlrt_reference_low_rank_integrators")
    exec(compile(src, f"<ScSteffen/DLRT {REF_PATH}>", "exec"), mod.__dict__)
    return mod, "ScSteffen/DLRT optimizer/low_rank_integrators.py"


def timeit(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call (seconds)."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def fmt(t: float | None) -> str:
    if t is None:
        return "        —"
    return f"{t * 1e3:8.2f}ms" if t < 10 else f"{t:8.1f}s "


def ratio(a: float | None, b: float | None) -> str:
    return "    —" if a is None or b is None else f"{a / b:5.1f}"


def slope(xs, ys) -> float:
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


class Problem:
    """``L(W) = ½‖W − A Bᵀ‖²`` and a rank-``r`` starting point."""

    def __init__(self, m: int, n: int, r: int, dtype=DTYPE, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(m, r, dtype=dtype, generator=g) / math.sqrt(m)
        self.b = torch.randn(n, r, dtype=dtype, generator=g)
        self.point = FixedRankPoint(
            orthonormalize(torch.randn(m, r, dtype=dtype, generator=g)),
            torch.diag(torch.rand(r, dtype=dtype, generator=g) + 0.5),
            orthonormalize(torch.randn(n, r, dtype=dtype, generator=g)),
        )
        self.oracle = FactoredOracle(
            lambda p: (torch.cat([p.U @ p.S, -self.a], 1), torch.cat([p.V, self.b], 1))
        )
        self.pg: ProjectedGradients = self.oracle.project(self.point)

    def dense_grad(self, u, s, v) -> torch.Tensor:
        return (u @ s) @ v.T - self.a @ self.b.T


def agreement(ref: types.ModuleType | None) -> None:
    print("\n# Agreement of one step with the public reference (float64, constant dense G)")
    if ref is None:
        print("  reference absent — skipped")
        return
    pr = Problem(300, 200, 6, dtype=torch.float64, seed=1)
    u, s, v = pr.point
    g = pr.dense_grad(u, s, v)
    const = DenseOracle(lambda y: g)
    h = 0.1
    ours = ksl(pr.point, const, h).point.to_dense()
    _, (u1, s1, v1) = ref.ksl(h, -g, 6, USV=(u, s, v))
    print(f"  ksl            max |Δ| = {float((ours - u1 @ s1 @ v1.T).abs().max()):.1e}")
    ours = bug(pr.point, const, h).point.to_dense()
    _, usv, mn = ref.kls_UV_step(h, -g, 6, USV=(u, s, v))
    _, (u1, s1, v1) = ref.kls_S_step(h, usv, mn, -g)
    print(f"  bug / kls      max |Δ| = {float((ours - u1 @ s1 @ v1.T).abs().max()):.1e}")
    ours = augmented_bug(pr.point, const, h, RankRule(rtol=0.0, min_rank=0)).point.to_dense()
    _, usv, mn, _ = ref.kls_adaptive_UV_step(h, -g, USV=(u, s, v))
    _, (u1, s1, v1) = ref.kls_adaptive_S_step(h, usv, mn, -g, 0.0, absolute=True)
    d_raw = float((ours - u1 @ s1 @ v1.T).abs().max())
    # kls_adaptive_S_step takes the third output of torch.linalg.svd (Vᴴ) as V; the same
    # algorithm with V = (Vᴴ)ᵀ:
    u_hat, s0, v_hat = usv
    s_hat = mn[0] @ s0 @ mn[1].T + h * u_hat.T @ (-g) @ v_hat
    pp, sig, qh = torch.linalg.svd(s_hat)
    fixed = (u_hat @ pp) @ torch.diag(sig) @ (v_hat @ qh.T).T
    d_fix = float((ours - fixed).abs().max())
    print(
        f"  augmented_bug  max |Δ| = {d_raw:.1e} against kls_adaptive_*_step as published,"
        f" {d_fix:.1e} with its SVD's Vᴴ transposed (the published code uses Vᴴ as V)"
    )


def _time_row(m: int, n: int, r: int, ref: types.ModuleType | None) -> list[float | None]:
    reps, h, rule = ARGS.repeats, 0.1, RankRule(rtol=0.01)
    pr = Problem(m, n, r)
    p, o, pg = pr.point, pr.oracle, pr.pg
    row: list[float | None] = [
        timeit(lambda: ksl(p, o, h), reps),
        timeit(lambda: bug(p, o, h), reps),
        timeit(lambda: augmented_bug(p, o, h, rule), reps),
        timeit(lambda: parallel(p, o, h, rule), reps),
        timeit(lambda: parallel(p, pg, h, rule), reps),
    ]

    def dense_step():
        w = p.to_dense()
        w = w - h * (w - pr.a @ pr.b.T)
        uu, ss, vh = torch.linalg.svd(w, full_matrices=False)
        k = rule.select(ss)
        return uu[:, :k], ss[:k], vh[:k]

    row.append(timeit(dense_step, max(1, reps // 2)) if m * n <= 2048 * 1024 else None)
    if ref is None:
        return [*row, None, None, None]
    u, s, v = p

    def ref_ksl():
        return ref.ksl(h, -pr.dense_grad(u, s, v), r, USV=(u, s, v))

    def ref_bug():
        _, usv, mn = ref.kls_UV_step(h, -pr.dense_grad(u, s, v), r, USV=(u, s, v))
        return ref.kls_S_step(h, usv, mn, -pr.dense_grad(*usv))

    def ref_aug():
        _, usv, mn, _ = ref.kls_adaptive_UV_step(h, -pr.dense_grad(u, s, v), USV=(u, s, v))
        u_hat, _, v_hat = usv
        s_hat0 = mn[0] @ s @ mn[1].T
        return ref.kls_adaptive_S_step(
            h, usv, mn, -pr.dense_grad(u_hat, s_hat0, v_hat), 0.01, absolute=False
        )

    return [*row, *(timeit(f, reps) for f in (ref_ksl, ref_bug, ref_aug))]


def table_time(ref: types.ModuleType | None) -> None:
    sizes = [(512, 512, 8), (1024, 1024, 16)]
    if not ARGS.quick:
        sizes += [(2048, 1024, 32), (4096, 4096, 32)]
    print(f"\n# Time per step ({ARGS.dtype}, {ARGS.threads} thread(s)); ratio = anchor / ours")
    print(
        f"{'m':>5} {'n':>5} {'r':>3} | {'ksl':>10} {'bug':>10} {'aug_bug':>10} {'parallel':>10}"
        f" {'par(pg)':>10} | {'dense':>10} {'ref ksl':>10} {'ref bug':>10} {'ref aug':>10}"
        f" | {'dense/par':>9} {'ksl':>5} {'bug':>5} {'aug':>5}"
    )
    for m, n, r in sizes:
        t_ksl, t_bug, t_aug, t_par, t_pg, t_dense, t_rk, t_rb, t_ra = _time_row(m, n, r, ref)
        print(
            f"{m:5d} {n:5d} {r:3d} | {fmt(t_ksl)} {fmt(t_bug)} {fmt(t_aug)} {fmt(t_par)}"
            f" {fmt(t_pg)} | {fmt(t_dense)} {fmt(t_rk)} {fmt(t_rb)} {fmt(t_ra)}"
            f" | {ratio(t_dense, t_par):>9} {ratio(t_rk, t_ksl)} {ratio(t_rb, t_bug)}"
            f" {ratio(t_ra, t_aug)}"
        )


def _time_pair(m: int, n: int, r: int) -> tuple[float, float]:
    reps, h, rule = ARGS.repeats, 0.1, RankRule(rtol=0.01)
    pr = Problem(m, n, r)
    a = timeit(lambda: parallel(pr.point, pr.pg, h, rule), reps)
    b = timeit(lambda: augmented_bug(pr.point, pr.oracle, h, rule), reps)
    return a, b


def table_scaling() -> None:
    n0 = 1024 if ARGS.quick else 2048
    rs = [8, 16, 32, 64] if ARGS.quick else [8, 16, 32, 64, 128]
    print(f"\n# Cost scaling in r (m = n = {n0}); ns = time / ((m + n) r²)")
    print(f"{'r':>5} | {'par(pg)':>10} {'ns':>7} | {'aug_bug':>10} {'ns':>7}")
    tp, ta = [], []
    for r in rs:
        a, b = _time_pair(n0, n0, r)
        tp.append(a)
        ta.append(b)
        c = (2 * n0) * r * r
        print(f"{r:5d} | {fmt(a)} {a / c * 1e9:7.2f} | {fmt(b)} {b / c * 1e9:7.2f}")
    k = len(rs) // 2
    print(
        f"  log-log slope in r over r >= {rs[k]}: parallel(pg) {slope(rs[k:], tp[k:]):.2f}, "
        f"augmented_bug {slope(rs[k:], ta[k:]):.2f}   (model (m+n)r²: 2)"
    )
    r0 = 16
    ns = [512, 1024, 2048, 4096] if ARGS.quick else [1024, 2048, 4096, 8192, 16384]
    print(f"\n# Cost scaling in m = n (r = {r0})")
    print(f"{'m=n':>6} | {'par(pg)':>10} {'ns':>7} | {'aug_bug':>10} {'ns':>7}")
    tp, ta = [], []
    for n in ns:
        a, b = _time_pair(n, n, r0)
        tp.append(a)
        ta.append(b)
        c = (2 * n) * r0 * r0
        print(f"{n:6d} | {fmt(a)} {a / c * 1e9:7.2f} | {fmt(b)} {b / c * 1e9:7.2f}")
    print(
        f"  log-log slope in m: parallel(pg) {slope(ns, tp):.2f}, "
        f"augmented_bug {slope(ns, ta):.2f}   (model (m+n)r²: 1)"
    )


def table_robustness() -> None:
    smins = [1e-2, 1e-6, 1e-12] if ARGS.quick else [1e-2, 1e-4, 1e-6, 1e-8, 1e-10, 1e-12]
    methods = ["dense", "ksl", "bug", "augmented_bug", "parallel", "factor_gd", "sinv"]
    print(
        "\n# Robustness to small singular values: relative error after 50 steps, h = 0.2"
        "\n# (EmergingDirectionProblem 40×30, r = 6; 'dense' = full-matrix gradient descent)"
    )
    print(f"{'σ_min':>7} | " + " ".join(f"{mm:>13}" for mm in methods))
    for smin in smins:
        prob = EmergingDirectionProblem(40, 30, 6, smin)
        errs = [run_tracking(mm, prob, steps=50, h=0.2) for mm in methods]
        print(f"{smin:7.0e} | " + " ".join(f"{e:13.3e}" for e in errs))


def main() -> None:
    ref, why = load_reference()
    print(f"public reference: {why}")
    agreement(ref)
    table_time(ref)
    table_scaling()
    table_robustness()


if __name__ == "__main__":
    main()
