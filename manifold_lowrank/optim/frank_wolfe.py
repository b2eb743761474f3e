r"""Away-step Frank–Wolfe on the perturbed ℓ1 ball (simplex) of dEBORA.

The feasible set of the upper-level weights ``s ∈ R^r`` is

.. math::  \mathcal S = \{ s \in \mathbb R^r : s \ge \varepsilon\mathbf 1,\
           \mathbf 1^\top s \le \tau + r\varepsilon \},\qquad \tau > 0,\ \varepsilon > 0,

a simplex with the ``r + 1`` vertices ``v₀ = ε𝟏`` (index :data:`BASE` ``= -1`` below)
and ``v_i = ε𝟏 + τ e_i`` (index ``i``). With ``t = s − ε𝟏`` it is the scaled simplex
``{t ≥ 0, 𝟏ᵀt ≤ τ}``; every point has the unique barycentric coordinates

.. math::  λ_i = t_i / τ \ (i = 0..r-1),\qquad λ_{\rm base} = 1 − 𝟏^\top t / τ,

so the *active set* of the away-step method (vertices with ``λ > 0``) is a function of
``s`` and need not be stored.

One iteration (Guélat & Marcotte 1986; Lacoste-Julien & Jaggi 2015), given a (possibly
stochastic) gradient ``g`` at ``s``:

* **LMO** ``z = argmin_{v vertex} ⟨g, v⟩``: ``v_{i*}`` with ``i* = argmin g`` if
  ``g_{i*} < 0``, else ``v₀`` (``⟨g, v_i⟩ − ⟨g, v₀⟩ = τ g_i``). Cost ``O(r)``.
* **Away vertex** ``y = argmax_{v active} ⟨g, v⟩`` (``O(r)``).
* **FW gap** ``γ_FW = ⟨g, s − z⟩ ≥ 0`` — zero exactly at a stationary point of the
  upper problem; it bounds ``f(s) − f*`` from above for convex ``f``.
* **Direction**: ``d_FW = z − s`` if ``⟨g, s − z⟩ ≥ ⟨g, y − s⟩`` else the away direction
  ``d_A = s − y``, with the largest feasible step ``α_max = 1`` (FW) or
  ``α_max = λ_y / (1 − λ_y)`` (away).
* **Step** ``s ← s + α d`` with ``α ∈ [0, α_max]`` from the :class:`StepRule`. An away
  step with ``α = α_max`` is a *drop step*: vertex ``y`` leaves the active set, i.e.
  ``s_y = ε`` exactly (or ``𝟏ᵀt = τ`` exactly for ``y = v₀``); the coordinate is snapped
  so that rounding cannot leave it at ``ε(1 ± 10⁻¹⁶)``.

Step rules (:class:`StepRule`):

``"diminishing"``
    ``α = min(α_max, c / (t + c))`` with the iteration counter ``t`` (``c = offset``,
    default 2: the classical FW rule ``2/(t+2)``, capped at ``α_max`` for away steps).
``"constant"``
    ``α = min(α_max, step_size)`` (the usual choice for the stochastic method).
``"short_step"``
    ``α = min(α_max, −⟨g, d⟩ / (L ‖d‖²))`` with a smoothness constant ``L`` — the
    minimiser of the quadratic upper bound; exact line search on quadratics of Hessian
    ``L·I``.
``"line_search"``
    Golden-section search of ``φ(α) = f(s + αd)`` on ``[0, α_max]`` (needs the objective;
    deterministic problems only).

References
----------
J. Guélat, P. Marcotte, *Some comments on Wolfe's 'away step'*, Math. Prog. 35 (1986).
S. Lacoste-Julien, M. Jaggi, *On the global linear convergence of Frank-Wolfe
optimization variants*, NeurIPS 2015.
E. Zangrando, S. Venturini, F. Rinaldi, F. Tudisco, *dEBORA: Efficient Bilevel
Optimization-based low-Rank Adaptation*, ICLR 2025 (OpenReview 5M0ic2RxQZ).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "BASE",
    "FWStep",
    "PerturbedSimplex",
    "StepRule",
    "away_step_frank_wolfe",
    "away_step_fw_update",
]

BASE = -1
"""Index of the vertex ``ε𝟏`` (the other vertices ``ε𝟏 + τ e_i`` have index ``i``)."""

StepKind = Literal["diminishing", "constant", "short_step", "line_search"]
_RULES = ("diminishing", "constant", "short_step", "line_search")
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _positive_finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not (v > 0.0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


@dataclass(frozen=True)
class StepRule:
    """How the step length ``α ∈ [0, α_max]`` of an away-step FW iteration is chosen.

    Parameters
    ----------
    kind : {"diminishing", "constant", "short_step", "line_search"}
        See the module docstring.
    step_size : float
        ``"constant"``: the step ``α`` (clipped to ``α_max``), in ``(0, 1]``.
    offset : float
        ``"diminishing"``: ``c`` in ``α_t = c / (t + c)`` (``> 0``; 2 is the classical rule).
    smoothness : float, optional
        ``"short_step"``: the Lipschitz constant ``L > 0`` of the gradient.
    line_search_iters : int
        ``"line_search"``: golden-section iterations (interval shrinks by ``0.618`` each).
    """

    kind: StepKind = "diminishing"
    step_size: float = 0.1
    offset: float = 2.0
    smoothness: float | None = None
    line_search_iters: int = 60

    def __post_init__(self) -> None:
        if self.kind not in _RULES:
            raise ValueError(f"step rule kind must be one of {_RULES}, got {self.kind!r}")
        ss = _positive_finite("step_size", self.step_size)
        if ss > 1.0:
            raise ValueError(f"step_size must be in (0, 1], got {self.step_size!r}")
        _positive_finite("offset", self.offset)
        if self.kind == "short_step":
            if self.smoothness is None:
                raise ValueError("the 'short_step' rule needs smoothness (L > 0), got None")
            _positive_finite("smoothness", self.smoothness)
        it = self.line_search_iters
        if isinstance(it, bool) or not isinstance(it, int) or it < 1:
            raise ValueError(f"line_search_iters must be an integer >= 1, got {it!r}")


class PerturbedSimplex:
    r"""The perturbed simplex ``S = {s ≥ ε𝟏, 𝟏ᵀs ≤ τ + rε}`` of dimension ``r``.

    Parameters
    ----------
    dim : int
        ``r ≥ 0`` (``r = 0`` is the empty vector space; every method is then trivial).
    tau : float
        Budget ``τ > 0``.
    eps : float
        Lower bound ``ε > 0``.

    Raises
    ------
    ValueError
        ``tau ≤ 0``, ``eps ≤ 0`` (or not finite), or ``dim < 0``.
    """

    def __init__(self, dim: int, tau: float, eps: float) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise ValueError(f"dim must be an integer >= 0, got {dim!r}")
        self.dim = int(dim)
        self.tau = _positive_finite("tau", tau)
        self.eps = _positive_finite("eps", eps)

    @property
    def radius(self) -> float:
        """``τ + rε``: the bound on ``𝟏ᵀs``."""
        return self.tau + self.dim * self.eps

    def __repr__(self) -> str:
        return f"PerturbedSimplex(dim={self.dim}, tau={self.tau}, eps={self.eps})"

    # ------------------------------------------------------------------ geometry
    def vertex(self, index: int, like: torch.Tensor) -> torch.Tensor:
        """Vertex ``ε𝟏`` (``index = BASE``) or ``ε𝟏 + τ e_index`` as a tensor like ``like``."""
        v = torch.full((self.dim,), self.eps, dtype=like.dtype, device=like.device)
        if index != BASE:
            v[index] += self.tau
        return v

    def contains(self, s: torch.Tensor, atol: float = 0.0) -> bool:
        """Whether ``s ≥ ε − atol`` and ``𝟏ᵀs ≤ τ + rε + atol``."""
        if s.shape != (self.dim,):
            return False
        if self.dim == 0:
            return True
        return bool((s >= self.eps - atol).all()) and float(s.sum()) <= self.radius + atol

    def barycentric(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(λ_base, λ)``: barycentric coordinates of ``s`` (rounding negatives clamped to 0)."""
        lam = ((s - self.eps) / self.tau).clamp_min(0.0)
        lam0 = (1.0 - lam.sum()).clamp_min(0.0)
        return lam0, lam

    def active_vertices(self, s: torch.Tensor, tol: float = 0.0) -> list[int]:
        """Indices of the vertices with barycentric weight ``> max(tol, rounding_tol(s))``.

        ``BASE`` stands for ``ε𝟏``. The threshold is the one :meth:`away_vertex` uses, so
        both agree on the active set: ``λ_base = 1 − 𝟏ᵀt/τ`` of a point on the budget face
        ``𝟏ᵀt = τ`` is zero only up to rounding (e.g. ``1.1e-16``) and must not make ``ε𝟏``
        count as active.
        """
        tol = max(tol, self.rounding_tol(s))
        lam0, lam = self.barycentric(s)
        out = [BASE] if float(lam0) > tol else []
        out.extend(int(i) for i in torch.nonzero(lam > tol).flatten().tolist())
        return out

    def lmo(self, g: torch.Tensor) -> int:
        """``argmin_v ⟨g, v⟩`` over the vertices: ``argmin g`` if ``min g < 0`` else ``BASE``.

        Ties are broken towards ``BASE`` and then the smallest index.
        """
        if self.dim == 0:
            return BASE
        i = int(torch.argmin(g))
        return i if float(g[i]) < 0.0 else BASE

    def rounding_tol(self, s: torch.Tensor) -> float:
        """Barycentric weights below this are rounding noise: ``8 (r + 1) u`` (unit roundoff ``u``).

        (After a drop step of ``ε𝟏``, ``λ_base = 1 − 𝟏ᵀt/τ`` is zero only up to rounding;
        an away step towards such a vertex would have a step bound ``α_max ≈ 10⁻¹⁶`` and
        stall the method.)
        """
        return 8.0 * (self.dim + 1) * torch.finfo(s.dtype).eps

    def away_vertex(self, g: torch.Tensor, s: torch.Tensor, tol: float = 0.0) -> int:
        """``argmax_{v active} ⟨g, v⟩`` (``⟨g, v_i⟩ − ⟨g, ε𝟏⟩ = τ g_i``, ``0`` for ``BASE``).

        A vertex is active when its barycentric weight exceeds
        ``max(tol, rounding_tol(s))``.
        """
        tol = max(tol, self.rounding_tol(s))
        lam0, lam = self.barycentric(s)
        best, best_val = None, -math.inf
        if float(lam0) > tol:
            best, best_val = BASE, 0.0
        mask = lam > tol
        if bool(mask.any()):
            vals = torch.where(mask, g, torch.full_like(g, -math.inf))
            i = int(torch.argmax(vals))
            if float(vals[i]) > best_val:
                best = i
        if best is None:  # rounding only: s is (numerically) a vertex
            return BASE
        return best

    def fw_gap(self, g: torch.Tensor, s: torch.Tensor) -> float:
        """Frank–Wolfe gap ``⟨g, s − z⟩ = max_{v ∈ S} ⟨g, s − v⟩ ≥ 0``."""
        if self.dim == 0:
            return 0.0
        z = self.lmo(g)
        val = float(g @ (s - self.eps))
        if z != BASE:
            val -= self.tau * float(g[z])
        return max(val, 0.0)

    def project(self, s: torch.Tensor) -> torch.Tensor:
        r"""Euclidean projection onto ``S`` (sort-based, ``O(r log r)``).

        With ``t = s − ε𝟏``: ``t₊ = max(t, 0)`` if ``𝟏ᵀt₊ ≤ τ``, else the projection onto
        ``{t ≥ 0, 𝟏ᵀt = τ}``: ``max(t − θ, 0)`` with the threshold ``θ`` of Held, Wolfe &
        Crowder (1974) / Duchi et al. (2008).
        """
        if s.shape != (self.dim,):
            raise ValueError(f"s must have shape ({self.dim},), got {tuple(s.shape)}")
        if self.dim == 0:
            return s.clone()
        t = s - self.eps
        tp = t.clamp_min(0.0)
        if float(tp.sum()) <= self.tau:
            return tp + self.eps
        u, _ = torch.sort(t, descending=True)
        css = torch.cumsum(u, 0) - self.tau
        k = torch.arange(1, self.dim + 1, dtype=s.dtype, device=s.device)
        cond = u - css / k > 0
        rho = int(torch.nonzero(cond).flatten()[-1])
        theta = css[rho] / (rho + 1)
        return (t - theta).clamp_min(0.0) + self.eps


