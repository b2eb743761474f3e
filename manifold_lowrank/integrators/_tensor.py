"""Tiny tensor-algebra helpers on torch tensors (private).

tensorly's ``mode_dot``/``unfold`` dispatch on its *global* backend; calling them on
torch tensors needs ``tl.set_backend("pytorch")`` (global state) or a
``backend_context`` on every call of the hot path. These four helpers are the same
operations written directly with ``torch.tensordot``/``movedim``; ``unfold`` uses the
same C-order layout as ``tensorly.base.unfold``, so results interoperate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["fold", "mode_dot", "multi_mode_dot", "tucker_to_dense", "unfold"]


def unfold(t: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-``mode`` unfolding ``(n_mode, ∏_{j≠mode} n_j)`` (tensorly's C-order layout)."""
    return t.movedim(mode, 0).reshape(t.shape[mode], -1)


def fold(mat: torch.Tensor, mode: int, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`unfold` for a tensor of full shape ``shape``."""
    shape = list(shape)
    rest = shape[:mode] + shape[mode + 1 :]
    return mat.reshape([shape[mode], *rest]).movedim(0, mode)


def mode_dot(t: torch.Tensor, mat: torch.Tensor, mode: int) -> torch.Tensor:
    """``t ×_mode mat``: contract mode ``mode`` of ``t`` with the columns of ``mat`` (p × n)."""
    return torch.tensordot(mat, t, dims=([1], [mode])).movedim(0, mode)


def multi_mode_dot(
    t: torch.Tensor, mats: Sequence[torch.Tensor | None], skip: int | None = None
) -> torch.Tensor:
    """``t ×_0 mats[0] ×_1 mats[1] …``; ``None`` entries and mode ``skip`` are left alone."""
    for k, a in enumerate(mats):
        if a is None or k == skip:
            continue
        t = mode_dot(t, a, k)
    return t


def tucker_to_dense(core: torch.Tensor, factors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``core ×_1 U_1 … ×_d U_d`` as a dense tensor (tests and oracles only)."""
    return multi_mode_dot(core, list(factors))
