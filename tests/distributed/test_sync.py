"""Data-parallel DLRT/GeoLoRA with gloo: bit-identical replicas, equality with one process.

The workers (tests/distributed/_sync_worker.py) run 2 or 4 gloo processes on 127.0.0.1 and
return their whole trajectories (all factors and ranks after every step).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from manifold_lowrank.distributed import DistributedLowRank, launch_local, sync_gradients

sys.path.insert(0, os.path.dirname(__file__))
import _sync_worker as W

TOL_REF = 1e-6  # the bound (float64); observed ≤ 1e-9 (Adam's ε amplifies rounding)


def _layer_dims():
    return [(W.D_HID, W.D_IN), (W.D_OUT, W.D_HID)]  # (m, n) of the two layers


def _check_identical_and_reference(results, names, world):
    for name in names:
        r0 = results[0][name]
        ranks = r0["ranks"]
        assert len({tuple(r) for r in ranks}) > 1, f"{name}: ranks never changed"
        for w in range(1, world):
            rw = results[w][name]
            assert rw["ranks"] == ranks, (name, w)
            for t, (a, b) in enumerate(zip(r0["flat"], rw["flat"])):
                assert torch.equal(a, b), f"{name}: worker {w} differs from worker 0 at step {t}"
            assert rw["in_sync"]
        ref = r0["ref"]
        assert ref["ranks"] == ranks, f"{name}: rank decisions differ from the 1-process run"
        for t, (a, b) in enumerate(zip(r0["flat"], ref["flat"])):
            err = float((a - b).abs().max())
            assert err <= TOL_REF, f"{name}: step {t} differs from 1 process by {err}"


def _check_payload(res):
    """Exactly the projected gradients (no factor .grad) plus the biases cross the wire."""
    dims = _layer_dims()
    n_bias = W.D_HID + W.D_OUT
    geo = res["geolora"]
    for rb, nbytes in zip(geo["ranks_before"], geo["payload"]):
        numel = sum((m + n) * r + r * r for (m, n), r in zip(dims, rb)) + n_bias
        assert nbytes == 8 * numel
    dl = res["dlrt"]
    for rb, kind, nbytes in zip(dl["ranks_before"], dl["kinds"], dl["payload"]):
        if kind.startswith("augment"):
            numel = sum((m + n) * r + r * r for (m, n), r in zip(dims, rb))
        else:  # coefficient step: only ∂L/∂S (r×r) of the augmented layers
            numel = sum(r * r for r in rb)
        assert nbytes == 8 * (numel + n_bias), (kind, rb, nbytes)


@pytest.mark.distributed
def test_two_processes_identical_and_equal_to_one_process():
    names = ["geolora", "dlrt", "dlrt_bug", "geolora_tucker"]
    res = launch_local(W.sync_worker, 2, (names, True), timeout=240)
    _check_identical_and_reference(res, names, 2)
    _check_payload(res[0])
    # NaN on worker 1 only, at step 2: every worker skips that step, replicas stay identical
    for r in res:
        nan = r["nan"]
        assert nan["nan_skips"] == 1
        assert torch.equal(nan["flat"][3], nan["flat"][2])
        assert not torch.equal(nan["flat"][4], nan["flat"][3])  # training continues
        assert all(torch.isfinite(f).all() for f in nan["flat"])
    for a, b in zip(res[0]["nan"]["flat"], res[1]["nan"]["flat"]):
        assert torch.equal(a, b)
    # DDP on the fixed-shape parameters + our sync of the factors == our sync alone
    for r in res:
        assert r["ddp"]["ranks"] == res[0]["geolora"]["ranks"]
        for a, b in zip(r["ddp"]["flat"], res[0]["geolora"]["flat"]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # buffers (BatchNorm statistics of different shards) are re-broadcast after each step
    assert res[0]["bn_in_sync"] and res[1]["bn_in_sync"]
    assert res[0]["bn_buffer_bytes"] > 0
    # diverged ranks: the same RuntimeError on both workers (no deadlock), then repaired
    msgs = [r["mismatch_error"] for r in res]
    assert msgs[0] is not None and msgs[0] == msgs[1]
    assert "ranks diverged" in msgs[0]
    assert not res[0]["in_sync_before"] and not res[1]["in_sync_before"]
    assert res[0]["in_sync_after"] and res[1]["in_sync_after"]
    assert res[1]["rank_after"] == res[0]["rank_after"] == 2


@pytest.mark.distributed
def test_four_processes_identical_and_equal_to_one_process():
    names = ["geolora", "dlrt"]
    res = launch_local(W.sync_worker, 4, (names, False), timeout=240)
    _check_identical_and_reference(res, names, 4)
    _check_payload(res[0])


def test_sync_needs_a_process_group():
    model = W.make_model(0)
    with pytest.raises(RuntimeError, match="init_process_group"):
        sync_gradients(model)
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedLowRank(model, torch.optim.SGD(model.parameters(), lr=0.1))