@dataclass
class FWStep:
    """The outcome of one away-step Frank–Wolfe iteration.

    Attributes
    ----------
    s : torch.Tensor
        The new iterate (a new tensor; the input is not modified).
    gap : float
        Frank–Wolfe gap ``⟨g, s − z⟩`` at the *old* iterate.
    kind : {"fw", "away", "drop", "none"}
        Which step was taken (``"drop"``: away step of maximal length; ``"none"``: gap
        below ``gap_tol`` or zero direction, ``s`` unchanged).
    gamma, gamma_max : float
        Step length and its upper bound ``α_max``.
    fw_vertex, away_vertex : int
        Vertex indices (``BASE = -1`` is ``ε𝟏``).
    dropped : int or None
        The vertex that left the active set in a drop step.
    """

    s: torch.Tensor
    gap: float
    kind: str
    gamma: float
    gamma_max: float
    fw_vertex: int
    away_vertex: int
    dropped: int | None = None


def _bisect_derivative(dphi: Callable[[float], float], hi: float, iters: int) -> float:
    """Zero of the increasing ``φ'`` on ``[0, hi]`` by bisection (``φ'(0) < 0``)."""
    if dphi(hi) <= 0.0:
        return hi
    lo_, hi_ = 0.0, hi
    for _ in range(iters):
        mid = 0.5 * (lo_ + hi_)
        if dphi(mid) <= 0.0:
            lo_ = mid
        else:
            hi_ = mid
    return 0.5 * (lo_ + hi_)


