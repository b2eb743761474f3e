r"""Low-rank adapters around a frozen base layer: ``y = base(x) + s · ΔW x``.

``ΔW = U S Vᵀ`` (matrix form; Tucker form for :class:`TuckerConv2dAdapter`) is computed
by the same custom autograd functions as the low-rank layers, so one backward pass
gives the ordinary gradients of the adapter factors *and* the projected gradients of
``G = ∂L/∂ΔW``. With the constant ``scaling`` ``s``, the effective weight is
``W = W₀ + s ΔW``, so ``G = s · ∂L/∂W`` (the gradient with respect to the adapter's own
matrix, consistent with the factor gradients).

Initialisation: ``ΔW = 0`` exactly, with ``S = 0`` (``r×r`` zeros; Tucker: zero core)
and random orthonormal ``U``, ``V`` (seeded by ``generator``). This point lies off the
fixed-rank manifold (``S`` is singular); the rank-adaptive parallel integrator handles
it because it never inverts ``S`` and its augmented basis ``[U | GV]`` captures the
gradient directions. ``scaling`` is a constant that does not depend on the rank, so the
output does not jump when the rank changes (unlike ``alpha / r`` in LoRA/GeoLoRA code).

Parameter names start with ``adapter_`` (``adapter_U``, ``adapter_S``, ``adapter_V``;
``adapter_core``, ``adapter_factors``) so that :func:`mark_only_adapters_as_trainable`
and :func:`adapter_state_dict` can filter them; the base layer is the submodule
``base_layer`` (PEFT's name) and is frozen (``requires_grad=False``) by default.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

from manifold_lowrank.nn._utils import (
    check_factor_dtype,
    check_factory_kwargs,
    check_max_rank,
    check_positive_int,
    check_rank,
    mode_dot,
    random_orthonormal,
)
from manifold_lowrank.nn.base import LowRankModule, TuckerModule
from manifold_lowrank.nn.functional import low_rank_conv2d, low_rank_linear, tucker_conv2d

__all__ = [
    "AdaptedLinear",
    "LowRankAdapter",
    "LowRankConv2dAdapter",
    "TuckerConv2dAdapter",
    "adapter_modules",
    "adapter_state_dict",
    "is_adapter_parameter",
    "mark_only_adapters_as_trainable",
]

BiasMode = Literal["none", "all", "adapter_only"]


def _adapter_dtype(weight: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return check_factor_dtype(dtype)  # type: ignore[return-value]
    return weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32


def _is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (weight stored ``(in, out)``), detected without importing it."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


class _AdapterMixin:
    """Merge/unmerge/disable logic shared by all adapters."""

    base_layer: nn.Module
    merged: bool
    disable_adapters: bool
    scaling: float

    def _init_adapter(
        self, base: nn.Module, scaling: float, dropout: float, freeze_base: bool
    ) -> None:
        if not isinstance(scaling, (int, float)) or isinstance(scaling, bool):
            raise TypeError(f"scaling must be a float, got {type(scaling).__name__}")
        if scaling != scaling or abs(scaling) == float("inf"):
            raise ValueError(f"scaling must be finite, got {scaling!r}")
        if not isinstance(dropout, (int, float)) or not (0.0 <= float(dropout) < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.base_layer = base
        self.scaling = float(scaling)
        self.adapter_dropout = nn.Dropout(float(dropout)) if dropout > 0 else nn.Identity()
        self.merged = False
        self.disable_adapters = False
        if freeze_base:
            for p in base.parameters():
                p.requires_grad_(False)

    # subclasses implement: _delta_base_layout() -> tensor shaped like base weight
    def _delta_base_layout(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _adapter_active(self) -> bool:
        raise NotImplementedError  # pragma: no cover

    @torch.no_grad()
    def merge(self) -> None:
        """Add ``s ΔW`` into the base weight (in its dtype); forward then skips the adapter.

        Exact up to the rounding of one addition. Do not train while merged; call
        :meth:`unmerge` first. Cost ``O(mnr)``.
        """
        if self.merged:
            warnings.warn("adapter is already merged; nothing done", UserWarning, stacklevel=2)
            return
        w = self.base_layer.weight
        w.add_(self._delta_base_layout().to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ``s ΔW`` from the base weight again (inverse of :meth:`merge`)."""
        if not self.merged:
            warnings.warn("adapter is not merged; nothing done", UserWarning, stacklevel=2)
            return
        w = self.base_layer.weight
        w.sub_(self._delta_base_layout().to(w.dtype))
        self.merged = False

    def _check_not_merged(self) -> None:
        if self.merged:
            raise RuntimeError("unmerge() the adapter before changing its factors")


