"""The interface shared by the theory problems: an objective over one weight matrix."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

__all__ = ["MatrixProblem"]


class MatrixProblem(ABC):
    r"""An objective ``f(W)`` over a weight ``W ∈ R^{m×n}`` with one consistent oracle.

    Every problem offers the loss as a differentiable torch expression (so autograd and
    any ``torch.optim`` optimizer can use it) and the analytic gradient; both are the
    same function, and a minibatch loss is an unbiased estimate of the full loss
    (``E_batch f_batch = f`` for uniformly drawn batches; for finite sums the full loss is
    exactly the mean of the per-sample losses). The tests check these identities.

    Attributes
    ----------
    shape : tuple[int, int]
        ``(m, n)``.
    n_samples : int or None
        Number of samples of a finite sum (``None``: no sample structure).
    smoothness : float
        An upper bound ``L`` on ``λ_max(∇²f)`` (the gradient's Lipschitz constant).
    strong_convexity : float
        A lower bound ``μ ≥ 0`` on ``λ_min(∇²f)`` (``0`` when unknown or not convex).
    """

    shape: tuple[int, int]
    n_samples: int | None = None
    smoothness: float
    strong_convexity: float = 0.0

    @abstractmethod
    def loss(self, W: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """``f(W)`` (``batch=None``) or the minibatch loss on the sample indices ``batch``."""

    @abstractmethod
    def grad(self, W: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """Analytic ``∇f(W)`` (or of the minibatch loss), shaped ``(m, n)``."""

    def optimum(self) -> tuple[torch.Tensor, float] | None:
        """``(W*, f*)`` when known in closed form or by a reliable solve, else ``None``."""
        return None

    def sample_batch(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """Uniform minibatch of ``batch_size`` distinct sample indices (finite sums only)."""
        if self.n_samples is None:
            raise ValueError(f"{type(self).__name__} has no samples; batch must be None")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
        if not 1 <= batch_size <= self.n_samples:
            raise ValueError(
                f"batch_size must lie in [1, {self.n_samples}] (n_samples), got {batch_size}"
            )
        return torch.randperm(self.n_samples, generator=generator)[:batch_size]

    def closure(
        self, W: torch.Tensor, batch: torch.Tensor | None = None
    ) -> Callable[[], torch.Tensor]:
        """A ``torch.optim`` closure: ``loss(W, batch).backward()``, returns the loss."""

        def _closure() -> torch.Tensor:
            value = self.loss(W, batch)
            value.backward()
            return value.detach()

        return _closure

    def grad_norm_sq(self, W: torch.Tensor) -> float:
        """``‖∇f(W)‖²_F`` with the full gradient."""
        with torch.no_grad():
            return float((self.grad(W.detach()) ** 2).sum())

    def _check_W(self, W: torch.Tensor) -> None:
        if tuple(W.shape) != tuple(self.shape):
            raise ValueError(f"W must have shape {self.shape}, got {tuple(W.shape)}")
