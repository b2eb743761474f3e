"""Tests of the public conformance kit :func:`manifold_lowrank.testing.check_manifold`.

It must pass on FixedRank (tall, wide, square, full rank; every retraction), Tucker
(order 3 and 4) and geoopt's Sphere and Euclidean Stiefel, and it must catch broken
manifolds with a message naming the property and the measured error.
"""

from __future__ import annotations

import re

import geoopt
import pytest
import torch

from manifold_lowrank.manifolds import FixedRank, Tucker
from manifold_lowrank.testing import CHECKS, ConformanceReport, check_manifold


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- passing
@pytest.mark.parametrize(
    ("m", "n", "r"),
    [(50, 30, 5), (30, 50, 5), (20, 20, 4), (12, 9, 9), (8, 8, 8)],
    ids=["tall", "wide", "square", "full-rank-tall", "full-rank-square"],
)
def test_fixed_rank_passes(m, n, r):
    report = check_manifold(FixedRank(m, n, r))
    assert report.passed
    assert not report.skipped  # every check applies to FixedRank
    assert report["dim.consistent"].message == f"rank(proju) = dim = {(m + n - r) * r}"


@pytest.mark.parametrize("retraction", ["orthographic", "ksl"])
def test_fixed_rank_other_retractions_pass(retraction):
    report = check_manifold(FixedRank(50, 30, 5, retraction=retraction), n_points=2)
    assert report.passed
    assert report["retr.first_order"].error >= 1.8


def test_fixed_rank_float32_smoke():
    # In float32 the gradient check is limited by the rounding of grad f (a term linear
    # in t of size eps·cond(S)·‖∇f‖), so it is skipped; everything else holds.
    report = check_manifold(FixedRank(30, 20, 4), dtype=torch.float32, skip=("gradient",))
    assert report.passed and report.dtype == torch.float32


@pytest.mark.parametrize(
    ("shape", "ranks"),
    [((6, 7, 8), (2, 3, 4)), ((4, 5, 4, 3), (2, 2, 2, 2))],
    ids=["order3", "order4"],
)
def test_tucker_passes(shape, ranks):
    report = check_manifold(Tucker(shape, ranks))
    assert report.passed and not report.skipped


@pytest.mark.parametrize("shape", [(5,), (3, 6)])
def test_geoopt_sphere_passes(shape):
    report = check_manifold(geoopt.Sphere(), shape=shape)
    assert report.passed
    # geoopt manifolds have no embedding and no dim: those checks are skipped, with reasons
    assert {r.name for r in report.skipped} == {
        "proju.preserves_ambient",
        "proju.dense_idempotent",
        "retr.rejects_nan",
        "dim.consistent",
    }


@pytest.mark.parametrize("shape", [(8, 3), (2, 6, 6)])
def test_geoopt_euclidean_stiefel_passes(shape):
    assert check_manifold(geoopt.EuclideanStiefel(), shape=shape).passed


def test_geoopt_canonical_stiefel_findings():
    """geoopt.Stiefel() (canonical metric) is not an embedded submanifold geometry:

    * its ``proju(x, u) = u − x uᵀ x`` is the canonical-metric gradient map, not a
      projection (not idempotent, does not fix tangent vectors);
    * its metric is ``tr(uᵀ(I − ½xxᵀ)v)``, not the Frobenius one;
    * its Cayley ``retr(x, u)`` has derivative ``u + x xᵀu`` at 0 (``A = u xᵀ − x uᵀ``),
      so it is not a retraction for tangent inputs — the first-order and gradient
      checks catch it.

    The Riesz identity ``⟨egrad2rgrad(∇f), η⟩_x = ⟨∇f, η⟩_F`` does hold.
    """
    report = check_manifold(geoopt.Stiefel(), shape=(8, 3), raise_on_failure=False)
    failed = {r.name for r in report.failures}
    assert failed == {
        "proju.idempotent",
        "proju.fixes_tangent",
        "proju.residual_orthogonal",
        "metric.ambient",
        "retr.first_order",
        "gradient.check",
        "transp.tangent",  # measured through proju at y
    }
    assert report["egrad2rgrad.riesz"].status == "passed"
    assert report["transp.linear"].status == "passed"
    assert report["retr.first_order"].error == pytest.approx(1.0, abs=0.05)
    # the rest of the kit is usable on it with skips
    skip = ("proju", "metric.ambient", "retr.first_order", "gradient")
    assert check_manifold(geoopt.Stiefel(), shape=(8, 3), skip=skip).passed


