r"""DLRT: dynamical low-rank training from scratch, rank-adaptive (NeurIPS 2022 and follow-ups).

Every low-rank layer ``W = U S Vᵀ`` (:mod:`manifold_lowrank.nn`) is trained on the
manifold of low-rank matrices by a rank-adaptive *basis-update & Galerkin* integrator
(Ceruti–Kusch–Lubich), with a standard optimizer ("substep optimizer": SGD, heavy-ball
momentum or Adam) acting on the small coefficient matrix ``S`` only, and its state
carried through every change of basis and rank by explicit formulas.

Default schedule: amortised one-pass augmented BUG (``integrator="augmented_bug"``)
-----------------------------------------------------------------------------------
The steps form cycles of ``k = augment_every`` optimizer steps, each with one ordinary
forward/backward pass (a plain ``step()``):

1. **Augment step** (first step of a cycle). The layer has recorded
   ``(GV, UᵀGV, GᵀU)`` of ``G = ∂L/∂W`` in the backward pass (never ``G`` itself, never
   ``S⁻¹``). The bases are augmented with the new gradient directions,
   ``Ũ = orth((I − UUᵀ) GV)``, ``Ṽ = orth((I − VVᵀ) GᵀU)`` (classical Gram–Schmidt
   twice, :func:`~manifold_lowrank.linalg.augment_basis` ``method="cgs2"``: only the new
   directions are orthogonalised), ``Û = [U Ũ]``, ``V̂ = [V Ṽ]`` with ``k_new =
   min(r, max_rank − r, m − r, n − r)`` columns each (the first ``k_new`` columns of
   ``GV``, ``GᵀU`` if ``k_new < r``). The core is padded, ``Ŝ₀ = [[S, 0], [0, 0]]``, so
   ``Û Ŝ₀ V̂ᵀ = W`` exactly, and the substep optimizer takes one step on ``Ŝ`` with the
   gradient

   .. math::  \hat G = \begin{bmatrix} U^\top G V & (G^\top U)^\top \tilde V \\
              \tilde U^\top G V & 0 \end{bmatrix}
              \;=\; \hat U^\top P_{T}(G)\, \hat V,

   i.e. ``ÛᵀGV̂`` with the one block that a single backward pass cannot give
   (``ŨᵀGṼ``) set to zero: with plain SGD this is exactly
   :func:`~manifold_lowrank.integrators.parallel` without truncation,
   ``Û Ŝ₁ V̂ᵀ = W − h P_T(G)``.
2. **Coefficient steps** (the next ``k − 1`` steps). ``U``, ``V`` are held; the layer
   computes only ``∂L/∂S = ÛᵀGV̂`` (the exact Galerkin gradient at the augmented bases);
   the bases' ordinary gradients and ``GV``, ``GᵀU`` are *not* computed (DLRT sets
   ``requires_grad=False`` on the bases and switches recording off), so these steps cost
   a factored forward/backward plus ``O(r²)`` per layer.
3. **Truncation** right after the last coefficient step of the cycle:
   ``Ŝ = P diag(σ) Qᵀ``, ``r₁`` by the rank rule (``rtol = τ``: the smallest ``r₁`` with
   ``‖σ_{r₁+1:}‖₂ ≤ τ ‖σ‖₂``, clamped to ``[min_rank, max_rank]``; ``tau=None``: the rank
   before the augmentation, i.e. fixed-rank DLRT), ``U ← Û P₁``, ``V ← V̂ Q₁``,
   ``S ← diag(σ_{1:r₁})`` (:func:`~manifold_lowrank.integrators.truncate`), followed by
   a sign-fixed QR of ``U₁``, ``V₁`` whose ``R`` factors are folded into ``S`` (this
   removes the ``O(ε)`` orthonormality drift of ``Û P₁`` that would otherwise add up
   over thousands of truncations). The factors are reallocated at the new size (memory
   and compute really shrink; augmentation really allocates).

``k = 1`` is the rank-adaptive *parallel* integrator (``integrator="parallel"``): every
step augments, takes the coefficient step and truncates (GeoLoRA's step, with the
substep optimizer on ``Ŝ``). The original three-pass algorithm is
``integrator="bug"`` with :meth:`DLRT.step` ``(closure)``: a K/L pass at ``W`` (one
backward gives both ``∇_K = GV`` and ``∇_L = GᵀU``; ``separate_kl_passes=True``
evaluates them in two passes like the original code), augmentation, an S pass at the
augmented bases (exact ``ÛᵀGV̂``), one substep on ``Ŝ``, truncation — every step.

Transport of the substep optimizer's state
------------------------------------------
Core state ``Z`` (SGD momentum buffer, Adam's first moment) represents ``U Z Vᵀ`` and
is carried by :func:`~manifold_lowrank.optim.lowrank_base.transport_core`,
``Z ← A Z Bᵀ`` with ``A = U₊ᵀ U``, ``B = V₊ᵀ V``: at augmentation ``A = B = [I; 0]``
(zero padding, exact), at truncation ``A = R_u P₁ᵀ``, ``B = R_v Q₁ᵀ`` (the same map as
the coefficients; ``R = I + O(ε)``). Adam's element-wise second
moment ``v`` is not a coefficient matrix and cannot be rotated exactly; we transport its
square root like a coefficient matrix, ``v ← (A √v Bᵀ)^{∘2}`` (the RobustDLRT rule). It
is exact for augmentations and whenever ``A``, ``B`` are signed permutations (coordinates
only reordered or flipped), keeps ``v ≥ 0``, and preserves the scale of ``v`` in
general. Tucker layers use ``Z ← Z ×_k (U_{k,+}ᵀ U_k)`` and the same √v rule. Adam's
step counter (bias correction) is per layer and is kept, so entries of new directions
(zero moments) take a first step of ``≈ lr·(1−β₁)/√(1−β₂)`` (≈ 3.2 lr with the default
betas) in the sign of their gradient, as in RobustDLRT.

Biases and dense layers
-----------------------
Biases, dense layers (e.g. the classifier) — every trainable parameter of the given
model that is not a factor of a low-rank layer — are trained by the same substep
optimizer with its standard element-wise update (``train_dense=True``), or left to a
second optimizer of the user's choice (``train_dense=False``). Decoupled weight decay
``x ← (1 − lr·wd) x`` acts on ``S``/cores and on the dense parameters, never on the
orthonormal bases.

Fine-tuning, history, checkpoints
---------------------------------
Calling :meth:`DLRT.start_fine_tuning` truncates and then freezes the bases: the S-only
phase of the paper (every step is a coefficient step). The ranks after every step (inside
a cycle they are the augmented ranks) are kept in :attr:`rank_history`, those after every
truncation (the compressed ranks: plot these) in :attr:`truncation_history`. The methods
:meth:`state_dict` / :meth:`load_state_dict` round-trip mid-cycle; load the model's
``state_dict`` first (the layers resize themselves), then the optimizer's.

Cost per layer (``m×n``, rank ``r``): augment ``O((m + n) r²)`` (two ``m×r``/``n×r``
QRs); coefficient step ``O(r²)``; truncation one ``2r×2r`` SVD plus
``O((m + n) r²)``. No ``m×n`` matrix is ever formed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from manifold_lowrank.integrators import (
    reorthonormalize,
    reorthonormalize_tucker,
    truncate,
    tucker_parallel,
    tucker_truncate,
)
from manifold_lowrank.linalg import RankRule, all_finite, augment_basis
from manifold_lowrank.manifolds.types import (
    FixedRankPoint,
    ProjectedGradients,
    TuckerPoint,
    TuckerProjectedGradients,
)
from manifold_lowrank.nn.base import LowRankModule, TuckerModule
from manifold_lowrank.optim.lowrank_base import (
    BoundedHistory,
    LowRankOptimizer,
    _flatten,
    check_history_maxlen,
    find_lowrank_layers,
    layer_rank,
    transport_core,
    transport_core_tucker,
)

__all__ = ["DLRT", "transport_second_moment", "transport_second_moment_tucker"]

INTEGRATORS = ("augmented_bug", "parallel", "bug")
SUBSTEP_OPTIMIZERS = ("sgd", "momentum", "adam")
DEFAULT_AUGMENT_EVERY = 10

# step kinds reported by DLRT.last_step_kind
KIND_AUGMENT = "augment"
KIND_COEFFICIENT = "coefficient"
KIND_TRUNCATE = "coefficient+truncate"
KIND_PARALLEL = "augment+truncate"
KIND_CLOSURE = "closure"
KIND_FINE_TUNE = "fine_tune"


# --------------------------------------------------------------------------- transports
def transport_second_moment(v: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    r"""``(A √v Bᵀ)^{∘2}``: carry an element-wise second moment ``v ≥ 0`` to new bases.

    ``A = U₊ᵀ U``, ``B = V₊ᵀ V`` as in
    :func:`~manifold_lowrank.optim.lowrank_base.transport_core`. Exact for padding
    (``A = B = [I; 0]``) and for signed permutations; see the module docstring.
    Cost ``O(r₊ r²)``.
    """
    return transport_core(v.clamp_min(0.0).sqrt(), A, B).square()


def transport_second_moment_tucker(v: torch.Tensor, mats: Iterable[torch.Tensor]) -> torch.Tensor:
    r"""``(√v ×₁ A₁ … ×_d A_d)^{∘2}``: the Tucker analogue of :func:`transport_second_moment`."""
    return transport_core_tucker(v.clamp_min(0.0).sqrt(), mats).square()


def _mode_dots(t: torch.Tensor, mats: list[torch.Tensor | None], skip: int | None) -> torch.Tensor:
    """``t ×_k mats[k]`` for every ``k ≠ skip`` with a matrix (tiny torch-only helper)."""
    for k, a in enumerate(mats):
        if a is None or k == skip:
            continue
        t = torch.tensordot(a, t, dims=([1], [k])).movedim(0, k)
    return t


def _reorthonormalize(
    point: FixedRankPoint, M: torch.Tensor, N: torch.Tensor
) -> tuple[FixedRankPoint, torch.Tensor, torch.Tensor]:
    """Remove the drift of ``U₁ = Û P₁`` (:func:`~manifold_lowrank.integrators.reorthonormalize`);
    the transitions become ``A = R_u M``, ``B = R_v N`` (the same map as the coefficients)."""
    new, ru, rv = reorthonormalize(point)
    return new, ru @ M, rv @ N


def _reorthonormalize_tucker(
    point: TuckerPoint, transitions: tuple[torch.Tensor, ...], full_modes: tuple[int, ...]
) -> tuple[TuckerPoint, tuple[torch.Tensor, ...]]:
    """Tucker analogue of :func:`_reorthonormalize` for the dynamic modes."""
    new, rs = reorthonormalize_tucker(point, full_modes)
    trans = tuple(t if r is None else r @ t for r, t in zip(rs, transitions))
    return new, trans


def _with_coefficients(layer: nn.Module, coef: torch.Tensor) -> Any:
    """The layer's point with ``S`` (or the Tucker core) replaced by ``coef``."""
    point = layer.point()  # type: ignore[operator]
    if isinstance(layer, TuckerModule):
        return point._replace(core=coef)
    return point._replace(S=coef)


