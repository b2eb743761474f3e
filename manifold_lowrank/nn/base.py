r"""Base classes of the low-rank layers: factor bookkeeping, rank changes, recording.

:class:`LowRankModule` (matrix form ``U S Vᵀ``) and :class:`TuckerModule` (Tucker form)
hold the factors as :class:`torch.nn.Parameter` objects whose *identity never changes*:
a change of rank replaces ``.data`` (``p.data = new``), so optimizer ``param_groups``
stay valid while memory is truly reallocated. Optimizer *state* tied to a parameter
(momenta) is the optimizer's business (see :mod:`manifold_lowrank.optim`).

Projected gradients recorded by the custom autograd functions
(:mod:`manifold_lowrank.nn.functional`) are accumulated on the module, like ``.grad``:
``module.projected_grads`` (``None`` until something was recorded), cleared by
``module.clear_projected_grads()`` (also by :meth:`set_point` and by loading a state
dict). The rank must not change between a forward pass and its backward pass; if it
does, the stale backward does not record (and warns).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from manifold_lowrank.linalg import check_finite
from manifold_lowrank.manifolds.types import (
    FixedRankPoint,
    ProjectedGradients,
    TuckerPoint,
    TuckerProjectedGradients,
)
from manifold_lowrank.nn._utils import mode_dot, new_like, replace_data

__all__ = ["LowRankModule", "TuckerModule"]


class _RecordingMixin:
    """Accumulation of projected gradients with a point-version guard."""

    record_projected_grads: bool
    _projected_grads: Any
    _point_version: int

    def _init_recording(self, record: bool) -> None:
        self.record_projected_grads = bool(record)
        self._projected_grads = None
        self._point_version = 0

    def _recorder(self) -> Any:
        if not self.record_projected_grads:
            return None
        version = self._point_version

        def record(pg: Any) -> None:
            self._accumulate(pg, version)

        return record

    def _accumulate(self, pg: Any, version: int) -> None:
        if version != self._point_version:
            warnings.warn(
                f"{type(self).__name__}: the factors changed between forward and backward; "
                "the projected gradients of this backward pass were not recorded",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        old = self._projected_grads
        if old is None:
            self._projected_grads = pg
        else:
            self._projected_grads = _tree_add(old, pg)

    @property
    def projected_grads(self) -> Any:
        """Accumulated projected gradients, or ``None`` if nothing was recorded."""
        return self._projected_grads

    def clear_projected_grads(self) -> None:
        """Forget the accumulated projected gradients (like ``zero_grad(set_to_none=True)``)."""
        self._projected_grads = None

    def _bump_version(self) -> None:
        self._point_version += 1
        self._projected_grads = None


def _tree_add(a: Any, b: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return a + b
    items = [_tree_add(x, y) for x, y in zip(a, b)]
    return type(a)(*items) if hasattr(a, "_fields") else tuple(items)


class LowRankModule(_RecordingMixin, nn.Module):
    r"""Base of every matrix-form low-rank module: ``W = U S Vᵀ`` (or ``ΔW`` for adapters).

    Subclasses register the factors with :meth:`_init_factors`; the parameter names are
    ``U``, ``S``, ``V`` (plain layers) or ``adapter_U``, ``adapter_S``, ``adapter_V``
    (adapters), given by the class attribute ``factor_names``.

    Attributes
    ----------
    out_dim, in_dim : int
        ``m`` and ``n`` of the (possibly reshaped) weight matrix.
    record_projected_grads : bool
        Whether backward passes accumulate :attr:`projected_grads`.
    """

    factor_names: ClassVar[tuple[str, str, str]] = ("U", "S", "V")
    out_dim: int
    in_dim: int
    _max_rank: int

    def _init_factors(
        self,
        U: torch.Tensor,
        S: torch.Tensor,
        V: torch.Tensor,
        *,
        max_rank: int,
        record_projected_grads: bool,
    ) -> None:
        self.out_dim, self.in_dim = int(U.shape[0]), int(V.shape[0])
        self._max_rank = int(max_rank)
        for name, t in zip(self.factor_names, (U, S, V)):
            self.register_parameter(name, nn.Parameter(t.contiguous()))
        self._init_recording(record_projected_grads)

    # ------------------------------------------------------------------ factors
    def factors(self) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
        """The live ``(U, S, V)`` :class:`~torch.nn.Parameter` objects."""
        u, s, v = (getattr(self, n) for n in self.factor_names)
        return u, s, v

    def basis_parameters(self) -> list[nn.Parameter]:
        """``[U, V]``: the orthonormal bases (never apply weight decay to them)."""
        u, _, v = self.factors()
        return [u, v]

    def coefficient_parameters(self) -> list[nn.Parameter]:
        """``[S]``: the unconstrained core."""
        return [self.factors()[1]]

    @property
    def rank(self) -> int:
        """Current rank ``r`` (``S`` is ``r×r``)."""
        return int(self.factors()[1].shape[0])

    @property
    def max_rank(self) -> int:
        """Largest rank :meth:`set_point` accepts (a constructor argument)."""
        return self._max_rank

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """``(m, n)`` of the factorised matrix."""
        return (self.out_dim, self.in_dim)

    def point(self) -> FixedRankPoint:
        """The current point ``(U, S, V)`` as detached tensors (sharing storage)."""
        u, s, v = self.factors()
        return FixedRankPoint(u.detach(), s.detach(), v.detach())

    def _check_point(
        self, point: FixedRankPoint, assume_finite: bool = False
    ) -> tuple[torch.Tensor, ...]:
        if not isinstance(point, tuple) or len(point) != 3:
            raise TypeError(f"point must be a FixedRankPoint (U, S, V), got {type(point).__name__}")
        U, S, V = point
        for name, t in zip("USV", (U, S, V)):
            if not isinstance(t, torch.Tensor) or t.dim() != 2:
                raise ValueError(f"point.{name} must be a 2-D tensor")
        r = int(S.shape[0])
        m, n = self.out_dim, self.in_dim
        if tuple(U.shape) != (m, r) or tuple(S.shape) != (r, r) or tuple(V.shape) != (n, r):
            raise ValueError(
                f"point must have U ({m}, r), S (r, r), V ({n}, r) for one r; got "
                f"{tuple(U.shape)}, {tuple(S.shape)}, {tuple(V.shape)}"
            )
        if r > self._max_rank:
            raise ValueError(f"point rank must be in [0, {self._max_rank}] (max_rank), got {r}")
        dtype = self.factors()[0].dtype
        for name, t in zip("USV", (U, S, V)):
            if t.dtype != dtype:
                raise TypeError(f"point.{name} must have dtype {dtype}, got {t.dtype}")
        if not assume_finite:
            check_finite("point", U, S, V)
        return U, S, V

    def set_point(self, point: FixedRankPoint, *, assume_finite: bool = False) -> None:
        """Replace the factors by ``point`` (any rank ``0 ≤ r ≤ max_rank``).

        Validates shapes, dtype and finiteness first (nothing changes on error), then
        assigns freshly allocated contiguous copies to ``.data`` of the *existing*
        Parameters (identity kept, memory reallocated to the new rank), and clears
        ``.grad`` and :attr:`projected_grads`. Orthonormality of ``U``, ``V`` is the
        caller's responsibility (not checked: it would cost ``O((m+n) r²)``).
        Cost ``O((m + n) r + r²)``.

        ``assume_finite=True`` skips the finiteness check (one host synchronisation per
        factor) for a caller that has already checked, as the optimizers of
        :mod:`manifold_lowrank.optim` do for all layers at once. A subclass overriding
        this method must accept the keyword.
        """
        new = self._check_point(point, assume_finite)
        for p, t in zip(self.factors(), new):
            replace_data(p, new_like(p, t))
            p.grad = None
        self._bump_version()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        keys = [prefix + n for n in self.factor_names]
        if all(k in state_dict for k in keys):
            U, S, V = (state_dict[k] for k in keys)
            r = int(S.shape[0]) if S.dim() == 2 else -1
            if (
                r != self.rank
                and r >= 0
                and tuple(U.shape) == (self.out_dim, r)
                and tuple(S.shape) == (r, r)
                and tuple(V.shape) == (self.in_dim, r)
            ):
                if r > self._max_rank:
                    error_msgs.append(
                        f"{prefix}: rank {r} in the state dict exceeds max_rank {self._max_rank}"
                    )
                    return
                for p, t in zip(self.factors(), (U, S, V)):
                    replace_data(p, torch.empty(tuple(t.shape), dtype=p.dtype, device=p.device))
                    p.grad = None
        self._bump_version()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def set_projected_grads(self, pg: ProjectedGradients | None) -> None:
        """Overwrite :attr:`projected_grads` (e.g. after an all-reduce); shapes checked."""
        if pg is not None:
            r, m, n = self.rank, self.out_dim, self.in_dim
            want = ((m, r), (r, r), (n, r))
            got = tuple(tuple(t.shape) for t in pg)
            if got != want:
                raise ValueError(f"projected grads must have shapes {want}, got {got}")
            pg = ProjectedGradients(*pg)
        self._projected_grads = pg


class TuckerModule(_RecordingMixin, nn.Module):
    r"""Base of Tucker-form modules: ``W = C ×₁ U₁ ×₂ U₂ ×₃ U₃ ×₄ U₄``.

    The core and factors are registered under ``core_name`` and ``factors_name``
    (``core``/``factors`` or ``adapter_core``/``adapter_factors``); ``factors`` is a
    :class:`~torch.nn.ParameterList` with one entry per mode. Modes listed in
    ``full_modes`` keep full rank: their factor is a frozen (``requires_grad=False``)
    identity, stored so that ``factors[k]`` is always the mode-``k`` factor.
    """

    core_name: ClassVar[str] = "core"
    factors_name: ClassVar[str] = "factors"
    dims: tuple[int, ...]
    full_modes: tuple[int, ...]
    _max_ranks: tuple[int, ...]

    def _init_tucker(
        self,
        core: torch.Tensor,
        factors: Sequence[torch.Tensor],
        *,
        full_modes: tuple[int, ...],
        max_ranks: tuple[int, ...],
        record_projected_grads: bool,
    ) -> None:
        self.dims = tuple(int(f.shape[0]) for f in factors)
        self.full_modes = tuple(full_modes)
        self._max_ranks = tuple(int(x) for x in max_ranks)
        self.register_parameter(self.core_name, nn.Parameter(core.contiguous()))
        plist = nn.ParameterList(
            [
                nn.Parameter(f.contiguous(), requires_grad=k not in self.full_modes)
                for k, f in enumerate(factors)
            ]
        )
        setattr(self, self.factors_name, plist)
        self._init_recording(record_projected_grads)

    def tucker_parameters(self) -> tuple[nn.Parameter, tuple[nn.Parameter, ...]]:
        """The live ``(core, (U₁, U₂, U₃, U₄))`` Parameter objects."""
        core = getattr(self, self.core_name)
        return core, tuple(getattr(self, self.factors_name))

    def basis_parameters(self) -> list[nn.Parameter]:
        """The orthonormal factors of the rank-adaptive modes (no weight decay on them)."""
        _, fs = self.tucker_parameters()
        return [f for k, f in enumerate(fs) if k not in self.full_modes]

    def coefficient_parameters(self) -> list[nn.Parameter]:
        """``[core]``."""
        return [self.tucker_parameters()[0]]

    def frozen_parameter_names(self) -> list[str]:
        """Names (relative to this module) of the frozen identity factors."""
        return [f"{self.factors_name}.{k}" for k in self.full_modes]

    @property
    def ranks(self) -> tuple[int, ...]:
        """Current multilinear ranks ``(r₁, r₂, r₃, r₄)``."""
        return tuple(int(x) for x in self.tucker_parameters()[0].shape)

    @property
    def max_ranks(self) -> tuple[int, ...]:
        """Largest ranks :meth:`set_point` accepts per mode."""
        return self._max_ranks

    def point(self) -> TuckerPoint:
        """The current point as detached tensors (sharing storage)."""
        core, fs = self.tucker_parameters()
        return TuckerPoint(core.detach(), tuple(f.detach() for f in fs))

    def _check_point(
        self, point: TuckerPoint, assume_finite: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if not isinstance(point, tuple) or len(point) != 2:
            raise TypeError(f"point must be a TuckerPoint, got {type(point).__name__}")
        core, factors = point
        d = len(self.dims)
        if not isinstance(core, torch.Tensor) or core.dim() != d or len(factors) != d:
            raise ValueError(f"point must have a {d}-D core and {d} factors")
        dtype = self.tucker_parameters()[0].dtype
        for k, f in enumerate(factors):
            r = int(core.shape[k])
            if f.dim() != 2 or tuple(f.shape) != (self.dims[k], r):
                raise ValueError(
                    f"point.factors[{k}] must have shape ({self.dims[k]}, {r}), "
                    f"got {tuple(f.shape)}"
                )
            if k in self.full_modes and r != self.dims[k]:
                raise ValueError(
                    f"mode {k} is a full mode: its rank must be {self.dims[k]}, got {r}"
                )
            if not (0 <= r <= self._max_ranks[k]):
                raise ValueError(
                    f"rank of mode {k} must be in [0, {self._max_ranks[k]}] (max_ranks), got {r}"
                )
            if f.dtype != dtype:
                raise TypeError(f"point.factors[{k}] must have dtype {dtype}, got {f.dtype}")
        if core.dtype != dtype:
            raise TypeError(f"point.core must have dtype {dtype}, got {core.dtype}")
        if not assume_finite:
            check_finite("point", core, *factors)
        factors = list(factors)
        # Full modes keep an identity factor: fold the given (square) factor into the core;
        # exact (X = C ×_k Q = (C ×_k Q) ×_k I) whatever Q is.
        for k in self.full_modes:
            f = factors[k]
            eye = torch.eye(self.dims[k], dtype=f.dtype, device=f.device)
            if not torch.equal(f, eye):
                core = mode_dot(core, f, k)
                factors[k] = eye
        return core, factors

    def set_point(self, point: TuckerPoint, *, assume_finite: bool = False) -> None:
        """Replace core and factors (ranks may change); see :meth:`LowRankModule.set_point`.

        A factor given for a full mode (square) is folded into the core so that the
        stored factor stays the identity.
        """
        core, factors = self._check_point(point, assume_finite)
        pc, pfs = self.tucker_parameters()
        replace_data(pc, new_like(pc, core))
        pc.grad = None
        for p, f in zip(pfs, factors):
            replace_data(p, new_like(p, f))
            p.grad = None
        self._bump_version()

    def set_projected_grads(self, pg: TuckerProjectedGradients | None) -> None:
        """Overwrite :attr:`projected_grads` (e.g. after an all-reduce); shapes checked."""
        if pg is not None:
            ranks = self.ranks
            if tuple(pg.core.shape) != ranks or len(pg.partials) != len(ranks):
                raise ValueError(f"projected core must have shape {ranks}")
            for k, p in enumerate(pg.partials):
                want = tuple(self.dims[k] if j == k else ranks[j] for j in range(len(ranks)))
                if tuple(p.shape) != want:
                    raise ValueError(f"partials[{k}] must have shape {want}, got {tuple(p.shape)}")
            pg = TuckerProjectedGradients(pg.core, tuple(pg.partials))
        self._projected_grads = pg

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        d = len(self.dims)
        ckey = prefix + self.core_name
        fkeys = [f"{prefix}{self.factors_name}.{k}" for k in range(d)]
        if ckey in state_dict and all(k in state_dict for k in fkeys):
            core = state_dict[ckey]
            fs = [state_dict[k] for k in fkeys]
            ok = core.dim() == d and all(
                tuple(f.shape) == (self.dims[k], int(core.shape[k])) for k, f in enumerate(fs)
            )
            if ok and tuple(core.shape) != self.ranks:
                bad = [k for k in range(d) if core.shape[k] > self._max_ranks[k]]
                if bad:
                    error_msgs.append(f"{prefix}: ranks {tuple(core.shape)} exceed max_ranks")
                    return
                pc, pfs = self.tucker_parameters()
                for p, t in zip((pc, *pfs), (core, *fs)):
                    replace_data(p, torch.empty(tuple(t.shape), dtype=p.dtype, device=p.device))
                    p.grad = None
        self._bump_version()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
