r"""A reusable base for layer-based rank-adaptive optimizers (GeoLoRA, DLRT, …).

:class:`LowRankOptimizer` is a :class:`torch.optim.Optimizer` whose unit of work is a
*low-rank layer* (a :class:`~manifold_lowrank.nn.base.LowRankModule`, ``W = U S Vᵀ``, or
a :class:`~manifold_lowrank.nn.base.TuckerModule`), not a single parameter. It provides

* **one parameter group per layer** (``params = [U, S, V]`` or ``[core, U₁, …, U_d]``),
  so learning-rate schedulers and ``param_groups`` work as usual. A change of rank
  replaces ``.data`` of the *same* :class:`~torch.nn.Parameter` objects
  (:meth:`LowRankModule.set_point`), so the groups stay valid; ``.grad`` of the
  factors and the layer's projected gradients are cleared by every update (they refer
  to the old basis).
* **state carried through a change of basis/rank** by explicit formulas
  (:func:`transport_core`, :func:`transport_tangent`, below).
* **decoupled weight decay on the coefficients only** (:func:`decay_coefficients`):
  ``S ← (1 − λ·wd) S``; the orthonormal bases ``U``, ``V`` are never decayed (the
  original GeoLoRA driver decayed them with AdamW and lost orthonormality,
  ``methods.md`` §2.5). Since ``X = U S Vᵀ``, decaying ``S`` decays ``X`` itself.
* a **NaN policy**: before anything is written, every layer's projected gradients and
  every new point are checked; on NaN/Inf either the *whole step* is skipped with a
  :class:`RuntimeWarning` and :attr:`LowRankOptimizer.nan_skips` is incremented
  (``nan_policy="skip"``), or :class:`FloatingPointError` is raised
  (``nan_policy="raise"``). In both cases no factor and no optimizer state is touched.
* **rank history** (:attr:`LowRankOptimizer.rank_history`) for logging — unbounded by
  default (one ``(step, ranks)`` entry per step, ≈ 0.17 KiB per step for three layers);
  ``rank_history_maxlen=N`` keeps only the last ``N`` entries (a :class:`BoundedHistory`,
  constant memory over any number of steps) — and
  :meth:`~LowRankOptimizer.state_dict` / :meth:`~LowRankOptimizer.load_state_dict` that
  round-trip after ranks changed (the ranks are stored and checked on load).

Transport of optimizer state
----------------------------
Optimizer state that is a matrix *in the coordinates of the current bases* must be
re-expressed when the bases change from ``(U, V)`` (rank ``r``) to ``(U₊, V₊)`` (rank
``r₊``).

*Core state* ``M ∈ R^{r×r}`` represents the ``m×n`` matrix ``U M Vᵀ``. Its orthogonal
projection onto ``span(U₊) ⊗ span(V₊)`` has the coefficients

.. math::  M_+ = A\,M\,B^\top,\qquad A = U_+^\top U\ (r_+\times r),\quad
           B = V_+^\top V\ (r_+\times r),

(:func:`transport_core`). It is exact (``U₊ M₊ V₊ᵀ = U M Vᵀ``) whenever the new bases
contain the old ones, e.g. after an augmentation; after a truncation it keeps the
retained part. The Tucker analogue is ``M₊ = M ×_k (U_{k,+}ᵀ U_k)`` for every mode.

*Tangent state* (momentum of a Riemannian method) is a tangent vector
``ξ = a Vᵀ + U bᵀ − U c Vᵀ`` at ``X = U S Vᵀ``, stored as its three projections
``(a, c, b) = (ξV, UᵀξV, ξᵀU)`` (the shapes of
:class:`~manifold_lowrank.manifolds.ProjectedGradients`; these determine ``ξ``). The
projection vector transport to the tangent space at ``X₊ = U₊ S₊ V₊ᵀ`` keeps
``P_{T₊}(ξ)``, whose projections are

.. math::  ξV_+ = a\,(V^\top V_+) + U\,(b^\top V_+) - U\,c\,(V^\top V_+),\qquad
           ξ^\top U_+ = V\,(a^\top U_+) + b\,(U^\top U_+) - V\,c^\top (U^\top U_+),

and ``U₊ᵀ ξ V₊`` (:func:`transport_tangent`); its core part is the ``A M Bᵀ`` formula
above. Cost ``O((m + n) r r₊)``. Element-wise state (Adam's second moments) is not
invariant under a rotation of the basis and is therefore not transported by this base;
scalar state (norms) is invariant and simply kept.

Subclasses implement :meth:`LowRankOptimizer._compute_update`, which must be pure (no
in-place writes): it returns the new point and the new state, and the base commits them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from manifold_lowrank.linalg import all_finite
from manifold_lowrank.manifolds.types import FixedRankPoint, ProjectedGradients
from manifold_lowrank.nn.base import LowRankModule, TuckerModule

__all__ = [
    "BoundedHistory",
    "LowRankOptimizer",
    "decay_coefficients",
    "find_lowrank_layers",
    "layer_rank",
    "transport_core",
    "transport_core_tucker",
    "transport_tangent",
]

LowRankLayer = LowRankModule | TuckerModule
NAN_POLICIES = ("skip", "raise")


# --------------------------------------------------------------------------- helpers
def find_lowrank_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """All low-rank layers inside ``module`` as ``(qualified name, layer)`` pairs.

    A model exposing ``adapter_layers()`` (such as
    :class:`~manifold_lowrank.adapters.AdaptedModel`) is asked directly, so names are
    relative to the wrapped base model. Otherwise every
    :class:`~manifold_lowrank.nn.base.LowRankModule` and
    :class:`~manifold_lowrank.nn.base.TuckerModule` in ``module.named_modules()`` is
    returned (in registration order).
    """
    getter = getattr(module, "adapter_layers", None)
    if callable(getter):
        return list(getter().items())
    return [
        (n, m) for n, m in module.named_modules() if isinstance(m, (LowRankModule, TuckerModule))
    ]


def transport_core(M: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    r"""``A M Bᵀ``: re-express core state ``M`` (``r×r``) in new bases.

    ``A = U₊ᵀ U`` (``r₊×r``), ``B = V₊ᵀ V`` (``r₊×r``); see the module docstring.
    Cost ``O(r₊ r²)``.
    """
    return A @ M @ B.transpose(-2, -1)


def transport_core_tucker(M: torch.Tensor, mats: Iterable[torch.Tensor]) -> torch.Tensor:
    r"""``M ×₁ A₁ ×₂ A₂ … ×_d A_d`` with ``A_k = U_{k,+}ᵀ U_k`` (Tucker core state)."""
    out = M
    for k, a in enumerate(mats):
        out = torch.tensordot(a, out, dims=([1], [k])).movedim(0, k)
    return out


def transport_tangent(
    xi: ProjectedGradients, old: FixedRankPoint, new: FixedRankPoint
) -> ProjectedGradients:
    r"""Projection vector transport of a tangent vector between fixed-rank points.

    Parameters
    ----------
    xi : ProjectedGradients
        ``(ξV, UᵀξV, ξᵀU)`` of a tangent vector ``ξ`` at ``old`` (shapes ``m×r``,
        ``r×r``, ``n×r``).
    old, new : FixedRankPoint
        ``(U, S, V)`` and ``(U₊, S₊, V₊)``; only the bases are used.

    Returns
    -------
    ProjectedGradients
        ``(ξV₊, U₊ᵀξV₊, ξᵀU₊)``: the projections of ``P_{T₊}(ξ)`` at ``new``.
        Cost ``O((m + n) r r₊)``; no ``m×n`` matrix is formed.
    """
    a, c, b = xi
    U, V = old.U, old.V
    Up, Vp = new.U, new.V
    vtvp = V.transpose(0, 1) @ Vp  # r×r₊
    utup = U.transpose(0, 1) @ Up  # r×r₊
    xv = a @ vtvp + U @ (b.transpose(0, 1) @ Vp - c @ vtvp)
    xtu = b @ utup + V @ (a.transpose(0, 1) @ Up - c.transpose(0, 1) @ utup)
    return ProjectedGradients(xv, Up.transpose(0, 1) @ xv, xtu)


def decay_coefficients(coef: torch.Tensor, lr: float, weight_decay: float) -> torch.Tensor:
    """Decoupled weight decay on the coefficients: ``(1 − lr·wd)·coef`` (new tensor)."""
    if weight_decay == 0.0:
        return coef
    return coef * (1.0 - lr * weight_decay)


def _flatten(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        out: list[torch.Tensor] = []
        for y in x:
            out.extend(_flatten(y))
        return out
    return []


def layer_rank(layer: nn.Module) -> int | tuple[int, ...]:
    """``layer.rank`` (matrix) or ``layer.ranks`` (Tucker)."""
    if isinstance(layer, TuckerModule):
        return layer.ranks
    return int(layer.rank)  # type: ignore[attr-defined]


def _layer_params(layer: nn.Module) -> list[nn.Parameter]:
    if isinstance(layer, TuckerModule):
        core, fs = layer.tucker_parameters()
        return [core, *fs]
    if isinstance(layer, LowRankModule):
        return list(layer.factors())
    raise TypeError(
        f"expected a low-rank layer (LowRankModule or TuckerModule from "
        f"manifold_lowrank.nn), got {type(layer).__name__}"
    )


def check_history_maxlen(maxlen: Any, name: str = "rank_history_maxlen") -> int | None:
    """Validate a history bound: ``None`` (unbounded) or an ``int ≥ 1``."""
    if maxlen is None:
        return None
    if isinstance(maxlen, bool) or not isinstance(maxlen, int):
        raise TypeError(f"{name} must be None or an int >= 1, got {maxlen!r}")
    if maxlen < 1:
        raise ValueError(f"{name} must be None or an int >= 1, got {maxlen!r}")
    return int(maxlen)


class BoundedHistory(list):
    """A ``list`` that keeps only its last ``maxlen`` entries (``maxlen=None``: all).

    ``append``/``extend`` drop the oldest entries beyond ``maxlen`` (cost ``O(maxlen)``
    pointer moves when full), so a history of ``(step, ranks)`` entries uses constant memory
    however long training runs. It is a real list: indexing, slicing, iteration and ``==``
    with plain lists behave as usual.
    """

    def __init__(self, iterable: Iterable[Any] = (), maxlen: int | None = None) -> None:
        super().__init__(iterable)
        self.maxlen = check_history_maxlen(maxlen, "maxlen")
        self._trim()

    def _trim(self) -> None:
        if self.maxlen is not None and len(self) > self.maxlen:
            del self[: len(self) - self.maxlen]

    def append(self, item: Any) -> None:
        super().append(item)
        self._trim()

    def extend(self, items: Iterable[Any]) -> None:
        super().extend(items)
        self._trim()

    def __iadd__(self, items: Iterable[Any]) -> BoundedHistory:  # type: ignore[override]
        self.extend(items)
        return self


# --------------------------------------------------------------------------- base class
class LowRankOptimizer(torch.optim.Optimizer):
    r"""Base class of layer-based rank-adaptive optimizers (see the module docstring).

    Parameters
    ----------
    model_or_layers : nn.Module or iterable
        A model (every low-rank layer inside is optimised; see
        :func:`find_lowrank_layers`), an iterable of layers, an iterable of
        ``(name, layer)`` pairs, or an iterable of dicts
        ``{"layers": [...], **option_overrides}`` (per-layer options, like param groups).
    defaults : dict
        Default options of every group (``lr`` and the subclass's options).
    nan_policy : {"skip", "raise"}
        What a non-finite gradient or update does (nothing is modified in either case).
    record_history : bool
        Append ``(step, ranks)`` to :attr:`rank_history` after every step.
    rank_history_maxlen : int or None
        Keep only the last ``rank_history_maxlen`` entries of :attr:`rank_history` (and
        of every other per-step history a subclass keeps, e.g. DLRT's
        ``truncation_history``). ``None`` (default): keep everything — one entry per
        step, ≈ 0.17 KiB/step for three layers, i.e. ≈ 1.7 MB per 10⁵ steps; set a bound
        (or ``record_history=False``) for very long runs. Settable later as an attribute.

    Attributes
    ----------
    layers : list of nn.Module
        The optimised layers, in group order.
    layer_names : list of str
    nan_skips : int
        Number of skipped steps (``nan_policy="skip"``).
    rank_history : BoundedHistory of (int, list)
        ``(step, [rank of each layer])`` after every step (the last
        ``rank_history_maxlen`` of them). Assigning a list wraps it.
    """

    def __init__(
        self,
        model_or_layers: nn.Module | Iterable[Any],
        defaults: dict[str, Any],
        *,
        nan_policy: str = "skip",
        record_history: bool = True,
        rank_history_maxlen: int | None = None,
    ) -> None:
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        self._history_maxlen = check_history_maxlen(rank_history_maxlen)
        named, overrides = self._collect(model_or_layers)
        if not named:
            raise ValueError(
                "model_or_layers contains no low-rank layer (LowRankModule/TuckerModule of "
                "manifold_lowrank.nn); wrap the model first, e.g. with "
                "manifold_lowrank.adapters.get_adapter_model"
            )
        seen: set[int] = set()
        groups = []
        for (name, layer), over in zip(named, overrides):
            if id(layer) in seen:
                raise ValueError(f"layer {name!r} was given twice")
            seen.add(id(layer))
            g = {"params": _layer_params(layer), **over}
            groups.append(g)
        self.layers: list[nn.Module] = [layer for _, layer in named]
        self.layer_names: list[str] = [name for name, _ in named]
        self.nan_policy = nan_policy
        self.record_history = bool(record_history)
        self.nan_skips = 0
        self.rank_history = []
        self._global_step = 0
        super().__init__(groups, defaults)

    # ------------------------------------------------------------------ histories
    @property
    def rank_history(self) -> BoundedHistory:
        """``(step, ranks)`` after every step; the last :attr:`rank_history_maxlen`."""
        return self._rank_history

    @rank_history.setter
    def rank_history(self, value: Iterable[tuple[int, list[Any]]]) -> None:
        self._rank_history = BoundedHistory(value, self._history_maxlen)

    @property
    def rank_history_maxlen(self) -> int | None:
        """Bound of the histories (``None``: unbounded); setting it trims them."""
        return self._history_maxlen

    @rank_history_maxlen.setter
    def rank_history_maxlen(self, value: int | None) -> None:
        self._history_maxlen = check_history_maxlen(value)
        for h in vars(self).values():
            if isinstance(h, BoundedHistory):
                h.maxlen = self._history_maxlen
                h._trim()

    # ------------------------------------------------------------------ collection
    @staticmethod
    def _collect(obj: Any) -> tuple[list[tuple[str, nn.Module]], list[dict[str, Any]]]:
        if isinstance(obj, nn.Module) and not isinstance(obj, (LowRankModule, TuckerModule)):
            named = find_lowrank_layers(obj)
            return named, [{} for _ in named]
        if isinstance(obj, (LowRankModule, TuckerModule)):
            return [("0", obj)], [{}]
        if isinstance(obj, Mapping):
            obj = [obj]
        named: list[tuple[str, nn.Module]] = []
        overrides: list[dict[str, Any]] = []
        for i, item in enumerate(obj):
            if isinstance(item, Mapping):
                if "layers" not in item:
                    raise ValueError("a group dict must have a 'layers' entry")
                sub, _ = LowRankOptimizer._collect(item["layers"])
                over = {k: v for k, v in item.items() if k != "layers"}
                named.extend(sub)
                overrides.extend(dict(over) for _ in sub)
            elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                named.append((item[0], item[1]))
                overrides.append({})
            elif isinstance(item, nn.Module):
                named.append((str(i), item))
                overrides.append({})
            else:
                raise TypeError(
                    "model_or_layers must be an nn.Module, or an iterable of layers, "
                    f"(name, layer) pairs or group dicts; got an item of type {type(item).__name__}"
                )
        for name, layer in named:
            if not isinstance(layer, (LowRankModule, TuckerModule)):
                raise TypeError(
                    f"{name!r} is a {type(layer).__name__}, not a low-rank layer "
                    "(LowRankModule/TuckerModule of manifold_lowrank.nn)"
                )
        return named, overrides

    # ------------------------------------------------------------------ reporting
    def ranks(self) -> dict[str, Any]:
        """``{layer name: current rank}`` (a tuple of ranks for Tucker layers)."""
        return {n: layer_rank(layer) for n, layer in zip(self.layer_names, self.layers)}

    def num_adapter_parameters(self) -> int:
        """Number of entries currently held by the factors of all layers.

        Matrix layers (``LowRankLinear``, ``LowRankConv2d``, matrix adapters) count
        ``U``, ``S``, ``V``: ``r(m + n) + r²`` at their *current* rank; Tucker layers count
        the core ``∏ r_k`` and the factors ``n_k r_k`` of the rank-adaptive modes (the fixed
        identity factors of ``full_modes`` are not parameters of the format). Biases, dense
        layers and frozen base weights of adapters are not counted. The count does not
        depend on ``requires_grad`` (DLRT freezes the bases, a user may freeze a layer:
        the factors are held all the same).
        """
        total = 0
        for layer in self.layers:
            if isinstance(layer, TuckerModule):
                core, fs = layer.tucker_parameters()
                total += core.numel() + sum(
                    f.numel() for k, f in enumerate(fs) if k not in layer.full_modes
                )
            else:
                total += sum(p.numel() for p in layer.factors())  # type: ignore[operator]
        return total

    def _state_of(self, index: int) -> dict[str, Any]:
        return self.state[self.param_groups[index]["params"][0]]

    # ------------------------------------------------------------------ zero_grad
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear ``.grad`` of the factors and the layers' projected gradients."""
        super().zero_grad(set_to_none=set_to_none)
        for layer in self.layers:
            layer.clear_projected_grads()  # type: ignore[operator]

    # ------------------------------------------------------------------ step
    def _compute_update(
        self,
        layer: nn.Module,
        group: dict[str, Any],
        state: dict[str, Any],
        pg: Any,
        global_step: int,
    ) -> tuple[Any, dict[str, Any]]:
        """Return ``(new point, new state entries)`` for one layer. Must not write."""
        raise NotImplementedError

    def _finalize_updates(
        self, updates: list[tuple[int, Any, dict[str, Any]]], global_step: int
    ) -> list[tuple[int, Any, dict[str, Any]]]:
        """Hook between the per-layer updates and the commit: a decision that needs every
        layer's result (e.g. a rank budget shared by all layers) goes here.

        ``updates`` holds ``(layer index, new point, new state)`` of every layer that is
        about to change, all checked finite. Must not write into a layer or a state, and
        may only select from the points and states it is given (the base commits what it
        returns without a second finiteness check). Default: unchanged.
        """
        return updates

    def _handle_nonfinite(self, names: list[str], what: str) -> None:
        msg = (
            f"{type(self).__name__}: non-finite {what} in layer(s) {names[:5]}"
            f"{' …' if len(names) > 5 else ''}; the step was skipped and nothing was modified"
        )
        if self.nan_policy == "raise":
            raise FloatingPointError(msg)
        self.nan_skips += 1
        warnings.warn(f"{msg} (skip #{self.nan_skips})", RuntimeWarning, stacklevel=3)
        for layer in self.layers:
            layer.clear_projected_grads()  # type: ignore[operator]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimizer step on every layer that received projected gradients.

        Layers without recorded projected gradients (no backward through them) are left
        unchanged, as torch optimizers skip parameters whose ``grad`` is ``None``.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (run under ``enable_grad``).

        Returns
        -------
        The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pgs = [layer.projected_grads for layer in self.layers]  # type: ignore[attr-defined]
        merged = [
            n
            for n, layer, pg in zip(self.layer_names, self.layers, pgs)
            if pg is not None and getattr(layer, "merged", False)
        ]
        if merged:
            raise RuntimeError(
                f"adapters {merged[:5]} are merged into their base weights; unmerge them "
                "before an optimizer step (nothing was modified)"
            )
        flat = [_flatten(pg) if pg is not None else [] for pg in pgs]
        bad = []
        if not all_finite(t for f in flat for t in f):  # one check for all layers
            bad = [n for n, f in zip(self.layer_names, flat) if not all_finite(f)]
        if bad:
            self._handle_nonfinite(bad, "projected gradients")
            return loss
        t = self._global_step + 1
        updates: list[tuple[int, Any, dict[str, Any]]] = []
        bad = []
        for i, (layer, group, pg) in enumerate(zip(self.layers, self.param_groups, pgs)):
            if pg is None:
                continue
            try:
                point, new_state = self._compute_update(layer, group, self._state_of(i), pg, t)
            except (torch.linalg.LinAlgError, FloatingPointError):
                bad.append(self.layer_names[i])
                continue
            updates.append((i, point, new_state))
        new_flat = [_flatten(tuple(pt)) for _, pt, _ in updates]
        if not all_finite(t for f in new_flat for t in f):  # one check for all
            bad += [self.layer_names[u[0]] for u, f in zip(updates, new_flat) if not all_finite(f)]
        if bad:
            self._handle_nonfinite(bad, "update")
            return loss
        # decisions over all layers (a shared budget) see finite points only; they select
        # and slice, so what they return is finite too
        updates = self._finalize_updates(updates, t)
        # commit: nothing above wrote into a layer or a state
        for i, point, new_state in updates:
            # finiteness of every result was checked above, in one pass
            self.layers[i].set_point(point, assume_finite=True)  # type: ignore[operator]
            st = self._state_of(i)
            st.clear()
            st.update(new_state)
        self._global_step = t
        if self.record_history:
            self.rank_history.append((t, [layer_rank(la) for la in self.layers]))
        return loss

    # ------------------------------------------------------------------ (de)serialisation
    def state_dict(self) -> dict[str, Any]:
        """Torch's optimizer state dict plus the layer names, ranks and counters."""
        sd = super().state_dict()
        sd["lowrank"] = {
            "names": list(self.layer_names),
            "ranks": [layer_rank(la) for la in self.layers],
            "global_step": self._global_step,
            "nan_skips": self.nan_skips,
            "rank_history": [(s, list(r)) for s, r in self.rank_history],
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by :meth:`state_dict`.

        The layers must already hold the ranks the state was saved with (load the model
        or adapter checkpoint first); otherwise a :class:`ValueError` names the first
        mismatching layer and nothing is loaded.
        """
        sd = dict(state_dict)
        extra = sd.pop("lowrank", None)
        if extra is not None:
            ranks = [layer_rank(la) for la in self.layers]
            saved = [tuple(r) if isinstance(r, (list, tuple)) else int(r) for r in extra["ranks"]]
            if len(saved) != len(ranks):
                raise ValueError(
                    f"optimizer state has {len(saved)} layers but the optimizer has {len(ranks)}"
                )
            for name, a, b in zip(self.layer_names, saved, ranks):
                if a != b:
                    raise ValueError(
                        f"optimizer state was saved with rank {a} for layer {name!r} but the "
                        f"layer now has rank {b}; load the matching model/adapter checkpoint "
                        "first (nothing was loaded)"
                    )
        super().load_state_dict(sd)
        if extra is not None:
            self._global_step = int(extra.get("global_step", 0))
            self.nan_skips = int(extra.get("nan_skips", 0))
            self.rank_history = [(int(s), list(r)) for s, r in extra.get("rank_history", [])]
