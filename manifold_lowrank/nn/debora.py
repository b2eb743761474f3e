r"""dEBORA adapters: ``ΔW`` as a sum of rank-one components with upper-level weights ``s``.

dEBORA (Zangrando, Venturini, Rinaldi, Tudisco, ICLR 2025) writes each adapter as a
weighted sum of ``r`` rank-one (matrix) or multilinear (tensor) *components*,

.. math::

    \text{matrix:}\quad ΔW = U \operatorname{diag}(s) V^\top = \sum_j s_j u_j v_j^\top,
    \qquad
    \text{tensor:}\quad ΔW = \hat C \times_1 (U_1 \operatorname{diag}(s)) \times_2 U_2,

and chooses the weights ``s`` (upper level, a perturbed simplex, see
:mod:`manifold_lowrank.optim.frank_wolfe`) separately from the *bases* (lower level).
A weight that reaches its lower bound ``ε`` is pruned, so the rank really falls.

Storage — the existing adapter classes, unchanged
-------------------------------------------------
The classes below are thin subclasses of :class:`~manifold_lowrank.nn.LowRankAdapter`,
:class:`~manifold_lowrank.nn.LowRankConv2dAdapter` and
:class:`~manifold_lowrank.nn.TuckerConv2dAdapter`: the parameters are the usual
``adapter_U``/``adapter_S``/``adapter_V`` (with ``S = diag(s)`` kept diagonal) or
``adapter_core``/``adapter_factors`` (with ``s_j`` the norm of a core slice), so the
forward pass, ``merge``/``unmerge``, the adapter checkpoints and the exact PEFT export
work unchanged, and ``s`` is always recoverable from the stored factors.

Three formats
-------------
``"matrix"`` (Linear, Conv1D, Conv2d as an ``out × in·kh·kw`` matrix)
    Components ``s_j u_j v_jᵀ``; ``s = diag(S)``. Component-carrying bases: ``U``, ``V``.
``"tucker"`` (Conv2d, general Tucker form, spatial modes full)
    ``ΔW = C ×₁ U₁ ×₂ U₂`` over ``(out, in, kh, kw)`` with core
    ``C ∈ R^{r × r₂ × kh × kw}``, ``C[j] = s_j Ĉ[j]``, ``‖Ĉ[j]‖_F = 1``. Component ``j`` is
    ``u_{1,j} ⊗ (Ĉ[j] ×₂ U₂)``, of Frobenius norm ``s_j`` when ``U₁``, ``U₂`` are
    orthonormal. Component-carrying "bases": ``U₁`` and the unit slices ``Ĉ`` (as the
    columns of an ``r₂·kh·kw × r`` matrix); ``U₂`` is shared by all components (lower
    level only). Pruning ``j`` removes column ``j`` of ``U₁`` and slice ``j`` of ``C``:
    ``r`` falls, ``r₂`` is kept.
``"cp"`` (Conv2d, CP special case)
    The core is *superdiagonal* in the two channel modes, ``C[j, l] = δ_{jl} s_j K_j``
    (``r₂ = r``, ``‖K_j‖_F = 1``), i.e. ``ΔW = Σ_j s_j u_{1,j} ⊗ u_{2,j} ⊗ K_j``: a CP
    decomposition over the channel modes with a full ``kh × kw`` spatial kernel per
    component (``U₁``, ``U₂`` oblique: unit, not orthogonal, columns). This is the
    Tucker form with a superdiagonal core, so every CP adapter *is* a Tucker adapter
    (same storage, checkpoint and export). The fully rank-one CP of the paper
    (``K_j = c_j d_jᵀ``) is the further special case of rank-one spatial kernels; it is
    not enforced. Pruning ``j`` removes column ``j`` of ``U₁`` and ``U₂`` and the
    diagonal block ``(j, j)``: both channel ranks fall.

Basis manifolds (``bases``)
    ``"stiefel"`` (orthonormal columns; the default for ``"matrix"`` and ``"tucker"``),
    ``"oblique"`` (unit columns; the default for ``"cp"``) or ``"free"``. The core
    directions ``Ĉ[j]``/``K_j`` are always unit (a product of spheres). With Stiefel
    bases ``‖ΔW‖_* = scaling·‖s‖₁`` (the nuclear norm), so the budget ``τ`` of the
    simplex is a nuclear-norm budget.

Initialisation
    ``s = ε𝟏`` (the vertex ``ε𝟏`` of the simplex) with random orthonormal bases and
    random unit core directions, so the adapted model starts at
    ``W₀ + scaling·ε·U Vᵀ`` (``‖·‖₂ = scaling·ε``) — close to, not exactly, the base
    model (``s = 0`` is infeasible: the hypergradient divides by ``s``).

:class:`DeboraParts` and :func:`read_parts` / :func:`grad_parts` / :func:`write_parts`
give the optimizer one uniform view of all three formats: the weights ``s`` and a list of
*component-carrying* matrices whose column ``j`` belongs to component ``j``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from manifold_lowrank.linalg import qr_signfix
from manifold_lowrank.manifolds.types import FixedRankPoint, TuckerPoint
from manifold_lowrank.nn._utils import mode_dot
from manifold_lowrank.nn.adapters import (
    LowRankAdapter,
    LowRankConv2dAdapter,
    TuckerConv2dAdapter,
)
from manifold_lowrank.nn.base import LowRankModule, TuckerModule

__all__ = [
    "BASES_KINDS",
    "DEBORA_FORMATS",
    "DeboraConv2dAdapter",
    "DeboraLinearAdapter",
    "DeboraParts",
    "DeboraTuckerConv2dAdapter",
    "debora_format_of",
    "default_bases",
    "grad_parts",
    "prune_parts",
    "read_parts",
    "write_parts",
]

DeboraFormat = Literal["matrix", "tucker", "cp"]
BasesKind = Literal["stiefel", "oblique", "free"]
DEBORA_FORMATS = ("matrix", "tucker", "cp")
BASES_KINDS = ("stiefel", "oblique", "free")


def _check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    e = float(eps)
    if not (e > 0.0 and e < float("inf")):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return e


def _check_bases(bases: object) -> str:
    if bases not in (*BASES_KINDS, "auto"):
        raise ValueError(f"bases must be one of {(*BASES_KINDS, 'auto')}, got {bases!r}")
    return str(bases)


def default_bases(fmt: str) -> str:
    """``"oblique"`` for ``"cp"`` (CP factors are not orthogonal), else ``"stiefel"``."""
    return "oblique" if fmt == "cp" else "stiefel"


# --------------------------------------------------------------------------- adapters
class _DeboraMixin:
    debora_format: str
    debora_bases: str
    debora_eps: float

    def _set_debora(self, fmt: str, bases: str, eps: float) -> None:
        self.debora_format = fmt
        self.debora_bases = default_bases(fmt) if bases == "auto" else bases
        self.debora_eps = eps

    @property
    def debora_weights(self) -> torch.Tensor:
        """The current component weights ``s`` (detached, ``(r,)``)."""
        return read_parts(self, self.debora_format, self.debora_bases).s  # type: ignore[arg-type]


class DeboraLinearAdapter(_DeboraMixin, LowRankAdapter):
    r"""dEBORA matrix adapter around a frozen ``nn.Linear`` / ``Conv1D``: ``ΔW = U diag(s) Vᵀ``.

    Parameters
    ----------
    base : nn.Linear or transformers Conv1D
    rank : int
        Number of components ``r`` (the starting rank; dEBORA only lowers it).
    eps : float
        ``ε > 0``: initial weights ``s = ε𝟏``.
    bases : {"stiefel", "oblique", "free", "auto"}
        Manifold of ``U``, ``V`` used by :class:`~manifold_lowrank.optim.DEBORA` (stored
        as :attr:`debora_bases`; ``"auto"`` = ``"stiefel"``).
    **kwargs
        ``max_rank``, ``scaling``, ``dropout``, ``generator``, ``dtype``, ``freeze_base``
        and ``record_projected_grads`` (default ``False`` here: dEBORA uses the factor
        gradients) as in :class:`~manifold_lowrank.nn.LowRankAdapter`.
    """

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        *,
        eps: float = 1e-3,
        bases: str = "auto",
        record_projected_grads: bool = False,
        **kwargs: Any,
    ) -> None:
        e = _check_eps(eps)
        b = _check_bases(bases)
        super().__init__(base, rank, record_projected_grads=record_projected_grads, **kwargs)
        self._set_debora("matrix", b, e)
        with torch.no_grad():
            S = self.factors()[1]
            S.copy_(torch.eye(self.rank, dtype=S.dtype, device=S.device) * e)


class DeboraConv2dAdapter(_DeboraMixin, LowRankConv2dAdapter):
    r"""dEBORA matrix adapter around a frozen ``nn.Conv2d`` (kernel as an ``out×in·kh·kw`` matrix).

    Parameters as in :class:`DeboraLinearAdapter`.
    """

    def __init__(
        self,
        base: nn.Conv2d,
        rank: int,
        *,
        eps: float = 1e-3,
        bases: str = "auto",
        record_projected_grads: bool = False,
        **kwargs: Any,
    ) -> None:
        e = _check_eps(eps)
        b = _check_bases(bases)
        super().__init__(base, rank, record_projected_grads=record_projected_grads, **kwargs)
        self._set_debora("matrix", b, e)
        with torch.no_grad():
            S = self.factors()[1]
            S.copy_(torch.eye(self.rank, dtype=S.dtype, device=S.device) * e)


class DeboraTuckerConv2dAdapter(_DeboraMixin, TuckerConv2dAdapter):
    r"""dEBORA tensor adapter around a frozen ``nn.Conv2d``: Tucker or CP form.

    ``ΔW = C ×₁ U₁ ×₂ U₂`` over ``(out, in, kh, kw)`` (spatial modes full), with
    ``C[j] = s_j Ĉ[j]`` (``"tucker"``) or ``C[j, l] = δ_{jl} s_j K_j`` (``"cp"``); see the
    module docstring.

    Parameters
    ----------
    base : nn.Conv2d
        ``groups=1``, integer padding.
    rank : int
        Number of components ``r`` (``≤ out``; for ``"cp"`` also ``≤ in``).
    tensor_format : {"tucker", "cp"}
    in_rank : int, optional
        ``"tucker"`` only: the rank ``r₂`` of the input-channel mode (default
        ``min(rank, in)``); fixed during training.
    eps, bases
        As in :class:`DeboraLinearAdapter` (``bases="auto"``: Stiefel for Tucker,
        oblique for CP).
    max_ranks : sequence of int, optional
        Per-mode caps passed to :class:`~manifold_lowrank.nn.TuckerConv2dAdapter`.
    **kwargs
        ``scaling``, ``dropout``, ``generator``, ``dtype``, ``freeze_base``,
        ``record_projected_grads`` (default ``False``).
    """

    def __init__(
        self,
        base: nn.Conv2d,
        rank: int,
        *,
        tensor_format: str = "tucker",
        in_rank: int | None = None,
        eps: float = 1e-3,
        bases: str = "auto",
        max_ranks: tuple[int, ...] | None = None,
        generator: torch.Generator | None = None,
        record_projected_grads: bool = False,
        **kwargs: Any,
    ) -> None:
        if tensor_format not in ("tucker", "cp"):
            raise ValueError(f"tensor_format must be 'tucker' or 'cp', got {tensor_format!r}")
        e = _check_eps(eps)
        b = _check_bases(bases)
        if not isinstance(base, nn.Conv2d):
            raise TypeError(f"base must be a torch.nn.Conv2d, got {type(base).__name__}")
        in_c = int(base.weight.shape[1])
        if tensor_format == "cp":
            if in_rank is not None and in_rank != rank:
                raise ValueError(f"in_rank must equal rank for tensor_format='cp', got {in_rank}")
            r2 = rank
        else:
            r2 = min(rank, in_c) if in_rank is None else in_rank
        super().__init__(
            base,
            (rank, r2, None, None),
            full_modes=(2, 3),
            max_ranks=max_ranks,
            generator=generator,
            record_projected_grads=record_projected_grads,
            **kwargs,
        )
        self._set_debora(tensor_format, b, e)
        core, _ = self.tucker_parameters()
        r = int(core.shape[0])
        kh, kw = int(core.shape[2]), int(core.shape[3])
        with torch.no_grad():
            if tensor_format == "tucker":
                c = torch.randn(
                    tuple(core.shape), generator=generator, dtype=core.dtype, device=core.device
                )
                norms = c.reshape(r, c[0].numel() if r else 0).norm(dim=1).clamp_min(1e-30)
                c = c / norms.reshape(r, 1, 1, 1) * e
            else:
                k = torch.randn(
                    r, kh, kw, generator=generator, dtype=core.dtype, device=core.device
                )
                k = k / k.reshape(r, kh * kw).norm(dim=1).clamp_min(1e-30).reshape(r, 1, 1) * e
                c = torch.zeros_like(core)
                idx = torch.arange(r, device=core.device)
                c[idx, idx] = k
            core.copy_(c)


# --------------------------------------------------------------------------- parts
class DeboraParts(NamedTuple):
    r"""A uniform view of a dEBORA layer.

    Attributes
    ----------
    s : torch.Tensor
        ``(r,)`` component weights.
    bases : tuple of torch.Tensor
        Component-carrying matrices, each ``(n_k, r)``: column ``j`` belongs to
        component ``j`` (matrix: ``U``, ``V``; tucker: ``U₁``, ``Ĉ``; cp: ``U₁``, ``U₂``,
        ``K``; ``Ĉ``/``K`` hold the unit core slices as columns).
    kinds : tuple of str
        Manifold of each entry of ``bases``: ``"stiefel"``, ``"oblique"`` or ``"free"``.
    shared : tuple of torch.Tensor
        Lower-level matrices not indexed by components (tucker: ``U₂``; else empty).
    shared_kinds : tuple of str
    """

    s: torch.Tensor
    bases: tuple[torch.Tensor, ...]
    kinds: tuple[str, ...]
    shared: tuple[torch.Tensor, ...]
    shared_kinds: tuple[str, ...]


def debora_format_of(layer: nn.Module, default_tensor_format: str = "tucker") -> str:
    """``"matrix"`` for matrix layers; the layer's ``debora_format`` or the default for Tucker."""
    if isinstance(layer, LowRankModule):
        return "matrix"
    if isinstance(layer, TuckerModule):
        fmt = getattr(layer, "debora_format", default_tensor_format)
        if fmt not in ("tucker", "cp"):
            raise ValueError(f"tensor format must be 'tucker' or 'cp', got {fmt!r}")
        if len(layer.dims) != 4 or tuple(layer.full_modes) != (2, 3):
            raise ValueError(
                "dEBORA tensor adapters need a 4-way (conv) Tucker layer with full spatial "
                f"modes (2, 3); got dims {layer.dims} and full_modes {layer.full_modes}"
            )
        return fmt
    raise TypeError(
        f"expected a low-rank layer (LowRankModule/TuckerModule), got {type(layer).__name__}"
    )


