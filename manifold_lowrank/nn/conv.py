r"""Matrix-factorised 2-D convolution: the kernel ``(out, in, kh, kw)`` as ``U S Vᵀ``."""

from __future__ import annotations

import math

import torch
from torch import nn

from manifold_lowrank.linalg import truncated_svd
from manifold_lowrank.nn._utils import (
    check_factory_kwargs,
    check_max_rank,
    check_rank,
    init_is_skipped,
    kaiming_uniform_singular_values,
    random_orthonormal,
    set_conv_geometry,
    skip_random_init,
)
from manifold_lowrank.nn.base import LowRankModule
from manifold_lowrank.nn.functional import low_rank_conv2d
from manifold_lowrank.nn.linear import make_rank_rule

__all__ = ["LowRankConv2d"]


class LowRankConv2d(LowRankModule):
    r"""2-D convolution whose kernel, as the ``(out, in·kh·kw)`` matrix, is ``U S Vᵀ``.

    Forward: ``z = conv2d(x, Vᵀ reshaped to (r, in, kh, kw))`` (an ``r``-channel
    convolution with the layer's stride/padding/dilation), then a ``1×1`` convolution
    with ``U S`` plus bias. The recorded projected gradients of
    ``G = ∂L/∂W`` (``W`` as the ``m×n`` matrix, ``m = out``, ``n = in·kh·kw``) are
    ``GV = Σ_{b,p} δy_{bp} z_{bp}ᵀ``, ``UᵀGV = Σ a zᵀ`` with ``a = Uᵀδy``, and ``GᵀU``
    = the weight gradient of ``conv(x, ·)`` for output gradient ``a``
    (:func:`torch.nn.grad.conv2d_weight`), reshaped to ``n×r``.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts (``groups = 1`` only).
    kernel_size : int or pair of int
        ``(kh, kw)``, each ``≥ 1``.
    rank : int
        Initial rank in ``[1, max_rank]``; ``max_rank ≤ min(out, in·kh·kw)``.
    stride, padding, dilation : int or pair of int
        As :class:`torch.nn.Conv2d` (padding: integers or ``"valid"``; zero padding).
    groups : int
        Must be 1.
    bias : bool
        Learnable bias (initialised like :class:`torch.nn.Conv2d`).
    max_rank, device, dtype, generator, record_projected_grads
        As :class:`~manifold_lowrank.nn.LowRankLinear`.

    Notes
    -----
    Initialisation as :class:`~manifold_lowrank.nn.LowRankLinear` with fan-in
    ``n = in·kh·kw``. Input ``(B, in, H, W)`` or unbatched ``(in, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        rank: int,
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        max_rank: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        record_projected_grads: bool = True,
    ) -> None:
        super().__init__()
        cin, cout, kh, kw = set_conv_geometry(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups
        )
        m, n = cout, cin * kh * kw
        mr = check_max_rank(max_rank, min(m, n))
        r = check_rank(
            "rank", rank, mr, limit_name="max_rank" if max_rank else "min(out, in*kh*kw)"
        )
        dtype, device = check_factory_kwargs(dtype, device, generator)
        kw_ = {"generator": generator, "device": device, "dtype": dtype}
        if init_is_skipped():
            U = torch.eye(m, r, device=device, dtype=dtype)
            V = torch.eye(n, r, device=device, dtype=dtype)
            S = torch.eye(r, device=device, dtype=dtype)
        else:
            U = random_orthonormal(m, r, **kw_)
            V = random_orthonormal(n, r, **kw_)
            S = torch.diag(kaiming_uniform_singular_values(m, n, r, **kw_))
        self._init_factors(U, S, V, max_rank=mr, record_projected_grads=record_projected_grads)
        if bias:
            bound = 1.0 / math.sqrt(n)
            self.bias = nn.Parameter((2.0 * torch.rand(m, **kw_) - 1.0) * bound)
        else:
            self.register_parameter("bias", None)

    @property
    def kernel_shape(self) -> tuple[int, int, int]:
        """``(in, kh, kw)``: the shape of one output channel's kernel."""
        return (self.in_channels, *self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution of ``x`` ``(B, in, H, W)`` or ``(in, H, W)`` with ``U S Vᵀ``."""
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        U, S, V = self.factors()
        y = low_rank_conv2d(
            x,
            U,
            S,
            V,
            self.bias,
            kernel_shape=self.kernel_shape,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            recorder=self._recorder(),
        )
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"rank={self.rank}, max_rank={self.max_rank}, bias={self.bias is not None}"
        )

    @classmethod
    def from_dense(
        cls,
        conv: nn.Conv2d,
        rank: int | None = None,
        tol: float | None = None,
        *,
        max_rank: int | None = None,
        record_projected_grads: bool = True,
    ) -> LowRankConv2d:
        """Truncated SVD of the ``(out, in·kh·kw)`` kernel matrix of ``conv``.

        ``rank``/``tol``/``max_rank`` as :meth:`LowRankLinear.from_dense` (neither:
        exact). ``conv`` must have ``groups=1``, zero padding and integer padding.
        Cost ``O(out · in·kh·kw · min(out, in·kh·kw))``.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("conv must have groups=1, padding_mode='zeros' and integer padding")
        W = conv.weight.detach()
        m = W.shape[0]
        Wm = W.reshape(m, -1)
        n = Wm.shape[1]
        mr = check_max_rank(max_rank, min(m, n))
        u, s, v = truncated_svd(Wm, make_rank_rule(rank, tol, min(m, n), max_rank=mr))
        with skip_random_init():
            layer = cls(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                int(s.shape[0]),
                stride=conv.stride,
                padding=conv.padding,
                dilation=conv.dilation,
                bias=conv.bias is not None,
                max_rank=mr,
                device=W.device,
                dtype=W.dtype,
                record_projected_grads=record_projected_grads,
            )
        layer.set_point(layer.point()._replace(U=u, S=torch.diag(s), V=v))
        if conv.bias is not None:
            layer.bias.data.copy_(conv.bias.detach())
        return layer

    def to_dense(self) -> nn.Conv2d:
        """A :class:`torch.nn.Conv2d` with the kernel ``U S Vᵀ`` reshaped (cost ``O(mnr)``)."""
        U, S, V = self.point()
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=self.bias is not None,
            device=U.device,
            dtype=U.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_((U @ S @ V.transpose(0, 1)).reshape(conv.weight.shape))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv
