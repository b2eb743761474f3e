r"""Gradient estimators ``Gᵗ`` for Bernoulli-LoRA (GD, SGD, PAGE, MVR).

Every Bernoulli-LoRA variant is ``Wᵗ⁺¹ = Wᵗ − γ Hᵗ Gᵗ``; the variants differ only in
how ``Gᵗ ≈ ∇f(Wᵗ)`` is formed. All estimators share one interface:

``estimator.estimate(oracle, memory, generator) -> list[Tensor]``

where ``oracle`` gives gradients during the current step (a :class:`GradientOracle`),
``memory`` is the previous estimate ``Gᵗ⁻¹`` (``None`` at ``t = 0``) and ``generator``
supplies every random draw (PAGE coins, synthetic noise). Estimators hold no state of
their own: the optimizer keeps ``Gᵗ⁻¹`` (and ``Wᵗ⁻¹`` when needed) in its ``state``.

Formulas (``g(W; ξ)`` a stochastic gradient on the sample ``ξᵗ`` of this step)

=========  ================================================================================
GD         ``Gᵗ = ∇f(Wᵗ)`` (the closure computes the full gradient)
SGD        ``Gᵗ = g(Wᵗ; ξᵗ) + σ ζᵗ``, ``ζᵗ ~ N(0, I)`` optional synthetic noise
PAGE       ``Gᵗ = ∇f(Wᵗ)`` with probability ``q`` (and at ``t = 0``), otherwise
           ``Gᵗ = Gᵗ⁻¹ + g(Wᵗ; ξᵗ) − g(Wᵗ⁻¹; ξᵗ)``
MVR        ``Gᵗ = g(Wᵗ; ξᵗ) + (1 − β)(Gᵗ⁻¹ − g(Wᵗ⁻¹; ξᵗ))`` (``G⁰ = g(W⁰; ξ⁰)``), with the
           same sample *and* the same synthetic noise draw in both evaluations
=========  ================================================================================

One consistent oracle: the papers' linear-regression code used a full gradient that did
not match its loss (``methods.md`` §4.4). Here the full and the stochastic gradients
must be gradients of the same function — the problem suite in
:mod:`manifold_lowrank.problems` guarantees it (and tests it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Protocol

import torch

__all__ = [
    "ESTIMATORS",
    "GD",
    "MVR",
    "PAGE",
    "SGD",
    "GradientEstimator",
    "GradientOracle",
    "make_estimator",
]


class GradientOracle(Protocol):
    """Gradients available inside one optimizer step.

    All three return one tensor per parameter, shaped like the parameter.
    """

    def current(self) -> list[torch.Tensor]:
        """``g(Wᵗ; ξᵗ)``: the stochastic (or full) gradient at the current point."""
        ...

    def previous(self) -> list[torch.Tensor]:
        """``g(Wᵗ⁻¹; ξᵗ)``: the *same* sample evaluated at the previous point."""
        ...

    def full(self) -> list[torch.Tensor]:
        """``∇f(Wᵗ)``: the full gradient at the current point."""
        ...


def _check_prob(value: object, name: str, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    v = float(value)
    lo_ok = v >= 0.0 if allow_zero else v > 0.0
    if not (lo_ok and v <= 1.0):
        rng = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must lie in {rng}, got {value!r}")
    return v


def _check_noise(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"noise_std must be a float, got {type(value).__name__}")
    v = float(value)
    if not v >= 0.0 or v == float("inf"):
        raise ValueError(f"noise_std must be a finite float >= 0, got {value!r}")
    return v


def _noise_like(
    tensors: list[torch.Tensor], std: float, generator: torch.Generator | None
) -> list[torch.Tensor]:
    """One draw ``σ ζ``, ``ζ ~ N(0, I)``, per tensor; drawn on the generator's device."""
    dev = generator.device if generator is not None else torch.device("cpu")
    return [
        std * torch.randn(t.shape, generator=generator, dtype=t.dtype, device=dev).to(t.device)
        for t in tensors
    ]


