r"""Layer 3: dynamical low-rank integrators (pure functions; no modules, no state).

Matrix integrators (:mod:`~manifold_lowrank.integrators.matrix`), for ``Ẏ = −G(Y)``
on ``Y = U S Vᵀ``:

:func:`ksl`
    Lubich–Oseledets projector splitting (K → S backwards → L), fixed rank.
:func:`bug`
    Fixed-rank basis-update & Galerkin (Ceruti–Lubich).
:func:`augmented_bug`
    Rank-adaptive BUG (Ceruti–Kusch–Lubich); building blocks :func:`augment`,
    :func:`galerkin_step`, :func:`truncate`.
:func:`parallel`
    Rank-adaptive parallel integrator (Ceruti–Kusch–Lubich; GeoLoRA's step).

Tucker integrators (:mod:`~manifold_lowrank.integrators.tucker`):
:func:`tucker_bug`, :func:`tucker_augmented_bug`, :func:`tucker_parallel`,
:func:`tucker_augment`, :func:`tucker_galerkin_step`, :func:`tucker_truncate`.

Gradient oracles (:mod:`~manifold_lowrank.integrators.oracles`):
:class:`DenseOracle`, :class:`FactoredOracle`, :class:`ProjectionOracle`,
:class:`FrozenTangentOracle`, :class:`TuckerFrozenTangentOracle`.

Rank budgets across layers: :class:`GlobalBudget`, :func:`allocate_ranks`.

Drift removal (:mod:`~manifold_lowrank.integrators.orthonormality`):
:func:`reorthonormalize`, :func:`reorthonormalize_tucker`.

A dense high-order reference solver for tests lives in
:mod:`manifold_lowrank.integrators.reference` (not imported here).
"""

from manifold_lowrank.integrators.budget import GlobalBudget, allocate_ranks, parameter_count
from manifold_lowrank.integrators.matrix import (
    AugmentResult,
    StepResult,
    augment,
    augmented_bug,
    bug,
    galerkin_step,
    ksl,
    parallel,
    truncate,
)
from manifold_lowrank.integrators.oracles import (
    DenseOracle,
    FactoredOracle,
    FrozenTangentOracle,
    GradientOracle,
    ProjectionOracle,
    TuckerFrozenTangentOracle,
    as_oracle,
)
from manifold_lowrank.integrators.orthonormality import reorthonormalize, reorthonormalize_tucker
from manifold_lowrank.integrators.tucker import (
    TuckerAugmentResult,
    TuckerStepResult,
    tucker_augment,
    tucker_augmented_bug,
    tucker_bug,
    tucker_galerkin_step,
    tucker_parallel,
    tucker_truncate,
)

__all__ = [
    "AugmentResult",
    "DenseOracle",
    "FactoredOracle",
    "FrozenTangentOracle",
    "GlobalBudget",
    "GradientOracle",
    "ProjectionOracle",
    "StepResult",
    "TuckerAugmentResult",
    "TuckerFrozenTangentOracle",
    "TuckerStepResult",
    "allocate_ranks",
    "as_oracle",
    "augment",
    "augmented_bug",
    "bug",
    "galerkin_step",
    "ksl",
    "parallel",
    "parameter_count",
    "reorthonormalize",
    "reorthonormalize_tucker",
    "truncate",
    "tucker_augment",
    "tucker_augmented_bug",
    "tucker_bug",
    "tucker_galerkin_step",
    "tucker_parallel",
    "tucker_truncate",
]
