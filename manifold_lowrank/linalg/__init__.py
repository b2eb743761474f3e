"""Layer 1: dense linear-algebra kernels used by every other layer (torch only).

Public names
------------
:func:`qr_signfix`, :func:`orthonormalize`, :func:`augment_basis`
    Sign-fixed (unique) thin QR and orthonormal basis augmentation.
:class:`RankRule`, :func:`truncated_svd`, :func:`select_rank`
    Truncated SVD with an exactly documented rank rule.
:func:`check_finite`
    Raise a :class:`FloatingPointError` naming the argument that holds NaN/Inf.
"""

from manifold_lowrank.linalg.checks import all_finite, check_finite
from manifold_lowrank.linalg.qr import augment_basis, orthonormalize, qr_signfix
from manifold_lowrank.linalg.rank_rule import RankRule, select_rank
from manifold_lowrank.linalg.svd import truncated_svd

__all__ = [
    "RankRule",
    "all_finite",
    "augment_basis",
    "check_finite",
    "orthonormalize",
    "qr_signfix",
    "select_rank",
    "truncated_svd",
]
