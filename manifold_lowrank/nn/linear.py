r"""Low-rank linear layer ``y = ((x V) Sᵀ) Uᵀ + b`` with one-pass projected gradients."""

from __future__ import annotations

import math

import torch
from torch import nn

from manifold_lowrank.linalg import RankRule, truncated_svd
from manifold_lowrank.nn._utils import (
    check_factory_kwargs,
    check_max_rank,
    check_positive_int,
    check_rank,
    init_is_skipped,
    kaiming_uniform_singular_values,
    random_orthonormal,
    skip_random_init,
)
from manifold_lowrank.nn.base import LowRankModule
from manifold_lowrank.nn.functional import low_rank_linear

__all__ = ["LowRankLinear", "make_rank_rule"]


def make_rank_rule(
    rank: int | None, tol: float | None, full: int, *, max_rank: int | None = None
) -> RankRule:
    """Rank rule for the ``from_dense`` constructors.

    ``rank`` (fixed, clipped to ``full``), or ``tol`` (relative Frobenius tail
    tolerance, :class:`~manifold_lowrank.linalg.RankRule` ``rtol``), or neither (full
    rank: exact). ``max_rank`` clamps the result.
    """
    if rank is not None and tol is not None:
        raise ValueError("give rank or tol, not both")
    if rank is not None:
        check_rank("rank", rank, full)
        return RankRule(rank=rank, max_rank=max_rank)
    if tol is not None:
        return RankRule(rtol=tol, max_rank=max_rank)
    return RankRule(rank=full if max_rank is None else min(full, max_rank))


class LowRankLinear(LowRankModule):
    r"""Linear layer with weight ``W = U S Vᵀ`` kept in factored form.

    ``y = ((x V) Sᵀ) Uᵀ + b`` for ``x`` of shape ``(..., in_features)``, computed by
    :class:`~manifold_lowrank.nn.functional.LowRankLinearFunction`, which returns the
    ordinary gradients of ``U``, ``S``, ``V`` (any torch optimizer works) and, while
    :attr:`record_projected_grads` is true, accumulates
    ``ProjectedGradients(GV, UtGV, GtU)`` of ``G = ∂L/∂W`` on :attr:`projected_grads`
    (``GV = δyᵀ z``, ``GᵀU = xᵀ a``, ``UᵀGV = aᵀ z`` with ``z = xV``, ``a = δy U``; no
    ``m×n`` matrix, no ``S⁻¹``). Cost per forward/backward ``O(N (m + n) r + N r²)``.

    Parameters
    ----------
    in_features, out_features : int
        ``n`` and ``m``.
    rank : int
        Initial rank, ``1 ≤ rank ≤ max_rank``.
    max_rank : int, optional
        Largest rank reachable by :meth:`set_point` (default ``min(m, n)``).
    bias : bool
        Learnable bias ``b ∈ R^m`` (initialised like :class:`torch.nn.Linear`).
    device, dtype
        Factory arguments. Factors and bias share ``dtype`` (default
        :func:`torch.get_default_dtype`). Activations of another floating dtype
        (e.g. bfloat16 with float32 factors) are cast inside the autograd function and
        the output is cast back to the activation dtype.
    generator : torch.Generator, optional
        Seeds the initialisation.
    record_projected_grads : bool
        Accumulate projected gradients in backward (default ``True``).

    Notes
    -----
    Initialisation: ``U``, ``V`` are sign-fixed QR factors of Gaussian matrices;
    ``S = diag(σ₁, …, σ_r)`` holds the ``r`` largest singular values of a matrix drawn
    like ``nn.Linear.weight`` (``U(−1/√n, 1/√n)`` entries), so the layer starts at the
    scale of a dense layer's dominant part. This costs one ``O(mn min(m, n))`` SVD at
    construction.

    Examples
    --------
    >>> layer = LowRankLinear(20, 10, rank=3, generator=torch.Generator().manual_seed(0))
    >>> layer(torch.randn(4, 20)).sum().backward()
    >>> [tuple(t.shape) for t in layer.projected_grads]
    [(10, 3), (3, 3), (20, 3)]
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        *,
        max_rank: int | None = None,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        record_projected_grads: bool = True,
    ) -> None:
        super().__init__()
        n = check_positive_int("in_features", in_features)
        m = check_positive_int("out_features", out_features)
        full = min(m, n)
        mr = check_max_rank(max_rank, full)
        r = check_rank("rank", rank, mr, limit_name="max_rank" if max_rank else "")
        dtype, device = check_factory_kwargs(dtype, device, generator)
        kw = {"generator": generator, "device": device, "dtype": dtype}
        if init_is_skipped():  # from_dense: the factors are overwritten right away
            S = torch.eye(r, device=device, dtype=dtype)
            U, V = (
                torch.eye(m, r, device=device, dtype=dtype),
                torch.eye(n, r, device=device, dtype=dtype),
            )
        else:
            U = random_orthonormal(m, r, **kw)
            V = random_orthonormal(n, r, **kw)
            S = torch.diag(kaiming_uniform_singular_values(m, n, r, **kw))
        self.in_features, self.out_features = n, m
        self._init_factors(U, S, V, max_rank=mr, record_projected_grads=record_projected_grads)
        if bias:
            bound = 1.0 / math.sqrt(n)
            b = (2.0 * torch.rand(m, **kw) - 1.0) * bound
            self.bias = nn.Parameter(b)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``((x V) Sᵀ) Uᵀ + b`` for ``x`` of shape ``(..., in_features)``."""
        U, S, V = self.factors()
        return low_rank_linear(x, U, S, V, self.bias, recorder=self._recorder())

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, max_rank={self.max_rank}, bias={self.bias is not None}"
        )

    @classmethod
    def from_dense(
        cls,
        linear: nn.Linear,
        rank: int | None = None,
        tol: float | None = None,
        *,
        max_rank: int | None = None,
        record_projected_grads: bool = True,
    ) -> LowRankLinear:
        """Truncated SVD of ``linear.weight`` (best approximation, Eckart–Young).

        Parameters
        ----------
        linear : torch.nn.Linear
            Dense layer (unchanged).
        rank : int, optional
            Fixed rank in ``[1, min(m, n)]``.
        tol : float, optional
            Relative tolerance: smallest rank with ``‖W − W_r‖_F ≤ tol ‖W‖_F``.
            With neither ``rank`` nor ``tol`` the conversion is exact (full rank).
        max_rank : int, optional
            Cap of the layer (default ``min(m, n)``); also clamps the chosen rank.

        Returns
        -------
        LowRankLinear
            Same device and dtype as ``linear.weight``. Cost ``O(mn min(m, n))``.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        W = linear.weight.detach()
        m, n = W.shape
        mr = check_max_rank(max_rank, min(m, n))
        u, s, v = truncated_svd(W, make_rank_rule(rank, tol, min(m, n), max_rank=mr))
        r = int(s.shape[0])
        with skip_random_init():
            layer = cls(
                n,
                m,
                r,
                max_rank=mr,
                bias=linear.bias is not None,
                device=W.device,
                dtype=W.dtype,
                record_projected_grads=record_projected_grads,
            )
        layer.set_point(layer.point()._replace(U=u, S=torch.diag(s), V=v))
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer

    def to_dense(self) -> nn.Linear:
        """A :class:`torch.nn.Linear` with weight ``U S Vᵀ`` (cost ``O(mnr)``)."""
        U, S, V = self.point()
        lin = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=U.device,
            dtype=U.dtype,
        )
        with torch.no_grad():
            lin.weight.copy_(U @ S @ V.transpose(0, 1))
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin
