r"""
Adding a manifold: fixed-rank positive semidefinite matrices
============================================================

This tutorial extends the library from the outside. We implement a manifold the package
does not have — symmetric positive semidefinite matrices of fixed rank,

.. math::

    \mathcal S_+(n, r) = \{X \in \mathbb R^{n\times n} :\ X = X^\top \succeq 0,\
    \operatorname{rank} X = r\} = \{Y Y^\top :\ Y \in \mathbb R^{n\times r}_*\},

— as a subclass of :class:`~manifold_lowrank.manifolds.LowRankManifold`, check it with
the conformance kit :func:`~manifold_lowrank.testing.check_manifold`, and optimise on it
with the library's :class:`~manifold_lowrank.optim.RiemannianSGD` and
:class:`~manifold_lowrank.optim.RiemannianAdam` on a problem whose optimum is known: the
best rank-``r`` approximation of a kernel matrix built from real data (the eigenvalue
truncation). Nothing in the library is changed.

The geometry
------------
We use the *embedded* geometry of [VandereyckenAbsilVandewalle2009]_: :math:`\mathcal
S_+(n, r)` is a smooth submanifold of :math:`\mathbb R^{n\times n}` of dimension
:math:`nr - r(r-1)/2`, with the Frobenius metric of the ambient space. (The quotient
geometry :math:`\mathbb R^{n\times r}_*/O(r)` of [JourneeBachAbsilSepulchre2010]_ is the
other common choice; its metric is not the ambient one, so the ambient-metric checks of
``check_manifold`` would not apply.) A point is written

.. math::

    X = U D U^\top, \qquad U \in \mathbb R^{n\times r},\ U^\top U = I_r, \qquad
    D = D^\top \succ 0 \ (r\times r,\ \text{not necessarily diagonal}),

so ``Y = U D^{1/2}``. The pieces every manifold of the library must provide are:

* **Tangent space.** Differentiating :math:`U D U^\top` along curves gives

  .. math::

      T_X = \{\, U M U^\top + U_p U^\top + U U_p^\top \;:\;
      M = M^\top,\ U^\top U_p = 0 \,\},

  stored as the pair :math:`(U_p, M)`: :math:`(n - r) r + r(r+1)/2` numbers, the
  dimension above.
* **Projection.** :math:`T_X \subset \operatorname{Sym}(n)`, so the orthogonal projection
  of an ambient :math:`Z` first symmetrises, :math:`Z_s = (Z + Z^\top)/2`, then keeps
  :math:`M = U^\top Z_s U` and :math:`U_p = (I - UU^\top) Z_s U`.
* **Metric.** The Frobenius product of the embedded vectors; the cross terms vanish
  because :math:`U^\top U_p = 0`:

  .. math::

      \langle \xi, \eta \rangle_X = \operatorname{tr}(M_\xi M_\eta) +
      2\operatorname{tr}(U_{p,\xi}^\top U_{p,\eta}).

  The factor 2 means the default metric of the base class (a plain sum over the packed
  tensor) is *wrong* here: we override ``inner`` and ``component_inner``, as the
  contract asks.
* **Retraction** (metric projection, [AbsilMalick2012]_). :math:`X + \xi =
  [U\ U_p]\, K\, [U\ U_p]^\top` with :math:`K = \begin{bmatrix} D + M & I\\ I & 0
  \end{bmatrix}`. A thin QR :math:`[U\ U_p] = B T` and an eigendecomposition of the small
  symmetric :math:`T K T^\top = W \Lambda W^\top` (``2r × 2r``) give the best rank-``r``
  positive semidefinite approximation of :math:`X + \xi`: :math:`U_+ = B W_{:, 1:r}`,
  :math:`D_+ = \Lambda_{1:r}` (the ``r`` largest eigenvalues). :math:`K` has ``r``
  positive and ``r`` negative eigenvalues whatever :math:`M` (identity off-diagonal
  blocks, zero lower-right block), and so has :math:`T K T^\top` when :math:`T` is
  invertible (Sylvester's law of inertia): the result is on the manifold.
  It agrees with :math:`X + \xi` to second order; cost :math:`O(nr^2 + r^3)`.
* **Vector transport** by projection: :math:`\mathcal T_{X\to Y}\xi = P_{T_Y}(\xi)`,
  computed from :math:`\xi U_Y` (``n × r``) without forming :math:`\xi`.
* **Riemannian gradient from factor gradients.** Autograd through
  :math:`X = U D U^\top` gives :math:`\partial U = (G + G^\top) U D` and
  :math:`\partial D = U^\top G U` for the Euclidean gradient :math:`G`, hence
  :math:`\operatorname{grad} f = P_{T_X}(G)` is

  .. math::

      M = \operatorname{sym}(\partial D), \qquad
      U_p = \tfrac12 (I - UU^\top)\, \partial U\, D^{-1}

  (one ``r × r`` solve with the positive definite :math:`D`).

Everything except ``embed``/``embed_tangent``/``proju_dense`` (dense, for tests) costs
:math:`O(nr^2 + r^3)`.
"""