class GradientEstimator(ABC):
    """Base class: a rule ``(oracle, Gᵗ⁻¹, generator) ↦ Gᵗ``.

    Attributes
    ----------
    name : str
        Short name (``"gd"``, ``"sgd"``, ``"page"``, ``"mvr"``).
    needs_previous : bool
        Whether :meth:`estimate` may call ``oracle.previous()`` (the optimizer then keeps
        a copy of ``Wᵗ⁻¹`` and the closure must reuse its sample when called twice).
    needs_full : bool
        Whether :meth:`estimate` may call ``oracle.full()``.
    """

    name: ClassVar[str] = ""
    needs_previous: ClassVar[bool] = False
    needs_full: ClassVar[bool] = False

    @abstractmethod
    def estimate(
        self,
        oracle: GradientOracle,
        memory: list[torch.Tensor] | None,
        generator: torch.Generator | None,
    ) -> list[torch.Tensor]:
        """Return ``Gᵗ`` (new tensors; ``memory`` is not modified)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GD(GradientEstimator):
    r"""``Gᵗ = ∇f(Wᵗ)``: the closure (or ``.grad``) is the exact gradient."""

    name = "gd"

    def estimate(self, oracle, memory, generator):
        return oracle.current()


class SGD(GradientEstimator):
    r"""``Gᵗ = g(Wᵗ; ξᵗ) + σ ζᵗ``.

    Parameters
    ----------
    noise_std : float
        ``σ ≥ 0``. ``σ > 0`` adds synthetic ``N(0, σ² I)`` noise drawn from the
        optimizer's generator (the papers' "synthetic SGD", whose variance is exactly
        ``σ² · #entries``); ``σ = 0`` (default) uses the closure's minibatch gradient
        as it is.
    """

    name = "sgd"

    def __init__(self, noise_std: float = 0.0) -> None:
        self.noise_std = _check_noise(noise_std)

    def estimate(self, oracle, memory, generator):
        g = oracle.current()
        if self.noise_std > 0.0:
            g = [gi + zi for gi, zi in zip(g, _noise_like(g, self.noise_std, generator))]
        return g

    def __repr__(self) -> str:
        return f"SGD(noise_std={self.noise_std})"


class PAGE(GradientEstimator):
    r"""PAGE (Li et al. 2021): probabilistic switch between a full gradient and a
    recursive minibatch correction.

    ``Gᵗ = ∇f(Wᵗ)`` with probability ``q`` (always at ``t = 0``), else
    ``Gᵗ = Gᵗ⁻¹ + g(Wᵗ; ξᵗ) − g(Wᵗ⁻¹; ξᵗ)``. The coin comes from the generator.

    Parameters
    ----------
    prob : float
        Switch probability ``q ∈ (0, 1]``; the usual choice is ``b/(b + N)`` for batch
        ``b`` and ``N`` samples. ``q = 1`` is GD.

    Notes
    -----
    Expected cost per step: ``q`` full gradients plus ``2(1 − q)`` minibatch gradients.
    """

    name = "page"
    needs_previous = True
    needs_full = True

    def __init__(self, prob: float) -> None:
        self.prob = _check_prob(prob, "prob", allow_zero=False)

    def estimate(self, oracle, memory, generator):
        dev = generator.device if generator is not None else torch.device("cpu")
        u = float(torch.rand((), generator=generator, device=dev))
        if memory is None or u < self.prob:
            return oracle.full()
        cur = oracle.current()
        prev = oracle.previous()
        return [m + c - p for m, c, p in zip(memory, cur, prev)]

    def __repr__(self) -> str:
        return f"PAGE(prob={self.prob})"


class MVR(GradientEstimator):
    r"""Momentum variance reduction (STORM; Cutkosky & Orabona 2019).

    ``Gᵗ = g(Wᵗ; ξᵗ) + (1 − β)(Gᵗ⁻¹ − g(Wᵗ⁻¹; ξᵗ))``, ``G⁰ = g(W⁰; ξ⁰)``.

    Parameters
    ----------
    beta : float
        Momentum ``β ∈ (0, 1]``; ``β = 1`` is SGD.
    noise_std : float
        Optional synthetic noise ``σ``; the same draw ``σ ζᵗ`` is added to both
        ``g(Wᵗ; ξᵗ)`` and ``g(Wᵗ⁻¹; ξᵗ)`` (it is part of the sample ``ξᵗ``).
    """

    name = "mvr"
    needs_previous = True

    def __init__(self, beta: float, noise_std: float = 0.0) -> None:
        self.beta = _check_prob(beta, "beta", allow_zero=False)
        self.noise_std = _check_noise(noise_std)

    def estimate(self, oracle, memory, generator):
        cur = oracle.current()
        noise = _noise_like(cur, self.noise_std, generator) if self.noise_std > 0 else None
        if noise is not None:
            cur = [c + z for c, z in zip(cur, noise)]
        if memory is None:
            return cur
        prev = oracle.previous()
        if noise is not None:
            prev = [p + z for p, z in zip(prev, noise)]
        a = 1.0 - self.beta
        return [c + a * (m - p) for c, m, p in zip(cur, memory, prev)]

    def __repr__(self) -> str:
        return f"MVR(beta={self.beta}, noise_std={self.noise_std})"


ESTIMATORS: dict[str, type[GradientEstimator]] = {
    "gd": GD,
    "sgd": SGD,
    "page": PAGE,
    "mvr": MVR,
}


def make_estimator(estimator: str | GradientEstimator, **kwargs: float) -> GradientEstimator:
    """Build an estimator from its name (``"gd"``, ``"sgd"``, ``"page"``, ``"mvr"``) and
    keyword arguments, or return an instance unchanged.

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid ones) or out-of-range parameter.
    TypeError
        Neither a name nor a :class:`GradientEstimator`, or an unexpected keyword.
    """
    if isinstance(estimator, GradientEstimator):
        if kwargs:
            raise TypeError(
                "estimator_kwargs must be empty when estimator is an instance, "
                f"got {sorted(kwargs)}"
            )
        return estimator
    if not isinstance(estimator, str):
        raise TypeError(
            f"estimator must be a name or a GradientEstimator, got {type(estimator).__name__}"
        )
    key = estimator.lower()
    if key not in ESTIMATORS:
        raise ValueError(
            f"estimator must be one of {sorted(ESTIMATORS)} (or a GradientEstimator); "
            f"got {estimator!r}. The distributed QGD, MARINA and EF21 live in "
            "manifold_lowrank.distributed.FederatedBernoulliLoRA"
        )
    cls = ESTIMATORS[key]
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise TypeError(f"bad estimator_kwargs for estimator {key!r}: {exc}") from None
