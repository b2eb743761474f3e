r"""Dynamical low-rank integrators for Tucker tensors ``X = C ×₁ U₁ … ×_d U_d``.

Same conventions as :mod:`~manifold_lowrank.integrators.matrix`: we integrate
``Ẋ = −G(X)``; ``grad`` is :class:`~manifold_lowrank.manifolds.TuckerProjectedGradients`
``(G ×_j U_jᵀ, (G ×_{j≠k} U_jᵀ)_k)`` at the current point (one-pass variant, frozen
tangent gradient) or an oracle with ``project(TuckerPoint) -> TuckerProjectedGradients``.

Notation: ``Mat_i`` is the mode-``i`` unfolding (tensorly's layout). For mode ``i``
let ``Mat_i(C)ᵀ = Q_i R_i`` (sign-fixed thin QR), so ``Mat_i(C) = R_iᵀ Q_iᵀ`` and
``Mat_i(X) = K_i V_iᵀ`` with ``K_i = U_i R_iᵀ`` and ``V_i = (⊗_{j≠i} U_j) Q_i``
orthonormal. The K-step of mode ``i`` is ``K̇_i = −Mat_i(G) V_i
= −Mat_i(G ×_{j≠i} U_jᵀ) Q_i``, i.e. it needs only ``partials[i]``.

Modes listed in ``full_modes`` are held fixed: no K-step, no augmentation, no
truncation (``M_i = I``). Pass a square orthogonal factor (``U_i = I`` for the
spatial modes of a convolution kernel ``(out, in, kh, kw)`` with
``full_modes=(2, 3)``); then no approximation is made in those modes.

Rank rules are given per mode: one :class:`~manifold_lowrank.linalg.RankRule` (or
``int``) for all dynamic modes, or a sequence of length ``d`` (entries of full modes
are ignored). Truncation is a (non-sequential) HOSVD of the small augmented core:
``P_i, σ_i = svd(Mat_i(Ĉ))``, ``r_i = rule_i(σ_i)`` with the exact tail rule of
:mod:`~manifold_lowrank.linalg.rank_rule`, then clamped so that
``r_i ≤ ∏_{j≠i} r_j`` (a valid multilinear rank); the error is at most
``(Σ_i tail_i²)^{1/2}``, so ``rtol = τ`` per mode bounds the relative error by
``τ √d``.

State transport: every step returns :class:`TuckerStepResult` with
``transitions[i] = U_{i,new}ᵀ U_{i,old}``; a core-shaped quantity ``Z`` in the old
bases is carried to ``Z ×_i transitions[i]`` (orthogonal projection; exact after
augmentation, where ``transitions[i] = [I; 0]``).

Cost: ``O(Σ_i n_i r_i² + d r^{d+1})`` per step (``r = max r_i`` of the augmented
core) plus oracle calls; the full tensor is never formed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from manifold_lowrank.integrators._tensor import fold, mode_dot, unfold
from manifold_lowrank.integrators._validate import (
    check_positive_int,
    check_rank_rule,
    check_step_size,
    finite,
)
from manifold_lowrank.integrators.matrix import (
    OptimizerFactory,
    _galerkin_loop,
    _new_directions,
)
from manifold_lowrank.integrators.oracles import as_oracle, initial_projection, project
from manifold_lowrank.linalg import RankRule, orthonormalize, qr_signfix, select_rank
from manifold_lowrank.manifolds.types import TuckerPoint, TuckerProjectedGradients

__all__ = [
    "TuckerAugmentResult",
    "TuckerStepResult",
    "tucker_augment",
    "tucker_augmented_bug",
    "tucker_bug",
    "tucker_galerkin_step",
    "tucker_parallel",
    "tucker_truncate",
]

TuckerCoreGrad = Callable[[TuckerPoint], torch.Tensor]


class TuckerStepResult(NamedTuple):
    """Result of a Tucker integrator step.

    Attributes
    ----------
    point : TuckerPoint
        The new point.
    transitions : tuple of torch.Tensor
        ``U_{i,new}ᵀ U_{i,old}``, shape ``(r_i,new, r_i,old)`` (identity for full modes).
    singular_values : tuple
        Per mode, all singular values of ``Mat_i`` of the core before truncation
        (``None`` for full modes and for fixed-rank methods).
    """

    point: TuckerPoint
    transitions: tuple[torch.Tensor, ...]
    singular_values: tuple[torch.Tensor | None, ...]


class TuckerAugmentResult(NamedTuple):
    """Result of :func:`tucker_augment`: the augmented point (core zero-padded) and
    ``transitions[i] = Û_iᵀ U_i = [I; 0]`` (identity for full modes)."""

    point: TuckerPoint
    transitions: tuple[torch.Tensor, ...]


# --------------------------------------------------------------------------- checks


def _check_tucker_point(point: Any, name: str = "point") -> TuckerPoint:
    if not isinstance(point, tuple) or len(point) != 2:
        raise TypeError(f"{name} must be a TuckerPoint(core, factors), got {type(point).__name__}")
    core, factors = point
    if not isinstance(core, torch.Tensor) or not core.is_floating_point():
        raise TypeError(f"{name}.core must be a floating torch.Tensor")
    factors = tuple(factors)
    d = core.dim()
    if len(factors) != d:
        raise ValueError(f"{name} has a core of order {d} but {len(factors)} factors")
    for k, f in enumerate(factors):
        if not isinstance(f, torch.Tensor) or f.dim() != 2:
            raise ValueError(f"{name}.factors[{k}] must be a 2-D tensor")
        if f.shape[1] != core.shape[k]:
            raise ValueError(
                f"{name}.factors[{k}] has {f.shape[1]} columns but the core has size "
                f"{core.shape[k]} in mode {k}"
            )
        if f.shape[1] > f.shape[0]:
            raise ValueError(f"{name}.factors[{k}] has more columns than rows: {tuple(f.shape)}")
        if f.dtype != core.dtype or f.device != core.device:
            raise TypeError(f"{name}.factors[{k}] must match the core's dtype and device")
    finite(name, core, *factors)
    return TuckerPoint(core, factors)


def _check_full_modes(full_modes: Any, point: TuckerPoint) -> frozenset[int]:
    d = point.core.dim()
    try:
        modes = [int(k) for k in full_modes]
    except TypeError:
        raise TypeError(f"full_modes must be a sequence of ints, got {full_modes!r}") from None
    if any(k < 0 or k >= d for k in modes) or len(set(modes)) != len(modes):
        raise ValueError(f"full_modes must be distinct modes in [0, {d}), got {tuple(full_modes)}")
    for k in modes:
        f = point.factors[k]
        if f.shape[0] != f.shape[1]:
            raise ValueError(
                f"full_modes: mode {k} must be held at full rank, i.e. point.factors[{k}] "
                f"must be square, got {tuple(f.shape)}"
            )
    return frozenset(modes)


def _check_rules(rank_rule: Any, d: int, full: frozenset[int]) -> list[RankRule | None] | None:
    if rank_rule is None:
        return None
    if isinstance(rank_rule, (RankRule, int)) and not isinstance(rank_rule, bool):
        rule = check_rank_rule(rank_rule, allow_none=False)
        return [None if k in full else rule for k in range(d)]
    if isinstance(rank_rule, Sequence):
        if len(rank_rule) != d:
            raise ValueError(f"rank_rule must have one entry per mode ({d}), got {len(rank_rule)}")
        out: list[RankRule | None] = []
        for k, r in enumerate(rank_rule):
            if k in full:
                out.append(None)
            else:
                out.append(check_rank_rule(r, name=f"rank_rule[{k}]", allow_none=False))
        return out
    raise TypeError(
        f"rank_rule must be a RankRule, an int, a sequence of them or None, got {rank_rule!r}"
    )


def _prepare(point: Any, grad: Any, h: Any, substeps: int, full_modes: Any):
    point = _check_tucker_point(point)
    h = check_step_size(h)
    substeps = check_positive_int(substeps, "substeps")
    full = _check_full_modes(full_modes, point)
    oracle = as_oracle(grad, point)
    return point, oracle, h, substeps, full


def _finish(name: str, point: TuckerPoint) -> TuckerPoint:
    finite(f"the result of {name} (is the step size too large?)", point.core, *point.factors)
    return point


def _eye(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(n, dtype=like.dtype, device=like.device)


def _stack(i: int, k: int, like: torch.Tensor) -> torch.Tensor:
    out = like.new_zeros(i + k, i)
    out[:i].copy_(_eye(i, like))
    return out


# ----------------------------------------------------------------------- substeps


def _k_step(
    oracle: Any, point: TuckerPoint, pg0: TuckerProjectedGradients, i: int, h: float, substeps: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mode-``i`` K-step. Returns (direction, increment ``K(h) − K(0)``, ``K(0)``, ``Q_i``)."""
    core, factors = point
    q, rt = qr_signfix(unfold(core, i).transpose(0, 1))  # (∏ r_j × k), (k × r_i)
    k0 = factors[i] @ rt.transpose(0, 1)  # n_i × k
    direction = unfold(pg0.partials[i], i) @ q  # Mat_i(G) V_i
    if substeps == 1:
        return direction, -h * direction, k0, q
    dt = h / substeps
    delta = -dt * direction
    for _ in range(substeps - 1):
        qk, rk = qr_signfix(k0 + delta)
        shape = list(core.shape)
        shape[i] = qk.shape[1]
        fs = list(factors)
        fs[i] = qk
        pgs = project(oracle, TuckerPoint(fold(rk @ q.transpose(0, 1), i, shape), tuple(fs)))
        delta = delta - dt * (unfold(pgs.partials[i], i) @ q)
    return delta, delta, k0, q


