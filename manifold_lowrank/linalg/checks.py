"""Finiteness checks shared by every layer of the library."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = ["all_finite", "check_finite"]


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every entry of every tensor is finite, with one host synchronisation.

    One fused max-norm per dtype and device (``torch._foreach_norm(ts, inf)``, as
    ``torch.nn.utils.clip_grad_norm_`` uses): ``max |x|`` of finite entries cannot
    overflow, and a NaN or an infinity propagates into it, so the check is exact.
    Integer and boolean tensors are always finite and are skipped. Cost: one pass over
    the entries.
    """
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        if t.numel() and (t.is_floating_point() or t.is_complex()):
            groups.setdefault((t.dtype, t.device), []).append(t)
    if not groups:
        return True
    flags = [
        torch.isfinite(torch.stack(torch._foreach_norm(ts, math.inf))).all()
        for ts in groups.values()
    ]
    dev = flags[0].device
    return bool(torch.stack([f.to(dev) for f in flags]).all()) if len(flags) > 1 else bool(flags[0])


def check_finite(name: str, *tensors: torch.Tensor) -> None:
    """Raise :class:`FloatingPointError` if any tensor holds NaN or Inf.

    Parameters
    ----------
    name : str
        Name of the argument, used in the error message.
    *tensors : torch.Tensor
        Tensors to check. Cost: :func:`all_finite` (one host synchronisation).
    """
    if not all_finite(tensors):
        raise FloatingPointError(f"{name} contains NaN or Inf; nothing was modified")
