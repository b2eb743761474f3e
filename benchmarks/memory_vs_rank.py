"""Benchmark: memory of rank-adaptive training follows the rank; no growth over long runs.

Model: the 784-500-500-500-10 MLP (three :class:`~manifold_lowrank.nn.LowRankLinear` hidden
layers, dense head), batch 64, float32, one thread. Anchor: the dense MLP with Adam.

How memory is measured (CPU; ``tracemalloc`` cannot see torch's allocations, which bypass
Python's allocator):

* **live bytes** — the bytes of every distinct tensor storage the training state holds after
  a step: parameters, ``.grad``, optimizer state (all tensors in ``optimizer.state``), and
  the projected gradients recorded on the layers. Exact, deterministic.
* **step peak** — the highest point of the allocation timeline of one training step
  (forward, backward, optimizer step) recorded by :mod:`torch.profiler` with
  ``profile_memory=True``: every allocation and free of torch's CPU allocator, in order;
  the peak of their running sum is the transient memory above the live bytes before the
  step (an upper bound: frees of blocks allocated before the profiled step are not
  reported). ``total = live (before) + step peak`` is the peak memory of training.
* **RSS** (long runs) — resident set size of the process from :mod:`psutil`, sampled every
  ``--sample`` steps after a warm-up, plus the number of live tensors (``gc``): a leak shows
  as a trend in either. The slope is a least-squares fit in KiB per 1000 steps.

Tables:

1. Rank sweep: GeoLoRA held at rank ``r`` (``min_rank = max_rank = r``) and DLRT
   (``max_rank = r``, Adam substeps); live bytes, step peak and total against ``r``, the
   ratio to the dense anchor and a least-squares fit ``total ≈ a + b·r`` (R²).
2. One rank-adaptive run (GeoLoRA, ``tau = 0.3``, from rank 96): every ``k`` steps the sum
   of the ranks, the live bytes and the profiled step peak, next to the prediction of the
   sweep's fit.
3. Long runs (``--steps``, default 10⁴; ``--quick`` 1500) of GeoLoRA and DLRT
   (rank-adaptive): RSS and live-tensor count, first/last/max and the fitted trend, with
   the optimizers' ``rank_history`` off (no growth at all), on and unbounded (GeoLoRA: it
   grows by one small entry per step, ≈ 0.17 KiB/step, by design), and on with
   ``rank_history_maxlen`` (``--maxlen``, default 200; GeoLoRA and DLRT: constant once
   full). Also printed: the entries and deep size (Python objects) of the histories.

Run ``python benchmarks/memory_vs_rank.py`` (``--quick`` for a short run, ``--part long``
for table 3 only, ``--part maxlen`` for its two bounded-history runs, ``--plot PATH`` to
save a figure).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import warnings

import torch
from torch import nn

HIDDEN = (784, 500, 500, 500)
OUT = 10
BATCH = 64


# --------------------------------------------------------------------------- models
def lowrank_mlp(r: int, max_rank: int | None = None) -> nn.Module:
    from manifold_lowrank.nn import LowRankLinear

    g = torch.Generator().manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(len(HIDDEN) - 1):
        n, m = HIDDEN[i], HIDDEN[i + 1]
        cap = min(m, n, max_rank if max_rank is not None else 2 * r)
        layers += [LowRankLinear(n, m, r, max_rank=cap, generator=g), nn.ReLU()]
    layers.append(nn.Linear(HIDDEN[-1], OUT))
    return nn.Sequential(*layers)


def dense_mlp() -> nn.Module:
    torch.manual_seed(0)
    dims = [*HIDDEN, OUT]
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def make_opts(kind: str, model: nn.Module, r: int) -> list[torch.optim.Optimizer]:
    from manifold_lowrank.optim import GeoLoRA
    from manifold_lowrank.optim.dlrt import DLRT

    head = [p for n, p in model.named_parameters() if not n.endswith((".U", ".S", ".V"))]
    if kind == "geolora_fixed":
        return [
            GeoLoRA(model, lr=0.01, tau=0.0, min_rank=r, max_rank=r),
            torch.optim.Adam(head, lr=1e-3),
        ]
    if kind == "geolora_adaptive":
        return [GeoLoRA(model, lr=0.05, tau=0.3, max_rank=r), torch.optim.Adam(head, lr=1e-3)]
    if kind == "dlrt":
        return [DLRT(model, lr=1e-3, tau=0.1, max_rank=r, augment_every=5)]
    if kind == "dense":
        return [torch.optim.Adam(model.parameters(), lr=1e-3)]
    raise ValueError(kind)


class Data:
    """Inputs and labels of a fixed random teacher (a rank-8 linear map), streamed."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.teacher = torch.randn(OUT, 8, generator=g) @ torch.randn(8, HIDDEN[0], generator=g)
        self.g = g

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(BATCH, HIDDEN[0], generator=self.g)
        return x, (x @ self.teacher.T).argmax(1)


def train_step(model: nn.Module, opts: list[torch.optim.Optimizer], data: Data) -> None:
    x, y = data.batch()
    for o in opts:
        o.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    for o in opts:
        o.step()


