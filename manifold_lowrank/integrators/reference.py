r"""Dense reference solvers for the full matrix (or tensor) flow — **tests only**.

These integrate ``Ẏ = F(t, Y)`` on the full ``m×n`` matrix (or tensor), without any
low-rank structure, to high accuracy. They cost ``O(mn)`` memory and at least
``O(mn)`` per right-hand-side evaluation and are meant for small test problems and
for measuring the error of the low-rank integrators.

Note the sign: here ``F`` is the vector field itself (``Ẏ = F``), not a gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.integrate import solve_ivp

__all__ = [
    "EmergingDirectionProblem",
    "factor_gd_step",
    "rk4",
    "run_tracking",
    "sinv_euler_step",
    "solve_dense",
]

Field = Callable[[float, torch.Tensor], torch.Tensor]


def solve_dense(
    field: Field,
    y0: torch.Tensor,
    t_span: tuple[float, float],
    *,
    t_eval: Sequence[float] | None = None,
    rtol: float = 1e-11,
    atol: float = 1e-13,
    method: str = "DOP853",
) -> torch.Tensor:
    """High-order adaptive integration of ``Ẏ = F(t, Y)`` (scipy ``solve_ivp``).

    Parameters
    ----------
    field : callable
        ``F(t, Y)`` on tensors of the shape of ``y0``.
    y0 : torch.Tensor
        Initial value (any shape); computations are in float64.
    t_span : (float, float)
        Start and end time.
    t_eval : sequence of float, optional
        Output times; default: only the end time.
    rtol, atol : float
        Tolerances of the adaptive Dormand–Prince 8(5,3) method.
    method : str
        Any ``solve_ivp`` method.

    Returns
    -------
    torch.Tensor
        ``Y(t_end)`` with the shape of ``y0``, or a stack ``(len(t_eval), *shape)``
        when ``t_eval`` is given; dtype and device of ``y0``.
    """
    shape = tuple(y0.shape)
    y0_np = y0.detach().to("cpu", torch.float64).reshape(-1).numpy()

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        f = field(float(t), torch.from_numpy(y.reshape(shape)).to(y0.device))
        return f.detach().to("cpu", torch.float64).reshape(-1).numpy()

    sol = solve_ivp(
        rhs,
        t_span,
        y0_np,
        method=method,
        rtol=rtol,
        atol=atol,
        t_eval=None if t_eval is None else list(t_eval),
    )
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    ys = torch.from_numpy(sol.y.T.copy()).to(dtype=y0.dtype, device=y0.device)
    if t_eval is None:
        return ys[-1].reshape(shape)
    return ys.reshape((len(t_eval), *shape))


def rk4(field: Field, y0: torch.Tensor, t0: float, t1: float, steps: int) -> torch.Tensor:
    """Classical fourth-order Runge–Kutta with ``steps`` equal steps (pure torch)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    dt = (t1 - t0) / steps
    y, t = y0, t0
    for _ in range(steps):
        k1 = field(t, y)
        k2 = field(t + dt / 2, y + dt / 2 * k1)
        k3 = field(t + dt / 2, y + dt / 2 * k2)
        k4 = field(t + dt, y + dt * k3)
        y = y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        t = t + dt
    return y


# ----------------------------------------------------------------------------------
# Synthetic problems and naive baselines (tests, benchmarks and tutorials only)


class EmergingDirectionProblem:
    r"""Tracking a moving target whose last singular value emerges from ``σ_min``.

    ``A(t) = Q₁(t) U₀ diag(σ(t)) V₀ᵀ Q₂(t)ᵀ + ν E`` for ``t ∈ [0, 1]`` with
    ``Q_i(t) = exp(t·speed·W_i)`` (``W_i`` random skew, normalised by ``√dim``),
    ``σ(t) = (1, …, 0.1, σ_min + growth·t)`` (``r − 1`` fixed values geometric from 1 to
    0.1 and one that starts at ``σ_min``), and a fixed full-rank perturbation ``ν E``
    (``‖E‖_F = 1``). Step ``k`` of every method minimises
    ``L_k(Y) = ½‖Y − A(k/N)‖²_F`` by one step with learning rate ``h`` starting from the
    best rank-``r`` approximation of ``A(0)``, which contains the ``σ_min`` direction.

    Robust integrators (KSL, BUG, augmented BUG, parallel) track it like full-matrix
    gradient descent whatever ``σ_min``; gradient descent on the factors ``Y = K Lᵀ``
    moves the direction at a speed ``∝ σ`` and cannot escape from ``σ_min`` in ``N``
    steps, and the Euler scheme for the ``∂U = (I − UUᵀ) F V S⁻¹`` equations
    divides by ``σ_min``.
    """

    def __init__(
        self,
        m: int = 40,
        n: int = 30,
        r: int = 6,
        sigma_min: float = 1e-12,
        *,
        speed: float = 0.3,
        growth: float = 0.5,
        noise: float = 1e-8,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ):
        g = torch.Generator().manual_seed(seed)
        w1 = torch.randn(m, m, dtype=dtype, generator=g)
        w2 = torch.randn(n, n, dtype=dtype, generator=g)
        self.w1 = speed * (w1 - w1.T) / m**0.5
        self.w2 = speed * (w2 - w2.T) / n**0.5
        self.u0 = torch.linalg.qr(torch.randn(m, r, dtype=dtype, generator=g))[0]
        self.v0 = torch.linalg.qr(torch.randn(n, r, dtype=dtype, generator=g))[0]
        e = torch.randn(m, n, dtype=dtype, generator=g)
        self.e = noise * e / e.norm()
        self.base = torch.tensor([0.1 ** (j / max(r - 2, 1)) for j in range(r - 1)], dtype=dtype)
        self.m, self.n, self.r = m, n, r
        self.sigma_min, self.growth, self.dtype = sigma_min, growth, dtype

    def target(self, t: float) -> torch.Tensor:
        s = torch.cat([self.base, self.base.new_tensor([self.sigma_min + self.growth * t])])
        q1 = torch.linalg.matrix_exp(t * self.w1)
        q2 = torch.linalg.matrix_exp(t * self.w2)
        return (q1 @ self.u0) @ torch.diag(s) @ (q2 @ self.v0).T + self.e

    def initial_point(self):
        from manifold_lowrank.manifolds.types import FixedRankPoint

        u, s, vh = torch.linalg.svd(self.target(0.0))
        r = self.r
        return FixedRankPoint(u[:, :r], torch.diag(s[:r]), vh[:r].T.contiguous())