def _merge_kl(a: Any, b: Any) -> Any:
    """``GV`` of the K pass and ``GᵀU`` of the L pass (separate passes, same point)."""
    if a is None or b is None:
        return None
    if isinstance(a, ProjectedGradients):
        return ProjectedGradients(a.GV, a.UtGV, b.GtU)
    return a


# --------------------------------------------------------------------------- checks
def _check_float(name: str, value: object, lo: float, hi: float, *, hi_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    ok = math.isfinite(v) and v >= lo and (v < hi if hi_open else v <= hi)
    if not ok:
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in [{lo}, {hi}{rb}, got {value!r}")
    return v


def _check_int(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _validate_group(g: Mapping[str, Any], where: str = "") -> None:
    suffix = f" ({where})" if where else ""
    try:
        _check_float("lr", g["lr"], 0.0, math.inf, hi_open=True)
        if g["tau"] is not None:
            _check_float("tau", g["tau"], 0.0, 1.0, hi_open=True)
        _check_int("min_rank", g["min_rank"], 1)
        if g["max_rank"] is not None:
            _check_int("max_rank", g["max_rank"], 1)
            if g["max_rank"] < g["min_rank"]:
                raise ValueError(
                    f"max_rank ({g['max_rank']}) must be >= min_rank ({g['min_rank']})"
                )
        _check_float("momentum", g["momentum"], 0.0, 1.0, hi_open=True)
        betas = g["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        _check_float("betas[0]", betas[0], 0.0, 1.0, hi_open=True)
        _check_float("betas[1]", betas[1], 0.0, 1.0, hi_open=True)
        _check_float("eps", g["eps"], 0.0, math.inf, hi_open=True)
        _check_float("weight_decay", g["weight_decay"], 0.0, math.inf, hi_open=True)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{e}{suffix}") from None


def _is_lowrank(obj: object) -> bool:
    return isinstance(obj, (LowRankModule, TuckerModule))


def _factor_params(layer: nn.Module) -> list[nn.Parameter]:
    if isinstance(layer, TuckerModule):
        core, fs = layer.tucker_parameters()
        return [core, *fs]
    return list(layer.factors())  # type: ignore[operator]


# --------------------------------------------------------------------------- optimizer
class DLRT(LowRankOptimizer):
    r"""Rank-adaptive dynamical low-rank training (DLRT) of low-rank layers.

    Usage (one ordinary forward/backward per step)::

        model = nn.Sequential(LowRankLinear(784, 500, rank=64), nn.ReLU(), ...,
                              nn.Linear(500, 10))
        opt = DLRT(model, lr=1e-3, tau=0.1)       # also trains biases and the head
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        opt.truncate()                              # end mid-cycle: compress now
        print(opt.ranks(), opt.truncation_history[-1])

    The original re-evaluating variant (``integrator="bug"``: two passes per step, three
    with ``separate_kl_passes=True``), LBFGS-style::

        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)

    Parameters
    ----------
    params : nn.Module or iterable
        A model: every low-rank layer inside (:func:`find_lowrank_layers`) is trained by
        DLRT and, with ``train_dense``, every other trainable parameter by the standard
        update. Or an iterable of low-rank layers, ``(name, layer)`` pairs, group dicts
        ``{"layers": [...], **options}`` and dense groups ``{"params": [...], **options}``.
        Bare tensors/parameters and non-low-rank modules are rejected (a parameter does
        not identify its layer).
    lr : float
        Learning rate of the substep optimizer (``≥ 0``). An Adam step on the ``2r×2r``
        core moves ``W`` by ``O(lr · r)`` in Frobenius norm, a dense Adam step by
        ``O(lr √(mn))``: early training is slower at equal ``lr`` (on MNIST-5k a 3× larger
        ``lr`` than dense Adam's 1e-3 closed the gap within a few epochs; over 20 epochs
        both reached dense accuracy).
    tau : float or None
        Relative truncation tolerance ``τ ∈ [0, 1)``; ``None``: fixed rank (each layer is
        truncated back to its rank before the augmentation).
    integrator : {"augmented_bug", "parallel", "bug"}
        See the module docstring. ``"parallel"`` is ``"augmented_bug"`` with
        ``augment_every=1``; ``"bug"`` needs :meth:`step` ``(closure)``.
    augment_every : int, optional
        Cycle length ``k`` of ``"augmented_bug"`` (default 10): one augment step,
        ``k − 1`` coefficient steps, truncation after the last. Measured on MNIST-5k
        (784-500-500-500-10, Adam 1e-3, 20 epochs): ``k = 10`` matched the dense
        accuracy at 85–88 % compression (``k = 1`` lost 1–4 points: Adam's state is
        rotated by every truncation) with a mean step of ≈ 0.42× the dense step at
        rank 32 (``k = 1``: ≈ 0.9×); see ``benchmarks/dlrt_mnist.py``.
    substep_optimizer : {"sgd", "momentum", "adam"}
        Update of ``S`` (and of the dense parameters): ``S ← S − lr g``; heavy ball
        ``b ← μ b + g``, ``S ← S − lr b``; Adam (bias-corrected, as :class:`torch.optim.Adam`).
    momentum : float
        ``μ ∈ [0, 1)`` of ``"momentum"`` (default 0.9).
    betas, eps : tuple of float, float
        Adam's ``(β₁, β₂)`` and ``ε``.
    weight_decay : float
        Decoupled decay ``x ← (1 − lr·wd) x`` of ``S`` and dense parameters (never ``U``,
        ``V``).
    min_rank : int
        Smallest rank after a truncation (``≥ 1``; must not exceed any layer's
        ``max_rank``).
    max_rank : int, optional
        Largest rank after a truncation, clipped to each layer's ``max_rank`` (default:
        the layer's ``max_rank``). The *augmented* rank is capped by the layer's
        ``max_rank``: give layers ``max_rank ≥ 2 ×`` the rank you want DLRT to reach, or a
        layer at its cap can no longer change its basis.
    train_dense : bool
        Train non-low-rank parameters too (see the module docstring).
    separate_kl_passes : bool
        ``integrator="bug"`` only: evaluate the K and L gradients in two passes, like the
        original code (three passes per step; same result in exact arithmetic).
    nan_policy : {"skip", "raise"}
        On NaN/Inf gradients or updates nothing is modified and the step is skipped with
        a warning (the cycle does not advance) or :class:`FloatingPointError` is raised.
    record_history : bool
        Keep :attr:`rank_history` and :attr:`truncation_history`.
    rank_history_maxlen : int or None
        Keep only the last ``rank_history_maxlen`` entries of each of the two histories
        (constant memory over any number of steps); ``None`` (default) keeps all: one
        entry per step in :attr:`rank_history` (≈ 0.17 KiB/step for three layers).

    Attributes
    ----------
    last_step_kind : str or None
        ``"augment"``, ``"coefficient"``, ``"coefficient+truncate"``,
        ``"augment+truncate"`` (parallel), ``"closure"`` or ``"fine_tune"``.
    truncation_history : BoundedHistory of (int, list)
        ``(step, ranks)`` after every truncation.
    phase : str
        ``"train"`` or ``"fine_tune"`` (S only, after :meth:`start_fine_tuning`).

    Notes
    -----
    DLRT owns the layers' training mode: it sets ``requires_grad=False`` on the bases
    (their ordinary gradients are never used) and switches
    ``record_projected_grads`` on exactly before the backward passes whose ``GV``,
    ``GᵀU`` it needs. Gradient clipping of ``model.parameters()`` acts on ``S`` and the
    dense parameters, not on the recorded ``GV``, ``GᵀU``.
    """

    def __init__(
        self,
        params: nn.Module | Iterable[Any],
        lr: float = 1e-3,
        *,
        tau: float | None = 0.1,
        integrator: str = "augmented_bug",
        augment_every: int | None = None,
        substep_optimizer: str = "adam",
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        min_rank: int = 1,
        max_rank: int | None = None,
        train_dense: bool = True,
        separate_kl_passes: bool = False,
        nan_policy: str = "skip",
        record_history: bool = True,
        rank_history_maxlen: int | None = None,
    ) -> None:
        if integrator not in INTEGRATORS:
            raise ValueError(f"integrator must be one of {INTEGRATORS}, got {integrator!r}")
        if substep_optimizer not in SUBSTEP_OPTIMIZERS:
            raise ValueError(
                f"substep_optimizer must be one of {SUBSTEP_OPTIMIZERS}, got {substep_optimizer!r}"
            )
        if integrator == "parallel":
            if augment_every not in (None, 1):
                raise ValueError(
                    f"augment_every must be 1 (or None) with integrator='parallel', "
                    f"got {augment_every!r}"
                )
            k = 1
        elif integrator == "bug":
            if augment_every not in (None, 1):
                raise ValueError(
                    "augment_every applies to the one-pass integrators; integrator='bug' "
                    f"augments and truncates in every step, got augment_every={augment_every!r}"
                )
            k = 1
        else:
            k = DEFAULT_AUGMENT_EVERY if augment_every is None else augment_every
            k = _check_int("augment_every", k, 1)
        defaults = {
            "lr": lr,
            "tau": tau,
            "momentum": momentum,
            "betas": tuple(betas) if isinstance(betas, (tuple, list)) else betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "min_rank": min_rank,
            "max_rank": max_rank,
        }
        _validate_group(defaults)
        layer_groups, dense_groups = self._split_params(params, bool(train_dense))
        self.integrator = integrator
        self.augment_every = k
        self.substep_optimizer = substep_optimizer
        self.separate_kl_passes = bool(separate_kl_passes)
        self.train_dense = bool(train_dense)
        self.phase = "train"
        self.last_step_kind: str | None = None
        self.truncation_history = BoundedHistory(maxlen=check_history_maxlen(rank_history_maxlen))
        self._pos = 0
        super().__init__(
            layer_groups,
            defaults,
            nan_policy=nan_policy,
            record_history=record_history,
            rank_history_maxlen=rank_history_maxlen,
        )
        self._n_layer_groups = len(self.layers)
        # the Parameter objects never change (rank changes replace .data): cache them
        self._bases = {id(la): list(la.basis_parameters()) for la in self.layers}  # type: ignore[operator]
        self._coefs = {id(la): la.coefficient_parameters()[0] for la in self.layers}  # type: ignore[operator]
        for g in dense_groups:
            self.add_param_group(g)
        for i, g in enumerate(self.param_groups):
            where = f"layer {self.layer_names[i]!r}" if i < self._n_layer_groups else "dense group"
            _validate_group(g, where)
            if i < self._n_layer_groups:
                self._check_layer_caps(self.layers[i], g, self.layer_names[i])
        self._configure_layers()

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _split_params(
        params: Any, train_dense: bool
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Layer groups for the base class and dense parameter groups."""
        if isinstance(params, torch.Tensor):
            raise TypeError(
                "params must be a model or low-rank layers, got a single tensor; DLRT "
                "trains layers (pass the model: DLRT(model, ...))"
            )
        if isinstance(params, nn.Module) and not _is_lowrank(params):
            named = find_lowrank_layers(params)
            if not named:
                raise ValueError(
                    f"params: the model ({type(params).__name__}) contains no low-rank layer "
                    "(LowRankLinear/LowRankConv2d/TuckerConv2d of manifold_lowrank.nn); "
                    "convert it first, e.g. with manifold_lowrank.nn.convert_to_low_rank"
                )
            factor_ids = {id(p) for _, la in named for p in _factor_params(la)}
            dense = (
                [p for p in params.parameters() if p.requires_grad and id(p) not in factor_ids]
                if train_dense
                else []
            )
            groups = [{"layers": named}]
            return groups, ([{"params": dense}] if dense else [])
        items = [params] if _is_lowrank(params) or isinstance(params, Mapping) else params
        try:
            items = list(items)
        except TypeError:
            raise TypeError(
                f"params must be an nn.Module or an iterable, got {type(params).__name__}"
            ) from None
        layer_groups: list[dict[str, Any]] = []
        dense_groups: list[dict[str, Any]] = []
        loose: list[tuple[str, nn.Module]] = []
        for i, item in enumerate(items):
            if isinstance(item, torch.Tensor):
                raise TypeError(
                    f"params[{i}] is a {type(item).__name__} of shape {tuple(item.shape)}, not "
                    "a low-rank layer: DLRT needs the layers (a parameter does not identify its "
                    "layer). Pass the model, DLRT(model, ...), or its low-rank layers; put "
                    "other parameters in a {'params': [...]} group"
                )
            if isinstance(item, Mapping):
                if "layers" in item and "params" in item:
                    raise ValueError(f"params[{i}]: a group has 'layers' or 'params', not both")
                if "params" in item:
                    ps = item["params"]
                    ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
                    for p in ps:
                        if not isinstance(p, torch.Tensor):
                            raise TypeError(
                                f"params[{i}]['params'] must hold tensors, got {type(p).__name__}"
                            )
                    dense_groups.append({**item, "params": ps})
                    continue
                if "layers" not in item:
                    raise ValueError(f"params[{i}]: a group dict needs 'layers' or 'params'")
                sub = item["layers"]
                sub_items = [sub] if _is_lowrank(sub) else list(sub)
                named = []
                for j, s in enumerate(sub_items):
                    name, layer = s if isinstance(s, tuple) and len(s) == 2 else (f"{i}.{j}", s)
                    DLRT._check_is_layer(layer, f"params[{i}]['layers'][{j}]")
                    named.append((str(name), layer))
                layer_groups.append({**item, "layers": named})
                if train_dense:
                    dense_groups.extend(DLRT._own_dense(la) for _, la in named)
                continue
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                name, layer = item
            else:
                name, layer = str(i), item
            DLRT._check_is_layer(layer, f"params[{i}]")
            loose.append((name, layer))
            if train_dense:
                dense_groups.append(DLRT._own_dense(layer))
        if loose:
            layer_groups.insert(0, {"layers": loose})
        if not layer_groups:
            raise ValueError(
                "params contains no low-rank layer (LowRankLinear/LowRankConv2d/TuckerConv2d of "
                "manifold_lowrank.nn)"
            )
        dense_groups = [g for g in dense_groups if g["params"]]
        return layer_groups, dense_groups

    @staticmethod
    def _check_is_layer(layer: object, where: str) -> None:
        if not _is_lowrank(layer):
            raise TypeError(
                f"{where} is a {type(layer).__name__}, not a low-rank layer "
                "(LowRankModule/TuckerModule of manifold_lowrank.nn); convert it with "
                "manifold_lowrank.nn.convert_to_low_rank, or train it by a {'params': [...]} "
                "group"
            )

    @staticmethod
    def _own_dense(layer: nn.Module) -> dict[str, Any]:
        ids = {id(p) for p in _factor_params(layer)}
        return {"params": [p for p in layer.parameters() if p.requires_grad and id(p) not in ids]}

    @staticmethod
    def _check_layer_caps(layer: nn.Module, group: Mapping[str, Any], name: str) -> None:
        caps = (
            [layer.max_ranks[k] for k in range(len(layer.dims)) if k not in layer.full_modes]
            if isinstance(layer, TuckerModule)
            else [layer.max_rank]  # type: ignore[attr-defined]
        )
        if group["min_rank"] > min(caps):
            raise ValueError(
                f"min_rank ({group['min_rank']}) exceeds the max_rank {min(caps)} of layer "
                f"{name!r} (the rank cannot exceed the layer's dimensions/cap)"
            )

    # ------------------------------------------------------------------ public helpers
    @property
    def dense_param_groups(self) -> list[dict[str, Any]]:
        """The parameter groups of non-low-rank parameters (standard update)."""
        return self.param_groups[self._n_layer_groups :]

    def cycle_position(self) -> int:
        """Steps taken in the current cycle (``0``: the next step augments)."""
        return self._pos

    @torch.no_grad()
    def truncate(self) -> None:
        """Truncate every augmented layer now (rank rule of its group) and restart the cycle.

        Use it before evaluating or counting parameters when training stopped mid-cycle.
        Transports the optimizer state; cost one ``2r×2r`` SVD per layer.
        """
        updates = []
        for i, layer in enumerate(self.layers):
            st = self._state_of(i)
            if not st.get("augmented", False):
                continue
            point, new_state = self._truncate_layer(layer, self.param_groups[i], dict(st))
            updates.append((i, point, new_state))
        for i, point, new_state in updates:
            self._commit_layer(i, point, new_state)
        if updates and self.record_history:
            self.truncation_history.append((self._global_step, self._ranks_list()))
        self._pos = 0
        self._configure_layers()

    def start_fine_tuning(self) -> None:
        """Enter the S-only fine-tuning phase: truncate now, then freeze ``U`` and ``V``.

        Every later step is a coefficient step on ``S`` at the current ranks (no
        augmentation, no truncation, no recorded projections).
        """
        self.truncate()
        self.phase = "fine_tune"
        self._configure_layers()

    # ------------------------------------------------------------------ configuration
    def _coef(self, layer: nn.Module) -> nn.Parameter:
        return self._coefs[id(layer)]

    def _ranks_list(self) -> list[Any]:
        return [layer_rank(la) for la in self.layers]

    def _next_records(self) -> bool:
        if self.phase != "train":
            return False
        return self.integrator == "bug" or self._pos == 0

    def _configure_layers(self, record: bool | None = None) -> None:
        rec = self._next_records() if record is None else record
        for layer in self.layers:
            for p in self._bases[id(layer)]:
                if p.requires_grad:
                    p.requires_grad_(False)
            layer.record_projected_grads = rec

    # ------------------------------------------------------------------ rank rules
    def _cap(self, group: Mapping[str, Any], layer_cap: int) -> int:
        cap = layer_cap if group["max_rank"] is None else min(int(group["max_rank"]), layer_cap)
        return max(cap, 1)

    def _matrix_rule(self, layer: nn.Module, group: Mapping[str, Any], state: Mapping) -> RankRule:
        cap = self._cap(group, int(layer.max_rank))  # type: ignore[attr-defined]
        if group["tau"] is None:
            return RankRule(rank=min(int(state.get("rank_before", cap)), cap), min_rank=0)
        return RankRule(
            rtol=float(group["tau"]), min_rank=min(int(group["min_rank"]), cap), max_rank=cap
        )

    def _tucker_rules(
        self, layer: TuckerModule, group: Mapping[str, Any], state: Mapping
    ) -> list[RankRule | None]:
        rules: list[RankRule | None] = []
        before = state.get("rank_before")
        for k in range(len(layer.dims)):
            if k in layer.full_modes:
                rules.append(None)
                continue
            cap = self._cap(group, int(layer.max_ranks[k]))
            if group["tau"] is None:
                r = cap if before is None else min(int(before[k]), cap)
                rules.append(RankRule(rank=r, min_rank=0))
            else:
                rules.append(
                    RankRule(
                        rtol=float(group["tau"]),
                        min_rank=min(int(group["min_rank"]), cap),
                        max_rank=cap,
                    )
                )
        return rules

    # ------------------------------------------------------------------ substep optimizer
    def _substep(
        self, group: Mapping[str, Any], state: Mapping[str, Any], x: torch.Tensor, g: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """One substep-optimizer update of ``x`` with gradient ``g`` (pure; new tensors)."""
        return self._substep_many([(group, state, x, g)])[0]

    def _substep_many(
        self, items: list[tuple[Mapping[str, Any], Mapping[str, Any], torch.Tensor, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        """Substep updates of many tensors ``(group, state, x, g)``; pure (new tensors).

        Tensors with equal hyperparameters and step count are updated together by
        multi-tensor (``torch._foreach_*``) kernels, as torch's own optimizers do::

            sgd:       x ← x − lr g
            momentum:  b ← μ b + g (b₀ = g);  x ← x − lr b
            adam:      m ← β₁ m + (1−β₁) g;  v ← β₂ v + (1−β₂) g²;
                       x ← x − lr/(1−β₁ᵗ) · m / (√(v/(1−β₂ᵗ)) + ε)

        preceded by the decoupled decay ``x ← (1 − lr·wd) x``.
        """
        out: list[Any] = [None] * len(items)
        buckets: dict[tuple[Any, ...], list[int]] = {}
        for i, (group, state, x, _) in enumerate(items):
            key = (
                float(group["lr"]),
                float(group["weight_decay"]),
                float(group["momentum"]),
                tuple(float(b) for b in group["betas"]),
                float(group["eps"]),
                int(state.get("step", 0)),
                "exp_avg" in state or "momentum_buffer" in state,
                x.dtype,
                x.device,
            )
            buckets.setdefault(key, []).append(i)
        kind = self.substep_optimizer
        for key, idx in buckets.items():
            lr, wd, mu, (b1, b2), eps, t0, has_state = key[:7]
            t = t0 + 1
            xs = [items[i][2] for i in idx]
            gs = [items[i][3] for i in idx]
            states = [items[i][1] for i in idx]
            if wd != 0.0:
                xs = list(torch._foreach_mul(xs, 1.0 - lr * wd))
            extra: list[dict[str, Any]] = [{"step": t} for _ in idx]
            if kind == "sgd":
                new = torch._foreach_add(xs, gs, alpha=-lr)
            elif kind == "momentum":
                if has_state:
                    bufs = list(torch._foreach_mul([s["momentum_buffer"] for s in states], mu))
                    torch._foreach_add_(bufs, gs)
                else:
                    bufs = [g.clone() for g in gs]
                new = torch._foreach_add(xs, bufs, alpha=-lr)
                for e, b in zip(extra, bufs):
                    e["momentum_buffer"] = b
            else:
                if has_state:
                    ms = list(torch._foreach_mul([s["exp_avg"] for s in states], b1))
                    torch._foreach_add_(ms, gs, alpha=1.0 - b1)
                    vs = list(torch._foreach_mul([s["exp_avg_sq"] for s in states], b2))
                    torch._foreach_addcmul_(vs, gs, gs, value=1.0 - b2)
                else:
                    ms = list(torch._foreach_mul(gs, 1.0 - b1))
                    vs = list(torch._foreach_mul(torch._foreach_mul(gs, gs), 1.0 - b2))
                bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
                denom = torch._foreach_sqrt(torch._foreach_div(vs, bc2))
                torch._foreach_add_(denom, eps)
                new = torch._foreach_add(xs, torch._foreach_div(ms, denom), alpha=-lr / bc1)
                for e, m, v in zip(extra, ms, vs):
                    e["exp_avg"], e["exp_avg_sq"] = m, v
            for i, n, e in zip(idx, new, extra):
                out[i] = (n, e)
        return out

    @staticmethod
    def _transport_state(
        state: Mapping[str, Any], A: torch.Tensor, B: torch.Tensor
    ) -> dict[str, Any]:
        """Matrix core state carried by ``A = U₊ᵀU``, ``B = V₊ᵀV`` (see the module docstring)."""
        new = dict(state)
        for key in ("momentum_buffer", "exp_avg"):
            if key in new:
                new[key] = transport_core(new[key], A, B)
        if "exp_avg_sq" in new:
            new["exp_avg_sq"] = transport_second_moment(new["exp_avg_sq"], A, B)
        return new

    @staticmethod
    def _transport_state_tucker(
        state: Mapping[str, Any], mats: tuple[torch.Tensor, ...]
    ) -> dict[str, Any]:
        new = dict(state)
        for key in ("momentum_buffer", "exp_avg"):
            if key in new:
                new[key] = transport_core_tucker(new[key], mats)
        if "exp_avg_sq" in new:
            new["exp_avg_sq"] = transport_second_moment_tucker(new["exp_avg_sq"], mats)
        return new

    # ------------------------------------------------------------------ matrix kernels
    @staticmethod
    def _augment_matrix(
        point: FixedRankPoint, pg: ProjectedGradients, cap: int
    ) -> tuple[FixedRankPoint, torch.Tensor, torch.Tensor]:
        """Augmented point ``(Û, Ŝ₀, V̂)``, transition ``[I; 0]`` and ``Ĝ`` (frozen tangent)."""
        U, S, V = point
        GV, UtGV, GtU = pg
        m, r = U.shape
        n = V.shape[0]
        k = max(0, min(r, cap - r, m - r, n - r))
        if k == 0:
            eye = torch.eye(r, dtype=S.dtype, device=S.device)
            return point, eye, UtGV
        Ut = augment_basis(U, GV[:, :k], method="cgs2")
        Vt = augment_basis(V, GtU[:, :k], method="cgs2")
        R = r + k
        S_hat = S.new_zeros(R, R)
        S_hat[:r, :r] = S
        G_hat = S.new_zeros(R, R)
        G_hat[:r, :r] = UtGV
        G_hat[:r, r:] = GtU.transpose(0, 1) @ Vt
        G_hat[r:, :r] = Ut.transpose(0, 1) @ GV
        M = S.new_zeros(R, r)
        M[:r] = torch.eye(r, dtype=S.dtype, device=S.device)
        aug = FixedRankPoint(torch.cat([U, Ut], dim=1), S_hat, torch.cat([V, Vt], dim=1))
        return aug, M, G_hat

    # ------------------------------------------------------------------ per-layer steps
    def _pre_truncate(
        self, layer: nn.Module, group: Mapping[str, Any], state: dict[str, Any], pg: Any
    ) -> tuple[Any, dict[str, Any], Any]:
        """Truncate a still-augmented layer before a new augmentation; carry ``pg`` along.

        Exact for the projections: ``G V₁ = (G V̂) Q₁``, ``G U₁ = (Gᵀ Û) P₁``,
        ``U₁ᵀ G V₁ = P₁ᵀ (Ûᵀ G V̂) Q₁`` (Tucker: ``×_j`` the transitions).
        """
        if isinstance(layer, TuckerModule):
            res = tucker_truncate(
                layer.point(), self._tucker_rules(layer, group, state), full_modes=layer.full_modes
            )
            mats: list[torch.Tensor | None] = list(res.transitions)
            pg = TuckerProjectedGradients(
                _mode_dots(pg.core, mats, None),
                tuple(_mode_dots(p, mats, k) for k, p in enumerate(pg.partials)),
            )
            return res.point, self._transport_state_tucker(state, res.transitions), pg
        res = truncate(layer.point(), self._matrix_rule(layer, group, state))  # type: ignore[operator]
        A, B = res.M, res.N
        GV, UtGV, GtU = pg
        pg = ProjectedGradients(
            GV @ B.transpose(0, 1), A @ UtGV @ B.transpose(0, 1), GtU @ A.transpose(0, 1)
        )
        return res.point, self._transport_state(state, A, B), pg

    def _augment_step(
        self, layer: nn.Module, group: Mapping[str, Any], state: dict[str, Any], pg: Any
    ) -> tuple[Any, dict[str, Any]]:
        """Augment + one substep on the padded core with the frozen-tangent gradient."""
        point = None
        if state.get("augmented", False):
            point, state, pg = self._pre_truncate(layer, group, state, pg)
        if isinstance(layer, TuckerModule):
            return self._augment_step_tucker(layer, group, state, pg, point)
        if point is None:
            point = layer.point()  # type: ignore[operator]
        aug, M, G_hat = self._augment_matrix(point, pg, int(layer.max_rank))  # type: ignore[attr-defined]
        state = self._transport_state(state, M, M)
        S_new, sub = self._substep(group, state, aug.S, G_hat)
        state.update(sub)
        state["augmented"] = True
        state["rank_before"] = int(point.S.shape[0])
        return FixedRankPoint(aug.U, S_new, aug.V), state

    def _augment_step_tucker(
        self,
        layer: TuckerModule,
        group: Mapping[str, Any],
        state: dict[str, Any],
        pg: TuckerProjectedGradients,
        point: TuckerPoint | None,
    ) -> tuple[TuckerPoint, dict[str, Any]]:
        if point is None:
            point = layer.point()
        # tucker_parallel is affine in h with h-independent new bases: its untruncated
        # core at h = 1 is pad(C) − Ĝ, which gives the frozen-tangent core gradient Ĝ.
        res = tucker_parallel(point, pg, 1.0, None, full_modes=layer.full_modes)
        trans = list(res.transitions)
        core_pad = transport_core_tucker(point.core, trans)
        G_hat = core_pad - res.point.core
        factors = list(res.point.factors)
        for k in range(len(factors)):
            cap = int(layer.max_ranks[k])
            if factors[k].shape[1] > cap:  # respect the layer's cap: keep the first new columns
                factors[k] = factors[k][:, :cap]
                trans[k] = trans[k][:cap]
                core_pad = core_pad.narrow(k, 0, cap)
                G_hat = G_hat.narrow(k, 0, cap)
        state = self._transport_state_tucker(state, tuple(trans))
        core_new, sub = self._substep(group, state, core_pad.contiguous(), G_hat.contiguous())
        state.update(sub)
        state["augmented"] = True
        state["rank_before"] = tuple(int(s) for s in point.core.shape)
        return TuckerPoint(core_new, tuple(factors)), state

    def _truncate_layer(
        self, layer: nn.Module, group: Mapping[str, Any], state: dict[str, Any], point: Any = None
    ) -> tuple[Any, dict[str, Any]]:
        """Truncate an augmented point (default: the layer's) and carry the state."""
        if point is None:
            point = layer.point()  # type: ignore[operator]
        if isinstance(layer, TuckerModule):
            res = tucker_truncate(
                point, self._tucker_rules(layer, group, state), full_modes=layer.full_modes
            )
            new_point, trans = _reorthonormalize_tucker(
                res.point, res.transitions, layer.full_modes
            )
            state = self._transport_state_tucker(state, trans)
        else:
            res = truncate(point, self._matrix_rule(layer, group, state))
            new_point, A, B = _reorthonormalize(res.point, res.M, res.N)
            state = self._transport_state(state, A, B)
        state["augmented"] = False
        return new_point, state

    # ------------------------------------------------------------------ commit
    def _commit_layer(self, i: int, point: Any, new_state: dict[str, Any]) -> None:
        layer = self.layers[i]
        if isinstance(point, torch.Tensor):  # coefficient step: same shape, write in place
            coef = self._coef(layer)
            coef.copy_(point)
        else:
            layer.set_point(point)  # type: ignore[operator]
        st = self._state_of(i)
        st.clear()
        st.update(new_state)

    def _nonfinite_layers(self, grads: list[Any]) -> list[str]:
        return [
            n
            for n, g in zip(self.layer_names, grads)
            if g is not None and not all_finite(_flatten(g))
        ]

    def _dense_grads(self) -> list[torch.Tensor]:
        return [p.grad for g in self.dense_param_groups for p in g["params"] if p.grad is not None]

    def _dense_items(self) -> list[tuple[Any, ...]]:
        items = []
        for group in self.dense_param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("DLRT does not support sparse gradients")
                items.append((p, group, self.state[p], p.detach(), p.grad))
        return items

    def _dense_updates(self) -> list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]:
        items = self._dense_items()
        res = self._substep_many([it[1:] for it in items])
        return [(it[0], new, st) for it, (new, st) in zip(items, res)]

    def _commit_dense(
        self, updates: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]
    ) -> None:
        for p, new, st in updates:
            p.copy_(new)
            self.state[p].clear()
            self.state[p].update(st)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One DLRT step (see the module docstring for the schedule).

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model (``zero_grad``, forward, backward) and returns the loss.
            Required by ``integrator="bug"`` (called two or three times); otherwise
            called once before the step, as in :class:`torch.optim.SGD`.

        Returns
        -------
        The (first) loss returned by the closure, or ``None``.
        """
        if self.integrator == "bug" and self.phase == "train":
            if closure is None:
                raise ValueError(
                    "closure: integrator='bug' re-evaluates the model at the augmented bases; "
                    "call opt.step(closure) with a closure that runs zero_grad, forward and "
                    "backward and returns the loss"
                )
            return self._step_closure(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        fine = self.phase != "train"
        augmenting = not fine and self._pos == 0
        truncating = not fine and self._pos == self.augment_every - 1
        # 1. gradients finite?
        grads: list[Any] = []
        for layer in self.layers:
            if augmenting:
                grads.append(layer.projected_grads)  # type: ignore[attr-defined]
            else:
                grads.append(self._coef(layer).grad)
        if not all_finite([t for g in grads for t in _flatten(g)] + self._dense_grads()):
            bad = self._nonfinite_layers(grads)
            self._handle_nonfinite(bad or ["<dense parameters>"], "gradients")
            return loss
        # 2. compute every update without writing
        pending: list[tuple[int, Any, dict[str, Any]]] = []
        coef_items: list[tuple[int, dict[str, Any], tuple[Any, ...]]] = []
        for i, (layer, group, g) in enumerate(zip(self.layers, self.param_groups, grads)):
            if g is None:
                continue
            state = dict(self._state_of(i))
            if augmenting:
                pending.append((i, *self._augment_step(layer, group, state, g)))
            else:
                coef = self._coef(layer)
                coef_items.append((i, state, (group, state, coef.detach(), g)))
        dense_items = self._dense_items()
        results = self._substep_many([it[2] for it in coef_items] + [it[1:] for it in dense_items])
        for (i, state, _), (new, st) in zip(coef_items, results):
            pending.append((i, new, {**state, **st}))
        dense = [(it[0], new, st) for it, (new, st) in zip(dense_items, results[len(coef_items) :])]
        updates: list[tuple[int, Any, dict[str, Any]]] = []
        truncated = False
        for i, new, st in pending:
            if truncating and st.get("augmented", False):
                layer = self.layers[i]
                point = _with_coefficients(layer, new) if isinstance(new, torch.Tensor) else new
                new, st = self._truncate_layer(layer, self.param_groups[i], st, point)
                truncated = True
            updates.append((i, new, st))
        finite = all_finite(
            [t for _, new, _ in updates for t in _flatten(new)] + [new for _, new, _ in dense]
        )
        if not finite:
            self._handle_nonfinite([self.layer_names[i] for i, _, _ in updates], "update")
            return loss
        # 3. commit
        for i, new, st in updates:
            self._commit_layer(i, new, st)
        self._commit_dense(dense)
        self._global_step += 1
        if fine:
            self.last_step_kind = KIND_FINE_TUNE
        elif augmenting and truncating:
            self.last_step_kind = KIND_PARALLEL
        elif augmenting:
            self.last_step_kind = KIND_AUGMENT
        elif truncating:
            self.last_step_kind = KIND_TRUNCATE
        else:
            self.last_step_kind = KIND_COEFFICIENT
        if not fine:
            self._pos = (self._pos + 1) % self.augment_every
        self._record(truncated)
        self._configure_layers()
        return loss

    def _record(self, truncated: bool) -> None:
        if not self.record_history:
            return
        ranks = self._ranks_list()
        self.rank_history.append((self._global_step, ranks))
        if truncated:
            self.truncation_history.append((self._global_step, ranks))

    def _step_closure(self, closure: Callable[[], Any]) -> Any:
        """Rank-adaptive BUG with re-evaluations (the original DLRT step)."""
        # pass 1 (K and L): projected gradients at W
        self._configure_layers(record=True)
        with torch.enable_grad():
            loss = closure()
        pgs = [layer.projected_grads for layer in self.layers]  # type: ignore[attr-defined]
        if self.separate_kl_passes:  # the original code's separate L pass (same point)
            with torch.enable_grad():
                closure()
            pg2 = [layer.projected_grads for layer in self.layers]  # type: ignore[attr-defined]
            pgs = [_merge_kl(a, b) for a, b in zip(pgs, pg2)]
        bad = self._nonfinite_layers(pgs)
        if bad:
            self._handle_nonfinite(bad, "projected gradients")
            return loss
        # augment (W unchanged: Û Ŝ₀ V̂ᵀ = U S Vᵀ), state padded
        aug_updates = []
        for i, (layer, pg) in enumerate(zip(self.layers, pgs)):
            if pg is None:
                continue
            group = self.param_groups[i]
            state = dict(self._state_of(i))
            point = None
            if state.get("augmented", False):
                point, state, pg = self._pre_truncate(layer, group, state, pg)
            if point is None:
                point = layer.point()  # type: ignore[operator]
            if isinstance(layer, TuckerModule):
                res = tucker_parallel(point, pg, 0.0, None, full_modes=layer.full_modes)
                trans = list(res.transitions)
                factors = list(res.point.factors)
                core = res.point.core
                for k in range(len(factors)):
                    cap = int(layer.max_ranks[k])
                    if factors[k].shape[1] > cap:
                        factors[k] = factors[k][:, :cap]
                        trans[k] = trans[k][:cap]
                        core = core.narrow(k, 0, cap)
                new_point: Any = TuckerPoint(core.contiguous(), tuple(factors))
                state = self._transport_state_tucker(state, tuple(trans))
                state["rank_before"] = tuple(int(s) for s in point.core.shape)
            else:
                aug, M, _ = self._augment_matrix(point, pg, int(layer.max_rank))  # type: ignore[attr-defined]
                new_point = aug
                state = self._transport_state(state, M, M)
                state["rank_before"] = int(point.S.shape[0])
            state["augmented"] = True
            aug_updates.append((i, new_point, state))
        for i, point, st in aug_updates:
            self._commit_layer(i, point, st)
        # S pass: exact Galerkin gradient at the augmented bases
        self._configure_layers(record=False)
        with torch.enable_grad():
            closure()
        updates = []
        for i, layer in enumerate(self.layers):
            coef = self._coef(layer)
            state = dict(self._state_of(i))
            if coef.grad is None or not state.get("augmented", False):
                continue
            if not all_finite([coef.grad]):
                self._handle_nonfinite([self.layer_names[i]], "S-pass gradients")
                self._configure_layers()
                return loss
            S_new, sub = self._substep(self.param_groups[i], state, coef.detach(), coef.grad)
            state.update(sub)
            point = _with_coefficients(layer, S_new)
            updates.append((i, *self._truncate_layer(layer, self.param_groups[i], state, point)))
        dense = self._dense_updates()
        if not all_finite(
            [t for _, p, _ in updates for t in _flatten(p)] + [n for _, n, _ in dense]
        ):
            self._handle_nonfinite([self.layer_names[i] for i, _, _ in updates], "update")
            self._configure_layers()
            return loss
        for i, point, st in updates:
            self._commit_layer(i, point, st)
        self._commit_dense(dense)
        self._global_step += 1
        self.last_step_kind = KIND_CLOSURE
        self._record(bool(updates))
        self._configure_layers()
        return loss

    # ------------------------------------------------------------------ (de)serialisation
    def state_dict(self) -> dict[str, Any]:
        """The base state dict plus the cycle position, phase and truncation history."""
        sd = super().state_dict()
        sd["dlrt"] = {
            "pos": self._pos,
            "phase": self.phase,
            "truncation_history": [(s, list(r)) for s, r in self.truncation_history],
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by :meth:`state_dict` (load the model's first)."""
        sd = dict(state_dict)
        extra = sd.pop("dlrt", None)
        super().load_state_dict(sd)
        if extra is not None:
            self._pos = int(extra.get("pos", 0)) % self.augment_every
            self.phase = str(extra.get("phase", "train"))
            self.truncation_history = BoundedHistory(
                [(int(s), list(r)) for s, r in extra.get("truncation_history", [])],
                self.rank_history_maxlen,
            )
        self._configure_layers()
