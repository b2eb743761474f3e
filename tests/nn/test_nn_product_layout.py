"""The product layout of ``LowRankLinearFunction`` (module docstring of
:mod:`manifold_lowrank.nn.functional`, "Layout").

Every matrix product of a forward + backward pass is intercepted at the ATen level. A
product ``A (p×q) · B (q×c)`` is *skinny* when its result has the small rank ``r`` as its
column count while both other dimensions are long (``c = r < q`` and ``p > r``): that is
the layout MKL runs up to 10–15× slower. None may occur; the math is checked alongside.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from manifold_lowrank.manifolds.types import ProjectedGradients
from manifold_lowrank.nn.functional import low_rank_linear

MM_OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}


class _RecordProducts(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in MM_OPS:
            a, b = (args[1], args[2]) if func is torch.ops.aten.addmm.default else args[:2]
            self.shapes.append((tuple(a.shape[-2:]), tuple(b.shape[-2:])))
        return func(*args, **(kwargs or {}))


def _skinny(shapes: list[tuple[tuple[int, ...], tuple[int, ...]]], r: int) -> list:
    return [(a, b) for a, b in shapes if b[1] == r and a[1] > r and a[0] > r]


def test_no_skinny_products_in_forward_and_backward() -> None:
    g = torch.Generator().manual_seed(0)
    n_rows, n, m, r = 64, 48, 40, 3
    x = torch.randn(n_rows, n, generator=g, dtype=torch.float64, requires_grad=True)
    U = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))[0]
    S = torch.randn(r, r, generator=g, dtype=torch.float64)
    U, S, V = (t.clone().requires_grad_(True) for t in (U, S, V))
    dy = torch.randn(n_rows, m, generator=g, dtype=torch.float64)
    got: list[ProjectedGradients] = []
    with _RecordProducts() as rec:
        y = low_rank_linear(x, U, S, V, scaling=0.5, recorder=got.append)
        y.backward(dy)
    assert len(rec.shapes) >= 8  # the products were seen
    assert _skinny(rec.shapes, r) == []
    # the arithmetic is unchanged: against dense autograd references
    W = 0.5 * U.detach() @ S.detach() @ V.detach().T
    G = 0.5 * dy.T @ x.detach()
    tol = 50 * torch.finfo(torch.float64).eps * float(G.abs().max())
    torch.testing.assert_close(y.detach(), x.detach() @ W.T, rtol=0, atol=tol)
    torch.testing.assert_close(x.grad, dy @ W, rtol=0, atol=tol)
    (pg,) = got
    Ud, Vd = U.detach(), V.detach()
    torch.testing.assert_close(pg.GV, G @ Vd, rtol=0, atol=tol)
    torch.testing.assert_close(pg.UtGV, Ud.T @ G @ Vd, rtol=0, atol=tol)
    torch.testing.assert_close(pg.GtU, G.T @ Ud, rtol=0, atol=tol)


def test_detector_flags_the_naive_layout() -> None:
    """The check above can fail: the naive ``x @ V`` and ``xᵀ a`` are flagged."""
    x, V, a = torch.randn(64, 48), torch.randn(48, 3), torch.randn(64, 3)
    with _RecordProducts() as rec:
        _ = x @ V
        _ = x.T @ a
    assert len(_skinny(rec.shapes, 3)) == 2