# %%
# The implementation
# ------------------
# Points are packed into one ``(n + r) × r`` tensor ``[U; D]`` (what geoopt's
# :class:`~geoopt.ManifoldParameter` holds) and tangent vectors into ``[U_p; M]``;
# ``unpack`` returns zero-copy views as named tuples. The base class supplies shape, dtype
# and device validation (``_check_tensor``, ``_check_pair``), ``norm``, ``expmap = retr``,
# ``retr_transp``, ``random_tangent`` and ``origin``. A packed ``u`` that is not exactly
# tangent (non-symmetric ``M``, ``UᵀU_p ≠ 0``) is read, like in
# :class:`~manifold_lowrank.manifolds.FixedRank`, as the ambient matrix
# :math:`Z(u) = U M U^\top + U_p U^\top + U U_p^\top`.
import math
import time
from typing import NamedTuple

import geoopt
import matplotlib.pyplot as plt
import torch

from manifold_lowrank.linalg import check_finite, qr_signfix
from manifold_lowrank.manifolds import LowRankManifold
from manifold_lowrank.optim import RiemannianAdam, RiemannianSGD
from manifold_lowrank.testing import check_manifold


def _t(a: torch.Tensor) -> torch.Tensor:
    return a.transpose(-2, -1)


def _sym(a: torch.Tensor) -> torch.Tensor:
    return 0.5 * (a + _t(a))


class PSDPoint(NamedTuple):
    """Factored point ``X = U D Uᵀ``: ``U`` (..., n, r) orthonormal, ``D`` (..., r, r) SPD."""

    U: torch.Tensor
    D: torch.Tensor


class PSDTangent(NamedTuple):
    """Factored tangent ``U M Uᵀ + U_p Uᵀ + U U_pᵀ``: ``Up`` (..., n, r), ``M`` (..., r, r)."""

    Up: torch.Tensor
    M: torch.Tensor


