"""Global rank budget across layers."""

from __future__ import annotations

import itertools

import torch
from _integrators_helpers import DT, one_thread, rand_point
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold_lowrank.integrators import GlobalBudget, allocate_ranks, parameter_count

__all__ = ["one_thread"]


def _values(draw_lists):
    return [torch.tensor(sorted(v, reverse=True), dtype=DT) for v in draw_lists]


sv_lists = st.lists(st.lists(st.floats(1e-6, 10.0), min_size=1, max_size=6), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(lists=sv_lists, budget=st.integers(0, 30), normalize=st.sampled_from(["fro", "max", "none"]))
def test_rank_budget_keeps_the_globally_largest_normalized_values(lists, budget, normalize):
    sv = _values(lists)
    budget = max(budget, len(sv))  # min_rank 1 per layer must fit
    ranks = GlobalBudget(budget, unit="rank", normalize=normalize).allocate(sv)
    assert sum(ranks) <= budget
    assert all(1 <= r <= s.numel() for r, s in zip(ranks, sv))

    # exactly the top values (beyond the first of each layer) are kept
    def norm(s):
        return s / {"fro": s.norm(), "max": s.max(), "none": 1.0}[normalize]

    kept = [float(norm(s)[j]) for s, r in zip(sv, ranks) for j in range(1, r)]
    dropped = [float(norm(s)[j]) for s, r in zip(sv, ranks) for j in range(r, s.numel())]
    if kept and dropped:
        assert min(kept) >= max(dropped) - 1e-12
    total = sum(s.numel() for s in sv)
    assert sum(ranks) == min(budget, total)


def test_params_budget_is_respected():
    shapes = [(30, 20), (10, 10), (50, 5)]
    sv = [
        torch.tensor([5.0, 3.0, 1.0, 0.5], dtype=DT),
        torch.tensor([1.0, 0.9, 0.8], dtype=DT),
        torch.tensor([2.0, 0.1], dtype=DT),
    ]
    # normalised (fro): layer 0 (.85, .51, .17, .085), layer 1 (.64, .58, .51), layer 2 (.999, .05)
    gb = GlobalBudget(10**6, unit="params")
    assert gb.allocate(sv, shapes=shapes) == [4, 3, 2]
    for budget in (160, 300, 500, 800):
        gb = GlobalBudget(budget, unit="params")
        ranks = gb.allocate(sv, shapes=shapes)
        assert gb.cost(ranks, shapes) <= budget
    # min ranks cost 51 + 21 + 56 = 128; the next largest value is layer 1's 0.58 (+23)
    assert GlobalBudget(151, unit="params").allocate(sv, shapes=shapes) == [1, 2, 1]
    assert GlobalBudget(150, unit="params").allocate(sv, shapes=shapes) == [1, 1, 1]
    assert parameter_count((30, 20), 2) == 2 * 50 + 4


def test_budget_brute_force_rank_unit():
    """For unit='rank' the allocation maximises the sum of kept normalised values."""
    g = torch.Generator().manual_seed(0)
    sv = [torch.rand(4, generator=g, dtype=DT).sort(descending=True).values for _ in range(3)]
    budget = 7
    ranks = allocate_ranks(sv, budget)
    normed = [s / s.norm() for s in sv]

    def score(rs):
        return sum(float(n[:r].sum()) for n, r in zip(normed, rs))

    best = max(
        (rs for rs in itertools.product(range(1, 5), repeat=3) if sum(rs) <= budget), key=score
    )
    assert abs(score(ranks) - score(best)) < 1e-12


def test_budget_truncate_points_and_max_ranks():
    g = torch.Generator().manual_seed(1)
    points = [rand_point(12, 10, 6, g), rand_point(9, 9, 6, g)]
    gb = GlobalBudget(7)
    out = gb.truncate(points, max_ranks=[2, None])
    assert out[0].point.rank <= 2
    assert sum(r.point.rank for r in out) <= 7
    for res, p in zip(out, points):
        assert torch.allclose(res.M, res.point.U.T @ p.U, atol=1e-13)
    # zeros are never kept beyond the minimum rank
    ranks = allocate_ranks([torch.tensor([1.0, 0.0, 0.0]), torch.tensor([2.0, 1.0])], 10)
    assert ranks == [1, 2]
