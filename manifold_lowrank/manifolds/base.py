r"""The manifold contract shared by :class:`FixedRank`, :class:`Tucker` and new manifolds.

:class:`LowRankManifold` is a :class:`geoopt.Manifold`, so geoopt's optimizers
(:class:`geoopt.optim.RiemannianSGD`, :class:`geoopt.optim.RiemannianAdam`) and
:class:`geoopt.ManifoldParameter` work on it unchanged. geoopt stores every point and
every tangent vector as **one tensor**; a low-rank manifold therefore defines

* a **packed** layout: a point is a tensor of shape ``(..., *self.shape)`` (leading
  dimensions are batch dimensions), tangent vectors use the same shape; and
* a **factored** view of that tensor (:meth:`unpack`, :meth:`unpack_tangent`) as the
  ``NamedTuple`` types of :mod:`manifold_lowrank.manifolds.types`, made of zero-copy
  views (``narrow``/``view``), plus the inverse :meth:`pack`, :meth:`pack_tangent`.

Contract for people adding a manifold
-------------------------------------
A subclass must provide (all batched over leading dimensions, device- and
dtype-agnostic, and never forming a dense ambient object on the hot path):

``shape``, ``ndim``, ``dim``
    Trailing shape of a packed point, its number of dimensions, and the manifold
    dimension (an ``int``).
``unpack``, ``pack``, ``unpack_tangent``, ``pack_tangent``
    Packed ⇄ factored conversions; ``unpack*`` return views, ``pack*`` allocate.
``proju(x, u)``
    The orthogonal projection onto ``T_x`` (in the ambient Frobenius metric) of the
    *ambient vector represented by* ``u``. For packed manifolds the packed ``u`` is
    read as a factored ambient vector ``Z(u)`` (the tangent formula without the
    gauge constraints, see :meth:`embed_tangent`); ``proju`` must be idempotent, the
    identity on tangent vectors and self-adjoint with respect to
    ``⟨Z(u), Z(w)⟩_F``.
``egrad2rgrad(x, g)``
    Riemannian gradient from the autograd gradient ``g`` of the **packed** tensor
    (i.e. the factor gradients of ``f(embed(x))``).
``inner(x, u, v=None, *, keepdim=False)``
    The metric; for the embedded geometries here it is the ambient Frobenius inner
    product of the tangent vectors. The default implementation sums ``u * v`` over
    the packed dimensions, which is correct when the packed tangent blocks map
    isometrically and mutually orthogonally into the ambient space (true for the
    gauge-fixed representation of :class:`FixedRank`). Override otherwise —
    :class:`Tucker` does: its factor blocks are weighted by the core Gram matrices.
``component_inner(x, u, v=None)``
    Per-block squared norms, broadcastable to ``x``; geoopt's ``RiemannianAdam``
    divides its momentum by the square root of this, so it must be constant on each
    block whose scaling keeps a tangent vector tangent.
``retr(x, u)``, ``expmap``, ``transp(x, y, v)``, ``retr_transp(x, u, v)``
    A first-order retraction (``expmap`` is an alias for it unless the subclass has an
    exact exponential map) and a vector transport into ``T_y``.
``projx(x)``
    Re-orthonormalisation of the bases without changing the represented point or its
    gauge (idempotent, identity on points up to rounding).
``embed(x)``, ``embed_tangent(x, u)``
    Dense ambient objects — ``O(∏ sizes)``, tests and small problems only.
``random(*size, dtype=None, device=None, generator=None)``, ``origin``
    Random points (``size`` is either the batch shape or the full packed shape).
``_check_point_on_manifold``, ``_check_vector_on_tangent``
    Return ``(ok, reason)``; the reason names the failing block and the measured error.

Optional: ``scale_point(x, factor) -> (y, tangents_need_transport)`` for a manifold
closed under scaling (``factor·X`` is again a point): :mod:`manifold_lowrank.optim`'s
Riemannian optimizers then apply decoupled weight decay through it (``y`` represents
``factor·X``; ``x`` is not modified; the flag says whether the packed tangent vectors at
``x`` must be transported to ``y``). Without it ``weight_decay`` is skipped with a warning.

Helpers a subclass may call (stable, protected API): ``_check_tensor(t, name)`` (packed
floating tensor of the right trailing shape, or ``TypeError``/``ValueError`` naming
``name``), ``_check_pair(x, u, name)`` (the same for a point and a vector, plus equal
dtype/device and broadcastable batch shapes) and the static ``_batch_size(size, full)``
(interprets ``random(*size)`` as a batch shape or a full packed shape).
``component_inner`` is checked by ``check_manifold`` (``metric.component_scaling``).

Use :func:`manifold_lowrank.testing.check_manifold` to test a new manifold.

Errors
------
Wrong trailing shapes raise :class:`ValueError`, mixed dtypes :class:`TypeError`, mixed
devices :class:`ValueError`; a retraction fed a non-finite tangent vector raises
:class:`FloatingPointError` before anything is computed (points are never modified in
place by this class).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any

import geoopt
import torch

__all__ = ["LowRankManifold"]


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class LowRankManifold(geoopt.Manifold, metaclass=abc.ABCMeta):
    """Base class of the packed low-rank manifolds (see the module docstring).

    Subclasses implement the abstract methods; the base class supplies shape/dtype
    validation, the default metric (sum over the packed layout), ``norm``,
    ``expmap = retr``, ``retr_transp = (retr, transp)``, :meth:`random_tangent`,
    :meth:`origin` and the geoopt checks' plumbing.
    """

    name = "LowRankManifold"
    ndim = 2
    reversible = False

    # ------------------------------------------------------------------ layout
    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, ...]:
        """Trailing shape of a packed point (and of a packed tangent vector)."""

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Dimension of the manifold."""

    @abc.abstractmethod
    def unpack(self, x: torch.Tensor) -> Any:
        """Factored view (zero-copy) of a packed point."""

    @abc.abstractmethod
    def pack(self, point: Any) -> torch.Tensor:
        """Packed tensor of a factored point (allocates)."""

    @abc.abstractmethod
    def unpack_tangent(self, u: torch.Tensor) -> Any:
        """Factored view (zero-copy) of a packed tangent vector."""

    @abc.abstractmethod
    def pack_tangent(self, tangent: Any) -> torch.Tensor:
        """Packed tensor of a factored tangent vector (allocates)."""

    # ------------------------------------------------------------------ dense
    @abc.abstractmethod
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Dense ambient representation of a point (tests/small problems only)."""

    @abc.abstractmethod
    def embed_tangent(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Dense ambient representation of the (tangent or factored ambient) ``u``."""

    # ------------------------------------------------------------------ geometry
    @abc.abstractmethod
    def random(
        self,
        *size: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Random packed point(s)."""

    def origin(
        self,
        *size: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        seed: int = 42,
    ) -> torch.Tensor:
        """A reproducible point: :meth:`random` with a private CPU generator seeded by ``seed``.

        The global RNG is not touched; the result is the same on every device.
        """
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        x = self.random(*size, dtype=dtype, device="cpu", generator=gen)
        return x.to(device) if device is not None else x

    def random_tangent(
        self, x: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``proju(x, z)`` for a Gaussian packed ``z`` (not normalised)."""
        self._check_tensor(x, "x")
        z = torch.randn(
            x.shape,
            dtype=x.dtype,
            device=generator.device if generator else x.device,
            generator=generator,
        ).to(x.device)
        return self.proju(x, z)

    def inner(
        self,
        x: torch.Tensor,
        u: torch.Tensor,
        v: torch.Tensor | None = None,
        *,
        keepdim: bool = False,
    ) -> torch.Tensor:
        r"""Metric ``⟨u, v⟩_x = Σ u ⊙ v`` over the packed dimensions.

        Equals the ambient Frobenius inner product of the embedded tangent vectors when
        the packed blocks are ambient-orthogonal (see the module docstring). Cost
        ``O(numel)``.
        """
        self._check_pair(x, u, "u")
        if v is None:
            v = u
        else:
            self._check_pair(x, v, "v")
        dims = tuple(range(-self.ndim, 0))
        return (u * v).sum(dim=dims, keepdim=keepdim)

    def component_inner(
        self, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Default: :meth:`inner` with ``keepdim=True`` (one scalar for the whole point)."""
        return self.inner(x, u, v, keepdim=True)

    def norm(self, x: torch.Tensor, u: torch.Tensor, *, keepdim: bool = False) -> torch.Tensor:
        """``sqrt(inner(x, u, u))``."""
        return self.inner(x, u, keepdim=keepdim).clamp_min(0).sqrt()

    def expmap(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Alias of :meth:`retr` (no closed-form exponential map; the retraction is
        first order, which is all geoopt's optimizers need)."""
        return self.retr(x, u)

    def retr_transp(
        self, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``y = retr(x, u)`` and ``transp(x, y, v)``."""
        y = self.retr(x, u)
        return y, self.transp(x, y, v)

    expmap_transp = retr_transp

    def transp_follow_retr(self, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``transp(x, retr(x, u), v)``."""
        return self.retr_transp(x, u, v)[1]

    transp_follow_expmap = transp_follow_retr

    def logmap(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no logarithmic map")

    def dist(self, x: torch.Tensor, y: torch.Tensor, *, keepdim: bool = False) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} has no geodesic distance; compare embed(x) - embed(y)"
        )

    # ------------------------------------------------------------------ validation
    def _check_shape(self, shape: Sequence[int], name: str) -> tuple[bool, str | None]:
        shape = tuple(shape)
        want = tuple(self.shape)
        if len(shape) < len(want) or shape[len(shape) - len(want) :] != want:
            return False, (
                f"`{name}` must have trailing shape {want} (packed layout of {self!r}), "
                f"got shape {shape}"
            )
        return True, None

    def _check_tensor(self, t: object, name: str) -> None:
        """Raise ``TypeError``/``ValueError`` unless ``t`` is a packed floating tensor."""
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        ok, reason = self._check_shape(t.shape, name)
        if not ok:
            raise ValueError(reason)

    def _check_pair(self, x: torch.Tensor, u: torch.Tensor, name: str = "u") -> None:
        """Validate ``x`` and ``u``: packed shapes, same dtype/device, broadcastable batch."""
        self._check_tensor(x, "x")
        self._check_tensor(u, name)
        if u.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {u.dtype} but x has dtype {x.dtype}; cast first")
        if u.device != x.device:
            raise ValueError(f"{name} is on device {u.device} but x is on {x.device}")
        nd = self.ndim
        try:
            torch.broadcast_shapes(x.shape[:-nd], u.shape[:-nd])
        except RuntimeError:
            raise ValueError(
                f"batch shapes of x {tuple(x.shape[:-nd])} and {name} "
                f"{tuple(u.shape[:-nd])} do not broadcast"
            ) from None

    @staticmethod
    def _batch_size(size: tuple[Any, ...], full: tuple[int, ...]) -> tuple[int, ...]:
        """Interpret ``random(*size)``: batch shape, or full packed shape ending in ``full``."""
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        for s in size:
            if not _is_int(s) or s < 0:
                raise ValueError(f"size must be non-negative integers, got {size!r}")
        k = len(full)
        if len(size) >= k and tuple(size[len(size) - k :]) == tuple(full):
            return tuple(size[: len(size) - k])
        return tuple(size)

    def _default_tol(self, dtype: torch.dtype) -> float:
        return 100.0 * torch.finfo(dtype).eps * math.sqrt(max(1, math.prod(self.shape)))

    def extra_repr(self) -> str:
        return f"shape={tuple(self.shape)}"
