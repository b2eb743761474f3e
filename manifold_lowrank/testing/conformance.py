r"""Numerical conformance checks for Riemannian manifolds (geoopt API).

:func:`check_manifold` runs, in float64 by default, the identities every manifold of this
library must satisfy (DESIGN.md, "Testing numerics"), records the measured error of each
against a tolerance derived from machine epsilon, and raises one :class:`AssertionError`
listing every failure, e.g.::

    proju.idempotent: proju not idempotent: ‖P(P(z)) − P(z)‖/‖P(z)‖ = 3.1e-03 > tol 4.6e-13

It works for the packed manifolds of this library (:class:`~manifold_lowrank.manifolds.FixedRank`,
:class:`~manifold_lowrank.manifolds.Tucker`) and for plain geoopt manifolds whose points
live directly in their ambient space (``geoopt.Sphere()``, ``geoopt.Stiefel()``, …).

Two spaces
----------
*Packed* space
    What the manifold's methods take: ``proju(x, z)`` for a packed ``z``, ``inner``,
    ``retr``… Packed ``z`` need not be tangent.
*Ambient* (dense) space
    Where the manifold is embedded: ``embed(x)``, ``embed_tangent(x, u)`` map packed objects
    to dense tensors and ``project_dense(x, Z)`` maps a dense ``Z`` to the packed tangent
    of its orthogonal projection. For a manifold without ``embed`` (geoopt's), both maps
    are the identity and ``project_dense = proju``.

Checks (names usable in ``skip=``; a prefix such as ``"proju"`` skips the whole group)
-------------------------------------------------------------------------------------
=============================  =====================================================
``points.on_manifold``         random points pass ``check_point_on_manifold``
``points.dtype``               points have the requested dtype and shape
``vectors.tangent``            random tangent vectors pass ``check_vector_on_tangent``
``proju.idempotent``           ``P(P(z)) = P(z)`` (packed)
``proju.fixes_tangent``        ``P(ξ) = ξ`` for tangent ``ξ`` (packed)
``proju.preserves_ambient``    ``E(P(z)) = P_amb(E(z))``: packed projection agrees with
                               the dense one (embedded manifolds only)
``proju.dense_idempotent``     ``P_amb(P_amb(Z)) = P_amb(Z)`` (embedded manifolds only)
``proju.self_adjoint``         ``⟨P_amb Z₁, Z₂⟩ = ⟨Z₁, P_amb Z₂⟩``
``proju.residual_orthogonal``  ``⟨Z − P_amb Z, E(ξ)⟩ = 0``
``metric.symmetric``           ``⟨u, v⟩ = ⟨v, u⟩``
``metric.bilinear``            ``⟨au + bw, v⟩ = a⟨u, v⟩ + b⟨w, v⟩``
``metric.positive``            ``⟨u, u⟩ > 0``
``metric.norm``                ``norm(u)² = ⟨u, u⟩``
``metric.ambient``             ``⟨u, v⟩_x = ⟨E(u), E(v)⟩_F`` (embedded metric)
``metric.component_scaling``   ``c = component_inner(x, u)`` is finite, ``≥ 0`` and
                               broadcasts to ``x``; dividing a tangent ``u`` by ``√c``
                               commutes with ``proju`` (Riemannian Adam's step
                               ``u/√c`` stays tangent; components with negligible
                               ``c`` are left out)
``egrad2rgrad.riesz``          ``⟨grad f, η⟩_x = ⟨∇f, E(η)⟩_F`` for tangent ``η``,
                               with ``grad f = egrad2rgrad(x, autograd factor gradient)``
``egrad2rgrad.projection``     ``E(grad f) = P_amb(∇f)``
``retr.zero``                  ``E(R(x, 0)) = E(x)``
``retr.on_manifold``           ``R(x, tξ)`` is on the manifold for ``t ≤ 0.5``
``retr.first_order``           ``‖E(R(x, tξ)) − E(x) − tE(ξ)‖ = O(t²)``: fitted log-log
                               slope ``≥ slope_min`` over ``t_range``
``retr.rejects_nan``           NaN in ``ξ`` raises ``FloatingPointError``, ``x`` untouched
                               (required of :class:`LowRankManifold` only)
``gradient.check``             ``f(R(x, tη)) − f(x) − t⟨grad f, η⟩ = O(t²)`` (Manopt's
                               ``checkgradient``)
``transp.tangent``             ``T_{x→y} v`` is tangent at ``y``
``transp.linear``              ``T(av + bw) = aTv + bTw``
``transp.identity``            ``T_{x→x} v = v``
``transp.retr_transp``         ``retr_transp(x, u, v) = (retr(x, u), transp(x, y, v))``
``transp.nonexpansive``        ``‖Tv‖_y ≤ ‖v‖_x`` (projection-type transports)
``projx.idempotent``           ``projx(projx(z)) = projx(z)`` for a perturbed point ``z``
``projx.identity``             ``projx(x) = x`` on points (no gauge change)
``batch.consistent``           batched ``proju``/``inner``/``retr``/``transp``/
                               ``egrad2rgrad``/``projx`` equal per-point loops
``dim.consistent``             ``rank(z ↦ proju(x, z)) = manifold.dim`` (small manifolds)
=============================  =====================================================

Tolerance: identities are compared as relative errors against
``tol = atol`` or, by default, ``100 · eps(dtype) · sqrt(N)`` with ``N`` the larger of the
packed and ambient sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["CHECKS", "CheckResult", "ConformanceReport", "check_manifold"]

CHECKS: tuple[str, ...] = (
    "points.on_manifold",
    "points.dtype",
    "vectors.tangent",
    "proju.idempotent",
    "proju.fixes_tangent",
    "proju.preserves_ambient",
    "proju.dense_idempotent",
    "proju.self_adjoint",
    "proju.residual_orthogonal",
    "metric.symmetric",
    "metric.bilinear",
    "metric.positive",
    "metric.norm",
    "metric.ambient",
    "metric.component_scaling",
    "egrad2rgrad.riesz",
    "egrad2rgrad.projection",
    "retr.zero",
    "retr.on_manifold",
    "retr.first_order",
    "retr.rejects_nan",
    "gradient.check",
    "transp.tangent",
    "transp.linear",
    "transp.identity",
    "transp.retr_transp",
    "transp.nonexpansive",
    "projx.idempotent",
    "projx.identity",
    "batch.consistent",
    "dim.consistent",
)


# ----------------------------------------------------------------------------- report
@dataclass
class CheckResult:
    """Outcome of one check.

    Attributes
    ----------
    name : str
        Check name (see :data:`CHECKS`).
    status : {"passed", "failed", "skipped"}
    error : float or None
        Worst measured error over the points (relative unless stated in ``message``).
    tol : float or None
        Tolerance it was compared with (for slopes: the minimum slope).
    message : str
        Failure explanation, skip reason, or a note.
    """

    name: str
    status: str
    error: float | None = None
    tol: float | None = None
    message: str = ""

    def __str__(self) -> str:
        err = "" if self.error is None else f"{self.error:.2e}"
        tol = "" if self.tol is None else f"{self.tol:.2e}"
        return f"{self.name:<28} {self.status:<8} {err:>10} {tol:>10}  {self.message}"


@dataclass
class ConformanceReport:
    """All results of :func:`check_manifold`.

    ``report.passed`` is true when nothing failed; ``report["retr.first_order"]`` gives one
    :class:`CheckResult`; ``str(report)`` is a table.
    """

    manifold: str
    dtype: torch.dtype
    tol: float
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def skipped(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "skipped"]

    def __getitem__(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(r.name == name for r in self.results)

    def __str__(self) -> str:
        head = (
            f"check_manifold({self.manifold}, dtype={self.dtype}, tol={self.tol:.2e}): "
            f"{sum(r.status == 'passed' for r in self.results)} passed, "
            f"{len(self.failures)} failed, {len(self.skipped)} skipped"
        )
        cols = f"{'check':<28} {'status':<8} {'error':>10} {'tol':>10}  message"
        return "\n".join([head, cols, *(str(r) for r in self.results)])

    def raise_for_failures(self) -> None:
        """Raise :class:`AssertionError` listing every failed check (if any)."""
        if self.failures:
            lines = [f"{r.name}: {r.message}" for r in self.failures]
            raise AssertionError(
                f"{len(lines)} conformance check(s) failed for {self.manifold} "
                f"({self.dtype}):\n  " + "\n  ".join(lines)
            )


class _Skip(Exception):
    pass


class _Fail(Exception):
    def __init__(self, message: str, error: float | None = None, tol: float | None = None):
        super().__init__(message)
        self.error = error
        self.tol = tol


# ----------------------------------------------------------------------------- helpers
def _plain(t: torch.Tensor) -> torch.Tensor:
    """Strip tensor subclasses (geoopt.ManifoldTensor) and autograd history."""
    return torch.Tensor.as_subclass(t, torch.Tensor).detach()


def _fro(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t.detach().to(torch.float64)))


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().to(torch.float64) * b.detach().to(torch.float64)).sum())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    den = max(_fro(a), _fro(b), 1e-300)
    return _fro(a - b) / den


def _scalar(t: torch.Tensor | float) -> float:
    return float(t.detach().to(torch.float64).sum()) if isinstance(t, torch.Tensor) else float(t)


def _slope(ts: Sequence[float], errs: Sequence[float]) -> float:
    lt = torch.tensor([math.log(t) for t in ts], dtype=torch.float64)
    le = torch.tensor([math.log(e) for e in errs], dtype=torch.float64)
    lt_c = lt - lt.mean()
    return float((lt_c * (le - le.mean())).sum() / (lt_c * lt_c).sum())


class _Ctx:
    """State shared by the checks: manifold, hooks, points, vectors, tolerance."""

    def __init__(self, manifold: Any, tol: float, gen: torch.Generator) -> None:
        self.M = manifold
        self.tol = tol
        self.gen = gen
        self.errors: list[float] = []
        self.override: tuple[float, float] | None = None

    # worst error bookkeeping ---------------------------------------------------
    def expect(self, err: float, what: str, tol: float | None = None) -> None:
        tol = self.tol if tol is None else tol
        self.errors.append(err)
        if not (err <= tol):  # also catches NaN
            raise _Fail(f"{what} = {err:.2e} > tol {tol:.2e}", err, tol)

    def randn(self, like: torch.Tensor) -> torch.Tensor:
        z = torch.randn(like.shape, dtype=like.dtype, generator=self.gen)
        return z.to(like.device)


# ----------------------------------------------------------------------------- main
def check_manifold(
    manifold: Any,
    *,
    points: Sequence[torch.Tensor] | torch.Tensor | None = None,
    vectors: Sequence[torch.Tensor] | torch.Tensor | None = None,
    shape: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    n_points: int = 3,
    skip: Iterable[str] = (),
    atol: float | None = None,
    t_range: tuple[float, float] | None = None,
    slope_min: float = 1.8,
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
    embed_tangent: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    project_dense: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    random_point: Callable[[torch.Generator, torch.dtype], torch.Tensor] | None = None,
    max_dim_check: int = 2048,
    raise_on_failure: bool = True,
) -> ConformanceReport:
    r"""Check the Riemannian identities of ``manifold`` numerically.

    Parameters
    ----------
    manifold : geoopt.Manifold
        Any manifold with geoopt's API (``proju``, ``egrad2rgrad``, ``inner``, ``retr``,
        ``transp`` or ``transp_follow_retr``, ``retr_transp``, ``projx``,
        ``check_point_on_manifold``, ``check_vector_on_tangent``, ``random``).
        Optional: ``embed``, ``embed_tangent``, ``proju_dense`` (see "Two spaces" in the
        module docstring), ``shape`` (packed point shape) and an ``int`` ``dim``.
    points : sequence of tensors or a batched tensor, optional
        Points to test at (their dtype overrides ``dtype``). Default: ``n_points`` random
        points from ``manifold.random`` seeded by ``seed``.
    vectors : sequence of tensors, optional
        One tangent vector per point (others are drawn at random with ``proju``).
    shape : sequence of int, optional
        Shape of one point; needed when ``points`` is not given and the manifold has no
        ``shape`` attribute (e.g. ``geoopt.Sphere()`` → ``shape=(5,)``).
    dtype : torch.dtype
        Dtype of the generated points (float64 for identities).
    seed : int
        Seed of the private generator (the global RNG is restored afterwards).
    n_points : int
        Number of random points.
    skip : iterable of str
        Check names or group prefixes to skip (see :data:`CHECKS`), e.g.
        ``skip=("metric.ambient", "proju")``.
    atol : float, optional
        Tolerance for the relative errors of identities (default
        ``100 · eps(dtype) · sqrt(N)``).
    t_range : (float, float), optional
        Step range of the order checks (default ``(1e-4, 1e-1)`` in float64,
        ``(1e-2, 1e-1)`` otherwise — float32 runs are smoke tests). Errors below the
        rounding floor ``10 · eps · sqrt(N) · scale`` are left out of the slope fit; if fewer
        than 3 of the 7 steps remain, no slope is fitted and the check passes (exact or
        faster-than-quadratic retractions, e.g. rank ``r = min(m, n)``).
    slope_min : float
        Minimal fitted log-log slope of the ``O(t²)`` checks.
    embed, embed_tangent, project_dense : callable, optional
        Hooks overriding ``manifold.embed``, ``manifold.embed_tangent`` and
        ``manifold.proju_dense`` (``project_dense(x, Z)`` returns the packed tangent of
        the orthogonal projection of the dense ``Z``).
    random_point : callable, optional
        ``random_point(generator, dtype) -> point``, overriding ``manifold.random``.
    max_dim_check : int
        ``dim.consistent`` runs only if a packed point has at most this many entries.
    raise_on_failure : bool
        Raise :class:`AssertionError` (listing every failure with its measured error)
        after all checks ran.

    Returns
    -------
    ConformanceReport
    """
    skip_set = tuple(skip)
    unknown = [
        s for s in skip_set if s not in CHECKS and not any(c.startswith(s + ".") for c in CHECKS)
    ]
    if unknown:
        raise ValueError(f"unknown check names in skip: {unknown}; valid: {CHECKS}")
    if n_points < 1 and points is None:
        raise ValueError(f"n_points must be >= 1, got {n_points}")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _check(
            manifold,
            points=points,
            vectors=vectors,
            shape=shape,
            dtype=dtype,
            seed=seed,
            n_points=n_points,
            skip=skip_set,
            atol=atol,
            t_range=t_range,
            slope_min=slope_min,
            embed=embed,
            embed_tangent=embed_tangent,
            project_dense=project_dense,
            random_point=random_point,
            max_dim_check=max_dim_check,
            raise_on_failure=raise_on_failure,
        )


def _check(manifold: Any, **kw: Any) -> ConformanceReport:
    M = manifold
    dtype: torch.dtype = kw["dtype"]
    seed: int = kw["seed"]
    skip: tuple[str, ...] = kw["skip"]
    gen = torch.Generator().manual_seed(seed)

    # ---------------------------------------------------------------- points
    shape = kw["shape"]
    if shape is None:
        s = getattr(M, "shape", None)
        shape = tuple(s) if isinstance(s, (tuple, list, torch.Size)) else None
    pts_in = kw["points"]
    if pts_in is not None:
        points = [
            _plain(p)
            for p in (
                pts_in.unbind(0)
                if isinstance(pts_in, torch.Tensor)
                and shape is not None
                and pts_in.dim() > len(shape)
                else ([pts_in] if isinstance(pts_in, torch.Tensor) else pts_in)
            )
        ]
        dtype = points[0].dtype
        generated = False
    else:
        if shape is None:
            raise ValueError(
                f"check_manifold needs shape= (the shape of one point) or points= for "
                f"{type(M).__name__}, which has no `shape` attribute"
            )
        points = []
        for i in range(kw["n_points"]):
            g = torch.Generator().manual_seed(seed + 1000 + i)
            if kw["random_point"] is not None:
                p = kw["random_point"](g, dtype)
            else:
                try:
                    p = M.random(*shape, dtype=dtype, generator=g)
                except TypeError:
                    torch.manual_seed(seed + 1000 + i)
                    p = M.random(*shape, dtype=dtype)
            points.append(_plain(p))
        generated = True
    if shape is None:
        shape = tuple(points[0].shape)

    eps = torch.finfo(dtype).eps
    has_embed = kw["embed"] is not None or hasattr(M, "embed")
    E = kw["embed"] or getattr(M, "embed", None) or (lambda x: x)
    Et = kw["embed_tangent"] or getattr(M, "embed_tangent", None) or (lambda x, u: u)
    if kw["project_dense"] is not None:
        Pd: Callable | None = kw["project_dense"]
    elif has_embed:
        Pd = getattr(M, "proju_dense", None)
    else:
        Pd = M.proju
    amb_numel = int(E(points[0]).numel())
    N = max(int(points[0].numel()), amb_numel)
    tol = float(kw["atol"]) if kw["atol"] is not None else 100.0 * eps * math.sqrt(N)
    # relative rounding floor below which order checks ignore errors
    rfloor = 10.0 * eps * math.sqrt(N)
    t_range = kw["t_range"] or ((1e-4, 1e-1) if dtype == torch.float64 else (1e-2, 1e-1))
    slope_min = float(kw["slope_min"])
    ctx = _Ctx(M, tol, gen)
    name = repr(M) if len(repr(M)) < 80 else type(M).__name__
    report = ConformanceReport(manifold=name, dtype=dtype, tol=tol)

    def Pamb(x: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        if Pd is None:
            raise _Skip("no dense projection (give project_dense= or define proju_dense)")
        return Et(x, Pd(x, Z))

    # tangent vectors: u (given or random), v, w random
    def rand_tangent(x: torch.Tensor) -> torch.Tensor:
        return _plain(M.proju(x, ctx.randn(x)))

    vec_in = kw["vectors"]
    if vec_in is not None:
        if isinstance(vec_in, torch.Tensor) and vec_in.dim() > len(shape):
            vec_in = list(vec_in.unbind(0))
        elif isinstance(vec_in, torch.Tensor):
            vec_in = [vec_in]
        if len(vec_in) != len(points):
            raise ValueError(
                f"give one vector per point: {len(vec_in)} vectors, {len(points)} points"
            )
        us = [_plain(v) for v in vec_in]
    else:
        us = [rand_tangent(x) for x in points]
    vs = [rand_tangent(x) for x in points]
    ws = [rand_tangent(x) for x in points]

    def metric_norm(x: torch.Tensor, u: torch.Tensor) -> float:
        return math.sqrt(max(_scalar(M.inner(x, u, u)), 0.0))

    def unit(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        nrm = metric_norm(x, u)
        return u / nrm if nrm > 0 else u

    def transport(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor):
        y = _plain(M.retr(x, u))
        try:
            tv = M.transp(x, y, v)
        except NotImplementedError:
            tv = M.transp_follow_retr(x, u, v)
        return y, _plain(tv)

    def on_manifold(x: torch.Tensor, what: str, scale: float = 1.0) -> None:
        t = tol * max(1.0, scale)
        ok, reason = M.check_point_on_manifold(x, explain=True, atol=t, rtol=t)
        if not ok:
            raise _Fail(f"{what} is not on the manifold: {reason}")

    def tangent_at(x: torch.Tensor, u: torch.Tensor, what: str) -> None:
        t = tol * max(1.0, float(u.abs().max()))
        ok, reason = M.check_vector_on_tangent(x, u, explain=True, atol=t, rtol=tol)
        if not ok:
            raise _Fail(f"{what} is not tangent: {reason}")

    # smooth test function of the embedded point, evaluated in float64 so that float32
    # runs measure the manifold's rounding, not the test function's.
    X0 = E(points[0])
    A = torch.randn(X0.shape, dtype=torch.float64, generator=gen).to(X0.device)
    B = torch.randn(X0.shape, dtype=torch.float64, generator=gen).to(X0.device)

    def f(X: torch.Tensor) -> torch.Tensor:
        X = X.to(torch.float64)
        return (A * X).sum() + 0.5 * (B * X * X).sum() + 0.1 * torch.sin(X).sum()

    def grads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dense ∇f at E(x), packed autograd gradient of f∘E at x), in x's dtype."""
        with torch.enable_grad():
            Xd = E(x).detach().requires_grad_(True)
            (G,) = torch.autograd.grad(f(Xd), Xd)
            xg = x.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(f(E(xg)), xg)
        return G.detach(), g.detach()

    # ---------------------------------------------------------------- runner
    def run(check: str, fn: Callable[[], str | None]) -> None:
        if any(check == s or check.startswith(s + ".") for s in skip):
            report.results.append(CheckResult(check, "skipped", message="skipped by caller"))
            return
        ctx.errors = []
        ctx.override = None
        try:
            note = fn()
        except _Skip as e:
            report.results.append(CheckResult(check, "skipped", message=str(e)))
            return
        except _Fail as e:
            report.results.append(
                CheckResult(check, "failed", e.error, e.tol if e.tol is not None else None, str(e))
            )
            return
        except Exception as e:  # a crash is a failure with the exception named
            report.results.append(
                CheckResult(check, "failed", message=f"raised {type(e).__name__}: {e}")
            )
            return
        if ctx.override is not None:
            err, etol = ctx.override
        else:
            err = max(ctx.errors) if ctx.errors else None
            etol = tol if err is not None else None
        report.results.append(CheckResult(check, "passed", err, etol, note or ""))

    # ---------------------------------------------------------------- checks
    def c_points() -> None:
        for i, x in enumerate(points):
            on_manifold(x, f"point {i}")

    def c_dtype() -> str | None:
        if not generated:
            raise _Skip("points were given by the caller")
        for i, x in enumerate(points):
            if x.dtype != dtype or tuple(x.shape) != tuple(shape):
                raise _Fail(
                    f"random point {i} has dtype {x.dtype} and shape {tuple(x.shape)}, "
                    f"expected {dtype} and {tuple(shape)}"
                )
        return None

    def c_vectors() -> None:
        for i, (x, u) in enumerate(zip(points, us)):
            tangent_at(x, u, f"vector {i}")

    def c_idem() -> None:
        for x in points:
            p = M.proju(x, ctx.randn(x))
            ctx.expect(_rel(M.proju(x, p), p), "proju not idempotent: ‖P(P(z)) − P(z)‖/‖P(z)‖")

    def c_fix() -> None:
        for x, u in zip(points, us):
            ctx.expect(_rel(M.proju(x, u), u), "proju does not fix tangent vectors: ‖P(ξ) − ξ‖/‖ξ‖")

    def c_pres() -> None:
        if not has_embed:
            raise _Skip("no embedding: packed and dense projections coincide")
        for x in points:
            z = ctx.randn(x)
            ctx.expect(
                _rel(Et(x, M.proju(x, z)), Pamb(x, Et(x, z))),
                "proju disagrees with the dense projection: ‖E(P z) − P_amb(E z)‖/‖P_amb(E z)‖",
            )

    def c_didem() -> None:
        if not has_embed:
            raise _Skip("no embedding: same as proju.idempotent")
        for x in points:
            pz = Pamb(x, ctx.randn(E(x)))
            ctx.expect(
                _rel(Pamb(x, pz), pz), "dense projection not idempotent: ‖P(P(Z)) − P(Z)‖/‖P(Z)‖"
            )

    def c_selfadj() -> None:
        for x in points:
            X = E(x)
            z1, z2 = ctx.randn(X), ctx.randn(X)
            lhs, rhs = _dot(Pamb(x, z1), z2), _dot(z1, Pamb(x, z2))
            ctx.expect(
                abs(lhs - rhs) / (_fro(z1) * _fro(z2)),
                "projection not self-adjoint: |⟨P Z₁, Z₂⟩ − ⟨Z₁, P Z₂⟩|/(‖Z₁‖‖Z₂‖)",
            )

    def c_resid() -> None:
        for x, u in zip(points, us):
            Z = ctx.randn(E(x))
            r = Z - Pamb(x, Z)
            xi = Et(x, u)
            ctx.expect(
                abs(_dot(r, xi)) / (_fro(Z) * _fro(xi)),
                "projection residual not orthogonal to the tangent space: |⟨Z − P Z, ξ⟩|/(‖Z‖‖ξ‖)",
            )

    def c_sym() -> None:
        for x, u, v in zip(points, us, vs):
            a, b = _scalar(M.inner(x, u, v)), _scalar(M.inner(x, v, u))
            ctx.expect(
                abs(a - b) / (metric_norm(x, u) * metric_norm(x, v)),
                "metric not symmetric: |⟨u,v⟩ − ⟨v,u⟩|/(‖u‖‖v‖)",
            )

    def c_bilin() -> None:
        for x, u, v, w in zip(points, us, vs, ws):
            a, b = 0.7, -1.3
            lhs = _scalar(M.inner(x, a * u + b * w, v))
            rhs = a * _scalar(M.inner(x, u, v)) + b * _scalar(M.inner(x, w, v))
            scale = (abs(a) * metric_norm(x, u) + abs(b) * metric_norm(x, w)) * metric_norm(x, v)
            ctx.expect(abs(lhs - rhs) / scale, "metric not bilinear: relative error")

    def c_pos() -> None:
        for i, (x, u) in enumerate(zip(points, us)):
            val = _scalar(M.inner(x, u, u))
            if not val > 0:
                raise _Fail(f"metric not positive: ⟨u,u⟩ = {val:.3g} for a nonzero vector {i}")

    def c_norm() -> None:
        for x, u in zip(points, us):
            n = torch.as_tensor(M.norm(x, u))
            ii = torch.as_tensor(M.inner(x, u, u))
            ctx.expect(_rel(n * n, ii), "norm(u)² ≠ inner(u, u): rel. err")

    def c_amb() -> None:
        for x, u, v in zip(points, us, vs):
            a = _scalar(M.inner(x, u, v))
            eu, ev = Et(x, u), Et(x, v)
            ctx.expect(
                abs(a - _dot(eu, ev)) / (_fro(eu) * _fro(ev)),
                "metric differs from the ambient Frobenius one: "
                "|⟨u,v⟩_x − ⟨E u, E v⟩_F|/(‖E u‖‖E v‖)",
            )

    def c_comp() -> None:
        if not hasattr(M, "component_inner"):
            raise _Skip("no component_inner (not used by this manifold's optimizers)")
        for i, (x, u) in enumerate(zip(points, us)):
            c = _plain(torch.as_tensor(M.component_inner(x, u)))
            try:
                torch.broadcast_shapes(tuple(c.shape), tuple(x.shape))
            except RuntimeError:
                raise _Fail(
                    f"component_inner has shape {tuple(c.shape)}, which does not broadcast "
                    f"to the point's {tuple(x.shape)}"
                ) from None
            if not bool(torch.isfinite(c).all()) or bool((c < 0).any()):
                raise _Fail(f"component_inner of vector {i} is negative or not finite")
            # components where c is negligible (structurally zero blocks, e.g. Vp at full
            # rank) are left out: dividing their rounding noise by √c would only amplify it
            keep = c > 100 * torch.finfo(c.dtype).eps * c.max()
            w = torch.where(keep, c.clamp_min(torch.finfo(c.dtype).tiny).rsqrt(), 0.0)
            lhs = M.proju(x, _plain(u) * w)
            rhs = _plain(M.proju(x, u)) * w
            ctx.expect(
                _rel(lhs, rhs),
                "dividing by √component_inner leaves the tangent space: "
                "‖P(u/√c) − P(u)/√c‖/‖P(u)/√c‖",
            )

    def c_riesz() -> None:
        for x, u, v in zip(points, us, vs):
            G, g = grads(x)
            rg = _plain(M.egrad2rgrad(x, g))
            tangent_at(x, rg, "egrad2rgrad(x, g)")
            for eta in (u, v):
                lhs = _scalar(M.inner(x, rg, eta))
                rhs = _dot(G, Et(x, eta))
                ctx.expect(
                    abs(lhs - rhs) / (_fro(G) * _fro(Et(x, eta))),
                    "Riemannian gradient fails ⟨grad f, η⟩ = Df(x)[η]: rel. err",
                )

    def c_rgproj() -> None:
        for x in points:
            G, g = grads(x)
            rg = _plain(M.egrad2rgrad(x, g))
            ctx.expect(
                _rel(Et(x, rg), Pamb(x, G)),
                "egrad2rgrad(factor grads) ≠ projected dense gradient: ‖E(grad f) − P(∇f)‖/‖P(∇f)‖",
            )

    def c_rzero() -> None:
        for x in points:
            y = M.retr(x, torch.zeros_like(x))
            ctx.expect(
                _rel(E(_plain(y)), E(x)),
                "retraction by zero is not the identity: ‖E(R(x,0)) − E(x)‖/‖E(x)‖",
            )

    def c_ron() -> None:
        for i, (x, u) in enumerate(zip(points, us)):
            uu = unit(x, u)
            scale = max(1.0, _fro(E(x)))
            for t in (1e-2, 1e-1, 0.5):
                y = _plain(M.retr(x, (t * scale) * uu))
                on_manifold(y, f"R(x, {t:g}·‖x‖·ξ/‖ξ‖) at point {i}")

    def order_check(errs_fn: Callable[[float], float], floor: float, what: str) -> str:
        lo, hi = t_range
        ts = [10 ** (math.log10(lo) + k * (math.log10(hi) - math.log10(lo)) / 6) for k in range(7)]
        errs = [errs_fn(t) for t in ts]
        if any(not math.isfinite(e) for e in errs):
            raise _Fail(f"{what}: non-finite error {errs}")
        keep = [(t, e) for t, e in zip(ts, errs) if e > floor]
        if len(keep) < 3:
            # The error is at the rounding floor for most steps: either exact (e.g. an
            # open submanifold) or decaying too fast to resolve — both fine.
            return f"{len(keep)}/7 steps above the rounding floor {floor:.1e}; no slope fitted"
        s = _slope([t for t, _ in keep], [e for _, e in keep])
        prev = ctx.override[0] if ctx.override else math.inf
        ctx.override = (min(prev, s), slope_min)
        if not s >= slope_min:
            raise _Fail(
                f"{what}: fitted log-log slope over t∈[{keep[0][0]:.0e}, {keep[-1][0]:.0e}] is "
                f"{s:.2f} < {slope_min} (errors {', '.join(f'{e:.1e}' for _, e in keep)})",
                s,
                slope_min,
            )
        return f"slope {s:.2f}"

    def c_rfirst() -> str:
        notes = []
        for x, u in zip(points, us):
            X = E(x)
            uu = unit(x, u)
            xi = Et(x, uu)
            floor = rfloor * max(_fro(X), 1.0)

            def err(t: float, x=x, uu=uu, X=X, xi=xi) -> float:
                return _fro(E(_plain(M.retr(x, t * uu))) - X - t * xi)

            notes.append(
                order_check(
                    err, floor, "retraction is not first order (‖R(x,tξ) − (x+tξ)‖ should be O(t²))"
                )
            )
        return "; ".join(notes)

    def c_nan() -> None:
        from manifold_lowrank.manifolds.base import LowRankManifold

        if not isinstance(M, LowRankManifold):
            raise _Skip("only required of LowRankManifold")
        x = points[0].clone()
        u = us[0].clone()
        u.view(-1)[0] = float("nan")
        before = x.clone()
        try:
            M.retr(x, u)
        except FloatingPointError:
            pass
        else:
            raise _Fail("retr accepted a tangent vector with NaN (expected FloatingPointError)")
        if not torch.equal(x, before):
            raise _Fail("retr modified x while rejecting a NaN tangent vector")

    def c_gradcheck() -> str:
        notes = []
        for x, u in zip(points, us):
            _, g = grads(x)
            rg = _plain(M.egrad2rgrad(x, g))
            eta = unit(x, u)
            slope_term = _scalar(M.inner(x, rg, eta))
            with torch.no_grad():
                f0 = float(f(E(x)))
            G, _ = grads(x)
            # rounding of f(E(R(x, tη))): |f| ε plus ⟨∇f, δX⟩ with ‖δX‖ ≈ ε ‖X‖
            floor = 10.0 * eps * (abs(f0) + _fro(G) * _fro(E(x)) + 1.0)

            def err(t: float, x=x, eta=eta, f0=f0, st=slope_term) -> float:
                with torch.no_grad():
                    return abs(float(f(E(_plain(M.retr(x, t * eta))))) - f0 - t * st)

            notes.append(
                order_check(
                    err,
                    floor,
                    "gradient check failed (f(R(x,tη)) − f(x) − t⟨grad f,η⟩ should be O(t²))",
                )
            )
        return "; ".join(notes)

    def c_ttan() -> None:
        for i, (x, u, v) in enumerate(zip(points, us, vs)):
            y, tv = transport(x, 0.1 * unit(x, u), v)
            tangent_at(y, tv, f"transported vector {i}")
            if not any(s == "proju" or s.startswith("proju.") for s in skip):
                ctx.expect(
                    _rel(_plain(M.proju(y, tv)), tv),
                    "transported vector not fixed by proju at y: ‖P_y(Tv) − Tv‖/‖Tv‖",
                )

    def c_tlin() -> None:
        for x, u, v, w in zip(points, us, vs, ws):
            step = 0.1 * unit(x, u)
            a, b = 0.7, -1.3
            _, t1 = transport(x, step, a * v + b * w)
            _, tv = transport(x, step, v)
            _, tw = transport(x, step, w)
            ctx.expect(
                _rel(t1, a * tv + b * tw), "transport not linear: ‖T(av+bw) − (aTv+bTw)‖/‖aTv+bTw‖"
            )

    def c_tid() -> None:
        for x, v in zip(points, vs):
            try:
                tv = _plain(M.transp(x, x, v))
            except NotImplementedError:
                tv = _plain(M.transp_follow_retr(x, torch.zeros_like(x), v))
            ctx.expect(
                _rel(Et(x, tv), Et(x, v)),
                "transport to the same point is not the identity: ‖E(T_{x→x} v) − E(v)‖/‖E(v)‖",
            )

    def c_trt() -> None:
        for x, u, v in zip(points, us, vs):
            step = 0.1 * unit(x, u)
            y2, tv2 = M.retr_transp(x, step, v)
            y, tv = transport(x, step, v)
            ctx.expect(_rel(E(_plain(y2)), E(y)), "retr_transp point ≠ retr: rel. err")
            ctx.expect(_rel(Et(y, _plain(tv2)), Et(y, tv)), "retr_transp vector ≠ transp: rel. err")

    def c_tnonexp() -> None:
        for x, u, v in zip(points, us, vs):
            y, tv = transport(x, 0.3 * unit(x, u), v)
            nv, ntv = metric_norm(x, v), metric_norm(y, tv)
            ctx.expect(max(0.0, ntv / nv - 1.0), "transport expands: ‖Tv‖_y/‖v‖_x − 1")

    def c_pidem() -> None:
        for x in points:
            z = x + 1e-3 * ctx.randn(x)
            p = _plain(M.projx(z))
            on_manifold(p, "projx(z)")
            ctx.expect(
                _rel(_plain(M.projx(p)), p),
                "projx not idempotent: ‖projx(projx(z)) − projx(z)‖/‖projx(z)‖",
            )

    def c_pid() -> None:
        for x in points:
            ctx.expect(
                _rel(_plain(M.projx(x)), x),
                "projx is not the identity on points (gauge changed?): ‖projx(x) − x‖/‖x‖",
            )

    def c_batch() -> None:
        xb = torch.stack(points)
        ub, vb = torch.stack(us), torch.stack(vs)
        zb = torch.stack([ctx.randn(x) for x in points])
        n = len(points)

        def cmp(batched: torch.Tensor, looped: list[torch.Tensor], what: str) -> None:
            ctx.expect(
                _rel(_plain(batched), torch.stack([_plain(t) for t in looped])),
                f"batched {what} ≠ looped: rel. err",
            )

        cmp(M.proju(xb, zb), [M.proju(points[i], zb[i]) for i in range(n)], "proju")
        ib = M.inner(xb, ub, vb)
        il = torch.stack([torch.as_tensor(M.inner(points[i], us[i], vs[i])) for i in range(n)])
        ctx.expect(_rel(ib.reshape(-1), il.reshape(-1).to(ib)), "batched inner ≠ looped: rel. err")
        step = (
            0.1
            * ub
            / torch.stack(
                [torch.tensor(max(metric_norm(points[i], us[i]), 1e-300)) for i in range(n)]
            )
            .to(ub)
            .reshape(n, *([1] * (ub.dim() - 1)))
        )
        yb = _plain(M.retr(xb, step))
        cmp(
            torch.stack([E(y) for y in yb]),
            [E(_plain(M.retr(points[i], step[i]))) for i in range(n)],
            "retr (embedded)",
        )
        try:
            tb = _plain(M.transp(xb, yb, vb))
            tl = [M.transp(points[i], yb[i], vs[i]) for i in range(n)]
        except NotImplementedError:
            tb = _plain(M.transp_follow_retr(xb, step, vb))
            tl = [M.transp_follow_retr(points[i], step[i], vs[i]) for i in range(n)]
        cmp(tb, tl, "transp")
        gs = [grads(x)[1] for x in points]
        cmp(
            M.egrad2rgrad(xb, torch.stack(gs)),
            [M.egrad2rgrad(points[i], gs[i]) for i in range(n)],
            "egrad2rgrad",
        )
        cmp(M.projx(xb), [M.projx(p) for p in points], "projx")

    def c_dim() -> str:
        d = getattr(M, "dim", None)
        if not isinstance(d, int) or isinstance(d, bool):
            raise _Skip("manifold has no integer `dim`")
        x = points[0]
        numel = x.numel()
        if numel > kw["max_dim_check"]:
            raise _Skip(f"packed size {numel} > max_dim_check={kw['max_dim_check']}")
        basis = torch.eye(numel, dtype=x.dtype, device=x.device).reshape(numel, *x.shape)
        try:
            imgs = _plain(M.proju(x.expand(numel, *x.shape), basis))
        except Exception:
            imgs = torch.stack([_plain(M.proju(x, b)) for b in basis])
        sv = torch.linalg.svdvals(imgs.reshape(numel, numel).to(torch.float64))
        rank = int((sv > sv[0] * max(numel, 1) * eps * 10).sum())
        if rank != d:
            raise _Fail(f"manifold.dim = {d} but proju has rank {rank} at a random point")
        return f"rank(proju) = dim = {d}"

    checks: list[tuple[str, Callable[[], Any]]] = [
        ("points.on_manifold", c_points),
        ("points.dtype", c_dtype),
        ("vectors.tangent", c_vectors),
        ("proju.idempotent", c_idem),
        ("proju.fixes_tangent", c_fix),
        ("proju.preserves_ambient", c_pres),
        ("proju.dense_idempotent", c_didem),
        ("proju.self_adjoint", c_selfadj),
        ("proju.residual_orthogonal", c_resid),
        ("metric.symmetric", c_sym),
        ("metric.bilinear", c_bilin),
        ("metric.positive", c_pos),
        ("metric.norm", c_norm),
        ("metric.ambient", c_amb),
        ("metric.component_scaling", c_comp),
        ("egrad2rgrad.riesz", c_riesz),
        ("egrad2rgrad.projection", c_rgproj),
        ("retr.zero", c_rzero),
        ("retr.on_manifold", c_ron),
        ("retr.first_order", c_rfirst),
        ("retr.rejects_nan", c_nan),
        ("gradient.check", c_gradcheck),
        ("transp.tangent", c_ttan),
        ("transp.linear", c_tlin),
        ("transp.identity", c_tid),
        ("transp.retr_transp", c_trt),
        ("transp.nonexpansive", c_tnonexp),
        ("projx.idempotent", c_pidem),
        ("projx.identity", c_pid),
        ("batch.consistent", c_batch),
        ("dim.consistent", c_dim),
    ]
    assert tuple(c for c, _ in checks) == CHECKS
    for check, fn in checks:
        run(check, fn)
    if kw["raise_on_failure"]:
        report.raise_for_failures()
    return report
