"""Small argument checks shared by all layers."""

from __future__ import annotations

import torch

__all__ = ["check_finite"]


def check_finite(name: str, *tensors: torch.Tensor) -> None:
    """Raise :class:`FloatingPointError` if any tensor holds NaN or Inf.

    Parameters
    ----------
    name : str
        Name of the argument, used in the error message.
    *tensors : torch.Tensor
        Tensors to check. Cost: one reduction per tensor.
    """
    for t in tensors:
        if not bool(torch.isfinite(t).all()):
            raise FloatingPointError(f"{name} contains NaN or Inf; nothing was modified")
