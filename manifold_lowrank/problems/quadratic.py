r"""Strongly convex quadratics over a weight matrix."""

from __future__ import annotations

import torch

from manifold_lowrank.linalg import orthonormalize
from manifold_lowrank.problems.base import MatrixProblem

__all__ = ["MatrixQuadratic"]


class MatrixQuadratic(MatrixProblem):
    r"""``f(W) = ½ (w − w*)ᵀ Q (w − w*) + f*`` with ``w = vec(W)`` (row-major, ``W.reshape(-1)``).

    ``∇f(W) = mat(Q (w − w*))``, ``L = λ_max(Q)``, ``μ = λ_min(Q)``, optimum ``(W*, f*)``.

    Parameters
    ----------
    hessian : torch.Tensor
        Symmetric positive definite ``Q`` of size ``(mn, mn)``.
    optimum : torch.Tensor
        ``W*`` ``(m, n)``.
    f_star : float
        Optimal value.
    """

    def __init__(self, hessian: torch.Tensor, optimum: torch.Tensor, f_star: float = 0.0) -> None:
        if optimum.ndim != 2:
            raise ValueError(f"optimum must be an (m, n) matrix, got shape {tuple(optimum.shape)}")
        d = optimum.numel()
        if tuple(hessian.shape) != (d, d):
            raise ValueError(f"hessian must have shape ({d}, {d}), got {tuple(hessian.shape)}")
        if not torch.allclose(hessian, hessian.T, atol=0, rtol=1e-12):
            raise ValueError("hessian must be symmetric")
        ev = torch.linalg.eigvalsh(hessian)
        if not float(ev[0]) > 0:
            raise ValueError(
                f"hessian must be positive definite, smallest eigenvalue {float(ev[0])}"
            )
        self.Q = hessian
        self.W_star = optimum
        self.f_star = float(f_star)
        self.shape = (int(optimum.shape[0]), int(optimum.shape[1]))
        self.smoothness = float(ev[-1])
        self.strong_convexity = float(ev[0])

    @classmethod
    def random(
        cls,
        m: int,
        n: int,
        *,
        condition: float = 10.0,
        smoothness: float = 1.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        optimum_scale: float = 1.0,
    ) -> MatrixQuadratic:
        r"""A random instance: ``Q = O diag(λ) Oᵀ`` with Haar ``O`` and ``λ`` log-spaced in
        ``[L/κ, L]``; ``W*`` Gaussian times ``optimum_scale``, ``f* = 0``."""
        if not condition >= 1:
            raise ValueError(f"condition must be >= 1, got {condition!r}")
        if not smoothness > 0:
            raise ValueError(f"smoothness must be > 0, got {smoothness!r}")
        d = m * n
        o = orthonormalize(torch.randn(d, d, generator=generator, dtype=dtype))
        lam = smoothness * torch.logspace(
            -torch.log10(torch.tensor(float(condition))).item(), 0.0, d, dtype=dtype
        )
        q = (o * lam) @ o.T
        q = 0.5 * (q + q.T)
        w_star = optimum_scale * torch.randn(m, n, generator=generator, dtype=dtype)
        return cls(q, w_star, 0.0)

    def loss(self, W, batch=None):
        if batch is not None:
            raise ValueError("MatrixQuadratic has no samples; batch must be None")
        self._check_W(W)
        e = (W - self.W_star.to(W)).reshape(-1)
        return 0.5 * e @ (self.Q.to(W) @ e) + self.f_star

    def grad(self, W, batch=None):
        if batch is not None:
            raise ValueError("MatrixQuadratic has no samples; batch must be None")
        self._check_W(W)
        e = (W - self.W_star.to(W)).reshape(-1)
        return (self.Q.to(W) @ e).reshape(self.shape)

    def optimum(self):
        return self.W_star, self.f_star