def _core_grad_source(core_grad: Any, oracle: Any) -> TuckerCoreGrad:
    if core_grad is None:
        return lambda p: project(oracle, p).core
    if isinstance(core_grad, torch.Tensor):
        const = core_grad
        return lambda p: const
    if hasattr(core_grad, "project") and callable(core_grad.project):
        return lambda p: project(core_grad, p).core
    if callable(core_grad):
        return core_grad
    raise TypeError(
        f"core_grad must be a tensor, a callable or an oracle, got {type(core_grad).__name__}"
    )


def _run_galerkin(
    point: TuckerPoint,
    grad_fn: TuckerCoreGrad,
    h: float,
    steps: int,
    optimizer: OptimizerFactory | None,
) -> torch.Tensor:
    core, factors = point
    return _galerkin_loop(core, lambda c: TuckerPoint(c, factors), grad_fn, h, steps, optimizer)


def _hosvd_truncate(point: TuckerPoint, rules: list[RankRule | None]) -> TuckerStepResult:
    core, factors = point
    d = core.dim()
    left: list[torch.Tensor | None] = [None] * d
    sigmas: list[torch.Tensor | None] = [None] * d
    ranks = list(core.shape)
    for i in range(d):
        if rules[i] is None:
            continue
        p, sigma, _ = torch.linalg.svd(unfold(core, i), full_matrices=False)
        left[i], sigmas[i] = p, sigma
        ranks[i] = select_rank(sigma, rules[i])  # type: ignore[arg-type]
    # a multilinear rank must satisfy r_i <= prod_{j != i} r_j
    changed = True
    while changed:
        changed = False
        for i in range(d):
            bound = math.prod(ranks[:i] + ranks[i + 1 :])
            if ranks[i] > bound:
                ranks[i] = bound
                changed = True
    new_factors = list(factors)
    transitions: list[torch.Tensor] = []
    new_core = core
    for i in range(d):
        p = left[i]
        if p is None:
            transitions.append(_eye(core.shape[i], core))
            continue
        p = p[:, : ranks[i]]
        if ranks[i] > 0:
            idx = p.abs().argmax(dim=0)
            sign = torch.sign(p[idx, torch.arange(ranks[i], device=p.device)])
            p = p * torch.where(sign == 0, torch.ones_like(sign), sign)
        pt = p.transpose(0, 1).contiguous()
        new_core = mode_dot(new_core, pt, i)
        new_factors[i] = factors[i] @ p
        transitions.append(pt)
    return TuckerStepResult(
        TuckerPoint(new_core, tuple(new_factors)), tuple(transitions), tuple(sigmas)
    )


