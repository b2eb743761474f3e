"""Public conformance kit: check that a manifold satisfies the Riemannian identities.

Use :func:`check_manifold` on any geoopt-style manifold (this library's
:class:`~manifold_lowrank.manifolds.FixedRank` and
:class:`~manifold_lowrank.manifolds.Tucker`, geoopt's own manifolds, or your own)::

    from manifold_lowrank.testing import check_manifold
    report = check_manifold(FixedRank(50, 30, 5))   # raises AssertionError on failure
    print(report)

Sits beside :mod:`manifold_lowrank.manifolds` in the layer order and imports only it,
:mod:`manifold_lowrank.linalg`, torch and geoopt.
"""

from manifold_lowrank.testing.conformance import (
    CHECKS,
    CheckResult,
    ConformanceReport,
    check_manifold,
)

__all__ = ["CHECKS", "CheckResult", "ConformanceReport", "check_manifold"]
