r"""Multinomial logistic regression: the weight is the ``K × n`` matrix of class scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from manifold_lowrank.problems.base import MatrixProblem

__all__ = ["LogisticRegression"]


class LogisticRegression(MatrixProblem):
    r"""``f(W) = (1/N) Σᵢ CE(W xᵢ, yᵢ) + (λ/2)‖W‖²_F`` with ``W ∈ R^{K×n}``.

    ``∇f(W) = (1/N) (P − Y)ᵀ X + λ W`` with ``P = softmax(X Wᵀ)`` and ``Y`` one-hot.
    The Hessian is ``(1/N) Σᵢ (diag(pᵢ) − pᵢpᵢᵀ) ⊗ xᵢxᵢᵀ + λ I`` and
    ``‖diag(p) − ppᵀ‖ ≤ 1/2``, hence ``L = λ_max(XᵀX)/(2N) + λ`` and ``μ = λ``.

    Parameters
    ----------
    X : torch.Tensor
        ``(N, n)`` features.
    y : torch.Tensor
        ``(N,)`` integer labels in ``[0, K)``.
    n_classes : int
        ``K`` (default ``max(y) + 1``).
    l2 : float
        ``λ ≥ 0``; ``λ > 0`` makes ``f`` strongly convex.
    """

    def __init__(
        self, X: torch.Tensor, y: torch.Tensor, n_classes: int | None = None, *, l2: float = 1e-3
    ) -> None:
        if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
            raise ValueError(
                f"X must be (N, n) and y (N,), got {tuple(X.shape)} and {tuple(y.shape)}"
            )
        if not l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {l2!r}")
        K = int(y.max()) + 1 if n_classes is None else int(n_classes)
        if int(y.min()) < 0 or int(y.max()) >= K:
            raise ValueError(f"labels must lie in [0, {K}), got [{int(y.min())}, {int(y.max())}]")
        self.X, self.y, self.l2 = X, y.long(), float(l2)
        self.shape = (K, int(X.shape[1]))
        self.n_samples = int(X.shape[0])
        lam_max = float(torch.linalg.eigvalsh(X.T @ X / self.n_samples)[-1])
        self.smoothness = 0.5 * lam_max + self.l2
        self.strong_convexity = self.l2

    @classmethod
    def from_sklearn(
        cls,
        n_samples: int = 600,
        n_features: int = 20,
        n_classes: int = 4,
        *,
        l2: float = 1e-2,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> LogisticRegression:
        """A standardised :func:`sklearn.datasets.make_classification` instance."""
        from sklearn.datasets import make_classification

        X, y = make_classification(
            n_samples=n_samples,
            n_features=n_features,
            n_informative=max(2, n_features // 2),
            n_classes=n_classes,
            n_clusters_per_class=1,
            random_state=seed,
        )
        X = (X - X.mean(0)) / X.std(0)
        return cls(torch.as_tensor(X, dtype=dtype), torch.as_tensor(y), n_classes, l2=l2)

    def _rows(self, batch):
        if batch is None:
            return self.X, self.y
        return self.X[batch], self.y[batch]

    def loss(self, W, batch=None):
        self._check_W(W)
        X, y = self._rows(batch)
        return F.cross_entropy(X.to(W) @ W.T, y) + 0.5 * self.l2 * (W**2).sum()

    def grad(self, W, batch=None):
        self._check_W(W)
        X, y = self._rows(batch)
        Xw = X.to(W)
        P = torch.softmax(Xw @ W.T, dim=1)
        P[torch.arange(len(y)), y] -= 1.0
        return P.T @ Xw / Xw.shape[0] + self.l2 * W

    def optimum(self, max_iter: int = 500):
        """``(W*, f*)`` by L-BFGS in float64 (strongly convex: unique; ``‖∇f‖ ≲ 1e-10``)."""
        W = torch.zeros(self.shape, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS(
            [W],
            lr=1.0,
            max_iter=max_iter,
            tolerance_grad=1e-12,
            tolerance_change=1e-15,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure():
            opt.zero_grad()
            v = self.loss(W)
            v.backward()
            return v

        opt.step(closure)
        Wd = W.detach()
        return Wd, float(self.loss(Wd))