def _augment(
    point: TuckerPoint,
    oracle: Any,
    pg0: TuckerProjectedGradients,
    h: float,
    substeps: int,
    full: frozenset[int],
) -> tuple[TuckerAugmentResult, list[Any]]:
    """Augmented point (zero-padded core) and, per dynamic mode, (Ũ_i, ΔK_i, Q_i)."""
    core, factors = point
    d = core.dim()
    new_factors = list(factors)
    extra: list[Any] = [None] * d
    pads = [0] * d
    for i in range(d):
        if i in full:
            continue
        direction, dk, _, q = _k_step(oracle, point, pg0, i, h, substeps)
        ut = _new_directions(factors[i], direction)
        new_factors[i] = torch.cat([factors[i], ut], dim=1)
        extra[i] = (ut, dk, q)
        pads[i] = ut.shape[1]
    shape = [core.shape[i] + pads[i] for i in range(d)]
    core_hat = core.new_zeros(shape)
    core_hat[tuple(slice(0, s) for s in core.shape)] = core
    transitions = tuple(
        _eye(core.shape[i], core) if i in full else _stack(core.shape[i], pads[i], core)
        for i in range(d)
    )
    return TuckerAugmentResult(TuckerPoint(core_hat, tuple(new_factors)), transitions), extra


