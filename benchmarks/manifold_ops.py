"""Benchmark: FixedRank proju / retr / transp against pymanopt and a dense SVD retraction.

For ``(m, n, r)`` in ``{(1000, 1000, 10), (4096, 4096, 32), (20000, 5000, 16)}`` this times,
on the same data,

* ``proju``   — projection of a factored ambient matrix ``Z = A Bᵀ`` (``A ∈ R^{m×r}``):
  ours :meth:`FixedRank.proju_factored` vs pymanopt ``projection(point, (A, I, B))``;
  and of a dense ``Z`` (:meth:`FixedRank.proju_dense` vs pymanopt, two smaller sizes);
* ``retr``    — ours :meth:`FixedRank.retr_polar` vs pymanopt ``retraction`` (the same
  QR + ``2r × 2r`` SVD algorithm) and a dense truncated-SVD retraction of ``X + ξ``
  (timed once; for ``(20000, 5000)`` estimated from the 4096² timing by the
  ``m n min(m, n)`` flop count unless ``--dense-all``);
* ``transp``  — ours :meth:`FixedRank.transp` vs pymanopt ``transport``;

in float64 (ours in float32 too), printed as times and ratios (``ours / anchor``; < 1 means
ours is faster). Then the retraction time against ``n`` (``m = n``) at fixed ``r = 16`` with
the fitted log-log slope (the cost is ``O((m + n) r²)``, so the slope should be ≈ 1).

Run ``python benchmarks/manifold_ops.py`` (``--quick`` skips the largest size and shortens
the scaling sweep; ``--retr-only`` times just the polar retraction against pymanopt in
float64 and float32; ``--stat min`` reports the least-disturbed call instead of the
median). Both libraries run single-threaded by default (``--threads``) so that the
comparison measures algorithms, not thread scheduling on a shared machine.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="skip (20000, 5000, 16); short sweep")
    p.add_argument("--threads", type=int, default=1, help="BLAS/torch threads (default 1)")
    p.add_argument("--repeats", type=int, default=9, help="timed calls per measurement")
    p.add_argument(
        "--stat",
        choices=("median", "min"),
        default="median",
        help="statistic of the repeats (default median; min = least-disturbed call)",
    )
    p.add_argument(
        "--retr-only",
        action="store_true",
        help="only the polar retraction against pymanopt (no dense SVD, no sweep)",
    )
    p.add_argument("--dense-all", action="store_true", help="time the dense SVD at every size")
    p.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu (default): per-thread CPU time, robust to a loaded shared machine when "
        "single-threaded; wall: perf_counter",
    )
    return p.parse_args()


ARGS = _parse()
# BLAS thread counts must be set before numpy/torch are imported.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from manifold_lowrank.manifolds import FixedRank  # noqa: E402

try:
    from pymanopt.manifolds import FixedRankEmbedded
except ImportError:  # pragma: no cover - optional anchor
    FixedRankEmbedded = None

torch.set_num_threads(ARGS.threads)


def _clock() -> float:
    return time.thread_time() if ARGS.clock == "cpu" and ARGS.threads == 1 else time.perf_counter()


def _stat(ts: list[float]) -> float:
    return statistics.median(ts) if ARGS.stat == "median" else min(ts)


def timeit(fn, repeats: int) -> float:
    """Median (or ``--stat min``) time of ``repeats`` calls after one warm-up call (s)."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = _clock()
        fn()
        ts.append(_clock() - t0)
    return _stat(ts)


def timeit_pair(f_ours, f_anchor, repeats: int) -> tuple[float, float]:
    """Median (or min) times of two functions timed in alternation (same machine load).

    The order flips every repeat, so neither side always runs on the other's cache state.
    """
    f_ours()
    f_anchor()
    a: list[float] = []
    b: list[float] = []
    for i in range(repeats):
        for f, ts in ((f_ours, a), (f_anchor, b)) if i % 2 == 0 else ((f_anchor, b), (f_ours, a)):
            t0 = _clock()
            f()
            ts.append(_clock() - t0)
    return _stat(a), _stat(b)


