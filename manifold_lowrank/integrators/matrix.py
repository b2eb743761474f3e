r"""Dynamical low-rank integrators for matrices ``Y = U S Vᵀ``.

All functions are pure: they read a :class:`~manifold_lowrank.manifolds.FixedRankPoint`
and a gradient source and return new tensors; nothing is modified in place, no
``nn.Module`` and no optimizer state is involved.

Problem and sign convention
---------------------------
We integrate ``Ẏ = -G(Y)`` on (or near) the manifold of rank-``r`` matrices, where
``G`` is the loss gradient (training, ``h`` = learning rate) or ``G = -F`` for a
matrix ODE ``Ẏ = F(Y)`` (see :mod:`~manifold_lowrank.integrators.oracles`). ``grad``
is either

* :class:`~manifold_lowrank.manifolds.ProjectedGradients` ``(G V, Uᵀ G V, Gᵀ U)``
  from one backward pass at the current point — then every substep uses the frozen
  tangent gradient ``P_{T(Y₀)} G(Y₀)`` (one-pass variant, no further evaluations); or
* an oracle (``project(point) -> ProjectedGradients``) — then multi-pass methods
  evaluate the gradient where the method prescribes (KSL: 3 evaluations per step,
  BUG and augmented BUG: 2, parallel: 1 with ``substeps=1``).

One explicit Euler substep of size ``h`` per sub-problem is the default;
``substeps=s`` integrates each K/L/S sub-problem with ``s`` Euler steps of size
``h/s`` (one oracle call each), and the Galerkin (coefficient) step of BUG and
augmented BUG may instead run a given ``torch.optim`` optimizer.

Never dense, never ``S⁻¹``
--------------------------
Every function costs ``O((m+n) r² + r³)`` plus oracle calls; no ``m×n`` matrix is
formed and ``S`` is never inverted, so all methods work at ``S = 0`` and with
arbitrarily small singular values.

State-transport contract
------------------------
Every step returns :class:`StepResult` ``(point, M, N, singular_values)`` with

.. math:: M = U_\text{new}^\top U_\text{old} \in \mathbb R^{r_\text{new}\times r_\text{old}},
          \qquad N = V_\text{new}^\top V_\text{old}.

For any coefficient matrix ``Z`` in the old bases (representing ``X = U_old Z V_oldᵀ``,
e.g. a momentum of ``S``), ``M Z Nᵀ = U_newᵀ X V_new`` are the coordinates of the
orthogonal projection of ``X`` onto ``span(U_new) ⊗ span(V_new)``. This is exact
(no information lost) when the new bases contain the old ones, as after
:func:`augment` where ``M = N = [I; 0]`` exactly; after a truncation it drops the
discarded directions. A basis-side block ``B`` (``X = U_old B``, ``B`` of size
``r_old × k``) transforms as ``B ↦ M B`` (coordinates of ``U_new U_newᵀ X``). Transitions
compose by multiplication: augment → truncate has ``M = M_trunc @ M_aug``. The
``singular_values`` of rank-adaptive steps are those of the whole pre-truncation core,
for :class:`~manifold_lowrank.integrators.GlobalBudget`.

Rank rule
---------
Rank-adaptive methods truncate the ``2r × 2r`` core ``Ŝ = P diag(σ) Qᵀ`` with a
:class:`~manifold_lowrank.linalg.RankRule`: for ``rtol = τ``, the new rank is the
smallest ``r₁`` with ``(Σ_{j>r₁} σ_j²)^{1/2} ≤ τ ‖σ‖₂`` — the sum runs over **every**
discarded value, so ``r₁ = 2r`` is reachable — then clamped to
``[min_rank, max_rank]``. The DLRT/GeoLoRA research code instead sums
``σ_{j: 2r−1}`` (it leaves out the last value) and falls back to the old rank when no
index qualifies; we do not reproduce that. The Frobenius error of the truncation is
exactly the tail norm. Truncation errors of successive steps add up over the ``T/h``
steps (the error bounds of the adaptive integrators contain ``ϑ/h``), so for ODE
accuracy choose the per-step tolerance proportional to ``h``.

Step size and bad input
-----------------------
``h`` must be a finite number ``≥ 0`` (``ValueError`` naming ``h`` otherwise; to run
time backwards negate the vector field). ``h = 0`` returns the same matrix (rank-adaptive
methods still truncate). Non-finite projected gradients, oracle outputs or core
gradients raise ``FloatingPointError`` naming the source, and a step whose result is
not finite (step size too large) raises ``FloatingPointError`` as well; inputs are
never modified, so the caller's point is intact after any error. Mismatched shapes
raise ``ValueError`` naming the argument (``pg.GV``, ``point.S``, …).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from manifold_lowrank.integrators._validate import (
    check_point,
    check_positive_int,
    check_rank_rule,
    check_square_point,
    check_step_size,
    finite,
)
from manifold_lowrank.integrators.oracles import as_oracle, initial_projection, project
from manifold_lowrank.linalg import (
    RankRule,
    augment_basis,
    orthonormalize,
    qr_signfix,
    select_rank,
)
from manifold_lowrank.manifolds.types import FixedRankPoint, ProjectedGradients

__all__ = [
    "AugmentResult",
    "StepResult",
    "augment",
    "augmented_bug",
    "bug",
    "galerkin_step",
    "ksl",
    "parallel",
    "truncate",
]

OptimizerFactory = Callable[..., torch.optim.Optimizer]
CoreGrad = Callable[[FixedRankPoint], torch.Tensor]


class StepResult(NamedTuple):
    """Result of an integrator step.

    Attributes
    ----------
    point : FixedRankPoint
        The new point ``U₁ S₁ V₁ᵀ``.
    M : torch.Tensor
        ``U₁ᵀ U₀``, shape ``(r_new, r_old)`` (see the state-transport contract).
    N : torch.Tensor
        ``V₁ᵀ V₀``, shape ``(r_new, r_old)``.
    singular_values : torch.Tensor or None
        All singular values of the core before truncation (rank-adaptive methods and
        :func:`truncate`), ``None`` for fixed-rank methods. Feed them to
        :class:`~manifold_lowrank.integrators.GlobalBudget`.
    """

    point: FixedRankPoint
    M: torch.Tensor
    N: torch.Tensor
    singular_values: torch.Tensor | None


class AugmentResult(NamedTuple):
    """Result of :func:`augment`.

    Attributes
    ----------
    point : FixedRankPoint
        ``(Û, Ŝ₀, V̂)`` with ``Û = [U, Ũ]``, ``V̂ = [V, Ṽ]`` orthonormal and
        ``Ŝ₀ = [[S, 0], [0, 0]]``, so ``Û Ŝ₀ V̂ᵀ = U S Vᵀ`` exactly.
    M, N : torch.Tensor
        ``ÛᵀU = [I; 0]`` and ``V̂ᵀV = [I; 0]`` (exact), shapes ``(r̂, r)``.
    """

    point: FixedRankPoint
    M: torch.Tensor
    N: torch.Tensor


# --------------------------------------------------------------------------- helpers


def _new_directions(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Orthonormal ``Ũ ⟂ U`` with ``range([U Ũ]) ⊇ range([U X])``; ``min(k, m−r)`` columns."""
    m, r = u.shape
    k = x.shape[1]
    if k == 0 or r >= m:
        return u.new_zeros(m, 0)
    if r + k <= m:
        return augment_basis(u, x)
    q, _ = qr_signfix(torch.cat([u, x], dim=1))  # m × m
    return q[:, r:]


