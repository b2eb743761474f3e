r"""Bernoulli-LoRA and RAC-LoRA (randomized asymmetric chains of LoRA).

References: Malinovsky et al., *Randomized Asymmetric Chain of LoRA* (arXiv 2410.08305);
Sokolov, Sadiev, Demidovich, Al-Qahtani, Richtárik, *Bernoulli-LoRA* (arXiv 2508.03820).

Mapping the papers onto the library's convention
------------------------------------------------
The papers write a layer as ``y = x W₀ + x A B`` (``A`` on the input side). In the
library a weight is ``W ∈ R^{m×n}`` (out × in) and ``y = W x``, so a LoRA update reads

.. math::  ΔW = B A, \qquad B ∈ \mathbb{R}^{m×r}\ (\text{output side, our } U S),
           \quad A ∈ \mathbb{R}^{r×n}\ (\text{input side, our } V^\top).

Each *link* of the chain freezes one factor at a random sketch and trains the other:

* **B sampled, A trained** (probability ``p``): ``B ~ D`` (``m×r``), ``Â`` from 0.
  One exact step on the quadratic upper bound
  ``min_Â ⟨∇f(W), BÂ⟩ + (1/2γ)‖BÂ‖²`` gives ``BÂ = −γ H_B ∇f(W)`` with
  ``H_B = B(BᵀB)⁺Bᵀ`` (``m×m``, output side).
* **A sampled, B trained** (probability ``1 − p``): ``A ~ D`` (``r×n``), and
  ``B̂A = −γ ∇f(W) H_A`` with ``H_A = Aᵀ(AAᵀ)⁺A`` (``n×n``, input side).

After the link the update is merged, ``W ← W + BÂ`` (rank of the accumulated change
grows by ≤ r per link), and a new sketch is drawn. The **projected form** (this module's
:class:`BernoulliLoRA`, :class:`RACLoRA`) runs exactly this algorithm on the merged
weight,

.. math::  W^{t+1} = W^t − γ\, \hat H^t G^t, \qquad
           \hat H^t G = \begin{cases} H_B^t G & c^t = 1 \\ G H_A^t & c^t = 0 \end{cases},
           \quad c^t \sim \mathrm{Bernoulli}(p),

where ``Gᵗ`` is a gradient estimator (:mod:`~manifold_lowrank.optim.estimators`). It
never needs an adapter. The **factor form** (:class:`BernoulliLoRAChain`) keeps the
frozen factor and the trainable factor explicitly, trains the latter for ``k`` steps with
any inner ``torch.optim`` optimizer, merges and resamples.

RAC-LoRA is the special case ``p ∈ {0, 1}`` (always the same side sampled).

Theory (``γ ≤ 1/L``, ``λ = r/d`` the scale of ``E[H] = λ I`` — see
:mod:`~manifold_lowrank.optim.sketches`; for Bernoulli-LoRA
``λ_min = p·r/m + (1 − p)·r/n``):

* non-convex, GD: ``min_t E‖∇f(Wᵗ)‖² ≤ 2(f(W⁰) − f*)/(λ_min γ T)``;
* under the PL condition with constant ``μ``:
  ``E[f(Wᵗ) − f*] ≤ (1 − γ μ λ_min)ᵗ (f(W⁰) − f*)`` — a linear rate proportional to
  ``r/d``, to the *full-parameter* optimum (which plain LoRA cannot reach).

Randomness: every Bernoulli coin, sketch, PAGE coin and synthetic noise draw comes from
one ``torch.Generator`` (argument ``generator``), in a fixed order per step
(estimator draws, then the coin, then one sketch per parameter in parameter order).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from manifold_lowrank.linalg import check_finite
from manifold_lowrank.optim.estimators import GradientEstimator, make_estimator
from manifold_lowrank.optim.sketches import (
    SKETCH_DISTRIBUTIONS,
    apply_projection,
    range_basis,
    sample_sketch,
)

__all__ = [
    "BernoulliLoRA",
    "BernoulliLoRAChain",
    "RACLoRA",
    "RACLoRAChain",
    "projected_updates",
]

Closure = Callable[[], Any]


def _check_p(p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"p must be a float in [0, 1], got {type(p).__name__}")
    pv = float(p)
    if not (0.0 <= pv <= 1.0):
        raise ValueError(f"p must lie in [0, 1], got {p!r}")
    return pv


def _check_rank(rank: object) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    return rank


def _check_sketch(sketch: object) -> str:
    if sketch not in SKETCH_DISTRIBUTIONS:
        raise ValueError(f"sketch must be one of {SKETCH_DISTRIBUTIONS}, got {sketch!r}")
    return str(sketch)


def _default_generator() -> torch.Generator:
    """A CPU generator seeded from torch's global RNG (so ``torch.manual_seed`` fixes it)."""
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    return torch.Generator().manual_seed(seed)


