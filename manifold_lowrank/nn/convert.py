"""Whole-model conversion to low-rank layers and model-level helpers."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from typing import Literal

from torch import nn

from manifold_lowrank.nn.base import LowRankModule, TuckerModule
from manifold_lowrank.nn.conv import LowRankConv2d
from manifold_lowrank.nn.linear import LowRankLinear
from manifold_lowrank.nn.tucker_conv import TuckerConv2d

__all__ = [
    "clear_projected_grads",
    "convert_to_low_rank",
    "low_rank_modules",
    "name_matches",
]


def low_rank_modules(model: nn.Module) -> Iterator[tuple[str, LowRankModule | TuckerModule]]:
    """``(name, module)`` for every low-rank module (layers and adapters) of ``model``."""
    for name, mod in model.named_modules():
        if isinstance(mod, (LowRankModule, TuckerModule)):
            yield name, mod


def clear_projected_grads(model: nn.Module) -> None:
    """Call ``clear_projected_grads()`` on every low-rank module of ``model``."""
    for _, mod in low_rank_modules(model):
        mod.clear_projected_grads()


def name_matches(name: str, patterns: str | Sequence[str]) -> bool:
    """Whether the dotted module ``name`` matches one of ``patterns``.

    A pattern matches if it equals the name, is a dotted suffix of it (``"fc1"`` matches
    ``"encoder.fc1"``, PEFT's list semantics) or matches it as a shell glob
    (:func:`fnmatch.fnmatchcase`, e.g. ``"encoder.*"``).
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"module-name patterns must be strings, got {p!r}")
        if name == p or name.endswith("." + p) or fnmatch.fnmatchcase(name, p):
            return True
    return False


def _convertible_conv(mod: nn.Module) -> bool:
    return (
        isinstance(mod, nn.Conv2d)
        and mod.groups == 1
        and mod.padding_mode == "zeros"
        and not isinstance(mod.padding, str)
    )


def convert_to_low_rank(
    model: nn.Module,
    *,
    rank: int | None = None,
    tol: float | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    min_features: int = 8,
    conv: Literal["matrix", "tucker"] | None = "matrix",
    max_rank: int | None = None,
) -> nn.Module:
    """Replace dense layers of ``model`` by low-rank ones built from their weights.

    Every :class:`torch.nn.Linear` (and, with ``conv``, every ``groups=1`` zero-padded
    :class:`torch.nn.Conv2d`) whose qualified name matches ``include`` (default: all)
    and not ``exclude`` (see :func:`name_matches`), and whose smaller matrix dimension is
    ``≥ min_features``, is replaced by :meth:`LowRankLinear.from_dense`,
    :meth:`LowRankConv2d.from_dense` (``conv="matrix"``) or
    :meth:`TuckerConv2d.from_dense` (``conv="tucker"``; ``rank`` then applies to the
    two channel modes).

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place.
    rank : int, optional
        Fixed rank, clipped to each layer's ``min(m, n)`` (and ``max_rank``).
    tol : float, optional
        Relative Frobenius tolerance of the truncation. With neither ``rank`` nor
        ``tol`` the conversion is exact (full rank).
    include, exclude : str or sequence of str, optional
        Module-name patterns.
    min_features : int
        Layers with ``min(m, n) < min_features`` stay dense (default 8).
    conv : {"matrix", "tucker", None}
        How to convert convolutions; ``None`` leaves them dense.
    max_rank : int, optional
        Rank cap of the new layers (clipped to each layer's ``min(m, n)``).

    Returns
    -------
    torch.nn.Module
        ``model`` (or the converted module if ``model`` itself was a matching layer).
    """
    if rank is not None and tol is not None:
        raise ValueError("give rank or tol, not both")
    if conv not in ("matrix", "tucker", None):
        raise ValueError(f"conv must be 'matrix', 'tucker' or None, got {conv!r}")
    if not isinstance(min_features, int) or min_features < 1:
        raise ValueError(f"min_features must be an integer >= 1, got {min_features!r}")

    def convert(name: str, mod: nn.Module) -> nn.Module | None:
        if include is not None and not name_matches(name, include):
            return None
        if exclude is not None and name_matches(name, exclude):
            return None
        if type(mod) is nn.Linear:
            full = min(mod.in_features, mod.out_features)
            if full < min_features:
                return None
            mr = None if max_rank is None else min(max_rank, full)
            r = None if rank is None else min(rank, full if mr is None else mr)
            return LowRankLinear.from_dense(mod, rank=r, tol=tol, max_rank=mr)
        if conv is not None and _convertible_conv(mod):
            w = mod.weight
            m, n = w.shape[0], w[0].numel()
            if min(m, n) < min_features:
                return None
            if conv == "matrix":
                full = min(m, n)
                mr = None if max_rank is None else min(max_rank, full)
                r = None if rank is None else min(rank, full if mr is None else mr)
                return LowRankConv2d.from_dense(mod, rank=r, tol=tol, max_rank=mr)
            dims = tuple(w.shape)
            mrs = None
            if max_rank is not None:
                mrs = (min(max_rank, dims[0]), min(max_rank, dims[1]), dims[2], dims[3])
            caps = mrs if mrs is not None else dims
            ranks = None if rank is None else (min(rank, caps[0]), min(rank, caps[1]))
            return TuckerConv2d.from_dense(mod, ranks, tol=tol, max_ranks=mrs)
        return None

    top = convert("", model)
    if top is not None:
        return top
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full_name = f"{parent_name}.{child_name}" if parent_name else child_name
            new = convert(full_name, child)
            if new is not None:
                setattr(parent, child_name, new)
    return model