def _golden(phi: Callable[[float], float], hi: float, iters: int) -> float:
    lo_, hi_ = 0.0, hi
    a = hi_ - _GOLDEN * (hi_ - lo_)
    b = lo_ + _GOLDEN * (hi_ - lo_)
    fa, fb = phi(a), phi(b)
    for _ in range(iters):
        if fa <= fb:
            hi_, b, fb = b, a, fa
            a = hi_ - _GOLDEN * (hi_ - lo_)
            fa = phi(a)
        else:
            lo_, a, fa = a, b, fb
            b = lo_ + _GOLDEN * (hi_ - lo_)
            fb = phi(b)
    best = 0.5 * (lo_ + hi_)
    # never worse than the end points
    cands = [(phi(0.0), 0.0), (phi(best), best), (phi(hi), hi)]
    return min(cands)[1]


def away_step_fw_update(
    s: torch.Tensor,
    g: torch.Tensor,
    simplex: PerturbedSimplex,
    *,
    rule: StepRule,
    t: int,
    objective: Callable[[torch.Tensor], float] | None = None,
    gradient: Callable[[torch.Tensor], torch.Tensor] | None = None,
    gap_tol: float = 0.0,
    active_tol: float = 0.0,
) -> FWStep:
    """One away-step Frank–Wolfe iteration on ``simplex`` (see the module docstring).

    Parameters
    ----------
    s : torch.Tensor
        Current iterate ``(r,)`` in ``S`` (up to rounding).
    g : torch.Tensor
        (Stochastic) gradient ``(r,)`` at ``s``.
    simplex : PerturbedSimplex
    rule : StepRule
    t : int
        Iteration counter (``≥ 0``) for the diminishing rule.
    objective : callable, optional
        ``f(s) -> float``; required by ``rule.kind == "line_search"`` unless ``gradient``
        is given.
    gradient : callable, optional
        ``∇f(s)``. With ``"line_search"`` the step is then found by bisection on the
        directional derivative ``φ'(α) = ⟨∇f(s + αd), d⟩`` (exact to rounding for convex
        ``φ``); golden-section search on ``f`` alone resolves ``α`` only to about
        ``√(machine ε)``.
    gap_tol : float
        No step if the FW gap is ``≤ gap_tol`` (the stopping test ``−⟨g, d_FW⟩ ≤ p̃``).
    active_tol : float
        Barycentric weights ``≤ active_tol`` count as inactive.

    Returns
    -------
    FWStep
        ``s`` is always in ``S`` (coordinates are clamped to ``≥ ε`` and snapped on drop
        steps). Cost ``O(r)`` plus the objective evaluations of a line search.
    """
    if s.shape != (simplex.dim,) or g.shape != (simplex.dim,):
        raise ValueError(
            f"s and g must have shape ({simplex.dim},), got {tuple(s.shape)}, {tuple(g.shape)}"
        )
    if rule.kind == "line_search" and objective is None and gradient is None:
        raise ValueError("the 'line_search' step rule needs an objective (or gradient) callable")
    if simplex.dim == 0:
        return FWStep(s.clone(), 0.0, "none", 0.0, 0.0, BASE, BASE)
    eps, tau = simplex.eps, simplex.tau
    z = simplex.lmo(g)
    y = simplex.away_vertex(g, s, active_tol)
    gap = simplex.fw_gap(g, s)
    # away gap ⟨g, y − s⟩
    tt = s - eps
    base_val = float(g @ tt)
    away_gap = (tau * float(g[y]) if y != BASE else 0.0) - base_val
    if gap <= gap_tol or max(gap, away_gap) <= 0.0:
        return FWStep(s.clone(), gap, "none", 0.0, 0.0, z, y)
    lam0, lam = simplex.barycentric(s)
    if gap >= away_gap:
        d = simplex.vertex(z, s) - s
        kind, gmax, slope = "fw", 1.0, -gap
    else:
        d = s - simplex.vertex(y, s)
        lam_y = float(lam0) if y == BASE else float(lam[y])
        gmax = lam_y / max(1.0 - lam_y, 1e-300)
        kind, slope = "away", -away_gap
    dd = float(d @ d)
    if dd == 0.0:
        return FWStep(s.clone(), gap, "none", 0.0, gmax, z, y)
    if rule.kind == "diminishing":
        gamma = rule.offset / (t + rule.offset)
    elif rule.kind == "constant":
        gamma = rule.step_size
    elif rule.kind == "short_step":
        gamma = -slope / (float(rule.smoothness) * dd)
    elif gradient is not None:

        def dphi(a: float) -> float:
            return float(gradient(s + a * d) @ d)

        gamma = _bisect_derivative(dphi, gmax, rule.line_search_iters)
    else:
        assert objective is not None

        def phi(a: float) -> float:
            return float(objective(s + a * d))

        gamma = _golden(phi, gmax, rule.line_search_iters)
    gamma = float(min(max(gamma, 0.0), gmax))
    new = s + gamma * d
    dropped = None
    if kind == "away" and gamma >= gmax * (1.0 - 1e-12):
        kind, dropped = "drop", y
        gamma = gmax
        new = s + gamma * d
        if y == BASE:  # now on the budget face: 𝟏ᵀt = τ exactly
            tn = (new - eps).clamp_min(0.0)
            tot = float(tn.sum())
            if tot > 0:
                new = tn * (tau / tot) + eps
        else:
            new[y] = eps
    new = new.clamp_min(eps)
    # rounding: keep 𝟏ᵀt ≤ τ
    tn = new - eps
    tot = float(tn.sum())
    if tot > tau:
        new = tn * (tau / tot) + eps
    return FWStep(new, gap, kind, gamma, gmax, z, y, dropped)