def _orth_tol(x: torch.Tensor) -> float:
    return 1e3 * torch.finfo(x.dtype).eps * max(1, x.shape[1])


def _is_orthonormal(x: torch.Tensor) -> bool:
    r = x.shape[1]
    if r == 0:
        return True
    eye = torch.eye(r, dtype=x.dtype, device=x.device)
    return float((x.transpose(0, 1) @ x - eye).abs().max()) <= _orth_tol(x)


def _unit_columns(
    x: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x / ‖x_j‖, ‖x_j‖)``; a zero column becomes a random unit column (norm 0)."""
    n = x.norm(dim=0)
    zero = n <= 0
    out = x / torch.where(zero, torch.ones_like(n), n)
    if bool(zero.any()):
        rnd = torch.randn(
            x.shape[0], int(zero.sum()), generator=generator, dtype=x.dtype, device=x.device
        )
        out[:, zero] = rnd / rnd.norm(dim=0).clamp_min(1e-30)
    return out, n


def read_parts(
    layer: nn.Module,
    fmt: str,
    bases: str,
    *,
    canonical: bool = False,
    generator: torch.Generator | None = None,
) -> DeboraParts:
    r"""The :class:`DeboraParts` of ``layer`` (detached copies; nothing is modified).

    Parameters
    ----------
    layer : LowRankModule or TuckerModule
    fmt : {"matrix", "tucker", "cp"}
    bases : {"stiefel", "oblique", "free"}
    canonical : bool
        Re-parametrise *exactly* (same ``ΔW``) into the dEBORA form: ``S`` diagonalised
        by an SVD of the ``r×r`` core when it is not diagonal or the bases are not
        orthonormal (Stiefel), column norms absorbed into ``s`` (oblique), negative
        weights flipped into ``U``; Tucker: ``U_k = Q_k R_k`` with ``R_k`` absorbed into
        the core. Zero components get random unit directions (``s_j = 0``). Without it
        the layer is assumed to be in dEBORA form already (``s_j ≥ ε > 0``).
    generator : torch.Generator, optional
        For the random directions of zero components.

    Raises
    ------
    ValueError
        ``"cp"`` layers whose core is not superdiagonal in the channel modes, or whose
        bases are not orthonormal with ``bases="stiefel"``.
    """
    if fmt == "matrix":
        U, S, V = (t.detach().clone() for t in layer.point())  # type: ignore[operator]
        if canonical:
            U, s, V = _canonical_matrix(U, S, V, bases, generator)
        else:
            s = torch.diagonal(S).clone()
        return DeboraParts(s, (U, V), (bases, bases), (), ())
    core, fs = layer.point()  # type: ignore[operator]
    core = core.detach().clone()
    U1, U2 = fs[0].detach().clone(), fs[1].detach().clone()
    r, r2, kh, kw = (int(x) for x in core.shape)
    if fmt == "tucker":
        if canonical:
            core, U1 = _canonical_tucker_mode(core, U1, 0, bases, generator)
            core, U2 = _canonical_tucker_mode(core, U2, 1, bases, generator)
        cm = core.reshape(r, r2 * kh * kw).transpose(0, 1)  # (r2·kh·kw, r): column j = vec C[j]
        if canonical:
            C_hat, s = _unit_columns(cm, generator)
        else:
            s = cm.norm(dim=0)
            C_hat = cm / s.clamp_min(torch.finfo(cm.dtype).tiny)
        return DeboraParts(s, (U1, C_hat), (bases, "oblique"), (U2,), (bases,))
    if fmt != "cp":
        raise ValueError(f"fmt must be one of {DEBORA_FORMATS}, got {fmt!r}")
    if r != r2:
        raise ValueError(f"a 'cp' layer needs equal channel ranks, got {tuple(core.shape[:2])}")
    idx = torch.arange(r, device=core.device)
    diag = core[idx, idx]  # (r, kh, kw)
    if canonical:
        off = core.clone()
        off[idx, idx] = 0
        scale = float(core.abs().max()) if core.numel() else 0.0
        if float(off.abs().max() if off.numel() else 0.0) > 1e-12 * max(scale, 1e-300):
            raise ValueError(
                "a 'cp' layer needs a core that is superdiagonal in the channel modes "
                "(C[j, l] = 0 for j != l); build it with DeboraTuckerConv2dAdapter(..., "
                "tensor_format='cp') or use tensor_format='tucker'"
            )
    km = diag.reshape(r, kh * kw).transpose(0, 1)  # (kh·kw, r)
    if canonical:
        K, s = _unit_columns(km, generator)
        if bases == "stiefel":
            if not (_is_orthonormal(U1) and _is_orthonormal(U2)):
                raise ValueError(
                    "bases='stiefel' with tensor_format='cp' needs orthonormal factors "
                    "(orthonormalising would mix the CP components); use bases='oblique'"
                )
        elif bases == "oblique":
            U1, n1 = _unit_columns(U1, generator)
            U2, n2 = _unit_columns(U2, generator)
            s = s * n1 * n2
    else:
        s = km.norm(dim=0)
        K = km / s.clamp_min(torch.finfo(km.dtype).tiny)
    return DeboraParts(s, (U1, U2, K), (bases, bases, "oblique"), (), ())


def _canonical_matrix(
    U: torch.Tensor, S: torch.Tensor, V: torch.Tensor, bases: str, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r = S.shape[0]
    if r == 0:
        return U, torch.diagonal(S).clone(), V
    off = S - torch.diag(torch.diagonal(S))
    diagonal = bool((off == 0).all())
    ortho = _is_orthonormal(U) and _is_orthonormal(V)
    if not diagonal or (bases == "stiefel" and not ortho):
        qu, ru = qr_signfix(U)
        qv, rv = qr_signfix(V)
        P, sig, Qh = torch.linalg.svd(ru @ S @ rv.transpose(0, 1))
        U, V, s = qu @ P, qv @ Qh.transpose(0, 1), sig
    else:
        s = torch.diagonal(S).clone()
        neg = s < 0
        if bool(neg.any()):
            U = U.clone()
            U[:, neg] = -U[:, neg]
            s = s.abs()
    if bases == "oblique":
        U, nu = _unit_columns(U, gen)
        V, nv = _unit_columns(V, gen)
        s = s * nu * nv
    return U, s, V


def _canonical_tucker_mode(
    core: torch.Tensor, U: torch.Tensor, mode: int, bases: str, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if U.shape[1] == 0 or bases == "free":
        return core, U
    if bases == "stiefel":
        if _is_orthonormal(U):
            return core, U
        q, r = qr_signfix(U)
        return mode_dot(core, r, mode), q
    Un, n = _unit_columns(U, gen)
    return mode_dot(core, torch.diag(n), mode), Un


def grad_parts(
    layer: nn.Module, fmt: str, parts: DeboraParts
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]] | None:
    r"""Euclidean gradients ``(∂_s f, (∂_{B_k} f)_k, (∂_{shared} f))`` from the factors' ``.grad``.

    Chain rule through the storage: matrix ``∂_s f = diag(∂_S f)``; tucker/cp with
    ``C[j] = s_j Ĉ[j]``: ``∂_{s_j} f = ⟨Ĉ[j], ∂_{C[j]} f⟩`` and ``∂_{Ĉ[j]} f = s_j ∂_{C[j]} f``.
    Missing gradients count as zero; ``None`` if the layer has no gradient at all.
    Cost ``O(size of the factors)``.
    """
    s = parts.s
    if fmt == "matrix":
        U, S, V = layer.factors()  # type: ignore[operator]
        if U.grad is None and S.grad is None and V.grad is None:
            return None
        gU = _g(U, parts.bases[0])
        gV = _g(V, parts.bases[1])
        gS = torch.diagonal(S.grad) if S.grad is not None else torch.zeros_like(s)
        return gS.detach().clone(), (gU, gV), ()
    core, fs = layer.tucker_parameters()  # type: ignore[operator]
    if core.grad is None and fs[0].grad is None and fs[1].grad is None:
        return None
    r, r2, kh, kw = (int(x) for x in core.shape)
    gcore = core.grad.detach() if core.grad is not None else torch.zeros_like(core)
    gU1 = _g(fs[0], parts.bases[0])
    if fmt == "tucker":
        gcm = gcore.reshape(r, r2 * kh * kw).transpose(0, 1)
        C_hat = parts.bases[1]
        gs = (C_hat * gcm).sum(0)
        return gs, (gU1, gcm * s), (_g(fs[1], parts.shared[0]),)
    idx = torch.arange(r, device=core.device)
    gkm = gcore[idx, idx].reshape(r, kh * kw).transpose(0, 1)
    K = parts.bases[2]
    gs = (K * gkm).sum(0)
    return gs, (gU1, _g(fs[1], parts.bases[1]), gkm * s), ()


def _g(p: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if p.grad is None:
        return torch.zeros_like(like)
    return p.grad.detach().clone()


def prune_parts(parts: DeboraParts, keep: torch.Tensor) -> DeboraParts:
    """Keep only the components ``keep`` (indices or a boolean mask); shared matrices kept."""
    return DeboraParts(
        parts.s[keep].clone(),
        tuple(b[:, keep].clone() for b in parts.bases),
        parts.kinds,
        parts.shared,
        parts.shared_kinds,
    )


def write_parts(layer: nn.Module, fmt: str, parts: DeboraParts) -> None:
    r"""Write ``parts`` back into the layer's factors.

    Same rank: in-place copies into the existing parameters (no reallocation, ``.grad``
    kept). Different rank (pruning): :meth:`set_point`, which reallocates the parameters
    at the new size (memory really drops) and clears ``.grad``.
    """
    s = parts.s
    r = int(s.shape[0])
    if fmt == "matrix":
        U, V = parts.bases
        S = torch.diag(s)
        if r == layer.rank:  # type: ignore[attr-defined]
            with torch.no_grad():
                for p, t in zip(layer.factors(), (U, S, V)):  # type: ignore[operator]
                    p.copy_(t)
        else:
            layer.set_point(FixedRankPoint(U, S, V))  # type: ignore[operator]
        return
    core_p, fs = layer.tucker_parameters()  # type: ignore[operator]
    kh, kw = int(core_p.shape[2]), int(core_p.shape[3])
    if fmt == "tucker":
        U1, C_hat = parts.bases
        (U2,) = parts.shared
        r2 = int(U2.shape[1])
        core = (C_hat * s).transpose(0, 1).reshape(r, r2, kh, kw)
    else:
        U1, U2, K = parts.bases
        core = torch.zeros(r, r, kh, kw, dtype=s.dtype, device=s.device)
        idx = torch.arange(r, device=s.device)
        core[idx, idx] = (K * s).transpose(0, 1).reshape(r, kh, kw)
    if tuple(core.shape) == tuple(core_p.shape):
        with torch.no_grad():
            core_p.copy_(core)
            fs[0].copy_(U1)
            fs[1].copy_(U2)
    else:
        factors: Sequence[torch.Tensor] = (U1, U2, fs[2].detach(), fs[3].detach())
        layer.set_point(TuckerPoint(core, tuple(factors)))  # type: ignore[operator]
