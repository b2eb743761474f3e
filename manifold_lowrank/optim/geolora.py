r"""GeoLoRA: rank-adaptive low-rank adaptation by the parallel integrator (ICLR 2025).

One GeoLoRA step needs *one* forward/backward pass. With the projected gradients
``(GV, UᵀGV, GᵀU)`` of ``G = ∂L/∂X`` at ``X = U S Vᵀ`` recorded by the layer
(:mod:`manifold_lowrank.nn`), the step is

1. **Augment** both bases with the gradient directions (sign-fixed Householder QR,
   :func:`~manifold_lowrank.linalg.augment_basis`)::

       Ũ = new orthonormal directions of [U | GV]     (m × k_u, Ũᵀ U = 0)
       Ṽ = new orthonormal directions of [V | GᵀU]    (n × k_v, Ṽᵀ V = 0)

   with ``k_u = min(r, m − r)``, ``k_v = min(r, n − r)``.
2. **Galerkin step** on the augmented ``(r+k_u)×(r+k_v)`` coefficients::

       Ŝ = [[ S − h UᵀGV ,  −h (GᵀU)ᵀ Ṽ ],
            [ −h Ũᵀ GV   ,        0      ]]

   ✔ ``[U Ũ] Ŝ [V Ṽ]ᵀ = U S Vᵀ − h P_T(G)`` exactly, with the tangent projection
   ``P_T(G) = G V Vᵀ + U Uᵀ G − U Uᵀ G V Vᵀ`` (``span[U Ũ] ⊇ span(GV)``). This is a
   Riemannian gradient step on the manifold of rank-``r`` matrices.
3. **Truncate** by the rank rule (:class:`~manifold_lowrank.linalg.RankRule`):
   ``Ŝ = P Σ Qᵀ``, ``r₁`` = the smallest rank with ``‖σ_{r₁+1:}‖₂ ≤ τ ‖σ‖₂``, clamped to
   ``[min_rank, max_rank]``; ``U ← [U Ũ] P₁``, ``S ← Σ₁`` (diagonal), ``V ← [V Ṽ] Q₁``.
   Since ``[U Ũ]`` and ``[V Ṽ]`` are orthonormal this is the best rank-``r₁``
   approximation (Eckart–Young) of ``X − h P_T(G)``, with relative Frobenius error
   ``≤ τ``. The rank can grow (up to ``2r``) or shrink in every step.

Cost per layer: two thin QR of ``m×2r`` and ``n×2r``, one ``2r×2r`` SVD, and
``O((m + n) r²)`` products; no ``m×n`` matrix and no ``S⁻¹``.
The rounding drift of ``U``, ``V`` (≈ ε per step) is removed in the same QR: with
``[U | GV] = Q_u R``, ``U = Q_u[:, :r] R[:r, :r]`` exactly, so ``Ŝ`` is re-expressed in the
orthonormal ``Q_u``, ``Q_v`` before its SVD (``_parallel_reorth``); no extra QR or SVD.

Rank-deficient start
--------------------
Adapters start at ``ΔW = 0`` (``S = 0`` with random orthonormal ``U``, ``V``), a point
*off* the rank-``r`` manifold. Because the step never inverts ``S`` (it uses ``GV`` and
``GᵀU`` directly, not ``∂_U L · S⁻¹``), it is well defined there: the first step is
``X₁ = trunc(−h P_T(G))`` where ``P_T`` is the projection onto
``{U Aᵀ + B Vᵀ}`` — the gradient restricted to the rows/columns seen by the random
bases plus the new directions ``GV`` and ``GᵀU``. The truncation then keeps only the
directions the gradient actually uses. Rank ``0`` (``min_rank=0``) is absorbing: a
rank-0 layer has no basis to augment and stays at ``ΔW = 0``.

Mapping from the paper
----------------------
The paper (and its code) writes the adapter on the row-vector side,
``y = W₀x + x U_p S_p V_pᵀ`` with ``U_p`` on the **input** side. Hence
``ΔW = V_p S_pᵀ U_pᵀ``: our ``U = V_p``, ``V = U_p``, ``S = S_pᵀ``. The paper's
``G_K = G_U S⁻¹`` (``G_U = ∂L/∂U_p``) is our ``GᵀU`` (obtained without ``S⁻¹``), its
``G_L = G_V S⁻¹`` is our ``GV``, and its ``Ŝ`` is the transpose of ours. Differences to
the released code (``methods.md`` §2.5), all deliberate:

* the output scaling is a constant of the layer (no ``alpha/r`` jump when ``r`` changes);
* weight decay is applied to ``S`` only (never to the orthonormal ``U``, ``V``);
* each layer is truncated exactly once per step (no nested all-layer truncation);
* no cached ``S⁻¹`` (nothing can go stale; zero singular values are harmless);
* the tail norm includes every discarded singular value;
* a classifier head is trained by any standard optimizer alongside (call both ``step``).

Options beyond the paper
------------------------
``truncate_every = k``
    The τ-rule is applied on every ``k``-th step; on the other steps only numerically
    zero singular values (``≤ 100 ε ‖σ‖``) are dropped and ``max_rank`` caps the rank,
    so the update is exactly ``X − h P_T(G)`` until the cap is reached.
``momentum = β`` with ``precondition="none"``
    Riemannian heavy-ball: ``ξ_t = β 𝒯(ξ_{t−1}) + P_T(G_t)``, step ``−h ξ_t``, where 𝒯 is
    the projection vector transport
    (:func:`~manifold_lowrank.optim.lowrank_base.transport_tangent`).
    The momentum is stored as its three projections (``m×r``, ``r×r``, ``n×r``).
``precondition="layer_rms"``
    Adam-type normalisation with one *scalar* second moment per layer:
    ``m_t = β₁ 𝒯(m_{t−1}) + (1−β₁) P_T(G_t)``, ``v_t = β₂ v_{t−1} + (1−β₂) ‖P_T(G_t)‖_F²``,
    step ``−lr · m̂_t / (√v̂_t + ε)`` (bias-corrected). Justification: element-wise
    second moments (Adam on ``S``) are not invariant under the basis rotations ``P``,
    ``Q`` that every truncation applies, and cannot be transported exactly; the
    Frobenius norm of the Riemannian gradient is invariant (it is the same in every
    orthonormal basis and through rank changes). The update direction is unchanged
    (still ``P_T(G)`` when ``β₁ = 0``), only its length is normalised, so the step of a
    layer is ``≈ lr`` in Frobenius norm whatever the scale of its gradient — learning
    rates transfer across layers and models, and large learning rates cannot blow up
    the adapter. ``‖P_T(G)‖_F² = ‖GV‖² + ‖GᵀU‖² − ‖UᵀGV‖²`` costs ``O((m+n) r)``.
``precondition="factored"``
    ``"layer_rms"`` after a diagonal row × column rescaling (second moments factored as
    in Adafactor). Per layer, exponential averages of the squared row norms of the two
    projected gradients::

        ρ_t = β₂ ρ_{t−1} + (1−β₂) rowsq(G V)     (m, one per output unit)
        γ_t = β₂ γ_{t−1} + (1−β₂) rowsq(Gᵀ U)    (n, one per input feature)

    give ``a = (ρ / mean ρ + δ)^{−1/2}``, ``b = (γ / mean γ + δ)^{−1/2}`` (``δ = 10⁻³``;
    a bias correction ``1 − β₂ᵏ`` would cancel in the ratios)
    and the direction ``ξ = P_T(diag(a) P_T(m_t) diag(b))``, of step length ``lr`` as in
    ``"layer_rms"`` (whose scalar second moment is now that of
    ``P_T(diag(a) P_T(G_t) diag(b))``). Justification: the gradients of pretrained
    transformers concentrate in a few input features (in MiniLM one input column of a
    value projection carries 75–93 % of ``‖G‖_F²``), so a Frobenius-normalised step
    moves almost only those; Adam on LoRA's factors rescales each input feature and
    output unit, and so does this. Unlike element-wise moments of ``S``, ``ρ`` and ``γ``
    are invariant under the basis rotations of a truncation (``rowsq(G V Q) =
    rowsq(G V)``) and live in the fixed coordinates of the layer (units and features),
    so they need no transport when the rank changes. ``ξ`` is a descent direction:
    with ``β₁ = 0``, ``⟨P_T(G), ξ⟩ = Σᵢⱼ aᵢ bⱼ P_T(G)ᵢⱼ² > 0``. ``ξ`` is formed from
    the three projections with ``r × r`` products only (:func:`rescaled_tangent`), cost
    ``O((m+n) r²)``; the state adds ``m + n`` numbers per layer. Matrix adapters only.

``budget = B``
    A global limit on the adapter parameters, ``Σ_l r_l (m_l + n_l) + r_l² ≤ B`` (``U``,
    ``V`` and the core of every matrix layer), enforced after every step. Each layer
    first takes its step with its own τ-rule and ``max_rank`` (rank ``r̄_l``, singular
    values ``σ^{(l)}`` of its new core); if the total cost exceeds ``B``, the ranks are
    lowered by :class:`~manifold_lowrank.integrators.GlobalBudget` (``unit="params"``),
    which keeps the globally largest singular values that fit (``normalize="none"`` for
    an integer ``B``: the step of every layer has the same Frobenius length under
    ``"layer_rms"``/``"factored"``, so raw singular values are comparable; pass a
    :class:`~manifold_lowrank.integrators.GlobalBudget` to choose otherwise). Layer
    ``l`` keeps ``r_l ≤ r̄_l`` leading singular triplets, which is the best rank-``r_l``
    approximation of its τ-step (Eckart–Young), and its momentum is cut to the first
    ``r_l`` columns — exactly the projection transport to the smaller tangent space
    (it is a subspace of the larger one). Ranks are thus *allocated across layers* by
    the size of what each layer has learnt, as AdaLoRA's budget does, but by truncation
    (memory is freed) and with a hard bound instead of a schedule. When the budget is
    not binding the step is exactly the τ-step. It relies on every matrix step ending
    in the SVD gauge (``S`` diagonal, non-increasing), so cutting is slicing. Matrix
    layers only; cost ``O(P log P)`` for ``P`` singular values in total and one host copy
    of them.

Tucker adapters (:class:`~manifold_lowrank.nn.TuckerConv2dAdapter`) use the Tucker
version of the parallel integrator
(:func:`~manifold_lowrank.integrators.tucker_parallel`); their momentum is core state
transported by ``M ← M ×_k (U_{k,+}ᵀ U_k)``. The matrix step is
:func:`~manifold_lowrank.integrators.parallel`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from manifold_lowrank.integrators import (
    GlobalBudget,
    parallel,
    parameter_count,
    reorthonormalize,
    reorthonormalize_tucker,
    tucker_parallel,
)
from manifold_lowrank.linalg import RankRule, qr_signfix, select_rank
from manifold_lowrank.manifolds.types import (
    FixedRankPoint,
    ProjectedGradients,
    TuckerPoint,
    TuckerProjectedGradients,
)
from manifold_lowrank.nn.base import TuckerModule
from manifold_lowrank.optim.lowrank_base import (
    LowRankOptimizer,
    decay_coefficients,
    transport_core_tucker,
    transport_tangent,
)

__all__ = ["GeoLoRA", "rescaled_tangent", "tangent_norm_sq"]

PRECONDITIONERS = ("none", "layer_rms", "factored")
#: relative floor δ of the factored second moments (so ``a, b ≤ δ^{−1/2} ≈ 32``)
FACTORED_FLOOR = 1e-3


# --------------------------------------------------------------------------- kernels
def tangent_norm_sq(pg: ProjectedGradients) -> torch.Tensor:
    """``‖P_T(G)‖_F² = ‖GV‖² + ‖GᵀU‖² − ‖UᵀGV‖²`` (a 0-d tensor, clamped at 0).

    ``P_T(G) = GVVᵀ + UUᵀG(I − VVᵀ)`` is a sum of two Frobenius-orthogonal terms.
    Cost ``O((m + n) r)``.
    """
    a, c, b = pg
    val = a.pow(2).sum() + b.pow(2).sum() - c.pow(2).sum()
    return val.clamp_min(0.0)


def rescaled_tangent(
    pg: ProjectedGradients,
    U: torch.Tensor,
    V: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
) -> ProjectedGradients:
    r"""The projections of ``ξ = P_T(diag(a) Z diag(b))`` for a tangent vector ``Z``.

    ``Z = K Vᵀ + U Lᵀ − U M Vᵀ`` is given by its projections ``pg = (K, M, L) =
    (Z V, Uᵀ Z V, Zᵀ U)`` at ``X = U S Vᵀ`` (orthonormal ``U``, ``V``). With
    ``A = diag(a)``, ``B = diag(b)`` and the ``r × r`` Gram matrices
    ``V_b = Vᵀ B V``, ``U_a = Uᵀ A U``::

        ξ V    = A K V_b + A U (Lᵀ B V − M V_b)
        ξᵀ U   = B V (Kᵀ A U − Mᵀ U_a) + B L U_a
        Uᵀ ξ V = (Uᵀ A K) V_b + U_a (Lᵀ B V − M V_b)

    Nothing of size ``m × n`` is formed; cost ``O((m + n) r²)``. Several tangent vectors
    at the same point can be stacked along a leading batch dimension of ``pg``; the
    Gram matrices are then formed once.

    Parameters
    ----------
    pg : ProjectedGradients
        ``(Z V, Uᵀ Z V, Zᵀ U)``, shapes ``(..., m, r)``, ``(..., r, r)``, ``(..., n, r)``.
    U, V : torch.Tensor
        The orthonormal bases, ``(m, r)`` and ``(n, r)``.
    a, b : torch.Tensor
        Row and column weights, ``(m,)`` and ``(n,)``.

    Returns
    -------
    ProjectedGradients
        ``(ξ V, Uᵀ ξ V, ξᵀ U)``.
    """
    K, M, L = pg
    aU, bV = a[:, None] * U, b[:, None] * V  # shared by every batch entry
    Vb, Ua = V.transpose(0, 1) @ bV, U.transpose(0, 1) @ aU
    aK, bL = a[:, None] * K, b[:, None] * L
    UaK = aU.transpose(0, 1) @ K  # Uᵀ A K
    inner = L.transpose(-2, -1) @ bV - M @ Vb  # Lᵀ B V − M V_b
    xi_v = aK @ Vb + aU @ inner
    xi_t_u = bV @ (UaK - Ua @ M).transpose(-2, -1) + bL @ Ua
    ut_xi_v = UaK @ Vb + Ua @ inner
    return ProjectedGradients(xi_v, ut_xi_v, xi_t_u)


def _factored_weights(
    state: dict[str, Any], new_state: dict[str, Any], pg: ProjectedGradients, b2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column weights ``a``, ``b`` of ``precondition="factored"``.

    Updates ``ρ ← β₂ ρ + (1 − β₂) rowsq(GV)``, ``γ ← β₂ γ + (1 − β₂) rowsq(GᵀU)`` into
    ``new_state`` and returns ``(ρ / mean ρ + δ)^{−1/2}``, ``(γ / mean γ + δ)^{−1/2}``
    (a bias correction ``1 − β₂ᵏ`` would cancel in the ratio to the mean).
    """
    out = []
    for key, proj in (("row_sq", pg.GV), ("col_sq", pg.GtU)):
        sq = proj.square().sum(dim=1)
        old = state.get(key)
        v = sq.mul_(1 - b2) if old is None else torch.lerp(old, sq, 1 - b2)
        new_state[key] = v
        rel = v / v.mean().clamp_min(torch.finfo(v.dtype).tiny)
        out.append(rel.add_(FACTORED_FLOOR).rsqrt_())
    return out[0], out[1]


