"""Argument checks shared by the integrators (private)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from manifold_lowrank.linalg import RankRule, check_finite
from manifold_lowrank.manifolds.types import FixedRankPoint, ProjectedGradients

__all__: list[str] = []


finite = check_finite  # one host synchronisation for all tensors


def check_step_size(h: Any, name: str = "h") -> float:
    """Return ``h`` as a Python float; finite and ``>= 0`` or ``ValueError``."""
    if isinstance(h, torch.Tensor):
        if h.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(h.shape)}")
        h = float(h.item())
    if isinstance(h, bool) or not isinstance(h, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(h).__name__}")
    h = float(h)
    if not math.isfinite(h) or h < 0.0:
        raise ValueError(
            f"{name} must be a finite number >= 0, got {h!r} (to integrate backwards in "
            "time, negate the vector field instead)"
        )
    return h


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_rank_rule(rule: Any, name: str = "rank_rule", allow_none: bool = True) -> RankRule | None:
    """Accept a :class:`RankRule`, an ``int`` (fixed rank) or ``None``."""
    if rule is None:
        if not allow_none:
            raise TypeError(f"{name} must be a RankRule or an int, got None")
        return None
    if isinstance(rule, RankRule):
        return rule
    if isinstance(rule, int) and not isinstance(rule, bool):
        if rule < 0:
            raise ValueError(f"{name} as a fixed rank must be >= 0, got {rule}")
        return RankRule(rank=rule, min_rank=0)
    raise TypeError(f"{name} must be a RankRule, an int or None, got {type(rule).__name__}")


def check_point(point: Any, name: str = "point") -> FixedRankPoint:
    """Validate ``U (m×r)``, ``S (r×r)``, ``V (n×r)``: same dtype/device, finite."""
    if not isinstance(point, tuple) or len(point) != 3:
        raise TypeError(f"{name} must be a FixedRankPoint(U, S, V), got {type(point).__name__}")
    u, s, v = point
    for label, t in (("U", u), ("S", s), ("V", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}.{label} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(
                f"{name}.{label} must be a 2-D matrix (batched points are not supported), "
                f"got shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise TypeError(f"{name}.{label} must have a floating dtype, got {t.dtype}")
    if s.shape != (u.shape[1], v.shape[1]):
        raise ValueError(
            f"{name}.S has shape {tuple(s.shape)} but {name}.U has {u.shape[1]} columns "
            f"and {name}.V has {v.shape[1]}"
        )
    if u.shape[1] > u.shape[0] or v.shape[1] > v.shape[0]:
        raise ValueError(
            f"{name}: the rank cannot exceed the dimensions, got U {tuple(u.shape)}, "
            f"V {tuple(v.shape)}"
        )
    if not (u.dtype == s.dtype == v.dtype):
        raise TypeError(
            f"{name}: U, S, V must share one dtype, got {u.dtype}, {s.dtype}, {v.dtype}"
        )
    if not (u.device == s.device == v.device):
        raise ValueError(f"{name}: U, S, V must live on one device")
    finite(name, u, s, v)
    return FixedRankPoint(u, s, v)


def check_square_point(point: FixedRankPoint, name: str = "point") -> None:
    if point.U.shape[1] != point.V.shape[1]:
        raise ValueError(
            f"{name} must have a square core (rank r on both sides), got S of shape "
            f"{tuple(point.S.shape)}"
        )


def check_pg(pg: Any, point: FixedRankPoint, name: str = "pg") -> ProjectedGradients:
    """Validate the projected gradients against ``point``; finite or FloatingPointError."""
    if not isinstance(pg, tuple) or len(pg) != 3:
        raise TypeError(f"{name} must be a ProjectedGradients(GV, UtGV, GtU)")
    gv, utgv, gtu = pg
    m, r = point.U.shape
    n, rv = point.V.shape
    expected = {"GV": (m, rv), "UtGV": (r, rv), "GtU": (n, r)}
    for label, t in (("GV", gv), ("UtGV", utgv), ("GtU", gtu)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}.{label} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != expected[label]:
            raise ValueError(
                f"{name}.{label} must have shape {expected[label]} for a point with U "
                f"{tuple(point.U.shape)} and V {tuple(point.V.shape)}, got {tuple(t.shape)}"
            )
        if t.dtype != point.U.dtype:
            raise TypeError(f"{name}.{label} has dtype {t.dtype}, the point {point.U.dtype}")
    finite(name, gv, utgv, gtu)
    return ProjectedGradients(gv, utgv, gtu)


def check_callable(fn: Any, name: str) -> Callable[..., Any]:
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    return fn
