r"""dEBORA: bilevel rank selection by stochastic away-step Frank–Wolfe (ICLR 2025).

Problem
-------
Every adapter is a weighted sum of components, ``ΔW = U diag(s) Vᵀ`` (matrix) or the
Tucker/CP forms of :mod:`manifold_lowrank.nn.debora`. The data are split into ``D₁`` and
``D₂`` (losses ``f₁``, ``f₂``), and the weights ``s`` (all layers) and the bases
``B`` (``U``, ``V``, core directions) are found from the bilevel problem

.. math::

    \min_{s \in \mathcal S} F(s) = f_1(B^*(s), s)
    \quad\text{s.t.}\quad B^*(s) \in \arg\min_{B \in \mathcal M} f_2(B, s),
    \qquad \mathcal S = \{s \ge ε\mathbf 1,\ \mathbf 1^\top s \le τ + Rε\},

with ``R`` components in total (``budget="global"``, one simplex over all layers, so the
budget ``τ`` is *allocated across layers*) or one simplex per layer
(``budget="layer"``). ``𝓜`` is a product of Stiefel, oblique or Euclidean ("free")
manifolds for the bases and of unit spheres for the core directions.

One outer iteration (:meth:`DEBORA.step`, or :meth:`~DEBORA.lower_step` ×T then
:meth:`~DEBORA.upper_step`)::

    for t in 1..T:  B ← Riemannian Adam/SGD step on f₂ (a D₂ minibatch), s fixed   (lower)
    g ← hypergradient G̃(s) on a D₁ minibatch (one backward pass)                   (upper)
    s ← away-step Frank–Wolfe step on 𝒮 with g (frank_wolfe.away_step_fw_update)
    prune: components whose weight sat at ε (weight 0 in the active set) for
           `prune_patience` upper steps, after `prune_after` upper steps → rank ↓

The hypergradient (derivation and what is exact)
------------------------------------------------
Implicit differentiation of ``∇_B f₂(B*(s), s) = 0`` gives

.. math::

    \frac{dF}{ds} = \partial_s f_1 + \Big(\frac{dB^*}{ds}\Big)^{\!\top} \partial_B f_1,
    \qquad \nabla^2_{BB} f_2\, \frac{dB^*}{ds} = -\nabla^2_{Bs} f_2 .

With ``f₂ = ℓ₂(Ψ(B, s))`` the Hessians split into a Gauss–Newton part
``DΨᵀ ∇²ℓ₂ DΨ`` and the part ``⟨∇ℓ₂, D²Ψ⟩``. Dropping the Hessian of the loss
(``∇²ℓ₂``, the ``K`` of the paper's error bound) leaves a system that only involves the
*multilinear* map ``Ψ``. For ``Ψ = Σ_j s_j u_j v_jᵀ`` its solution is closed form,

.. math::

    \frac{du_j}{ds_i} = -\frac{δ_{ij}}{s_i} u_i,\qquad
    \frac{dv_j}{ds_i} = -\frac{δ_{ij}}{s_i} v_i
    \quad\Longrightarrow\quad
    G(s) = \partial_s f_1 - \operatorname{diag}\Big(\sum_k U^{(k)\top}
    \partial_{U^{(k)}} f_1\Big) \oslash s ,

(check: ``⟨∇ℓ₂, δU diag(s) δV'ᵀ + δU' diag(s) δVᵀ⟩`` with the proposed ``δU, δV``
equals ``−⟨∇ℓ₂, δU' e_i e_iᵀ Vᵀ + U e_i e_iᵀ δV'ᵀ⟩`` for every test direction).
For a CP form with ``d`` factors carrying index ``j`` the same ansatz solves the system
with ``du/ds = −u/((d−1)s)``, i.e. the correction is divided by ``d − 1``
(:func:`closed_form_hypergradient`); for ``d = 2`` it is the formula above. For the
general Tucker form (the shared factor ``U₂`` also couples to ``s``) it is an
approximation.

What this implementation verifies (tests ``tests/optim/test_debora.py``):

* **Euler's identity.** ``Ψ`` is homogeneous of degree one in ``s_j`` and in every
  column carrying ``j``, so ``u_jᵀ ∂_{u_j} f = s_j ∂_{s_j} f`` for *any* ``f``. Hence
  the closed form evaluated with Euclidean partials is identically
  ``G = (1 − d/(d−1)) ∂_s f₁`` (``= −∂_s f₁`` for matrices), whatever the data.
* **Free bases make the bilevel problem degenerate.** ``U diag(s) Vᵀ =
  (U diag(s/s')) diag(s') Vᵀ``: every ``s' > 0`` reaches the same set of ``ΔW``, so
  ``F`` is constant and the exact hypergradient is ``0`` (a finite-difference test
  confirms it), while the Euclidean closed form gives ``−∂_s f₁``. With
  ``bases="free"`` and ``hypergradient="closed_form"`` a :class:`UserWarning` says so.
* **Normalised bases (Stiefel, oblique, unit core slices).** Tangent vectors satisfy
  ``diag(Uᵀ ξ) = 0`` (Stiefel: ``Uᵀξ`` is skew; oblique/sphere: by definition), so
  with *Riemannian* gradients (what the lower level uses) the correction vanishes and
  ``G = ∂_s f₁``. It is **exact** whenever ``B*`` does not move with ``s``, e.g. for
  Stiefel bases and ``f₂ = ½‖U diag(s) Vᵀ − A‖²_F``: by von Neumann's trace inequality
  ``B*(s)`` is the top-``r`` singular pair of ``A`` (ordered like ``s``) for every ``s``;
  the test checks ``G`` against central finite differences of ``F`` with ``B*(s)``
  solved by an SVD. When ``B*`` moves with ``s`` (oblique bases with ``r ≥ 2``, a
  non-isotropic loss) ``G`` is the paper-style approximation: the term
  ``(dB*/ds)ᵀ ∂_B f₁`` it drops needs ``∇²ℓ₂`` (the error bound ``≲ Kβ``).

The paper's own statement of the theorem (and its "tridiagonal" approximation for
``d > 2``) could not be read here (no text beyond the abstract was reachable); the
formulas above are derived and tested independently.

Step rule and pruning defaults (not known from the paper; all are options)
---------------------------------------------------------------------------
``step_rule="constant"`` with ``step_size=0.05`` (stochastic FW), or ``"diminishing"``
(``α_t = c/(t+c)``), or ``"short_step"`` with a smoothness constant. Away steps are
capped at ``α_max = λ_y/(1−λ_y)``; a capped away step drops the vertex, putting the
component *exactly* at ``ε``. Pruning: after ``prune_after`` upper steps, a component
whose weight has been at ``ε`` (barycentric weight ``≤ prune_tol``) for
``prune_patience`` consecutive upper steps is removed (``set_point`` reallocates the
factors; optimizer state columns are deleted).

Start point. The paper's initialisation could not be read here (see above); fresh
adapters start at the *barycentre* ``s₀ = ε𝟏 + τ/(R+1)·𝟏`` of the simplex (``init``),
a feasible interior point where every vertex is active. From the vertex ``ε𝟏`` (all
weights at the bound, what ``S = 0`` adapters would give) Frank–Wolfe adds at most one
component per upper step, so with ``T`` iterations at most ``T`` of the ``R``
components are ever used, and the lower level barely trains the bases of the others
(their gradients scale with ``s_j = ε``); the issue's description — components that
*reach* the boundary are pruned, so the rank *falls* — presupposes a start inside
``𝒮``. ``init="keep"`` restores the vertex start.

Mapping from the paper
----------------------
The paper's ``Ψ = U diag(s) Vᵀ`` is our ``ΔW/scaling`` (``U`` output side). ``ε``,
``τ``, ``T_max`` (our ``lower_steps``), ``n₀`` (``prune_after``) and the stopping
tolerance ``p̃`` (``gap_tol``) keep their roles.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from manifold_lowrank.linalg import all_finite, qr_signfix
from manifold_lowrank.nn.debora import (
    BASES_KINDS,
    DeboraParts,
    debora_format_of,
    default_bases,
    grad_parts,
    prune_parts,
    read_parts,
    write_parts,
)
from manifold_lowrank.optim.frank_wolfe import (
    FWStep,
    PerturbedSimplex,
    StepRule,
    away_step_fw_update,
)
from manifold_lowrank.optim.lowrank_base import (
    BoundedHistory,
    LowRankOptimizer,
    check_history_maxlen,
)

__all__ = [
    "DEBORA",
    "DEBORATrainer",
    "closed_form_hypergradient",
    "riemannian_gradient",
    "split_bilevel",
]

_LOWER = ("adam", "sgd")
_HYPER = ("closed_form", "partial")
_BUDGET = ("global", "layer")
_INIT = ("auto", "barycenter", "keep")


# --------------------------------------------------------------------------- geometry
def riemannian_gradient(kind: str, X: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    r"""Projection of ``G`` onto the tangent space at ``X`` (``n×r``) of the basis manifold.

    ``"stiefel"``: ``G − X sym(XᵀG)`` (embedded metric); ``"oblique"``:
    ``G − X diag(diag(XᵀG))``; ``"free"``: ``G``. Cost ``O(n r²)`` / ``O(n r)``.
    """
    if kind == "stiefel":
        xtg = X.transpose(0, 1) @ G
        return G - X @ (0.5 * (xtg + xtg.transpose(0, 1)))
    if kind == "oblique":
        return G - X * (X * G).sum(0, keepdim=True)
    if kind == "free":
        return G
    raise ValueError(f"kind must be one of {BASES_KINDS}, got {kind!r}")


def _retract(kind: str, X: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Retraction ``R_X(D)``: sign-fixed QR (Stiefel), column normalisation (oblique)."""
    Y = X + D
    if kind == "stiefel":
        return qr_signfix(Y)[0]
    if kind == "oblique":
        return Y / Y.norm(dim=0, keepdim=True).clamp_min(torch.finfo(Y.dtype).tiny)
    return Y


