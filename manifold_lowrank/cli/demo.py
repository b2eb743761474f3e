r"""``manifold-lowrank demo``: optimizers on the fixed-rank manifold, side by side.

Two problems with a known answer, both on ``M_r = {X ∈ R^{m×n} : rank X = r}``:

* ``completion``: recover a rank-``r`` matrix ``M = U* Σ V*ᵀ`` (condition number
  ``cond``) from a fraction ``p`` of its entries ``Ω``:
  ``min_{X ∈ M_r} f(X) = ½ ‖P_Ω(X − M)‖_F² / p``. Scaled by ``1/p`` so that the
  Riemannian Hessian is close to the identity and a unit step is natural. Reported:
  ``rel_error = ‖X − M‖_F / ‖M‖_F`` over *all* entries (the unobserved ones test it).
* ``approximation``: ``min_{X ∈ M_r} ½ ‖X − A‖_F²`` with ``A = M + noise`` (full rank);
  the optimum is the truncated SVD (Eckart–Young), so the reported
  ``gap = (f(X) − f*) / f*`` must go to ``0``.

All methods start from the same random point ``X₀ = U₀ S₀ V₀ᵀ`` and get the same budget
of steps. Runners are registered in :mod:`manifold_lowrank.cli.registry` (group
``"demo"``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from manifold_lowrank.cli.registry import REGISTRY, register
from manifold_lowrank.linalg import RankRule, orthonormalize, truncated_svd
from manifold_lowrank.manifolds.types import FixedRankPoint

__all__ = ["DemoProblem", "make_problem", "run_method"]

TASKS = ("completion", "approximation")


@dataclass(frozen=True)
class DemoProblem:
    """Data of one demo problem (all tensors on the run's device and dtype).

    Attributes
    ----------
    task : str
        ``"completion"`` or ``"approximation"``.
    target : torch.Tensor
        ``(m, n)``: ``M`` (completion) or ``A`` (approximation).
    truth : torch.Tensor
        ``(m, n)`` rank-``r`` ground truth ``M`` (completion) or the truncated SVD of
        ``A`` (approximation).
    weight : torch.Tensor
        ``(m, n)`` ``1/p`` on observed entries, ``0`` elsewhere (all ones for
        approximation).
    rank : int
        Rank ``r`` of the manifold.
    optimum : float
        ``f*`` (``0`` for completion).
    start : FixedRankPoint
        Common starting point.
    """

    task: str
    target: torch.Tensor
    truth: torch.Tensor
    weight: torch.Tensor
    rank: int
    optimum: float
    start: FixedRankPoint

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """``f(X) = ½ Σ_ij w_ij (X − target)_ij²`` for a dense ``X``."""
        return 0.5 * (self.weight * (x - self.target).square()).sum()

    def metric(self, x: torch.Tensor) -> float:
        """The reported error: relative error (completion) or optimality gap."""
        if self.task == "completion":
            return float(torch.linalg.norm(x - self.truth) / torch.linalg.norm(self.truth))
        return float((self.loss(x) - self.optimum) / self.optimum)

    @property
    def metric_name(self) -> str:
        return "rel_error" if self.task == "completion" else "gap"


def make_problem(config: Mapping[str, Any]) -> DemoProblem:
    """Build the problem of ``config`` (keys ``task, m, n, rank, sample_rate, cond,
    noise, seed, device, dtype``) deterministically from its seed."""
    task, m, n, r = config["task"], config["m"], config["n"], config["rank"]
    if r > min(m, n):
        raise ValueError(f"rank must be <= min(m, n) = {min(m, n)}, got {r}")
    device = torch.device(config["device"])
    dtype = getattr(torch, config["dtype"])
    gen = torch.Generator().manual_seed(config["seed"])

    def gauss(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    u_true, v_true = orthonormalize(gauss(m, r)), orthonormalize(gauss(n, r))
    sigma = torch.logspace(0, -math.log10(config["cond"]), r, dtype=torch.float64)
    truth = (u_true * sigma) @ v_true.T
    if task == "completion":
        p = config["sample_rate"]
        observed = torch.rand(m, n, generator=gen, dtype=torch.float64) < p
        weight = observed.to(torch.float64) / p
        target, optimum = truth, 0.0
    else:
        noise = gauss(m, n)
        target = (
            truth + config["noise"] * torch.linalg.norm(truth) / torch.linalg.norm(noise) * noise
        )
        u, s, v = truncated_svd(target, RankRule(rank=r))
        truth = (u * s) @ v.T
        weight = torch.ones(m, n, dtype=torch.float64)
        optimum = float(0.5 * (target - truth).square().sum())
    # A random start of the scale of the target: S₀ = σ̄ I with σ̄ the mean singular value.
    start = FixedRankPoint(
        orthonormalize(gauss(m, r)),
        float(sigma.mean()) * torch.eye(r, dtype=torch.float64),
        orthonormalize(gauss(n, r)),
    )

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype)

    return DemoProblem(
        task=task,
        target=cast(target),
        truth=cast(truth),
        weight=cast(weight),
        rank=r,
        optimum=optimum,
        start=FixedRankPoint(*(cast(t) for t in start)),
    )


def _orth_error(*bases: torch.Tensor) -> float:
    """``max_k ‖B_kᵀ B_k − I‖_F`` over the given bases."""
    out = 0.0
    for b in bases:
        eye = torch.eye(b.shape[-1], dtype=b.dtype, device=b.device)
        out = max(out, float(torch.linalg.norm(b.T @ b - eye)))
    return out


def _optimize(
    config: Mapping[str, Any],
    name: str,
    step: Callable[[], None],
    current: Callable[[], torch.Tensor],
    problem: DemoProblem,
) -> dict[str, Any]:
    """Run ``steps`` calls of ``step()``; time only the steps, not the evaluations."""
    steps, every = config["steps"], max(1, config["steps"] // 50)
    hist: dict[str, list[float]] = {"step": [0], "time_s": [0.0]}
    hist["value"] = [problem.metric(current())]
    elapsed = 0.0
    progress = config.get("progress_factory")
    bar = progress(total=steps, desc=f"{problem.task}/{name}") if progress else None
    device = problem.target.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    for k in range(1, steps + 1):
        t0 = time.perf_counter()
        step()
        sync(device)  # asynchronous devices: time the work, not the launch
        elapsed += time.perf_counter() - t0
        if k % every == 0 or k == steps:
            with torch.no_grad():
                value = problem.metric(current())
            hist["step"].append(k)
            hist["time_s"].append(elapsed)
            hist["value"].append(value)
            if not math.isfinite(value):
                break
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    final = hist["value"][-1]
    return {
        "task": problem.task,
        "method": name,
        "steps": hist["step"][-1],
        problem.metric_name: final,
        "time_s": elapsed,
        "ms_per_step": 1e3 * elapsed / max(1, hist["step"][-1]),
        "history": hist,
    }


def _problem(config: Mapping[str, Any]) -> DemoProblem:
    problem = config["problem"]
    assert isinstance(problem, DemoProblem)
    return problem


@register(
    "svd",
    group="demo",
    description="dense reference: truncated SVD, one step (approximation); singular value "
    "projection X <- P_r(X - 0.5 grad f) (completion); O(mn min(m,n)) per step",
)
def run_svd(config: Mapping[str, Any]) -> dict[str, Any]:
    problem = _problem(config)
    rule = RankRule(rank=problem.rank)
    u0, s0, v0 = problem.start
    state = {"x": u0 @ s0 @ v0.T, "u": u0, "v": v0}

    def step() -> None:
        x = state["x"]
        if problem.task == "approximation":
            y = problem.target  # one step of X <- P_r(A) is the exact optimum
        else:
            # SVP (Jain, Meka & Dhillon 2010) with step 0.5 on f = ½‖P_Ω(X − M)‖²/p;
            # the unit step 1/p of the paper diverges at these sizes.
            y = x - 0.5 * problem.weight * (x - problem.target)
        u, s, v = truncated_svd(y, rule)
        state.update(x=(u * s) @ v.T, u=u, v=v)

    if problem.task == "approximation":
        config = {**config, "steps": 1}  # exact after one step; the rest would repeat it
    result = _optimize(config, "svd", step, lambda: state["x"], problem)
    result["orth_error"] = _orth_error(state["u"], state["v"])
    return result


def _run_fixed_rank(
    config: Mapping[str, Any], name: str, make_optimizer: Callable[[Any], Any]
) -> dict[str, Any]:
    """Optimize a packed :class:`~manifold_lowrank.manifolds.FixedRank` parameter."""
    import geoopt

    from manifold_lowrank.manifolds import FixedRank

    problem = _problem(config)
    m, n = problem.target.shape
    manifold = FixedRank(m, n, problem.rank)
    x = geoopt.ManifoldParameter(manifold.pack(problem.start).clone(), manifold=manifold)
    opt = make_optimizer(x)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        # Autograd gives the factor gradients [∂U; ∂S; ∂V] of the packed tensor; the
        # optimizer turns them into the Riemannian gradient (egrad2rgrad).
        problem.loss(manifold.embed(x)).backward()
        opt.step()

    result = _optimize(config, name, step, lambda: manifold.embed(x.detach()), problem)
    u, _, v = manifold.unpack(x.detach())
    result["orth_error"] = _orth_error(u, v)
    return result


@register(
    "fixedrank-rsgd",
    group="demo",
    description="ours: FixedRank + manifold_lowrank.optim.RiemannianSGD (lr 0.5)",
    requires=("geoopt",),
)
def run_fixedrank_rsgd(config: Mapping[str, Any]) -> dict[str, Any]:
    from manifold_lowrank.optim import RiemannianSGD

    return _run_fixed_rank(config, "fixedrank-rsgd", lambda x: RiemannianSGD([x], lr=0.5))


@register(
    "fixedrank-radam",
    group="demo",
    description="ours: FixedRank + manifold_lowrank.optim.RiemannianAdam (lr 0.03)",
    requires=("geoopt",),
)
def run_fixedrank_radam(config: Mapping[str, Any]) -> dict[str, Any]:
    from manifold_lowrank.optim import RiemannianAdam

    return _run_fixed_rank(config, "fixedrank-radam", lambda x: RiemannianAdam([x], lr=0.03))


@register(
    "fixedrank-geoopt-radam",
    group="demo",
    description="FixedRank + geoopt.optim.RiemannianAdam (lr 0.03): geoopt's own optimizer",
    requires=("geoopt",),
)
def run_fixedrank_geoopt_radam(config: Mapping[str, Any]) -> dict[str, Any]:
    import geoopt

    return _run_fixed_rank(
        config, "fixedrank-geoopt-radam", lambda x: geoopt.optim.RiemannianAdam([x], lr=0.03)
    )


@register(
    "geoopt-stiefel",
    group="demo",
    description="anchor: U, V on geoopt.EuclideanStiefel, S Euclidean, "
    "geoopt.optim.RiemannianAdam (lr 0.2)",
    requires=("geoopt",),
)
def run_geoopt_stiefel(config: Mapping[str, Any]) -> dict[str, Any]:
    import geoopt

    problem = _problem(config)
    u0, s0, v0 = problem.start
    stiefel = geoopt.EuclideanStiefel()
    u = geoopt.ManifoldParameter(u0.clone(), manifold=stiefel)
    v = geoopt.ManifoldParameter(v0.clone(), manifold=stiefel)
    s = torch.nn.Parameter(s0.clone())
    opt = geoopt.optim.RiemannianAdam([u, s, v], lr=0.2)

    def current() -> torch.Tensor:
        return (u @ s @ v.T).detach()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        problem.loss(u @ s @ v.T).backward()
        opt.step()

    result = _optimize(config, "geoopt-stiefel", step, current, problem)
    result["orth_error"] = _orth_error(u.detach(), v.detach())
    return result


@register(
    "euclidean-adam",
    group="demo",
    description="baseline: X = A Bᵀ with unconstrained factors, torch.optim.Adam (lr 0.01)",
)
def run_euclidean_adam(config: Mapping[str, Any]) -> dict[str, Any]:
    problem = _problem(config)
    u0, s0, v0 = problem.start
    # Balanced factors of X₀: A = U₀ S₀^{1/2}, B = V₀ S₀^{1/2} (S₀ is a positive multiple of I).
    root = torch.sqrt(torch.diagonal(s0))
    a = torch.nn.Parameter(u0 * root)
    b = torch.nn.Parameter(v0 * root)
    opt = torch.optim.Adam([a, b], lr=0.01)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        problem.loss(a @ b.T).backward()
        opt.step()

    result = _optimize(config, "euclidean-adam", step, lambda: (a @ b.T).detach(), problem)
    result["orth_error"] = None
    return result


def run_method(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Run the demo runner ``name`` with ``config`` (which holds the ``problem``)."""
    return REGISTRY.get(name, group="demo")(config)
