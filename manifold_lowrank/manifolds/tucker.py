r"""The manifold of tensors of fixed multilinear (Tucker) rank.

.. math::

    \mathcal{M}_{\mathbf r} = \{X \in \mathbb R^{n_1\times\dots\times n_d} :
    \operatorname{rank}(X_{(k)}) = r_k,\ k = 1,\dots,d\},
    \qquad \dim \mathcal M_{\mathbf r} = \prod_k r_k + \sum_k r_k (n_k - r_k).

Representation
--------------
A point is ``X = C ×₁ U₁ ×₂ U₂ … ×_d U_d`` with a core ``C ∈ R^{r_1×…×r_d}`` whose
unfoldings ``C_(k)`` have full row rank and factors ``U_k ∈ R^{n_k×r_k}`` with
orthonormal columns. Points produced by this module (:meth:`Tucker.random`,
:meth:`Tucker.retr`, :meth:`Tucker.from_tensorly`, :meth:`Tucker.from_dense`) are in the
*HOSVD gauge*: ``C_(k) C_(k)ᵀ = diag(σ_k²)`` with ``σ_k`` non-increasing, and every
factor's sign fixed. All geometric operations are valid in any orthonormal gauge.

A tangent vector at ``X`` is ``(Ċ, U̇_1, …, U̇_d)`` with the gauge condition
``U_kᵀ U̇_k = 0`` and represents (Koch & Lubich 2010)

.. math::

    ξ = Ċ ×_1 U_1 \cdots ×_d U_d + \sum_k C ×_k U̇_k ×_{j≠k} U_j .

Packing (for geoopt)
--------------------
Points and tangent vectors are stored as one flat vector (``ndim = 1``, like
:class:`geoopt.ProductManifold`) ``[vec C; vec U_1; …; vec U_d]`` of length
``D = ∏ r_k + Σ n_k r_k``, every block in row-major (C) order; leading dimensions are
batch dimensions. As for every :class:`~manifold_lowrank.manifolds.LowRankManifold`,
:attr:`Tucker.shape` is this packed trailing shape ``(D,)``; the tensor's own shape is
:attr:`Tucker.tensor_shape`. :meth:`Tucker.unpack` / :meth:`Tucker.unpack_tangent` return zero-copy
views as :class:`~manifold_lowrank.manifolds.TuckerPoint` /
:class:`~manifold_lowrank.manifolds.TuckerTangent`.

*Any* packed vector ``u = (A, B_1, …, B_d)`` (gauge condition or not) denotes the ambient
tensor ``ξ(u) = A ×_j U_j + Σ_k C ×_k B_k ×_{j≠k} U_j``, which always lies in the tangent
space. The map ``u ↦ ξ(u)`` is onto ``T_X M`` with kernel the *gauge directions*
``(−Σ_k C ×_k M_k, U_1 M_1, …, U_d M_d)``. Consequently

* :meth:`Tucker.proju` returns the unique gauged representative of ``ξ(u)``:
  ``Ċ = A + Σ_k C ×_k (U_kᵀ B_k)``, ``U̇_k = (I − U_k U_kᵀ) B_k``;
* :meth:`Tucker.inner` is the embedded (Frobenius) metric ``⟨ξ(u), ξ(v)⟩_F``, computed in
  factored form on the gauged representatives (see :meth:`Tucker.inner`);

so ``proju`` is idempotent, self-adjoint for ``inner`` and its residual is
``inner``-orthogonal to every vector, in agreement with the orthogonal projection of the
dense ambient space (:meth:`Tucker.proju_dense`). Unlike for ``FixedRank``, the metric is
*not* the Euclidean product of the packed vectors: the factor blocks are weighted by the
core Gram matrices ``Γ_k = C_(k) C_(k)ᵀ``.

Tensor algebra
--------------
Mode products and unfoldings are the tiny batched torch helpers below rather than
``tensorly.tenalg.mode_dot``/``tensorly.base.unfold``: tensorly's functions dispatch on the
*global* backend (we must never call ``tl.set_backend`` at import time) and do not
broadcast over leading batch dimensions, which geoopt's conventions require.
:meth:`Tucker.to_tensorly` builds its ``TuckerTensor`` inside
``tensorly.backend_context("pytorch")``; :meth:`Tucker.from_tensorly` only reads arrays
(numpy or torch) and needs no backend.

References
----------
O. Koch, C. Lubich, *Dynamical tensor approximation*, SIMAX 31 (2010).
D. Kressner, M. Steinlechner, B. Vandereycken, *Low-rank tensor completion by Riemannian
optimization*, BIT 54 (2014).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from manifold_lowrank.linalg import augment_basis, check_finite, qr_signfix
from manifold_lowrank.manifolds.base import LowRankManifold
from manifold_lowrank.manifolds.types import (
    TuckerPoint,
    TuckerProjectedGradients,
    TuckerTangent,
)

__all__ = ["Tucker"]


# --------------------------------------------------------------------------------------
# Batched tensor-algebra helpers (pure torch; see the module docstring for why).
# A tensor "of order d" here has shape (*batch, s_1, …, s_d).
# --------------------------------------------------------------------------------------
def _mode_dot(t: torch.Tensor, m: torch.Tensor, mode: int, order: int) -> torch.Tensor:
    """``t ×_mode m``: contract mode ``mode`` of ``t`` with the columns of ``m``.

    ``t``: ``(*b, s_1, …, s_d)``; ``m``: ``(*b', p, s_mode)`` (batch dims broadcast).
    Returns ``(*b'', s_1, …, p, …, s_d)``. Cost ``O(p ∏ s)``.
    """
    axis = t.ndim - order + mode
    tm = t.movedim(axis, -1)  # (*b, …, s_mode) with the other modes in front
    # give m one singleton dim per remaining mode but the last, so batch dims broadcast
    mt = m.reshape(*m.shape[:-2], *([1] * (order - 2)), *m.shape[-2:]).transpose(-2, -1)
    return (tm @ mt).movedim(-1, mode - order)


def _multi_mode_dot(
    t: torch.Tensor, mats: Sequence[torch.Tensor | None], order: int
) -> torch.Tensor:
    """``t ×_1 M_1 … ×_d M_d`` (``None`` entries are skipped)."""
    for k, m in enumerate(mats):
        if m is not None:
            t = _mode_dot(t, m, k, order)
    return t


def _unfold(t: torch.Tensor, mode: int, order: int) -> torch.Tensor:
    """Mode-``mode`` unfolding ``(*b, s_mode, ∏_{j≠mode} s_j)`` (tensorly's column order)."""
    axis = t.ndim - order + mode
    t = t.movedim(axis, t.ndim - order)
    return t.reshape(*t.shape[: t.ndim - order + 1], -1)


def _gram(core: torch.Tensor, mode: int, order: int) -> torch.Tensor:
    """``Γ_k = C_(k) C_(k)ᵀ`` (``(*b, r_k, r_k)``), cost ``O(r_k ∏ r)``."""
    ck = _unfold(core, mode, order)
    return ck @ ck.transpose(-2, -1)


def _solve_right(a: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``A Γ⁻¹`` by an LU solve (never an explicit inverse). Cost ``O(n r² + r³)``."""
    return torch.linalg.solve(gram, a, left=False)


def _tangent_factor(u: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(I − U Uᵀ) B`` for orthonormal ``U``. Cost ``O(n r s)``."""
    return b - u @ (u.transpose(-2, -1) @ b)


def _sign_fix_columns(ref: torch.Tensor) -> torch.Tensor:
    """Signs ``±1`` (never 0) of the entries of ``ref`` (``(*b, r)``)."""
    return torch.where(ref < 0, -torch.ones_like(ref), torch.ones_like(ref))


def _hosvd_regauge(
    core: torch.Tensor,
    factors: Sequence[torch.Tensor],
    ref_factors: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    r"""Bring ``(C, U_k)`` (orthonormal ``U_k``) into the HOSVD gauge.

    ``C_(k) = Y_k Σ_k W_kᵀ`` (thin SVD, ``Y_k`` square ``r_k×r_k``); the new factors are
    ``U_k Y_k`` and the new core ``C ×_k Y_kᵀ`` (orthogonal changes of basis in the other
    modes leave the mode-``k`` Gram matrix unchanged, so every mode can be computed from
    the same core). Signs: with ``ref_factors`` each column of the new ``U_k`` has a
    non-negative inner product with the same column of ``ref_factors[k]`` (continuity of
    the gauge along a retraction); otherwise the largest-magnitude entry of each column of
    ``Y_k`` is made positive. Cost ``O(Σ_k r_k ∏ r + Σ_k n_k r_k²)``.
    """
    order = len(factors)
    rot = []
    for k in range(order):
        y = torch.linalg.svd(_unfold(core, k, order), full_matrices=False)[0]
        rot.append(y)
    new_factors = []
    for k in range(order):
        y = rot[k]
        uk = factors[k] @ y
        if ref_factors is not None:
            ref = (ref_factors[k] * uk).sum(-2)
        else:
            pos = y.abs().argmax(dim=-2, keepdim=True)
            ref = torch.gather(y, -2, pos).squeeze(-2)
        s = _sign_fix_columns(ref)
        rot[k] = y * s.unsqueeze(-2)
        new_factors.append(uk * s.unsqueeze(-2))
    new_core = _multi_mode_dot(core, [y.transpose(-2, -1) for y in rot], order)
    return new_core, tuple(new_factors)


def _st_hosvd(
    core: torch.Tensor, ranks: Sequence[int]
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Sequentially truncated HOSVD: ``core ≈ S ×_k V_k`` with ``V_k`` orthonormal.

    ``core``: ``(*b, s_1, …, s_d)``; returns ``S`` ``(*b, r_1, …, r_d)`` and ``V_k``
    ``(*b, s_k, r_k)``. Quasi-optimal: ``‖core − S ×_k V_k‖ ≤ √d · best``
    (Vannieuwenhoven et al. 2012). Cost ``O(Σ_k s_k² ∏ s)`` (SVDs of the unfoldings).
    """
    order = len(ranks)
    basis = []
    for k, r in enumerate(ranks):
        y = torch.linalg.svd(_unfold(core, k, order), full_matrices=False)[0][..., :r]
        basis.append(y)
        core = _mode_dot(core, y.transpose(-2, -1), k, order)
    return core, tuple(basis)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class Tucker(LowRankManifold):
    r"""Fixed multilinear-rank Tucker manifold as a geoopt manifold.

    Parameters
    ----------
    shape : sequence of int
        ``(n_1, …, n_d)``, ``d ≥ 2``, every ``n_k ≥ 1``.
    ranks : sequence of int
        ``(r_1, …, r_d)`` with ``1 ≤ r_k ≤ n_k`` and ``r_k ≤ ∏_{j≠k} r_j`` (otherwise no
        tensor has this multilinear rank).
    check_finite : bool
        If true (default) :meth:`retr` raises :class:`FloatingPointError` for a
        non-finite tangent vector (one host synchronisation per call).

    Attributes
    ----------
    tensor_shape, ranks : tuple of int
        ``(n_1, …, n_d)`` and ``(r_1, …, r_d)``. (:attr:`shape` is the *packed* shape
        ``(D,)``, as for every :class:`LowRankManifold`.)
    order : int
        ``d``.
    packed_size : int
        ``D = ∏ r_k + Σ n_k r_k``.

    Notes
    -----
    See the module docstring for the representation, packing, gauge and metric. The
    packed length is ``D = ∏ r_k + Σ n_k r_k`` (:attr:`packed_size`); the manifold
    dimension is :attr:`dim` ``= ∏ r_k + Σ r_k (n_k − r_k)``. With ``n = max n_k``,
    ``r = max r_k``, projection and metric cost ``O(d n r² + d r^{d+1})``, retraction and
    transport ``O(d n r² + d (2r)^{d+1})``; nothing of size ``∏ n_k`` is formed except in
    :meth:`embed`, :meth:`embed_tangent`, :meth:`proju_dense` and :meth:`from_dense`.

    Examples
    --------
    >>> M = Tucker((8, 9, 10), (2, 3, 4))
    >>> x = M.random(generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> x.shape, M.dim
    (torch.Size([107]), 78)
    >>> u = M.random_tangent(x)
    >>> bool(M.check_point_on_manifold(M.retr(x, 0.1 * u), atol=1e-10))
    True
    """

    name = "Tucker"
    ndim = 1
    reversible = False

    def __init__(
        self, shape: Sequence[int], ranks: Sequence[int], *, check_finite: bool = True
    ) -> None:
        super().__init__()
        self.check_finite = bool(check_finite)
        shape_t = self._validate_sizes(shape, "shape")
        ranks_t = self._validate_sizes(ranks, "ranks")
        if len(shape_t) < 2:
            raise ValueError(f"shape must have at least 2 modes (order d >= 2), got {shape_t}")
        if len(ranks_t) != len(shape_t):
            raise ValueError(
                f"ranks must have one entry per mode of shape (d = {len(shape_t)}), "
                f"got ranks={ranks_t} for shape={shape_t}"
            )
        for k, (n, r) in enumerate(zip(shape_t, ranks_t)):
            if r > n:
                raise ValueError(
                    f"ranks[{k}] must satisfy 1 <= ranks[{k}] <= shape[{k}] = {n}, got {r}"
                )
            other = math.prod(ranks_t) // r
            if r > other:
                raise ValueError(
                    f"ranks[{k}] must satisfy ranks[{k}] <= prod of the other ranks = {other} "
                    f"(Tucker rank constraint), got ranks={ranks_t}"
                )
        self.tensor_shape: tuple[int, ...] = shape_t
        self.ranks: tuple[int, ...] = ranks_t
        self.order: int = len(shape_t)
        self._core_numel = math.prod(ranks_t)
        sizes = [self._core_numel, *(n * r for n, r in zip(shape_t, ranks_t))]
        self._sizes: tuple[int, ...] = tuple(sizes)
        self._offsets: tuple[int, ...] = tuple(sum(sizes[:i]) for i in range(len(sizes)))
        self.packed_size: int = sum(sizes)

    @staticmethod
    def _validate_sizes(v: Sequence[int], name: str) -> tuple[int, ...]:
        if isinstance(v, torch.Size):
            v = tuple(v)
        if not isinstance(v, (tuple, list)) or not all(_is_int(s) for s in v):
            raise TypeError(f"{name} must be a sequence of positive ints, got {v!r}")
        if any(s <= 0 for s in v):
            raise ValueError(f"{name} must contain only ints >= 1, got {tuple(v)}")
        return tuple(int(s) for s in v)

    # ------------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple[int]:
        """Packed trailing shape ``(D,)``, ``D = ∏ r_k + Σ n_k r_k`` (the tensor's shape
        is :attr:`tensor_shape`)."""
        return (self.packed_size,)

    @property
    def dim(self) -> int:
        """Manifold dimension ``∏ r_k + Σ r_k (n_k − r_k)``."""
        return self._core_numel + sum(r * (n - r) for n, r in zip(self.tensor_shape, self.ranks))

    def extra_repr(self) -> str:
        return f"tensor_shape={self.tensor_shape}, ranks={self.ranks}"

    # ------------------------------------------------------------------ packing
    def _blocks(self, t: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        core = t.narrow(-1, 0, self._core_numel).unflatten(-1, self.ranks)
        factors = tuple(
            t.narrow(-1, self._offsets[k + 1], self._sizes[k + 1]).unflatten(-1, (n, r))
            for k, (n, r) in enumerate(zip(self.tensor_shape, self.ranks))
        )
        return core, factors

    def unpack(self, x: torch.Tensor) -> TuckerPoint:
        """Zero-copy views ``TuckerPoint(core (*b, r_1…r_d), factors[k] (*b, n_k, r_k))``."""
        self._check_tensor(x, "x")
        return TuckerPoint(*self._blocks(x))

    def unpack_tangent(self, u: torch.Tensor) -> TuckerTangent:
        """Zero-copy views ``TuckerTangent(Ċ, (U̇_1, …, U̇_d))`` of a packed vector."""
        self._check_tensor(u, "u")
        return TuckerTangent(*self._blocks(u))

    def _pack(self, core: torch.Tensor, factors: Sequence[torch.Tensor], name: str) -> torch.Tensor:
        if len(factors) != self.order:
            raise ValueError(f"{name} must have {self.order} factors, got {len(factors)}")
        d = self.order
        if tuple(core.shape[core.ndim - d :]) != self.ranks or core.ndim < d:
            raise ValueError(
                f"{name}.core must have trailing shape {self.ranks}, got {tuple(core.shape)}"
            )
        batch = core.shape[: core.ndim - d]
        for k, f in enumerate(factors):
            want = (self.tensor_shape[k], self.ranks[k])
            if f.ndim < 2 or tuple(f.shape[-2:]) != want:
                raise ValueError(
                    f"{name}.factors[{k}] must have trailing shape {want}, got {tuple(f.shape)}"
                )
            if f.dtype != core.dtype:
                raise TypeError(
                    f"{name}.factors[{k}] must have the core's dtype {core.dtype}, got {f.dtype}"
                )
            if f.shape[:-2] != batch:
                batch = torch.broadcast_shapes(batch, f.shape[:-2])
        parts = [core.expand(*batch, *self.ranks).reshape(*batch, -1)]
        parts += [f.expand(*batch, *f.shape[-2:]).reshape(*batch, -1) for f in factors]
        # (expand is a no-op view when the batch shapes already agree)
        return torch.cat(parts, dim=-1)

    def pack(
        self, point: TuckerPoint | tuple[torch.Tensor, Sequence[torch.Tensor]]
    ) -> torch.Tensor:
        """Pack ``(core, factors)`` into ``(*b, D)`` (a copy). Inverse of :meth:`unpack`."""
        core, factors = point
        return self._pack(core, factors, "point")

    def pack_tangent(
        self, tangent: TuckerTangent | tuple[torch.Tensor, Sequence[torch.Tensor]]
    ) -> torch.Tensor:
        """Pack ``(Ċ, U̇_k)`` into ``(*b, D)``. Inverse of :meth:`unpack_tangent`."""
        core, factors = tangent
        return self._pack(core, factors, "tangent")

    # ------------------------------------------------------------------ checks
    def _check_dense(self, x: torch.Tensor, z: object, name: str) -> torch.Tensor:
        """Validate a dense ambient ``(*b, n_1, …, n_d)`` tensor against the point ``x``."""
        d = self.order
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
        if z.ndim < d or tuple(z.shape[z.ndim - d :]) != self.tensor_shape:
            raise ValueError(
                f"{name} must be dense with trailing shape {self.tensor_shape}, "
                f"got {tuple(z.shape)}"
            )
        if z.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {z.dtype} but x has dtype {x.dtype}; cast first")
        if z.device != x.device:
            raise ValueError(f"{name} is on device {z.device} but x is on {x.device}")
        return z

    def _check_point_on_manifold(
        self, x: torch.Tensor, *, atol: float = 1e-5, rtol: float = 1e-5
    ) -> tuple[bool, str | None]:
        core, factors = self._blocks(x)
        for k, f in enumerate(factors):
            gram = f.transpose(-2, -1) @ f
            eye = torch.eye(gram.shape[-1], dtype=f.dtype, device=f.device)
            if not torch.allclose(gram, eye.expand_as(gram), atol=atol, rtol=rtol):
                err = float((gram - eye).abs().max())
                return False, f"factors[{k}] is not orthonormal: max|U_kᵀU_k − I| = {err:.3g}"
        eps = torch.finfo(x.dtype).eps
        for k in range(self.order):
            s = torch.linalg.svdvals(_unfold(core, k, self.order))
            if not bool(torch.isfinite(s).all()):
                return False, "core contains NaN or Inf"
            tol = eps * max(s.shape[-1], self._core_numel // self.ranks[k]) * s[..., :1]
            if bool((s[..., -1:] <= tol).any()):
                return False, (
                    f"core unfolding C_({k}) is rank deficient (σ_min = "
                    f"{float(s[..., -1].min()):.3g}); the multilinear rank is below {self.ranks}"
                )
        return True, None

    def _check_vector_on_tangent(
        self, x: torch.Tensor, u: torch.Tensor, *, atol: float = 1e-5, rtol: float = 1e-5
    ) -> tuple[bool, str | None]:
        ok, reason = self._check_shape(tuple(u.shape), "u")
        if not ok:
            return False, reason
        _, factors = self._blocks(x)
        _, dfactors = self._blocks(u)
        for k, (f, df) in enumerate(zip(factors, dfactors)):
            off = f.transpose(-2, -1) @ df
            scale = float(df.abs().max()) if df.numel() else 0.0
            if float(off.abs().max()) > atol + rtol * scale:
                return False, (
                    f"gauge condition U_kᵀ U̇_k = 0 violated for k={k}: "
                    f"max|U_kᵀU̇_k| = {float(off.abs().max()):.3g}"
                )
        return True, None

    # ------------------------------------------------------------------ embedding
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Dense ``X = C ×_k U_k``, shape ``(*b, n_1, …, n_d)``. Cost ``O(r ∏ n)``; tests only."""
        core, factors = self.unpack(x)
        return _multi_mode_dot(core, factors, self.order)

    def embed_tangent(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        r"""Dense ``ξ(u) = A ×_j U_j + Σ_k C ×_k B_k ×_{j≠k} U_j``, ``(*b, n_1, …, n_d)``.

        Defined for any packed ``u = (A, B_k)`` (gauged or not). Cost ``O(d r ∏ n)``;
        tests only.
        """
        self._check_pair(x, u, "u")
        core, factors = self._blocks(x)
        dcore, dfactors = self._blocks(u)
        out = _multi_mode_dot(dcore, factors, self.order)
        for k in range(self.order):
            mats = list(factors)
            mats[k] = dfactors[k]
            out = out + _multi_mode_dot(core, mats, self.order)
        return out

    # ------------------------------------------------------------------ projections
    def proju(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        r"""Gauged representative of the tangent tensor ``ξ(u)`` of a packed ``u = (A, B_k)``.

        .. math::

            Ċ = A + \sum_k C ×_k (U_kᵀ B_k), \qquad U̇_k = (I − U_k U_kᵀ) B_k .

        This is the orthogonal projection (for :meth:`inner`) onto the gauged tangent
        vectors: idempotent, the identity on tangent vectors and ``ξ(proju(u)) = ξ(u)``.
        To project a dense ambient tensor use :meth:`proju_dense`. Cost
        ``O(Σ_k n_k r_k² + Σ_k r_k ∏ r)``.
        """
        self._check_pair(x, u, "u")
        core, factors = self._blocks(x)
        a, bs = self._blocks(u)
        dcore = a
        dfactors = []
        for k, (f, b) in enumerate(zip(factors, bs)):
            m = f.transpose(-2, -1) @ b
            dcore = dcore + _mode_dot(core, m, k, self.order)
            dfactors.append(b - f @ m)
        return self._pack(dcore, dfactors, "tangent")

    def proju_factored(
        self, x: torch.Tensor, core: torch.Tensor, factors: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        r"""Packed tangent ``P_X(Z)`` of an ambient tensor in Tucker form ``Z = S ×_k A_k``.

        ``core`` ``S`` is ``(*b, s_1, …, s_d)``, ``factors[k]`` ``A_k`` is
        ``(*b, n_k, s_k)`` (any ``s_k``, not necessarily orthonormal). With
        ``M_j = U_jᵀ A_j`` and ``T_k = S ×_{j≠k} M_j``:

        .. math::

            Ċ = S ×_j M_j, \qquad
            U̇_k = (I − U_kU_kᵀ)\, A_k\, T_{k,(k)} C_{(k)}ᵀ Γ_k^{-1}.

        Used by :meth:`transp`. Cost ``O(Σ_k n_k s_k r_k + d² s^{d} r + Σ_k r_k³)``,
        ``s = max s_k``; never forms a ``∏ n_k`` tensor.
        """
        self._check_tensor(x, "x")
        d = self.order
        s, bases = core, list(factors)
        if not isinstance(s, torch.Tensor) or s.ndim < d or len(bases) != d:
            raise ValueError(f"core must be an order-{d} tensor and factors {d} matrices")
        for k, a in enumerate(bases):
            if (
                not isinstance(a, torch.Tensor)
                or a.ndim < 2
                or a.shape[-2] != self.tensor_shape[k]
                or a.shape[-1] != s.shape[s.ndim - d + k]
            ):
                raise ValueError(
                    f"factors[{k}] must have trailing shape ({self.tensor_shape[k]}, "
                    f"{s.shape[s.ndim - d + k]}) to match core {tuple(s.shape)}"
                )
            if a.dtype != x.dtype or s.dtype != x.dtype:
                raise TypeError(f"core/factors[{k}] must have the dtype of x ({x.dtype})")
        core, factors = self._blocks(x)
        mats = [f.transpose(-2, -1) @ a for f, a in zip(factors, bases)]
        dfactors = []
        for k in range(d):
            mk = list(mats)
            mk[k] = None
            t = _multi_mode_dot(s, mk, d)  # (*b, r_1, …, s_k, …, r_d)
            ck = _unfold(core, k, d)
            y = _unfold(t, k, d) @ ck.transpose(-2, -1)  # (*b, s_k, r_k)
            w = bases[k] @ y  # (*b, n_k, r_k)
            w = w - factors[k] @ (mats[k] @ y)
            dfactors.append(_solve_right(w, ck @ ck.transpose(-2, -1)))
        dcore = _multi_mode_dot(s, mats, d)
        return self._pack(dcore, dfactors, "tangent")

    def projected_gradients(self, x: torch.Tensor, z: torch.Tensor) -> TuckerProjectedGradients:
        r"""``core = Z ×_j U_jᵀ`` and ``partials[k] = Z ×_{j≠k} U_jᵀ`` of a dense ``Z``.

        Reference implementation for tests (a layer's backward produces these without
        forming ``Z``). Cost ``O(d² r ∏ n)``.
        """
        _, factors = self.unpack(x)
        d = self.order
        self._check_dense(x, z, "z")
        ft = [f.transpose(-2, -1) for f in factors]
        partials = []
        for k in range(d):
            mk: list[torch.Tensor | None] = list(ft)
            mk[k] = None
            partials.append(_multi_mode_dot(z, mk, d))
        pcore = _mode_dot(partials[0], ft[0], 0, d)
        return TuckerProjectedGradients(pcore, tuple(partials))

    def rgrad_from_projected(
        self, x: torch.Tensor, grads: TuckerProjectedGradients
    ) -> torch.Tensor:
        r"""Riemannian gradient ``P_X(G)`` from the projected gradients, without ``G``.

        With ``core = G ×_j U_jᵀ`` and ``partials[k] = G ×_{j≠k} U_jᵀ``
        (:class:`~manifold_lowrank.manifolds.TuckerProjectedGradients`):

        .. math::

            Ċ = \text{core}, \qquad
            U̇_k = (I − U_kU_kᵀ)\, \text{unfold}_k(\text{partials}[k])\, C_{(k)}ᵀ
                  (C_{(k)}C_{(k)}ᵀ)^{-1}.

        Derivation: the orthogonal projection onto ``T_X M`` is ``P = P_core + Σ_k P_k``
        with ``P_core(G) = (G ×_j U_jᵀ) ×_j U_j`` and
        ``P_k(G) = C ×_k [(I−U_kU_kᵀ) G_(k) (⊗_{j≠k} U_j) C_(k)^†] ×_{j≠k} U_j``
        (Koch & Lubich 2010, Thm 2.1), ``C_(k)^† = C_(k)ᵀ(C_(k)C_(k)ᵀ)⁻¹``, and
        ``G_(k)(⊗_{j≠k} U_j) = unfold_k(partials[k])``. Cost ``O(Σ_k n_k r_k ∏r/r_k)``
        plus an ``r_k×r_k`` solve per mode.
        """
        core, factors = self.unpack(x)
        d = self.order
        pcore, partials = grads
        for t in (pcore, *partials):
            if not isinstance(t, torch.Tensor) or t.dtype != x.dtype:
                raise TypeError(f"grads must hold tensors of the dtype of x ({x.dtype})")
        if len(partials) != d:
            raise ValueError(f"grads.partials must have {d} entries, got {len(partials)}")
        if tuple(pcore.shape[pcore.ndim - d :]) != self.ranks:
            raise ValueError(
                f"grads.core must have trailing shape {self.ranks}, got {tuple(pcore.shape)}"
            )
        dfactors = []
        for k in range(d):
            want = list(self.ranks)
            want[k] = self.tensor_shape[k]
            p = partials[k]
            if tuple(p.shape[p.ndim - d :]) != tuple(want):
                raise ValueError(
                    f"grads.partials[{k}] must have trailing shape {tuple(want)}, "
                    f"got {tuple(p.shape)}"
                )
            ck = _unfold(core, k, d)
            w = _tangent_factor(factors[k], _unfold(p, k, d) @ ck.transpose(-2, -1))
            dfactors.append(_solve_right(w, ck @ ck.transpose(-2, -1)))
        return self._pack(pcore, dfactors, "tangent")

    def proju_dense(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Orthogonal (Frobenius) projection of a dense ``Z (*b, n_1…n_d)`` onto ``T_X M``.

        Returns the packed gauged tangent vector; see :meth:`rgrad_from_projected` for
        the formula. Cost ``O(d² r ∏ n)`` (dense); tests and reference only.
        """
        return self.rgrad_from_projected(x, self.projected_gradients(x, z))

    egrad2rgrad_dense = proju_dense

    def egrad2rgrad(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        r"""Riemannian gradient from the factor gradients of ``f(C ×_k U_k)``.

        ``u`` packs ``(∂f/∂C, ∂f/∂U_1, …)`` (what autograd gives for the packed
        parameter). Since ``∂f/∂C = G ×_j U_jᵀ`` and
        ``∂f/∂U_k = G_(k)(⊗_{j≠k}U_j) C_(k)ᵀ`` with ``G = ∇f(X)``,

        .. math::

            Ċ = ∂C, \qquad U̇_k = (I − U_kU_kᵀ)\, ∂U_k\, (C_{(k)}C_{(k)}ᵀ)^{-1}

        equals ``P_X(G)`` (:meth:`proju_dense`) without forming ``G``; the Gram matrices
        are handled by a linear solve. Their condition number is ``(σ_max/σ_min)²`` of the
        core unfoldings. Cost ``O(Σ_k n_k r_k² + Σ_k r_k ∏ r + Σ_k r_k³)``.
        """
        self._check_pair(x, u, "u")
        core, factors = self._blocks(x)
        gcore, gfactors = self._blocks(u)
        d = self.order
        dfactors = [
            _solve_right(_tangent_factor(f, g), _gram(core, k, d))
            for k, (f, g) in enumerate(zip(factors, gfactors))
        ]
        return self._pack(gcore, dfactors, "tangent")

    # ------------------------------------------------------------------ metric
    def _block_inner(
        self, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor | None
    ) -> list[torch.Tensor]:
        self._check_pair(x, u, "u")
        pu = self.proju(x, u)
        pv = pu if v is None else self.proju(x, v)
        core, _ = self._blocks(x)
        a, bs = self._blocks(pu)
        a2, bs2 = self._blocks(pv)
        d = self.order
        out = [(a * a2).flatten(-d).sum(-1)]
        for k in range(d):
            gk = _gram(core, k, d)
            out.append(((bs[k] @ gk) * bs2[k]).flatten(-2).sum(-1))
        return out

    def inner(
        self,
        x: torch.Tensor,
        u: torch.Tensor,
        v: torch.Tensor | None = None,
        *,
        keepdim: bool = False,
    ) -> torch.Tensor:
        r"""Embedded (Frobenius) metric ``⟨ξ(u), ξ(v)⟩_F`` in factored form.

        For gauged ``(Ċ, U̇_k)``, ``(Ċ', U̇'_k)`` (inputs are first passed through
        :meth:`proju`, which does not change ``ξ``)

        .. math::

            ⟨ξ, η⟩ = ⟨Ċ, Ċ'⟩ + \sum_k ⟨U̇_k C_{(k)}, U̇'_k C_{(k)}⟩
                   = ⟨Ċ, Ċ'⟩ + \sum_k \operatorname{tr}(U̇_kᵀ U̇'_k Γ_k),
            \quad Γ_k = C_{(k)}C_{(k)}ᵀ,

        the cross terms vanishing by ``U_kᵀU̇_k = 0``. Note that this is *not* the
        Euclidean inner product of the packed vectors. Returns ``(*b,)`` (``(*b, 1)`` with
        ``keepdim``). Cost ``O(Σ_k n_k r_k² + Σ_k r_k ∏ r)``.
        """
        out = sum(self._block_inner(x, u, v))
        return out.unsqueeze(-1) if keepdim else out

    def component_inner(
        self, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-block metric contributions broadcast over each block's packed entries.

        Entry ``i`` of the result is the term of :meth:`inner` belonging to the block
        (core or factor ``k``) that holds entry ``i``. Adaptive optimizers (geoopt's
        ``RiemannianAdam``) then rescale each block by one scalar, which keeps the gauge
        condition ``U_kᵀU̇_k = 0`` (an entrywise rescaling would break it).
        Shape ``(*b, D)``.
        """
        blocks = self._block_inner(x, u, v)
        parts = [b.unsqueeze(-1).expand(*b.shape, n) for b, n in zip(blocks, self._sizes)]
        return torch.cat(parts, dim=-1)

    # ------------------------------------------------------------------ retraction
    def _augmented_bases(
        self, factors: Sequence[torch.Tensor], dfactors: Sequence[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Orthonormal ``Q_k ⊥ U_k`` with ``range(U̇_k) ⊆ range(Q_k)`` and ``R_k = Q_kᵀ U̇_k``."""
        out = []
        for k, (f, b) in enumerate(zip(factors, dfactors)):
            n, r = self.tensor_shape[k], self.ranks[k]
            if 2 * r <= n:
                # QR of [U_k, U̇_k] (not of U̇_k alone): Q ⊥ U_k to machine precision even
                # when U̇_k is rank deficient (Manopt PR #20 lesson).
                q = augment_basis(f, b)
            else:
                # Not enough room for r new directions: use the whole complement of U_k.
                q = torch.linalg.qr(f, mode="complete")[0][..., r:]
            out.append((q, q.transpose(-2, -1) @ b))
        return out

    def retr(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        r"""Truncated-HOSVD retraction ``R_X(ξ) = H_r(X + ξ)`` in factored form.

        ``X + ξ = S ×_k [U_k, Q_k]`` with ``Q_kR_k`` an orthonormal factorisation of
        ``U̇_k`` (``Q_k ⊥ U_k``) and the doubled core

        .. math::

            S_{0\dots0} = C + Ċ, \qquad S_{0..1_k..0} = C ×_k R_k,
            \qquad \text{other blocks } 0,

        (block ``1_k`` = the ``Q_k`` part of mode ``k``). ``S`` (size ``∏ 2r_k``) is
        truncated to ranks ``r`` by an ST-HOSVD, the result brought to the HOSVD gauge,
        and the factors multiplied back: ``U_k^+ = [U_k, Q_k] V_k``. A first-order
        retraction (Kressner, Steinlechner & Vandereycken 2014):
        ``R_X(tξ) = X + tξ + O(t²)``. ``u`` may be any packed vector (it is re-gauged
        by :meth:`proju` first). Cost ``O(Σ_k n_k r_k² + Σ_k (2r_k) ∏_j 2r_j)``.

        Raises
        ------
        FloatingPointError
            If ``u`` holds NaN/Inf (unless ``check_finite=False``); ``x`` is never
            modified.
        """
        self._check_pair(x, u, "u")
        if self.check_finite:
            check_finite("u", u)
        d = self.order
        batch = torch.broadcast_shapes(x.shape[:-1], u.shape[:-1])
        x = x.expand(*batch, self.packed_size)  # one point per tangent vector
        core, factors = self._blocks(x)
        dcore, dfactors = self._blocks(self.proju(x, u))
        aug = self._augmented_bases(factors, dfactors)
        sizes = [r + q.shape[-1] for r, (q, _) in zip(self.ranks, aug)]
        s = core.new_zeros(*batch, *sizes)
        head = tuple(slice(0, r) for r in self.ranks)
        s[(..., *head)] = core + dcore
        for k, (_, rk) in enumerate(aug):
            idx = list(head)
            idx[k] = slice(self.ranks[k], sizes[k])
            s[(..., *idx)] = _mode_dot(core, rk, k, d)
        small, vs = _st_hosvd(s, self.ranks)
        new_factors = [torch.cat([f, q], dim=-1) @ v for f, (q, _), v in zip(factors, aug, vs)]
        new_core, new_factors_t = _hosvd_regauge(small, new_factors, ref_factors=factors)
        return self._pack(new_core, new_factors_t, "retr")

    def transp(self, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        r"""Vector transport by projection: ``P_{T_Y M}(ξ_X(v))`` in factored form.

        ``ξ_X(v) = S ×_k [U_k, B_k]`` with the doubled core ``S_{0…0} = A``,
        ``S_{0..1_k..0} = C`` is projected onto ``T_Y M`` by
        :meth:`proju_factored` without forming any ``∏ n_k`` tensor. Linear in ``v``.
        Cost ``O(Σ_k n_k r_k² + d² (2r)^{d} r)``.
        """
        self._check_pair(x, v, "v")
        self._check_pair(x, y, "y")
        d = self.order
        batch = torch.broadcast_shapes(x.shape[:-1], v.shape[:-1], y.shape[:-1])
        x = x.expand(*batch, self.packed_size)
        v = v.expand(*batch, self.packed_size)
        core, factors = self._blocks(x)
        a, bs = self._blocks(v)
        s = core.new_zeros(*batch, *(2 * r for r in self.ranks))
        head = tuple(slice(0, r) for r in self.ranks)
        s[(..., *head)] = a
        for k in range(d):
            idx = list(head)
            idx[k] = slice(self.ranks[k], 2 * self.ranks[k])
            s[(..., *idx)] = core
        bases = [torch.cat([f, b], dim=-1) for f, b in zip(factors, bs)]
        return self.proju_factored(y, s, bases)

    def projx(self, x: torch.Tensor) -> torch.Tensor:
        r"""Re-orthonormalise the factors: ``U_k = Q_k R_k`` (sign-fixed QR), ``C ← C ×_k R_k``.

        The tensor ``X`` is unchanged; on a point with orthonormal factors ``R_k = I`` up
        to rounding, so ``projx`` is idempotent and keeps the gauge (no re-HOSVD, which
        would rotate the factors and misalign optimizer state). Does not restore a lost
        multilinear rank. Cost ``O(Σ_k n_k r_k² + Σ_k r_k ∏ r)``.
        """
        self._check_tensor(x, "x")
        core, factors = self._blocks(x)
        qs = []
        for k, f in enumerate(factors):
            q, r = qr_signfix(f)
            qs.append(q)
            core = _mode_dot(core, r, k, self.order)
        return self._pack(core, qs, "projx")

    # ------------------------------------------------------------------ random points
    def random(
        self,
        *size: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """A random point in HOSVD gauge (Gaussian core, Haar-like orthonormal factors).

        ``size`` is the batch shape (empty: one point of shape ``(D,)``) or the full
        packed shape ``(*b, D)``. Draws from ``generator`` (global RNG if ``None``) on the
        generator's device, then moves the result to ``device``.
        """
        batch = self._batch_size(size, self.shape)
        dtype = dtype or torch.get_default_dtype()
        gdev = generator.device if generator is not None else device
        kw = {"dtype": dtype, "device": gdev, "generator": generator}
        core = torch.randn(*batch, *self.ranks, **kw)
        factors = [torch.randn(*batch, n, r, **kw) for n, r in zip(self.tensor_shape, self.ranks)]
        if device is not None:
            core = core.to(device)
            factors = [f.to(device) for f in factors]
        factors = [qr_signfix(f)[0] for f in factors]
        return self._pack(*_hosvd_regauge(core, factors), "random")

    # ------------------------------------------------------------------ conversions
    def _from_factors(
        self, core: torch.Tensor, factors: Sequence[torch.Tensor], name: str
    ) -> torch.Tensor:
        """Re-gauge arbitrary full-rank factors: QR, absorb ``R`` into the core, HOSVD."""
        qs = []
        for k, f in enumerate(factors):
            q, r = qr_signfix(f)
            qs.append(q)
            core = _mode_dot(core, r, k, self.order)
        core, qs_t = _hosvd_regauge(core, qs)
        x = self._pack(core, qs_t, name)
        ok, reason = self._check_point_on_manifold(x, atol=1e-3, rtol=1e-3)
        if not ok:
            raise ValueError(f"{name} is not of multilinear rank {self.ranks}: {reason}")
        return x

    def from_tensorly(
        self,
        tucker_tensor: Any,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Packed point from a tensorly ``TuckerTensor`` or a ``(core, factors)`` pair.

        Factors need not be orthonormal: each is QR-factorised (sign-fixed), ``R_k``
        absorbed into the core, and the result brought to the HOSVD gauge. Accepts numpy
        or torch data (converted with ``torch.as_tensor``). Raises ``ValueError`` if the
        shapes/ranks differ from the manifold's or the multilinear rank is lower.
        """
        core, factors = tucker_tensor
        core = torch.as_tensor(core, dtype=dtype, device=device)
        factors = [torch.as_tensor(f, dtype=core.dtype, device=core.device) for f in factors]
        if core.ndim != self.order or len(factors) != self.order:
            raise ValueError(
                f"tucker_tensor must have an order-{self.order} core and {self.order} factors"
            )
        if not core.is_floating_point():
            raise TypeError(f"tucker_tensor.core must be floating point, got {core.dtype}")
        return self._from_factors(core, factors, "tucker_tensor")

    def to_tensorly(self, x: torch.Tensor) -> Any:
        """A tensorly ``TuckerTensor`` holding views of the (unbatched) factors of ``x``."""
        import tensorly
        from tensorly.tucker_tensor import TuckerTensor

        self._check_tensor(x, "x")
        if x.ndim != 1:
            raise ValueError(
                f"x must be a single point of shape ({self.packed_size},) "
                f"for to_tensorly, got {tuple(x.shape)}"
            )
        core, factors = self._blocks(x)
        # TuckerTensor validates with tensorly's backend functions; the backend is set
        # locally (never globally) so the caller's tensorly configuration is untouched.
        with tensorly.backend_context("pytorch"):
            return TuckerTensor((core, list(factors)))

    def from_dense(self, tensor: torch.Tensor) -> torch.Tensor:
        """Quasi-optimal rank-``r`` approximation of a dense tensor by ST-HOSVD.

        ``‖T − H_r(T)‖ ≤ √d · min_{Y ∈ M} ‖T − Y‖``. Batched over leading dims.
        Cost ``O(Σ_k n_k ∏ n)`` (SVDs of the unfoldings of shrinking tensors).
        """
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise TypeError("tensor must be a floating-point torch.Tensor")
        d = self.order
        if tensor.ndim < d or tuple(tensor.shape[-d:]) != self.tensor_shape:
            raise ValueError(
                f"tensor must have trailing shape {self.tensor_shape}, got {tuple(tensor.shape)}"
            )
        core, factors = _st_hosvd(tensor, self.ranks)
        core, factors = _hosvd_regauge(core, factors)
        return self._pack(core, factors, "from_dense")