# ------------------------------------------------------------------------ public API


def tucker_truncate(
    point: TuckerPoint,
    rank_rule: RankRule | int | Sequence[RankRule | int | None],
    *,
    full_modes: Sequence[int] = (),
) -> TuckerStepResult:
    """HOSVD truncation of the core by per-mode rank rules (see the module docstring).

    Parameters
    ----------
    point : TuckerPoint
        Orthonormal factors.
    rank_rule : RankRule, int or sequence
        Per-mode rules.
    full_modes : sequence of int
        Modes left untouched.

    Returns
    -------
    TuckerStepResult
        Cost ``O(Σ_i r_i² ∏_j r_j)`` (SVDs of the core unfoldings) ``+ O(Σ n_i r_i²)``.
    """
    point = _check_tucker_point(point)
    full = _check_full_modes(full_modes, point)
    rules = _check_rules(rank_rule, point.core.dim(), full)
    if rules is None:
        raise TypeError("rank_rule must be given")
    return _hosvd_truncate(point, rules)


def tucker_augment(
    point: TuckerPoint,
    grad: TuckerProjectedGradients | Any,
    *,
    full_modes: Sequence[int] = (),
    h: float | None = None,
    substeps: int = 1,
) -> TuckerAugmentResult:
    r"""Augment every dynamic mode's basis: ``Û_i = [U_i, Ũ_i]``, ``range(Û_i) =
    range([U_i, K_i(h)]) = range([U_i, Mat_i(G) V_i])`` (one substep), and zero-pad
    the core so that the tensor is unchanged. Cost ``O(Σ_i n_i r_i²)`` plus the
    QRs of the core unfoldings."""
    if substeps != 1 and h is None:
        raise ValueError("tucker_augment needs the step size h when substeps > 1")
    point, oracle, hh, substeps, full = _prepare(
        point, grad, 0.0 if h is None else h, substeps, full_modes
    )
    res, _ = _augment(point, oracle, initial_projection(oracle, grad, point), hh, substeps, full)
    return res


