r"""Gradient oracles: how an integrator asks for the right-hand side.

Sign convention
---------------
Every integrator integrates the **gradient flow**

.. math:: \dot Y = -G(Y),

where ``G`` is what the oracle produces (for training, ``G = ∇L(Y)`` and the step
size ``h`` is the learning rate, so one explicit Euler substep moves by ``-h G``).
A general matrix ODE ``Ẏ = F(Y)`` is integrated by building the oracle with
``kind="field"``, which sets ``G = -F``. Projected gradients
(:class:`~manifold_lowrank.manifolds.ProjectedGradients`) always hold projections of
the *gradient* ``G`` (what a layer's backward pass returns).

The protocol
------------
An oracle is any object with a method ``project(point)``:

* matrix case: ``project(FixedRankPoint(U, S, V)) -> ProjectedGradients(G V, Uᵀ G V,
  Gᵀ U)`` with ``G = G(U S Vᵀ)``;
* Tucker case: ``project(TuckerPoint(C, (U_1, …, U_d))) ->
  TuckerProjectedGradients(G ×_j U_jᵀ, (G ×_{j≠k} U_jᵀ)_k)``.

Integrators only ever call ``project`` with orthonormal bases, and multi-pass methods
(KSL, BUG, augmented BUG, several inner substeps) call it at *new* points/bases — that
is why the operator form is a method and not a fixed triple. Ready-made oracles:

:class:`DenseOracle`
    ``fn(Y_dense) -> dense`` (forms ``m×n`` matrices: tests and small problems).
:class:`FactoredOracle`
    ``fn(point) -> (A, B)`` with ``G = A Bᵀ`` of small rank ``k``; projections cost
    ``O((m+n) r k)``, no ``m×n`` matrix.
:class:`ProjectionOracle`
    ``fn(point) -> ProjectedGradients`` (e.g. a low-rank layer's backward pass run at
    the given factors).
:class:`FrozenTangentOracle` / :class:`TuckerFrozenTangentOracle`
    What an integrator builds from one set of projected gradients ``pg`` taken at
    ``Y₀``: the *frozen tangent gradient* ``P_{T(Y₀)} G(Y₀)``, which is fully known
    from ``pg`` (for matrices ``P_T G = G V Vᵀ + U Uᵀ G − U Uᵀ G V Vᵀ``). Using it
    for every substep is the one-pass variant of each method; its extra error is the
    normal component ``(I − UUᵀ) G (I − VVᵀ)`` times ``h``, the ``ε`` term of the
    robust error bounds of the BUG/parallel integrators.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from manifold_lowrank.integrators._tensor import (
    fold,
    mode_dot,
    multi_mode_dot,
    tucker_to_dense,
    unfold,
)
from manifold_lowrank.integrators._validate import check_callable, check_pg, finite
from manifold_lowrank.linalg import qr_signfix
from manifold_lowrank.manifolds.types import (
    FixedRankPoint,
    ProjectedGradients,
    TuckerPoint,
    TuckerProjectedGradients,
)

__all__ = [
    "DenseOracle",
    "FactoredOracle",
    "FrozenTangentOracle",
    "GradientOracle",
    "ProjectionOracle",
    "TuckerFrozenTangentOracle",
    "as_oracle",
    "project",
]

Kind = Literal["gradient", "field"]


@runtime_checkable
class GradientOracle(Protocol):
    """Anything with ``project(point)`` (see the module docstring)."""

    def project(self, point: Any) -> Any:  # pragma: no cover - protocol
        ...


def _sign(kind: str) -> float:
    if kind == "gradient":
        return 1.0
    if kind == "field":
        return -1.0
    raise ValueError(f"kind must be 'gradient' or 'field', got {kind!r}")


def _tucker_projections(
    g: torch.Tensor, factors: tuple[torch.Tensor, ...]
) -> TuckerProjectedGradients:
    d = len(factors)
    ts = [f.transpose(0, 1) for f in factors]
    partials = tuple(multi_mode_dot(g, ts, skip=k) for k in range(d))
    core = mode_dot(partials[0], ts[0], 0)
    return TuckerProjectedGradients(core, partials)


class DenseOracle:
    """Oracle from a dense map ``fn(Y) -> G`` (or ``-F`` with ``kind="field"``).

    Works for :class:`FixedRankPoint` (``Y`` is ``m×n``) and :class:`TuckerPoint`
    (``Y`` is the full tensor). Cost ``O(mnr)`` plus the cost of ``fn``: for tests,
    reference solutions and small problems.

    Parameters
    ----------
    fn : callable
        ``fn(Y)`` returning a tensor of the shape of ``Y``.
    kind : {"gradient", "field"}
        ``"gradient"``: ``fn`` returns ``G`` and the flow is ``Ẏ = -G``.
        ``"field"``: ``fn`` returns ``F`` and the flow is ``Ẏ = F``.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], kind: Kind = "gradient"):
        self.fn = check_callable(fn, "fn")
        self.kind = kind
        self._sign = _sign(kind)

    def _dense(self, y: torch.Tensor) -> torch.Tensor:
        g = self.fn(y)
        if not isinstance(g, torch.Tensor) or g.shape != y.shape:
            shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise ValueError(
                f"DenseOracle fn must return a tensor of shape {tuple(y.shape)}, got {shape}"
            )
        return g if self._sign > 0 else -g

    def project(
        self, point: FixedRankPoint | TuckerPoint
    ) -> ProjectedGradients | TuckerProjectedGradients:
        if isinstance(point, TuckerPoint):
            g = self._dense(tucker_to_dense(point.core, point.factors))
            return _tucker_projections(g, tuple(point.factors))
        u, s, v = point
        g = self._dense(u @ s @ v.transpose(0, 1))
        gv = g @ v
        return ProjectedGradients(gv, u.transpose(0, 1) @ gv, g.transpose(0, 1) @ u)