def _tucker_norm_sq(pg: TuckerProjectedGradients, full_modes: tuple[int, ...]) -> torch.Tensor:
    """``‖G ×_j P_j‖² + Σ_k ‖G ×_k (I − P_k) ×_{j≠k} P_j‖²`` (orthogonal terms).

    ``‖G ×_k (I − P_k) ×_{j≠k} P_j‖² = ‖partials_k‖² − ‖core‖²``; a gauge-invariant
    scale of the Riemannian gradient. Cost ``O(Σ_k n_k ∏_{j≠k} r_j)``.
    """
    c2 = pg.core.pow(2).sum()
    total = c2
    for k, p in enumerate(pg.partials):
        if k not in full_modes:
            total = total + p.pow(2).sum() - c2
    return total.clamp_min(0.0)


def _parallel_reorth(
    point: FixedRankPoint, direction: ProjectedGradients, h: float | torch.Tensor, rule: RankRule
) -> FixedRankPoint | None:
    r"""Fused hot path of the matrix step: the parallel integrator
    (:func:`~manifold_lowrank.integrators.parallel`) on re-orthonormalised bases.

    The sign-fixed Householder QR of ``[U | GV] = Q_u R`` that yields the new directions
    ``Ũ = Q_u[:, r:]`` (as :func:`~manifold_lowrank.linalg.augment_basis`) also gives
    ``U = Q_u[:, :r] R_u`` with ``R_u = R[:r, :r] = I + O(ε)``; likewise
    ``[V | GᵀU] = Q_v R'``, ``V = Q_v[:, :r] R_v``. Hence, exactly,

    .. math::  [U\ \tilde U]\,\hat S\,[V\ \tilde V]^\top = Q_u\,
               \mathrm{diag}(R_u, I)\,\hat S\,\mathrm{diag}(R_v, I)^\top Q_v^\top,

    so the Galerkin core ``Ŝ`` of :func:`~manifold_lowrank.integrators.parallel` is
    re-expressed in the bases ``Q_u``, ``Q_v`` (orthonormal to working precision), then
    truncated by its SVD with the gauge of :func:`~manifold_lowrank.integrators.truncate`:
    ``U₊ = Q_u P₁``, ``S₊ = Σ₁``, ``V₊ = Q_v Q₁``. This is the step followed by the
    re-orthonormalisation of :func:`~manifold_lowrank.integrators.reorthonormalize`
    (the same matrix; the bases orthonormal to working precision, ``S₊`` diagonal), but
    the removal of the rounding drift costs nothing extra (no second pair of QR and no
    second SVD). When ``m = n`` both QR run as one batched call. Input validation is left
    to the optimizer (one finiteness check of all gradients and of all results).
    Returns ``None`` (the caller falls back to the public functions) outside the generic
    case ``0 < r``, ``2r ≤ min(m, n)``, square ``S``. Cost ``O((m + n) r² + r³)``.
    """
    u, s, v = point
    m, r = u.shape
    n = v.shape[0]
    if r == 0 or s.shape[0] != s.shape[1] or 2 * r > m or 2 * r > n:
        return None
    ga, gc, gb = direction
    if m == n:  # one batched LAPACK call for both sides
        q, rf = qr_signfix(torch.stack([torch.cat([u, ga], dim=1), torch.cat([v, gb], dim=1)]))
        qu, qv, ru, rv = q[0], q[1], rf[0, :r, :r], rf[1, :r, :r]
    else:
        qu, rfu = qr_signfix(torch.cat([u, ga], dim=1))
        qv, rfv = qr_signfix(torch.cat([v, gb], dim=1))
        ru, rv = rfu[:r, :r], rfv[:r, :r]
    ut, vt = qu[:, r:], qv[:, r:]
    rvt = rv.transpose(0, 1)
    s_hat = s.new_zeros(2 * r, 2 * r)
    s_hat[:r, :r] = ru @ (s - h * gc) @ rvt
    s_hat[:r, r:] = ru @ ((-h * gb).transpose(0, 1) @ vt)
    s_hat[r:, :r] = (ut.transpose(0, 1) @ (-h * ga)) @ rvt
    p, sigma, qh = torch.linalg.svd(s_hat, full_matrices=False)
    r1 = select_rank(sigma, rule)
    p, qq = p[:, :r1], qh[:r1].transpose(0, 1)
    if r1 > 0:  # gauge of integrators.truncate: largest |entry| of each column of P > 0
        # (never 0: the columns have unit norm; a NaN is caught by the caller's check)
        sign = torch.sign(p.gather(0, p.abs().argmax(dim=0, keepdim=True)))
        p, qq = p * sign, qq * sign
    return FixedRankPoint(qu @ p, torch.diag(sigma[:r1]).to(s.dtype), qv @ qq)


