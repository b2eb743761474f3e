"""Layer 2: low-rank manifolds (geoopt-compatible) and their factored types."""

from manifold_lowrank.manifolds.types import (
    FixedRankPoint,
    FixedRankTangent,
    ProjectedGradients,
    TuckerPoint,
    TuckerProjectedGradients,
    TuckerTangent,
)

__all__ = [
    "FixedRankPoint",
    "FixedRankTangent",
    "ProjectedGradients",
    "TuckerPoint",
    "TuckerProjectedGradients",
    "TuckerTangent",
]

# The manifold classes are appended below by their modules' owners:
#   from manifold_lowrank.manifolds.base import LowRankManifold
#   from manifold_lowrank.manifolds.fixed_rank import FixedRank
#   from manifold_lowrank.manifolds.tucker import Tucker

from manifold_lowrank.manifolds.base import LowRankManifold
from manifold_lowrank.manifolds.fixed_rank import FixedRank

__all__ += ["FixedRank", "LowRankManifold"]

from manifold_lowrank.manifolds.tucker import Tucker  # noqa: E402

__all__ += ["Tucker"]
