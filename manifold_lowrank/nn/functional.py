r"""Custom autograd functions that return the *projected* gradients of one backward pass.

Every low-rank layer of :mod:`manifold_lowrank.nn` computes its output through one of
these functions. Their backward returns the ordinary gradients of the factors (so any
:class:`torch.optim.Optimizer` works) and, when a ``recorder`` callable is given, also
hands it the projections of the dense weight gradient ``G = ∂L/∂W`` that the
integrators need — without ever forming ``G`` (``m×n``) and without inverting ``S``.

Matrix case (``W = U S Vᵀ``, ``U`` ``m×r``, ``S`` ``r×r``, ``V`` ``n×r``), with the
batch flattened to ``N`` rows, ``x`` ``(N, n)``, ``δy = ∂L/∂y`` ``(N, m)``:

.. math::

    z = x V,\quad y = s\,(z S^\top) U^\top + b,\quad a = s\,\delta y\,U,\qquad
    G = s\,\delta y^\top x,

    GV = s\,\delta y^\top z,\quad U^\top G V = a^\top z,\quad G^\top U = x^\top a,

    \partial_U L = GV\,S^\top,\quad \partial_S L = U^\top G V,\quad
    \partial_V L = G^\top U\,S,\quad \partial_x L = (a S) V^\top.

``s`` is a constant ``scaling`` (1 for plain layers; the adapter scaling for adapters, in
which case ``G = ∂L/∂ΔW``). Cost of a backward: ``O(N (m + n) r + N r²)``, the same order
as the forward pass.

Layout of the skinny products: every product with the long batch dimension ``N`` and
the small rank ``r`` is formed with ``r`` as the *row* dimension of its result, e.g.
``zᵀ = Vᵀ xᵀ`` (``r×N``), ``GV = (zᵀ δy)ᵀ``, ``Gᵀ U = (aᵀ x)ᵀ``, and transposed views are
passed on. The arithmetic is identical; only the BLAS call differs. This matters on CPU:
torch's MKL ``sgemm`` is 10–30× slower for a ``K×N · N×r`` product with ``r ≤ 8``
than for the same product computed as ``r×N · N×K`` (float32, ``N = 2048``, ``K = 1536``,
``r = 8``: 19.5 ms against 1.9 ms, one thread on the reference machine). A LoRA layer built
from two ``nn.Linear`` pays it in ``∂L/∂B = δyᵀ (A x)``. ``benchmarks/finetune_minilm.py``
shows the effect on a whole fine-tuning step.

Mixed precision: activations may be float16/bfloat16 while the factors are
float32/float64 (no autocast needed). The functions cast the activations to the factor
dtype inside the forward, compute in the factor dtype, and cast the output back to the
activation dtype; in the backward the incoming gradient is cast to the factor dtype and
the input gradient back to the activation dtype. Only the original (low-precision)
activation is saved. An enclosing :func:`torch.autocast` region is disabled inside.

The ``recorder`` receives a :class:`~manifold_lowrank.manifolds.ProjectedGradients`
(matrix functions) or :class:`~manifold_lowrank.manifolds.TuckerProjectedGradients`
(Tucker function) once per backward through the function; the layers use it to
*accumulate* (add) the projections, like ``.grad``. ``torch.compile`` graph-breaks on the
Python recorder; compile the rest of the model around these layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

from manifold_lowrank.manifolds.types import ProjectedGradients, TuckerProjectedGradients
from manifold_lowrank.nn._utils import autocast_disabled, mode_dot

__all__ = [
    "LowRankConv2dFunction",
    "LowRankLinearFunction",
    "Recorder",
    "TuckerConv2dFunction",
    "low_rank_conv2d",
    "low_rank_linear",
    "tucker_conv2d",
]

Recorder = Callable[[Any], None]
"""A callable receiving the projected gradients of one backward pass."""


def _check_factors(u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> None:
    r = s.shape[-1]
    if u.dim() != 2 or s.dim() != 2 or v.dim() != 2 or s.shape != (r, r):
        raise ValueError(
            f"U, S, V must be (m, r), (r, r), (n, r), got {tuple(u.shape)}, "
            f"{tuple(s.shape)}, {tuple(v.shape)}"
        )
    if u.shape[1] != r or v.shape[1] != r:
        raise ValueError(
            f"U, S, V ranks disagree: {tuple(u.shape)}, {tuple(s.shape)}, {tuple(v.shape)}"
        )
    if not (u.dtype == s.dtype == v.dtype):
        raise TypeError(f"U, S, V must share a dtype, got {u.dtype}, {s.dtype}, {v.dtype}")


class LowRankLinearFunction(torch.autograd.Function):
    """``y = s ((x V) Sᵀ) Uᵀ + b`` with projected gradients (see module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        U: torch.Tensor,
        S: torch.Tensor,
        V: torch.Tensor,
        bias: torch.Tensor | None,
        scaling: float,
        recorder: Recorder | None,
    ) -> torch.Tensor:
        m, n = U.shape[0], V.shape[0]
        lead = x.shape[:-1]
        with autocast_disabled(x.device.type):
            x2 = x.reshape(-1, n).to(U.dtype)
            # r×N layout for the skinny products (module docstring, 'Layout'): zᵀ = Vᵀ xᵀ
            zt = V.transpose(0, 1) @ x2.transpose(0, 1)
            tt = S @ zt
            if scaling != 1.0:
                tt = tt * scaling
            y = tt.transpose(0, 1) @ U.transpose(0, 1)
            if bias is not None:
                y = y + bias.to(y.dtype)
        ctx.save_for_backward(x, U, S, V, zt)
        ctx.scaling = scaling
        ctx.recorder = recorder
        return y.reshape(*lead, m).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, U, S, V, zt = ctx.saved_tensors
        s = ctx.scaling
        rec = ctx.recorder
        need_x, need_u, need_s, need_v, need_b = ctx.needs_input_grad[:5]
        m, n = U.shape[0], V.shape[0]
        gx = gu = gs = gv = gb = None
        with autocast_disabled(dy.device.type):
            dy2 = dy.reshape(-1, m).to(U.dtype)
            # N-long products are formed with r as the row dimension (docstring, 'Layout')
            at = U.transpose(0, 1) @ dy2.transpose(0, 1)  # aᵀ = Uᵀ δyᵀ  (r × N)
            if s != 1.0:
                at = at * s
            GV = UtGV = GtU = None
            if need_u or rec is not None:
                GV = (zt @ dy2).transpose(0, 1)  # δyᵀ z = (zᵀ δy)ᵀ
                if s != 1.0:
                    GV = GV * s
            if need_s or rec is not None:
                UtGV = at @ zt.transpose(0, 1)
            if need_v or rec is not None:
                GtU = (at @ x.reshape(-1, n).to(U.dtype)).transpose(0, 1)  # xᵀ a = (aᵀ x)ᵀ
            if need_x:
                gx = (S.transpose(0, 1) @ at).transpose(0, 1) @ V.transpose(0, 1)
                gx = gx.reshape(x.shape).to(x.dtype)
            if need_u:
                gu = GV @ S.transpose(0, 1)
            if need_s:
                gs = UtGV
            if need_v:
                gv = GtU @ S
            if need_b:
                gb = dy2.sum(0)
        if rec is not None:
            rec(ProjectedGradients(GV, UtGV, GtU))
        return gx, gu, gs, gv, gb, None, None