def _layer_rms_step(
    state: dict[str, Any],
    new_state: dict[str, Any],
    g2: torch.Tensor,
    group: dict[str, Any],
    k: int,
) -> torch.Tensor:
    """Step size of ``precondition="layer_rms"`` for step ``k`` from ``g2 = ‖P_T(G)‖²``.

    ``v ← β₂ v + (1 − β₂) g2`` (stored in ``new_state``), then
    ``h = lr / ((√(v / (1 − β₂ᵏ)) + ε) (1 − β₁ᵏ))``: the first-moment bias correction
    ``m̂ = m / (1 − β₁ᵏ)`` is folded into ``h`` (``β₁ = momentum``; no correction when 0).
    ``h`` is a 0-d tensor on ``g2``'s device (no host synchronisation).
    """
    b2, eps, beta = float(group["beta2"]), float(group["eps"]), float(group["momentum"])
    v = state.get("exp_avg_sq")
    v = (1 - b2) * g2 if v is None else b2 * v + (1 - b2) * g2
    new_state["exp_avg_sq"] = v
    bc1 = 1.0 - beta**k if beta > 0 else 1.0
    return float(group["lr"]) / (((v / (1.0 - b2**k)).sqrt() + eps) * bc1)


# --------------------------------------------------------------------------- optimizer
_FACTORED_TUCKER = (
    'precondition="factored" is defined for matrix adapters only; give Tucker layers '
    'their own group with precondition="layer_rms" or "none"'
)