def away_step_frank_wolfe(
    grad_fn: Callable[[torch.Tensor], torch.Tensor],
    s0: torch.Tensor,
    simplex: PerturbedSimplex,
    *,
    iters: int,
    rule: StepRule | None = None,
    objective: Callable[[torch.Tensor], float] | None = None,
    gap_tol: float = 0.0,
) -> tuple[torch.Tensor, list[FWStep]]:
    """Run ``iters`` away-step FW iterations from ``s0`` (deterministic driver).

    Parameters
    ----------
    grad_fn : callable
        ``s -> ∇f(s)`` (or a stochastic estimate).
    s0 : torch.Tensor
        Start point in ``S``.
    simplex : PerturbedSimplex
    iters : int
        Number of iterations (``≥ 0``); stops early when a step returns ``"none"``.
    rule : StepRule, optional
        Default: ``"line_search"`` if ``objective`` is given, else ``"diminishing"``.
        The line search bisects the directional derivative built from ``grad_fn``
        (deterministic gradients only).
    objective : callable, optional
        ``f(s)``.
    gap_tol : float
        Stopping tolerance on the FW gap.

    Returns
    -------
    (s, history) : tuple
        The last iterate and one :class:`FWStep` per iteration.
    """
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an integer >= 0, got {iters!r}")
    if not simplex.contains(s0, atol=1e-12 * max(1.0, simplex.radius)):
        raise ValueError("s0 must lie in the perturbed simplex (s >= eps, sum <= tau + r eps)")
    if rule is None:
        rule = StepRule("line_search") if objective is not None else StepRule()
    s = s0.clone()
    hist: list[FWStep] = []
    for t in range(iters):
        step = away_step_fw_update(
            s,
            grad_fn(s),
            simplex,
            rule=rule,
            t=t,
            objective=objective,
            gradient=grad_fn if rule.kind == "line_search" else None,
            gap_tol=gap_tol,
        )
        hist.append(step)
        s = step.s
        if step.kind == "none":
            break
    return s, hist