def low_rank_linear(
    x: torch.Tensor,
    U: torch.Tensor,
    S: torch.Tensor,
    V: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    scaling: float = 1.0,
    recorder: Recorder | None = None,
) -> torch.Tensor:
    r"""``y = scaling · ((x V) Sᵀ) Uᵀ + bias`` with one-pass projected gradients.

    Parameters
    ----------
    x : torch.Tensor
        ``(..., n)`` input, any leading shape, any floating dtype (cast to the factor
        dtype inside; the output has ``x``'s dtype).
    U, S, V : torch.Tensor
        ``(m, r)``, ``(r, r)``, ``(n, r)`` factors, one dtype. ``r = 0`` is allowed
        (the product is then zero).
    bias : torch.Tensor, optional
        ``(m,)``.
    scaling : float
        Constant factor ``s`` of the low-rank product.
    recorder : callable, optional
        Called once per backward with
        ``ProjectedGradients(GV, UtGV, GtU)`` of ``G = s δyᵀ x`` (``= ∂L/∂(U S Vᵀ)``).

    Returns
    -------
    torch.Tensor
        ``(..., m)``. Forward cost ``O(N (m + n) r + N r²)``; backward the same order.
    """
    _check_factors(U, S, V)
    if x.shape[-1] != V.shape[0]:
        raise ValueError(
            f"x must have last dimension in_features = {V.shape[0]}, got shape {tuple(x.shape)}"
        )
    return LowRankLinearFunction.apply(x, U, S, V, bias, float(scaling), recorder)