# ----------------------------------------------------------------------------- catching bugs
class RetrLosesOrthonormality(FixedRank):
    """Euclidean step on the packed factors: U + Up is not orthonormal."""

    def retr(self, x, u):
        return x + u


class NonIdempotentProjection(FixedRank):
    def proju(self, x, u):
        p = super().proju(x, u)
        return p + 0.1 * (u - p)


class ZerothOrderRetraction(geoopt.Sphere):
    """Normalises x + 2u: on the sphere, but with the wrong derivative."""

    def retr(self, x, u):
        return super().retr(x, 2 * u)


class EgradForgetsCoreInverse(FixedRank):
    """Treats the factor gradient as an ambient vector (the classic ∂U·S⁻¹ omission)."""

    def egrad2rgrad(self, x, u):
        return self.proju(x, u)


class TranspNotTangent(FixedRank):
    def transp(self, x, y, v):
        return v


class RetrIgnoresNaN(FixedRank):
    def retr(self, x, u):
        return self.retr_polar(x, torch.nan_to_num(u))


class ElementwiseComponentInner(FixedRank):
    """Adam-style entrywise second moment: ``u/√(u⊙u)`` is no longer tangent."""

    def component_inner(self, x, u, v=None):
        return u * (u if v is None else v)


def _failure(cls_or_m, check, **kw):
    M = cls_or_m if not isinstance(cls_or_m, type) else cls_or_m(20, 12, 3)
    report = check_manifold(M, raise_on_failure=False, n_points=1, **kw)
    assert report[check].status == "failed", str(report)
    return report


def test_catches_retraction_that_loses_orthonormality():
    with pytest.raises(AssertionError) as info:
        check_manifold(RetrLosesOrthonormality(20, 12, 3), n_points=1)
    msg = str(info.value)
    assert "retr.on_manifold" in msg
    assert "U does not have orthonormal columns: max|UᵀU − I| = " in msg
    report = _failure(RetrLosesOrthonormality, "retr.on_manifold")
    assert report["retr.zero"].status == "passed"  # zero step is still the identity


def test_catches_non_idempotent_projection():
    with pytest.raises(AssertionError, match=r"proju not idempotent: ‖P\(P\(z\)\) − P\(z\)‖"):
        check_manifold(NonIdempotentProjection(20, 12, 3), n_points=1)
    report = _failure(NonIdempotentProjection, "proju.idempotent")
    res = report["proju.idempotent"]
    assert res.error > 1e-3 and res.tol < 1e-11
    # the message carries the measured error and the tolerance
    assert re.search(r"= \d\.\d\de[-+]\d\d > tol \d\.\d\de-1\d", res.message)
    assert report["proju.fixes_tangent"].status == "failed"


def test_catches_wrong_retraction_derivative():
    report = _failure(ZerothOrderRetraction(), "retr.first_order", shape=(5,))
    assert "fitted log-log slope" in report["retr.first_order"].message
    assert report["retr.first_order"].error < 1.2
    assert report["retr.on_manifold"].status == "passed"


def test_catches_wrong_riemannian_gradient():
    report = _failure(EgradForgetsCoreInverse, "egrad2rgrad.projection")
    assert report["egrad2rgrad.riesz"].status == "failed"
    assert report["gradient.check"].status == "failed"


def test_catches_transport_off_the_tangent_space_and_silent_nan():
    report = _failure(TranspNotTangent, "transp.tangent")
    assert "not tangent" in report["transp.tangent"].message
    report = _failure(RetrIgnoresNaN, "retr.rejects_nan")
    assert "FloatingPointError" in report["retr.rejects_nan"].message


def test_crash_inside_a_check_is_reported_as_failure():
    class Crashes(FixedRank):
        def transp(self, x, y, v):
            raise RuntimeError("boom")

    report = check_manifold(Crashes(10, 8, 2), n_points=1, raise_on_failure=False)
    assert "raised RuntimeError: boom" in report["transp.linear"].message


