r"""Reference LoRA variants on a :class:`~manifold_lowrank.problems.MatrixProblem`.

Plain gradient descent on the factors of ``W = W₀ + B A`` (``B ∈ R^{m×r}`` output side,
``A ∈ R^{r×n}`` input side; the papers' ``x A B`` mapped to ``W ∈ R^{m×n}``), used as
baselines against RAC-LoRA / Bernoulli-LoRA in the counterexample and the benchmarks:

``"lora"``
    both factors trained, never merged (``B`` Gaussian, ``A = 0`` at the start).
``"cola"``
    chain of LoRA: both factors trained; every ``merge_every`` steps ``W₀ ← W₀ + BA``
    and the factors are re-initialised (``B`` Gaussian, ``A = 0``).
``"asymm"``
    asymmetric LoRA: ``B`` frozen at the orthonormal basis of one Gaussian sketch, ``A``
    trained, never merged and never resampled. (RAC-LoRA is the same with a resample and
    merge after every link.)

Gradients: ``∇_B = ∇f(W) Aᵀ``, ``∇_A = Bᵀ ∇f(W)`` (chain rule); simultaneous updates.
"""

from __future__ import annotations

from typing import Literal

import torch

from manifold_lowrank.linalg import orthonormalize
from manifold_lowrank.problems.base import MatrixProblem

__all__ = ["run_lora_baseline"]


def run_lora_baseline(
    problem: MatrixProblem,
    W0: torch.Tensor,
    *,
    method: Literal["lora", "cola", "asymm"],
    rank: int,
    lr: float,
    steps: int,
    merge_every: int = 1,
    generator: torch.Generator | None = None,
    blowup: float = 1e12,
) -> tuple[torch.Tensor, list[float]]:
    """Run ``steps`` GD steps of a LoRA baseline; return the final ``W`` and ``f(Wᵗ)``.

    The run stops early (history padded with ``inf``) once ``f`` exceeds ``blowup`` or is
    not finite: that is a divergence.
    """
    if method not in ("lora", "cola", "asymm"):
        raise ValueError(f"method must be 'lora', 'cola' or 'asymm', got {method!r}")
    m, n = problem.shape
    dt = W0.dtype

    def fresh_b() -> torch.Tensor:
        b = torch.randn(m, rank, generator=generator, dtype=dt)
        return orthonormalize(b) if method == "asymm" else b

    base = W0.clone()
    B = fresh_b()
    A = torch.zeros(rank, n, dtype=dt)
    hist: list[float] = []
    for t in range(steps):
        W = base + B @ A
        f = float(problem.loss(W))
        if not (f == f) or abs(f) > blowup:
            hist.extend([float("inf")] * (steps - t))
            return W, hist
        hist.append(f)
        G = problem.grad(W)
        gA = B.T @ G
        if method == "asymm":
            A = A - lr * gA
        else:
            gB = G @ A.T
            A, B = A - lr * gA, B - lr * gB
        if method == "cola" and (t + 1) % merge_every == 0:
            base = base + B @ A
            B = fresh_b()
            A = torch.zeros(rank, n, dtype=dt)
    W = base + B @ A
    return W, hist
