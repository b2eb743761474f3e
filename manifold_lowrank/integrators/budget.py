r"""A global rank budget shared by several low-rank layers.

Given the singular values ``σ^{(l)}`` of the (augmented) cores of ``L`` layers,
:class:`GlobalBudget` chooses ranks ``r_l`` so that the total cost stays within a
budget, keeping the **globally largest normalised singular values**:

1. normalise each layer's values (``"fro"``: ``σ/‖σ‖₂``, the relative contribution to
   the layer's Frobenius norm — the quantity the relative rank rules use; ``"max"``:
   ``σ/σ₁``; ``"none"``: raw values);
2. every layer starts at ``min(min_rank, len(σ^{(l)}), max_ranks[l])``;
3. the remaining values are visited in decreasing normalised order (ties: lower layer
   index, then lower position); value ``j`` of layer ``l`` is kept if it is the next
   one of that layer, is ``> tol``, ``j < max_ranks[l]`` and its cost fits in what is
   left of the budget; once a value of a layer does not fit, that layer is closed
   (its later values are smaller, and a rank is a prefix).

Costs: ``unit="rank"`` counts ``Σ_l r_l``; ``unit="params"`` counts the stored
parameters ``Σ_l r_l (m_l + n_l) + r_l²`` (``U``, ``V`` and a full core ``S``), so
growing layer ``l`` from ``r`` to ``r + 1`` costs ``m_l + n_l + 2r + 1``. With
``unit="rank"`` the kept set is exactly the top-``budget`` normalised values (after
the minimum ranks). The result always satisfies ``cost ≤ budget``; a budget smaller
than the cost of the minimum ranks raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from manifold_lowrank.integrators.matrix import StepResult, truncate
from manifold_lowrank.linalg import RankRule
from manifold_lowrank.manifolds.types import FixedRankPoint

__all__ = ["GlobalBudget", "allocate_ranks", "parameter_count"]


def parameter_count(shape: tuple[int, int], rank: int) -> int:
    """Parameters of a rank-``r`` factorisation of an ``m×n`` matrix: ``r(m+n) + r²``."""
    m, n = shape
    return rank * (m + n) + rank * rank


@dataclass(frozen=True)
class GlobalBudget:
    """Rank allocation across layers under a global budget (see the module docstring).

    Parameters
    ----------
    budget : int
        Maximal total cost (``>= 0``).
    unit : {"rank", "params"}
        Cost of a layer: its rank, or its parameter count ``r(m+n) + r²``.
    normalize : {"fro", "max", "none"}
        Normalisation of each layer's singular values before the global comparison.
    min_rank : int
        Every layer keeps at least this rank (if it has that many values).
    tol : float
        Normalised values ``<= tol`` are never kept beyond ``min_rank`` (default 0:
        exact zeros are dropped).
    """

    budget: int
    unit: Literal["rank", "params"] = "rank"
    normalize: Literal["fro", "max", "none"] = "fro"
    min_rank: int = 1
    tol: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 0:
            raise ValueError(f"budget must be an integer >= 0, got {self.budget!r}")
        if self.unit not in ("rank", "params"):
            raise ValueError(f"unit must be 'rank' or 'params', got {self.unit!r}")
        if self.normalize not in ("fro", "max", "none"):
            raise ValueError(f"normalize must be 'fro', 'max' or 'none', got {self.normalize!r}")
        if (
            isinstance(self.min_rank, bool)
            or not isinstance(self.min_rank, int)
            or self.min_rank < 0
        ):
            raise ValueError(f"min_rank must be an integer >= 0, got {self.min_rank!r}")
        if not isinstance(self.tol, (int, float)) or not self.tol >= 0:
            raise ValueError(f"tol must be >= 0, got {self.tol!r}")

    def allocate(
        self,
        singular_values: Sequence[torch.Tensor],
        shapes: Sequence[tuple[int, int]] | None = None,
        max_ranks: Sequence[int | None] | None = None,
    ) -> list[int]:
        """Ranks ``[r_1, …, r_L]`` for the given per-layer singular values.

        Parameters
        ----------
        singular_values : sequence of 1-D tensors
            Non-negative (sorted in decreasing order internally).
        shapes : sequence of (m, n), optional
            Required for ``unit="params"``.
        max_ranks : sequence of int or None, optional
            Per-layer upper limits.

        Returns
        -------
        list of int
            Cost ``O(P log P)`` with ``P`` the total number of values.
        """
        sv = list(singular_values)
        nl = len(sv)
        for l_, s in enumerate(sv):
            if not isinstance(s, torch.Tensor) or s.dim() != 1:
                raise ValueError(f"singular_values[{l_}] must be a 1-D tensor")
            if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
                raise ValueError(f"singular_values[{l_}] must be finite and >= 0")
        if self.unit == "params":
            if shapes is None or len(shapes) != nl:
                raise ValueError("shapes (one (m, n) per layer) are required for unit='params'")
        if max_ranks is None:
            caps = [int(s.numel()) for s in sv]
        else:
            if len(max_ranks) != nl:
                raise ValueError(f"max_ranks must have {nl} entries, got {len(max_ranks)}")
            caps = [
                int(s.numel()) if c is None else min(int(c), int(s.numel()))
                for s, c in zip(sv, max_ranks)
            ]

        def inc(l_: int, r: int) -> int:
            if self.unit == "rank":
                return 1
            m, n = shapes[l_]  # type: ignore[index]
            return m + n + 2 * r + 1

        ranks = [min(self.min_rank, c) for c in caps]
        total = 0
        for l_, r in enumerate(ranks):
            total += r if self.unit == "rank" else parameter_count(tuple(shapes[l_]), r)  # type: ignore[index,arg-type]
        if total > self.budget:
            raise ValueError(
                f"budget ({self.budget}) is smaller than the cost of the minimum ranks ({total})"
            )
        items: list[tuple[float, int, int]] = []
        for l_, s in enumerate(sv):
            s64 = torch.sort(s.detach().to(torch.float64).cpu(), descending=True).values
            if self.normalize == "fro":
                scale = float(torch.linalg.vector_norm(s64))
            elif self.normalize == "max":
                scale = float(s64.max()) if s64.numel() else 0.0
            else:
                scale = 1.0
            if scale == 0.0:
                continue
            vals = (s64 / scale).tolist()
            for j in range(ranks[l_], caps[l_]):
                if vals[j] > self.tol:
                    items.append((-vals[j], l_, j))
        items.sort()
        closed = [False] * nl
        for _, l_, j in items:
            if closed[l_] or j != ranks[l_]:  # j != rank cannot happen for sorted values
                closed[l_] = True
                continue
            c = inc(l_, ranks[l_])
            if total + c <= self.budget:
                total += c
                ranks[l_] += 1
            else:
                closed[l_] = True
        return ranks

    def cost(self, ranks: Sequence[int], shapes: Sequence[tuple[int, int]] | None = None) -> int:
        """Total cost of ``ranks`` in this budget's unit."""
        if self.unit == "rank":
            return int(sum(ranks))
        if shapes is None:
            raise ValueError("shapes are required for unit='params'")
        return int(sum(parameter_count(tuple(s), r) for s, r in zip(shapes, ranks)))  # type: ignore[arg-type]

    def truncate(
        self, points: Sequence[FixedRankPoint], max_ranks: Sequence[int | None] | None = None
    ) -> list[StepResult]:
        """Truncate several (augmented) points jointly: SVD of each core, :meth:`allocate`,
        then :func:`~manifold_lowrank.integrators.truncate` each to its rank.

        Cost ``O(Σ_l (p_l³ + (m_l+n_l) p_l r_l))``.
        """
        sv = [torch.linalg.svdvals(p.S) for p in points]
        shapes = [(int(p.U.shape[0]), int(p.V.shape[0])) for p in points]
        ranks = self.allocate(sv, shapes=shapes, max_ranks=max_ranks)
        return [truncate(p, RankRule(rank=r, min_rank=0)) for p, r in zip(points, ranks)]


def allocate_ranks(
    singular_values: Sequence[torch.Tensor],
    budget: int,
    *,
    unit: Literal["rank", "params"] = "rank",
    shapes: Sequence[tuple[int, int]] | None = None,
    normalize: Literal["fro", "max", "none"] = "fro",
    min_rank: int = 1,
    max_ranks: Sequence[int | None] | None = None,
    tol: float = 0.0,
) -> list[int]:
    """Functional form of :meth:`GlobalBudget.allocate`."""
    return GlobalBudget(budget, unit, normalize, min_rank, tol).allocate(
        singular_values, shapes=shapes, max_ranks=max_ranks
    )