# ----------------------------------------------------------------------------- API
def test_report_api_and_skip_semantics():
    M = FixedRank(10, 8, 2)
    report = check_manifold(M, n_points=1, skip=("transp", "batch.consistent"))
    assert isinstance(report, ConformanceReport)
    assert [r.name for r in report.results] == list(CHECKS)
    skipped = {r.name for r in report.skipped}
    assert skipped == {c for c in CHECKS if c.startswith("transp.")} | {"batch.consistent"}
    text = str(report)
    assert "proju.idempotent" in text and "skipped by caller" in text
    assert "retr.first_order" in report and "nope" not in report
    with pytest.raises(KeyError):
        report["nope"]
    with pytest.raises(ValueError, match="unknown check names in skip"):
        check_manifold(M, skip=("proj",))
    with pytest.raises(ValueError, match="needs shape="):
        check_manifold(geoopt.Sphere())


def test_given_points_and_vectors_and_determinism():
    M = FixedRank(15, 10, 3)
    g = torch.Generator().manual_seed(3)
    pts = M.random(2, dtype=torch.float64, generator=g)
    vecs = M.random_tangent(pts, generator=g)
    state = torch.get_rng_state()
    r1 = check_manifold(M, points=pts, vectors=vecs)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    r2 = check_manifold(M, points=list(pts), vectors=list(vecs))
    assert [r.error for r in r1.results] == [r.error for r in r2.results]
    assert r1["points.dtype"].status == "skipped"


def test_hooks_for_a_third_party_manifold():
    """A manifold stored in a non-ambient parametrisation: the sphere in R^n stored as
    ``2x``. The hooks say how to embed it; without them the kit would find it off the
    ambient geometry."""

    def nrm(x):
        return x / x.norm(dim=-1, keepdim=True)

    def proj(p, u):  # projection onto the tangent space at the unit vector p
        return u - (p * u).sum(-1, keepdim=True) * p

    class ScaledSphere(geoopt.Sphere):
        def random(self, *size, dtype=None, device=None, generator=None):
            return 2 * nrm(torch.randn(*size, dtype=dtype, generator=generator))

        def _check_point_on_manifold(self, x, *, atol=1e-5, rtol=1e-5):
            return super()._check_point_on_manifold(x / 2, atol=atol, rtol=rtol)

        def _check_vector_on_tangent(self, x, u, *, atol=1e-5, rtol=1e-5):
            return super()._check_vector_on_tangent(x / 2, u, atol=atol, rtol=rtol)

        def proju(self, x, u):
            return proj(x / 2, u)

        def egrad2rgrad(self, x, g):
            # autograd of f(E(x)) = f(x/2) gives g = ∇f/2; the gradient is P(∇f) = P(2g)
            return proj(x / 2, 2 * g)

        def retr(self, x, u):
            return 2 * nrm(x / 2 + u)

        def transp(self, x, y, v):
            return proj(y / 2, v)

        def projx(self, x):
            return 2 * nrm(x)

    M = ScaledSphere()
    # points live at radius 2; tangent vectors are ordinary ambient vectors
    hooks = dict(
        embed=lambda x: x / 2,
        embed_tangent=lambda x, u: u,
        project_dense=lambda x, Z: M.proju(x, Z),
    )
    report = check_manifold(M, shape=(6,), **hooks, skip=("retr.rejects_nan",))
    assert report.passed, str(report)
    assert report["proju.preserves_ambient"].status == "passed"
    # without the embedding hook, retraction-vs-(x + t v) is wrong by the factor 2
    bad = check_manifold(M, shape=(6,), raise_on_failure=False)
    assert bad["retr.first_order"].status == "failed"


def test_catches_component_inner_that_breaks_adam_tangency():
    report = _failure(ElementwiseComponentInner, "metric.component_scaling")
    assert "leaves the tangent space" in report["metric.component_scaling"].message
    # the stock FixedRank passes it (block-constant component_inner)
    assert check_manifold(FixedRank(20, 12, 3), n_points=1)["metric.component_scaling"].status == (
        "passed"
    )