# --------------------------------------------------------------------------- measurement
def _tensors(x: object, out: list[torch.Tensor]) -> None:
    if isinstance(x, torch.Tensor):
        out.append(x)
    elif isinstance(x, dict):
        for v in x.values():
            _tensors(v, out)
    elif isinstance(x, (list, tuple)):
        for v in x:
            _tensors(v, out)


def live_bytes(model: nn.Module, opts: list[torch.optim.Optimizer]) -> int:
    """Bytes of the distinct storages of parameters, grads, optimizer state, projected grads."""
    ts: list[torch.Tensor] = []
    for p in model.parameters():
        ts.append(p)
        if p.grad is not None:
            ts.append(p.grad)
    for o in opts:
        for st in o.state.values():
            _tensors(st, ts)
    for m in model.modules():
        pg = getattr(m, "projected_grads", None)
        if pg is not None:
            _tensors(pg, ts)
    seen: dict[int, int] = {}
    for t in ts:
        s = t.untyped_storage()
        seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
    return sum(seen.values())


def step_peak(model: nn.Module, opts: list[torch.optim.Optimizer], data: Data) -> int:
    """Peak of the running allocation sum during one training step (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step(model, opts, data)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def ranks_of(model: nn.Module) -> list[int]:
    return [int(m.rank) for m in model.modules() if hasattr(m, "rank")]


def kib(x: float) -> str:
    return f"{x / 1024:9.1f}"


def linfit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    mx, my = statistics.mean(xs), statistics.mean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    a = my - b * mx
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return a, b, 1.0 - ss_res / ss_tot if ss_tot else 1.0


# --------------------------------------------------------------------------- tables
def sweep(ranks: list[int], warm: int) -> dict:
    data = Data(1)
    dense = dense_mlp()
    dopts = make_opts("dense", dense, 0)
    for _ in range(warm):
        train_step(dense, dopts, data)
    d_live = live_bytes(dense, dopts)
    d_total = d_live + step_peak(dense, dopts, data)
    print(
        f"dense MLP + Adam: live {kib(d_live).strip()} KiB, total peak {kib(d_total).strip()} KiB"
    )
    print()
    hdr = (
        f"{'method':>14} {'rank':>5} {'ranks after':>13} {'live KiB':>9} "
        f"{'step peak':>9} {'total KiB':>9} {'/dense':>7}"
    )
    print(hdr)
    print("-" * len(hdr))
    out: dict = {}
    for kind in ("geolora_fixed", "dlrt"):
        xs, ys = [], []
        for r in ranks:
            model = lowrank_mlp(r, max_rank=r if kind == "geolora_fixed" else None)
            opts = make_opts(kind, model, r)
            for _ in range(warm):
                train_step(model, opts, data)
            live = live_bytes(model, opts)
            peak = step_peak(model, opts, data)
            total = live + peak
            print(
                f"{kind:>14} {r:5d} {ranks_of(model)!s:>13} {kib(live)} {kib(peak)} "
                f"{kib(total)} {total / d_total:7.3f}"
            )
            xs.append(float(r))
            ys.append(float(total))
        a, b, r2 = linfit(xs, ys)
        print(f"{'':>14} fit total ≈ {kib(a).strip()} KiB + {b / 1024:.2f} KiB·r   (R² = {r2:.4f})")
        out[kind] = (xs, ys, a, b)
    return out


def adaptive_trace(steps: int, every: int) -> list[tuple[int, int, int, int]]:
    data = Data(2)
    model = lowrank_mlp(96, max_rank=96)
    opts = make_opts("geolora_adaptive", model, 96)
    rows = []
    hdr = f"{'step':>6} {'ranks':>15} {'Σ(m+n)r':>9} {'live KiB':>9} {'step peak':>9} {'total':>9}"
    print(hdr)
    print("-" * len(hdr))
    early = {1, 2, 3, 4, 6, 8, 11, 15, 20}  # the rank falls fastest at the start
    for t in range(1, steps + 1):
        if t % every == 0 or t in early:
            live = live_bytes(model, opts)
            peak = step_peak(model, opts, data)
            rk = ranks_of(model)
            mnr = sum((HIDDEN[i] + HIDDEN[i + 1]) * r for i, r in enumerate(rk))
            rows.append((t, mnr, live, live + peak))
            print(f"{t:6d} {rk!s:>15} {mnr:9d} {kib(live)} {kib(peak)} {kib(live + peak)}")
        else:
            train_step(model, opts, data)
    xs, ys = [float(r[1]) for r in rows], [float(r[3]) for r in rows]
    a, b, r2 = linfit(xs, ys)
    print(f"fit total ≈ {kib(a).strip()} KiB + {b:.2f} B·Σ(m+n)r   (R² = {r2:.4f})")
    return rows


def history_bytes(opt: torch.optim.Optimizer) -> tuple[int, int]:
    """``(entries, bytes)`` of the optimizer's per-step histories (Python objects, deep)."""
    n = size = 0
    for name in ("rank_history", "truncation_history"):
        h = getattr(opt, name, None)
        if h is None:
            continue
        n += len(h)
        size += sys.getsizeof(h)
        for step, ranks in h:
            size += sys.getsizeof((step, ranks)) + sys.getsizeof(step) + sys.getsizeof(ranks)
            size += sum(sys.getsizeof(r) for r in ranks)
    return n, size