class LowRankConv2dFunction(torch.autograd.Function):
    """Matrix-factorised 2-D convolution with projected gradients.

    The kernel ``(out, in, kh, kw)`` is the matrix ``W = U S Vᵀ`` of shape
    ``(out, in·kh·kw)``; ``V`` reshaped to ``(r, in, kh, kw)`` is an ``r``-channel
    convolution, ``U S`` a ``1×1`` convolution.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        U: torch.Tensor,
        S: torch.Tensor,
        V: torch.Tensor,
        bias: torch.Tensor | None,
        scaling: float,
        kernel_shape: tuple[int, int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        recorder: Recorder | None,
    ) -> torch.Tensor:
        r = S.shape[0]
        with autocast_disabled(x.device.type):
            xf = x.to(U.dtype)
            vk = V.transpose(0, 1).reshape(r, *kernel_shape)
            z = F.conv2d(xf, vk, None, stride, padding, dilation)
            k = U @ S
            if scaling != 1.0:
                k = k * scaling
            y = F.conv2d(z, k[:, :, None, None], bias)
        ctx.save_for_backward(x, U, S, V, z)
        ctx.scaling = scaling
        ctx.conv = (kernel_shape, stride, padding, dilation)
        ctx.recorder = recorder
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, U, S, V, z = ctx.saved_tensors
        s = ctx.scaling
        rec = ctx.recorder
        kernel_shape, stride, padding, dilation = ctx.conv
        need_x, need_u, need_s, need_v, need_b = ctx.needs_input_grad[:5]
        r = S.shape[0]
        gx = gu = gs = gv = gb = None
        with autocast_disabled(dy.device.type):
            dyf = dy.to(U.dtype)
            a = F.conv2d(dyf, U.transpose(0, 1)[:, :, None, None])  # Uᵀ δy per position
            if s != 1.0:
                a = a * s
            GV = UtGV = GtU = None
            if need_u or rec is not None:
                GV = torch.einsum("bohw,brhw->or", dyf, z)
                if s != 1.0:
                    GV = GV * s
            if need_s or rec is not None:
                UtGV = torch.einsum("brhw,bshw->rs", a, z)
            if need_v or rec is not None:
                xf = x.to(U.dtype)
                gk = conv2d_weight(xf, (r, *kernel_shape), a, stride, padding, dilation)
                GtU = gk.reshape(r, -1).transpose(0, 1)
            if need_x:
                dz = torch.einsum("bshw,sr->brhw", a, S)
                vk = V.transpose(0, 1).reshape(r, *kernel_shape)
                gx = conv2d_input(x.shape, vk, dz, stride, padding, dilation).to(x.dtype)
            if need_u:
                gu = GV @ S.transpose(0, 1)
            if need_s:
                gs = UtGV
            if need_v:
                gv = GtU @ S
            if need_b:
                gb = dyf.sum((0, 2, 3))
        if rec is not None:
            rec(ProjectedGradients(GV, UtGV, GtU))
        return gx, gu, gs, gv, gb, None, None, None, None, None, None


def low_rank_conv2d(
    x: torch.Tensor,
    U: torch.Tensor,
    S: torch.Tensor,
    V: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    kernel_shape: tuple[int, int, int],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    scaling: float = 1.0,
    recorder: Recorder | None = None,
) -> torch.Tensor:
    r"""2-D convolution with the kernel ``W = scaling · U S Vᵀ`` (matrix form).

    Parameters
    ----------
    x : torch.Tensor
        ``(B, in, H, W)``.
    U, S, V : torch.Tensor
        ``(out, r)``, ``(r, r)``, ``(in·kh·kw, r)``.
    bias : torch.Tensor, optional
        ``(out,)``.
    kernel_shape : tuple of int
        ``(in, kh, kw)``.
    stride, padding, dilation : pair of int
        As in :func:`torch.nn.functional.conv2d` (``groups = 1``, zero padding).
    scaling : float
        Constant factor of the kernel.
    recorder : callable, optional
        Receives ``ProjectedGradients(GV, UtGV, GtU)`` with ``G = ∂L/∂W`` reshaped to
        ``(out, in·kh·kw)``: ``GV = s Σ_{b,p} δy_{bp} z_{bp}ᵀ`` (``z = conv(x, V)``),
        ``UᵀGV = Σ a zᵀ`` and ``GᵀU`` = the weight gradient of a convolution of ``x``
        with output gradient ``a = s Uᵀ δy`` (:func:`torch.nn.grad.conv2d_weight`).

    Returns
    -------
    torch.Tensor
        ``(B, out, H', W')``. Cost: an ``r``-channel convolution plus ``O(B H'W' out r)``.
    """
    _check_factors(U, S, V)
    if x.dim() != 4 or x.shape[1] != kernel_shape[0]:
        raise ValueError(f"x must be (batch, {kernel_shape[0]}, H, W), got shape {tuple(x.shape)}")
    return LowRankConv2dFunction.apply(
        x,
        U,
        S,
        V,
        bias,
        float(scaling),
        tuple(kernel_shape),
        stride,
        padding,
        dilation,
        recorder,
    )


class TuckerConv2dFunction(torch.autograd.Function):
    r"""Tucker-factorised convolution ``W = K ×₁ U₁ ×₂ U₂`` with ``K = C ×₃ U₃ ×₄ U₄``.

    Inputs are ``x``, the spatial core ``K`` ``(r₁, r₂, kh, kw)`` (built from the core and
    the two small spatial factors by ordinary autograd ops), ``U₁`` ``(out, r₁)``,
    ``U₂`` ``(in, r₂)``, ``bias``; ``U₃``, ``U₄`` are passed detached and are used only
    to project the recorded gradients.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        K: torch.Tensor,
        U1: torch.Tensor,
        U2: torch.Tensor,
        bias: torch.Tensor | None,
        scaling: float,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        U3: torch.Tensor,
        U4: torch.Tensor,
        recorder: Recorder | None,
    ) -> torch.Tensor:
        with autocast_disabled(x.device.type):
            xf = x.to(K.dtype)
            x2 = F.conv2d(xf, U2.transpose(0, 1)[:, :, None, None])
            q = F.conv2d(x2, K, None, stride, padding, dilation)
            u1 = U1 * scaling if scaling != 1.0 else U1
            y = F.conv2d(q, u1[:, :, None, None], bias)
        ctx.save_for_backward(x, x2, q, K, U1, U2, U3, U4)
        ctx.scaling = scaling
        ctx.conv = (stride, padding, dilation)
        ctx.recorder = recorder
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, x2, q, K, U1, U2, U3, U4 = ctx.saved_tensors
        s = ctx.scaling
        rec = ctx.recorder
        stride, padding, dilation = ctx.conv
        need_x, need_k, need_u1, need_u2, need_b = ctx.needs_input_grad[:5]
        gx = gk = gu1 = gu2 = gb = None
        with autocast_disabled(dy.device.type):
            dyf = dy.to(K.dtype)
            dq = F.conv2d(dyf, U1.transpose(0, 1)[:, :, None, None])
            if s != 1.0:
                dq = dq * s
            H12 = None  # G ×₁ U₁ᵀ ×₂ U₂ᵀ = ∂L/∂K
            if need_k or rec is not None:
                H12 = conv2d_weight(x2, tuple(K.shape), dq, stride, padding, dilation)
                gk = H12 if need_k else None
            if need_u1:
                gu1 = torch.einsum("bohw,brhw->or", dyf, q)
                if s != 1.0:
                    gu1 = gu1 * s
            xf = None
            if need_x or need_u2:
                dx2 = conv2d_input(x2.shape, K, dq, stride, padding, dilation)
                if need_u2:
                    xf = x.to(K.dtype)
                    gu2 = torch.einsum("bchw,brhw->cr", xf, dx2)
                if need_x:
                    gx = F.conv2d(dx2, U2[:, :, None, None]).to(x.dtype)
            if need_b:
                gb = dyf.sum((0, 2, 3))
            if rec is not None:
                if xf is None:
                    xf = x.to(K.dtype)
                r1, r2, kh, kw = K.shape
                P0 = conv2d_weight(x2, (U1.shape[0], r2, kh, kw), dyf, stride, padding, dilation)
                if s != 1.0:
                    P0 = P0 * s
                P1 = conv2d_weight(xf, (r1, U2.shape[0], kh, kw), dq, stride, padding, dilation)
                u3t, u4t = U3.transpose(0, 1), U4.transpose(0, 1)

                def spatial(t: torch.Tensor) -> torch.Tensor:
                    return mode_dot(mode_dot(t, u3t, 2), u4t, 3)

                core = spatial(H12)
                partials = (
                    spatial(P0),
                    spatial(P1),
                    mode_dot(H12, u4t, 3),
                    mode_dot(H12, u3t, 2),
                )
        if rec is not None:
            rec(TuckerProjectedGradients(core, partials))
        return gx, gk, gu1, gu2, gb, None, None, None, None, None, None, None