def fmt(t: float | None) -> str:
    if t is None:
        return "—"
    return f"{t * 1e3:9.2f}ms" if t < 10 else f"{t:9.1f}s "


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None else f"{a / b:.3f}"


def make_data(m: int, n: int, r: int, dtype: torch.dtype, seed: int = 0):
    """A point with diagonal S (pymanopt's format), a unit tangent, a second tangent."""
    M = FixedRank(m, n, r)
    g = torch.Generator().manual_seed(seed)
    x = M.random(dtype=dtype, generator=g)
    U, _, V = M.unpack(x)
    s = torch.linspace(1.0, 0.1, r, dtype=dtype)
    x = M.pack((U, torch.diag(s), V))
    u = M.random_tangent(x, generator=g)
    u = u / M.norm(x, u)
    v = M.random_tangent(x, generator=g)
    A = torch.randn(m, r, dtype=dtype, generator=g)
    B = torch.randn(n, r, dtype=dtype, generator=g)
    return M, x, u, v, A, B, s


def _time_ours(M, x, u, v, A, B, key: str, reps: int) -> dict:
    y = M.retr_polar(x, u)
    return {
        f"proju_{key}": timeit(lambda: M.proju_factored(x, A, B), reps),
        f"retr_{key}": timeit(lambda: M.retr_polar(x, u), reps),
        f"retr_orth_{key}": timeit(lambda: M.retr_orthographic(x, u), reps),
        f"retr_ksl_{key}": timeit(lambda: M.retr_ksl(x, u), reps),
        f"transp_{key}": timeit(lambda: M.transp(x, y, v), reps),
    }


