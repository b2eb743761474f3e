"""Sign-fixed thin QR, orthonormalisation and basis augmentation.

The thin QR factorisation ``A = Q R`` of a full-column-rank ``A`` is unique once the
diagonal of ``R`` is required to be positive. LAPACK's Householder QR does not impose
this, so we fix signs afterwards. A unique QR makes every retraction and integrator a
*function* of its input (no gauge jumps between two calls on the same data), which is
what lets optimizer state be transported consistently.
"""

from __future__ import annotations

import torch

__all__ = ["augment_basis", "orthonormalize", "qr_signfix"]


def qr_signfix(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Thin QR with non-negative diagonal of ``R``.

    Computes ``A = Q R`` with ``Q ∈ R^{m×k}`` orthonormal, ``R ∈ R^{k×k}`` upper
    triangular and ``diag(R) ≥ 0`` (``k = min(m, n)``); a zero diagonal entry is
    given the sign ``+1``. Batched over leading dimensions.

    Parameters
    ----------
    a : torch.Tensor
        ``(..., m, n)`` matrix.

    Returns
    -------
    q, r : torch.Tensor
        ``(..., m, k)`` and ``(..., k, n)``.

    Notes
    -----
    Cost ``O(m n k)`` (Householder, LAPACK ``geqrf``/``orgqr``).
    """
    q, r = torch.linalg.qr(a, mode="reduced")
    d = torch.diagonal(r, dim1=-2, dim2=-1)
    sign = torch.where(d < 0, -1.0, 1.0).to(d.dtype)
    q = q * sign.unsqueeze(-2)
    r = r * sign.unsqueeze(-1)
    return q, r


def orthonormalize(a: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis ``Q`` of the column space of ``a`` (sign-fixed thin QR).

    Parameters
    ----------
    a : torch.Tensor
        ``(..., m, n)`` with ``m ≥ n``.

    Returns
    -------
    torch.Tensor
        ``(..., m, n)`` with ``Qᵀ Q = I``. Cost ``O(m n²)``.
    """
    return qr_signfix(a)[0]


def augment_basis(u: torch.Tensor, x: torch.Tensor, *, method: str = "householder") -> torch.Tensor:
    r"""Orthonormal directions ``Q`` spanning ``range([U X])`` outside ``range(U)``.

    Returns ``Q ∈ R^{m×k}`` (``k = x.shape[-1]``) with ``Qᵀ Q = I`` and ``Uᵀ Q = 0``
    such that ``range([U Q]) ⊇ range([U X])``. ``U`` must have orthonormal columns.
    When ``[U X]`` is rank deficient the extra columns of ``Q`` are still orthonormal
    and orthogonal to ``U`` (they complete the basis); they carry zero coefficients
    in any Galerkin projection, so integrators remain exact.

    Parameters
    ----------
    u : torch.Tensor
        ``(..., m, r)`` orthonormal basis.
    x : torch.Tensor
        ``(..., m, k)`` new directions (a gradient block such as ``G V``).
    method : {"householder", "cgs2"}
        ``"householder"`` (default): sign-fixed Householder QR of ``[U X]`` and take
        the last ``k`` columns; orthogonality to ``U`` is at machine precision in all
        cases. Cost ``O(m (r+k)²)``.
        ``"cgs2"``: classical Gram–Schmidt against ``U`` applied twice, then a thin
        QR of the ``m×k`` residual, then one more projection and QR. Cost
        ``O(m r k + m k²)`` — cheaper when ``k ≪ r`` — and orthogonal to ``U`` to
        ``O(ε)`` unless ``X`` lies within ``O(ε)`` of ``range(U)``.

    Returns
    -------
    torch.Tensor
        ``(..., m, k)``. Requires ``r + k ≤ m``.
    """
    m, r = u.shape[-2], u.shape[-1]
    k = x.shape[-1]
    if x.shape[-2] != m:
        raise ValueError(f"x must have {m} rows like u, got shape {tuple(x.shape)}")
    if r + k > m:
        raise ValueError(f"augment_basis needs r + k <= m, got r={r}, k={k}, m={m}")
    if method == "householder":
        q, _ = qr_signfix(torch.cat([u, x], dim=-1))
        return q[..., r:]
    if method == "cgs2":
        ut = u.transpose(-2, -1)
        y = x - u @ (ut @ x)
        y = y - u @ (ut @ y)
        q, _ = qr_signfix(y)
        q = q - u @ (ut @ q)
        q, _ = qr_signfix(q)
        return q
    raise ValueError(f"method must be 'householder' or 'cgs2', got {method!r}")
