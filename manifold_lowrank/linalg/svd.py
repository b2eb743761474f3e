"""Truncated SVD driven by a :class:`~manifold_lowrank.linalg.RankRule`."""

from __future__ import annotations

import torch

from manifold_lowrank.linalg.rank_rule import RankRule, select_rank

__all__ = ["truncated_svd"]


def truncated_svd(
    a: torch.Tensor, rule: RankRule
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Best approximation of ``a`` of the rank chosen by ``rule`` (Eckart–Young).

    ``a ≈ U diag(s) Vᵀ`` with ``U ∈ R^{m×r}``, ``V ∈ R^{n×r}`` orthonormal and
    ``s`` non-increasing. Signs are fixed so that the largest-magnitude entry of
    each column of ``U`` is positive (a deterministic gauge).

    Parameters
    ----------
    a : torch.Tensor
        ``(m, n)`` matrix, finite.
    rule : RankRule
        Rank rule; see :mod:`manifold_lowrank.linalg.rank_rule`.

    Returns
    -------
    u, s, v : torch.Tensor
        ``(m, r)``, ``(r,)``, ``(n, r)``.

    Notes
    -----
    Cost ``O(m n min(m, n))`` (LAPACK ``gesdd``). Use it on small cores
    (``2r × 2r``) on the hot path, and on dense matrices only in set-up code.
    """
    if a.dim() != 2:
        raise ValueError(f"a must be a 2-D matrix, got shape {tuple(a.shape)}")
    if not isinstance(rule, RankRule):
        raise TypeError(f"rule must be a RankRule, got {type(rule).__name__}")
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    r = select_rank(s, rule)
    u, s, v = u[:, :r], s[:r], vh[:r].transpose(0, 1)
    if r > 0:
        idx = u.abs().argmax(dim=0)
        sign = torch.sign(u[idx, torch.arange(r, device=u.device)])
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        u = u * sign
        v = v * sign
    return u.contiguous(), s.contiguous(), v.contiguous()
