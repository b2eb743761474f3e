"""Away-step Frank–Wolfe on the perturbed simplex S = {s ≥ ε, Σs ≤ τ + rε}."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from manifold_lowrank.optim.frank_wolfe import (
    BASE,
    PerturbedSimplex,
    StepRule,
    away_step_frank_wolfe,
    away_step_fw_update,
)

DT = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny problems: one thread (OpenMP spinning on a loaded 2-core box costs ~50× per QR)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


EPS64 = torch.finfo(DT).eps


def _point(simplex: PerturbedSimplex, lam: torch.Tensor) -> torch.Tensor:
    """The point with barycentric weights lam = (λ_base, λ_1..λ_r) (normalised)."""
    lam = lam / lam.sum()
    return simplex.eps + simplex.tau * lam[1:]


def _vertices(simplex: PerturbedSimplex) -> list[tuple[int, torch.Tensor]]:
    like = torch.zeros(1, dtype=DT)
    return [(i, simplex.vertex(i, like)) for i in [BASE, *range(simplex.dim)]]


def _tol(simplex: PerturbedSimplex) -> float:
    return 100 * EPS64 * (simplex.radius + 1.0)


def _make_problem(r: int, tau: float, eps: float, seed: int, sparsity: float):
    """A point of S with known barycentric weights (some exactly 0) and a random gradient."""
    gen = torch.Generator().manual_seed(seed)
    lam = torch.rand(r + 1, generator=gen, dtype=DT)
    lam[torch.rand(r + 1, generator=gen, dtype=DT) < sparsity] = 0.0
    if float(lam.sum()) == 0.0:
        lam[0] = 1.0
    simplex = PerturbedSimplex(r, tau, eps)
    s = _point(simplex, lam)
    g = torch.randn(r, generator=gen, dtype=DT)
    return simplex, s, g, gen, lam / lam.sum()


@st.composite
def _problem(draw):
    r = draw(st.integers(1, 6))
    tau = draw(st.floats(0.1, 10.0))
    eps = draw(st.floats(1e-4, 0.5))
    seed = draw(st.integers(0, 2**31 - 1))
    sparsity = draw(st.floats(0.0, 0.9))
    return _make_problem(r, tau, eps, seed, sparsity)


# Once failed: λ_base = 0 exactly (s on the budget face), but 1 − 𝟏ᵀt/τ evaluates to
# 1.1e-16, so ε𝟏 counted as "active" for active_vertices (threshold 0) and not for
# away_vertex (rounding threshold); ⟨g, ε𝟏⟩ exceeded the away vertex's value.
@example(_make_problem(6, 1.0, 0.5, 52, 0.5))
@settings(max_examples=40, deadline=None)
@given(_problem())
def test_lmo_and_away_vertex_match_brute_force(prob) -> None:
    simplex, s, g, _, lam_true = prob
    verts = _vertices(simplex)
    vals = {i: float(g @ v) for i, v in verts}
    # LMO: any minimiser is a valid answer (ties: several vertices share the minimum)
    z = simplex.lmo(g)
    assert vals[z] <= min(vals.values()) + _tol(simplex)
    # brute-force oracle: the active set from the weights the point was built from
    true_active = [i for i, w in zip([BASE, *range(simplex.dim)], lam_true.tolist()) if w > 0]
    active = simplex.active_vertices(s)
    assert active, "a point of the simplex has at least one active vertex"
    # the code's active set is the true one, up to weights below the rounding threshold
    assert set(active) <= set(true_active)
    small = float(max([w for w in lam_true.tolist() if w > 0 and w <= 1e-12], default=0.0))
    assert set(true_active) - set(active) == set() or small > 0
    y = simplex.away_vertex(g, s)
    assert y in true_active
    # away vertex: any maximiser over the active set is valid (ties)
    assert vals[y] >= max(vals[i] for i in active) - _tol(simplex)
    # the barycentric coordinates reproduce s
    lam0, lam = simplex.barycentric(s)
    recon = lam0 * verts[0][1] + sum(lam[i] * verts[i + 1][1] for i in range(simplex.dim))
    torch.testing.assert_close(recon, s, rtol=0, atol=_tol(simplex))
    torch.testing.assert_close(
        torch.cat([lam0.reshape(1), lam]), lam_true, rtol=0, atol=_tol(simplex)
    )
    # FW gap = max_{v ∈ S} <g, s - v> ≥ 0
    gap = simplex.fw_gap(g, s)
    assert gap >= 0
    assert abs(gap - max(float(g @ (s - v)) for _, v in verts)) <= _tol(simplex) * (
        1 + float(g.abs().max())
    )


def test_ties_in_the_lmo_and_the_away_vertex() -> None:
    simplex = PerturbedSimplex(4, tau=1.0, eps=0.5)
    s = simplex.eps + simplex.tau * torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=DT)
    # g = 0: every vertex minimises <g, v>; the rule breaks ties towards ε𝟏, the gap is 0
    # and no step is taken
    g0 = torch.zeros(4, dtype=DT)
    assert simplex.lmo(g0) == BASE
    assert simplex.fw_gap(g0, s) == 0.0
    step = away_step_fw_update(s, g0, simplex, rule=StepRule("constant", step_size=0.5), t=0)
    assert step.kind == "none" and torch.equal(step.s, s)
    # two equal negative minima: both are valid; the smallest index is returned
    g = torch.tensor([0.3, -1.0, 0.2, -1.0], dtype=DT)
    assert simplex.lmo(g) == 1
    # two equal maxima among the active vertices (ε𝟏 is inactive: 𝟏ᵀt = τ)
    g = torch.tensor([0.7, -1.0, 0.7, 0.1], dtype=DT)
    assert simplex.active_vertices(s) == [0, 1, 2, 3]
    assert simplex.away_vertex(g, s) == 0
    # a tie between ε𝟏 (value 0 relative to ε𝟏) and an active vertex with g_i = 0
    s2 = simplex.eps + simplex.tau * torch.tensor([0.5, 0.0, 0.0, 0.0], dtype=DT)
    assert simplex.active_vertices(s2) == [BASE, 0]
    g2 = torch.tensor([0.0, -1.0, 0.0, 0.0], dtype=DT)
    assert simplex.away_vertex(g2, s2) in (BASE, 0)
    # every iterate of steps from tied gradients stays in S
    x = s2
    for t, gg in enumerate([g0, g2, -g2, torch.ones(4, dtype=DT)]):
        x = away_step_fw_update(x, gg, simplex, rule=StepRule("constant", step_size=1.0), t=t).s
        assert simplex.contains(x, atol=_tol(simplex))


@settings(max_examples=60, deadline=None)
@given(_problem(), st.sampled_from(["diminishing", "constant", "short_step", "line_search"]))
def test_every_step_rule_keeps_iterates_in_s(prob, kind) -> None:
    simplex, s, g, gen, _ = prob
    r = simplex.dim
    A = torch.randn(r, r, generator=gen, dtype=DT)
    H = A @ A.T + 0.1 * torch.eye(r, dtype=DT)
    c = torch.randn(r, generator=gen, dtype=DT) * simplex.tau

    def f(x: torch.Tensor) -> float:
        return float(0.5 * (x - c) @ H @ (x - c))

    rule = {
        "diminishing": StepRule("diminishing"),
        "constant": StepRule("constant", step_size=0.7),
        "short_step": StepRule("short_step", smoothness=float(torch.linalg.eigvalsh(H)[-1])),
        "line_search": StepRule("line_search"),
    }[kind]
    x = s
    for t in range(8):
        grad = H @ (x - c) if t % 2 else g  # also an arbitrary (stochastic) gradient
        step = away_step_fw_update(x, grad, simplex, rule=rule, t=t, objective=f)
        assert 0.0 <= step.gamma <= step.gamma_max + 1e-15
        x = step.s
        assert simplex.contains(x, atol=_tol(simplex)), (kind, x)
        assert bool((x >= simplex.eps).all())  # the lower bound holds exactly


def test_drop_step_puts_the_component_exactly_at_eps() -> None:
    simplex = PerturbedSimplex(3, tau=2.0, eps=0.05)
    s = torch.tensor([0.05 + 1e-3, 1.0, 0.3], dtype=DT)  # tiny weight on vertex 0
    g = torch.tensor([5.0, -1.0, 0.0], dtype=DT)  # vertex 0 is the away vertex
    step = away_step_fw_update(s, g, simplex, rule=StepRule("constant", step_size=1.0), t=0)
    assert step.kind == "drop" and step.dropped == 0
    assert float(step.s[0]) == 0.05  # snapped, not 0.05 ± rounding
    assert BASE in simplex.active_vertices(step.s) or float(step.s.sum()) <= simplex.radius


def test_projection_is_the_euclidean_projection() -> None:
    gen = torch.Generator().manual_seed(3)
    for r, tau, eps in [(1, 1.0, 0.1), (4, 2.5, 0.01), (7, 0.3, 1.0)]:
        simplex = PerturbedSimplex(r, tau, eps)
        for _ in range(20):
            x = torch.randn(r, generator=gen, dtype=DT) * 3
            p = simplex.project(x)
            assert simplex.contains(p, atol=_tol(simplex))
            # variational inequality <x − p, v − p> ≤ 0 at every vertex (hence on S)
            for _, v in _vertices(simplex):
                assert float((x - p) @ (v - p)) <= 1e-12 * (1 + float(x.abs().max()))


def _quadratic(seed: int, r: int, tau: float, eps: float):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(r, r, generator=gen, dtype=DT)
    H = A @ A.T / r + 0.2 * torch.eye(r, dtype=DT)
    c = torch.randn(r, generator=gen, dtype=DT)
    c[0] += tau  # the optimum is on a face of S (some components at ε)

    def f(x: torch.Tensor) -> float:
        return float(0.5 * (x - c) @ H @ (x - c))

    def grad(x: torch.Tensor) -> torch.Tensor:
        return H @ (x - c)

    L = float(torch.linalg.eigvalsh(H)[-1])
    return f, grad, PerturbedSimplex(r, tau, eps), L


def _reference_minimum(f, grad, simplex: PerturbedSimplex) -> torch.Tensor:
    """An independent solver: SLSQP on the same QP (scipy)."""
    import numpy as np
    from scipy.optimize import minimize

    r = simplex.dim
    res = minimize(
        lambda x: f(torch.as_tensor(x)),
        np.full(r, simplex.eps),
        jac=lambda x: grad(torch.as_tensor(x)).numpy(),
        bounds=[(simplex.eps, None)] * r,
        constraints=[{"type": "ineq", "fun": lambda x: simplex.radius - x.sum()}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    return torch.as_tensor(res.x)


@pytest.mark.parametrize("rule_kind", ["line_search", "short_step"])
def test_fw_gap_decreases_on_a_convex_quadratic(rule_kind) -> None:
    f, grad, simplex, L = _quadratic(seed=11, r=6, tau=1.5, eps=0.01)
    x_star = _reference_minimum(f, grad, simplex)
    f_star = f(x_star)
    rule = (
        StepRule("line_search")
        if rule_kind == "line_search"
        else StepRule("short_step", smoothness=L)
    )
    s0 = simplex.vertex(BASE, torch.zeros(1, dtype=DT))
    s, hist = away_step_frank_wolfe(grad, s0, simplex, iters=400, rule=rule, objective=f)
    gaps = [h.gap for h in hist]
    values = [f(s0)] + [f(h.s) for h in hist]
    # the gap certifies the primal error: f(s_t) − f* ≤ gap_t (convexity)
    for h_prev_s, gap in zip([s0] + [h.s for h in hist[:-1]], gaps):
        assert f(h_prev_s) - f_star <= gap + 1e-9
    # monotone objective (exact / majorising step) and a vanishing gap (linear rate)
    assert all(b <= a + 1e-13 for a, b in itertools.pairwise(values))
    assert min(gaps) <= 1e-9 * gaps[0]
    assert gaps[-1] <= 1e-9 * gaps[0] or hist[-1].kind == "none"
    torch.testing.assert_close(s, x_star, rtol=0, atol=1e-5)
    # the running minimum of the gap decreases
    running = [min(gaps[: k + 1]) for k in range(len(gaps))]
    assert running[len(running) // 2] < running[0]


def test_fw_with_diminishing_steps_meets_the_sublinear_gap_bound() -> None:
    # Jaggi (2013): min_{t ≤ T} gap_t ≤ 27 C_f / (2 (T + 2)), C_f ≤ L diam(S)²; diam² = 2τ².
    _, grad, simplex, L = _quadratic(seed=5, r=5, tau=1.0, eps=0.1)
    s0 = simplex.vertex(BASE, torch.zeros(1, dtype=DT))
    T = 200
    _, hist = away_step_frank_wolfe(grad, s0, simplex, iters=T, rule=StepRule("diminishing"))
    bound = 27 * L * 2 * simplex.tau**2 / (2 * (T + 2))
    assert min(h.gap for h in hist) <= bound


def test_identification_of_the_optimal_face_in_finitely_many_steps() -> None:
    # f = ½‖s − c‖²: the optimum is the projection of c; with strict complementarity
    # the away-step method reaches its face after finitely many (drop) steps.
    simplex = PerturbedSimplex(5, tau=2.5, eps=0.01)
    c = torch.tensor([2.0, 1.0, -0.5, -1.0, 0.2], dtype=DT)
    s_star = simplex.project(c)
    support = s_star > simplex.eps + 1e-9
    assert support.tolist() == [True, True, False, False, False]
    s = simplex.project(torch.full((5,), 0.5, dtype=DT))  # interior start: all active

    def grad(x: torch.Tensor) -> torch.Tensor:
        return x - c

    _, hist = away_step_frank_wolfe(
        grad, s, simplex, iters=200, rule=StepRule("short_step", smoothness=1.0)
    )
    sup = [(h.s > simplex.eps).tolist() for h in hist]
    first = next(k for k in range(len(sup)) if all(x == support.tolist() for x in sup[k:]))
    assert first < len(sup) - 1
    assert all(float(h.s[i]) == simplex.eps for h in hist[first:] for i in (2, 3, 4))
    assert any(h.kind == "drop" for h in hist[: first + 1])


def test_vertices_enumerated_are_all_extreme_points() -> None:
    simplex = PerturbedSimplex(3, tau=1.0, eps=0.2)
    verts = _vertices(simplex)
    assert len(verts) == 4
    for (_, a), (_, b) in itertools.combinations(verts, 2):
        assert not torch.equal(a, b)
    for _, v in verts:
        assert simplex.contains(v)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"dim": 3, "tau": 0.0, "eps": 0.1}, "tau"),
        ({"dim": 3, "tau": -1.0, "eps": 0.1}, "tau"),
        ({"dim": 3, "tau": 1.0, "eps": 0.0}, "eps"),
        ({"dim": 3, "tau": 1.0, "eps": -1e-3}, "eps"),
        ({"dim": 3, "tau": float("nan"), "eps": 0.1}, "tau"),
        ({"dim": -1, "tau": 1.0, "eps": 0.1}, "dim"),
    ],
)
def test_bad_simplex_arguments(kwargs, name) -> None:
    with pytest.raises(ValueError, match=name):
        PerturbedSimplex(**kwargs)


def test_bad_step_rules() -> None:
    with pytest.raises(ValueError, match="smoothness"):
        StepRule("short_step")
    with pytest.raises(ValueError, match="step_size"):
        StepRule("constant", step_size=1.5)
    with pytest.raises(ValueError, match="kind"):
        StepRule("armijo")  # type: ignore[arg-type]
    simplex = PerturbedSimplex(2, 1.0, 0.1)
    s = simplex.project(torch.zeros(2, dtype=DT))
    with pytest.raises(ValueError, match="objective"):
        away_step_fw_update(s, torch.ones(2, dtype=DT), simplex, rule=StepRule("line_search"), t=0)
    with pytest.raises(ValueError, match="s0"):
        away_step_frank_wolfe(lambda x: x, torch.zeros(2, dtype=DT), simplex, iters=3)