def _matrix_shape(p: torch.Tensor) -> tuple[int, int]:
    """``(m, n)`` of a weight viewed as a matrix: Linear ``(m, n)``; Conv ``(out, in·k…)``."""
    if p.ndim < 2:
        raise ValueError(
            "params: BernoulliLoRA acts on matrix-shaped weights (ndim >= 2: Linear or "
            f"Conv weights), got a tensor of shape {tuple(p.shape)}"
        )
    return int(p.shape[0]), int(p.numel() // p.shape[0])


def _sketch_basis(
    d: int,
    r: int,
    distribution: str,
    generator: torch.Generator,
    like: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a ``d×r`` sketch and an orthonormal basis of its range (same dtype/device)."""
    b = sample_sketch(
        d, r, distribution=distribution, generator=generator, dtype=like.dtype, device=like.device
    )
    q = b if distribution == "haar" else range_basis(b)
    return b, q


def projected_updates(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    *,
    ranks: Sequence[int],
    coin: bool,
    sketch: str,
    generator: torch.Generator,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    r"""The Bernoulli-LoRA directions ``Ĥ G`` for a list of weights (one coin for all).

    For each weight (viewed as ``m×n``) draws one sketch, in order, from ``generator``:
    ``B ∈ R^{m×r}`` and returns ``H_B G`` if ``coin`` else ``A ∈ R^{n×r}`` (the
    input-side factor, stored transposed) and ``G H_A``.

    Returns
    -------
    updates : list of torch.Tensor
        ``Ĥ G`` shaped like each parameter.
    sketches : list of torch.Tensor
        The raw sketches (``(m, r)`` or ``(n, r)``).

    Notes
    -----
    Cost ``O(m n r + d r²)`` per weight; ``H`` is never formed.
    """
    side: Literal["output", "input"] = "output" if coin else "input"
    updates: list[torch.Tensor] = []
    sketches: list[torch.Tensor] = []
    for w, g, r in zip(params, grads, ranks):
        m, n = _matrix_shape(w)
        gm = g.reshape(m, n)
        b, q = _sketch_basis(m if coin else n, r, sketch, generator, gm)
        sketches.append(b)
        updates.append(apply_projection(q, gm, side=side).reshape(w.shape))
    return updates, sketches


class _ClosureOracle:
    """:class:`~manifold_lowrank.optim.estimators.GradientOracle` built from closures."""

    def __init__(
        self,
        params: list[torch.Tensor],
        state: dict,
        closure: Closure | None,
        full_closure: Closure | None,
    ) -> None:
        self.params = params
        self.state = state
        self.closure = closure
        self.full_closure = full_closure
        self.loss: Any = None
        self.full_loss: Any = None
        self._current: list[torch.Tensor] | None = None

    def _grads(self) -> list[torch.Tensor]:
        return [
            p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for p in self.params
        ]

    def _eval(self, fn: Closure) -> tuple[Any, list[torch.Tensor]]:
        for p in self.params:
            p.grad = None
        with torch.enable_grad():
            loss = fn()
        return loss, self._grads()

    def current(self) -> list[torch.Tensor]:
        if self._current is None:
            if self.closure is None:
                self._current = self._grads()
            else:
                self.loss, self._current = self._eval(self.closure)
        return [g.clone() for g in self._current]

    def previous(self) -> list[torch.Tensor]:
        if self.closure is None:
            raise ValueError("closure is required to evaluate the gradient at the previous point")
        prev = [self.state[p]["prev_point"] for p in self.params]
        saved = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                for p, q in zip(self.params, prev):
                    p.copy_(q)
            _, g = self._eval(self.closure)
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)
        return g

    def full(self) -> list[torch.Tensor]:
        if self.full_closure is None:
            raise ValueError("full_closure is required by this estimator (PAGE)")
        self.full_loss, g = self._eval(self.full_closure)
        return g


class BernoulliLoRA(torch.optim.Optimizer):
    r"""Bernoulli-LoRA in projected form: ``W ← W − γ Ĥ G`` on merged weights.

    At every step a coin ``c ~ Bernoulli(p)`` chooses the side: ``c = 1`` samples the
    output-side factor ``B`` (``m×r``) and applies ``H_B`` on the left (the input-side
    ``A`` is what a factor-form link would train); ``c = 0`` samples ``A`` (``r×n``) and
    applies ``H_A`` on the right. One step equals one link of the factor form with a
    single exact step on the quadratic upper bound (module docstring; tested as a
    float64 identity).

    Parameters
    ----------
    params : iterable of tensors or dicts
        Matrix-shaped weights: ``nn.Linear.weight`` ``(m, n)``, or ``nn.Conv2d.weight``
        ``(out, in, kh, kw)`` taken in matrix form ``(out, in·kh·kw)``. Parameter groups
        may override ``lr`` and ``rank``.
    lr : float or "polyak"
        Step size ``γ > 0`` (theory: ``γ ≤ 1/L``), or ``"polyak"`` for the Polyak step
        ``γᵗ = (f(Wᵗ) − f*)/‖Gᵗ‖²_F`` (convex non-smooth objectives; needs ``f_star``
        and a closure that returns the loss). Why this is the Polyak step for random
        projections: with ``E[H] = λI`` and ``H`` independent of ``Wᵗ``,
        ``E‖Wᵗ⁺¹ − W*‖² ≤ ‖Wᵗ − W*‖² − 2γλ(f(Wᵗ) − f*) + γ²λ‖Gᵗ‖²`` is minimised by
        that ``γ``, which gives a decrease of ``λ (f − f*)²/‖G‖²``.
    rank : int
        Sketch rank ``r ≥ 1``.
    p : float
        Probability ``p ∈ [0, 1]`` of sampling ``B`` (output side; the input-side factor
        is trained). ``p = 1`` / ``p = 0`` are RAC-LoRA. (The papers' MNIST code draws
        ``c`` as "train A", i.e. its ``prob`` is our ``1 − p``.)
    estimator : str or GradientEstimator
        ``"gd"``, ``"sgd"``, ``"page"``, ``"mvr"`` or an instance
        (:mod:`~manifold_lowrank.optim.estimators`).
    estimator_kwargs : dict, optional
        Passed to the estimator, e.g. ``{"prob": 0.1}`` (PAGE), ``{"beta": 0.1}`` (MVR),
        ``{"noise_std": 0.05}`` (SGD/MVR).
    sketch : {"gaussian", "haar"}
        Sketch distribution (both have ``E[H] = (r/d) I``).
    generator : torch.Generator, optional
        Source of every random draw. Default: a CPU generator seeded from torch's
        global RNG.
    f_star : float, optional
        Optimal value for ``lr="polyak"``.
    max_lr : float, optional
        Upper bound on the Polyak step.

    Notes
    -----
    ``step(closure=None, full_closure=None)``. GD/SGD use ``closure`` if given, else the
    ``.grad`` already stored. PAGE and MVR need ``closure`` — it is called a second time
    at ``Wᵗ⁻¹`` and must reuse its minibatch — and PAGE needs ``full_closure`` (the full
    gradient, the *same* function as ``closure`` averaged over all samples).
    Cost per step and weight: ``O(m n r)`` to apply ``Ĥ`` plus ``O(d r²)`` for the
    sketch basis; memory: the estimator's ``Gᵗ⁻¹`` and ``Wᵗ⁻¹`` (PAGE, MVR).
    ``last_step`` holds the coin, the sketches and the step size of the last step.
    ``state_dict()`` holds the estimator memory; the random stream is
    ``generator.get_state()`` / ``set_state()`` (save it too to resume bit-exactly).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float | Literal["polyak"] = 1e-3,
        *,
        rank: int,
        p: float = 0.5,
        estimator: str | GradientEstimator = "gd",
        estimator_kwargs: dict[str, float] | None = None,
        sketch: Literal["gaussian", "haar"] = "gaussian",
        generator: torch.Generator | None = None,
        f_star: float | None = None,
        max_lr: float | None = None,
    ) -> None:
        self._polyak = isinstance(lr, str)
        if self._polyak:
            if lr != "polyak":
                raise ValueError(f"lr must be a positive float or 'polyak', got {lr!r}")
            if f_star is None:
                raise ValueError("f_star is required when lr='polyak'")
            lr_value = float("nan")
        else:
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
                raise ValueError(f"lr must be a positive float or 'polyak', got {lr!r}")
            if not math.isfinite(float(lr)):
                raise ValueError(f"lr must be finite, got {lr!r}")
            lr_value = float(lr)
        if max_lr is not None and not (isinstance(max_lr, (int, float)) and max_lr > 0):
            raise ValueError(f"max_lr must be a positive float, got {max_lr!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.p = _check_p(p)
        self.sketch = _check_sketch(sketch)
        self.estimator = make_estimator(estimator, **(estimator_kwargs or {}))
        self.generator = generator if generator is not None else _default_generator()
        self.f_star = None if f_star is None else float(f_star)
        self.max_lr = None if max_lr is None else float(max_lr)
        defaults = {"lr": lr_value, "rank": _check_rank(rank)}
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_rank(group["rank"])
            if not self._polyak and not group["lr"] > 0:
                raise ValueError(f"lr must be a positive float, got {group['lr']!r}")
            for w in group["params"]:
                m, n = _matrix_shape(w)
                if self.sketch == "haar" and group["rank"] > min(m, n):
                    raise ValueError(
                        f"rank must be <= min(m, n) = {min(m, n)} for sketch='haar' "
                        f"(weight of shape {tuple(w.shape)}), got {group['rank']}"
                    )
        self.last_step: dict[str, Any] = {}

    def _draw_coin(self) -> bool:
        dev = self.generator.device
        return bool(torch.rand((), generator=self.generator, device=dev) < self.p)

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Closure | None = None, full_closure: Closure | None = None
    ) -> Any:
        """One Bernoulli-LoRA step; returns the closure's loss (``None`` without closure)."""
        est = self.estimator
        if est.needs_previous and closure is None:
            raise ValueError(f"closure is required by estimator {est.name!r}")
        if est.needs_full and full_closure is None:
            raise ValueError(f"full_closure is required by estimator {est.name!r}")
        if self._polyak and closure is None:
            raise ValueError("closure (returning the loss) is required when lr='polyak'")
        params = [w for g in self.param_groups for w in g["params"]]
        oracle = _ClosureOracle(params, self.state, closure, full_closure)
        have_memory = all("estimate" in self.state[w] for w in params)
        memory = [self.state[w]["estimate"] for w in params] if have_memory else None
        grads = est.estimate(oracle, memory, self.generator)

        loss = oracle.loss
        if loss is None and closure is not None:
            if oracle.full_loss is not None and not self._polyak:
                loss = oracle.full_loss
            else:
                oracle.current()
                loss = oracle.loss

        coin = self._draw_coin()
        ranks = [g["rank"] for g in self.param_groups for _ in g["params"]]
        updates, sketches = projected_updates(
            params, grads, ranks=ranks, coin=coin, sketch=self.sketch, generator=self.generator
        )
        side = "output" if coin else "input"
        lrs = [g["lr"] for g in self.param_groups for _ in g["params"]]
        if self._polyak:
            lv = loss.detach() if isinstance(loss, torch.Tensor) else loss
            gap = float(lv) - self.f_star  # type: ignore[operator]
            sq = sum(float((g.double() ** 2).sum()) for g in grads)
            gamma = max(gap, 0.0) / sq if sq > 0 else 0.0
            if self.max_lr is not None:
                gamma = min(gamma, self.max_lr)
            lrs = [gamma] * len(lrs)
        check_finite("BernoulliLoRA update", *updates)

        # Everything is computed: write the state and the weights.
        keep_memory = est.needs_previous or est.needs_full
        for w, g, u, lr in zip(params, grads, updates, lrs):
            st = self.state[w]
            if keep_memory:
                st["estimate"] = g
            if est.needs_previous:
                st["prev_point"] = w.detach().clone()
            st["step"] = st.get("step", 0) + 1
            w.sub_(u, alpha=lr)
        self.last_step = {"coin": coin, "side": side, "sketches": sketches, "lr": lrs}
        return loss


class RACLoRA(BernoulliLoRA):
    r"""RAC-LoRA in projected form: Bernoulli-LoRA that always samples the same side.

    ``side="output"`` (``p = 1``): ``W ← W − γ H_B G`` with a fresh output-side sketch
    ``B ∈ R^{m×r}`` each step (the paper's "B sampled, A trained", our ``U S`` frozen
    and ``Vᵀ`` trained). ``side="input"`` (``p = 0``): ``W ← W − γ G H_A``.
    All other arguments as :class:`BernoulliLoRA`.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float | Literal["polyak"] = 1e-3,
        *,
        rank: int,
        side: Literal["output", "input"] = "output",
        **kwargs: Any,
    ) -> None:
        if side not in ("output", "input"):
            raise ValueError(f"side must be 'output' or 'input', got {side!r}")
        if "p" in kwargs:
            raise TypeError("RACLoRA takes side=..., not p (use BernoulliLoRA for 0 < p < 1)")
        super().__init__(params, lr, rank=rank, p=1.0 if side == "output" else 0.0, **kwargs)
        self.side = side


def _matrix_adapters(adapters: nn.Module | Iterable[nn.Module]) -> list[nn.Module]:
    from manifold_lowrank.nn import LowRankAdapter, LowRankConv2dAdapter

    kinds = (LowRankAdapter, LowRankConv2dAdapter)
    if isinstance(adapters, kinds):
        found: list[nn.Module] = [adapters]
    elif isinstance(adapters, nn.Module):
        found = [mod for mod in adapters.modules() if isinstance(mod, kinds)]
        others = [
            type(mod).__name__
            for mod in adapters.modules()
            if type(mod).__name__ == "TuckerConv2dAdapter"
        ]
        if others:
            raise TypeError(
                "adapters: the factor form supports matrix adapters (LowRankAdapter, "
                "LowRankConv2dAdapter), found a TuckerConv2dAdapter"
            )
    else:
        found = list(adapters)
        for mod in found:
            if not isinstance(mod, kinds):
                raise TypeError(
                    "adapters must be LowRankAdapter / LowRankConv2dAdapter modules (or a "
                    f"model containing them), got {type(mod).__name__}"
                )
    if not found:
        raise ValueError("adapters: no LowRankAdapter / LowRankConv2dAdapter found")
    for mod in found:
        if mod.rank < 1:  # type: ignore[operator]
            raise ValueError(f"adapters must have rank >= 1, got an adapter of rank {mod.rank}")
    return found


class BernoulliLoRAChain:
    r"""Bernoulli-LoRA in factor form over the library's matrix adapters.

    Each *link*: merge the current ``ΔW`` into the base weight, draw one coin
    ``c ~ Bernoulli(p)`` and for every adapter (``ΔW = s U S Vᵀ``, rank ``r``):

    * ``c = 1`` (B sampled): ``U ← B`` (output side, ``m×r``, frozen), ``S ← I`` (frozen),
      ``V ← 0`` trainable — ``Vᵀ`` is the papers' trained ``A`` (``r×n``);
    * ``c = 0`` (A sampled): ``V ← Aᵀ`` (input side, ``n×r``, frozen), ``S ← I``,
      ``U ← 0`` trainable — ``U`` is the papers' trained ``B``.

    Then the inner optimizer trains the free factor for ``link_steps`` calls of
    :meth:`step` (or until :meth:`next_link` is called, e.g. once per epoch).

    With ``frozen="basis"`` (default) the frozen factor is the orthonormal basis of the
    sketch's range (``range(B)`` is all that matters for the reachable set
    ``{W + BÂ}``); then one inner SGD step of size ``η`` with ``scaling = s`` changes the
    weight by exactly ``−η s² H_B ∇_W f`` (``V ← −η s ∇_Wfᵀ U`` and ``ΔW = s U Vᵀ``), i.e.
    a link with one step is one step of :class:`BernoulliLoRA` with ``γ = η s²``. With
    ``frozen="raw"`` the sketch itself is frozen (the papers' MNIST code): the first step
    is then ``−η s² B Bᵀ ∇f``.

    Parameters
    ----------
    adapters : nn.Module or iterable of adapters
        :class:`~manifold_lowrank.nn.LowRankAdapter` /
        :class:`~manifold_lowrank.nn.LowRankConv2dAdapter` modules, or a model holding
        them (found with ``.modules()``). Their rank is the sketch rank; their
        ``scaling`` is kept.
    optimizer_factory : callable
        ``params ↦ torch.optim.Optimizer`` (e.g. ``lambda ps: torch.optim.AdamW(ps,
        lr=2e-4)``); it receives every adapter's ``U`` and ``V`` (the frozen ones have
        ``requires_grad=False`` and no gradient, so they are skipped).
    p : float
        Probability in ``[0, 1]`` of sampling the output-side factor.
    link_steps : int, optional
        Inner steps per link; ``None``: links end only when :meth:`next_link` is called.
    sketch : {"gaussian", "haar"}
    frozen : {"basis", "raw"}
    reset_inner_state : bool
        Clear the inner optimizer's state at each link (default ``True``; the papers'
        code keeps the AdamW moments, ``False``).
    generator : torch.Generator, optional
        Source of the coins and sketches (default: seeded from torch's global RNG).

    Attributes
    ----------
    inner : torch.optim.Optimizer
        The inner optimizer (attach LR schedulers to it).
    links : int
        Number of links started.
    side : {"output", "input"}
        Side sampled in the current link.
    """

    def __init__(
        self,
        adapters: nn.Module | Iterable[nn.Module],
        optimizer_factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
        *,
        p: float = 0.5,
        link_steps: int | None = None,
        sketch: Literal["gaussian", "haar"] = "gaussian",
        frozen: Literal["basis", "raw"] = "basis",
        reset_inner_state: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        self.p = _check_p(p)
        self.sketch = _check_sketch(sketch)
        if frozen not in ("basis", "raw"):
            raise ValueError(f"frozen must be 'basis' or 'raw', got {frozen!r}")
        if link_steps is not None and (
            isinstance(link_steps, bool) or not isinstance(link_steps, int) or link_steps < 1
        ):
            raise ValueError(f"link_steps must be a positive int or None, got {link_steps!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.adapters = _matrix_adapters(adapters)
        if self.sketch == "haar":
            for mod in self.adapters:
                m, n = mod.matrix_shape  # type: ignore[attr-defined]
                if mod.rank > min(m, n):  # type: ignore[operator]
                    raise ValueError("adapter rank must be <= min(m, n) for sketch='haar'")
        self.frozen = frozen
        self.link_steps = link_steps
        self.reset_inner_state = bool(reset_inner_state)
        self.generator = generator if generator is not None else _default_generator()
        params: list[nn.Parameter] = []
        for mod in self.adapters:
            u, s, v = mod.factors()  # type: ignore[attr-defined]
            s.requires_grad_(False)
            params += [u, v]
        self.inner = optimizer_factory(params)
        if not isinstance(self.inner, torch.optim.Optimizer):
            raise TypeError("optimizer_factory must return a torch.optim.Optimizer")
        self.links = 0
        self.side: Literal["output", "input"] = "output"
        self._steps_in_link = 0
        self.next_link()

    @torch.no_grad()
    def next_link(self) -> None:
        """Merge ``s ΔW`` into every base weight, draw a coin and fresh sketches, restart.

        Cost per adapter ``O(m n r)`` (merge) plus ``O(d r²)`` (sketch basis).
        """
        from manifold_lowrank.manifolds.types import FixedRankPoint

        coin = bool(torch.rand((), generator=self.generator) < self.p)
        new_points = []
        for mod in self.adapters:
            u, s, v = mod.factors()  # type: ignore[attr-defined]
            m, n = mod.matrix_shape  # type: ignore[attr-defined]
            r = mod.rank  # type: ignore[attr-defined]
            b, q = _sketch_basis(m if coin else n, r, self.sketch, self.generator, u)
            frozen = b if self.frozen == "raw" else q
            if frozen.shape[1] < r:  # rank-deficient sketch (probability zero): pad
                frozen = torch.cat(
                    [frozen, frozen.new_zeros(frozen.shape[0], r - frozen.shape[1])], 1
                )
            eye = torch.eye(r, dtype=u.dtype, device=u.device)
            if coin:
                pt = FixedRankPoint(frozen, eye, v.new_zeros(n, r))
            else:
                pt = FixedRankPoint(u.new_zeros(m, r), eye, frozen)
            new_points.append(pt)
        for mod, pt in zip(self.adapters, new_points):
            if not mod.merged:  # type: ignore[attr-defined]
                mod.merge()  # type: ignore[attr-defined]
            mod.merged = False  # ΔW now lives in the base weight; start from ΔW = 0
            mod.set_point(pt)  # type: ignore[attr-defined]
            u, s, v = mod.factors()  # type: ignore[attr-defined]
            s.requires_grad_(False)
            u.requires_grad_(not coin)
            v.requires_grad_(coin)
        if self.reset_inner_state:
            self.inner.state.clear()
        self.side = "output" if coin else "input"
        self.links += 1
        self._steps_in_link = 0

    def step(self, closure: Closure | None = None) -> Any:
        """One inner step; starts the next link after ``link_steps`` steps."""
        loss = self.inner.step(closure) if closure is not None else self.inner.step()
        self._steps_in_link += 1
        if self.link_steps is not None and self._steps_in_link >= self.link_steps:
            self.next_link()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the inner optimizer's gradients."""
        self.inner.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def merge(self) -> None:
        """Merge the current link into the base weights and leave ``ΔW = 0`` (same sketch).

        Call at the end of training to obtain plain weights (the adapters then add 0).
        """
        for mod in self.adapters:
            if not mod.merged:  # type: ignore[attr-defined]
                mod.merge()  # type: ignore[attr-defined]
            mod.merged = False
            u, _s, v = mod.factors()  # type: ignore[attr-defined]
            (v if self.side == "output" else u).zero_()


class RACLoRAChain(BernoulliLoRAChain):
    r"""RAC-LoRA in factor form: :class:`BernoulliLoRAChain` with ``p = 1``
    (``side="output"``: ``B`` sampled, ``A`` trained) or ``p = 0`` (``side="input"``)."""

    def __init__(
        self,
        adapters: nn.Module | Iterable[nn.Module],
        optimizer_factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
        *,
        side: Literal["output", "input"] = "output",
        **kwargs: Any,
    ) -> None:
        if side not in ("output", "input"):
            raise ValueError(f"side must be 'output' or 'input', got {side!r}")
        if "p" in kwargs:
            raise TypeError("RACLoRAChain takes side=..., not p")
        super().__init__(adapters, optimizer_factory, p=1.0 if side == "output" else 0.0, **kwargs)