def tucker_galerkin_step(
    point: TuckerPoint,
    core_grad: torch.Tensor | TuckerCoreGrad | Any,
    h: float,
    *,
    steps: int = 1,
    optimizer: OptimizerFactory | None = None,
) -> TuckerPoint:
    """Galerkin step ``Ċ = −G(C ×_j U_j) ×_j U_jᵀ`` with fixed factors (Euler or a
    given optimizer factory, exactly as :func:`~manifold_lowrank.integrators.galerkin_step`)."""
    point = _check_tucker_point(point)
    h = check_step_size(h)
    steps = check_positive_int(steps, "steps")
    if core_grad is None:
        raise TypeError("core_grad must be a tensor, a callable or an oracle, got None")
    core = _run_galerkin(point, _core_grad_source(core_grad, None), h, steps, optimizer)
    return _finish("tucker_galerkin_step", TuckerPoint(core, point.factors))


def tucker_bug(
    point: TuckerPoint,
    grad: TuckerProjectedGradients | Any,
    h: float,
    *,
    full_modes: Sequence[int] = (),
    substeps: int = 1,
    core_grad: TuckerCoreGrad | None = None,
    core_steps: int | None = None,
    optimizer: OptimizerFactory | None = None,
) -> TuckerStepResult:
    r"""Fixed-rank Tucker BUG integrator (Ceruti–Lubich–Walach 2021).

    For every dynamic mode ``i`` (in parallel): K-step ``K̇_i = −Mat_i(G) V_i`` from
    ``K_i(0) = U_i R_iᵀ``; ``Û_i = orth(K_i(h))``, ``M_i = Û_iᵀ U_i``. Then the Galerkin
    step ``Ċ = −G(C ×_j Û_j) ×_j Û_jᵀ`` from ``C ×_j M_j``. Exact for trajectories of
    constant multilinear rank (with ``h``-independent ``Ẋ``), first order, robust to
    small singular values of the unfoldings. Requires ``r_i ≤ ∏_{j≠i} r_j``.
    Parameters as in :func:`~manifold_lowrank.integrators.bug`, plus ``full_modes``.
    """
    point, oracle, h, substeps, full = _prepare(point, grad, h, substeps, full_modes)
    core_steps = check_positive_int(substeps if core_steps is None else core_steps, "core_steps")
    core, factors = point
    d = core.dim()
    for i in range(d):
        if i not in full and core.shape[i] > math.prod(core.shape[:i] + core.shape[i + 1 :]):
            raise ValueError(
                f"point.core has an invalid multilinear rank {tuple(core.shape)}: "
                f"r_{i} must be <= the product of the other ranks"
            )
    pg0 = initial_projection(oracle, grad, point)
    new_factors = list(factors)
    trans: list[torch.Tensor] = []
    c0 = core
    for i in range(d):
        if i in full:
            trans.append(_eye(core.shape[i], core))
            continue
        _, dk, k0, _ = _k_step(oracle, point, pg0, i, h, substeps)
        u1 = orthonormalize(k0 + dk)
        m_i = u1.transpose(0, 1) @ factors[i]
        new_factors[i] = u1
        trans.append(m_i)
        c0 = mode_dot(c0, m_i, i)
    start = TuckerPoint(c0, tuple(new_factors))
    c1 = _run_galerkin(start, _core_grad_source(core_grad, oracle), h, core_steps, optimizer)
    new = _finish("tucker_bug", TuckerPoint(c1, tuple(new_factors)))
    return TuckerStepResult(new, tuple(trans), tuple([None] * d))


def _compose(tr: TuckerStepResult, aug_trans: tuple[torch.Tensor, ...]) -> TuckerStepResult:
    return TuckerStepResult(
        tr.point, tuple(a @ b for a, b in zip(tr.transitions, aug_trans)), tr.singular_values
    )