class FactoredOracle:
    """Oracle from a low-rank gradient ``G = A Bᵀ`` returned by ``fn(point) -> (A, B)``.

    ``A`` is ``m×k`` and ``B`` is ``n×k``. The projections cost ``O((m+n) r k)`` and no
    ``m×n`` matrix is formed. Example: for ``L(Y) = ½‖Y − P Qᵀ‖²_F`` the gradient is
    ``Y − P Qᵀ = [U S, −P] [V, Q]ᵀ``.

    Parameters
    ----------
    fn : callable
        ``fn(FixedRankPoint) -> (A, B)``.
    kind : {"gradient", "field"}
        See :class:`DenseOracle`.
    """

    def __init__(
        self,
        fn: Callable[[FixedRankPoint], tuple[torch.Tensor, torch.Tensor]],
        kind: Kind = "gradient",
    ):
        self.fn = check_callable(fn, "fn")
        self.kind = kind
        self._sign = _sign(kind)

    def project(self, point: FixedRankPoint) -> ProjectedGradients:
        u, _, v = point
        out = self.fn(point)
        if not isinstance(out, tuple) or len(out) != 2:
            raise ValueError("FactoredOracle fn must return a pair (A, B) with G = A Bᵀ")
        a, b = out
        if (
            a.dim() != 2
            or b.dim() != 2
            or a.shape[0] != u.shape[0]
            or b.shape[0] != v.shape[0]
            or (a.shape[1] != b.shape[1])
        ):
            raise ValueError(
                f"FactoredOracle fn must return A ({u.shape[0]}×k) and B ({v.shape[0]}×k), "
                f"got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        if self._sign < 0:
            a = -a
        btv = b.transpose(0, 1) @ v
        gv = a @ btv
        return ProjectedGradients(gv, u.transpose(0, 1) @ gv, b @ (a.transpose(0, 1) @ u))


class ProjectionOracle:
    """Oracle from ``fn(point) -> ProjectedGradients`` (or ``TuckerProjectedGradients``).

    This is the operator form: e.g. run a low-rank layer at the factors of ``point``
    and return the projected gradients of its backward pass.

    Parameters
    ----------
    fn : callable
        ``fn(point)``; ``point`` always has orthonormal bases.
    kind : {"gradient", "field"}
        See :class:`DenseOracle`.
    """

    def __init__(self, fn: Callable[[Any], Any], kind: Kind = "gradient"):
        self.fn = check_callable(fn, "fn")
        self.kind = kind
        self._sign = _sign(kind)

    def project(self, point: Any) -> Any:
        out = self.fn(point)
        if self._sign > 0:
            return out
        if isinstance(out, TuckerProjectedGradients):
            return TuckerProjectedGradients(-out.core, tuple(-p for p in out.partials))
        return ProjectedGradients(*(-t for t in out))


class FrozenTangentOracle:
    r"""The frozen tangent gradient ``P_{T(Y₀)} G₀`` built from one set of projections.

    With ``pg = (G₀V₀, U₀ᵀG₀V₀, G₀ᵀU₀)`` taken at ``Y₀ = U₀ S₀ V₀ᵀ``,

    .. math:: P_T G_0 = G_0 V_0 V_0^\top + U_0 U_0^\top G_0 - U_0 U_0^\top G_0 V_0 V_0^\top

    is known exactly, and ``project`` returns its projections on any bases
    ``U' (m×r')``, ``V' (n×r')`` (the core ``S'`` is ignored: the gradient is frozen)
    in ``O((m+n) r r')``.
    """

    def __init__(self, point: FixedRankPoint, pg: ProjectedGradients):
        self.point = point
        self.pg = check_pg(pg, point)

    def project(self, point: FixedRankPoint) -> ProjectedGradients:
        u0, _, v0 = self.point
        gv, utgv, gtu = self.pg
        u1, _, v1 = point
        a = v0.transpose(0, 1) @ v1  # r0 × r'
        b = u0.transpose(0, 1) @ u1  # r0 × r'
        gtu_t_v1 = gtu.transpose(0, 1) @ v1  # (U0ᵀ G V') : r0 × r'
        utgv_a = utgv @ a
        gv1 = gv @ a + u0 @ (gtu_t_v1 - utgv_a)
        utgv1 = (u1.transpose(0, 1) @ gv) @ a + b.transpose(0, 1) @ (gtu_t_v1 - utgv_a)
        gtu1 = v0 @ (gv.transpose(0, 1) @ u1 - utgv.transpose(0, 1) @ b) + gtu @ b
        return ProjectedGradients(gv1, utgv1, gtu1)


class TuckerFrozenTangentOracle:
    r"""Tucker analogue of :class:`FrozenTangentOracle`.

    At ``X₀ = C ×_j U_j`` let ``Q_i`` be an orthonormal basis of the row space of
    ``Mat_i(C)`` (sign-fixed QR of ``Mat_i(C)ᵀ``) and ``V_i = (⊗_{j≠i} U_j) Q_i``. The
    tangent projection used here is

    .. math::
        P_T G = G \times_j U_j U_j^\top
              + \sum_i \mathrm{Ten}_i\big((I - U_iU_i^\top)\,\mathrm{Mat}_i(G) V_i V_i^\top\big),

    which needs only ``pg.core`` and ``pg.partials`` since
    ``Mat_i(G) V_i = Mat_i(pg.partials[i]) Q_i``. It is a sum of ``d + 1`` Tucker
    tensors with small cores; ``project`` contracts them with new bases in
    ``O(d² Σ_k n_k r_k² + d² r^{d+1})``.
    """

    def __init__(self, point: TuckerPoint, pg: TuckerProjectedGradients):
        core, factors = point.core, tuple(point.factors)
        d = len(factors)
        if not isinstance(pg, TuckerProjectedGradients) or len(pg.partials) != d:
            raise TypeError(f"pg must be TuckerProjectedGradients with {d} partials")
        if tuple(pg.core.shape) != tuple(core.shape):
            raise ValueError(
                f"pg.core must have shape {tuple(core.shape)}, got {tuple(pg.core.shape)}"
            )
        for k in range(d):
            exp = list(core.shape)
            exp[k] = factors[k].shape[0]
            if list(pg.partials[k].shape) != exp:
                raise ValueError(
                    f"pg.partials[{k}] must have shape {tuple(exp)}, "
                    f"got {tuple(pg.partials[k].shape)}"
                )
        finite("pg", pg.core, *pg.partials)
        self.point = point
        self.pg = pg
        self._terms: list[tuple[torch.Tensor, list[torch.Tensor]]] | None = None

    @property
    def terms(self) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        """The ``d + 1`` Tucker terms of ``P_T G`` (computed on first use)."""
        if self._terms is None:
            self._terms = self._build_terms()
        return self._terms

    def _build_terms(self) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        core, factors, pg = self.point.core, tuple(self.point.factors), self.pg
        d = len(factors)
        terms: list[tuple[torch.Tensor, list[torch.Tensor]]] = [(pg.core, list(factors))]
        for i in range(d):
            q, _ = qr_signfix(unfold(core, i).transpose(0, 1))  # (∏ r_j, k_i)
            w = unfold(pg.partials[i], i) @ q  # n_i × k_i : Mat_i(G) V_i
            w = w - factors[i] @ (unfold(pg.core, i) @ q)  # (I − P_i) Mat_i(G) V_i
            shape = list(core.shape)
            shape[i] = q.shape[1]
            dcore = fold(q.transpose(0, 1), i, shape)
            fs = list(factors)
            fs[i] = w
            terms.append((dcore, fs))
        return terms

    def project(self, point: TuckerPoint) -> TuckerProjectedGradients:
        bases = tuple(point.factors)
        d = len(bases)
        core = None
        partials: list[torch.Tensor | None] = [None] * d
        for tcore, fs in self.terms:
            small = [b.transpose(0, 1) @ f for b, f in zip(bases, fs)]
            c = multi_mode_dot(tcore, small)
            core = c if core is None else core + c
            for k in range(d):
                mats = list(small)
                mats[k] = fs[k]
                p = multi_mode_dot(tcore, mats)
                partials[k] = p if partials[k] is None else partials[k] + p
        return TuckerProjectedGradients(core, tuple(partials))  # type: ignore[arg-type]


def as_oracle(grad: Any, point: FixedRankPoint | TuckerPoint) -> Any:
    """Turn ``grad`` (projected gradients at ``point`` or an oracle) into an oracle.

    Projected gradients become the frozen tangent oracle (one-pass variant). Plain
    callables are refused because a dense and a factored callable cannot be told
    apart: wrap them in :class:`DenseOracle`, :class:`FactoredOracle` or
    :class:`ProjectionOracle`.
    """
    if isinstance(grad, ProjectedGradients):
        if not isinstance(point, FixedRankPoint):
            raise TypeError(
                "ProjectedGradients given for a Tucker point; use TuckerProjectedGradients"
            )
        return FrozenTangentOracle(point, grad)
    if isinstance(grad, TuckerProjectedGradients):
        if not isinstance(point, TuckerPoint):
            raise TypeError("TuckerProjectedGradients given for a matrix point")
        return TuckerFrozenTangentOracle(point, grad)
    if hasattr(grad, "project") and callable(grad.project):
        return grad
    raise TypeError(
        "grad must be ProjectedGradients/TuckerProjectedGradients or an oracle with a "
        "project(point) method (wrap plain callables in DenseOracle, FactoredOracle or "
        f"ProjectionOracle), got {type(grad).__name__}"
    )


def initial_projection(oracle: Any, grad: Any, point: FixedRankPoint | TuckerPoint) -> Any:
    """Projections at ``point`` itself: ``grad`` if it already is one (validated when the
    frozen oracle was built), else one oracle call."""
    if isinstance(grad, (ProjectedGradients, TuckerProjectedGradients)):
        return grad
    return project(oracle, point)


def project(oracle: Any, point: FixedRankPoint | TuckerPoint) -> Any:
    """Call ``oracle.project(point)`` and check the shapes and finiteness of the result.

    Raises
    ------
    FloatingPointError
        If the oracle returns NaN or Inf (nothing has been modified at that point).
    ValueError
        If the returned projections have the wrong shapes.
    """
    out = oracle.project(point)
    if isinstance(point, TuckerPoint):
        if not isinstance(out, TuckerProjectedGradients):
            raise TypeError(
                f"oracle.project must return TuckerProjectedGradients, got {type(out).__name__}"
            )
        if tuple(out.core.shape) != tuple(point.core.shape):
            raise ValueError(
                f"oracle returned a core projection of shape {tuple(out.core.shape)}, "
                f"expected {tuple(point.core.shape)}"
            )
        for k, p in enumerate(out.partials):
            exp = list(point.core.shape)
            exp[k] = point.factors[k].shape[0]
            if list(p.shape) != exp:
                raise ValueError(
                    f"oracle returned partials[{k}] of shape {tuple(p.shape)}, "
                    f"expected {tuple(exp)}"
                )
        finite("the gradient returned by the oracle", out.core, *out.partials)
        return out
    if not isinstance(out, tuple) or len(out) != 3:
        raise TypeError(f"oracle.project must return ProjectedGradients, got {type(out).__name__}")
    return check_pg(ProjectedGradients(*out), point, name="the gradient returned by the oracle")