def long_run(
    kind: str, steps: int, sample: int, warm: int, history: bool, maxlen: int | None = None
) -> dict:
    import psutil

    proc = psutil.Process()
    data = Data(3)
    model = lowrank_mlp(64, max_rank=96)
    opts = make_opts(kind if kind != "geolora" else "geolora_adaptive", model, 96)
    opts[0].record_history = history
    opts[0].rank_history_maxlen = maxlen  # also a constructor argument of DLRT, GeoLoRA, DEBORA
    xs, rss, ntens, ranks, hist = [], [], [], [], []
    for t in range(1, steps + 1):
        train_step(model, opts, data)
        if t >= warm and (t - warm) % sample == 0:
            gc.collect()
            xs.append(t)
            rss.append(proc.memory_info().rss)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ntens.append(sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor)))
            ranks.append(sum(ranks_of(model)))
            hist.append(history_bytes(opts[0]))
    _, b, _ = linfit([float(x) for x in xs], [float(y) for y in rss])
    _, hb, _ = linfit([float(x) for x in xs], [float(h[1]) for h in hist])
    label = f"{kind} (history {'on' if history else 'off'}, maxlen {maxlen})"
    print(
        f"{label:>36}: {len(xs)} samples from step {warm}; RSS first {rss[0] / 2**20:.1f} MiB, "
        f"last {rss[-1] / 2**20:.1f} MiB, max {max(rss) / 2**20:.1f} MiB; trend "
        f"{b * 1000 / 1024:+.1f} KiB/1000 steps; live tensors {min(ntens)}..{max(ntens)}; "
        f"Σranks {min(ranks)}..{max(ranks)}; history entries {hist[0][0]} -> {hist[-1][0]}, "
        f"{hist[0][1] / 1024:.1f} -> {hist[-1][1] / 1024:.1f} KiB "
        f"(trend {hb * 1000 / 1024:+.2f} KiB/1000 steps)",
        flush=True,
    )
    return {"steps": xs, "rss": rss, "tensors": ntens, "ranks": ranks, "history": hist}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=None, help="long-run steps (default 10000)")
    p.add_argument("--sample", type=int, default=500)
    p.add_argument("--plot", default=None, help="save a figure to this path")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--maxlen", type=int, default=200, help="rank_history_maxlen of table 3")
    p.add_argument(
        "--part",
        choices=["all", "long", "maxlen"],
        default="all",
        help="long: table 3 only; maxlen: only its two runs with history on and maxlen set",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", RuntimeWarning)
    ranks = [8, 32, 96] if args.quick else [8, 16, 32, 64, 96, 128]
    steps = args.steps or (1500 if args.quick else 10_000)
    sw: dict = {}
    tr: list = []
    if args.part == "all":
        print("# 1. rank sweep (bytes after 3 warm-up steps; total = live + profiled step peak)")
        sw = sweep(ranks, warm=3)
        print()
        print("# 2. one rank-adaptive GeoLoRA run (tau = 0.3, start rank 96)")
        tr = adaptive_trace(60 if args.quick else 200, 10 if args.quick else 20)
        print()
    print(f"# 3. long runs: {steps} steps, RSS every {args.sample} steps")
    warm = min(500, steps // 3)
    runs = (
        ("geolora", False, None),
        ("dlrt", False, None),
        ("geolora", True, None),
        ("geolora", True, args.maxlen),
        ("dlrt", True, args.maxlen),
    )
    if args.part == "maxlen":
        runs = runs[3:]
    lr = {
        f"{k}, history {'on' if h else 'off'}, maxlen {m}": long_run(
            k, steps, args.sample, warm, h, m
        )
        for k, h, m in runs
    }
    print(
        "(history on, maxlen None: rank_history keeps one (step, ranks) entry per step, "
        "≈ 0.17 KiB/step; with rank_history_maxlen the histories stop at maxlen entries)"
    )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 3, figsize=(15, 4))
        for kind, (xs, ys, _, _) in sw.items():
            ax[0].plot(xs, [y / 2**20 for y in ys], "o-", label=kind)
        ax[0].set(title="peak training memory vs rank", xlabel="rank r", ylabel="MiB")
        ax[0].legend()
        ax[1].plot([r[1] for r in tr], [r[3] / 2**20 for r in tr], "o", label="GeoLoRA τ=0.3")
        ax[1].set(title="adaptive run: memory follows the rank", xlabel="Σ (m+n) r", ylabel="MiB")
        ax[1].legend()
        for kind, res in lr.items():
            ax[2].plot(res["steps"], [x / 2**20 for x in res["rss"]], label=kind)
        ax[2].set(title="RSS over a long run", xlabel="step", ylabel="MiB")
        ax[2].legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"figure written to {args.plot}")


if __name__ == "__main__":
    sys.exit(main())
