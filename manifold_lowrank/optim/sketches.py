r"""Random sketches and the projections they induce (RAC-LoRA / Bernoulli-LoRA).

A *sketch* is a random ``d×r`` matrix ``B``. It induces the orthogonal projection
onto its range

.. math::  H_B = B (B^\top B)^{+} B^\top \in \mathbb{R}^{d\times d},

which is what the chained / Bernoulli LoRA methods apply to the gradient.

Two distributions are offered:

``"gaussian"``
    i.i.d. ``N(0, 1)`` entries (what the papers' code samples).
``"haar"``
    orthonormal columns drawn from the Haar (uniform) measure on the Stiefel manifold
    ``St(d, r)``: the sign-fixed thin QR factor ``Q`` of a Gaussian ``d×r`` matrix
    (Mezzadri 2007). Requires ``r ≤ d``.

Expected projection
-------------------
For both distributions ``range(B)`` is uniformly distributed on the Grassmannian
``Gr(d, r)`` (the Gaussian law is invariant under ``B ↦ O B`` for every orthogonal
``O``, and so is the Haar law). Hence ``E[H]`` commutes with every orthogonal matrix, so
it is a multiple of the identity, and ``tr H = rank H = min(r, d)`` almost surely gives

.. math::  \mathbb{E}[H] = \frac{\min(r, d)}{d}\, I_d .

This is the constant ``λ_min(E H) = r/d`` that sets every convergence rate of
RAC-LoRA and Bernoulli-LoRA (see :func:`expected_projection_scale`).

Convention
----------
In the library's convention a weight is ``W ∈ R^{m×n}`` (out × in). The papers write
``y = x A B`` with ``A`` on the input side; mapped to ``W``, a LoRA update is
``ΔW = B A`` with ``B ∈ R^{m×r}`` (output side, our ``U S``) and ``A ∈ R^{r×n}``
(input side, our ``Vᵀ``). ``H_B`` (``m×m``) therefore acts on the output side,
``ΔW = H_B G``, and ``H_A = Aᵀ (A Aᵀ)⁺ A`` (``n×n``) on the input side,
``ΔW = G H_A``. Here an input-side sketch is stored transposed, as an ``n×r`` matrix
(like our ``V``), so both sides use the same helpers.

Nothing here forms ``H`` on the hot path: ``H_B G = Q (Qᵀ G)`` with ``Q`` an
orthonormal basis of ``range(B)``, cost ``O(d r²)`` for ``Q`` and ``O(d r k)`` to apply.
"""

from __future__ import annotations

from typing import Literal

import torch

from manifold_lowrank.linalg import qr_signfix

__all__ = [
    "SKETCH_DISTRIBUTIONS",
    "apply_projection",
    "expected_projection_scale",
    "projection_matrix",
    "range_basis",
    "sample_sketch",
]

SketchDistribution = Literal["gaussian", "haar"]
SKETCH_DISTRIBUTIONS: tuple[str, ...] = ("gaussian", "haar")