def closed_form_hypergradient(
    grad_s: torch.Tensor,
    bases: Sequence[torch.Tensor],
    base_grads: Sequence[torch.Tensor],
    s: torch.Tensor,
    kinds: Sequence[str] | None = None,
) -> torch.Tensor:
    r"""The closed-form hypergradient ``G(s) = ∂_s f₁ − diag(Σ_k B_kᵀ ξ_k) ⊘ ((d−1) s)``.

    Parameters
    ----------
    grad_s : torch.Tensor
        ``∂_s f₁`` ``(r,)``.
    bases : sequence of torch.Tensor
        The ``d ≥ 2`` component-carrying factors ``B_k`` ``(n_k, r)`` (matrix: ``U``, ``V``).
    base_grads : sequence of torch.Tensor
        Euclidean gradients ``∂_{B_k} f₁``.
    s : torch.Tensor
        Weights ``(r,)``, ``> 0``.
    kinds : sequence of str, optional
        Manifold of each factor; ``ξ_k`` is then the Riemannian gradient
        (:func:`riemannian_gradient`). ``None``: Euclidean partials (the formula read
        literally; by Euler's identity it then equals ``(1 − d/(d−1)) ∂_s f₁``).

    Returns
    -------
    torch.Tensor
        ``(r,)``. For ``d = 2`` this is the paper's formula; see the module docstring for
        the derivation and when it is exact. Cost ``O(Σ_k n_k r)`` (``O(n_k r²)`` for a
        Stiefel projection).
    """
    d = len(bases)
    if d < 2 or len(base_grads) != d:
        raise ValueError(
            f"need d >= 2 factors and as many gradients, got {d} and {len(base_grads)}"
        )
    corr = torch.zeros_like(grad_s)
    for k, (B, g) in enumerate(zip(bases, base_grads)):
        xi = g if kinds is None else riemannian_gradient(kinds[k], B, g)
        corr = corr + (B * xi).sum(0)
    return grad_s - corr / ((d - 1) * s)


