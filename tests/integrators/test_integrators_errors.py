"""Bad input: clear errors naming the argument, and the input point left untouched."""

from __future__ import annotations

import pytest
import torch
from _integrators_helpers import DT, one_thread, rand_point, rand_tucker

from manifold_lowrank.integrators import (
    DenseOracle,
    GlobalBudget,
    augment,
    augmented_bug,
    bug,
    galerkin_step,
    ksl,
    parallel,
    truncate,
    tucker_bug,
    tucker_parallel,
)
from manifold_lowrank.linalg import RankRule
from manifold_lowrank.manifolds.types import FixedRankPoint, ProjectedGradients

__all__ = ["one_thread"]

MATRIX_STEPS = {
    "ksl": lambda p, gr, h: ksl(p, gr, h),
    "bug": lambda p, gr, h: bug(p, gr, h),
    "augmented_bug": lambda p, gr, h: augmented_bug(p, gr, h, RankRule(rtol=0.1)),
    "parallel": lambda p, gr, h: parallel(p, gr, h, RankRule(rtol=0.1)),
}


def _setup():
    g = torch.Generator().manual_seed(0)
    p = rand_point(10, 8, 3, g)
    grad = torch.randn(10, 8, dtype=DT, generator=g)
    pg = ProjectedGradients(grad @ p.V, p.U.T @ grad @ p.V, grad.T @ p.U)
    return p, pg


@pytest.mark.parametrize("method", list(MATRIX_STEPS))
@pytest.mark.parametrize("where", ["GV", "UtGV", "GtU", "oracle"])
def test_non_finite_gradient_raises_and_leaves_point_untouched(method, where):
    p, pg = _setup()
    saved = [t.clone() for t in p]
    if where == "oracle":
        bad = DenseOracle(lambda y: torch.full_like(y, float("nan")))
        match = "oracle"
    else:
        t = getattr(pg, where).clone()
        t[0, 0] = float("inf")
        bad = pg._replace(**{where: t})
        match = "pg"
    with pytest.raises(FloatingPointError, match=match):
        MATRIX_STEPS[method](p, bad, 0.1)
    assert all(torch.equal(a, b) for a, b in zip(saved, p))


def test_oracle_going_non_finite_mid_step_raises():
    """KSL calls the oracle three times; a NaN at the second call still raises."""
    p, _ = _setup()
    calls = []

    def fn(y):
        calls.append(1)
        return y * (float("nan") if len(calls) > 1 else 1.0)

    with pytest.raises(FloatingPointError):
        ksl(p, DenseOracle(fn), 0.1)


def test_overflowing_step_raises():
    p, pg = _setup()
    huge = pg._replace(GV=pg.GV * 1e300, GtU=pg.GtU * 1e300, UtGV=pg.UtGV * 1e300)
    with pytest.raises(FloatingPointError, match="step size"):
        parallel(p, huge, 1e10, RankRule(rtol=0.1))


@pytest.mark.parametrize("h", [-0.1, float("nan"), float("inf")])
def test_bad_step_size(h):
    p, pg = _setup()
    for fn in MATRIX_STEPS.values():
        with pytest.raises(ValueError, match=r"\bh\b"):
            fn(p, pg, h)


def test_rank_rule_errors_name_the_argument():
    with pytest.raises(ValueError, match="rtol"):
        RankRule(rtol=-0.1)
    with pytest.raises(ValueError, match="atol"):
        RankRule(atol=-1.0)
    with pytest.raises(ValueError, match="max_rank"):
        RankRule(rtol=0.1, min_rank=4, max_rank=2)
    p, pg = _setup()
    with pytest.raises(ValueError, match="rank_rule"):
        parallel(p, pg, 0.1, -1)
    with pytest.raises(TypeError, match="rank_rule"):
        parallel(p, pg, 0.1, 0.5)
    with pytest.raises(TypeError, match="rank_rule"):
        truncate(p, None)