class PSDFixedRank(LowRankManifold):
    r"""Symmetric positive semidefinite ``n × n`` matrices of rank ``r`` (embedded geometry).

    Packed point ``[U; D]`` and packed tangent ``[U_p; M]``, both ``(..., n + r, r)``;
    ``dim = n r − r (r − 1) / 2``. See the tutorial text for the formulas.
    """

    name = "PSDFixedRank"
    ndim = 2
    reversible = False

    def __init__(self, n: int, r: int) -> None:
        super().__init__()
        for name, v in (("n", n), ("r", r)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not 1 <= r <= n:
            raise ValueError(f"r (rank) must be in [1, {n}], got {r}")
        self.n, self.r = n, r

    # ---------------------------------------------------------------- layout
    @property
    def shape(self) -> tuple[int, int]:
        return (self.n + self.r, self.r)

    @property
    def dim(self) -> int:
        return self.n * self.r - self.r * (self.r - 1) // 2

    def extra_repr(self) -> str:
        return f"n={self.n}, r={self.r}"

    def unpack(self, x: torch.Tensor) -> PSDPoint:
        self._check_tensor(x, "x")
        return PSDPoint(x.narrow(-2, 0, self.n), x.narrow(-2, self.n, self.r))

    def unpack_tangent(self, u: torch.Tensor) -> PSDTangent:
        self._check_tensor(u, "u")
        return PSDTangent(u.narrow(-2, 0, self.n), u.narrow(-2, self.n, self.r))

    def _cat(self, top: torch.Tensor, core: torch.Tensor) -> torch.Tensor:
        if tuple(top.shape[-2:]) != (self.n, self.r) or tuple(core.shape[-2:]) != (self.r,) * 2:
            raise ValueError(
                f"factors must have trailing shapes {(self.n, self.r)} and {(self.r, self.r)}, "
                f"got {tuple(top.shape)} and {tuple(core.shape)}"
            )
        batch = torch.broadcast_shapes(top.shape[:-2], core.shape[:-2])
        return torch.cat(
            [top.expand(*batch, self.n, self.r), core.expand(*batch, self.r, self.r)], dim=-2
        )

    def pack(self, point: PSDPoint | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self._cat(point[0], point[1])

    def pack_tangent(self, tangent: PSDTangent | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self._cat(tangent[0], tangent[1])

    # ---------------------------------------------------------------- dense (tests only)
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Dense ``U D Uᵀ``, ``O(n² r)``."""
        U, D = self.unpack(x)
        return (U @ D) @ _t(U)

    def embed_tangent(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Dense ``Z(u) = U M Uᵀ + U_p Uᵀ + U U_pᵀ``, ``O(n² r)``."""
        self._check_pair(x, u)
        U, _ = self.unpack(x)
        Up, M = self.unpack_tangent(u)
        return (U @ M + Up) @ _t(U) + U @ _t(Up)

    def proju_dense(self, x: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        """Packed ``P_T(Z)`` of a dense ``(..., n, n)`` matrix: ``M = UᵀZ_sU``,
        ``U_p = Z_sU − UM``."""
        U, _ = self.unpack(x)
        ZU = _sym(Z) @ U
        M = _sym(_t(U) @ ZU)
        return self._cat(ZU - U @ M, M)

    # ---------------------------------------------------------------- geometry
    def proju(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``P_T(Z(u))``: ``M' = sym(M) + UᵀU_p + U_pᵀU``, ``U_p' = (I − UUᵀ) U_p``."""
        self._check_pair(x, u)
        U, _ = self.unpack(x)
        Up, M = self.unpack_tangent(u)
        A = _t(U) @ Up
        return self._cat(Up - U @ A, _sym(M) + A + _t(A))

    def egrad2rgrad(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``M = sym(∂D)``, ``U_p = ½ (I − UUᵀ) ∂U D⁻¹`` from the factor gradients."""
        self._check_pair(x, u, "egrad")
        U, D = self.unpack(x)
        dU, dD = self.unpack_tangent(u)
        pU = dU - U @ (_t(U) @ dU)
        Up = 0.5 * torch.linalg.solve(D, pU, left=False)  # pU D⁻¹ (D is SPD)
        return self._cat(Up, _sym(dD))

    def inner(
        self,
        x: torch.Tensor,
        u: torch.Tensor,
        v: torch.Tensor | None = None,
        *,
        keepdim: bool = False,
    ) -> torch.Tensor:
        """``⟨ξ, η⟩ = tr(M_ξ M_η) + 2 tr(U_pξᵀ U_pη)`` (the ambient Frobenius product)."""
        blocks = self._block_inner(x, u, v)
        out = 2.0 * blocks[0] + blocks[1]
        return out[..., None, None] if keepdim else out

    def component_inner(
        self, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One value per block (``2‖U_p‖²`` on the ``U_p`` rows, ``‖M‖²`` on the ``M`` rows),
        so that Adam's division rescales each block and keeps the vector tangent."""
        up, m = self._block_inner(x, u, v)
        up = (2.0 * up)[..., None, None].expand(*up.shape, self.n, 1)
        m = m[..., None, None].expand(*m.shape, self.r, 1)
        return torch.cat([up, m], dim=-2)

    def _block_inner(
        self, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_pair(x, u)
        if v is None:
            v = u
        else:
            self._check_pair(x, v, "v")
        a, b = self.unpack_tangent(u)
        c, d = self.unpack_tangent(v)
        return (a * c).sum(dim=(-2, -1)), (b * d).sum(dim=(-2, -1))

    def retr(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Metric-projection retraction: top-``r`` eigenpairs of ``X + sym Z(u)``."""
        self._check_pair(x, u)
        U, D = self.unpack(x)
        Up, M = self.unpack_tangent(u)
        check_finite("tangent vector u given to retr (M block)", M)
        r = self.r
        batch = torch.broadcast_shapes(x.shape[:-2], u.shape[:-2])
        B, T = torch.linalg.qr(torch.cat([U.expand(*batch, *U.shape[-2:]), Up], dim=-1))
        check_finite("tangent vector u given to retr (Up block)", T)  # NaN in Up reaches T
        eye = torch.eye(r, dtype=x.dtype, device=x.device).expand(*batch, r, r)
        K = torch.cat(
            [
                torch.cat([(D + _sym(M)).expand(*batch, r, r), eye], dim=-1),
                torch.cat([eye, torch.zeros_like(eye)], dim=-1),
            ],
            dim=-2,
        )
        lam, W = torch.linalg.eigh(_sym(T @ K @ _t(T)))  # ascending eigenvalues
        lam, W = lam[..., -r:].flip(-1), W[..., -r:].flip(-1)
        # Positive whenever T is invertible (inertia (r, r)); a floor keeps the rank in
        # the degenerate case of a rank-deficient U_p together with an indefinite D + M.
        floor = 10.0 * r * torch.finfo(x.dtype).eps * lam[..., :1].abs()
        lam = torch.maximum(lam, floor)
        return self._cat(B @ W, torch.diag_embed(lam))

    def transp(self, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Projection transport ``P_{T_Y}(ξ)`` from ``ξ U_Y`` (``O(n r²)``)."""
        self._check_pair(x, v, "v")
        self._check_pair(x, y, "y")
        Ux, _ = self.unpack(x)
        U, _ = self.unpack(y)
        Up, M = self.unpack_tangent(v)
        C = _t(Ux) @ U
        xiU = Ux @ (_sym(M) @ C) + Up @ C + Ux @ (_t(Up) @ U)  # sym(Z(v)) U_Y
        M1 = _sym(_t(U) @ xiU)
        return self._cat(xiU - U @ M1, M1)

    def projx(self, x: torch.Tensor) -> torch.Tensor:
        """Re-orthonormalise ``U = QR`` (sign-fixed), ``D ← sym(R D Rᵀ)``: same ``X``."""
        U, D = self.unpack(x)
        Q, R = qr_signfix(U)
        return self._cat(Q, _sym(R @ D @ _t(R)))

    def scale_point(self, x: torch.Tensor, factor: float) -> tuple[torch.Tensor, bool]:
        """``factor·X = U (factor·D) Uᵀ`` (optional hook: the library's optimizers apply
        ``weight_decay`` through it). The tangent blocks ``[U_p; M]`` do not involve ``D``,
        so tangent vectors need no transport."""
        U, D = self.unpack(x)
        return self._cat(U.clone(), factor * D), False

    def random(
        self,
        *size: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``U`` from a QR of a Gaussian matrix, ``D = P diag(σ) Pᵀ``, ``σ_k = 10^{-k/r}``."""
        batch = self._batch_size(size, self.shape)
        dtype = dtype or torch.get_default_dtype()
        gdev = generator.device if generator is not None else device

        def g(*shape: int) -> torch.Tensor:
            return torch.randn(*batch, *shape, dtype=dtype, device=gdev, generator=generator)

        U = qr_signfix(g(self.n, self.r))[0]
        P = qr_signfix(g(self.r, self.r))[0]
        sig = torch.logspace(0, -(self.r - 1) / self.r, self.r, dtype=dtype, device=P.device)
        x = self._cat(U, _sym((P * sig) @ _t(P)))
        return x.to(device) if device is not None else x

    # ---------------------------------------------------------------- checks
    def _check_point_on_manifold(
        self, x: torch.Tensor, *, atol: float = 1e-5, rtol: float = 1e-5
    ) -> tuple[bool, str | None]:
        if not bool(torch.isfinite(x).all()):
            return False, "the point holds NaN or Inf"
        U, D = self.unpack(x)
        err = float((_t(U) @ U - torch.eye(self.r, dtype=x.dtype, device=x.device)).abs().max())
        if err > atol + rtol:
            return False, f"U is not orthonormal: max|UᵀU − I| = {err:.3g} (use projx)"
        asym = float((D - _t(D)).abs().max())
        if asym > atol + rtol * float(D.abs().max()):
            return False, f"D is not symmetric: max|D − Dᵀ| = {asym:.3g}"
        lam = torch.linalg.eigvalsh(_sym(D))
        if bool((lam[..., 0] <= torch.finfo(x.dtype).eps * self.r * lam[..., -1]).any()):
            return False, f"D is not positive definite: eigenvalues {lam.tolist()}"
        return True, None

    def _check_vector_on_tangent(
        self, x: torch.Tensor, u: torch.Tensor, *, atol: float = 1e-5, rtol: float = 1e-5
    ) -> tuple[bool, str | None]:
        if not bool(torch.isfinite(u).all()):
            return False, "the tangent vector holds NaN or Inf"
        U, _ = self.unpack(x)
        Up, M = self.unpack_tangent(u)
        err = float((_t(U) @ Up).abs().max())
        if err > atol + rtol * float(Up.abs().max()):
            return False, f"UᵀU_p ≠ 0: max|UᵀU_p| = {err:.3g} (apply proju)"
        asym = float((M - _t(M)).abs().max())
        if asym > atol + rtol * float(M.abs().max()):
            return False, f"M is not symmetric: max|M − Mᵀ| = {asym:.3g}"
        return True, None


# %%
# The conformance kit
# -------------------
# :func:`~manifold_lowrank.testing.check_manifold` verifies numerically, in float64 and
# against tolerances derived from the machine epsilon, every identity the optimizers rely
# on: points and tangent vectors pass the checks, the projection is idempotent,
# self-adjoint and agrees with the dense one, the metric is the ambient one, the
# retraction is first order (fitted log–log slope) and rejects NaN, ``egrad2rgrad`` is
# the projected dense gradient, the transport is linear and lands in the new tangent
# space, batched calls equal loops, and the projection has rank ``dim``. It raises an
# :class:`AssertionError` listing every failure; here nothing fails.
manifold = PSDFixedRank(12, 3)
report = check_manifold(manifold)
print(report)

# %%
# A problem with a known optimum
# ------------------------------
# Kernel methods approximate a Gram matrix :math:`A_{ij} = k(x_i, x_j)` by a low-rank one
# (Nyström, kernel PCA). For 300 images of the scikit-learn digits and the Gaussian
# kernel :math:`k(x, y) = \exp(-\gamma\|x - y\|^2)` (:math:`\gamma = 1/(d\,\mathrm{Var})`,
# scikit-learn's ``"scale"``), scaled so that its largest eigenvalue is 1, we solve
#
# .. math::
#
#     \min_{X \in \mathcal S_+(n, r)} f(X) = \tfrac12 \|X - A\|_F^2 .
#
# Its minimiser is known: the eigenvalue truncation :math:`X_\star = V_r \Lambda_r V_r^\top`
# of :math:`A` (``r`` largest eigenvalues, all positive here), with
# :math:`f_\star = \tfrac12 \sum_{i > r} \lambda_i^2`. For ``A = A^\top`` with a gap
# :math:`\lambda_r > \lambda_{r+1}` it is unique, and Riemannian gradient descent with
# step 1 — :math:`X_+ = R_X(-P_{T_X}(X - A))` — is a subspace iteration that converges
# linearly with rate :math:`\rho = |\lambda_{r+1}| / \lambda_r`.
from manifold_lowrank.datasets import load_digits

torch.manual_seed(0)
dtype = torch.float64
digits = load_digits(dtype=dtype, test_fraction=0.2, seed=0)
feats = digits.X_train[:300]
gamma = 1.0 / (feats.shape[1] * float(feats.var()))
A = torch.exp(-gamma * torch.cdist(feats, feats).square())
A = A / torch.linalg.matrix_norm(A, ord=2)  # scale so that lambda_1 = 1 (see Adam below)
n, r = A.shape[0], 5


def eigen_truncation(A: torch.Tensor, r: int) -> tuple[torch.Tensor, float]:
    """Best rank-``r`` PSD approximation of a symmetric ``A`` and ``f⋆ = ½‖X⋆ − A‖²``."""
    lam, V = torch.linalg.eigh(A)
    lam_r = lam[-r:].clamp_min(0)
    X_star = (V[:, -r:] * lam_r) @ V[:, -r:].T
    return X_star, 0.5 * float((X_star - A).square().sum())


X_star, f_star = eigen_truncation(A, r)
lam = torch.linalg.eigvalsh(A).flip(0)
rho = float(lam[r].abs() / lam[r - 1])
print(f"n = {n}, r = {r}, lambda_1..{r + 1} = {[round(float(v), 3) for v in lam[: r + 1]]}")
print(f"f* = {f_star:.6f}, predicted rate of RSGD(lr=1): rho = {rho:.3f}")


# %%
# Optimising with the library's optimizers
# ----------------------------------------
# The point is a :class:`geoopt.ManifoldParameter` on our manifold; the loss is computed
# through the dense ``embed`` (fine for ``n = 300``), autograd gives the factor
# gradients ``[∂U; ∂D]``, and the optimizers call our ``egrad2rgrad``, ``retr_transp``,
# ``proju`` and ``component_inner``. All runs start from the same random point.
def fit(
    manifold: PSDFixedRank,
    A: torch.Tensor,
    x0: torch.Tensor,
    make_opt,
    steps: int,
) -> tuple[torch.Tensor, list[float]]:
    """Minimise ``½‖X − A‖²`` from ``x0``; returns the final packed point and ``f`` per step."""
    x = geoopt.ManifoldParameter(x0.clone(), manifold=manifold)
    opt = make_opt([x])
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * (manifold.embed(x) - A).square().sum()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return x.detach(), losses


S = PSDFixedRank(n, r)
x0 = S.random(dtype=dtype, generator=torch.Generator().manual_seed(1))
runs = {
    "RiemannianSGD, lr=1": lambda p: RiemannianSGD(p, lr=1.0),
    "RiemannianSGD, lr=0.3, momentum=0.6": lambda p: RiemannianSGD(p, lr=0.3, momentum=0.6),
    "RiemannianAdam, lr=0.1": lambda p: RiemannianAdam(p, lr=0.1),
}
steps = 200
results = {}
for label, make_opt in runs.items():
    t0 = time.process_time()
    x, losses = fit(S, A, x0, make_opt, steps)
    err = float(torch.linalg.norm(S.embed(x) - X_star) / torch.linalg.norm(X_star))
    results[label] = (x, losses)
    print(
        f"{label:<38} f - f* = {losses[-1] - f_star:9.2e}   "
        f"|X - X*|/|X*| = {err:8.2e}   on manifold: {S.check_point_on_manifold(x)}   "
        f"{time.process_time() - t0:.2f} s CPU"
    )

# %%
# The gap :math:`f(X_k) - f_\star` against the iteration, next to the bound
# :math:`\rho^{2k}` on the rate of plain gradient descent (``f − f⋆`` is quadratic in the
# distance to the optimum; each error mode ``(i, j)``, ``i > r ≥ j``, contracts by
# :math:`\lambda_i/\lambda_j \le \rho` per step, so the run may be faster), and the
# spectrum: the eigenvalues of the computed point coincide with the ``r`` largest
# eigenvalues of ``A``. Gradient descent converges linearly down to rounding; Adam
# divides each block of its step by the block's gradient norm (``component_inner``), so
# its steps have a size of order ``lr`` whatever the scale of the problem — hence the
# normalisation of ``A`` — and with a constant ``lr`` it approaches the optimum without a
# linear rate.
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
for label, (_, losses) in results.items():
    gap = [max(v - f_star, 1e-16) for v in losses]
    ax1.semilogy(range(1, steps + 1), gap, label=label)
k = torch.arange(1, steps + 1, dtype=dtype)
first_gap = results["RiemannianSGD, lr=1"][1][0] - f_star
ax1.semilogy(k, first_gap * rho ** (2 * (k - 1)), "k--", lw=1, label=r"bound $\rho^{2k}$ (lr=1)")
ax1.set_xlabel("iteration")
ax1.set_ylabel(r"$f(X_k) - f_\star$")
ax1.set_title("Nearest rank-5 PSD matrix to an RBF kernel matrix")
ax1.set_ylim(1e-16, None)
ax1.legend(fontsize=8)

x_best = results["RiemannianSGD, lr=1"][0]
found = torch.linalg.eigvalsh(S.unpack(x_best).D).flip(0)
idx = torch.arange(1, 16)
ax2.semilogy(idx, lam[:15], "o-", label="eigenvalues of $A$")
ax2.semilogy(torch.arange(1, r + 1), found, "x", ms=10, mew=2, label="eigenvalues of $D$ (found)")
ax2.axvline(r + 0.5, color="grey", ls=":", label=f"rank r = {r}")
ax2.set_xlabel("index i")
ax2.set_ylabel(r"$\lambda_i$")
ax2.set_title("Spectrum: optimiser vs eigen-truncation")
ax2.legend(fontsize=8)
fig.tight_layout()

# %%
# PSD matrix completion
# ---------------------
# The same manifold and optimizers on a problem the eigendecomposition cannot solve: we
# observe 30 % of the (symmetric) entries of the rank-5 matrix :math:`X_\star` above and
# minimise :math:`\tfrac12\|P_\Omega(X - X_\star)\|_F^2 / p`. The optimum is known
# (:math:`X_\star` itself, :math:`f_\star = 0`), so we can watch the relative error
# :math:`\|X - X_\star\|_F / \|X_\star\|_F`, which the algorithm never sees. We start
# from the eigen-truncation of the rescaled observations :math:`P_\Omega(X_\star)/p`
# (spectral initialisation).
p = 0.3
gen = torch.Generator().manual_seed(2)
upper = torch.rand(n, n, generator=gen, dtype=dtype) < p
mask = (torch.triu(upper) | torch.triu(upper).T).to(dtype)
observed = mask * X_star
X_init, _ = eigen_truncation(observed / p, r)
lam0, V0 = torch.linalg.eigh(X_init)
x0c = S.pack((V0[:, -r:], torch.diag(lam0[-r:])))


def completion(make_opt, steps: int) -> list[float]:
    x = geoopt.ManifoldParameter(x0c.clone(), manifold=S)
    opt = make_opt([x])
    errs = []
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * (mask * (S.embed(x) - observed)).square().sum() / p
        loss.backward()
        opt.step()
        errs.append(float(torch.linalg.norm(S.embed(x.detach()) - X_star) / X_star.norm()))
    return errs


fig, ax = plt.subplots(figsize=(6, 4.2))
for label, make_opt in {
    "RiemannianSGD, lr=1": lambda q: RiemannianSGD(q, lr=1.0),
    "RiemannianSGD, lr=0.5, momentum=0.5": lambda q: RiemannianSGD(q, lr=0.5, momentum=0.5),
    "RiemannianAdam, lr=0.03": lambda q: RiemannianAdam(q, lr=0.03),
}.items():
    errs = completion(make_opt, 150)
    print(f"completion, {label:<38} relative error {errs[-1]:.2e}")
    ax.semilogy(range(1, len(errs) + 1), errs, label=label)
ax.set_xlabel("iteration")
ax.set_ylabel(r"$\|X_k - X_\star\|_F / \|X_\star\|_F$")
ax.set_title(f"PSD matrix completion, n = {n}, r = {r}, {int(100 * p)} % observed")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
# What the library needed, and what it did not
# --------------------------------------------
# Nothing in ``manifold_lowrank`` was changed. The contract of
# :class:`~manifold_lowrank.manifolds.LowRankManifold` (packed layout, ``proju`` of
# factored ambient vectors, ``egrad2rgrad`` from factor gradients, a metric that we had
# to override because the packed blocks are not isometric, block-constant
# ``component_inner`` for Adam, NaN-rejecting retraction) was enough for
# :func:`~manifold_lowrank.testing.check_manifold` and for
# :class:`~manifold_lowrank.optim.RiemannianSGD` / :class:`~manifold_lowrank.optim.RiemannianAdam`
# to work unchanged. One limitation: the optimizers' decoupled ``weight_decay`` knows
# only ``FixedRank``, ``Tucker`` and Euclidean parameters; on this manifold it is not
# applied (a :class:`UserWarning` says so), although ``D ← (1 − ηλ) D`` would be the
# natural decay. geoopt's own optimizers also accept the manifold, since it is a
# :class:`geoopt.Manifold`.
assert report.passed and math.isfinite(f_star)