class LowRankAdapter(_AdapterMixin, LowRankModule):
    r"""Low-rank adapter around a frozen :class:`torch.nn.Linear` (or transformers ``Conv1D``).

    ``y = base(x) + s · ((dropout(x) V) Sᵀ) Uᵀ`` with ``ΔW = U S Vᵀ`` (``U`` ``m×r``,
    ``V`` ``n×r``, ``m = out_features``). Projected gradients of ``G = ∂L/∂ΔW`` are
    recorded as in :class:`~manifold_lowrank.nn.LowRankLinear`.

    Parameters
    ----------
    base : torch.nn.Linear or transformers.pytorch_utils.Conv1D
        The layer to adapt. ``Conv1D`` stores its weight as ``(in, out)``; merging
        transposes accordingly.
    rank : int
        Initial rank in ``[0, max_rank]``. Rank 0 is allowed: the forward pass returns
        ``base(x)`` and nothing is recorded.
    max_rank : int, optional
        Cap for :meth:`set_point` (default ``min(m, n)``).
    scaling : float
        Constant output scaling ``s`` (default 1), independent of the rank.
    dropout : float
        Dropout probability on the adapter input, in ``[0, 1)``.
    generator : torch.Generator, optional
        Seeds ``U``, ``V``.
    dtype : torch.dtype, optional
        Factor dtype; default the base weight dtype if float32/float64, else float32
        (low-precision base layers get float32 adapters; activations are cast inside).
    freeze_base : bool
        Set ``requires_grad=False`` on the base parameters (default ``True``).
    record_projected_grads : bool
        Accumulate projected gradients in backward (default ``True``).

    Attributes
    ----------
    merged : bool
        Whether ``s ΔW`` is currently added into the base weight.
    disable_adapters : bool
        When ``True``, forward returns ``base(x)`` only.
    """

    factor_names = ("adapter_U", "adapter_S", "adapter_V")

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        *,
        max_rank: int | None = None,
        scaling: float = 1.0,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        freeze_base: bool = True,
        record_projected_grads: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(base, nn.Linear):
            m, n = base.out_features, base.in_features
            self.fan_in_fan_out = False
        elif _is_conv1d(base):
            n, m = base.weight.shape
            self.fan_in_fan_out = True
        else:
            raise TypeError(
                f"base must be a torch.nn.Linear or transformers Conv1D, got {type(base).__name__}"
            )
        self.in_features, self.out_features = int(n), int(m)
        mr = check_max_rank(max_rank, min(m, n))
        r = check_rank("rank", rank, mr, allow_zero=True, limit_name="max_rank")
        w = base.weight
        kw = {"generator": generator, "device": w.device, "dtype": _adapter_dtype(w, dtype)}
        U = random_orthonormal(m, r, **kw)
        V = random_orthonormal(n, r, **kw)
        S = torch.zeros(r, r, device=w.device, dtype=kw["dtype"])
        self._init_factors(U, S, V, max_rank=mr, record_projected_grads=record_projected_grads)
        self._init_adapter(base, scaling, dropout, freeze_base)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``base(x) + s ΔW dropout(x)`` (just ``base(x)`` if merged/disabled/rank 0)."""
        out = self.base_layer(x, *args, **kwargs)
        if self.merged or self.disable_adapters or self.rank == 0:
            return out
        U, S, V = self.factors()
        delta = low_rank_linear(
            self.adapter_dropout(x),
            U,
            S,
            V,
            None,
            scaling=self.scaling,
            recorder=self._recorder(),
        )
        return out + delta.to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """Dense ``s · U S Vᵀ`` as ``(out_features, in_features)`` (export/merge only)."""
        U, S, V = self.point()
        return self.scaling * (U @ S @ V.transpose(0, 1))

    def _delta_base_layout(self) -> torch.Tensor:
        d = self.delta_weight()
        return d.transpose(0, 1) if self.fan_in_fan_out else d

    def set_point(self, point: Any, *, assume_finite: bool = False) -> None:
        """See :meth:`LowRankModule.set_point`; rank 0 allowed; not while merged."""
        self._check_not_merged()
        super().set_point(point, assume_finite=assume_finite)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, max_rank={self.max_rank}, scaling={self.scaling}, "
            f"merged={self.merged}"
        )


class AdaptedLinear(LowRankAdapter):
    r"""loralib-style layer: a :class:`torch.nn.Linear` plus a low-rank adapter.

    ``AdaptedLinear(in, out, rank)`` is ``LowRankAdapter(nn.Linear(in, out), rank)``
    for hand-written models; ``weight``/``bias`` refer to the base layer's. The base is
    *not* frozen by default (pre-train it, then call
    :func:`mark_only_adapters_as_trainable`), as in loralib.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the base :class:`torch.nn.Linear`.
    rank : int
        Adapter rank in ``[0, max_rank]``.
    bias, device, dtype
        Passed to :class:`torch.nn.Linear` (``dtype`` is also the adapter dtype).
    **kwargs
        ``max_rank``, ``scaling``, ``dropout``, ``generator``, ``freeze_base``
        (default ``False``), ``record_projected_grads``; see :class:`LowRankAdapter`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        *,
        bias: bool = True,
        max_rank: int | None = None,
        scaling: float = 1.0,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        freeze_base: bool = False,
        record_projected_grads: bool = True,
    ) -> None:
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        check_factory_kwargs(dtype, device, generator)
        base = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        super().__init__(
            base,
            rank,
            max_rank=max_rank,
            scaling=scaling,
            dropout=dropout,
            generator=generator,
            dtype=dtype,
            freeze_base=freeze_base,
            record_projected_grads=record_projected_grads,
        )

    @property
    def weight(self) -> nn.Parameter:
        """The base layer's weight ``W₀`` ``(out, in)``."""
        return self.base_layer.weight

    @property
    def bias(self) -> nn.Parameter | None:
        """The base layer's bias."""
        return self.base_layer.bias