def factor_gd_step(
    k: torch.Tensor, l_: torch.Tensor, grad: torch.Tensor, h: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive simultaneous gradient descent on ``Y = K Lᵀ``.

    ``K ← K − h G L``, ``L ← L − h Gᵀ K`` (what training ``U Vᵀ`` factors directly does).
    """
    return k - h * grad @ l_, l_ - h * grad.T @ k


def sinv_euler_step(point, grad: torch.Tensor, h: float):
    r"""Explicit Euler on the standard DLRA equations (Koch–Lubich), then QR.

    ``U ← U − h (I − UUᵀ) G V S⁻¹``, ``V ← V − h (I − VVᵀ) Gᵀ U S⁻ᵀ``,
    ``S ← S − h Uᵀ G V``, and re-orthonormalisation ``U = Q_U R_U``, ``V = Q_V R_V``,
    ``S ← R_U S R_Vᵀ``. The baseline "∂U·S⁻¹ scheme"; its step size is limited by the
    smallest singular value. Dense gradient, tests only.
    """
    from manifold_lowrank.manifolds.types import FixedRankPoint

    u, s, v = point
    si = torch.linalg.inv(s)
    gv, gtu = grad @ v, grad.T @ u
    u1 = u - h * (gv - u @ (u.T @ gv)) @ si
    v1 = v - h * (gtu - v @ (v.T @ gtu)) @ si.T
    s1 = s - h * u.T @ gv
    qu, ru = torch.linalg.qr(u1)
    qv, rv = torch.linalg.qr(v1)
    return FixedRankPoint(qu, ru @ s1 @ rv.T, qv)


def run_tracking(method: str, problem: EmergingDirectionProblem, steps: int = 50, h: float = 0.2):
    """Run ``method`` on ``problem`` and return ``‖Y_N − A(1)‖_F / ‖A(1)‖_F``.

    ``method`` is one of ``"dense"`` (full-matrix gradient descent, the reference),
    ``"ksl"``, ``"bug"``, ``"augmented_bug"``, ``"parallel"`` (fixed rank ``r``,
    one-step oracle), ``"factor_gd"``, ``"sinv"``. Returns ``inf`` if the iteration
    produced non-finite numbers.
    """
    from manifold_lowrank.integrators.matrix import augmented_bug, bug, ksl, parallel
    from manifold_lowrank.integrators.oracles import DenseOracle

    p = problem.initial_point()
    r = problem.r
    y = p.to_dense()
    sq = torch.diag(p.S).sqrt()
    k_, l_ = p.U * sq, p.V * sq
    for step in range(1, steps + 1):
        a = problem.target(step / steps)
        oracle = DenseOracle(lambda yy, a=a: yy - a)
        try:
            if method == "dense":
                y = y - h * (y - a)
            elif method == "ksl":
                p = ksl(p, oracle, h).point
            elif method == "bug":
                p = bug(p, oracle, h).point
            elif method == "augmented_bug":
                p = augmented_bug(p, oracle, h, r).point
            elif method == "parallel":
                p = parallel(p, oracle, h, r).point
            elif method == "factor_gd":
                k_, l_ = factor_gd_step(k_, l_, k_ @ l_.T - a, h)
            elif method == "sinv":
                p = sinv_euler_step(p, p.to_dense() - a, h)
            else:
                raise ValueError(f"unknown method {method!r}")
        except (FloatingPointError, torch.linalg.LinAlgError):
            return float("inf")
    if method == "dense":
        out = y
    elif method == "factor_gd":
        out = k_ @ l_.T
    else:
        out = p.to_dense()
    a1 = problem.target(1.0)
    err = float((out - a1).norm() / a1.norm())
    return err if err == err and err != float("inf") else float("inf")
