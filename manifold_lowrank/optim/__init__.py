"""Layer 5: optimizers (``torch.optim.Optimizer`` subclasses).

Generic Riemannian optimizers for any geoopt manifold (including
:class:`~manifold_lowrank.manifolds.FixedRank` and :class:`~manifold_lowrank.manifolds.Tucker`):
:class:`RiemannianSGD`, :class:`RiemannianAdam`. Method-specific optimizers are added below.
"""

from manifold_lowrank.optim.geolora import GeoLoRA
from manifold_lowrank.optim.lowrank_base import LowRankOptimizer
from manifold_lowrank.optim.riemannian import RiemannianAdam, RiemannianSGD

__all__ = [
    "GeoLoRA",
    "LowRankOptimizer",
    "RiemannianAdam",
    "RiemannianSGD",
]