def test_mismatched_shapes_name_the_argument():
    p, pg = _setup()
    with pytest.raises(ValueError, match=r"pg\.GV"):
        parallel(p, pg._replace(GV=pg.GV[:-1]), 0.1, 2)
    with pytest.raises(ValueError, match=r"pg\.GtU"):
        bug(p, pg._replace(GtU=pg.GtU[:, :2]), 0.1)
    with pytest.raises(ValueError, match=r"pg\.UtGV"):
        ksl(p, pg._replace(UtGV=pg.UtGV[:2]), 0.1)
    with pytest.raises(ValueError, match=r"point\.S"):
        ksl(FixedRankPoint(p.U, p.S[:2], p.V), pg, 0.1)
    with pytest.raises(ValueError, match=r"point\.U"):
        ksl(FixedRankPoint(p.U[0], p.S, p.V), pg, 0.1)
    with pytest.raises(ValueError, match="DenseOracle"):
        ksl(p, DenseOracle(lambda y: y[:, :-1]), 0.1)
    with pytest.raises(ValueError, match="core_grad"):
        galerkin_step(p, torch.zeros(2, 2, dtype=DT), 0.1)
    with pytest.raises(ValueError, match="substeps"):
        ksl(p, pg, 0.1, substeps=0)
    with pytest.raises(TypeError, match="grad"):
        ksl(p, lambda y: y, 0.1)
    with pytest.raises(ValueError, match="h"):
        augment(p, pg, substeps=2)


def test_non_finite_point_raises():
    p, pg = _setup()
    s = p.S.clone()
    s[1, 1] = float("nan")
    with pytest.raises(FloatingPointError, match="point"):
        parallel(FixedRankPoint(p.U, s, p.V), pg, 0.1, 2)


def test_tucker_bad_input():
    g = torch.Generator().manual_seed(1)
    p = rand_tucker((6, 5, 3, 3), (3, 2, 3, 3), g, full=(2, 3))
    oracle = DenseOracle(lambda y: y)
    pg = oracle.project(p)
    with pytest.raises(ValueError, match="full_modes"):
        tucker_parallel(p, pg, 0.1, 2, full_modes=(4,))
    q = rand_tucker((6, 5, 3, 3), (3, 2, 2, 3), g)
    with pytest.raises(ValueError, match="full_modes"):
        tucker_parallel(q, oracle, 0.1, 2, full_modes=(2,))
    with pytest.raises(ValueError, match="rank_rule"):
        tucker_parallel(p, pg, 0.1, [2, 2], full_modes=(2, 3))
    with pytest.raises(ValueError, match="factors"):
        tucker_bug(p._replace(factors=p.factors[:3]), pg, 0.1)
    with pytest.raises(ValueError, match=r"\bh\b"):
        tucker_bug(p, pg, -1.0, full_modes=(2, 3))
    bad = pg._replace(core=pg.core * float("nan"))
    saved = [p.core.clone(), *(f.clone() for f in p.factors)]
    with pytest.raises(FloatingPointError, match="pg"):
        tucker_parallel(p, bad, 0.1, 2, full_modes=(2, 3))
    assert all(torch.equal(a, b) for a, b in zip(saved, [p.core, *p.factors]))
    with pytest.raises(ValueError, match=r"pg\.partials"):
        tucker_parallel(p, pg._replace(partials=(pg.partials[1],) * 4), 0.1, 2, full_modes=(2, 3))


def test_budget_errors():
    with pytest.raises(ValueError, match="budget"):
        GlobalBudget(-1)
    with pytest.raises(ValueError, match="unit"):
        GlobalBudget(3, unit="bytes")
    with pytest.raises(ValueError, match="budget"):
        GlobalBudget(1, min_rank=1).allocate([torch.ones(3), torch.ones(2)])
    with pytest.raises(ValueError, match="shapes"):
        GlobalBudget(100, unit="params").allocate([torch.ones(3)])


@pytest.mark.parametrize("kind", ["matrix", "tucker"])
def test_non_callable_optimizer_factory_is_a_type_error(kind):
    """``optimizer`` must be a factory ``callable(params, lr=...)`` in both Galerkin steps."""
    from manifold_lowrank.integrators import tucker_galerkin_step

    g = torch.Generator().manual_seed(1)
    if kind == "matrix":
        p = rand_point(6, 5, 2, g)
        step = galerkin_step
        grad = torch.zeros_like(p.S)
    else:
        p = rand_tucker((5, 4, 3), (2, 2, 2), g)
        step = tucker_galerkin_step
        grad = torch.zeros_like(p.core)
    with pytest.raises(TypeError, match="optimizer must be a factory"):
        step(p, grad, 0.1, optimizer="sgd")