def _check_conv_base(base: nn.Module) -> nn.Conv2d:
    if not isinstance(base, nn.Conv2d):
        raise TypeError(f"base must be a torch.nn.Conv2d, got {type(base).__name__}")
    if base.groups != 1:
        raise ValueError(f"only groups=1 convolutions are supported, got groups={base.groups}")
    if base.padding_mode != "zeros":
        raise ValueError(f"only padding_mode='zeros' is supported, got {base.padding_mode!r}")
    return base


class LowRankConv2dAdapter(_AdapterMixin, LowRankModule):
    r"""Matrix-form low-rank adapter around a frozen :class:`torch.nn.Conv2d` (``groups=1``).

    ``ΔW`` is the ``(out, in·kh·kw)`` matrix ``U S Vᵀ`` reshaped to the kernel; the
    adapter path uses the base's stride/padding/dilation, see
    :func:`~manifold_lowrank.nn.functional.low_rank_conv2d`. Exactly PEFT's LoRA-Conv2d
    shape (``lora_A = Vᵀ`` reshaped, ``lora_B = U S``). Parameters as in
    :class:`LowRankAdapter`.
    """

    factor_names = ("adapter_U", "adapter_S", "adapter_V")

    def __init__(
        self,
        base: nn.Conv2d,
        rank: int,
        *,
        max_rank: int | None = None,
        scaling: float = 1.0,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        freeze_base: bool = True,
        record_projected_grads: bool = True,
    ) -> None:
        super().__init__()
        base = _check_conv_base(base)
        if isinstance(base.padding, str):
            raise ValueError("string padding of the base conv is not supported; use integers")
        m = base.out_channels
        kh, kw = base.kernel_size
        self.kernel_shape = (base.in_channels, kh, kw)
        n = base.in_channels * kh * kw
        mr = check_max_rank(max_rank, min(m, n))
        r = check_rank("rank", rank, mr, allow_zero=True, limit_name="max_rank")
        w = base.weight
        kwargs = {"generator": generator, "device": w.device, "dtype": _adapter_dtype(w, dtype)}
        U = random_orthonormal(m, r, **kwargs)
        V = random_orthonormal(n, r, **kwargs)
        S = torch.zeros(r, r, device=w.device, dtype=kwargs["dtype"])
        self._init_factors(U, S, V, max_rank=mr, record_projected_grads=record_projected_grads)
        self._init_adapter(base, scaling, dropout, freeze_base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + s conv(dropout(x), ΔW)``."""
        out = self.base_layer(x)
        if self.merged or self.disable_adapters or self.rank == 0:
            return out
        b: nn.Conv2d = self.base_layer  # type: ignore[assignment]
        xd = self.adapter_dropout(x)
        unbatched = xd.dim() == 3
        if unbatched:
            xd = xd.unsqueeze(0)
        U, S, V = self.factors()
        delta = low_rank_conv2d(
            xd,
            U,
            S,
            V,
            None,
            kernel_shape=self.kernel_shape,
            stride=b.stride,
            padding=b.padding,
            dilation=b.dilation,
            scaling=self.scaling,
            recorder=self._recorder(),
        )
        if unbatched:
            delta = delta.squeeze(0)
        return out + delta.to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """Dense ``s · U S Vᵀ`` reshaped to the kernel ``(out, in, kh, kw)``."""
        U, S, V = self.point()
        return (self.scaling * (U @ S @ V.transpose(0, 1))).reshape(
            self.out_dim, *self.kernel_shape
        )

    def _delta_base_layout(self) -> torch.Tensor:
        return self.delta_weight()

    def set_point(self, point: Any, *, assume_finite: bool = False) -> None:
        """See :meth:`LowRankModule.set_point`; rank 0 allowed; not while merged."""
        self._check_not_merged()
        super().set_point(point, assume_finite=assume_finite)

    def extra_repr(self) -> str:
        return (
            f"kernel=({self.out_dim}, {', '.join(map(str, self.kernel_shape))}), "
            f"rank={self.rank}, max_rank={self.max_rank}, scaling={self.scaling}, "
            f"merged={self.merged}"
        )


class TuckerConv2dAdapter(_AdapterMixin, TuckerModule):
    r"""Tucker adapter around a frozen :class:`torch.nn.Conv2d` (``groups=1``).

    ``ΔW = C ×₁ U₁ ×₂ U₂ ×₃ U₃ ×₄ U₄`` over ``(out, in, kh, kw)``, starting at ``C = 0``
    with random orthonormal ``U₁``, ``U₂``; modes in ``full_modes`` (default the two
    spatial modes) keep a frozen identity factor. Parameters ``adapter_core`` and
    ``adapter_factors``; projected gradients as in
    :class:`~manifold_lowrank.nn.TuckerConv2d`.

    Parameters
    ----------
    base : torch.nn.Conv2d
        Layer to adapt.
    ranks : int or sequence of int
        An int applies to every non-full mode; a length-4 sequence gives all modes
        (entries of full modes must equal the mode size or be ``None``). Ranks ``0``
        are allowed (forward then returns ``base(x)``).
    full_modes : tuple of int
        Modes kept at full rank (identity factor), subset of ``(0, 1, 2, 3)``.
    max_ranks : sequence of int, optional
        Per-mode caps (default the mode sizes).
    scaling, dropout, generator, dtype, freeze_base, record_projected_grads
        See :class:`LowRankAdapter`.
    """

    core_name = "adapter_core"
    factors_name = "adapter_factors"

    def __init__(
        self,
        base: nn.Conv2d,
        ranks: int | tuple[int | None, ...],
        *,
        full_modes: tuple[int, ...] = (2, 3),
        max_ranks: tuple[int, ...] | None = None,
        scaling: float = 1.0,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        freeze_base: bool = True,
        record_projected_grads: bool = True,
    ) -> None:
        from manifold_lowrank.nn.tucker_conv import resolve_tucker_ranks

        super().__init__()
        base = _check_conv_base(base)
        if isinstance(base.padding, str):
            raise ValueError("string padding of the base conv is not supported; use integers")
        dims = tuple(int(d) for d in base.weight.shape)
        rs, fm, mrs = resolve_tucker_ranks(dims, ranks, full_modes, max_ranks, allow_zero=True)
        w = base.weight
        dt = _adapter_dtype(w, dtype)
        factors = [
            torch.eye(d, device=w.device, dtype=dt)
            if k in fm
            else random_orthonormal(d, rs[k], generator=generator, device=w.device, dtype=dt)
            for k, d in enumerate(dims)
        ]
        core = torch.zeros(rs, device=w.device, dtype=dt)
        self._init_tucker(
            core,
            factors,
            full_modes=fm,
            max_ranks=mrs,
            record_projected_grads=record_projected_grads,
        )
        self._init_adapter(base, scaling, dropout, freeze_base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + s conv(dropout(x), ΔW)`` without forming ``ΔW``."""
        out = self.base_layer(x)
        if self.merged or self.disable_adapters or 0 in self.ranks:
            return out
        b: nn.Conv2d = self.base_layer  # type: ignore[assignment]
        xd = self.adapter_dropout(x)
        unbatched = xd.dim() == 3
        if unbatched:
            xd = xd.unsqueeze(0)
        core, fs = self.tucker_parameters()
        delta = tucker_conv2d(
            xd,
            core,
            fs,
            None,
            stride=b.stride,
            padding=b.padding,  # type: ignore[arg-type]
            dilation=b.dilation,
            scaling=self.scaling,
            recorder=self._recorder(),
        )
        if unbatched:
            delta = delta.squeeze(0)
        return out + delta.to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """Dense ``s · C ×₁ U₁ … ×₄ U₄`` ``(out, in, kh, kw)``."""
        core, fs = self.point()
        t = core
        for k, f in enumerate(fs):
            t = mode_dot(t, f, k)
        return self.scaling * t

    def _delta_base_layout(self) -> torch.Tensor:
        return self.delta_weight()

    def set_point(self, point: Any, *, assume_finite: bool = False) -> None:
        """See :meth:`TuckerModule.set_point`; ranks 0 allowed; not while merged."""
        self._check_not_merged()
        super().set_point(point, assume_finite=assume_finite)

    def extra_repr(self) -> str:
        return (
            f"kernel={self.dims}, ranks={self.ranks}, full_modes={self.full_modes}, "
            f"scaling={self.scaling}, merged={self.merged}"
        )


_ADAPTER_TYPES = (LowRankAdapter, LowRankConv2dAdapter, TuckerConv2dAdapter)


def is_adapter_parameter(name: str) -> bool:
    """Whether a (dotted) parameter name belongs to an adapter (a component ``adapter_*``)."""
    return any(part.startswith("adapter_") for part in name.split("."))


def adapter_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` for every adapter module of ``model``."""
    for name, mod in model.named_modules():
        if isinstance(mod, _ADAPTER_TYPES):
            yield name, mod


def _frozen_names(model: nn.Module) -> set[str]:
    out: set[str] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, TuckerModule):
            pre = f"{name}." if name else ""
            out.update(pre + n for n in mod.frozen_parameter_names())
    return out


def _adapter_bias_names(model: nn.Module) -> set[str]:
    out: set[str] = set()
    for name, mod in adapter_modules(model):
        if getattr(mod.base_layer, "bias", None) is not None:
            out.add(f"{name}.base_layer.bias" if name else "base_layer.bias")
    return out


def _check_bias_mode(bias: str) -> None:
    if bias not in ("none", "all", "adapter_only"):
        raise ValueError(f"bias must be 'none', 'all' or 'adapter_only', got {bias!r}")


def mark_only_adapters_as_trainable(model: nn.Module, bias: BiasMode = "none") -> nn.Module:
    """Freeze every parameter except the adapters' (loralib's ``mark_only_lora_as_trainable``).

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place (``requires_grad``) and returned.
    bias : {"none", "all", "adapter_only"}
        Also train every ``bias`` (``"all"``) or the biases of adapted base layers
        (``"adapter_only"``). Frozen identity factors of Tucker full modes stay frozen.
    """
    _check_bias_mode(bias)
    frozen = _frozen_names(model)
    adapter_biases = _adapter_bias_names(model) if bias == "adapter_only" else set()
    for name, p in model.named_parameters():
        train = is_adapter_parameter(name) and name not in frozen
        if bias == "all" and name.split(".")[-1] == "bias":
            train = True
        if name in adapter_biases:
            train = True
        p.requires_grad_(train)
    return model


def adapter_state_dict(model: nn.Module, bias: BiasMode = "none") -> dict[str, torch.Tensor]:
    """The adapter entries of ``model.state_dict()`` (loralib's ``lora_state_dict``).

    ``bias`` as in :func:`mark_only_adapters_as_trainable`. Load back with
    ``model.load_state_dict(sd, strict=False)``; adapter ranks are restored.
    """
    _check_bias_mode(bias)
    sd = model.state_dict()
    adapter_biases = _adapter_bias_names(model) if bias == "adapter_only" else set()
    out = {}
    for k, v in sd.items():
        if (
            is_adapter_parameter(k)
            or (bias == "all" and k.split(".")[-1] == "bias")
            or k in adapter_biases
        ):
            out[k] = v
    return out