def tucker_conv2d(
    x: torch.Tensor,
    core: torch.Tensor,
    factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    bias: torch.Tensor | None = None,
    *,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    scaling: float = 1.0,
    recorder: Recorder | None = None,
) -> torch.Tensor:
    r"""2-D convolution with the Tucker kernel ``W = s · C ×₁ U₁ ×₂ U₂ ×₃ U₃ ×₄ U₄``.

    Computed without the dense kernel: a ``1×1`` convolution with ``U₂ᵀ`` (``in → r₂``),
    a ``kh×kw`` convolution with ``K = C ×₃ U₃ ×₄ U₄`` (``r₂ → r₁``; the spatial factors
    are tiny so they are folded into the core), then a ``1×1`` convolution with ``U₁``
    (``r₁ → out``). Zero padding commutes with the ``1×1`` convolution, so this equals
    the dense convolution exactly.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, in, H, W)``.
    core : torch.Tensor
        ``(r₁, r₂, r₃, r₄)``.
    factors : tuple of torch.Tensor
        ``U₁`` ``(out, r₁)``, ``U₂`` ``(in, r₂)``, ``U₃`` ``(kh, r₃)``, ``U₄`` ``(kw, r₄)``.
    bias : torch.Tensor, optional
        ``(out,)``.
    stride, padding, dilation : pair of int
        As in :func:`torch.nn.functional.conv2d` (``groups = 1``, zero padding).
    scaling : float
        Constant factor ``s``.
    recorder : callable, optional
        Receives ``TuckerProjectedGradients(core, partials)`` of ``G = ∂L/∂W``
        (``core = G ×_k U_kᵀ`` for all ``k``, ``partials[k] = G ×_{j≠k} U_jᵀ``), from
        three weight-gradient convolutions of reduced channel counts.

    Returns
    -------
    torch.Tensor
        ``(B, out, H', W')``.
    """
    u1, u2, u3, u4 = factors
    if core.dim() != 4:
        raise ValueError(f"core must be 4-D (r1, r2, r3, r4), got shape {tuple(core.shape)}")
    for k, u in enumerate(factors):
        if u.dim() != 2 or u.shape[1] != core.shape[k]:
            raise ValueError(
                f"factors[{k}] must have shape (n_{k + 1}, {core.shape[k]}), got {tuple(u.shape)}"
            )
    if x.dim() != 4 or x.shape[1] != u2.shape[0]:
        raise ValueError(f"x must be (batch, {u2.shape[0]}, H, W), got shape {tuple(x.shape)}")
    with autocast_disabled(x.device.type):  # keep the small spatial core in factor dtype
        K = torch.einsum("abcd,kc,ld->abkl", core, u3, u4)
    return TuckerConv2dFunction.apply(
        x,
        K,
        u1,
        u2,
        bias,
        float(scaling),
        stride,
        padding,
        dilation,
        u3.detach(),
        u4.detach(),
        recorder,
    )
