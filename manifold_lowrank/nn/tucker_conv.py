r"""Tucker-factorised 2-D convolution ``W = C ×₁ U₁ ×₂ U₂ ×₃ U₃ ×₄ U₄`` (TDLRT layout)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from manifold_lowrank.linalg import RankRule, truncated_svd
from manifold_lowrank.nn._utils import (
    check_factory_kwargs,
    init_is_skipped,
    is_int,
    mode_dot,
    set_conv_geometry,
    skip_random_init,
    unfold,
)
from manifold_lowrank.nn.base import TuckerModule
from manifold_lowrank.nn.functional import tucker_conv2d

__all__ = ["TuckerConv2d", "hosvd", "resolve_tucker_ranks"]


def _check_full_modes(full_modes: object, d: int) -> tuple[int, ...]:
    if (
        not isinstance(full_modes, Sequence)
        or isinstance(full_modes, str)
        or not all(is_int(k) and 0 <= k < d for k in full_modes)
        or len(set(full_modes)) != len(full_modes)
    ):
        raise ValueError(
            f"full_modes must be distinct mode indices in [0, {d - 1}], got {full_modes!r}"
        )
    return tuple(sorted(int(k) for k in full_modes))


def resolve_tucker_ranks(
    dims: tuple[int, ...],
    ranks: int | Sequence[int | None],
    full_modes: Sequence[int],
    max_ranks: Sequence[int] | None = None,
    *,
    allow_zero: bool = False,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Validate Tucker ranks: ``(ranks, full_modes, max_ranks)`` as full-length tuples.

    ``ranks`` is an int (every non-full mode), a length-``d`` sequence (entries of full
    modes ``None`` or equal to the mode size), or one entry per non-full mode. Each rank
    must lie in ``[1 (0 if allow_zero), max_ranks[k]]``; ``max_ranks[k] ≤ dims[k]``.
    """
    d = len(dims)
    fm = _check_full_modes(full_modes, d)
    dyn = [k for k in range(d) if k not in fm]
    if is_int(ranks):
        rs: list[int | None] = [None] * d
        for k in dyn:
            rs[k] = int(ranks)  # type: ignore[arg-type]
    elif isinstance(ranks, Sequence) and not isinstance(ranks, str):
        if len(ranks) == d:
            rs = list(ranks)
        elif len(ranks) == len(dyn):
            rs = [None] * d
            for k, r in zip(dyn, ranks):
                rs[k] = r
        else:
            raise ValueError(
                f"ranks must be an int, {d} values or {len(dyn)} values (non-full modes), "
                f"got {ranks!r}"
            )
    else:
        raise ValueError(f"ranks must be an int or a sequence of ints, got {ranks!r}")
    if max_ranks is None:
        mrs = list(dims)
    else:
        if not isinstance(max_ranks, Sequence) or isinstance(max_ranks, str) or len(max_ranks) != d:
            raise ValueError(f"max_ranks must have {d} entries, got {max_ranks!r}")
        mrs = list(max_ranks)
    out = []
    low = 0 if allow_zero else 1
    for k in range(d):
        if not is_int(mrs[k]) or not (1 <= mrs[k] <= dims[k]):
            raise ValueError(f"max_ranks[{k}] must be an integer in [1, {dims[k]}], got {mrs[k]!r}")
        if k in fm:
            if rs[k] is not None and rs[k] != dims[k]:
                raise ValueError(
                    f"mode {k} is in full_modes: its rank must be {dims[k]} or None, got {rs[k]!r}"
                )
            if mrs[k] != dims[k]:
                raise ValueError(f"max_ranks[{k}] of full mode {k} must be {dims[k]}")
            out.append(dims[k])
            continue
        r = rs[k]
        if not is_int(r) or not (low <= r <= mrs[k]):  # type: ignore[operator]
            raise ValueError(
                f"ranks[{k}] must be an integer in [{low}, {mrs[k]}] (mode size {dims[k]}), "
                f"got {r!r}"
            )
        out.append(int(r))  # type: ignore[arg-type]
    return tuple(out), fm, tuple(int(x) for x in mrs)


def hosvd(
    tensor: torch.Tensor,
    ranks: Sequence[int] | None = None,
    *,
    tol: float | None = None,
    full_modes: Sequence[int] = (),
    max_ranks: Sequence[int] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    r"""Truncated higher-order SVD ``X ≈ C ×₁ U₁ … ×_d U_d``.

    ``U_k`` = leading left singular vectors of the mode-``k`` unfolding (sign-fixed by
    :func:`~manifold_lowrank.linalg.truncated_svd`), ``C = X ×_k U_kᵀ``; full modes get
    the identity. With ``tol``, each truncated mode keeps the smallest rank whose
    unfolding tail is ``≤ tol/√q · ‖X‖_F`` (``q`` truncated modes), so
    ``‖X − X̂‖_F ≤ tol ‖X‖_F``. With neither ``ranks`` nor ``tol``: exact (full ranks).

    Returns
    -------
    core, factors
        ``(r_1, …, r_d)`` and ``[U_k (n_k × r_k)]``. Cost ``Σ_k O(n_k² ∏ n)``.
    """
    d = tensor.dim()
    fm = _check_full_modes(full_modes, d)
    dyn = [k for k in range(d) if k not in fm]
    if ranks is not None and tol is not None:
        raise ValueError("give ranks or tol, not both")
    x = tensor.detach()
    factors: list[torch.Tensor] = []
    for k in range(d):
        nk = x.shape[k]
        cap = nk if max_ranks is None else int(max_ranks[k])
        if k in fm:
            factors.append(torch.eye(nk, dtype=x.dtype, device=x.device))
            continue
        if ranks is not None:
            rule = RankRule(rank=min(int(ranks[k]), cap), min_rank=0)
        elif tol is not None:
            rule = RankRule(rtol=float(tol) / math.sqrt(max(len(dyn), 1)), max_rank=cap)
        else:
            rule = RankRule(rank=cap)
        factors.append(truncated_svd(unfold(x, k), rule)[0])
    core = x
    for k in dyn:
        core = mode_dot(core, factors[k].transpose(0, 1), k)
    return core.contiguous(), factors


class TuckerConv2d(TuckerModule):
    r"""2-D convolution with a Tucker kernel over ``(out, in, kh, kw)``.

    ``W = C ×₁ U₁ ×₂ U₂ ×₃ U₃ ×₄ U₄`` with ``U₁`` ``(out, r₁)``, ``U₂`` ``(in, r₂)``,
    ``U₃`` ``(kh, r₃)``, ``U₄`` ``(kw, r₄)`` orthonormal. Modes in ``full_modes`` (by
    default the spatial modes 2, 3) keep full rank; their factor is a *frozen identity*
    stored in :attr:`factors` (``requires_grad=False``), so ``factors[k]`` is always the
    mode-``k`` factor and :meth:`point` returns all four.

    The forward pass never forms ``W``: ``1×1`` conv with ``U₂ᵀ``, spatial conv with
    ``K = C ×₃ U₃ ×₄ U₄``, ``1×1`` conv with ``U₁``
    (:func:`~manifold_lowrank.nn.functional.tucker_conv2d`). One backward records
    ``TuckerProjectedGradients(core, partials)`` of ``G = ∂L/∂W``
    (``partials[k] = G ×_{j≠k} U_jᵀ``).

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts (``groups = 1``).
    kernel_size : int or pair of int
        Spatial size.
    ranks : int or sequence
        See :func:`resolve_tucker_ranks` (an int applies to each non-full mode).
    full_modes : sequence of int
        Modes kept at full rank (default ``(2, 3)``).
    max_ranks : sequence of int, optional
        Per-mode caps for :meth:`set_point` (default the mode sizes).
    stride, padding, dilation, groups, bias, device, dtype, generator, record_projected_grads
        As :class:`~manifold_lowrank.nn.LowRankConv2d`.

    Notes
    -----
    Initialisation: truncated HOSVD of a kernel drawn like ``nn.Conv2d``'s
    (``U(−1/√fan_in, 1/√fan_in)``), seeded by ``generator``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        ranks: int | Sequence[int | None],
        *,
        full_modes: Sequence[int] = (2, 3),
        max_ranks: Sequence[int] | None = None,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        record_projected_grads: bool = True,
    ) -> None:
        super().__init__()
        cin, cout, kh, kw = set_conv_geometry(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups
        )
        dims = (cout, cin, kh, kw)
        rs, fm, mrs = resolve_tucker_ranks(dims, ranks, full_modes, max_ranks)
        dtype, device = check_factory_kwargs(dtype, device, generator)
        fan_in = cin * kh * kw
        bound = 1.0 / math.sqrt(fan_in)
        if init_is_skipped():
            core = torch.zeros(rs, device=device, dtype=dtype)
            factors = [torch.eye(d, r, device=device, dtype=dtype) for d, r in zip(dims, rs)]
        else:
            w0 = 2.0 * torch.rand(dims, generator=generator, device=device, dtype=dtype) - 1.0
            core, factors = hosvd(w0 * bound, rs, full_modes=fm)
        self._init_tucker(
            core,
            factors,
            full_modes=fm,
            max_ranks=mrs,
            record_projected_grads=record_projected_grads,
        )
        if bias:
            b = 2.0 * torch.rand(cout, generator=generator, device=device, dtype=dtype) - 1.0
            self.bias = nn.Parameter(b * bound)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution of ``x`` ``(B, in, H, W)`` or ``(in, H, W)`` with the Tucker kernel."""
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        core, fs = self.tucker_parameters()
        y = tucker_conv2d(
            x,
            core,
            fs,
            self.bias,
            stride=self.stride,
            padding=self.padding,  # type: ignore[arg-type]
            dilation=self.dilation,
            recorder=self._recorder(),
        )
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"ranks={self.ranks}, full_modes={self.full_modes}, bias={self.bias is not None}"
        )

    def dense_kernel(self) -> torch.Tensor:
        """The dense kernel ``(out, in, kh, kw)`` (cost ``O(∏ n · Σ r)``; export/tests)."""
        core, fs = self.point()
        t = core
        for k, f in enumerate(fs):
            t = mode_dot(t, f, k)
        return t

    @classmethod
    def from_dense(
        cls,
        conv: nn.Conv2d,
        ranks: int | Sequence[int | None] | None = None,
        tol: float | None = None,
        *,
        full_modes: Sequence[int] = (2, 3),
        max_ranks: Sequence[int] | None = None,
        record_projected_grads: bool = True,
    ) -> TuckerConv2d:
        """Truncated HOSVD of ``conv.weight`` (see :func:`hosvd`; neither ``ranks`` nor
        ``tol``: exact)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("conv must have groups=1, padding_mode='zeros' and integer padding")
        W = conv.weight.detach()
        dims = tuple(int(d) for d in W.shape)
        if ranks is not None:
            rs, fm, mrs = resolve_tucker_ranks(dims, ranks, full_modes, max_ranks)
            core, factors = hosvd(W, rs, full_modes=fm)
        else:
            _, fm, mrs = resolve_tucker_ranks(dims, 1, full_modes, max_ranks)
            core, factors = hosvd(W, tol=tol, full_modes=fm, max_ranks=mrs)
        with skip_random_init():
            layer = cls(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                tuple(int(s) for s in core.shape),
                full_modes=fm,
                max_ranks=mrs,
                stride=conv.stride,
                padding=conv.padding,
                dilation=conv.dilation,
                bias=conv.bias is not None,
                device=W.device,
                dtype=W.dtype,
                record_projected_grads=record_projected_grads,
            )
        layer.set_point(layer.point()._replace(core=core, factors=tuple(factors)))
        if conv.bias is not None:
            layer.bias.data.copy_(conv.bias.detach())
        return layer

    def to_dense(self) -> nn.Conv2d:
        """A :class:`torch.nn.Conv2d` with the dense kernel."""
        k = self.dense_kernel()
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=self.bias is not None,
            device=k.device,
            dtype=k.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(k)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv
