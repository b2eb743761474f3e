"""Rank rules: how many singular values a truncation keeps.

A :class:`RankRule` maps a vector of singular values ``σ₁ ≥ σ₂ ≥ … ≥ σ_p ≥ 0`` to a
rank ``r``. The tail norm is ``‖σ_{r+1:p}‖₂ = (Σ_{j>r} σ_j²)^{1/2}`` and, unlike the
DLRT/GeoLoRA research code, it includes *every* discarded value (their code leaves
out the last one and so can never keep all ``p = 2r`` values).

Rules, applied in this order:

1. ``rank`` (fixed): ``r = rank``.
2. ``rtol`` (relative): the smallest ``r ≥ 0`` with ``‖σ_{r+1:}‖₂ ≤ rtol · ‖σ‖₂``.
3. ``atol`` (absolute): the smallest ``r ≥ 0`` with ``‖σ_{r+1:}‖₂ ≤ atol``.
   If both tolerances are given, the larger of the two ranks is kept (both bounds
   hold).
4. Clamp to ``[min_rank, max_rank]`` and to ``p``.

The Frobenius error of the truncation is exactly the tail norm, so ``rtol`` bounds the
relative approximation error: ``‖A − A_r‖_F ≤ rtol ‖A‖_F``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["RankRule", "select_rank"]


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class RankRule:
    """Exactly specified rank-selection rule for truncated SVDs.

    Parameters
    ----------
    rank : int, optional
        Fixed rank (``≥ 0``). Mutually exclusive with ``rtol``/``atol``.
    rtol : float, optional
        Relative tolerance in ``[0, 1)``: keep the smallest ``r`` with
        ``‖σ_{r+1:}‖₂ ≤ rtol ‖σ‖₂``.
    atol : float, optional
        Absolute tolerance ``≥ 0``: keep the smallest ``r`` with
        ``‖σ_{r+1:}‖₂ ≤ atol``.
    min_rank : int
        Lower clamp (default 1). A rule never returns more than the number of
        singular values available.
    max_rank : int, optional
        Upper clamp.

    Examples
    --------
    >>> import torch
    >>> RankRule(rtol=0.1).select(torch.tensor([10.0, 1.0, 0.1]))
    1
    """

    rank: int | None = None
    rtol: float | None = None
    atol: float | None = None
    min_rank: int = 1
    max_rank: int | None = None

    def __post_init__(self) -> None:
        if self.rank is not None:
            if not _is_int(self.rank) or self.rank < 0:
                raise ValueError(f"rank must be an integer >= 0, got {self.rank!r}")
            if self.rtol is not None or self.atol is not None:
                raise ValueError("rank is exclusive with rtol/atol; give one kind of rule")
        if self.rtol is not None:
            if not isinstance(self.rtol, (int, float)) or not (0.0 <= float(self.rtol) < 1.0):
                raise ValueError(f"rtol must be in [0, 1), got {self.rtol!r}")
        if self.atol is not None:
            if not isinstance(self.atol, (int, float)) or not (float(self.atol) >= 0.0):
                raise ValueError(f"atol must be >= 0, got {self.atol!r}")
        if self.rank is None and self.rtol is None and self.atol is None:
            raise ValueError("give one of rank, rtol or atol")
        if not _is_int(self.min_rank) or self.min_rank < 0:
            raise ValueError(f"min_rank must be an integer >= 0, got {self.min_rank!r}")
        if self.max_rank is not None:
            if not _is_int(self.max_rank) or self.max_rank < 1:
                raise ValueError(f"max_rank must be an integer >= 1, got {self.max_rank!r}")
            if self.max_rank < self.min_rank:
                raise ValueError(
                    f"max_rank ({self.max_rank}) must be >= min_rank ({self.min_rank})"
                )

    def select(self, s: torch.Tensor) -> int:
        """Rank chosen for singular values ``s`` (1-D, non-increasing)."""
        return select_rank(s, self)

    def replace(self, **changes: object) -> RankRule:
        """A copy with some fields changed (validated again)."""
        fields = {
            "rank": self.rank,
            "rtol": self.rtol,
            "atol": self.atol,
            "min_rank": self.min_rank,
            "max_rank": self.max_rank,
        }
        fields.update(changes)
        return RankRule(**fields)  # type: ignore[arg-type]


def _host_values(s: torch.Tensor) -> tuple[np.ndarray, float]:
    """``σ / max|σ|`` in float64 on the host, and the scale (one device-to-host copy).

    Scaling keeps the squares of values near the under/overflow thresholds
    (``|σ| < 1e-154`` or ``> 1e154``) from flushing to 0 or inf. The values are few
    (``p ≤ 2r``), so the rule runs in NumPy on the host: one transfer instead of one
    synchronising torch reduction per quantity (this is on every optimizer step of
    every layer).
    """
    s64 = s.detach().to(device="cpu", dtype=torch.float64).numpy()
    scale = float(np.abs(s64).max()) if s64.size else 0.0
    if scale > 0.0 and scale != float("inf"):
        return s64 / scale, scale
    return s64, 1.0


def _tail_rank(tail: np.ndarray, bound: float) -> int:
    # tail[j] = ||s[j:]||_2 for j = 0..p (tail[p] = 0); smallest j with tail[j] <= bound
    ok = np.flatnonzero(tail <= bound)
    return int(ok[0]) if ok.size else int(tail.size - 1)


def select_rank(s: torch.Tensor, rule: RankRule) -> int:
    """Apply ``rule`` to the singular values ``s`` (see the module docstring).

    Cost ``O(p)``; one host synchronisation (a copy of the ``p`` values).
    """
    if s.dim() != 1:
        raise ValueError(f"s must be 1-D singular values, got shape {tuple(s.shape)}")
    p = int(s.numel())
    if rule.rank is not None:
        r = rule.rank
    else:
        r = 0
        vals, scale = _host_values(s)
        sq = vals * vals
        tail = np.append(np.sqrt(np.cumsum(sq[::-1])[::-1]), 0.0)
        if rule.rtol is not None:  # both sides in the scaled units
            r = max(r, _tail_rank(tail, float(rule.rtol) * float(np.sqrt(sq.sum()))))
        if rule.atol is not None:
            r = max(r, _tail_rank(tail, float(rule.atol) / scale))
    r = max(r, rule.min_rank)
    if rule.max_rank is not None:
        r = min(r, rule.max_rank)
    return min(r, p)
