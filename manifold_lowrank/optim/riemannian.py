r"""Riemannian SGD and Adam for low-rank manifolds (and any geoopt manifold).

:class:`RiemannianSGD` and :class:`RiemannianAdam` are :class:`torch.optim.Optimizer`
subclasses. They accept :class:`geoopt.ManifoldParameter` s on any geoopt manifold —
:class:`~manifold_lowrank.manifolds.FixedRank`, :class:`~manifold_lowrank.manifolds.Tucker`,
geoopt's ``Stiefel``, ``Sphere``, … — and plain tensors (Euclidean), in the same or in
different parameter groups. Per parameter the step reads ``p.grad``, converts it to a
Riemannian gradient, updates the optimizer state, retracts and writes the new point with
one ``p.copy_``.

What differs from :mod:`geoopt.optim`
-------------------------------------
geoopt's optimizers run unchanged on the library's manifolds (the test-suite checks that
they converge), but some of their choices are wrong or wasteful for low-rank points:

1. **Weight decay.** geoopt adds ``λ·p`` to the gradient of the *packed* tensor
   ``[U; S; V]``. ``egrad2rgrad`` projects the basis parts away and leaves ``λX`` (the
   Riemannian gradient of ``½λ‖W‖²``), so geoopt's *SGD* performs a correct coupled L2
   decay of ``W`` — but in geoopt's *Adam* that term passes through the adaptive
   normalisation (Adam-L2, not AdamW): a step with zero loss gradient moves ``W`` by
   ``≈ η`` per block instead of shrinking it by ``(1 − ηλ)`` (measured: 6 % off after one
   step for FixedRank, tested). Here decay is *decoupled* (AdamW / SGDW, Loshchilov &
   Hutter) and acts on the core only, never on the orthonormal bases:

   * :class:`~manifold_lowrank.manifolds.FixedRank`: ``S ← (1 − ηλ) S``, hence
     ``W = U S Vᵀ ← (1 − ηλ) W`` — exactly Frobenius weight decay of ``W``; ``U, V``
     are never touched;
   * :class:`~manifold_lowrank.manifolds.Tucker`: ``C ← (1 − ηλ) C``, hence
     ``X ← (1 − ηλ) X``;
   * plain tensors and :class:`geoopt.Euclidean`: ``p ← (1 − ηλ) p``;
   * a manifold that defines ``scale_point(x, factor) -> (y, tangents_need_transport)``
     (a point representing ``factor·X``, ``x`` unmodified; e.g. a new manifold closed
     under scaling, see :mod:`manifold_lowrank.manifolds.base`): that hook;
   * every other manifold (``Stiefel``, ``Sphere``, products, …): **no decay** (its points
     are not closed under scaling); a :class:`UserWarning` is issued once per optimizer
     and manifold type when ``weight_decay > 0`` meets such a parameter.

   The decay is applied before the step, as in :class:`torch.optim.AdamW`. The
   Riemannian gradient and the momenta, computed at ``X``, are moved to ``(1−ηλ)X`` by the
   manifold's :meth:`transp` where their representation depends on the core (Tucker);
   for FixedRank the tangent representation ``[Up; M; Vp]`` does not involve ``S`` and
   nothing needs to be done.
2. **Adam's second moment.** Entrywise division of a packed tangent vector breaks the
   gauge conditions ``UᵀUp = 0``, ``VᵀVp = 0``. We keep geoopt's scheme — the second
   moment accumulates ``manifold.component_inner(x, g)`` — and rely on the contract of the
   library's manifolds that ``component_inner`` is *constant on blocks* (one scalar for
   ``Up``, one for ``M``, one for ``Vp``; core / each factor for Tucker). Scaling each
   block by a positive scalar keeps every linear gauge condition, so the Adam direction is
   tangent *exactly*, with no extra projection (tested). Other geoopt manifolds return one
   scalar per point (Stiefel, Sphere) or entries (Euclidean), which is also safe.
3. **Momentum** is moved to the new point by the manifold's vector transport
   (``retr_transp``) at every step and then re-projected with ``proju`` (cost
   ``O((m+n)r²)``), so rounding never lets it drift out of the tangent space.
4. **Stabilisation.** geoopt ≥ PR #247 calls ``projx`` before every Adam step. Here
   ``stabilize=k`` applies ``x ← projx(x)`` every ``k`` steps of a parameter and moves the
   momenta from the old to the new representation with ``transp``; default ``None``
   (off), because the retractions already return orthonormal bases: Tucker's and
   FixedRank's orthographic and KSL retractions re-orthonormalise the whole basis (error
   stays at a few ε indefinitely, tested over 300 steps). FixedRank's default *polar*
   retraction forms ``U₊ = [U Q_u] W`` and inherits ``U``'s error, which then grows
   slowly (measured ≈ 0.1–0.2 ε per step: ~250 ε after 2000 steps, ~1e-10 after 10⁶) —
   harmless for training, and bounded at a few ε by ``stabilize=50`` (tested). Since
   ``projx`` is a gauge-preserving sign-fixed QR (``R ≈ I``), stabilising does not
   disturb the optimizer state. Cost of one ``projx`` on FixedRank: ``O((m+n)r² + r³)``.

Gradients
---------
With ``gradient="euclidean"`` (default) ``p.grad`` is what autograd gives for the packed
parameter (the factor gradients ``[∂U; ∂S; ∂V]`` for FixedRank) and is converted by
``manifold.egrad2rgrad``. With ``gradient="riemannian"`` ``p.grad`` already holds a tangent
vector at ``p`` in the manifold's packed representation — e.g. from
``FixedRank.rgrad_from_projected(x, ProjectedGradients(GV, UᵀGV, GᵀU))``, which needs no
``S⁻¹`` — and is only passed through ``manifold.proju``. Both are parameter-group options.

Non-finite gradients
--------------------
Before anything is modified, :meth:`step` checks all gradients for NaN/Inf (one
reduction per parameter and a single host synchronisation). With ``nonfinite="raise"``
(default) it raises :class:`FloatingPointError` naming the parameter; with
``nonfinite="skip"`` the whole step is skipped (no parameter, no state, no step counter
changes), which is what mixed-precision loss scaling expects; the skip is reported by a
:class:`RuntimeWarning` naming the step and the parameter(s) and counted in the
attribute ``nan_skips`` (the same name and meaning as
:attr:`~manifold_lowrank.optim.lowrank_base.LowRankOptimizer.nan_skips` of the
rank-adaptive optimizers; kept by ``state_dict``/``load_state_dict``). Either way nothing
is corrupted. Per parameter, all new values are computed before the single write.

Cost per step and parameter: one ``egrad2rgrad`` (or ``proju``), one ``retr_transp``,
one ``proju``; ``O((m+n)r² + r³)`` for FixedRank. Nothing dense is formed.

References
----------
G. Bécigneul, O.-E. Ganea, *Riemannian Adaptive Optimization Methods*, ICLR 2019.
I. Loshchilov, F. Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import geoopt
import torch

from manifold_lowrank.linalg import all_finite
from manifold_lowrank.manifolds.fixed_rank import FixedRank
from manifold_lowrank.manifolds.tucker import Tucker

__all__ = ["RiemannianAdam", "RiemannianSGD"]

_EUCLIDEAN = geoopt.Euclidean()
_GRADIENT_KINDS = ("euclidean", "riemannian")
_NONFINITE_POLICIES = ("raise", "skip")


def manifold_of(p: torch.Tensor) -> geoopt.Manifold:
    """The geoopt manifold of a parameter: ``p.manifold`` or ``Euclidean()`` for plain tensors."""
    if isinstance(p, geoopt.ManifoldTensor):
        return p.manifold
    return _EUCLIDEAN


def _decayed(
    manifold: geoopt.Manifold, x: torch.Tensor, factor: float
) -> tuple[torch.Tensor, bool] | None:
    """Decoupled weight decay ``X ← factor·X`` acting on the core only.

    Returns ``(new point, tangents_need_transport)`` or ``None`` if the manifold has no
    supported decay. ``x`` is not modified.
    """
    if isinstance(manifold, geoopt.Euclidean):
        return x * factor, False
    if isinstance(manifold, FixedRank):
        y = x.clone()
        manifold.unpack(y).S.mul_(factor)  # zero-copy view into y
        # ξ = U M Vᵀ + Up Vᵀ + U Vpᵀ does not involve S: representation unchanged.
        return y, False
    if isinstance(manifold, Tucker):
        y = x.clone()
        manifold.unpack(y).core.mul_(factor)  # zero-copy view into y
        # ξ = Ċ ×U + Σ C ×_k U̇_k ×_{j≠k} U_j involves C: transport re-expresses it.
        return y, True
    scale = getattr(manifold, "scale_point", None)
    if callable(scale):  # the hook a third-party manifold closed under scaling provides
        y, move = scale(x, factor)
        return y, bool(move)
    return None


# ---------------------------------------------------------------------- validation
def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_real(name: str, v: Any) -> float:
    if not _is_real(v):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__} ({v!r})")
    return float(v)


def _check_lr(v: Any) -> None:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"lr must be a scalar, got a tensor of shape {tuple(v.shape)}")
        v = float(v)
    lr = _check_real("lr", v)
    if not (lr >= 0.0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number >= 0, got {v!r}")


def _check_interval(name: str, v: Any, lo: float, hi: float, *, hi_closed: bool) -> None:
    x = _check_real(name, v)
    ok = lo <= x <= hi if hi_closed else lo <= x < hi
    if not ok:
        rng = f"[{lo}, {hi}]" if hi_closed else f"[{lo}, {hi})"
        raise ValueError(f"{name} must be in {rng}, got {v!r}")


def _check_decay_factor(group: dict[str, Any]) -> None:
    """``1 − lr·weight_decay`` must stay positive (else the core is zeroed or flipped)."""
    lr, wd = float(group["lr"]), float(group["weight_decay"])
    if wd > 0 and lr * wd >= 1.0:
        raise ValueError(
            f"lr * weight_decay must be < 1 (the decay factor 1 - lr*weight_decay must stay "
            f"positive), got lr={lr!r}, weight_decay={wd!r}"
        )


def _check_common(group: dict[str, Any]) -> None:
    _check_lr(group["lr"])
    wd = _check_real("weight_decay", group["weight_decay"])
    if not (wd >= 0.0 and math.isfinite(wd)):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {wd!r}")
    stab = group["stabilize"]
    if stab is not None and (not isinstance(stab, int) or isinstance(stab, bool) or stab < 1):
        raise ValueError(f"stabilize must be None or an int >= 1, got {stab!r}")
    _check_decay_factor(group)
    if group["gradient"] not in _GRADIENT_KINDS:
        raise ValueError(f"gradient must be one of {_GRADIENT_KINDS}, got {group['gradient']!r}")
    if group["nonfinite"] not in _NONFINITE_POLICIES:
        raise ValueError(
            f"nonfinite must be one of {_NONFINITE_POLICIES}, got {group['nonfinite']!r}"
        )


# ---------------------------------------------------------------------- base class
class _RiemannianOptimizer(torch.optim.Optimizer):
    """Shared machinery: validation, the NaN guard, Riemannian gradients, decay, stabilise."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self._warned_no_decay: set[str] = set()
        self.nan_skips = 0
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_warned_no_decay", set())  # not part of the pickled state
        self.__dict__.setdefault("nan_skips", 0)

    # -- (de)serialisation ------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Torch's optimizer state dict plus ``{"riemannian": {"nan_skips": n}}``."""
        sd = super().state_dict()
        sd["riemannian"] = {"nan_skips": int(self.nan_skips)}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of :meth:`state_dict` (or a plain torch optimizer one)."""
        sd = dict(state_dict)
        extra = sd.pop("riemannian", None)
        super().load_state_dict(sd)
        self.nan_skips = int(extra.get("nan_skips", 0)) if extra is not None else 0

    # -- groups ---------------------------------------------------------------
    def _check_group(self, group: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group; its hyper-parameters are validated like the defaults."""
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._check_group(merged)
        super().add_param_group(param_group)

    # -- step -----------------------------------------------------------------
    def _active(self) -> list[tuple[dict[str, Any], torch.Tensor]]:
        out = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients; "
                        "densify them or use a Riemannian gradient (gradient='riemannian')"
                    )
                out.append((group, p))
        return out

    def _handle_nonfinite(self) -> None:
        """Slow path after a failed check: raise for a ``"raise"`` group, else skip.

        Skipping increments :attr:`nan_skips` and emits a :class:`RuntimeWarning` naming
        the step (the per-parameter step counter the skipped step would have reached) and
        the parameter(s) with a non-finite gradient. Nothing else is modified.
        """
        bad: list[str] = []
        step = 0
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is None or bool(torch.isfinite(p.grad).all()):
                    continue
                if group["nonfinite"] == "raise":
                    raise FloatingPointError(
                        f"gradient of parameter {pi} of param group {gi} (shape "
                        f"{tuple(p.shape)}) contains NaN or Inf; no parameter or optimizer "
                        "state was modified (nonfinite='skip' skips such steps instead)"
                    )
                bad.append(f"parameter {pi} of param group {gi} (shape {tuple(p.shape)})")
                step = max(step, int(self.state.get(p, {}).get("step", 0)) + 1)  # .get: no insert
        self.nan_skips += 1
        warnings.warn(
            f"{type(self).__name__}: non-finite gradient at step {step} in "
            f"{', '.join(bad[:5])}{' …' if len(bad) > 5 else ''}; the step was skipped and "
            f"nothing was modified (skip #{self.nan_skips})",
            RuntimeWarning,
            stacklevel=3,
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (called with gradients enabled,
            exactly like :meth:`torch.optim.SGD.step`); it must call ``backward()``.

        Returns
        -------
        Any
            The closure's return value, or ``None``.

        Raises
        ------
        FloatingPointError
            A gradient holds NaN/Inf and the group policy is ``nonfinite="raise"``;
            nothing was modified.
        ValueError
            ``lr * weight_decay ≥ 1`` in a group (e.g. after a scheduler raised ``lr``);
            nothing was modified.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        active = self._active()
        for group in self.param_groups:  # lr may have been changed by a scheduler
            _check_decay_factor(group)
        if not all_finite(p.grad for _, p in active):
            self._handle_nonfinite()  # raises, or falls through to skip the whole step
            return loss
        for group, p in active:
            self._update(group, p, manifold_of(p))
        return loss

    def _update(
        self, group: dict[str, Any], p: torch.Tensor, manifold: geoopt.Manifold
    ) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------
    @staticmethod
    def _rgrad(group: dict[str, Any], manifold: geoopt.Manifold, p: torch.Tensor) -> torch.Tensor:
        g = p.grad
        if g.shape != p.shape:
            raise RuntimeError(
                f"gradient shape {tuple(g.shape)} does not match parameter shape {tuple(p.shape)}"
            )
        if group["gradient"] == "riemannian":
            return manifold.proju(p, g)
        return manifold.egrad2rgrad(p, g)

    def _decay(
        self,
        group: dict[str, Any],
        manifold: geoopt.Manifold,
        x: torch.Tensor,
        tangents: list[torch.Tensor | None],
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Decoupled decay ``x ← (1 − ηλ) x`` on the core; tangents moved along if needed."""
        wd = group["weight_decay"]
        lr = float(group["lr"])
        if wd == 0 or lr == 0:
            return x, tangents
        res = _decayed(manifold, x, 1.0 - lr * wd)
        if res is None:
            key = type(manifold).__name__
            if key not in self._warned_no_decay:
                self._warned_no_decay.add(key)
                warnings.warn(
                    f"weight_decay is not applied to parameters on {key}: only Euclidean, "
                    "FixedRank (S block), Tucker (core) and manifolds with a scale_point "
                    "method are decayed",
                    UserWarning,
                    stacklevel=4,
                )
            return x, tangents
        y, move = res
        if move:
            tangents = [None if t is None else manifold.transp(x, y, t) for t in tangents]
        return y, tangents

    @staticmethod
    def _stabilize(
        group: dict[str, Any],
        step: int,
        manifold: geoopt.Manifold,
        y: torch.Tensor,
        tangents: list[torch.Tensor | None],
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        k = group["stabilize"]
        if k is None or step % k != 0 or isinstance(manifold, geoopt.Euclidean):
            return y, tangents
        ys = manifold.projx(y)
        out: list[torch.Tensor | None] = []
        for t in tangents:
            if t is None:
                out.append(None)
                continue
            try:
                out.append(manifold.transp(y, ys, t))
            except NotImplementedError:
                out.append(manifold.proju(ys, t))
        return ys, out

    @staticmethod
    def _check_state_shape(state: dict[str, Any], key: str, shape: torch.Size) -> None:
        buf = state.get(key)
        if buf is not None and buf.shape != shape:
            raise RuntimeError(
                f"optimizer state {key!r} has shape {tuple(buf.shape)} but the parameter "
                f"needs {tuple(shape)} (its rank or shape changed); remap the state or "
                "delete optimizer.state[param] before stepping"
            )

    @staticmethod
    def _write(state: dict[str, Any], key: str, value: torch.Tensor) -> None:
        buf = state.get(key)
        if buf is None:
            state[key] = value.clone(memory_format=torch.contiguous_format)
        else:
            buf.copy_(value)


# ---------------------------------------------------------------------- SGD
class RiemannianSGD(_RiemannianOptimizer):
    r"""Riemannian SGD with momentum, Nesterov and decoupled weight decay.

    For a parameter ``x`` on a manifold ``M`` with step size ``η``, momentum ``μ``,
    dampening ``τ`` and weight decay ``λ``, step ``k`` computes

    .. math::

        g_k &= \operatorname{grad} f(x_k)
              \;(\texttt{egrad2rgrad}(x_k, \nabla f)\text{ or }\texttt{proju}), \\
        b_k &= \begin{cases} g_k & k = 1 \\ μ\, b_{k-1} + (1 − τ)\, g_k & k > 1\end{cases}
              \qquad (b_{k-1} \in T_{x_k}M\text{, see below}),\\
        d_k &= g_k + μ b_k \text{ (Nesterov) or } b_k, \\
        \tilde x_k &= D_{1 − ηλ}(x_k) \quad\text{(decoupled decay of the core)}, \\
        x_{k+1} &= R_{\tilde x_k}(−η\, d_k), \qquad
        b_k \leftarrow P_{x_{k+1}}\big(\mathcal T_{\tilde x_k → x_{k+1}} b_k\big),

    with ``R`` the manifold's retraction, ``𝒯`` its vector transport (``retr_transp``) and
    ``P`` its ``proju``. ``D_c`` scales ``S`` (FixedRank), the core (Tucker) or the whole
    tensor (Euclidean); it is the identity on other manifolds (see the module notes). On
    plain tensors with ``λ = 0`` (or ``μ = 0``) this is exactly :class:`torch.optim.SGD`;
    with ``λ > 0`` and ``μ > 0`` it is SGDW (decoupled).

    Parameters
    ----------
    params : iterable
        Parameters or parameter groups (dicts). ``ManifoldParameter`` s on any geoopt
        manifold and plain tensors may be mixed.
    lr : float
        Step size ``η ≥ 0``.
    momentum : float, default 0
        ``μ ∈ [0, 1)``.
    dampening : float, default 0
        ``τ ∈ [0, 1]``.
    weight_decay : float, default 0
        Decoupled decay ``λ ≥ 0`` (see the module notes: never touches orthonormal bases).
    nesterov : bool, default False
        Nesterov momentum; requires ``μ > 0`` and ``τ = 0``.
    stabilize : int or None, default None
        Apply ``projx`` every ``stabilize`` steps of a parameter (momentum transported to
        the re-projected point). Not needed for FixedRank/Tucker.
    gradient : {"euclidean", "riemannian"}, default "euclidean"
        What ``p.grad`` holds (see the module notes).
    nonfinite : {"raise", "skip"}, default "raise"
        Policy for NaN/Inf gradients; nothing is modified in either case (``"skip"`` warns
        and counts in :attr:`nan_skips`).

    Attributes
    ----------
    nan_skips : int
        Number of steps skipped because of a NaN/Inf gradient (``nonfinite="skip"``); each
        skip also emits a :class:`RuntimeWarning`. Saved by :meth:`state_dict`.

    Notes
    -----
    State per parameter: ``step`` (int) and, if ``μ > 0``, ``momentum_buffer`` (a tangent
    vector at the current point, same shape as the parameter). ``state_dict`` /
    ``load_state_dict`` round-trip exactly.

    Examples
    --------
    >>> import geoopt
    >>> from manifold_lowrank.manifolds import FixedRank
    >>> M = FixedRank(30, 20, 3)
    >>> x = geoopt.ManifoldParameter(M.random(dtype=torch.float64), manifold=M)
    >>> opt = RiemannianSGD([x], lr=0.5, momentum=0.9, weight_decay=1e-4)
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        stabilize: int | None = None,
        gradient: str = "euclidean",
        nonfinite: str = "raise",
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            stabilize=stabilize,
            gradient=gradient,
            nonfinite=nonfinite,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        _check_common(group)
        _check_interval("momentum", group["momentum"], 0.0, 1.0, hi_closed=False)
        _check_interval("dampening", group["dampening"], 0.0, 1.0, hi_closed=True)
        if not isinstance(group["nesterov"], bool):
            raise TypeError(f"nesterov must be a bool, got {group['nesterov']!r}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "nesterov=True requires momentum > 0 and dampening = 0, got "
                f"momentum={group['momentum']!r}, dampening={group['dampening']!r}"
            )

    def _update(self, group: dict[str, Any], p: torch.Tensor, manifold: geoopt.Manifold) -> None:
        state = self.state[p]
        mu = group["momentum"]
        lr = float(group["lr"])
        g = self._rgrad(group, manifold, p)
        buf: torch.Tensor | None = None
        if mu != 0:
            self._check_state_shape(state, "momentum_buffer", p.shape)
            old = state.get("momentum_buffer")
            if old is None:
                buf = g.clone()
            else:
                buf = old.mul(mu).add_(g, alpha=1.0 - group["dampening"])
            d = g.add(buf, alpha=mu) if group["nesterov"] else buf
        else:
            d = g
        x, (d, buf) = self._decay(group, manifold, p, [d, buf])
        if buf is not None:
            y, buf = manifold.retr_transp(x, d.mul(-lr), buf)
            buf = manifold.proju(y, buf)
        else:
            y = manifold.retr(x, d.mul(-lr))
        step = int(state.get("step", 0)) + 1
        y, (buf,) = self._stabilize(group, step, manifold, y, [buf])
        # --- all values computed: write ---
        p.copy_(y)
        state["step"] = step
        if buf is not None:
            self._write(state, "momentum_buffer", buf)


# ---------------------------------------------------------------------- Adam
class RiemannianAdam(_RiemannianOptimizer):
    r"""Riemannian Adam / AdamW with block-scalar second moments.

    For a parameter ``x`` with step size ``η``, ``(β₁, β₂)``, ``ε`` and decoupled weight
    decay ``λ``, step ``k`` computes (Bécigneul & Ganea 2019)

    .. math::

        g_k &= \operatorname{grad} f(x_k), \\
        m_k &= β_1 m_{k-1} + (1 − β_1) g_k \qquad (m_{k-1} \in T_{x_k}M), \\
        v_k &= β_2 v_{k-1} + (1 − β_2)\, \texttt{component\_inner}(x_k, g_k), \qquad
        \hat v_k = \max(\hat v_{k-1}, v_k) \text{ (AMSGrad) or } v_k, \\
        d_k &= \frac{m_k}{\sqrt{\hat v_k}/\sqrt{1 − β_2^k} + ε}, \qquad
        \tilde x_k = D_{1 − ηλ}(x_k), \\
        x_{k+1} &= R_{\tilde x_k}\!\Big(−\frac{η}{1 − β_1^k} d_k\Big), \qquad
        m_k \leftarrow P_{x_{k+1}}\big(\mathcal T_{\tilde x_k → x_{k+1}} m_k\big).

    ``component_inner`` is one scalar per block on FixedRank (``‖Up‖², ‖M‖², ‖Vp‖²``) and
    Tucker (core, each factor), so ``d_k`` is a blockwise positive rescaling of ``m_k`` and
    stays tangent exactly; ``v`` is invariant under transport and is not moved. On plain
    tensors (``component_inner = g²`` entrywise) the step is exactly
    :class:`torch.optim.AdamW` (:class:`torch.optim.Adam` if ``λ = 0``).

    Parameters
    ----------
    params : iterable
        Parameters or parameter groups.
    lr : float, default 1e-3
        ``η ≥ 0``.
    betas : tuple of float, default (0.9, 0.999)
        ``β₁, β₂ ∈ [0, 1)``.
    eps : float, default 1e-8
        ``ε > 0``.
    weight_decay : float, default 0
        Decoupled decay ``λ ≥ 0`` of the core (module notes).
    amsgrad : bool, default False
        Use the running maximum of ``v``.
    stabilize : int or None, default None
        As in :class:`RiemannianSGD`.
    gradient : {"euclidean", "riemannian"}, default "euclidean"
        What ``p.grad`` holds.
    nonfinite : {"raise", "skip"}, default "raise"
        Policy for NaN/Inf gradients.

    Attributes
    ----------
    nan_skips : int
        As in :class:`RiemannianSGD`.

    Notes
    -----
    State per parameter: ``step`` (int), ``exp_avg`` (tangent at the current point, the
    parameter's shape), ``exp_avg_sq`` (shape of ``component_inner``), and
    ``max_exp_avg_sq`` with AMSGrad.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        stabilize: int | None = None,
        gradient: str = "euclidean",
        nonfinite: str = "raise",
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            stabilize=stabilize,
            gradient=gradient,
            nonfinite=nonfinite,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        _check_common(group)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        _check_interval("betas[0]", betas[0], 0.0, 1.0, hi_closed=False)
        _check_interval("betas[1]", betas[1], 0.0, 1.0, hi_closed=False)
        eps = _check_real("eps", group["eps"])
        if not (eps > 0.0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a finite number > 0, got {group['eps']!r}")
        if not isinstance(group["amsgrad"], bool):
            raise TypeError(f"amsgrad must be a bool, got {group['amsgrad']!r}")

    def _update(self, group: dict[str, Any], p: torch.Tensor, manifold: geoopt.Manifold) -> None:
        state = self.state[p]
        beta1, beta2 = group["betas"]
        lr = float(group["lr"])
        g = self._rgrad(group, manifold, p)
        sq = manifold.component_inner(p, g)
        self._check_state_shape(state, "exp_avg", p.shape)
        self._check_state_shape(state, "exp_avg_sq", sq.shape)
        step = int(state.get("step", 0)) + 1
        if "exp_avg" in state:
            m = state["exp_avg"].mul(beta1).add_(g, alpha=1.0 - beta1)
            v = state["exp_avg_sq"].mul(beta2).add_(sq, alpha=1.0 - beta2)
        else:
            m = g.mul(1.0 - beta1)
            v = sq.mul(1.0 - beta2)
        vmax = None
        if group["amsgrad"]:
            old = state.get("max_exp_avg_sq")
            vmax = v if old is None else torch.maximum(old, v)
        bc1 = 1.0 - beta1**step
        bc2_sqrt = math.sqrt(1.0 - beta2**step)
        denom = (v if vmax is None else vmax).sqrt().div_(bc2_sqrt).add_(group["eps"])
        d = m / denom
        x, (d, m) = self._decay(group, manifold, p, [d, m])
        y, m = manifold.retr_transp(x, d.mul(-lr / bc1), m)
        m = manifold.proju(y, m)
        y, (m,) = self._stabilize(group, step, manifold, y, [m])
        # --- all values computed: write ---
        p.copy_(y)
        state["step"] = step
        self._write(state, "exp_avg", m)
        self._write(state, "exp_avg_sq", v)
        if vmax is not None:
            self._write(state, "max_exp_avg_sq", vmax)
