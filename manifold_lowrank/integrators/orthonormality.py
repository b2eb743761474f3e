r"""Removing the rounding drift of orthonormal bases (exact re-parametrisation).

Every integrator step builds the new basis from the old one, e.g. ``U₁ = [U Ũ] P₁``, so the
rounding error ``‖UᵀU − I‖`` is inherited and grows by about one unit roundoff per step (in
float32, ≈ 1e-7 per step: 1e-5 after ~100 steps, 1e-3 after 10⁴). The cure is exact in
exact arithmetic: with the sign-fixed QR factorisation ``U = Q_u R_u`` (``R_u = I + O(ε)``),

.. math::

    U S V^\top = Q_u (R_u S R_v^\top) Q_v^\top,

so the matrix is unchanged while the bases become orthonormal to working precision. A
coordinate quantity ``Z`` in the old bases (momentum, a transition matrix) is carried by the
same map, ``Z ← R_u Z R_vᵀ`` (or ``Z ×_k R_k`` for Tucker). Cost ``O((m + n) r²)`` per
matrix, ``O(Σ_k n_k r_k² + r_k ∏_j r_j)`` per Tucker tensor.
"""

from __future__ import annotations

import torch

from manifold_lowrank.linalg import qr_signfix
from manifold_lowrank.manifolds.types import FixedRankPoint, TuckerPoint

__all__ = ["reorthonormalize", "reorthonormalize_tucker"]


def reorthonormalize(
    point: FixedRankPoint, *, diagonalize: bool = False
) -> tuple[FixedRankPoint, torch.Tensor, torch.Tensor]:
    r"""Return ``(Q_u, R_u S R_vᵀ, Q_v)`` and the coordinate maps ``A``, ``B``.

    Parameters
    ----------
    point : FixedRankPoint
        ``(U, S, V)`` with ``U`` (m×r), ``V`` (n×r) of full column rank (nearly orthonormal).
    diagonalize : bool
        Also restore a diagonal core (for a ``S`` that was diagonal, as after a truncation):
        ``R_u S R_vᵀ = P Σ Qᵀ`` (an ``r×r`` SVD with ``diag(P) ≥ 0``, so ``P, Q = I + O(ε)``
        when ``S`` was diagonal with distinct entries), ``U ← Q_u P``, ``V ← Q_v Q``,
        ``S ← Σ``. Extra cost ``O((m + n) r² + r³)``.

    Returns
    -------
    point : FixedRankPoint
        The same matrix ``U S Vᵀ`` with bases orthonormal to working precision.
    A, B : torch.Tensor
        ``r×r`` maps of old coordinates ``Z`` (in the bases ``U``, ``V``) to the new ones,
        ``Z ← A Z Bᵀ``: ``A = R_u``, ``B = R_v`` (upper triangular, ``U = Q_u R_u``), or
        ``A = Pᵀ R_u``, ``B = Qᵀ R_v`` with ``diagonalize``.
    """
    qu, ru = qr_signfix(point.U)
    qv, rv = qr_signfix(point.V)
    core = ru @ point.S @ rv.transpose(0, 1)
    if not diagonalize or core.shape[0] == 0 or core.shape[0] != core.shape[1]:
        return FixedRankPoint(qu, core, qv), ru, rv
    p, sig, qh = torch.linalg.svd(core)
    # sign convention: non-negative diagonal of P (the SVD's sign of each pair is free)
    sign = torch.where(torch.diagonal(p) < 0, -1.0, 1.0).to(p.dtype)
    p = p * sign
    qh = qh * sign.unsqueeze(1)
    new = FixedRankPoint(qu @ p, torch.diag(sig), qv @ qh.transpose(0, 1))
    return new, p.transpose(0, 1) @ ru, qh @ rv


def reorthonormalize_tucker(
    point: TuckerPoint, full_modes: tuple[int, ...] = ()
) -> tuple[TuckerPoint, tuple[torch.Tensor | None, ...]]:
    r"""Tucker analogue of :func:`reorthonormalize`: ``U_k = Q_k R_k``, ``C ← C ×_k R_k``.

    Parameters
    ----------
    point : TuckerPoint
        Core ``C`` and factors ``U_k`` (``n_k × r_k``, full column rank).
    full_modes : tuple of int
        Modes kept at full rank (their factor is left alone, ``R_k = None``).

    Returns
    -------
    point : TuckerPoint
        The same tensor with orthonormal dynamic factors.
    rs : tuple
        ``R_k`` per mode (``None`` for untouched modes): old core-shaped coordinates ``Z``
        become ``Z ×_k R_k``.
    """
    core = point.core
    factors = list(point.factors)
    rs: list[torch.Tensor | None] = []
    for k, u in enumerate(factors):
        if k in full_modes or u.shape[1] == 0:
            rs.append(None)
            continue
        q, r = qr_signfix(u)
        factors[k] = q
        # core ×_k R: a tensordot then moving the new axis back (no tensorly global backend)
        core = torch.tensordot(r, core, dims=([1], [k])).movedim(0, k)
        rs.append(r)
    return TuckerPoint(core.contiguous(), tuple(factors)), tuple(rs)
