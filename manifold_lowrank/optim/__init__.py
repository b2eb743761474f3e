"""Layer 5: optimizers (``torch.optim.Optimizer`` subclasses).

Generic Riemannian optimizers for any geoopt manifold (including
:class:`~manifold_lowrank.manifolds.FixedRank` and :class:`~manifold_lowrank.manifolds.Tucker`):
:class:`RiemannianSGD`, :class:`RiemannianAdam`. Method-specific optimizers are added below.

Randomized LoRA chains (Bernoulli-LoRA, RAC-LoRA): :class:`BernoulliLoRA`, :class:`RACLoRA`
(projected form on merged weights), :class:`BernoulliLoRAChain`, :class:`RACLoRAChain`
(factor form over the matrix adapters); gradient estimators (GD, SGD, PAGE, MVR; named
``estimator="..."``) in :mod:`manifold_lowrank.optim.estimators`, sketches in
:mod:`manifold_lowrank.optim.sketches`.

dEBORA (bilevel rank selection): :class:`DEBORA`, :class:`DEBORATrainer`,
:func:`split_bilevel`; the away-step Frank–Wolfe on the perturbed simplex in
:mod:`manifold_lowrank.optim.frank_wolfe`.

DLRT (rank-adaptive training from scratch by the augmented BUG / parallel / closure-based
BUG integrators, with SGD, momentum or Adam on the coefficients): :class:`DLRT`.
"""

from manifold_lowrank.optim.bernoulli import (
    BernoulliLoRA,
    BernoulliLoRAChain,
    RACLoRA,
    RACLoRAChain,
)
from manifold_lowrank.optim.debora import DEBORA, DEBORATrainer, split_bilevel
from manifold_lowrank.optim.dlrt import DLRT
from manifold_lowrank.optim.estimators import GradientEstimator
from manifold_lowrank.optim.geolora import GeoLoRA
from manifold_lowrank.optim.lowrank_base import LowRankOptimizer
from manifold_lowrank.optim.riemannian import RiemannianAdam, RiemannianSGD

__all__ = [
    "DEBORA",
    "DLRT",
    "BernoulliLoRA",
    "BernoulliLoRAChain",
    "DEBORATrainer",
    "GeoLoRA",
    "GradientEstimator",
    "LowRankOptimizer",
    "RACLoRA",
    "RACLoRAChain",
    "RiemannianAdam",
    "RiemannianSGD",
    "split_bilevel",
]
