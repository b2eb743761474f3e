r"""Layer 4: low-rank layers and adapters with one-pass projected gradients.

Conventions: a dense weight is ``W ∈ R^{m×n}`` (``m`` outputs, ``n`` inputs),
``W = U S Vᵀ`` with ``U`` ``m×r`` and ``V`` ``n×r`` orthonormal and a full ``r×r`` core
``S``; layers compute ``y = ((x V) Sᵀ) Uᵀ + b`` and never form ``W``.

Layers
    :class:`LowRankLinear`, :class:`LowRankConv2d` (kernel as an ``out × in·kh·kw``
    matrix), :class:`TuckerConv2d` (Tucker kernel).
Adapters (frozen base + ``s · ΔW``)
    :class:`LowRankAdapter` (``nn.Linear`` / transformers ``Conv1D``),
    :class:`AdaptedLinear` (loralib-style), :class:`LowRankConv2dAdapter`,
    :class:`TuckerConv2dAdapter`, :func:`mark_only_adapters_as_trainable`,
    :func:`adapter_state_dict`.
Projected gradients
    After ``loss.backward()`` every module (with ``record_projected_grads=True``) holds
    ``module.projected_grads``: :class:`~manifold_lowrank.manifolds.ProjectedGradients`
    ``(GV, UtGV, GtU)`` of ``G = ∂L/∂W`` (adapters: ``∂L/∂ΔW``), or
    :class:`~manifold_lowrank.manifolds.TuckerProjectedGradients` for Tucker modules;
    they accumulate over backward passes until ``clear_projected_grads()``.
Rank changes
    ``module.point()`` / ``module.set_point(point)`` (Parameter identity kept, memory
    reallocated); ``load_state_dict`` resizes to the checkpoint's ranks.
Conversion
    ``from_dense``/``to_dense`` on each layer, :func:`convert_to_low_rank`.
"""

from manifold_lowrank.nn.adapters import (
    AdaptedLinear,
    LowRankAdapter,
    LowRankConv2dAdapter,
    TuckerConv2dAdapter,
    adapter_modules,
    adapter_state_dict,
    is_adapter_parameter,
    mark_only_adapters_as_trainable,
)
from manifold_lowrank.nn.base import LowRankModule, TuckerModule
from manifold_lowrank.nn.conv import LowRankConv2d
from manifold_lowrank.nn.convert import (
    clear_projected_grads,
    convert_to_low_rank,
    low_rank_modules,
    name_matches,
)
from manifold_lowrank.nn.functional import (
    LowRankConv2dFunction,
    LowRankLinearFunction,
    TuckerConv2dFunction,
    low_rank_conv2d,
    low_rank_linear,
    tucker_conv2d,
)
from manifold_lowrank.nn.linear import LowRankLinear
from manifold_lowrank.nn.tucker_conv import TuckerConv2d, hosvd, resolve_tucker_ranks

__all__ = [
    "AdaptedLinear",
    "LowRankAdapter",
    "LowRankConv2d",
    "LowRankConv2dAdapter",
    "LowRankConv2dFunction",
    "LowRankLinear",
    "LowRankLinearFunction",
    "LowRankModule",
    "TuckerConv2d",
    "TuckerConv2dAdapter",
    "TuckerConv2dFunction",
    "TuckerModule",
    "adapter_modules",
    "adapter_state_dict",
    "clear_projected_grads",
    "convert_to_low_rank",
    "hosvd",
    "is_adapter_parameter",
    "low_rank_conv2d",
    "low_rank_linear",
    "low_rank_modules",
    "mark_only_adapters_as_trainable",
    "name_matches",
    "resolve_tucker_ranks",
    "tucker_conv2d",
]