def bench_size(m: int, n: int, r: int, dense_time: bool, reps: int) -> dict:
    out: dict = {"size": (m, n, r)}
    for dtype in (torch.float64, torch.float32):
        key = "f64" if dtype == torch.float64 else "f32"
        out.update(_time_ours(*make_data(m, n, r, dtype)[:6], key, reps))

    # pymanopt on the same float64 data, timed in alternation with ours
    M, x, u, v, A, B, s = make_data(m, n, r, torch.float64)
    U, _, V = (t.numpy().copy() for t in M.unpack(x))
    Up, Mm, Vp = (t.numpy().copy() for t in M.unpack_tangent(u))
    Wp, Wm, Wv = (t.numpy().copy() for t in M.unpack_tangent(v))
    An, Bn, sn = A.numpy(), B.numpy(), s.numpy()
    if FixedRankEmbedded is not None:
        from pymanopt.manifolds.fixed_rank import _FixedRankPoint, _FixedRankTangentVector

        P = FixedRankEmbedded(m, n, r)
        pt = _FixedRankPoint(U, sn, V.T.copy())
        tv = _FixedRankTangentVector(Up, Mm, Vp)
        tw = _FixedRankTangentVector(Wp, Wm, Wv)
        eye = np.eye(r)
        few = max(1, reps // 3)
        y = M.retr_polar(x, u)
        pt2 = P.retraction(pt, tv)
        # pymanopt evaluates (A @ I @ B.T) @ V left to right: it forms the m×n matrix.
        out["proju_f64"], out["pm_proju"] = timeit_pair(
            lambda: M.proju_factored(x, A, B), lambda: P.projection(pt, (An, eye, Bn)), few
        )
        out["retr_f64"], out["pm_retr"] = timeit_pair(
            lambda: M.retr_polar(x, u), lambda: P.retraction(pt, tv), reps
        )
        out["transp_f64"], out["pm_transp"] = timeit_pair(
            lambda: M.transp(x, y, v), lambda: P.transport(pt, pt2, tw), few
        )
        if dense_time:
            Z = torch.randn(m, n, dtype=torch.float64)
            Zn = Z.numpy()
            out["proju_dense"], out["pm_proju_dense"] = timeit_pair(
                lambda: M.proju_dense(x, Z), lambda: P.projection(pt, Zn), few
            )
        # same result (embedded), so both do equal work
        ours = M.embed(y)
        theirs = torch.from_numpy((pt2.u * pt2.s) @ pt2.vt)
        out["retr_agree"] = float((ours - theirs).norm() / ours.norm())

    if dense_time:
        X = M.embed(x)
        Xi = M.embed_tangent(x, u)

        def dense_retr():
            Uf, sv, Vh = torch.linalg.svd(X + Xi, full_matrices=False)
            return Uf[:, :r], sv[:r], Vh[:r]

        t0 = _clock()
        dense_retr()
        out["dense_retr"] = _clock() - t0
        out["dense_est"] = False
    return out


def retr_only(sizes: list[tuple[int, int, int]], reps: int) -> None:
    """Polar retraction vs pymanopt's ``retraction`` on the same data, in both dtypes.

    pymanopt gets the same-dtype arrays (its ``2r × 2r`` core is float64 in any case).
    """
    if FixedRankEmbedded is None:
        print("pymanopt missing: nothing to compare")
        return
    from pymanopt.manifolds.fixed_rank import _FixedRankPoint, _FixedRankTangentVector

    print(f"retr_polar vs pymanopt FixedRankEmbedded.retraction ({ARGS.stat} of {reps})")
    print(
        f"{'(m, n, r)':<18}{'dtype':<9}{'ours':>11}{'pymanopt':>11}{'ours/pm':>9}"
        f"{'‖UᵀU−I‖':>10}{'rel. diff':>11}"
    )
    for m, n, r in sizes:
        for dtype in (torch.float64, torch.float32):
            M, x, u, _v, _A, _B, s = make_data(m, n, r, dtype)
            U, _, V = (t.numpy().copy() for t in M.unpack(x))
            Up, Mm, Vp = (t.numpy().copy() for t in M.unpack_tangent(u))
            P = FixedRankEmbedded(m, n, r)
            pt = _FixedRankPoint(U, s.numpy(), V.T.copy())
            tv = _FixedRankTangentVector(Up, Mm, Vp)
            ours, pm = timeit_pair(
                lambda M=M, x=x, u=u: M.retr_polar(x, u),
                lambda P=P, pt=pt, tv=tv: P.retraction(pt, tv),
                reps,
            )
            y = M.retr_polar(x, u)
            Uy, _, Vy = M.unpack(y)
            eye = torch.eye(r, dtype=dtype)
            orth = max(float((Uy.T @ Uy - eye).abs().max()), float((Vy.T @ Vy - eye).abs().max()))
            # agreement with pymanopt's point (dense; skipped above 4096²)
            diff = float("nan")
            if m * n <= 4096 * 4096:
                p2 = P.retraction(pt, tv)
                theirs = torch.from_numpy((p2.u * p2.s) @ p2.vt).to(dtype)
                ours_d = M.embed(y)
                diff = float((ours_d - theirs).norm() / ours_d.norm())
            print(
                f"{(m, n, r)!s:<18}{str(dtype)[6:]:<9}{fmt(ours):>11}{fmt(pm):>11}"
                f"{ours / pm:>9.3f}{orth:>10.1e}{diff:>11.1e}",
                flush=True,
            )


def main() -> None:
    sizes = [(1000, 1000, 10), (4096, 4096, 32)]
    if not ARGS.quick:
        sizes.append((20000, 5000, 16))
    reps = ARGS.repeats
    print(
        f"torch {torch.__version__}, numpy {np.__version__}, threads={ARGS.threads}, "
        f"pymanopt={'yes' if FixedRankEmbedded else 'missing'}, "
        f"clock={'thread CPU time' if ARGS.clock == 'cpu' and ARGS.threads == 1 else 'wall'}"
    )
    if ARGS.retr_only:
        retr_only(sizes, reps)
        return
    results = []
    for m, n, r in sizes:
        dense = ARGS.dense_all or m * n <= 4096 * 4096
        res = bench_size(m, n, r, dense, reps)
        results.append(res)
        print(f"  done {m}x{n} r={r}", flush=True)
    # dense SVD estimate for the largest size from the 4096² timing (flops ∝ m n min(m, n))
    ref = next((q for q in results if q["size"] == (4096, 4096, 32) and "dense_retr" in q), None)
    for q in results:
        if "dense_retr" not in q and ref is not None:
            m, n, _ = q["size"]
            q["dense_retr"] = ref["dense_retr"] * (m * n * min(m, n)) / 4096**3
            q["dense_est"] = True

    print()
    print(f"Per-call times ({ARGS.stat} of repeats; ours and pymanopt timed in alternation).")
    print("float64 unless noted; ratio = ours / anchor (< 1: ours faster)")
    hdr = (
        f"{'(m, n, r)':<18}{'op':<16}{'ours f64':>11}{'ours f32':>11}{'pymanopt':>11}"
        f"{'ours/pm':>9}{'dense SVD':>12}{'ours/dense':>11}"
    )
    print(hdr)
    print("-" * len(hdr))

    def row(size, op, a, a32, pm, dense=None, dtag=""):
        print(
            f"{size:<18}{op:<16}{fmt(a):>11}{fmt(a32):>11}{fmt(pm):>11}{ratio(a, pm):>9}"
            f"{dtag:>12}{ratio(a, dense) if dense else '':>11}"
        )

    for q in results:
        size = str(q["size"])
        dense = q.get("dense_retr")
        dtag = (fmt(dense).strip() + ("*" if q.get("dense_est") else "")) if dense else "—"
        row(size, "proju (A Bᵀ)", q["proju_f64"], q["proju_f32"], q.get("pm_proju"))
        if "proju_dense" in q:
            row("", "proju (dense Z)", q["proju_dense"], None, q.get("pm_proju_dense"))
        row("", "retr (polar)", q["retr_f64"], q["retr_f32"], q.get("pm_retr"), dense, dtag)
        row("", "retr (orthogr.)", q["retr_orth_f64"], q["retr_orth_f32"], None)
        row("", "retr (KSL)", q["retr_ksl_f64"], q["retr_ksl_f32"], None)
        row("", "transp", q["transp_f64"], q["transp_f32"], q.get("pm_transp"))
        print(f"{'':<18}(‖R_ours − R_pymanopt‖/‖R_ours‖ = {q.get('retr_agree', float('nan')):.1e})")
    print("  * dense SVD time estimated from the 4096² timing by m·n·min(m, n) scaling")

    # scaling of the retraction with n at fixed r
    r = 16
    ns = [1000, 2000, 4000, 8000] if ARGS.quick else [1000, 2000, 4000, 8000, 16000, 32000]
    times = []
    for n in ns:
        M, x, u, *_ = make_data(n, n, r, torch.float64)
        times.append(timeit(lambda M=M, x=x, u=u: M.retr_polar(x, u), reps))

    def fit(ns_, ts_):
        lx = [math.log(n) for n in ns_]
        ly = [math.log(t) for t in ts_]
        mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
        return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)

    print()
    print(f"retr_polar time vs n (m = n, r = {r}, float64):")
    for n, t in zip(ns, times):
        print(f"  n = {n:>6}: {fmt(t)}   ({t / (2 * n * r * r) * 1e9:.2f} ns per (m+n)r² unit)")
    half = len(ns) // 2
    print(
        f"  fitted log-log slope = {fit(ns, times):.2f} over all n, "
        f"{fit(ns[half:], times[half:]):.2f} over n >= {ns[half]} "
        f"(O((m + n) r²) predicts 1; cache effects and machine load move it)"
    )


if __name__ == "__main__":
    main()
