"""Compressors and federated Bernoulli-LoRA (QGD, MARINA, EF21) on torch.distributed/gloo."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold_lowrank.distributed import (
    FederatedBernoulliLoRA,
    RandK,
    RandomDithering,
    TopK,
    launch_local,
    make_compressor,
)
from manifold_lowrank.problems import LinearRegression

sys.path.insert(0, os.path.dirname(__file__))
import _fed_worker

F64 = torch.float64


# ---------------------------------------------------------------------------- compressors
def _mc_moments(comp, x, n, seed=0, shared=True):
    """Monte-Carlo mean and mean squared error of C(x) over n draws."""
    g = torch.Generator().manual_seed(seed)
    outs = torch.stack([comp(x, generator=g) for _ in range(n)])
    err = ((outs - x) ** 2).sum(1)
    return outs, err


@pytest.mark.parametrize("comp", [RandK(k=3), RandK(ratio=0.5), RandomDithering(levels=2)])
def test_unbiased_compressors_mean_and_variance(comp):
    """E[C(x)] = x entrywise (CLT tolerance) and E‖C(x) − x‖² ≤ ω‖x‖² (RandK: equality)."""
    g = torch.Generator().manual_seed(1)
    d = 12
    n = 1000 if isinstance(comp, RandomDithering) else 3000
    x = torch.randn(d, generator=g, dtype=F64)
    outs, err = _mc_moments(comp, x, n)
    mean, std = outs.mean(0), outs.std(0)
    assert torch.all((mean - x).abs() <= 5 * std / math.sqrt(n) + 1e-12)
    omega = comp.omega(d)
    var = float(err.mean())
    var_se = float(err.std()) / math.sqrt(n)
    if isinstance(comp, RandK):
        # exact: E‖C(x) − x‖² = (d/k − 1)‖x‖²
        assert abs(var - omega * float(x @ x)) <= 5 * var_se + 1e-12 * float(x @ x)
    else:
        assert var <= omega * float(x @ x) + 5 * var_se
        assert var > 0


@settings(max_examples=30, deadline=None)
@given(
    d=st.integers(min_value=1, max_value=40),
    frac=st.floats(min_value=0.01, max_value=1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_topk_is_contractive(d, frac, seed):
    """‖C(x) − x‖² ≤ (1 − k/d)‖x‖² and C keeps the k largest magnitudes."""
    x = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    comp = TopK(ratio=frac)
    k = comp.k_for(d)
    cx = comp(x)
    assert int((cx != 0).sum()) <= k
    tol = 10 * torch.finfo(F64).eps * float(x @ x)
    assert float(((cx - x) ** 2).sum()) <= (1 - comp.alpha(d)) * float(x @ x) + tol
    kept = x.abs()[cx != 0]
    dropped = x.abs()[cx == 0]
    if kept.numel() and dropped.numel():
        assert float(kept.min()) >= float(dropped.max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "comp", [RandK(k=5), TopK(k=5), RandomDithering(levels=1), RandomDithering(levels=7)]
)
def test_payload_size_is_exact_and_below_dense(comp, dtype):
    """The payload has exactly payload_bytes() bytes, ratio < 1, and decodes consistently."""
    d = 37
    g = torch.Generator().manual_seed(0)
    x = torch.randn(d, generator=g, dtype=dtype)
    shared = comp.shared_randomness(d, torch.Generator().manual_seed(5))
    payload = comp.compress(x, shared=shared, generator=g)
    assert payload.dtype == torch.uint8
    assert payload.numel() == comp.payload_bytes(d, dtype)
    assert comp.ratio(d, dtype) < 1.0
    out = comp.decompress(payload, d, dtype, shared=shared)
    assert out.shape == (d,) and out.dtype == dtype
    if isinstance(comp, TopK):
        nz = out != 0
        assert torch.equal(out[nz], x[nz])
    if isinstance(comp, RandK):
        assert torch.allclose(out[shared], x[shared] * d / 5)
    if isinstance(comp, RandomDithering):
        # every coordinate is ‖x‖·sign·level/s with level ∈ {⌊u⌋, ⌈u⌉}
        u = comp.levels * x.abs() / torch.linalg.vector_norm(x)
        lev = out.abs() * comp.levels / torch.linalg.vector_norm(x)
        assert torch.all((lev - torch.floor(u)).abs() < 1e-4 + (u - torch.floor(u) > 0))
        assert torch.all((out == 0) | (torch.sign(out) == torch.sign(x)))


def test_dithering_ratio_formula():
    """1 + ⌈log₂(s+1)⌉ bits per coordinate plus one norm value."""
    c = RandomDithering(levels=1)
    assert c.bits == 2
    assert c.payload_bytes(1000, torch.float32) == 4 + 250
    assert RandomDithering(levels=4).bits == 4


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: RandK(k=0), "k must be a positive int"),
        (lambda: RandK(), "exactly one of k"),
        (lambda: RandK(k=2, ratio=0.5), "exactly one of k"),
        (lambda: TopK(ratio=1.5), r"ratio must lie in \(0, 1\]"),
        (lambda: TopK(ratio=0.0), r"ratio must lie in \(0, 1\]"),
        (lambda: RandomDithering(levels=0), "levels must be a positive int"),
        (lambda: make_compressor("gzip"), "compressor must be one of"),
    ],
)
def test_compressor_bad_parameters(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_compressor_k_larger_than_d():
    with pytest.raises(ValueError, match="k must be <= d"):
        TopK(k=10)(torch.zeros(4))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"estimator": "sgd", "compressor": RandK(k=1)}, "estimator must be one of"),
        ({"estimator": "qgd", "compressor": TopK(k=1)}, "compressor must be unbiased"),
        ({"estimator": "ef21", "compressor": RandK(k=1)}, "compressor must be contractive"),
        ({"estimator": "marina", "compressor": RandK(k=1)}, "marina_prob is required"),
        (
            {"estimator": "marina", "compressor": RandK(k=1), "marina_prob": 1.5},
            r"marina_prob must lie in \(0, 1\]",
        ),
        ({"estimator": "qgd", "compressor": RandK(k=1), "p": -0.1}, r"p must lie in \[0, 1\]"),
        ({"estimator": "qgd", "compressor": "randk", "compressor_kwargs": {"k": 0}}, "k must"),
    ],
)
def test_federated_bad_input(kwargs, match):
    W = torch.zeros(3, 3, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        FederatedBernoulliLoRA([W], lr=0.1, rank=1, **kwargs)


def test_federated_needs_process_group():
    W = torch.zeros(3, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="init_process_group"):
        FederatedBernoulliLoRA([W], lr=0.1, rank=1, estimator="qgd", compressor=RandK(k=1))


# ---------------------------------------------------------------------------- multi-process
STEPS = 60


def _check_run(results, world, names):
    X, y = _fed_worker.make_data()
    full = LinearRegression(X, y, _fed_worker.SHAPE)
    d = X.shape[1]
    for name in names:
        r0 = results[0][name]
        # identical weights on every worker after every step (and at the start: the
        # workers were created with different weights, rank 0's were broadcast)
        for r in range(1, world):
            assert torch.equal(results[r][name]["traj"], r0["traj"]), (name, r)
        assert torch.equal(r0["traj"][0], torch.zeros(_fed_worker.SHAPE, dtype=F64))
        # convergence on linear regression: the full gradient norm drops by >= 1e3
        g0 = full.grad_norm_sq(r0["traj"][0])
        g_end = full.grad_norm_sq(r0["traj"][-1])
        assert g_end <= 1e-3 * g0, (name, world, g0, g_end)
        # bytes: a compressed step sends exactly the payload, ratio · dense < dense
        dense = r0["dense_bytes"]
        assert dense == d * 8
        payload = r0["payload_bytes"]
        assert payload < dense
        comp = _fed_worker.make_compressor(name)
        assert payload == comp.ratio(d, F64) * dense
        for nb, fs in zip(r0["bytes"], r0["full_sync"]):
            assert nb == (dense if fs else payload)
        if name != "marina":
            assert not any(r0["full_sync"])
        else:
            assert r0["full_sync"][0] and 0 < sum(r0["full_sync"]) < STEPS
        assert r0["bytes_sent"] == sum(r0["bytes"]) < STEPS * dense
        # determinism across processes: a second run with the same seed is identical
        if "repeat_traj" in r0:
            assert torch.equal(r0["repeat_traj"], r0["traj"])


@pytest.mark.distributed
def test_federated_two_processes():
    names = ["qgd", "qgd_dither", "marina", "ef21"]
    res = launch_local(
        _fed_worker.federated_worker,
        2,
        (names, STEPS, 1234, ["marina", "qgd_dither"]),
        timeout=180,
    )
    _check_run(res, 2, names)


@pytest.mark.distributed
def test_federated_four_processes():
    names = ["qgd", "marina", "ef21"]
    res = launch_local(_fed_worker.federated_worker, 4, (names, STEPS, 99, ["ef21"]), timeout=180)
    _check_run(res, 4, names)


@pytest.mark.distributed
def test_launch_local_reports_worker_failure():
    with pytest.raises(RuntimeError, match="failed on purpose"):
        launch_local(_fed_worker.failing_worker, 1, timeout=120)
    with pytest.raises(ValueError, match="world_size must be a positive int"):
        launch_local(_fed_worker.failing_worker, 0)
    with pytest.raises(ValueError, match="timeout must be"):
        launch_local(_fed_worker.failing_worker, 1, timeout=0)
