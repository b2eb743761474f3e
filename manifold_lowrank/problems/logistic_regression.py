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

    def hessian(self, W: torch.Tensor) -> torch.Tensor:
        """Dense Hessian ``(Kn × Kn)`` for ``vec(W)`` row-major. Cost ``O(N K² n²)``; small
        problems only."""
        self._check_W(W)
        Xw = self.X.to(W)
        P = torch.softmax(Xw @ W.T, dim=1)
        C = torch.diag_embed(P) - P.unsqueeze(2) * P.unsqueeze(1)  # (N, K, K)
        K, n = self.shape
        H = torch.einsum("iab,ij,ik->ajbk", C, Xw, Xw).reshape(K * n, K * n) / Xw.shape[0]
        return H + self.l2 * torch.eye(K * n, dtype=W.dtype, device=W.device)

    def optimum(self, max_iter: int = 50):
        """``(W*, f*)`` by damped Newton in float64 (``λ > 0``: unique optimum, quadratic
        convergence to ``‖∇f‖ ~ 1e-13``). Returns ``None`` when ``λ = 0``."""
        if self.l2 == 0:
            return None
        W = torch.zeros(self.shape, dtype=torch.float64)
        f = float(self.loss(W))
        for _ in range(max_iter):
            g = self.grad(W).reshape(-1)
            if float(g.norm()) <= 1e-13:
                break
            step = torch.linalg.solve(self.hessian(W), g).reshape(self.shape)
            t = 1.0
            while t > 1e-10:
                cand = W - t * step
                fc = float(self.loss(cand))
                if fc <= f - 1e-4 * t * float(g @ step.reshape(-1)) or fc <= f:
                    break
                t *= 0.5
            W, f = cand, fc
        return W, float(self.loss(W))