# --------------------------------------------------------------------------- checks
def _real(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__} ({v!r})")
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return x


def _positive(name: str, v: Any) -> float:
    x = _real(name, v)
    if x <= 0.0:
        raise ValueError(f"{name} must be > 0, got {v!r}")
    return x


def _nonneg_int(name: str, v: Any, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _choice(name: str, v: Any, options: tuple[str, ...]) -> str:
    if v not in options:
        raise ValueError(f"{name} must be one of {options}, got {v!r}")
    return str(v)


# --------------------------------------------------------------------------- optimizer
class DEBORA(LowRankOptimizer):
    r"""dEBORA bilevel optimizer: lower-level bases, upper-level away-step FW on ``s``.

    A :class:`torch.optim.Optimizer` (one parameter group per adapter layer, ``lr`` is
    the lower-level step size, so learning-rate schedulers act on the lower level). The
    two levels read different data, so a single ``step()`` cannot know which gradients
    it holds; the API is therefore

    * :meth:`lower_step` after a backward pass on a ``D₂`` batch,
    * :meth:`upper_step` after a backward pass on a ``D₁`` batch,
    * or :meth:`step` with a ``closure(level)`` (``level`` is ``"lower"`` or
      ``"upper"``; it draws a batch of the matching stream, computes the loss and calls
      ``backward()``), which runs ``lower_steps`` lower steps and one upper step —
      the ``LBFGS``-style multi-pass protocol;
    * or :class:`DEBORATrainer`, which owns the two data streams.

    Parameters
    ----------
    model_or_layers : nn.Module or iterable
        A model (e.g. from ``get_adapter_model(model, AdapterConfig(method="debora"))``),
        or layers / ``(name, layer)`` pairs / group dicts as in
        :class:`~manifold_lowrank.optim.LowRankOptimizer`. Any matrix adapter and any
        4-way Tucker conv adapter with full spatial modes is accepted: it is
        re-parametrised *exactly* into the dEBORA form at construction (``S``
        diagonalised, bases normalised), then ``s`` is initialised as ``init`` says.
    tau : float
        Budget ``τ > 0`` of the simplex.
    eps : float, default 1e-3
        ``ε > 0``: lower bound of every weight.
    lr : float, default 1e-3
        Lower-level step size.
    lower : {"adam", "sgd"}, default "adam"
        Lower-level method: Riemannian Adam with one scalar second moment per factor
        (invariant under the projection transport and under pruning) or Riemannian SGD
        with heavy-ball momentum; momenta are moved by projection onto the new tangent
        space. Bases are never weight-decayed.
    betas, adam_eps, momentum : float
        Adam ``(β₁, β₂)`` and ``ε``; SGD momentum ``μ ∈ [0, 1)``.
    bases : {"auto", "stiefel", "oblique", "free"}, default "auto"
        Basis manifold; ``"auto"`` uses each layer's ``debora_bases`` attribute, else
        Stiefel (matrix/Tucker) or oblique (CP).
    tensor_format : {"tucker", "cp"}, default "tucker"
        Format of Tucker layers without a ``debora_format`` attribute.
    budget : {"global", "layer"}, default "global"
        One simplex over all components of all layers, or one per layer.
    init : {"auto", "barycenter", "keep"}, default "auto"
        Start point ``s₀`` of the upper level. ``"barycenter"``: the centre of every
        simplex block, ``s₀ = ε𝟏 + τ/(R+1) 𝟏`` (``R`` components in the block): every
        vertex is in the active set with weight ``1/(R+1)``, so every component takes part
        from the first step, and away/drop steps remove the useless ones (the rank *falls*).
        ``"keep"``: the adapters' current weights, projected onto ``𝒮`` (fresh adapters
        with ``S = 0`` then start at the vertex ``ε𝟏``, where Frank–Wolfe activates at most
        one component per upper step and the bases of inactive components receive
        gradients scaled by ``ε``). ``"auto"``: ``"barycenter"`` if every weight is
        ``≤ ε`` (fresh adapters: ``"keep"`` would start at the vertex ``ε𝟏``), else
        ``"keep"`` (trained or converted adapters). The
        barycentre changes ``ΔW`` at construction (``‖ΔW‖`` of order ``scaling·τ/(R+1)``
        per component).
    step_rule : {"constant", "diminishing", "short_step"}, default "constant"
        Upper-level step rule (:class:`~manifold_lowrank.optim.frank_wolfe.StepRule`).
    step_size : float, default 0.05
        ``"constant"`` step in ``(0, 1]``.
    step_offset : float, default 2.0
        ``"diminishing"``: ``α_t = c / (t + c)``.
    smoothness : float, optional
        ``"short_step"``: the constant ``L``.
    hypergradient : {"closed_form", "partial"}, default "closed_form"
        ``G(s)`` of :func:`closed_form_hypergradient` with the Riemannian gradients of
        the basis manifolds (Euclidean for ``"free"``), or just ``∂_s f₁``.
    gap_tol : float, default 0
        No FW step when the gap is ``≤ gap_tol``.
    prune_after : int, default 50
        Number of upper steps before pruning may happen (``n₀``). With the vertex start
        ``ε𝟏`` (``init="keep"`` on fresh adapters) *every* weight is at the bound, so
        pruning right away would delete components Frank–Wolfe has not visited yet.
    prune_patience : int, default 10
        Consecutive upper steps a weight must sit at ``ε`` before it is pruned (guards
        against a single noisy stochastic step).
    prune_tol : float, default 0
        A weight counts as "at ``ε``" when ``s_j − ε ≤ prune_tol · τ``.
    min_rank : int, default 0
        Never prune a layer below this many components.
    lower_steps : int, default 1
        ``T_max``: lower steps per :meth:`step`.
    seed : int, default 0
        Seeds the random unit directions given to zero components at construction.
    nan_policy : {"skip", "raise"}, default "skip"
        Non-finite gradients/updates: skip the step with a warning, or raise; nothing is
        modified either way.
    record_weights : bool, default False
        Store a copy of every layer's ``s`` in :attr:`history` after each upper step.
    rank_history_maxlen : int or None
        Keep only the last ``rank_history_maxlen`` entries of :attr:`rank_history` and
        of :attr:`history` (default: unbounded).

    Attributes
    ----------
    history : list of dict
        One entry per upper step: ``t``, ``gap`` (FW gap; the sum over blocks for
        ``budget="layer"``), ``kind``, ``gamma``, ``ranks``, ``components`` (total),
        ``pruned`` (this step) and, with ``record_weights``, ``weights`` and ``ids``
        (:meth:`component_ids`).
    fw_gap : float
        The gap of the last upper step (``nan`` before the first).

    Raises
    ------
    ValueError
        ``tau ≤ 0`` or ``eps ≤ 0`` (messages name the argument), an unknown option value,
        or no dEBORA-compatible layer in ``model_or_layers``.
    """

    def __init__(
        self,
        model_or_layers: nn.Module | Iterable[Any],
        *,
        tau: float,
        eps: float = 1e-3,
        lr: float = 1e-3,
        lower: str = "adam",
        betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        momentum: float = 0.9,
        bases: str = "auto",
        tensor_format: str = "tucker",
        budget: str = "global",
        init: str = "auto",
        step_rule: str = "constant",
        step_size: float = 0.05,
        step_offset: float = 2.0,
        smoothness: float | None = None,
        hypergradient: str = "closed_form",
        gap_tol: float = 0.0,
        prune_after: int = 50,
        prune_patience: int = 10,
        prune_tol: float = 0.0,
        min_rank: int = 0,
        lower_steps: int = 1,
        seed: int = 0,
        nan_policy: str = "skip",
        record_history: bool = True,
        rank_history_maxlen: int | None = None,
        record_weights: bool = False,
    ) -> None:
        self.tau = _positive("tau", tau)
        self.eps = _positive("eps", eps)
        lr_ = _real("lr", lr)
        if lr_ < 0:
            raise ValueError(f"lr must be >= 0, got {lr!r}")
        self.lower = _choice("lower", lower, _LOWER)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for i, b in enumerate(betas):
            if not (0.0 <= _real(f"betas[{i}]", b) < 1.0):
                raise ValueError(f"betas[{i}] must be in [0, 1), got {b!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.adam_eps = _positive("adam_eps", adam_eps)
        self.momentum = _real("momentum", momentum)
        if not (0.0 <= self.momentum < 1.0):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.bases = _choice("bases", bases, (*BASES_KINDS, "auto"))
        self.tensor_format = _choice("tensor_format", tensor_format, ("tucker", "cp"))
        self.budget = _choice("budget", budget, _BUDGET)
        self.init = _choice("init", init, _INIT)
        _choice("step_rule", step_rule, ("constant", "diminishing", "short_step"))
        self.rule = StepRule(
            step_rule,  # type: ignore[arg-type]
            step_size=step_size,
            offset=step_offset,
            smoothness=smoothness,
        )
        self.hypergradient_kind = _choice("hypergradient", hypergradient, _HYPER)
        self.gap_tol = _real("gap_tol", gap_tol)
        self.prune_after = _nonneg_int("prune_after", prune_after)
        self.prune_patience = _nonneg_int("prune_patience", prune_patience, 1)
        self.prune_tol = _real("prune_tol", prune_tol)
        if self.prune_tol < 0:
            raise ValueError(f"prune_tol must be >= 0, got {prune_tol!r}")
        self.min_rank = _nonneg_int("min_rank", min_rank)
        self.lower_steps = _nonneg_int("lower_steps", lower_steps, 1)
        self.record_weights = bool(record_weights)
        super().__init__(
            model_or_layers,
            {"lr": lr_},
            nan_policy=nan_policy,
            record_history=record_history,
            rank_history_maxlen=rank_history_maxlen,
        )
        self.formats: list[str] = [debora_format_of(la, self.tensor_format) for la in self.layers]
        self.layer_bases: list[str] = []
        for la, fmt in zip(self.layers, self.formats):
            b = self.bases
            if b == "auto":
                b = getattr(la, "debora_bases", None) or default_bases(fmt)
            self.layer_bases.append(b)
        if self.hypergradient_kind == "closed_form" and "free" in self.layer_bases:
            warnings.warn(
                "bases='free' with hypergradient='closed_form': with free bases "
                "U diag(s) V^T is invariant under s -> s*a, U -> U diag(1/a), so the reduced "
                "upper objective is constant in s and the closed form reduces to -d_s f1 "
                "(Euler's identity); use Stiefel/oblique bases or hypergradient='partial'",
                UserWarning,
                stacklevel=2,
            )
        self.history: list[dict[str, Any]] = BoundedHistory(
            maxlen=check_history_maxlen(rank_history_maxlen)
        )
        self.fw_gap = float("nan")
        self._fw_t = 0
        self._lower_t = 0
        gen = torch.Generator()
        gen.manual_seed(int(seed))
        self._canonicalize(gen)

    # ------------------------------------------------------------------ set-up
    def _parts(self, i: int, canonical: bool = False, gen: Any = None) -> DeboraParts:
        return read_parts(
            self.layers[i], self.formats[i], self.layer_bases[i], canonical=canonical, generator=gen
        )

    def _canonicalize(self, gen: torch.Generator) -> None:
        parts = [self._parts(i, canonical=True, gen=gen) for i in range(len(self.layers))]
        init = self.init
        if init == "auto":
            # fresh adapters: every weight at (or below) ε, i.e. the vertex ε𝟏 after projection
            fresh = all(
                float(p.s.max()) <= self.eps * (1 + 1e-6) + self._storage_tol(p.s.dtype)
                for p in parts
                if p.s.numel()
            )
            init = "barycenter" if fresh else "keep"
        if init == "barycenter":
            news = self._barycenter_weights([p.s for p in parts])
        else:
            news = self._project_weights([p.s for p in parts])
        for i, (p, s) in enumerate(zip(parts, news)):
            if (
                init == "keep"
                and p.s.numel()
                and float((s - p.s).abs().max()) > self.eps * (1 + 1e-6)
            ):
                warnings.warn(
                    f"layer {self.layer_names[i]!r}: its weights were outside the simplex "
                    f"(eps={self.eps}, tau={self.tau}) and were projected onto it",
                    UserWarning,
                    stacklevel=3,
                )
            write_parts(self.layers[i], self.formats[i], p._replace(s=s))
            st = self._state_of(i)
            st["streak"] = torch.zeros(int(s.numel()), dtype=torch.long)
            st["ids"] = torch.arange(int(s.numel()), dtype=torch.long)

    def _blocks(self, sizes: list[int]) -> list[tuple[list[int], PerturbedSimplex]]:
        if self.budget == "global":
            return [(list(range(len(sizes))), PerturbedSimplex(sum(sizes), self.tau, self.eps))]
        return [([i], PerturbedSimplex(n, self.tau, self.eps)) for i, n in enumerate(sizes)]

    def _barycenter_weights(self, ss: list[torch.Tensor]) -> list[torch.Tensor]:
        """``ε + τ/(R+1)`` for every weight of a block of ``R`` components."""
        sizes = [int(s.numel()) for s in ss]
        out: list[torch.Tensor] = [s for s in ss]
        for idx, simplex in self._blocks(sizes):
            for i in idx:
                out[i] = torch.full_like(ss[i], self.eps + self.tau / (simplex.dim + 1))
        return out

    def _project_weights(self, ss: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes = [int(s.numel()) for s in ss]
        out: list[torch.Tensor] = [s for s in ss]
        for idx, simplex in self._blocks(sizes):
            if simplex.dim == 0:
                continue
            cat = torch.cat([ss[i].to(torch.float64).cpu() for i in idx])
            proj = simplex.project(cat)
            for i, part in zip(idx, torch.split(proj, [sizes[i] for i in idx])):
                out[i] = part.to(dtype=ss[i].dtype, device=ss[i].device)
        return out

    # ------------------------------------------------------------------ reporting
    def weights(self) -> dict[str, torch.Tensor]:
        """``{layer name: s}`` (detached copies)."""
        return {n: self._parts(i).s for i, n in enumerate(self.layer_names)}

    def component_ids(self) -> list[torch.Tensor]:
        """Per layer, the original index (at construction) of every surviving component.

        Pruning deletes columns; these ids let one follow a component's weight through
        the history (``history[t]["weights"][i][k]`` belongs to ``history[t]["ids"][i][k]``).
        """
        out = []
        for i in range(len(self.layers)):
            ids = self._state_of(i).get("ids")
            n = int(self._parts(i).s.numel())
            if not isinstance(ids, torch.Tensor) or int(ids.numel()) != n:
                ids = torch.arange(n, dtype=torch.long)
            out.append(ids.clone())
        return out

    def num_components(self) -> int:
        """Total number of components ``R`` (the dimension of the global simplex)."""
        return sum(int(self._parts(i).s.numel()) for i in range(len(self.layers)))

    def effective_num_parameters(self) -> int:
        r"""Free parameters of all adapters at the current ranks.

        Matrix: ``r(m + n + 1)`` (``U``, ``V``, ``s``; ``S`` is stored as an ``r×r`` matrix
        but only its diagonal is free). Tucker: ``r·out + r·r₂·kh·kw + in·r₂`` (the weights
        are the norms of the core slices). CP: ``r(out + in + kh·kw)``.
        """
        total = 0
        for i in range(len(self.layers)):
            p = self._parts(i)
            r = int(p.s.numel())
            extra = r if self.formats[i] == "matrix" else 0
            total += r * sum(int(b.shape[0]) for b in p.bases) + extra
            total += sum(int(x.numel()) for x in p.shared)
        return total

    # ------------------------------------------------------------------ hypergradient
    def layer_hypergradient(self, i: int) -> torch.Tensor | None:
        """``G̃(s)`` of layer ``i`` from the gradients currently in ``.grad`` (a ``D₁`` pass).

        ``None`` if the layer received no gradient. See the module docstring.
        """
        parts = self._parts(i)
        gp = grad_parts(self.layers[i], self.formats[i], parts)
        if gp is None:
            return None
        gs, gb, _ = gp
        if self.hypergradient_kind == "partial" or parts.s.numel() == 0:
            return gs
        return closed_form_hypergradient(gs, parts.bases, gb, parts.s, parts.kinds)

    def hypergradients(self) -> list[torch.Tensor | None]:
        """:meth:`layer_hypergradient` of every layer."""
        return [self.layer_hypergradient(i) for i in range(len(self.layers))]

    # ------------------------------------------------------------------ lower level
    def _lower_update(
        self, X: torch.Tensor, g: torch.Tensor, kind: str, st: dict[str, Any], key: str, lr: float
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        xi = riemannian_gradient(kind, X, g)
        new: dict[str, Any] = {}
        t = int(st.get("lower_t", 0)) + 1
        if self.lower == "adam":
            b1, b2 = self.betas
            m_old = st.get("m_" + key)
            v_old = st.get("v_" + key)
            m = xi * (1 - b1) if m_old is None else m_old * b1 + xi * (1 - b1)
            sq = (xi * xi).sum()
            v = sq * (1 - b2) if v_old is None else v_old * b2 + sq * (1 - b2)
            denom = (v / (1 - b2**t)).sqrt() + self.adam_eps
            d = (m / (1 - b1**t)) / denom
            new["v_" + key] = v
        else:
            m_old = st.get("m_" + key)
            mu = self.momentum
            m = xi if (m_old is None or mu == 0) else m_old * mu + xi
            d = m
        Y = _retract(kind, X, -lr * d)
        new["m_" + key] = riemannian_gradient(kind, Y, m)  # projection transport
        return Y, new

    @torch.no_grad()
    def lower_step(self) -> None:
        """One lower-level step on the bases, from the gradients of a ``D₂`` backward pass.

        The weights ``s`` are not changed. Layers without gradients are skipped. Raises
        :class:`FloatingPointError` (``nan_policy="raise"``) or skips the whole step with
        a warning on NaN/Inf; nothing is modified in that case.
        """
        updates = []
        bad = []
        for i, layer in enumerate(self.layers):
            parts = self._parts(i)
            if parts.s.numel() == 0:
                continue
            gp = grad_parts(layer, self.formats[i], parts)
            if gp is None:
                continue
            _, gb, gsh = gp
            if not all_finite((*gb, *gsh)):
                bad.append(self.layer_names[i])
                continue
            st = self._state_of(i)
            lr = float(self.param_groups[i]["lr"])
            new_state: dict[str, Any] = {}
            new_b = []
            for k, (X, g, kind) in enumerate(zip(parts.bases, gb, parts.kinds)):
                Y, ns = self._lower_update(X, g, kind, st, f"b{k}", lr)
                new_b.append(Y)
                new_state.update(ns)
            new_sh = []
            for k, (X, g, kind) in enumerate(zip(parts.shared, gsh, parts.shared_kinds)):
                Y, ns = self._lower_update(X, g, kind, st, f"sh{k}", lr)
                new_sh.append(Y)
                new_state.update(ns)
            if not all_finite((*new_b, *new_sh)):
                bad.append(self.layer_names[i])
                continue
            new_state["lower_t"] = int(st.get("lower_t", 0)) + 1
            updates.append((i, parts._replace(bases=tuple(new_b), shared=tuple(new_sh)), new_state))
        if bad:
            self._handle_nonfinite(bad, "lower-level gradient or update")
            return
        for i, parts, ns in updates:
            write_parts(self.layers[i], self.formats[i], parts)
            self._state_of(i).update(ns)
        self._lower_t += 1

    # ------------------------------------------------------------------ upper level
    @torch.no_grad()
    def upper_step(self) -> dict[str, Any]:
        """One upper-level step from the gradients of a ``D₁`` backward pass.

        Computes the hypergradient of every layer, takes one away-step Frank–Wolfe step
        per simplex block, writes the new weights and prunes. Returns the history entry
        (also appended to :attr:`history`).
        """
        parts = [self._parts(i) for i in range(len(self.layers))]
        grads: list[torch.Tensor] = []
        bad = []
        for i, p in enumerate(parts):
            g = self.layer_hypergradient(i)
            if g is None:
                g = torch.zeros_like(p.s)
            if not bool(torch.isfinite(g).all()):
                bad.append(self.layer_names[i])
            grads.append(g)
        if bad:
            self._handle_nonfinite(bad, "hypergradient")
            return {"t": self._fw_t, "skipped": True}
        sizes = [int(p.s.numel()) for p in parts]
        new_s: list[torch.Tensor] = [p.s for p in parts]
        gap_total, kinds, gammas = 0.0, [], []
        for idx, simplex in self._blocks(sizes):
            if simplex.dim == 0:
                continue
            s_cat = torch.cat([parts[i].s.to(torch.float64).cpu() for i in idx])
            g_cat = torch.cat([grads[i].to(torch.float64).cpu() for i in idx])
            # the weights live in the factors' dtype: a weight "at a vertex" is only known to
            # that precision (a float32 ε is not the float64 ε), so barycentric weights below
            # the storage rounding count as inactive (else a drop step of length ~1e-7
            # would be repeated forever)
            store = min((parts[i].s.dtype for i in idx), key=lambda d: torch.finfo(d).bits)
            step: FWStep = away_step_fw_update(
                s_cat,
                g_cat,
                simplex,
                rule=self.rule,
                t=self._fw_t,
                gap_tol=self.gap_tol,
                active_tol=self._storage_tol(store, simplex) / self.tau,
            )
            gap_total += step.gap
            kinds.append(step.kind)
            gammas.append(step.gamma)
            for i, part in zip(idx, torch.split(step.s, [sizes[i] for i in idx])):
                new_s[i] = part.to(dtype=parts[i].s.dtype, device=parts[i].s.device)
        for i, p in enumerate(parts):
            if sizes[i]:
                write_parts(self.layers[i], self.formats[i], p._replace(s=new_s[i]))
        self._fw_t += 1
        pruned = self._prune([p._replace(s=s) for p, s in zip(parts, new_s)])
        self.fw_gap = gap_total
        entry: dict[str, Any] = {
            "t": self._fw_t,
            "gap": gap_total,
            "kind": kinds[0] if len(kinds) == 1 else kinds,
            "gamma": gammas[0] if len(gammas) == 1 else gammas,
            "ranks": [int(self._parts(i).s.numel()) for i in range(len(self.layers))],
            "pruned": pruned,
        }
        entry["components"] = sum(entry["ranks"])
        if self.record_weights:
            entry["weights"] = [self._parts(i).s.clone() for i in range(len(self.layers))]
            entry["ids"] = self.component_ids()
        self.history.append(entry)
        if self.record_history:
            self._global_step = self._fw_t
            self.rank_history.append((self._fw_t, list(entry["ranks"])))
        return entry

    def _storage_tol(self, dtype: torch.dtype, simplex: PerturbedSimplex | None = None) -> float:
        """Rounding of a weight stored in ``dtype``: ``8 (r+1) u max(1, τ + rε)``."""
        dim = simplex.dim if simplex is not None else 1
        radius = simplex.radius if simplex is not None else self.tau + self.eps
        return 8.0 * (dim + 1) * torch.finfo(dtype).eps * max(1.0, radius)

    def _prune(self, parts: list[DeboraParts]) -> int:
        """Update the at-bound streaks and prune; returns the number of pruned components."""
        total = 0
        for i, p in enumerate(parts):
            st = self._state_of(i)
            r = int(p.s.numel())
            thr = self.eps + self.prune_tol * self.tau + self._storage_tol(p.s.dtype)
            streak = st.get("streak")
            if streak is None or int(streak.numel()) != r:
                streak = torch.zeros(r, dtype=torch.long)
            at = (p.s.detach().cpu().to(torch.float64) <= thr).to(torch.long)
            streak = (streak + 1) * at
            st["streak"] = streak
            if self._fw_t < self.prune_after or r == 0:
                continue
            drop = streak >= self.prune_patience
            if not bool(drop.any()):
                continue
            keep = ~drop
            if int(keep.sum()) < self.min_rank:
                order = torch.argsort(p.s.detach().cpu(), descending=True)
                keep = torch.zeros(r, dtype=torch.bool)
                keep[order[: min(self.min_rank, r)]] = True
            if bool(keep.all()):
                continue
            keep_dev = keep.to(p.s.device)
            write_parts(self.layers[i], self.formats[i], prune_parts(p, keep_dev))
            for key, val in list(st.items()):
                if key.startswith("m_b") and isinstance(val, torch.Tensor):
                    st[key] = val[:, keep_dev].clone()
            st["streak"] = streak[keep]
            ids = st.get("ids")
            if isinstance(ids, torch.Tensor) and int(ids.numel()) == r:
                st["ids"] = ids[keep]
            total += int((~keep).sum())
        return total

    # ------------------------------------------------------------------ closure protocol
    def step(self, closure: Callable[[str], Any] | None = None) -> Any:  # type: ignore[override]
        """One outer iteration: ``lower_steps`` × (closure("lower"), lower_step) then
        closure("upper"), upper_step.

        Parameters
        ----------
        closure : callable
            ``closure(level) -> loss``: draws a batch of ``D₂`` (``level="lower"``) or
            ``D₁`` (``"upper"``), computes the loss and calls ``backward()``. Gradients
            are zeroed by this method before each call.

        Returns
        -------
        The upper-level loss returned by the closure.

        Notes
        -----
        Only the adapter factors are updated. Other trainable parameters (a classifier
        head) belong to the lower level: step their optimizer after :meth:`lower_step`
        yourself, or use :class:`DEBORATrainer` with ``extra_optimizer``.
        """
        if closure is None or not callable(closure):
            raise TypeError(
                "DEBORA.step needs a closure(level) that computes the loss on a D2 batch "
                "(level='lower') or a D1 batch (level='upper') and calls backward(); "
                "or call lower_step()/upper_step() yourself"
            )
        for _ in range(self.lower_steps):
            self.zero_grad()
            with torch.enable_grad():
                closure("lower")
            self.lower_step()
        self.zero_grad()
        with torch.enable_grad():
            loss = closure("upper")
        self.upper_step()
        return loss

    # ------------------------------------------------------------------ (de)serialisation
    def state_dict(self) -> dict[str, Any]:
        """The optimizer state plus the dEBORA counters (FW iteration, lower steps)."""
        sd = super().state_dict()
        sd["debora"] = {"fw_t": self._fw_t, "lower_t": self._lower_t, "fw_gap": self.fw_gap}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by :meth:`state_dict` (load the adapters' checkpoint first)."""
        sd = dict(state_dict)
        extra = sd.pop("debora", None)
        super().load_state_dict(sd)
        if extra is not None:
            self._fw_t = int(extra.get("fw_t", 0))
            self._lower_t = int(extra.get("lower_t", 0))
            self.fw_gap = float(extra.get("fw_gap", float("nan")))


# --------------------------------------------------------------------------- data streams
def split_bilevel(
    data: Any, fraction: float = 0.5, *, generator: torch.Generator | None = None
) -> tuple[Any, Any]:
    """Split a data set at random into the upper-level ``D₁`` and lower-level ``D₂`` parts.

    Parameters
    ----------
    data : tuple of tensors or Dataset
        ``(X, y, …)`` tensors sharing the first dimension (returned as tuples), or a
        :class:`torch.utils.data.Dataset` with ``__len__`` (returned as ``Subset`` s).
    fraction : float
        Share of ``D₁`` in ``(0, 1)`` (the paper splits in halves).
    generator : torch.Generator, optional
        Seeds the permutation.

    Returns
    -------
    (d1, d2)

    Raises
    ------
    ValueError
        ``data`` is empty, or ``d1``/``d2`` would be empty (the message names which),
        or ``fraction`` is not in ``(0, 1)``.
    """
    f = _real("fraction", fraction)
    if not (0.0 < f < 1.0):
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        n = int(data[0].shape[0])
        if any(int(t.shape[0]) != n for t in data):
            raise ValueError("the tensors in data must share their first dimension")
    elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        n = len(data)
    else:
        raise TypeError(
            f"data must be a tuple of tensors or a sized Dataset, got {type(data).__name__}"
        )
    if n == 0:
        raise ValueError("data is empty: nothing to split into D1 and D2")
    n1 = round(f * n)
    if n1 == 0:
        raise ValueError(f"d1 (upper-level data D1) would be empty: fraction={f} of {n} samples")
    if n1 == n:
        raise ValueError(f"d2 (lower-level data D2) would be empty: fraction={f} of {n} samples")
    perm = torch.randperm(n, generator=generator)
    i1, i2 = perm[:n1], perm[n1:]
    if isinstance(data, (tuple, list)):
        return tuple(t[i1.to(t.device)] for t in data), tuple(t[i2.to(t.device)] for t in data)
    from torch.utils.data import Subset

    return Subset(data, i1.tolist()), Subset(data, i2.tolist())


class _Stream:
    """Cycles over a re-iterable (DataLoader, list, …); clear errors when it is empty."""

    def __init__(self, name: str, what: str, data: Any) -> None:
        if data is None:
            raise ValueError(f"{name} ({what}) must be given, got None")
        if hasattr(data, "__len__"):
            try:
                n = len(data)
            except TypeError:
                n = None
            if n == 0:
                raise ValueError(f"{name} ({what}) is empty: it yields no batch")
        if not hasattr(data, "__iter__"):
            raise TypeError(f"{name} must be an iterable of batches, got {type(data).__name__}")
        self.name, self.what, self.data = name, what, data
        self._it: Iterator[Any] | None = None

    def next(self) -> Any:
        if self._it is None:
            self._it = iter(self.data)
        try:
            return next(self._it)
        except StopIteration:
            pass
        it = iter(self.data)
        if it is self._it:
            raise ValueError(
                f"{self.name} ({self.what}) is exhausted and cannot be restarted (it is an "
                "iterator); pass a re-iterable such as a DataLoader or a list"
            ) from None
        self._it = it
        try:
            return next(self._it)
        except StopIteration:
            raise ValueError(f"{self.name} ({self.what}) is empty: it yields no batch") from None


class DEBORATrainer:
    r"""Runs dEBORA on two data streams: ``D₂`` for the lower level, ``D₁`` for the upper.

    Parameters
    ----------
    optimizer : DEBORA
    loss_fn : callable
        ``loss_fn(batch) -> scalar loss`` (it runs the model; no ``backward``).
    d1, d2 : iterable
        Re-iterables of batches (DataLoaders, lists) for the upper and lower level; they
        are cycled. An empty stream raises :class:`ValueError` naming ``d1`` or ``d2``
        (at construction for sized ones, else at the first draw).
    extra_optimizer : torch.optim.Optimizer, optional
        Steps the other trainable parameters (e.g. a classifier head) with the
        lower-level gradients (they belong to the lower level).
    lower_steps : int, optional
        Lower steps per outer iteration (default ``optimizer.lower_steps``).

    Examples
    --------
    >>> d1, d2 = split_bilevel((X, y), 0.5)                       # doctest: +SKIP
    >>> trainer = DEBORATrainer(opt, lambda b: F.cross_entropy(model(b[0]), b[1]),
    ...                         batches(d1), batches(d2))          # doctest: +SKIP
    >>> trainer.fit(200)                                           # doctest: +SKIP
    """

    def __init__(
        self,
        optimizer: DEBORA,
        loss_fn: Callable[[Any], torch.Tensor],
        d1: Any,
        d2: Any,
        *,
        extra_optimizer: torch.optim.Optimizer | None = None,
        lower_steps: int | None = None,
    ) -> None:
        if not isinstance(optimizer, DEBORA):
            raise TypeError(f"optimizer must be a DEBORA, got {type(optimizer).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable: loss_fn(batch) -> loss")
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.upper = _Stream("d1", "upper-level data D1", d1)
        self.lower = _Stream("d2", "lower-level data D2", d2)
        self.extra_optimizer = extra_optimizer
        self.lower_steps = (
            optimizer.lower_steps
            if lower_steps is None
            else _nonneg_int("lower_steps", lower_steps, 1)
        )

    def _loss(self, batch: Any) -> torch.Tensor:
        loss = self.loss_fn(batch)
        if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
            raise RuntimeError(
                "loss_fn(batch) must return a tensor that depends on trainable parameters; "
                "got one without grad (were all adapters pruned to rank 0?)"
            )
        return loss

    def step(self) -> dict[str, Any]:
        """One outer iteration; returns the losses and the upper-step history entry."""
        opt = self.optimizer
        loss2 = float("nan")
        for _ in range(self.lower_steps):
            batch = self.lower.next()
            opt.zero_grad()
            if self.extra_optimizer is not None:
                self.extra_optimizer.zero_grad()
            loss = self._loss(batch)
            loss.backward()
            opt.lower_step()
            if self.extra_optimizer is not None:
                self.extra_optimizer.step()
            loss2 = float(loss.detach())
        batch = self.upper.next()
        opt.zero_grad()
        if self.extra_optimizer is not None:
            self.extra_optimizer.zero_grad()
        loss = self._loss(batch)
        loss.backward()
        entry = opt.upper_step()
        if self.extra_optimizer is not None:
            self.extra_optimizer.zero_grad()
        return {"loss_lower": loss2, "loss_upper": float(loss.detach()), **entry}

    def fit(self, steps: int, callback: Callable[[dict[str, Any]], None] | None = None) -> list:
        """Run ``steps`` outer iterations; returns the list of :meth:`step` results."""
        n = _nonneg_int("steps", steps)
        out = []
        for _ in range(n):
            rec = self.step()
            out.append(rec)
            if callback is not None:
                callback(rec)
        return out
