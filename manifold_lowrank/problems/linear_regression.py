r"""Least-squares linear regression over a weight matrix (the Bernoulli-LoRA setup).

The weight ``W ∈ R^{m×n}`` is the model's parameter vector ``w = vec(W) ∈ R^{mn}``
(row-major), and

.. math::  f(W) = \frac{1}{2N} \|X w − y\|² + λ \sum_j \frac{w_j^2}{1 + w_j^2},

with an optional non-convex regulariser (the papers' choice ``λ = L_data``). The
minibatch loss on a set ``B`` of indices is ``(1/2|B|)‖X_B w − y_B‖² + λ·reg``, so its
gradient ``(1/|B|) X_Bᵀ(X_B w − y_B) + λ ∇reg`` is an unbiased estimate of the full
gradient ``(1/N) Xᵀ(Xw − y) + λ ∇reg``, and both are the gradients of the *same*
function. (The papers' code used a full gradient ``(1/N)(XᵀX w − 2Xᵀb)``-style oracle
that did not match its loss — methods.md §4.4; this class avoids that by construction and
its tests check it.)
"""

from __future__ import annotations

import torch

from manifold_lowrank.problems.base import MatrixProblem

__all__ = ["LinearRegression", "make_regression_pair"]


class LinearRegression(MatrixProblem):
    r"""``f(W) = (1/2N)‖X vec(W) − y‖² + λ Σ_j w_j²/(1 + w_j²)``.

    Parameters
    ----------
    X : torch.Tensor
        ``(N, m·n)`` design matrix.
    y : torch.Tensor
        ``(N,)`` targets.
    shape : tuple[int, int]
        ``(m, n)`` with ``m·n = X.shape[1]``.
    reg : float
        ``λ ≥ 0`` (non-convex regulariser weight).

    Notes
    -----
    ``L = λ_max(XᵀX)/N + 2λ`` (``φ(t) = t²/(1+t²)`` has ``|φ''| ≤ 2``).
    ``μ = λ_min(XᵀX)/N`` when ``λ = 0`` (else 0: the regulariser is not convex).
    Cost of a gradient ``O(N m n)``.
    """

    def __init__(
        self, X: torch.Tensor, y: torch.Tensor, shape: tuple[int, int], *, reg: float = 0.0
    ) -> None:
        if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
            raise ValueError(
                f"X must be (N, d) and y (N,), got {tuple(X.shape)} and {tuple(y.shape)}"
            )
        m, n = shape
        if m * n != X.shape[1]:
            raise ValueError(f"shape {shape} does not match d = {X.shape[1]} features")
        if not reg >= 0:
            raise ValueError(f"reg must be >= 0, got {reg!r}")
        self.X, self.y, self.reg = X, y, float(reg)
        self.shape = (int(m), int(n))
        self.n_samples = int(X.shape[0])
        self._gram: tuple[torch.Tensor, torch.Tensor] | None = None
        Q, _ = self.gram()
        ev = torch.linalg.eigvalsh(Q)
        self.data_smoothness = float(ev[-1])
        self.smoothness = self.data_smoothness + 2.0 * self.reg
        self.strong_convexity = max(float(ev[0]), 0.0) if self.reg == 0 else 0.0

    def _rows(self, batch: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if batch is None:
            return self.X, self.y
        return self.X[batch], self.y[batch]

    def loss(self, W, batch=None):
        self._check_W(W)
        X, y = self._rows(batch)
        w = W.reshape(-1)
        r = X.to(W) @ w - y.to(W)
        out = 0.5 * (r @ r) / X.shape[0]
        if self.reg:
            out = out + self.reg * (w**2 / (1 + w**2)).sum()
        return out

    def gram(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(XᵀX/N, Xᵀy/N)``, computed once (``O(N d²)``) and cached."""
        if self._gram is None:
            N = self.n_samples
            self._gram = (self.X.T @ self.X / N, self.X.T @ self.y / N)
        return self._gram

    def grad(self, W, batch=None):
        """Analytic gradient; the full one uses the cached Gram matrix when ``N > d``
        (``O(d²)`` per call instead of ``O(N d)``; the same function up to rounding)."""
        self._check_W(W)
        w = W.reshape(-1)
        if batch is None and self.n_samples > self.X.shape[1]:
            Q, c = self.gram()
            g = Q.to(W) @ w - c.to(W)
            if self.reg:
                g = g + self.reg * 2 * w / (1 + w**2) ** 2
            return g.reshape(self.shape)
        X, y = self._rows(batch)
        Xw = X.to(W)
        g = Xw.T @ (Xw @ w - y.to(W)) / X.shape[0]
        if self.reg:
            g = g + self.reg * 2 * w / (1 + w**2) ** 2
        return g.reshape(self.shape)

    def optimum(self):
        if self.reg:
            return None
        sol = torch.linalg.lstsq(self.X, self.y.unsqueeze(1)).solution.squeeze(1)
        W = sol.reshape(self.shape)
        return W, float(self.loss(W))


def make_regression_pair(
    m: int,
    n: int,
    *,
    n_samples: int = 20_000,
    finetune_fraction: float = 0.25,
    effective_rank: bool = True,
    finetune_mean: float = 1.0,
    finetune_std: float = 2.0,
    reg: float | str = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> tuple[LinearRegression, LinearRegression, torch.Tensor]:
    r"""The papers' pre-training / fine-tuning pair from :func:`sklearn.datasets.make_regression`.

    Pre-training data: ``n_informative = d``, noise 20, ``effective_rank = d/16``,
    standardised features. Fine-tuning data: ``n_informative = d/2``, noise 50, bias 10,
    ``effective_rank = d/32``, features rescaled to mean 1 and standard deviation 2
    (``d = m n``; the paper's ``d = 4096`` gives its ranks 64 and 32 — methods.md §4.3).
    Returns ``(pretrain, finetune, W0)`` with ``W0`` the pre-training least-squares
    optimum (the fine-tuning starting point).

    Parameters
    ----------
    m, n : int
        Weight shape.
    n_samples : int
        Total samples; ``finetune_fraction`` of them form the fine-tuning set (the paper:
        10⁵ and 10 %; the default here is smaller so that it runs in seconds on a CPU,
        and the fine-tuning set keeps more samples than features).
    effective_rank : bool
        ``False`` drops sklearn's ``effective_rank`` (well-conditioned features).
    finetune_mean, finetune_std : float
        Per-feature mean and standard deviation of the fine-tuning features (the paper:
        1 and 2; the non-zero mean adds one large Hessian eigenvalue ``≈ d·mean²``, so
        ``finetune_mean=0`` gives a much better conditioned problem).
    reg : float or "L"
        Non-convex regulariser weight of the fine-tuning problem; ``"L"`` uses the
        data smoothness constant as in the paper.
    seed : int
        ``random_state`` of both calls (``seed`` and ``seed + 1``).
    """
    from sklearn.datasets import make_regression

    d = m * n
    if not 0 < finetune_fraction < 1:
        raise ValueError(f"finetune_fraction must lie in (0, 1), got {finetune_fraction!r}")
    n_ft = round(n_samples * finetune_fraction)
    n_pt = n_samples - n_ft
    if n_ft < 1 or n_pt < d:
        raise ValueError(f"n_samples={n_samples} too small: pre-training needs >= d = {d} samples")
    Xp, yp = make_regression(
        n_samples=n_pt,
        n_features=d,
        n_informative=d,
        noise=20.0,
        effective_rank=max(1, d // 16) if effective_rank else None,
        random_state=seed,
    )
    Xf, yf = make_regression(
        n_samples=n_ft,
        n_features=d,
        n_informative=max(1, d // 2),
        noise=50.0,
        bias=10.0,
        effective_rank=max(1, d // 32) if effective_rank else None,
        random_state=seed + 1,
    )
    Xp = (Xp - Xp.mean(0)) / Xp.std(0)
    Xf = finetune_mean + finetune_std * (Xf - Xf.mean(0)) / Xf.std(0)
    yp = (yp - yp.mean()) / yp.std()
    yf = (yf - yf.mean()) / yf.std()
    to = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
    pre = LinearRegression(to(Xp), to(yp), (m, n))
    W0 = pre.optimum()[0]  # type: ignore[index]
    ft = LinearRegression(to(Xf), to(yf), (m, n))
    if reg == "L":
        ft = LinearRegression(to(Xf), to(yf), (m, n), reg=ft.data_smoothness)
    elif isinstance(reg, (int, float)) and reg:
        ft = LinearRegression(to(Xf), to(yf), (m, n), reg=float(reg))
    return pre, ft, W0
