r"""The manifold of ``m × n`` real matrices of rank ``r`` (embedded geometry).

A point is ``X = U S Vᵀ`` with ``U ∈ R^{m×r}``, ``V ∈ R^{n×r}`` orthonormal and a full,
invertible core ``S ∈ R^{r×r}``. A tangent vector at ``X`` is

.. math::  ξ = U M Vᵀ + U_p Vᵀ + U V_pᵀ,\qquad UᵀU_p = 0,\; VᵀV_p = 0,

with the metric inherited from the Frobenius inner product of ``R^{m×n}``
(Vandereycken 2013, *Low-rank matrix completion by Riemannian optimization*).

Packed layout (what geoopt sees)
--------------------------------
A point is one tensor of shape ``(..., m + r + n, r)``::

    x[..., 0:m, :]       = U
    x[..., m:m+r, :]     = S
    x[..., m+r:, :]      = V

and a tangent vector ``[U_p; M; V_p]`` uses the same layout. :meth:`FixedRank.unpack`
and :meth:`FixedRank.unpack_tangent` return zero-copy ``narrow`` views as
:class:`~manifold_lowrank.manifolds.types.FixedRankPoint` /
:class:`~manifold_lowrank.manifolds.types.FixedRankTangent`.

Cost
----
Every operation except :meth:`~FixedRank.embed`, :meth:`~FixedRank.embed_tangent`,
:meth:`~FixedRank.proju_dense` and :meth:`~FixedRank.from_dense` costs
``O((m + n) r² + r³)`` and never forms an ``m × n`` matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Integral
from typing import NamedTuple

import torch

from manifold_lowrank.linalg import check_finite, qr_signfix
from manifold_lowrank.manifolds.base import LowRankManifold
from manifold_lowrank.manifolds.types import (
    FixedRankPoint,
    FixedRankTangent,
    ProjectedGradients,
)

__all__ = ["FixedRank"]

_RETRACTIONS = ("polar", "orthographic", "ksl")


def _t(a: torch.Tensor) -> torch.Tensor:
    return a.transpose(-2, -1)


def _check_size(value: object, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    v = int(value)
    if v < low or (high is not None and v > high):
        rng = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {rng}, got {v}")
    return v


def _axpy_mm(
    out: torch.Tensor,
    base: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    alpha: float = 1.0,
) -> None:
    """``out ← base + alpha · a @ b`` written in place into ``out`` (a packed block view).

    Writing into the packed output avoids one temporary and one copy per block; the
    products are tall-skinny, so these passes over ``m × r`` data dominate the cost.
    """
    if out.dim() == 2 and a.dim() == 2 and b.dim() == 2 and (base is None or base.dim() == 2):
        if base is None:
            torch.mm(a, b, out=out)
            if alpha != 1.0:
                out.mul_(alpha)
        else:
            torch.addmm(base, a, b, alpha=alpha, out=out)
    elif base is None:
        out.copy_(torch.matmul(a, b).mul_(alpha) if alpha != 1.0 else torch.matmul(a, b))
    else:
        torch.add(base, torch.matmul(a, b), alpha=alpha, out=out)


# Fast-path bounds of the polar retraction (see :func:`_gram_factor`).
_POLAR_KAPPA_MAX = 64.0  # (λ_max(K_⊥) + ‖A'‖²)/λ_min(K_⊥): B loses ≲ ε·this orthonormality
_POLAR_DRIFT_MAX = 0.5  # ‖UᵀU − I‖_F: keeps cond(UᵀU) ≤ 3 so one Cholesky-QR step is exact


class _GramFactor(NamedTuple):
    """Candidate Gram fast-path factorisation ``[U P] = B T`` (see :func:`_gram_factor`)."""

    L: torch.Tensor  # lower Cholesky factor of H = UᵀU
    Ap: torch.Tensor  # A' = L⁻¹ UᵀP  (= U'ᵀP for the orthonormalised U' = U L⁻ᵀ)
    lam: torch.Tensor  # eigenvalues of K_⊥ = PᵀP − A'ᵀA' (ascending)
    Q: torch.Tensor  # its eigenvectors
    zero: torch.Tensor  # bool, batch shape: PᵀP == 0 exactly
    stats: torch.Tensor  # (..., 5): info, ‖H − I‖_F, λ_min(K_⊥), κ-scale, tr(PᵀP)


def _gram_factor(H: torch.Tensor, A: torch.Tensor, K: torch.Tensor) -> _GramFactor:
    r"""``r × r`` data of the Gram fast path from ``H = UᵀU``, ``A = UᵀP``, ``K = PᵀP``.

    With ``H = L Lᵀ`` (Cholesky), ``U' = U L⁻ᵀ`` is orthonormal and ``A' = L⁻¹A = U'ᵀP``;
    the component of ``P`` orthogonal to ``U'`` is ``P_⊥ = P − U'A'``, with Gram matrix
    ``K_⊥ = K − A'ᵀA' = Q Λ Qᵀ`` (symmetric eigendecomposition). Then
    ``N = P_⊥ Q Λ^{-1/2}`` has orthonormal columns ``⟂ U'`` and

    .. math::  [U\ P] = [U'\ N]\,T,\qquad
               T = \begin{bmatrix} Lᵀ & A' \\ 0 & Λ^{1/2} Qᵀ \end{bmatrix}.

    No pass over ``m`` happens here. Rounding in ``K`` is ``O(ε‖K‖)`` and
    ``‖K‖₂ ≤ λ_max(K_⊥) + ‖A'‖_F²``, so ``B = [U' N]`` is orthonormal to ``O(ε κ)`` with
    ``κ = (λ_max(K_⊥) + ‖A'‖_F²)/λ_min(K_⊥)`` (a large component of ``P`` in
    ``range(U)`` raises ``κ`` through ``‖A'‖``). :func:`_gram_ok` accepts it when
    ``κ ≤ 64``, ``‖H − I‖_F ≤ 1/2`` and the Cholesky succeeded — or when ``K = 0``
    exactly and ``P = 0``: then ``N`` is empty and ``T = [[Lᵀ, 0], [0, 0]]``.
    ``H``, ``A``, ``K`` must be finite.
    """
    r = H.shape[-1]
    L, info = torch.linalg.cholesky_ex(H)
    Ap = torch.linalg.solve_triangular(L, A, upper=False)
    lam, Q = torch.linalg.eigh(K - _t(Ap) @ Ap)
    eye = torch.eye(r, dtype=H.dtype, device=H.device)
    batch = lam.shape[:-1]
    trace = K.diagonal(dim1=-2, dim2=-1).sum(-1).expand(batch)
    stats = torch.stack(
        [
            info.to(H.dtype).expand(batch),
            torch.linalg.matrix_norm(H - eye).expand(batch),
            lam[..., 0],
            lam[..., -1] + (Ap * Ap).sum(dim=(-2, -1)),
            trace,
        ],
        dim=-1,
    )
    return _GramFactor(L, Ap, lam, Q, trace == 0, stats)


def _gram_ok(stats: list[float]) -> tuple[bool, bool]:
    """Host-side decision for one batch element: ``(fast path usable, P = 0 to confirm)``."""
    info, drift, lam_min, scale, trace = stats
    if info != 0 or not drift <= _POLAR_DRIFT_MAX:
        return False, False
    if trace == 0:
        return True, True
    return lam_min > 0 and lam_min * _POLAR_KAPPA_MAX >= scale, False


def _basis_from_gram(
    U: torch.Tensor, P: torch.Tensor, f: _GramFactor, has_zero: bool = True
) -> tuple[torch.Tensor, Callable[[torch.Tensor, torch.Tensor], None]]:
    """``T`` and ``finish(Y, out): out ← B Y`` of the Gram fast path (``B`` never formed).

    ``B Y = U' Y₁ + N Y₂ = U·L⁻ᵀ(Y₁ − A' Z₂) + P Z₂`` with ``Z₂ = Q Λ^{-1/2} Y₂``
    (``Λ^{-1/2}`` read as 0 in the ``P = 0`` case; ``has_zero=False`` promises there is
    none): two ``m × r × r`` products.
    """
    L, Ap, lam, Q = f.L, f.Ap, f.lam, f.Q
    r = L.shape[-1]
    if has_zero:
        z = f.zero[..., None]
        inv = torch.where(z, 0.0, lam.rsqrt())
        root = torch.where(z, 0.0, lam.sqrt())
    else:
        inv, root = lam.rsqrt(), lam.sqrt()
    Lt = _t(L)
    Ap = Ap.expand(*Q.shape[:-2], r, r)
    T = torch.cat(
        [
            torch.cat([Lt.expand_as(Ap), Ap], dim=-1),
            torch.cat([torch.zeros_like(Ap), root[..., :, None] * _t(Q)], dim=-1),
        ],
        dim=-2,
    )

    def finish(Y: torch.Tensor, out: torch.Tensor) -> None:
        Z2 = Q @ (inv[..., :, None] * Y[..., r:, :])
        C1 = torch.linalg.solve_triangular(Lt, Y[..., :r, :] - Ap @ Z2, upper=True)
        _axpy_mm(out, None, U, C1)
        _axpy_mm(out, out, P, Z2)

    return T, finish


def _basis_from_qr(
    U: torch.Tensor, P: torch.Tensor
) -> tuple[torch.Tensor, Callable[[torch.Tensor, torch.Tensor], None]]:
    """Robust path: Householder QR ``[U P] = B T`` (``B``: ``(..., m, k)``, ``k = min(m, 2r)``).

    Exact for rank-deficient or ill-conditioned ``P``, ``P`` with a large component in
    ``range(U)``, a strongly drifted ``U`` and ``m < 2r``: the completing columns of ``B``
    are orthogonal to ``U`` to machine precision even where they carry zero weight
    (Manopt PR #20). About twice the cost of the Gram path.
    """
    batch = torch.broadcast_shapes(U.shape[:-2], P.shape[:-2])
    B, T = torch.linalg.qr(
        torch.cat([U.expand(*batch, *U.shape[-2:]), P.expand(*batch, *P.shape[-2:])], dim=-1)
    )

    def finish(Y: torch.Tensor, out: torch.Tensor) -> None:
        _axpy_mm(out, None, B, Y)

    return T, finish


class FixedRank(LowRankManifold):
    r"""Fixed-rank matrices ``{X ∈ R^{m×n} : rank X = r}`` in factored form ``U S Vᵀ``.

    Parameters
    ----------
    m, n : int
        Matrix size (``m = out_features``, ``n = in_features`` for a layer weight).
    r : int
        Rank, ``1 ≤ r ≤ min(m, n)``.
    retraction : {"polar", "orthographic", "ksl"}
        Which retraction :meth:`retr` uses (each is also callable by name:
        :meth:`retr_polar`, :meth:`retr_orthographic`, :meth:`retr_ksl`).
    check_finite : bool
        If true (default) :meth:`retr` raises :class:`FloatingPointError` for a
        non-finite tangent vector. The test runs on the ``r × r`` factors into which
        any NaN/Inf of the tangent propagates (no pass over ``u``) and costs a host
        synchronisation. With ``False`` a non-finite tangent gives NaN output or a
        ``torch.linalg.LinAlgError``.

    Notes
    -----
    The packed point has shape ``(..., m + r + n, r)`` (see the module docstring);
    ``dim = (m + n − r) r``. geoopt's optimizers work directly on a
    :class:`geoopt.ManifoldParameter` holding a packed point:
    :meth:`egrad2rgrad` converts the autograd factor gradients, :meth:`component_inner`
    gives RiemannianAdam one scale per block (U, S, V) so its step stays tangent.

    Examples
    --------
    >>> import torch
    >>> M = FixedRank(6, 4, 2)
    >>> x = M.random(dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> x.shape
    torch.Size([12, 2])
    >>> u = M.random_tangent(x)
    >>> bool(M.check_point_on_manifold(M.retr(x, 0.1 * u), atol=1e-10))
    True
    """

    name = "FixedRank"
    ndim = 2
    reversible = False

    def __init__(
        self, m: int, n: int, r: int, *, retraction: str = "polar", check_finite: bool = True
    ) -> None:
        super().__init__()
        m = _check_size(m, "m", 1)
        n = _check_size(n, "n", 1)
        r = _check_size(r, "r (rank)", 1, min(m, n))
        if retraction not in _RETRACTIONS:
            raise ValueError(f"retraction must be one of {_RETRACTIONS}, got {retraction!r}")
        self.m, self.n, self.r = m, n, r
        self.retraction = retraction
        self.check_finite = bool(check_finite)

    # ------------------------------------------------------------------ layout
    @property
    def shape(self) -> tuple[int, int]:
        """Packed trailing shape ``(m + r + n, r)``."""
        return (self.m + self.r + self.n, self.r)

    @property
    def dim(self) -> int:
        """``(m + n − r) r``."""
        return (self.m + self.n - self.r) * self.r

    def extra_repr(self) -> str:
        return f"m={self.m}, n={self.n}, r={self.r}, retraction={self.retraction!r}"

    def unpack(self, x: torch.Tensor) -> FixedRankPoint:
        """Zero-copy views ``(U, S, V)`` of a packed point ``(..., m+r+n, r)``."""
        self._check_tensor(x, "x")
        m, r, n = self.m, self.r, self.n
        return FixedRankPoint(x.narrow(-2, 0, m), x.narrow(-2, m, r), x.narrow(-2, m + r, n))

    def unpack_tangent(self, u: torch.Tensor) -> FixedRankTangent:
        """Zero-copy views ``(Up, M, Vp)`` of a packed tangent ``(..., m+r+n, r)``."""
        self._check_tensor(u, "u")
        m, r, n = self.m, self.r, self.n
        return FixedRankTangent(u.narrow(-2, 0, m), u.narrow(-2, m, r), u.narrow(-2, m + r, n))

    def _cat(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, what: str) -> torch.Tensor:
        m, r, n = self.m, self.r, self.n
        for t, nm, rows in ((a, "first", m), (b, "second", r), (c, "third", n)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{what}: {nm} factor must be a tensor, got {type(t).__name__}")
            if t.dim() < 2 or tuple(t.shape[-2:]) != (rows, r):
                raise ValueError(
                    f"{what}: {nm} factor must have trailing shape {(rows, r)}, "
                    f"got {tuple(t.shape)}"
                )
        if not (a.dtype == b.dtype == c.dtype):
            raise TypeError(f"{what}: factors have mixed dtypes {a.dtype}, {b.dtype}, {c.dtype}")
        if not (a.device == b.device == c.device):
            raise ValueError(f"{what}: factors are on different devices")
        batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2], c.shape[:-2])
        return torch.cat(
            [a.expand(*batch, m, r), b.expand(*batch, r, r), c.expand(*batch, n, r)], dim=-2
        )

    def _alloc(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, FixedRankTangent]:
        """Uninitialised packed output (batch = broadcast of the inputs' batch shapes)."""
        batch = torch.broadcast_shapes(*(t.shape[:-2] for t in tensors))
        t0 = tensors[0]
        out = torch.empty(*batch, *self.shape, dtype=t0.dtype, device=t0.device)
        m, r, n = self.m, self.r, self.n
        return out, FixedRankTangent(
            out.narrow(-2, 0, m), out.narrow(-2, m, r), out.narrow(-2, m + r, n)
        )

    def pack(self, point: FixedRankPoint | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Packed ``[U; S; V]`` of shape ``(..., m+r+n, r)`` (allocates)."""
        U, S, V = point
        return self._cat(U, S, V, "pack")

    def pack_tangent(self, tangent: FixedRankTangent | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Packed ``[Up; M; Vp]`` of shape ``(..., m+r+n, r)`` (allocates)."""
        Up, M, Vp = tangent
        return self._cat(Up, M, Vp, "pack_tangent")

    # ------------------------------------------------------------------ dense (tests)
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Dense ``U S Vᵀ``, shape ``(..., m, n)``. Cost ``O(mnr)``; tests only."""
        U, S, V = self.unpack(x)
        return (U @ S) @ _t(V)

    def embed_tangent(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Dense ``U M Vᵀ + Up Vᵀ + U Vpᵀ``, shape ``(..., m, n)``; tests only.

        Also the dense ``Z(u)`` of a packed *ambient* (non-tangent) ``u`` as read by
        :meth:`proju`. Cost ``O(mnr)``.
        """
        self._check_pair(x, u)
        U, _, V = self.unpack(x)
        Up, M, Vp = self.unpack_tangent(u)
        return (U @ M + Up) @ _t(V) + U @ _t(Vp)

    def from_dense(self, W: torch.Tensor) -> torch.Tensor:
        """Packed best rank-``r`` approximation of a dense ``(..., m, n)`` matrix.

        Truncated SVD (Eckart–Young), ``S = diag(σ_1..σ_r)``. Cost ``O(mn min(m, n))``;
        set-up code only.
        """
        if not isinstance(W, torch.Tensor) or W.dim() < 2:
            raise TypeError("W must be a tensor of shape (..., m, n)")
        if tuple(W.shape[-2:]) != (self.m, self.n):
            raise ValueError(f"W must have trailing shape {(self.m, self.n)}, got {tuple(W.shape)}")
        Uf, s, Vh = torch.linalg.svd(W, full_matrices=False)
        r = self.r
        return self.pack((Uf[..., :r], torch.diag_embed(s[..., :r]), _t(Vh[..., :r, :])))

    # ------------------------------------------------------------------ projections
    def proju(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        r"""Orthogonal projection onto ``T_X`` of the factored ambient matrix of ``u``.

        The packed ``u = [U_p; M; V_p]`` (``U_p``, ``V_p`` arbitrary) is read as
        ``Z = U_p Vᵀ + U M Vᵀ + U V_pᵀ``; the result is the packed tangent of
        ``P_T(Z) = UUᵀZ + ZVVᵀ − UUᵀZVVᵀ``:

        .. math::  M' = M + UᵀU_p + V_pᵀV,\quad U_p' = (I − UUᵀ)U_p,\quad
                   V_p' = (I − VVᵀ)V_p.

        Idempotent, the identity on tangent vectors and self-adjoint for
        ``⟨Z(u), Z(w)⟩_F``. Cost ``O((m + n) r²)``.
        """
        self._check_pair(x, u)
        U, _, V = self.unpack(x)
        Up, M, Vp = self.unpack_tangent(u)
        UtUp = _t(U) @ Up
        VtVp = _t(V) @ Vp
        out, (oU, oM, oV) = self._alloc(x, u)
        _axpy_mm(oU, Up, U, UtUp, -1.0)
        torch.add(M + UtUp, _t(VtVp), out=oM)
        _axpy_mm(oV, Vp, V, VtVp, -1.0)
        return out

    def proju_dense(self, x: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        r"""Packed tangent ``P_T(Z)`` of a dense ``(..., m, n)`` ambient matrix.

        ``M = UᵀZV``, ``U_p = ZV − UM``, ``V_p = ZᵀU − VMᵀ``. Cost ``O(mnr)``.
        """
        self._check_tensor(x, "x")
        if not isinstance(Z, torch.Tensor) or tuple(Z.shape[-2:]) != (self.m, self.n):
            raise ValueError(
                f"Z must be a dense tensor of trailing shape {(self.m, self.n)}, got "
                f"{tuple(Z.shape) if isinstance(Z, torch.Tensor) else type(Z).__name__}"
            )
        self._check_dtype_device(x, Z, "Z")
        U, _, V = self.unpack(x)
        return self._from_projected(U, V, Z @ V, _t(Z) @ U)

    def proju_factored(self, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        r"""Packed tangent ``P_T(A Bᵀ)`` for ``A ∈ R^{m×k}``, ``B ∈ R^{n×k}``.

        ``ZV = A(BᵀV)``, ``ZᵀU = B(AᵀU)``. Cost ``O((m + n) k r)``.
        """
        self._check_tensor(x, "x")
        if not isinstance(A, torch.Tensor) or not isinstance(B, torch.Tensor):
            raise TypeError("A and B must be tensors")
        if A.dim() < 2 or B.dim() < 2 or A.shape[-2] != self.m or B.shape[-2] != self.n:
            raise ValueError(
                f"A must be (..., {self.m}, k) and B (..., {self.n}, k), got "
                f"{tuple(A.shape)} and {tuple(B.shape)}"
            )
        if A.shape[-1] != B.shape[-1]:
            raise ValueError(f"A and B must have the same k, got {A.shape[-1]} and {B.shape[-1]}")
        self._check_dtype_device(x, A, "A")
        self._check_dtype_device(x, B, "B")
        U, _, V = self.unpack(x)
        return self._from_projected(U, V, A @ (_t(B) @ V), B @ (_t(A) @ U))

    def _from_projected(
        self, U: torch.Tensor, V: torch.Tensor, ZV: torch.Tensor, ZtU: torch.Tensor
    ) -> torch.Tensor:
        M = _t(U) @ ZV
        out, (oU, oM, oV) = self._alloc(U, ZV, ZtU)
        _axpy_mm(oU, ZV, U, M, -1.0)
        oM.copy_(M)
        _axpy_mm(oV, ZtU, V, _t(M), -1.0)
        return out

    def rgrad_from_projected(self, x: torch.Tensor, pg: ProjectedGradients) -> torch.Tensor:
        r"""Riemannian gradient from the projected gradients ``(GV, UᵀGV, GᵀU)``.

        ``M = UᵀGV``, ``U_p = GV − U M``, ``V_p = GᵀU − V Mᵀ`` — equal to ``P_T(G)``
        without ever inverting ``S``. Cost ``O((m + n) r²)``.
        """
        self._check_tensor(x, "x")
        GV, UtGV, GtU = pg
        for t, nm, shp in (
            (GV, "GV", (self.m, self.r)),
            (UtGV, "UtGV", (self.r, self.r)),
            (GtU, "GtU", (self.n, self.r)),
        ):
            if not isinstance(t, torch.Tensor) or tuple(t.shape[-2:]) != shp:
                raise ValueError(f"pg.{nm} must have trailing shape {shp}")
            self._check_dtype_device(x, t, f"pg.{nm}")
        U, _, V = self.unpack(x)
        return self._cat(GV - U @ UtGV, UtGV, GtU - V @ _t(UtGV), "rgrad_from_projected")

    def egrad2rgrad(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        r"""Riemannian gradient from the packed factor gradients ``[∂U; ∂S; ∂V]``.

        For ``f(U S Vᵀ)`` with Euclidean gradient ``G``: ``∂U = G V Sᵀ``,
        ``∂S = UᵀGV``, ``∂V = GᵀU S``, hence ``P_T(G)`` is

        .. math::  M = ∂S,\quad U_p = (I − UUᵀ)\,∂U\,S^{-ᵀ},\quad
                   V_p = (I − VVᵀ)\,∂V\,S^{-1}.

        Needs an invertible ``S`` (it solves with it via :func:`torch.linalg.solve`,
        never forming ``S⁻¹``); its accuracy degrades like ``cond(S)``. Layers that give
        ``GV, UᵀGV, GᵀU`` should use :meth:`rgrad_from_projected` instead.
        Cost ``O((m + n) r² + r³)``.
        """
        self._check_pair(x, u, "egrad")
        U, S, V = self.unpack(x)
        dU, dS, dV = self.unpack_tangent(u)
        pU = dU - U @ (_t(U) @ dU)
        pV = dV - V @ (_t(V) @ dV)
        Up = torch.linalg.solve(_t(S), pU, left=False)  # pU S^{-T}
        Vp = torch.linalg.solve(S, pV, left=False)  # pV S^{-1}
        return self._cat(Up, dS, Vp, "egrad2rgrad")

    egrad2rgrad_dense = proju_dense

    # ------------------------------------------------------------------ metric
    def component_inner(
        self, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor | None = None
    ) -> torch.Tensor:
        r"""One inner product per block, broadcast over the block's rows.

        Returns ``(..., m + r + n, 1)`` holding ``⟨U_p, W_p⟩`` on rows ``[0, m)``,
        ``⟨M, N⟩`` on ``[m, m+r)`` and ``⟨V_p, Z_p⟩`` on ``[m+r, m+r+n)``. Dividing a
        tangent vector by (a function of) it scales each block by a constant, which
        keeps ``UᵀU_p = 0`` and ``VᵀV_p = 0`` — so RiemannianAdam stays tangent.
        """
        self._check_pair(x, u)
        if v is None:
            v = u
        else:
            self._check_pair(x, v, "v")
        a, b, c = self.unpack_tangent(u)
        d, e, f = self.unpack_tangent(v)
        m, r, n = self.m, self.r, self.n

        def s(p: torch.Tensor, q: torch.Tensor, rows: int) -> torch.Tensor:
            val = (p * q).sum(dim=(-2, -1), keepdim=True)
            return val.expand(*val.shape[:-2], rows, 1)

        return torch.cat([s(a, d, m), s(b, e, r), s(c, f, n)], dim=-2)

    # ------------------------------------------------------------------ retractions
    def retr(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Retraction chosen by the constructor's ``retraction`` argument."""
        if self.retraction == "polar":
            return self.retr_polar(x, u)
        if self.retraction == "orthographic":
            return self.retr_orthographic(x, u)
        return self.retr_ksl(x, u)

    def _finite(self, block: str, *small: torch.Tensor) -> None:
        """Raise for a non-finite tangent, checked on small factors it propagates into."""
        if self.check_finite:
            check_finite(f"tangent vector u given to retr ({block})", *small)

    def retr_polar(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        r"""Metric-projection retraction: the best rank-``r`` approximation of ``X + ξ``.

        For the packed ``u = [U_p; M; V_p]``,

        .. math::  X + ξ = [U\ U_p] \begin{bmatrix} S + M & I \\ I & 0\end{bmatrix}
                   [V\ V_p]ᵀ = B_u \bigl(T_u K T_vᵀ\bigr) B_vᵀ,

        where ``[U U_p] = B_u T_u`` and ``[V V_p] = B_v T_v`` with ``B_u``, ``B_v``
        orthonormal. An SVD of the ``2r × 2r`` core ``T_u K T_vᵀ = P Σ Qᵀ`` gives
        ``U₊ = B_u P_{:, :r}``, ``S₊ = Σ_{:r}`` (diagonal), ``V₊ = B_v Q_{:, :r}``.
        Second order; never forms ``m × n``.

        **Gram fast path** (the common case; see :func:`_gram_factor`): per side the
        three ``r × r`` products ``UᵀU``, ``UᵀU_p``, ``U_pᵀU_p``, a Cholesky factor of
        ``UᵀU`` and a symmetric eigendecomposition ``K_⊥ = U_pᵀU_p − A'ᵀA' = QΛQᵀ`` give
        ``B_u = [U L⁻ᵀ, N]`` implicitly (``N = P_⊥ Q Λ^{-1/2}``), and
        ``U₊ = U C₁ + U_p C₂`` with ``r × r`` weights ``C₁``, ``C₂``: five ``m × r × r``
        products per side in all, no Householder QR of an ``m × r`` matrix, no
        ``m × r`` temporary. Taken when
        ``κ = (λ_max(K_⊥) + ‖A'‖_F²)/λ_min(K_⊥) ≤ 64`` (``B_u`` orthonormal to
        ``O(ε κ)``) and ``‖UᵀU − I‖_F ≤ 1/2``, or when ``U_p = 0`` exactly (then
        ``B_u = U L⁻ᵀ``, nothing is dropped).

        **Householder path** (``U_p`` rank-deficient or with ``κ > 64``, a large
        component of ``U_p`` in ``range(U)``, ``m < 2r``, or an overflowing
        ``U_pᵀU_p``): QR of ``[U U_p]``, exact in all these cases, ≈ 2× the cost. Both
        paths give the same point up to rounding. Cost ``O((m + n) r² + r³)``.

        **Orthonormality does not drift**: ``UᵀU`` is *measured* at every call and
        ``U`` re-orthonormalised through its Cholesky factor, so
        ``‖U₊ᵀU₊ − I‖ = O(ε κ)`` after any number of steps, independently of the
        error carried by ``U``.

        Like every retraction here, a packed ``u`` that is not gauge-fixed
        (``UᵀU_p ≠ 0`` or ``VᵀV_p ≠ 0``) is read as the tangent vector it represents,
        ``Z(u) = U M Vᵀ + U_p Vᵀ + U V_pᵀ`` (so ``retr(x, u) = retr(x, proju(x, u))``):
        geoopt's ``RiemannianSGD`` seeds its momentum with the raw gradient. Both
        factorisations are exact for any ``U_p``, so no projection pass is needed.

        Raises
        ------
        FloatingPointError
            If ``u`` holds NaN/Inf (``x`` is not modified; nothing is). The check is done
            on ``M`` and on ``U_pᵀU_p``, ``V_pᵀV_p``, into whose diagonals any non-finite
            entry of ``U_p``, ``V_p`` propagates (``U_p`` itself is scanned only if
            ``U_pᵀU_p`` is not finite, to tell overflow from NaN/Inf).
        """
        self._check_pair(x, u)
        U, S, V = self.unpack(x)
        Up, M, Vp = self.unpack_tangent(u)
        r = self.r
        # the only passes over m and n before the output: three r × r Gram blocks per side
        grams = [(_t(B) @ B, _t(B) @ P, _t(P) @ P) for B, P in ((U, Up), (V, Vp))]
        # One host sync for all finiteness flags: NaN/Inf in U_p reaches diag(U_pᵀU_p).
        fin = torch.stack(
            [torch.isfinite(M).all()] + [torch.isfinite(g[2]).all() for g in grams]
        ).tolist()
        if not fin[0]:
            self._finite("M block", M)
        sides: list[_GramFactor | None] = []
        for ok_g, g, P, nm, rows in zip(fin[1:], grams, (Up, Vp), ("Up", "Vp"), (self.m, self.n)):
            if not ok_g:  # NaN/Inf in P (raise), or a finite P whose Gram overflows (QR path)
                self._finite(f"{nm} block", P)
            sides.append(_gram_factor(*g) if ok_g and rows >= 2 * r else None)
        cand = [(i, f) for i, f in enumerate(sides) if f is not None]
        has_zero = [False, False]
        if cand:  # one more sync: the fast-path decisions of both sides
            stats = torch.cat([f.stats.reshape(-1, 5) for _, f in cand]).tolist()
            k = 0
            for i, f in cand:
                n_el = f.zero.numel()  # batch elements (zero has the full batch shape)
                dec = [_gram_ok(s) for s in stats[k : k + n_el]]
                k += n_el
                ok = all(d[0] for d in dec)
                has_zero[i] = any(d[1] for d in dec)
                if ok and has_zero[i]:  # PᵀP = 0 exactly: is P = 0? (one scan)
                    P = (Up, Vp)[i]
                    ok = bool((~f.zero | (P == 0).flatten(-2).all(-1)).all())
                if not ok:
                    sides[i] = None
        fu, fv = sides
        Tu, finish_u = (
            _basis_from_gram(U, Up, fu, has_zero[0]) if fu is not None else _basis_from_qr(U, Up)
        )
        Tv, finish_v = (
            _basis_from_gram(V, Vp, fv, has_zero[1]) if fv is not None else _basis_from_qr(V, Vp)
        )
        # T_u K T_vᵀ with K = [[S + M, I], [I, 0]]: T_u[:, :r] (S+M) T_v[:, :r]ᵀ + cross terms
        Tu1, Tu2 = Tu[..., :r], Tu[..., r:]
        Tv1, Tv2 = Tv[..., :r], Tv[..., r:]
        K = (Tu1 @ (S + M) + Tu2) @ _t(Tv1) + Tu1 @ _t(Tv2)
        Pk, sk, Qhk = torch.linalg.svd(K, full_matrices=False)
        out, (oU, oS, oV) = self._alloc(x, u)
        finish_u(Pk[..., :r], oU)
        finish_v(_t(Qhk[..., :r, :]), oV)
        oS.zero_()
        torch.diagonal(oS, dim1=-2, dim2=-1).copy_(sk[..., :r])
        return out

    def retr_orthographic(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        r"""Orthographic retraction ``R(X, ξ) = (X+ξ)V\,[Uᵀ(X+ξ)V]^{-1}\,Uᵀ(X+ξ)``.

        Factored: with ``Σ = S + M``, ``U' = U + U_p Σ^{-1}``, ``V' = V + V_p Σ^{-ᵀ}``,
        ``R = U' Σ V'ᵀ``; sign-fixed QRs ``U' = Q_a R_a``, ``V' = Q_b R_b`` give
        ``(Q_a, R_a Σ R_bᵀ, Q_b)``. Second order (Absil & Oseledets 2015). Needs
        ``S + M`` invertible: ``Σ^{-1}`` is an ``r × r`` solve against the identity (the
        only inverse in this class, and only of the small core).
        Cost ``O((m + n) r² + r³)``. Non-gauged ``u``: see :meth:`retr_polar`
        (``Σ = S + M + UᵀU_p + V_pᵀV``).

        Raises
        ------
        FloatingPointError
            If ``u`` holds NaN/Inf.
        """
        self._check_pair(x, u)
        U, S, V = self.unpack(x)
        Up, M, Vp = self.unpack_tangent(u)
        self._finite("M block", M)
        A = _t(U) @ Up  # gauge components (0 for a tangent u)
        B = _t(V) @ Vp
        Sig = S + M + A + _t(B)
        # (X+Z)V = UΣ + (U_p − UA), Uᵀ(X+Z) = ΣVᵀ + (V_p − VB)ᵀ
        Wu = torch.linalg.solve(Sig, torch.eye(self.r, dtype=S.dtype, device=S.device), left=False)
        Ua = U @ (torch.eye(self.r, dtype=S.dtype, device=S.device) - A @ Wu) + Up @ Wu
        Wv = _t(Wu)
        Vb = V @ (torch.eye(self.r, dtype=S.dtype, device=S.device) - B @ Wv) + Vp @ Wv
        Qa, Ra = qr_signfix(Ua)
        Qb, Rb = qr_signfix(Vb)
        self._finite("Up or Vp block", Ra, Rb)  # NaN/Inf in U_p, V_p reach R_a, R_b
        return self._cat(Qa, Ra @ Sig @ _t(Rb), Qb, "retr_orthographic")

    def retr_ksl(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        r"""One KSL projector-splitting step (Lubich & Oseledets 2014) for ``Ẏ = ξ``.

        The dense direction ``F = ξ`` is frozen; with ``FV = UM + U_p``:

        1. K-step: ``K = US + FV = U(S+M) + U_p = U_1 Ŝ`` (sign-fixed QR);
        2. S-step: ``S̃ = Ŝ − U_1ᵀ F V``;
        3. L-step: ``L = V S̃ᵀ + Fᵀ U_1 = V_1 S_1ᵀ`` with
           ``FᵀU_1 = V (UM + U_p)ᵀU_1 + V_p UᵀU_1``.

        Returns ``(U_1, S_1, V_1)``; agrees with ``X + ξ`` to ``O(‖ξ‖²)``.
        Cost ``O((m + n) r² + r³)``. Non-gauged ``u``: see :meth:`retr_polar`
        (then ``FV = U(M + V_pᵀV) + U_p`` and ``FᵀU_1`` gains ``−V (VᵀV_p)(UᵀU_1)``).

        Raises
        ------
        FloatingPointError
            If ``u`` holds NaN/Inf.
        """
        self._check_pair(x, u)
        U, S, V = self.unpack(x)
        Up, M, Vp = self.unpack_tangent(u)
        B = _t(V) @ Vp  # gauge component (0 for a tangent u)
        FV = U @ (M + _t(B)) + Up
        U1, Sh = qr_signfix(U @ S + FV)
        self._finite("Up or M block", Sh)  # NaN/Inf in M, U_p reach Ŝ
        St = Sh - _t(U1) @ FV
        UtU1 = _t(U) @ U1
        L = V @ (_t(St) + _t(FV) @ U1 - B @ UtU1) + Vp @ UtU1
        V1, S1t = qr_signfix(L)
        self._finite("Vp block", S1t)
        return self._cat(U1, _t(S1t), V1, "retr_ksl")

    # ------------------------------------------------------------------ transport
    def transp(self, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        r"""Vector transport by projection: ``P_{T_Y}(ξ)`` for ``ξ ∈ T_X``.

        ``ξ = A Vₓᵀ + Uₓ V_pᵀ`` with ``A = UₓM + U_p``; with ``(U, V)`` the bases of ``Y``:
        ``ξV = A(VₓᵀV) + Uₓ(V_pᵀV)``, ``ξᵀU = Vₓ(AᵀU) + V_p(UₓᵀU)``, then
        ``M' = UᵀξV``, ``U_p' = ξV − UM'``, ``V_p' = ξᵀU − VM'ᵀ``.
        Non-expansive; the identity when ``Y = X``. Cost ``O((m + n) r²)``.
        """
        self._check_pair(x, v, "v")
        self._check_pair(x, y, "y")
        Ux, _, Vx = self.unpack(x)
        U, _, V = self.unpack(y)
        Up, M, Vp = self.unpack_tangent(v)
        A = Ux @ M + Up
        ZV = A @ (_t(Vx) @ V) + Ux @ (_t(Vp) @ V)
        ZtU = Vx @ (_t(A) @ U) + Vp @ (_t(Ux) @ U)
        return self._from_projected(U, V, ZV, ZtU)

    def retr_transp(
        self, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``y = retr(x, u)`` and ``transp(x, y, v)`` (``v`` validated before retracting)."""
        self._check_pair(x, v, "v")
        y = self.retr(x, u)
        return y, self.transp(x, y, v)

    # ------------------------------------------------------------------ points
    def projx(self, x: torch.Tensor) -> torch.Tensor:
        r"""Re-orthonormalise: ``U = Q_u R_u``, ``V = Q_v R_v`` (sign-fixed QR),
        ``S ← R_u S R_vᵀ``.

        The represented matrix is unchanged; on a point with orthonormal bases
        ``R_u ≈ R_v ≈ I``, so the gauge is preserved (idempotent, no SVD).
        Cost ``O((m + n) r² + r³)``.
        """
        U, S, V = self.unpack(x)
        Qu, Ru = qr_signfix(U)
        Qv, Rv = qr_signfix(V)
        return self._cat(Qu, Ru @ S @ _t(Rv), Qv, "projx")

    def random(
        self,
        *size: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""Random packed point(s).

        ``U``, ``V``: sign-fixed QR of Gaussian matrices; ``S = P diag(σ) Qᵀ`` with
        ``P, Q`` random orthogonal and ``σ_k = 10^{-k/r}`` (``k = 0..r−1``), so
        ``cond(S) < 10`` and ``S`` is full.

        Parameters
        ----------
        *size : int
            Batch shape, or the full packed shape ``(*batch, m + r + n, r)``.
        dtype, device
            Output dtype (default ``torch.get_default_dtype()``) and device.
        generator : torch.Generator, optional
            Samples are drawn on ``generator.device`` and moved to ``device``.
        """
        batch = self._batch_size(size, self.shape)
        dtype = dtype or torch.get_default_dtype()
        gdev = generator.device if generator is not None else device
        m, n, r = self.m, self.n, self.r

        def g(*shape: int) -> torch.Tensor:
            return torch.randn(*batch, *shape, dtype=dtype, device=gdev, generator=generator)

        U = qr_signfix(g(m, r))[0]
        V = qr_signfix(g(n, r))[0]
        P = qr_signfix(g(r, r))[0]
        Q = qr_signfix(g(r, r))[0]
        sig = torch.logspace(0, -(r - 1) / r, r, dtype=dtype, device=P.device)
        S = (P * sig) @ _t(Q)
        x = self.pack((U, S, V))
        return x.to(device) if device is not None else x

    # ------------------------------------------------------------------ checks
    def _check_dtype_device(self, x: torch.Tensor, t: torch.Tensor, name: str) -> None:
        if t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but x has dtype {x.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} is on device {t.device} but x is on {x.device}")

    def _check_point_on_manifold(
        self, x: torch.Tensor, *, atol: float = 1e-5, rtol: float = 1e-5
    ) -> tuple[bool, str | None]:
        if not bool(torch.isfinite(x).all()):
            return False, "the point holds NaN or Inf"
        U, S, V = self.unpack(x)
        eye = torch.eye(self.r, dtype=x.dtype, device=x.device)
        for name, B in (("U", U), ("V", V)):
            err = float((_t(B) @ B - eye).abs().max())
            if err > atol + rtol:
                return False, (
                    f"{name} does not have orthonormal columns: max|{name}ᵀ{name} − I| = "
                    f"{err:.3g} > atol + rtol = {atol + rtol:.3g} (use projx to re-orthonormalise)"
                )
        sv = torch.linalg.svdvals(S)
        smax = sv[..., 0]
        smin = sv[..., -1]
        bad = smin <= torch.finfo(x.dtype).eps * self.r * smax
        if bool(bad.any()):
            ratio = float((smin / smax.clamp_min(1e-300)).min())
            return False, (
                f"S is numerically singular (σ_min/σ_max = {ratio:.3g}); "
                f"the point has rank < {self.r}"
            )
        return True, None

    def _check_vector_on_tangent(
        self, x: torch.Tensor, u: torch.Tensor, *, atol: float = 1e-5, rtol: float = 1e-5
    ) -> tuple[bool, str | None]:
        if not bool(torch.isfinite(u).all()):
            return False, "the tangent vector holds NaN or Inf"
        U, _, V = self.unpack(x)
        Up, _, Vp = self.unpack_tangent(u)
        for name, B, P in (("U", U, Up), ("V", V, Vp)):
            err = float((_t(B) @ P).abs().max())
            scale = float(P.abs().max()) if P.numel() else 0.0
            if err > atol + rtol * scale:
                return False, (
                    f"{name}ᵀ{name}p ≠ 0: max|{name}ᵀ{name}p| = {err:.3g} > atol + rtol·max|"
                    f"{name}p| = {atol + rtol * scale:.3g} (apply proju)"
                )
        return True, None