def _stack(i: int, k: int, like: torch.Tensor) -> torch.Tensor:
    """``[I_i; 0_{k×i}]``."""
    out = like.new_zeros(i + k, i)
    out[:i].copy_(torch.eye(i, dtype=like.dtype, device=like.device))
    return out


def _k_increment(
    oracle: Any, point: FixedRankPoint, pg0: ProjectedGradients, h: float, substeps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """K-step ``K̇ = −G(K V₀ᵀ) V₀``, ``K(0) = U₀S₀``: returns (direction, ``K(h) − K(0)``).

    With one substep the direction is ``G V₀`` (same span as the increment, but
    independent of ``h``); otherwise it is the increment itself.
    """
    u, s, v = point
    if substeps == 1:
        return pg0.GV, -h * pg0.GV
    dt = h / substeps
    k0 = u @ s
    delta = -dt * pg0.GV
    for _ in range(substeps - 1):
        q, rr = qr_signfix(k0 + delta)
        delta = delta - dt * project(oracle, FixedRankPoint(q, rr, v)).GV
    return delta, delta


def _l_increment(
    oracle: Any, point: FixedRankPoint, pg0: ProjectedGradients, h: float, substeps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """L-step ``L̇ = −G(U₀ Lᵀ)ᵀ U₀``, ``L(0) = V₀S₀ᵀ``: (direction, ``L(h) − L(0)``)."""
    u, s, v = point
    if substeps == 1:
        return pg0.GtU, -h * pg0.GtU
    dt = h / substeps
    l0 = v @ s.transpose(0, 1)
    delta = -dt * pg0.GtU
    for _ in range(substeps - 1):
        q, rr = qr_signfix(l0 + delta)
        delta = delta - dt * project(oracle, FixedRankPoint(u, rr.transpose(0, 1), q)).GtU
    return delta, delta


def _core_grad_source(core_grad: Any, oracle: Any) -> CoreGrad:
    """A function ``point -> Ûᵀ G(Û Ŝ V̂ᵀ) V̂`` from a tensor, callable or oracle."""
    if core_grad is None:
        return lambda p: project(oracle, p).UtGV
    if isinstance(core_grad, torch.Tensor):
        const = core_grad
        return lambda p: const
    if hasattr(core_grad, "project") and callable(core_grad.project):
        return lambda p: project(core_grad, p).UtGV
    if callable(core_grad):
        return core_grad
    raise TypeError(
        "core_grad must be a tensor, a callable point -> Ûᵀ G V̂, or an oracle, "
        f"got {type(core_grad).__name__}"
    )


def _galerkin_loop(
    coef: torch.Tensor,
    at: Callable[[torch.Tensor], Any],
    grad_fn: Callable[[Any], torch.Tensor],
    h: float,
    steps: int,
    optimizer: OptimizerFactory | None,
) -> torch.Tensor:
    """Integrate ``ċ = −grad_fn(at(c))`` over ``[0, h]`` for the coefficient tensor ``c``
    (the matrix core ``S`` or the Tucker core): ``steps`` explicit Euler steps, or
    ``steps`` steps of ``optimizer(params, lr=h/steps)``. Shared by the matrix and Tucker
    Galerkin steps; ``at`` rebuilds the point from the coefficients."""
    shape = tuple(coef.shape)

    def checked(c: torch.Tensor) -> torch.Tensor:
        g = grad_fn(at(c))
        if not isinstance(g, torch.Tensor) or tuple(g.shape) != shape:
            got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise ValueError(f"core_grad must return a tensor of shape {shape}, got {got}")
        finite("the core gradient", g)
        return g

    if optimizer is None:
        dt = h / steps
        for _ in range(steps):
            coef = coef - dt * checked(coef)
        return coef
    if not callable(optimizer):
        raise TypeError(
            f"optimizer must be a factory callable(params, lr=...), got {type(optimizer).__name__}"
        )
    param = coef.detach().clone()
    opt = optimizer([param], lr=h / steps)
    for _ in range(steps):
        param.grad = checked(param.detach().clone()).detach().clone()
        opt.step()
    return param.detach()


def _run_galerkin(
    point: FixedRankPoint,
    grad_fn: CoreGrad,
    h: float,
    steps: int,
    optimizer: OptimizerFactory | None,
) -> torch.Tensor:
    u, s, v = point
    return _galerkin_loop(s, lambda c: FixedRankPoint(u, c, v), grad_fn, h, steps, optimizer)


def _finish(name: str, point: FixedRankPoint) -> FixedRankPoint:
    finite(f"the result of {name} (is the step size too large?)", *point)
    return point


def _svd_truncate(point: FixedRankPoint, rule: RankRule) -> StepResult:
    u, s, v = point
    p, sigma, qh = torch.linalg.svd(s, full_matrices=False)
    r = select_rank(sigma, rule)
    p, q = p[:, :r], qh[:r].transpose(0, 1)
    if r > 0:  # deterministic gauge: largest-magnitude entry of each column of P positive
        idx = p.abs().argmax(dim=0)
        sign = torch.sign(p[idx, torch.arange(r, device=p.device)])
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        p, q = p * sign, q * sign
    new = FixedRankPoint(u @ p, torch.diag(sigma[:r]).to(s.dtype), v @ q)
    return StepResult(new, p.transpose(0, 1).contiguous(), q.transpose(0, 1).contiguous(), sigma)


def _prepare(
    point: Any, grad: Any, h: Any, substeps: int
) -> tuple[FixedRankPoint, Any, float, int]:
    point = check_point(point)
    h = check_step_size(h)
    substeps = check_positive_int(substeps, "substeps")
    oracle = as_oracle(grad, point)
    return point, oracle, h, substeps


# ------------------------------------------------------------------------ public API


def truncate(point: FixedRankPoint, rank_rule: RankRule | int) -> StepResult:
    r"""Truncate the core of ``point`` by a rank rule (SVD of the small core).

    With ``S = P diag(σ) Qᵀ`` and ``r₁ = rank_rule.select(σ)``:
    ``U₁ = U P_{:, :r₁}``, ``S₁ = diag(σ_{1:r₁})``, ``V₁ = V Q_{:, :r₁}``. Signs are
    fixed so that the largest-magnitude entry of each column of ``P`` is positive.

    Parameters
    ----------
    point : FixedRankPoint
        ``U (m×p)``, ``S (p×q)``, ``V (n×q)`` with orthonormal ``U``, ``V``.
    rank_rule : RankRule or int
        The rule (see the module docstring), or a fixed rank.

    Returns
    -------
    StepResult
        ``M = P_{:, :r₁}ᵀ = U₁ᵀ U``, ``N = Q_{:, :r₁}ᵀ``, ``singular_values = σ`` (all
        of them). Cost ``O(p³ + (m+n) p r₁)``.
    """
    point = check_point(point)
    rule = check_rank_rule(rank_rule, allow_none=False)
    assert rule is not None
    return _svd_truncate(point, rule)


def augment(
    point: FixedRankPoint,
    grad: ProjectedGradients | Any,
    *,
    h: float | None = None,
    substeps: int = 1,
) -> AugmentResult:
    r"""Augment the bases with the new gradient directions (basis-update step).

    ``Û = [U, Ũ]`` with ``Ũ`` orthonormal, ``Ũ ⟂ U`` and
    ``range(Û) = range([U, K₁])``, where ``K₁`` is the K-step result; with one Euler
    substep ``range([U, K₁]) = range([U, G V])``, so ``Ũ`` comes from ``G V``
    (:func:`~manifold_lowrank.linalg.augment_basis`); likewise ``V̂ = [V, Ṽ]`` from
    ``Gᵀ U``. The core is padded, ``Ŝ₀ = [[S, 0], [0, 0]]``, so the represented
    matrix is unchanged. When ``2r > m`` only ``m − r`` directions are added.

    This is the first half of the amortised DLRT scheme: augment once, take several
    :func:`galerkin_step` calls on ``Ŝ`` with fresh gradients at ``(Û, V̂)``, then
    :func:`truncate`.

    Parameters
    ----------
    point : FixedRankPoint
        ``(U, S, V)``, ``U (m×r)``, ``V (n×r)``.
    grad : ProjectedGradients or oracle
        Gradient source at ``point``.
    h : float, optional
        Step size; needed only with ``substeps > 1`` (the K/L trajectories).
    substeps : int
        Euler substeps of the K and L steps (needs an oracle to be useful).

    Returns
    -------
    AugmentResult
        Cost ``O((m+n) r²)``.
    """
    if substeps != 1 and h is None:
        raise ValueError("augment needs the step size h when substeps > 1")
    point, oracle, hh, substeps = _prepare(point, grad, 0.0 if h is None else h, substeps)
    check_square_point(point)
    return _augment(point, oracle, initial_projection(oracle, grad, point), hh, substeps)


def _augment(
    point: FixedRankPoint, oracle: Any, pg0: ProjectedGradients, h: float, substeps: int
) -> AugmentResult:
    u, s, v = point
    dir_k, _ = _k_increment(oracle, point, pg0, h, substeps)
    dir_l, _ = _l_increment(oracle, point, pg0, h, substeps)
    ut = _new_directions(u, dir_k)
    vt = _new_directions(v, dir_l)
    ru, rv = s.shape
    s_hat = s.new_zeros(ru + ut.shape[1], rv + vt.shape[1])
    s_hat[:ru, :rv] = s
    u_hat = torch.cat([u, ut], dim=1)
    v_hat = torch.cat([v, vt], dim=1)
    return AugmentResult(
        FixedRankPoint(u_hat, s_hat, v_hat), _stack(ru, ut.shape[1], s), _stack(rv, vt.shape[1], s)
    )


def galerkin_step(
    point: FixedRankPoint,
    core_grad: torch.Tensor | CoreGrad | Any,
    h: float,
    *,
    steps: int = 1,
    optimizer: OptimizerFactory | None = None,
) -> FixedRankPoint:
    r"""Galerkin (coefficient) step on the core with the bases held fixed.

    Integrates ``Ṡ = −Uᵀ G(U S Vᵀ) V`` from ``S(0) = point.S`` over ``[0, h]`` with
    ``steps`` explicit Euler steps of size ``h/steps``, or ``steps`` steps of a torch
    optimizer created as ``optimizer([S], lr=h/steps)`` (e.g. ``torch.optim.Adam`` or
    ``functools.partial(torch.optim.SGD, momentum=0.9)``; the optimizer and its state
    live only inside this call).

    Parameters
    ----------
    point : FixedRankPoint
        ``(U, S, V)``; ``U``, ``V`` are not changed.
    core_grad : tensor, callable or oracle
        A fixed ``Uᵀ G V`` (``S``-shaped tensor), a callable
        ``point -> Uᵀ G(U S Vᵀ) V`` (e.g. a layer's ``∂L/∂S`` at the given factors), or an
        oracle (its ``UtGV`` is used).
    h : float
        Step size (``≥ 0``).
    steps : int
        Number of inner steps.
    optimizer : callable, optional
        Optimizer factory ``optimizer(params, lr=...)``.

    Returns
    -------
    FixedRankPoint
        ``(U, S₁, V)``. Cost ``O(steps · r̂²)`` plus the gradient calls.
    """
    point = check_point(point)
    h = check_step_size(h)
    steps = check_positive_int(steps, "steps")
    if core_grad is None:
        raise TypeError("core_grad must be a tensor, a callable or an oracle, got None")
    fn = _core_grad_source(core_grad, None)
    s1 = _run_galerkin(point, fn, h, steps, optimizer)
    return _finish("galerkin_step", FixedRankPoint(point.U, s1, point.V))


def ksl(
    point: FixedRankPoint,
    grad: ProjectedGradients | Any,
    h: float,
    *,
    substeps: int = 1,
) -> StepResult:
    r"""Projector-splitting integrator (Lubich–Oseledets 2014), Lie order K → S → L.

    With ``Y₀ = U₀ S₀ V₀ᵀ``:

    1. **K-step** ``K̇ = −G(K V₀ᵀ) V₀``, ``K(0) = U₀ S₀``; ``U₁ Ŝ₁ = qr(K(h))``.
    2. **S-step, backwards** ``Ṡ = +U₁ᵀ G(U₁ S V₀ᵀ) V₀``, ``S(0) = Ŝ₁`` → ``S̃₀``.
    3. **L-step** ``L̇ = −G(U₁ Lᵀ)ᵀ U₁``, ``L(0) = V₀ S̃₀ᵀ``; ``V₁ S₁ᵀ = qr(L(h))``.

    ``Y₁ = U₁ S₁ V₁ᵀ``. Exact when ``Ẏ`` is ``h``-independent along a rank-``r``
    trajectory (exactness theorem), first order in general, and robust to small
    singular values (no ``S⁻¹``). With an oracle: 3 evaluations per step
    (``3·substeps`` with substeps). With projected gradients the frozen tangent
    gradient is used for all three substeps.

    Parameters
    ----------
    point : FixedRankPoint
        ``U (m×r)``, ``S (r×r)``, ``V (n×r)``.
    grad : ProjectedGradients or oracle
        Gradient at ``point`` or an oracle (``Ẏ = −G``).
    h : float
        Step size ``≥ 0`` (learning rate).
    substeps : int
        Explicit Euler steps per sub-problem.

    Returns
    -------
    StepResult
        ``singular_values`` is ``None``. Cost ``O((m+n) r²)`` plus oracle calls.
    """
    point, oracle, h, substeps = _prepare(point, grad, h, substeps)
    check_square_point(point)
    u0, s0, v0 = point
    pg0 = initial_projection(oracle, grad, point)
    _, dk = _k_increment(oracle, point, pg0, h, substeps)
    u1, s_hat = qr_signfix(u0 @ s0 + dk)
    dt = h / substeps
    st = s_hat
    for _ in range(substeps):
        st = st + dt * project(oracle, FixedRankPoint(u1, st, v0)).UtGV
    mid = FixedRankPoint(u1, st, v0)
    _, dl = _l_increment(oracle, mid, project(oracle, mid), h, substeps)
    v1, rt = qr_signfix(v0 @ st.transpose(0, 1) + dl)
    new = _finish("ksl", FixedRankPoint(u1, rt.transpose(0, 1).contiguous(), v1))
    return StepResult(new, u1.transpose(0, 1) @ u0, v1.transpose(0, 1) @ v0, None)


def bug(
    point: FixedRankPoint,
    grad: ProjectedGradients | Any,
    h: float,
    *,
    substeps: int = 1,
    core_grad: CoreGrad | None = None,
    core_steps: int | None = None,
    optimizer: OptimizerFactory | None = None,
) -> StepResult:
    r"""Fixed-rank basis-update & Galerkin integrator (Ceruti–Lubich 2022).

    1. K-step ``K̇ = −G(K V₀ᵀ) V₀``, ``K(0) = U₀S₀``; ``U₁ = orth(K(h))``, ``M = U₁ᵀU₀``.
    2. L-step ``L̇ = −G(U₀ Lᵀ)ᵀ U₀``, ``L(0) = V₀S₀ᵀ``; ``V₁ = orth(L(h))``, ``N = V₁ᵀV₀``.
    3. Galerkin ``Ṡ = −U₁ᵀ G(U₁ S V₁ᵀ) V₁``, ``S(0) = M S₀ Nᵀ`` → ``S₁``.

    K and L run in parallel from the same gradient (the "unconventional" integrator,
    the fixed-rank DLRT step). Exact for rank-``r`` trajectories, first order,
    robust to small singular values. With an oracle: 2 evaluations (K/L at ``Y₀``,
    Galerkin at ``U₁ M S₀ Nᵀ V₁ᵀ``). With projected gradients the Galerkin step uses
    ``U₁ᵀ P_{T(Y₀)}(G₀) V₁`` unless ``core_grad`` is given.

    Parameters
    ----------
    point, grad, h, substeps
        As in :func:`ksl`.
    core_grad : callable, optional
        ``point -> U₁ᵀ G(U₁ S V₁ᵀ) V₁`` for the Galerkin step (e.g. a fresh backward
        pass of the layer at the new bases).
    core_steps : int, optional
        Inner steps of the Galerkin step (default ``substeps``).
    optimizer : callable, optional
        Optimizer factory for the Galerkin step, see :func:`galerkin_step`.

    Returns
    -------
    StepResult
        Cost ``O((m+n) r²)`` plus oracle calls.
    """
    point, oracle, h, substeps = _prepare(point, grad, h, substeps)
    check_square_point(point)
    core_steps = check_positive_int(substeps if core_steps is None else core_steps, "core_steps")
    u0, s0, v0 = point
    pg0 = initial_projection(oracle, grad, point)
    _, dk = _k_increment(oracle, point, pg0, h, substeps)
    _, dl = _l_increment(oracle, point, pg0, h, substeps)
    u1 = orthonormalize(u0 @ s0 + dk)
    v1 = orthonormalize(v0 @ s0.transpose(0, 1) + dl)
    m_ = u1.transpose(0, 1) @ u0
    n_ = v1.transpose(0, 1) @ v0
    start = FixedRankPoint(u1, m_ @ s0 @ n_.transpose(0, 1), v1)
    s1 = _run_galerkin(start, _core_grad_source(core_grad, oracle), h, core_steps, optimizer)
    new = _finish("bug", FixedRankPoint(u1, s1, v1))
    return StepResult(new, m_, n_, None)


def augmented_bug(
    point: FixedRankPoint,
    grad: ProjectedGradients | Any,
    h: float,
    rank_rule: RankRule | int | None,
    *,
    substeps: int = 1,
    core_grad: CoreGrad | None = None,
    core_steps: int | None = None,
    optimizer: OptimizerFactory | None = None,
) -> StepResult:
    r"""Rank-adaptive augmented BUG integrator (Ceruti–Kusch–Lubich 2022).

    1. K- and L-steps as in :func:`bug`; augmented bases ``Û = orth[U₀, K(h)]
       = [U₀, Ũ]``, ``V̂ = [V₀, Ṽ]`` (:func:`augment`), ``M = N = [I; 0]``.
    2. Galerkin ``Ṡ = −Ûᵀ G(Û S V̂ᵀ) V̂`` from ``Ŝ₀ = [[S₀, 0], [0, 0]]`` (so
       ``Û Ŝ₀ V̂ᵀ = Y₀``) → ``Ŝ₁`` (``2r × 2r``).
    3. Truncation of ``Ŝ₁`` by ``rank_rule`` (:func:`truncate`).

    The gradient for step 2 comes from ``core_grad`` if given, else from the oracle
    at ``(Û, Ŝ, V̂)`` (2 evaluations per step), else — projected gradients only —
    from the frozen tangent gradient, in which case the block ``Ũᵀ G Ṽ`` is zero and
    the step coincides with :func:`parallel`. The amortised DLRT schedule (several
    coefficient steps per augmentation) is :func:`augment` → :func:`galerkin_step`
    → :func:`truncate`.

    Parameters
    ----------
    point, grad, h, substeps
        As in :func:`ksl`.
    rank_rule : RankRule, int or None
        Truncation rule; ``None`` returns the untruncated augmented point.
    core_grad, core_steps, optimizer
        As in :func:`bug`.

    Returns
    -------
    StepResult
        ``M = U₁ᵀU₀``, ``N = V₁ᵀV₀``, ``singular_values`` of ``Ŝ₁``. Cost
        ``O((m+n) r² + r³)`` plus oracle calls.
    """
    point, oracle, h, substeps = _prepare(point, grad, h, substeps)
    check_square_point(point)
    rule = check_rank_rule(rank_rule)
    core_steps = check_positive_int(substeps if core_steps is None else core_steps, "core_steps")
    pg0 = initial_projection(oracle, grad, point)
    aug = _augment(point, oracle, pg0, h, substeps)
    s1 = _run_galerkin(aug.point, _core_grad_source(core_grad, oracle), h, core_steps, optimizer)
    full = _finish("augmented_bug", FixedRankPoint(aug.point.U, s1, aug.point.V))
    if rule is None:
        return StepResult(full, aug.M, aug.N, None)
    tr = _svd_truncate(full, rule)
    return StepResult(tr.point, tr.M @ aug.M, tr.N @ aug.N, tr.singular_values)


def parallel(
    point: FixedRankPoint,
    grad: ProjectedGradients | Any,
    h: float,
    rank_rule: RankRule | int | None,
    *,
    substeps: int = 1,
) -> StepResult:
    r"""Rank-adaptive parallel integrator (Ceruti–Kusch–Lubich 2024; GeoLoRA's step).

    From **one** set of projected gradients ``(G V, Uᵀ G V, Gᵀ U)`` at ``Y₀``:

    * ``Ũ`` = orthonormal new directions of ``G V`` outside ``range(U)``
      (:func:`~manifold_lowrank.linalg.augment_basis`), ``Ṽ`` likewise from ``Gᵀ U``;
    * the augmented core

      .. math::
          \hat S = \begin{bmatrix} S - h\,U^\top G V & -h\,(G^\top U)^\top \tilde V \\
                                   -h\,\tilde U^\top G V & 0 \end{bmatrix}
                   \in \mathbb R^{2r\times 2r};

    * truncation of ``Ŝ`` by ``rank_rule``.

    Before truncation ``[U Ũ] Ŝ [V Ṽ]ᵀ = U S Vᵀ − h P_T(G)`` with
    ``P_T(G) = G V Vᵀ + U Uᵀ G − U Uᵀ G V Vᵀ`` (one projected gradient step, the
    GeoLoRA identity). ``S`` is never inverted, so this works at ``S = 0`` (adapters
    starting at ``ΔW = 0``). With an oracle and ``substeps = s > 1`` the K-, L- and
    (old-basis) S-sub-problems are integrated with ``s`` Euler steps each and
    ``Ŝ = [[S(h), L(h)ᵀṼ], [ŨᵀK(h), 0]]``.

    GeoLoRA writes the adapter as ``x U S Vᵀ`` with ``U`` on the *input* side; here
    ``U`` is on the output side, so their ``(U, V, ∇_U S⁻¹, ∇_V S⁻¹)`` are our
    ``(V, U, Gᵀ U, G V)``.

    Parameters
    ----------
    point : FixedRankPoint
        ``(U, S, V)``.
    grad : ProjectedGradients or oracle
        Gradient at ``point`` (an oracle is called once when ``substeps = 1``).
    h : float
        Step size ``≥ 0`` (learning rate).
    rank_rule : RankRule, int or None
        Truncation rule; ``None`` returns the untruncated ``2r`` point.
    substeps : int
        Euler substeps per sub-problem (needs an oracle).

    Returns
    -------
    StepResult
        ``M = U₁ᵀU₀``, ``N = V₁ᵀV₀``, ``singular_values`` of ``Ŝ``. Cost
        ``O((m+n) r² + r³)``.
    """
    point, oracle, h, substeps = _prepare(point, grad, h, substeps)
    rule = check_rank_rule(rank_rule)
    u, s, v = point
    pg0 = initial_projection(oracle, grad, point)
    dir_k, dk = _k_increment(oracle, point, pg0, h, substeps)
    dir_l, dl = _l_increment(oracle, point, pg0, h, substeps)
    if substeps == 1:
        s_bar = s - h * pg0.UtGV
    else:
        dt = h / substeps
        s_bar = s - dt * pg0.UtGV
        for _ in range(substeps - 1):
            s_bar = s_bar - dt * project(oracle, FixedRankPoint(u, s_bar, v)).UtGV
    ut = _new_directions(u, dir_k)
    vt = _new_directions(v, dir_l)
    ru, rv = s.shape
    ku, kv = ut.shape[1], vt.shape[1]
    s_hat = s.new_zeros(ru + ku, rv + kv)
    s_hat[:ru, :rv] = s_bar
    s_hat[:ru, rv:] = dl.transpose(0, 1) @ vt
    s_hat[ru:, :rv] = ut.transpose(0, 1) @ dk
    full = _finish(
        "parallel", FixedRankPoint(torch.cat([u, ut], dim=1), s_hat, torch.cat([v, vt], dim=1))
    )
    m_aug, n_aug = _stack(ru, ku, s), _stack(rv, kv, s)
    if rule is None:
        return StepResult(full, m_aug, n_aug, None)
    tr = _svd_truncate(full, rule)
    return StepResult(tr.point, tr.M @ m_aug, tr.N @ n_aug, tr.singular_values)
