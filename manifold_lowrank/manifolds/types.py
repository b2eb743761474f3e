"""Factored representations of points and tangent vectors.

These light ``NamedTuple`` types are the currency of the integrators, layers and
optimizers. The manifold classes additionally offer a *packed* single-tensor layout
for geoopt (see :class:`~manifold_lowrank.manifolds.FixedRank`), with zero-copy views
into these factors.

Conventions (DESIGN.md): a dense weight is ``W ∈ R^{m×n}`` (``m = out_features``,
``n = in_features``); ``W = U S Vᵀ`` with ``U ∈ R^{m×r}`` (output side),
``V ∈ R^{n×r}`` (input side), orthonormal columns, and a full ``r×r`` core ``S``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "FixedRankPoint",
    "FixedRankTangent",
    "ProjectedGradients",
    "TuckerPoint",
    "TuckerProjectedGradients",
    "TuckerTangent",
]


class FixedRankPoint(NamedTuple):
    """A point ``X = U S Vᵀ`` of the fixed-rank manifold.

    Attributes
    ----------
    U : torch.Tensor
        ``(..., m, r)``, ``UᵀU = I``.
    S : torch.Tensor
        ``(..., r, r)``, full (not necessarily diagonal), invertible on the manifold.
    V : torch.Tensor
        ``(..., n, r)``, ``VᵀV = I``.
    """

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.S.shape[-1])

    def to_dense(self) -> torch.Tensor:
        """``U S Vᵀ`` as a dense ``(m, n)`` matrix. Cost ``O(mnr)``; tests only."""
        return self.U @ self.S @ self.V.transpose(-2, -1)


class FixedRankTangent(NamedTuple):
    """A tangent vector in factored form at ``X = U S Vᵀ``.

    ``ξ = U M Vᵀ + Up Vᵀ + U Vpᵀ`` with ``UᵀUp = 0`` and ``VᵀVp = 0``.

    Attributes
    ----------
    Up : torch.Tensor
        ``(..., m, r)``.
    M : torch.Tensor
        ``(..., r, r)``.
    Vp : torch.Tensor
        ``(..., n, r)``.
    """

    Up: torch.Tensor
    M: torch.Tensor
    Vp: torch.Tensor


class ProjectedGradients(NamedTuple):
    """The three projections of ``G = ∂L/∂W`` that every integrator needs.

    Obtained from one backward pass of a low-rank layer, never forming ``G``.

    Attributes
    ----------
    GV : torch.Tensor
        ``G V``, ``(..., m, r)``.
    UtGV : torch.Tensor
        ``Uᵀ G V``, ``(..., r, r)``.
    GtU : torch.Tensor
        ``Gᵀ U``, ``(..., n, r)``.
    """

    GV: torch.Tensor
    UtGV: torch.Tensor
    GtU: torch.Tensor


class TuckerPoint(NamedTuple):
    """A Tucker tensor ``X = C ×₁ U₁ ×₂ U₂ … ×_d U_d``.

    Attributes
    ----------
    core : torch.Tensor
        ``(r_1, …, r_d)``.
    factors : tuple of torch.Tensor
        ``U_k ∈ R^{n_k×r_k}`` with orthonormal columns.
    """

    core: torch.Tensor
    factors: tuple[torch.Tensor, ...]

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.core.shape)


class TuckerTangent(NamedTuple):
    """A tangent vector at a Tucker point in factored form.

    ``ξ = Ċ ×_k U_k + Σ_k C ×_k U̇_k ×_{j≠k} U_j`` with ``U_kᵀ U̇_k = 0``.
    """

    core: torch.Tensor
    factors: tuple[torch.Tensor, ...]


class TuckerProjectedGradients(NamedTuple):
    """Projections of the dense gradient ``G`` needed by Tucker integrators.

    Attributes
    ----------
    core : torch.Tensor
        ``G ×₁ U₁ᵀ ×₂ U₂ᵀ … ×_d U_dᵀ``, shape ``(r_1, …, r_d)``.
    partials : tuple of torch.Tensor
        ``partials[k] = G ×_{j≠k} U_jᵀ``: every mode contracted with its basis except
        mode ``k``, so its shape is ``(r_1, …, n_k, …, r_d)``. The matrix case is
        ``partials = (G V, Uᵀ G)`` (note the second is ``(GᵀU)ᵀ``).
        ``core = partials[k] ×_k U_kᵀ`` for every ``k``.
    """

    core: torch.Tensor
    partials: tuple[torch.Tensor, ...]