def tucker_augmented_bug(
    point: TuckerPoint,
    grad: TuckerProjectedGradients | Any,
    h: float,
    rank_rule: RankRule | int | Sequence[RankRule | int | None] | None,
    *,
    full_modes: Sequence[int] = (),
    substeps: int = 1,
    core_grad: TuckerCoreGrad | None = None,
    core_steps: int | None = None,
    optimizer: OptimizerFactory | None = None,
) -> TuckerStepResult:
    r"""Rank-adaptive augmented Tucker BUG (Ceruti–Kusch–Lubich 2022).

    :func:`tucker_augment` (``Û_i = [U_i, Ũ_i]``), Galerkin step on the zero-padded
    core with the gradient at the augmented bases (oracle, ``core_grad``, or — with
    projected gradients only — the frozen tangent gradient, which makes the step
    equal to :func:`tucker_parallel`), then HOSVD truncation by the per-mode rules
    (``None``: return the untruncated point). Parameters as in
    :func:`~manifold_lowrank.integrators.augmented_bug`, plus ``full_modes``.
    """
    point, oracle, h, substeps, full = _prepare(point, grad, h, substeps, full_modes)
    rules = _check_rules(rank_rule, point.core.dim(), full)
    core_steps = check_positive_int(substeps if core_steps is None else core_steps, "core_steps")
    aug, _ = _augment(point, oracle, initial_projection(oracle, grad, point), h, substeps, full)
    c1 = _run_galerkin(aug.point, _core_grad_source(core_grad, oracle), h, core_steps, optimizer)
    full_point = _finish("tucker_augmented_bug", TuckerPoint(c1, aug.point.factors))
    if rules is None:
        return TuckerStepResult(full_point, aug.transitions, tuple([None] * point.core.dim()))
    return _compose(_hosvd_truncate(full_point, rules), aug.transitions)


def tucker_parallel(
    point: TuckerPoint,
    grad: TuckerProjectedGradients | Any,
    h: float,
    rank_rule: RankRule | int | Sequence[RankRule | int | None] | None,
    *,
    full_modes: Sequence[int] = (),
    substeps: int = 1,
) -> TuckerStepResult:
    r"""Rank-adaptive parallel Tucker integrator (Ceruti–Kusch–Lubich 2024).

    From one set of projections at ``X₀``: for each dynamic mode, ``Ũ_i`` from
    ``Mat_i(G) V_i`` and the increment ``ΔK_i = −h Mat_i(G) V_i``; the augmented core
    ``Ĉ`` (size ``r_i + k_i`` per mode) has the old block ``C − h G ×_j U_jᵀ``, for
    each mode ``i`` the block "new in mode ``i``, old elsewhere" equal to
    ``Ten_i(Ũ_iᵀ ΔK_i Q_iᵀ)``, and zeros elsewhere. Before truncation
    ``Ĉ ×_j Û_j = X₀ − h P_T(G)`` (see
    :class:`~manifold_lowrank.integrators.TuckerFrozenTangentOracle`). Then HOSVD
    truncation (``rank_rule=None``: untruncated). Never inverts an unfolding of ``C``,
    so ``C = 0`` is fine.
    """
    point, oracle, h, substeps, full = _prepare(point, grad, h, substeps, full_modes)
    core, factors = point
    d = core.dim()
    rules = _check_rules(rank_rule, d, full)
    pg0 = initial_projection(oracle, grad, point)
    aug, extra = _augment(point, oracle, pg0, h, substeps, full)
    if substeps == 1:
        c_bar = core - h * pg0.core
    else:
        dt = h / substeps
        c_bar = core - dt * pg0.core
        for _ in range(substeps - 1):
            c_bar = c_bar - dt * project(oracle, TuckerPoint(c_bar, factors)).core
    core_hat = aug.point.core.clone()
    core_hat[tuple(slice(0, s) for s in core.shape)] = c_bar
    for i in range(d):
        if extra[i] is None:
            continue
        ut, dk, q = extra[i]
        k_i = ut.shape[1]
        if k_i == 0:
            continue
        shape = list(core.shape)
        shape[i] = k_i
        block = fold((ut.transpose(0, 1) @ dk) @ q.transpose(0, 1), i, shape)
        idx = [slice(0, s) for s in core.shape]
        idx[i] = slice(core.shape[i], core.shape[i] + k_i)
        core_hat[tuple(idx)] = block
    full_point = _finish("tucker_parallel", TuckerPoint(core_hat, aug.point.factors))
    if rules is None:
        return TuckerStepResult(full_point, aug.transitions, tuple([None] * d))
    return _compose(_hosvd_truncate(full_point, rules), aug.transitions)