def _check_distribution(distribution: str, name: str = "distribution") -> str:
    if distribution not in SKETCH_DISTRIBUTIONS:
        raise ValueError(f"{name} must be one of {SKETCH_DISTRIBUTIONS}, got {distribution!r}")
    return distribution


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def sample_sketch(
    d: int,
    r: int,
    *,
    distribution: SketchDistribution = "gaussian",
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Draw a ``d×r`` sketch.

    Parameters
    ----------
    d, r : int
        Ambient dimension and sketch rank (``r ≥ 1``; ``r ≤ d`` for ``"haar"``).
    distribution : {"gaussian", "haar"}
        ``"gaussian"``: i.i.d. ``N(0, 1)`` entries. ``"haar"``: orthonormal columns,
        Haar-distributed on the Stiefel manifold (sign-fixed QR of a Gaussian matrix).
    generator : torch.Generator, optional
        Source of randomness. The numbers are drawn on the generator's device and then
        moved to ``device``, so a CPU generator gives the same sketch on every device.
    dtype : torch.dtype, optional
        Floating dtype (default: ``torch.get_default_dtype()``).
    device : torch.device or str, optional
        Where the result lives (default: the generator's device, or CPU).

    Returns
    -------
    torch.Tensor
        ``(d, r)``. Cost ``O(d r)`` (Gaussian) or ``O(d r²)`` (Haar).

    Notes
    -----
    ``E[H] = (min(r, d)/d) I`` for both distributions (module docstring).
    """
    d = _check_positive_int(d, "d")
    r = _check_positive_int(r, "r")
    _check_distribution(distribution)
    if distribution == "haar" and r > d:
        raise ValueError(f"r must be <= d for a 'haar' sketch, got r={r}, d={d}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    z = torch.randn(d, r, generator=generator, dtype=dtype, device=gen_device)
    if distribution == "haar":
        z = qr_signfix(z)[0]
    target = gen_device if device is None else torch.device(device)
    return z.to(target)


def range_basis(b: torch.Tensor, *, rtol: float | None = None) -> torch.Tensor:
    r"""Orthonormal basis ``Q`` of ``range(B)``, so that ``H_B = Q Qᵀ = B (BᵀB)⁺ Bᵀ``.

    Parameters
    ----------
    b : torch.Tensor
        ``(d, r)`` sketch.
    rtol : float, optional
        Singular values below ``rtol · σ_max`` are treated as zero, exactly as in
        :func:`torch.linalg.pinv` (default ``max(d, r) · eps``).

    Returns
    -------
    torch.Tensor
        ``(d, k)`` with ``QᵀQ = I_k`` and ``k = rank(B)`` (``= min(d, r)`` almost surely
        for a random sketch). Cost ``O(d r²)`` (thin SVD).

    Notes
    -----
    A thin SVD ``B = P Σ Rᵀ`` gives ``B (BᵀB)⁺ Bᵀ = P_k P_kᵀ`` with ``P_k`` the left
    singular vectors of the ``k`` non-zero singular values; the sign of ``P`` does not
    matter since only ``Q Qᵀ`` is used.
    """
    if b.ndim != 2:
        raise ValueError(f"b must be a (d, r) matrix, got shape {tuple(b.shape)}")
    d, r = b.shape
    p, s, _ = torch.linalg.svd(b, full_matrices=False)
    if rtol is None:
        rtol = max(d, r) * torch.finfo(b.dtype).eps
    if s.numel() == 0 or float(s[0]) == 0.0:
        return b.new_zeros(d, 0)
    k = int((s > rtol * s[0]).sum())
    return p[:, :k]


def apply_projection(
    basis: torch.Tensor, g: torch.Tensor, *, side: Literal["output", "input"]
) -> torch.Tensor:
    r"""Apply a sketch projection to a gradient ``G ∈ R^{m×n}`` without forming ``H``.

    ``side="output"``: ``H_B G = Q (Qᵀ G)`` with ``Q`` ``(m, k)``.
    ``side="input"``:  ``G H_A = (G Q) Qᵀ`` with ``Q`` ``(n, k)`` a basis of
    ``range(Aᵀ)``.

    Cost ``O(m n k)``.
    """
    if side == "output":
        if basis.shape[0] != g.shape[0]:
            raise ValueError(
                f"basis has {basis.shape[0]} rows but g has {g.shape[0]} rows (side='output')"
            )
        return basis @ (basis.transpose(0, 1) @ g)
    if side == "input":
        if basis.shape[0] != g.shape[1]:
            raise ValueError(
                f"basis has {basis.shape[0]} rows but g has {g.shape[1]} columns (side='input')"
            )
        return (g @ basis) @ basis.transpose(0, 1)
    raise ValueError(f"side must be 'output' or 'input', got {side!r}")


def projection_matrix(b: torch.Tensor) -> torch.Tensor:
    r"""Dense ``H_B = B (BᵀB)⁺ Bᵀ`` (``d×d``), computed with :func:`torch.linalg.pinv`.

    Reference implementation for tests; cost ``O(d² r)``.
    """
    if b.ndim != 2:
        raise ValueError(f"b must be a (d, r) matrix, got shape {tuple(b.shape)}")
    return b @ torch.linalg.pinv(b.transpose(0, 1) @ b, hermitian=True) @ b.transpose(0, 1)


def expected_projection_scale(d: int, r: int) -> float:
    r"""``λ`` with ``E[H] = λ I_d`` for a Gaussian or Haar ``d×r`` sketch: ``min(r, d)/d``."""
    d = _check_positive_int(d, "d")
    r = _check_positive_int(r, "r")
    return min(r, d) / d