def _check_float(
    name: str, value: object, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    v = float(value)
    ok_lo = v > lo if lo_open else v >= lo
    ok_hi = v < hi if hi_open else v <= hi
    if not (ok_lo and ok_hi and math.isfinite(v)):
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {value!r}")
    return v


def _check_int(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _validate_group(g: dict[str, Any]) -> None:
    _check_float("lr", g["lr"], 0.0, math.inf, hi_open=True)
    _check_float("tau", g["tau"], 0.0, 1.0, hi_open=True)
    _check_int("max_rank", g["max_rank"], 1)
    _check_int("min_rank", g["min_rank"], 0)
    if g["min_rank"] > g["max_rank"]:
        raise ValueError(f"min_rank ({g['min_rank']}) must be <= max_rank ({g['max_rank']})")
    _check_float("momentum", g["momentum"], 0.0, 1.0, hi_open=True)
    if g["precondition"] not in PRECONDITIONERS:
        raise ValueError(
            f"precondition must be one of {PRECONDITIONERS}, got {g['precondition']!r}"
        )
    _check_float("beta2", g["beta2"], 0.0, 1.0, hi_open=True)
    _check_float("eps", g["eps"], 0.0, math.inf, hi_open=True)
    _check_float("weight_decay", g["weight_decay"], 0.0, math.inf, hi_open=True)


class GeoLoRA(LowRankOptimizer):
    r"""GeoLoRA optimizer: rank-adaptive parallel integrator, one backprop per step.

    Drop-in usage (a plain ``step()``; any other parameters, e.g. a classifier head, go
    to a standard optimizer alongside)::

        model = get_adapter_model(base, AdapterConfig(r=8, target_modules=[...]))
        opt = GeoLoRA(model, lr=1e-3, tau=0.1, max_rank=32)
        head = torch.optim.AdamW(model.non_adapter_trainable_parameters(), lr=1e-3)
        for x, y in loader:
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step(); head.step()
            opt.zero_grad(); head.zero_grad()

    Parameters
    ----------
    model_or_layers : nn.Module or iterable
        A model (all low-rank layers/adapters in it), or layers / ``(name, layer)``
        pairs / group dicts ``{"layers": [...], "lr": ..., ...}``.
    lr : float
        Step size ``h`` (``precondition="none"``) or the Frobenius length of a layer's
        step (``"layer_rms"``, ``"factored"``), ``≥ 0``.
    tau : float
        Relative truncation tolerance ``τ ∈ [0, 1)``: the smallest rank with
        ``‖σ_{tail}‖₂ ≤ τ ‖σ‖₂`` is kept.
    max_rank : int
        Largest rank after a step (also capped by each layer's ``max_rank`` and
        ``min(m, n)``).
    min_rank : int
        Smallest rank after a step (default 1; 0 lets a layer switch itself off, which
        is absorbing).
    truncate_every : int
        Apply the τ-rule every ``k`` steps (see the module docstring).
    momentum : float
        ``β`` (``"none"``: heavy-ball) or ``β₁`` (``"layer_rms"``, ``"factored"``), in
        ``[0, 1)``.
    precondition : {"none", "layer_rms", "factored"}
        See the module docstring. ``"factored"`` needs matrix adapters (a Tucker layer in
        its group raises :class:`ValueError`).
    beta2, eps : float
        Second-moment decay and denominator guard for ``"layer_rms"`` and
        ``"factored"``.
    weight_decay : float
        Decoupled decay of ``S`` only: ``S ← (1 − lr·wd) S`` before the step. With
        ``"layer_rms"`` and ``"factored"`` the decay uses ``lr`` as given.
    budget : int or GlobalBudget or None
        Global limit on the adapter parameters ``Σ r(m + n) + r²`` of all layers after
        every step (see the module docstring); an integer ``B ≥ 0`` means
        ``GlobalBudget(B, unit="params", normalize="none", min_rank=min_rank)``. It must
        cover every layer at its minimal rank. ``None`` (default): no limit. Matrix
        layers only.
    nan_policy : {"skip", "raise"}
        See :class:`~manifold_lowrank.optim.lowrank_base.LowRankOptimizer`.
    rank_history_maxlen : int or None
        Keep only the last ``rank_history_maxlen`` entries of :attr:`rank_history`
        (default: unbounded, ≈ 0.17 KiB per step).

    Notes
    -----
    Per step and layer: cost ``O((m + n) r² + r³)``; the rank of every layer after each
    step is appended to :attr:`rank_history`. The step uses the projected gradients
    accumulated since the last :meth:`zero_grad` (gradient accumulation works: they are
    linear in ``G``) and clears them.
    """

    def __init__(
        self,
        model_or_layers: nn.Module | Any,
        lr: float = 1e-3,
        *,
        tau: float = 0.1,
        max_rank: int = 32,
        min_rank: int = 1,
        truncate_every: int = 1,
        momentum: float = 0.0,
        precondition: str = "none",
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        budget: int | GlobalBudget | None = None,
        nan_policy: str = "skip",
        record_history: bool = True,
        rank_history_maxlen: int | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "tau": tau,
            "max_rank": max_rank,
            "min_rank": min_rank,
            "momentum": momentum,
            "precondition": precondition,
            "beta2": beta2,
            "eps": eps,
            "weight_decay": weight_decay,
        }
        _validate_group(defaults)
        self.truncate_every = _check_int("truncate_every", truncate_every, 1)
        super().__init__(
            model_or_layers,
            defaults,
            nan_policy=nan_policy,
            record_history=record_history,
            rank_history_maxlen=rank_history_maxlen,
        )
        for g in self.param_groups:
            _validate_group(g)
        for name, layer, g in zip(self.layer_names, self.layers, self.param_groups):
            if g["precondition"] == "factored" and isinstance(layer, TuckerModule):
                raise ValueError(f"layer {name!r}: {_FACTORED_TUCKER}")
        self.budget = self._check_budget(budget, min_rank)

    def _check_budget(self, budget: object, min_rank: int) -> GlobalBudget | None:
        if budget is None:
            return None
        if isinstance(budget, GlobalBudget):
            if budget.unit != "params":
                raise ValueError(
                    f"budget must count parameters (GlobalBudget(unit='params')), got "
                    f"unit={budget.unit!r}"
                )
            gb = budget
        elif isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise ValueError(
                f"budget must be None, an integer >= 0 or a GlobalBudget, got {budget!r}"
            )
        else:
            gb = GlobalBudget(int(budget), unit="params", normalize="none", min_rank=min_rank)
        tucker = [n for n, la in zip(self.layer_names, self.layers) if isinstance(la, TuckerModule)]
        if tucker:
            raise ValueError(
                f"budget is defined for matrix layers only; layer {tucker[0]!r} is a Tucker "
                "layer (optimise it with a separate GeoLoRA without a budget)"
            )
        floor = sum(
            parameter_count(tuple(la.matrix_shape), min(gb.min_rank, *la.matrix_shape))  # type: ignore[attr-defined]
            for la in self.layers
        )
        if gb.budget < floor:
            raise ValueError(
                f"budget ({gb.budget}) is smaller than the parameters of every layer at rank "
                f"{gb.min_rank} ({floor}); the valid range is budget >= {floor}"
            )
        return gb

    def _finalize_updates(
        self, updates: list[tuple[int, Any, dict[str, Any]]], global_step: int
    ) -> list[tuple[int, Any, dict[str, Any]]]:
        """Lower the ranks of the new points to the global :attr:`budget` (if any)."""
        if self.budget is None:
            return updates
        changing = {i for i, _, _ in updates}
        fixed = sum(
            parameter_count(tuple(la.matrix_shape), int(la.rank))  # type: ignore[attr-defined]
            for j, la in enumerate(self.layers)
            if j not in changing
        )
        shapes = [tuple(self.layers[i].matrix_shape) for i, _, _ in updates]  # type: ignore[attr-defined]
        ranks = [int(pt.S.shape[0]) for _, pt, _ in updates]
        total = fixed + sum(parameter_count(sh, r) for sh, r in zip(shapes, ranks))
        if total <= self.budget.budget:
            return updates
        remaining = self.budget.budget - fixed
        if remaining < 0:
            raise ValueError(
                f"budget ({self.budget.budget}) is smaller than the parameters of the layers "
                f"without gradients in this step ({fixed}); nothing was modified"
            )
        # every matrix step ends in the SVD gauge (S diagonal, non-increasing: the τ-rule
        # of _parallel_reorth, or reorthonormalize(diagonalize=True)), so the diagonals
        # are the spectra and a cut is a slice; one host copy for all layers
        dev = updates[0][1].S.device
        flat = torch.cat([torch.diagonal(pt.S).to(dev, torch.float64) for _, pt, _ in updates])
        spectra = flat.cpu().split(ranks)
        try:
            alloc = dataclasses.replace(self.budget, budget=remaining).allocate(
                spectra, shapes=shapes, max_ranks=ranks
            )
        except ValueError as e:
            raise ValueError(f"{e}; nothing was modified") from e
        result = []
        for (i, pt, st), r in zip(updates, alloc):
            if r < int(pt.S.shape[0]):
                pt = FixedRankPoint(pt.U[:, :r], pt.S[:r, :r], pt.V[:, :r])
                if "momentum_GV" in st:  # projection transport to the smaller tangent space
                    st = dict(st)
                    st["momentum_GV"] = st["momentum_GV"][:, :r]
                    st["momentum_UtGV"] = st["momentum_UtGV"][:r, :r]
                    st["momentum_GtU"] = st["momentum_GtU"][:, :r]
            result.append((i, pt, st))
        return result

    # ------------------------------------------------------------------ rules
    def _rule(
        self, group: dict[str, Any], cap: int, truncate: bool, dtype: torch.dtype
    ) -> RankRule:
        cap = max(int(cap), 1)
        lo = min(int(group["min_rank"]), cap)
        tol = float(group["tau"]) if truncate else 100.0 * torch.finfo(dtype).eps
        return RankRule(rtol=tol, min_rank=lo, max_rank=cap)

    def _truncating(self, step: int) -> bool:
        return step % self.truncate_every == 0

    # ------------------------------------------------------------------ update
    def _compute_update(
        self,
        layer: nn.Module,
        group: dict[str, Any],
        state: dict[str, Any],
        pg: Any,
        global_step: int,
    ) -> tuple[Any, dict[str, Any]]:
        if isinstance(layer, TuckerModule):
            return self._tucker_update(layer, group, state, pg, global_step)
        point: FixedRankPoint = layer.point()  # type: ignore[operator]
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        beta = float(group["momentum"])
        k = int(state.get("step", 0)) + 1
        point = FixedRankPoint(point.U, decay_coefficients(point.S, lr, wd), point.V)
        new_state: dict[str, Any] = {"step": k}
        mom_old = None
        if "momentum_GV" in state:
            mom_old = ProjectedGradients(
                state["momentum_GV"], state["momentum_UtGV"], state["momentum_GtU"]
            )
        mom: ProjectedGradients | None = None
        if group["precondition"] == "none":
            if beta > 0:
                mom = (
                    pg
                    if mom_old is None
                    else ProjectedGradients(*(beta * o + g for o, g in zip(mom_old, pg)))
                )
                direction = mom
            else:
                direction = pg
            h = lr
        else:
            if beta > 0:
                if mom_old is None:
                    mom = ProjectedGradients(*((1 - beta) * g for g in pg))
                else:
                    mom = ProjectedGradients(
                        *(torch.lerp(o, g, 1 - beta) for o, g in zip(mom_old, pg))
                    )
                direction = mom
            else:
                direction = pg
            if group["precondition"] == "factored":
                a, b = _factored_weights(state, new_state, pg, float(group["beta2"]))
                if direction is pg:
                    pg = direction = rescaled_tangent(pg, point.U, point.V, a, b)
                else:  # both in one batched call
                    both = ProjectedGradients(*(torch.stack(t) for t in zip(pg, direction)))
                    res = rescaled_tangent(both, point.U, point.V, a, b)
                    pg = ProjectedGradients(*(t[0] for t in res))
                    direction = ProjectedGradients(*(t[1] for t in res))
            h = _layer_rms_step(state, new_state, tangent_norm_sq(pg), group, k)
        m, n = layer.matrix_shape  # type: ignore[attr-defined]
        cap = min(int(group["max_rank"]), int(layer.max_rank), m, n)  # type: ignore[attr-defined]
        rule = self._rule(group, cap, self._truncating(global_step), point.S.dtype)
        new_point = _parallel_reorth(point, direction, h, rule)
        if new_point is None:  # rank 0 / nearly square layers: the public functions
            res = parallel(point, direction, float(h), rule)
            # U₊ = [U Ũ]P₁ inherits U's rounding error (≈ ε per step); QR removes it.
            new_point = reorthonormalize(res.point, diagonalize=res.singular_values is not None)[0]
        if mom is not None:
            # projection vector transport of the momentum to the new tangent space
            t = transport_tangent(mom, point, new_point)
            new_state["momentum_GV"], new_state["momentum_UtGV"], new_state["momentum_GtU"] = t
        return new_point, new_state

    def _tucker_update(
        self,
        layer: TuckerModule,
        group: dict[str, Any],
        state: dict[str, Any],
        pg: TuckerProjectedGradients,
        global_step: int,
    ) -> tuple[TuckerPoint, dict[str, Any]]:
        if group["precondition"] == "factored":
            raise ValueError(_FACTORED_TUCKER)
        point = layer.point()
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        beta = float(group["momentum"])
        k = int(state.get("step", 0)) + 1
        core = decay_coefficients(point.core, lr, wd)
        new_state: dict[str, Any] = {"step": k}
        # Momentum of Tucker layers is core state (coordinates in the current bases),
        # transported by M ← M ×_k (U_k,newᵀ U_k,old).
        mom_core = state.get("momentum_core")
        mom: torch.Tensor | None = None
        if group["precondition"] == "none":
            if beta > 0:
                mom = pg.core if mom_core is None else beta * mom_core + pg.core
                direction = TuckerProjectedGradients(mom, pg.partials)
            else:
                direction = pg
            h = lr
        else:
            g2 = _tucker_norm_sq(pg, layer.full_modes)
            # the Tucker integrator takes a float step: one host sync per Tucker layer
            h = float(_layer_rms_step(state, new_state, g2, group, k))
            if beta > 0:
                mom = (
                    (1 - beta) * pg.core
                    if mom_core is None
                    else (beta * mom_core + (1 - beta) * pg.core)
                )
                direction = TuckerProjectedGradients(
                    mom, tuple((1 - beta) * p for p in pg.partials)
                )
            else:
                direction = pg
        truncate = self._truncating(global_step)
        rules: list[RankRule | None] = []
        for j, dim in enumerate(layer.dims):
            if j in layer.full_modes:
                rules.append(None)
            else:
                cap = min(int(group["max_rank"]), int(layer.max_ranks[j]), dim)
                rules.append(self._rule(group, cap, truncate, core.dtype))
        res = tucker_parallel(
            TuckerPoint(core, point.factors), direction, h, rules, full_modes=layer.full_modes
        )
        new_point, rs = reorthonormalize_tucker(res.point, layer.full_modes)
        if mom is not None:
            trans = tuple(t if r is None else r @ t for r, t in zip(rs, res.transitions))
            new_state["momentum_core"] = transport_core_tucker(mom, trans)
        return new_point, new_state
