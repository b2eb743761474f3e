"""Checkpoints across rank changes: exact resume in a fresh process, no pickle, rollback."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import manifold_lowrank.checkpoint as ckpt
from manifold_lowrank.checkpoint import (
    load_checkpoint,
    pack_state,
    read_checkpoint_info,
    save_checkpoint,
    unpack_state,
)
from manifold_lowrank.manifolds.types import FixedRankPoint
from manifold_lowrank.nn import LowRankLinear
from manifold_lowrank.optim import GeoLoRA

sys.path.insert(0, os.path.dirname(__file__))
import _checkpoint_scenarios as S

REPO = Path(__file__).resolve().parents[1]
N_BEFORE, N_AFTER = 7, 6


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is much faster (and deterministic) than several."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@contextlib.contextmanager
def deterministic():
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    S.deterministic()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- exact resume
def test_resume_in_fresh_process_continues_the_same_trajectory(tmp_path):
    """Save after the ranks changed (DLRT mid-cycle); a fresh process continues bit-exactly."""
    expected = {}
    with deterministic():
        for name in S.SCENARIOS:
            torch.manual_seed(0)
            obj = S.build(name, seed=1)
            r0 = S.ranks(obj)
            S.run(obj, N_BEFORE)
            if r0:
                assert S.ranks(obj) != r0, f"{name}: ranks must have changed before the save"
            if name == "dlrt":
                assert obj["opts"]["optimizer"].cycle_position() != 0  # saved mid-cycle
            save_checkpoint(
                tmp_path / name, obj["model"], obj["opts"], generators=obj["gens"], step=N_BEFORE
            )
            saved_ranks = S.ranks(obj)
            expected[name] = ([x.hex() for x in S.run(obj, N_AFTER)], saved_ranks)
    out = tmp_path / "resumed.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, S.__file__, str(tmp_path), str(out), str(N_AFTER)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    for name in S.SCENARIOS:
        losses, saved_ranks = expected[name]
        assert got[name]["losses"] == losses, name
        assert sorted(got[name]["restored"])[0] == "generator:data"
        if saved_ranks:
            assert list(got[name]["ranks_loaded"].values()) == saved_ranks


# ---------------------------------------------------------------------------- pack/unpack
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
)
_dtypes = [
    torch.float32,
    torch.float64,
    torch.bfloat16,
    torch.float16,
    torch.int64,
    torch.uint8,
    torch.bool,
]


@st.composite
def _tensors(draw):
    dtype = draw(st.sampled_from(_dtypes))
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    g = torch.Generator().manual_seed(draw(st.integers(0, 1000)))
    t = torch.randn(shape, generator=g, dtype=torch.float64) * 10
    return t.to(dtype)


_trees = st.recursive(
    st.one_of(_scalars, _tensors()),
    lambda kids: st.one_of(
        st.lists(kids, max_size=3),
        st.tuples(kids, kids),
        st.dictionaries(st.one_of(st.integers(-5, 5), st.text(max_size=4)), kids, max_size=3),
    ),
    max_leaves=10,
)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8))
            if a.numel()
            else (isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype)
        )
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@settings(max_examples=40, deadline=None)
@given(tree=_trees)
def test_pack_unpack_round_trip_through_json_and_safetensors(tree):
    """Any nested state survives JSON + safetensors exactly (types, int keys, NaN, dtypes)."""
    import safetensors.torch as sft

    skel, tensors = pack_state(tree, prefix="x/")
    skel = json.loads(json.dumps(skel, allow_nan=False))
    tensors = sft.load(sft.save(tensors)) if tensors else {}
    assert _same(tree, unpack_state(skel, tensors))


def test_pack_rejects_non_state_objects_naming_the_path():
    with pytest.raises(TypeError, match=r"state/0/fn"):
        pack_state({"state": {0: {"fn": lambda x: x}}})
    with pytest.raises(TypeError, match="key"):
        pack_state({object(): 1})


@pytest.mark.parametrize(
    "skel",
    [
        {"__pickle__": "cos\nsystem\n"},
        {"__tensor__": "missing"},
        {"__tensor__": "a", "__tuple__": []},
        {"__dtype__": "not_a_dtype"},
        {"__dict__": [[{"__tensor__": "a"}, 1]]},
    ],
)
def test_unpack_rejects_malformed_skeletons(skel):
    with pytest.raises(ValueError):
        unpack_state(skel, {"a": torch.zeros(1)})


# ---------------------------------------------------------------------------- safety
def _small(seed=0, max_rank=6):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        LowRankLinear(6, 8, 2, max_rank=max_rank, dtype=torch.float64, generator=g)
    )
    opt = GeoLoRA(model, lr=0.5, tau=0.01, max_rank=6, momentum=0.9)
    x = torch.randn(10, 6, generator=g, dtype=torch.float64)
    for _ in range(3):
        opt.zero_grad()
        (model(x).sin().sum()).backward()
        opt.step()
    return model, opt


def _state(model, opt):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        pack_state(opt.state_dict()),
    )


def _assert_state(model, opt, ref):
    sd, (skel, tens) = ref
    now = model.state_dict()
    assert list(now) == list(sd)
    for k in sd:
        assert torch.equal(now[k], sd[k]), k
    skel2, tens2 = pack_state(opt.state_dict())
    assert skel2 == skel and all(torch.equal(tens[k], tens2[k]) for k in tens)


def test_load_never_unpickles(tmp_path, monkeypatch):
    model, opt = _small()
    assert model[0].rank != 2  # ranks changed
    save_checkpoint(tmp_path / "c", model, opt, metadata={"note": "x"})

    def boom(*a, **k):
        raise AssertionError("pickle/torch.load must not be used to load a checkpoint")

    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    monkeypatch.setattr(torch, "load", boom)
    m2, o2 = _small(seed=5)
    info = load_checkpoint(tmp_path / "c", m2, o2)
    assert info.metadata == {"note": "x"} and info.ranks == {"0": model[0].rank}
    _assert_state(m2, o2, _state(model, opt))
    assert read_checkpoint_info(tmp_path / "c").ranks == info.ranks


def _tamper_json(path, fn):
    meta = json.loads((path / "checkpoint.json").read_text())
    fn(meta)
    (path / "checkpoint.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "tamper",
    [
        "library",
        "version",
        "marker",
        "bytes",
        "truncate",
        "extra_tensor",
    ],
)
def test_bad_checkpoints_raise_and_change_nothing(tmp_path, tamper):
    model, opt = _small()
    path = save_checkpoint(tmp_path / "c", model, opt)
    if tamper == "library":
        _tamper_json(path, lambda m: m.update(library="evil"))
    elif tamper == "version":
        _tamper_json(path, lambda m: m.update(format_version=99))
    elif tamper == "marker":
        _tamper_json(
            path, lambda m: m["optimizers"]["optimizer"].update(skeleton={"__reduce__": []})
        )
    elif tamper in ("bytes", "truncate"):
        f = path / "model.safetensors"
        data = bytearray(f.read_bytes())
        if tamper == "bytes":
            data[-1] ^= 0xFF
        else:
            data = data[: len(data) // 2]
        f.write_bytes(bytes(data))
        if tamper == "truncate":  # also fix the hash: safetensors itself must reject it
            _tamper_json(path, lambda m: m["files"].update({"model.safetensors": ckpt._sha256(f)}))
    else:
        import safetensors.torch as sft

        f = path / "model.safetensors"
        t = sft.load_file(str(f))
        t["smuggled"] = torch.zeros(3)
        sft.save_file(t, str(f))
        _tamper_json(path, lambda m: m["files"].update({"model.safetensors": ckpt._sha256(f)}))
    m2, o2 = _small(seed=5)
    ref = _state(m2, o2)
    with pytest.raises(ValueError):
        load_checkpoint(path, m2, o2)
    _assert_state(m2, o2, ref)


def test_failed_apply_rolls_back(tmp_path):
    """A saved rank above the new model's max_rank fails while applying: full rollback."""
    model, opt = _small()
    assert model[0].rank > 2
    path = save_checkpoint(tmp_path / "c", model, opt)
    m2, o2 = _small(seed=3, max_rank=2)
    ref = _state(m2, o2)
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match="rolled back"):
        load_checkpoint(path, m2, o2)
    _assert_state(m2, o2, ref)
    assert torch.equal(torch.get_rng_state(), state)


def test_mismatched_model_or_names(tmp_path):
    model, opt = _small()
    path = save_checkpoint(tmp_path / "c", model, opt, generators={"g": torch.Generator()})
    other = nn.Sequential(nn.Linear(6, 8))
    with pytest.raises(ValueError, match="missing keys"):
        load_checkpoint(path, other)
    m2, o2 = _small(seed=1)
    with pytest.raises(ValueError, match="no optimizer named 'head'"):
        load_checkpoint(path, m2, {"head": o2})
    with pytest.raises(ValueError, match="no generator named 'data'"):
        load_checkpoint(path, m2, o2, generators={"data": torch.Generator()})
    with pytest.raises(ValueError, match="saved from a GeoLoRA"):
        load_checkpoint(path, m2, torch.optim.SGD(m2.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_checkpoint(tmp_path, m2)
    with pytest.raises(TypeError, match="model"):
        save_checkpoint(tmp_path / "d", model="not a module")
    with pytest.raises(TypeError, match="metadata"):
        save_checkpoint(tmp_path / "d", model, metadata={"x": float("nan")})
    with pytest.raises(FileExistsError):
        save_checkpoint(path, model, overwrite=False)


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    model, opt = _small()
    save_checkpoint(tmp_path / "c", model, opt, step=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        opt.zero_grad()
        model(torch.ones(2, 6, dtype=torch.float64)).sum().backward()
        opt.step()
    save_checkpoint(tmp_path / "c", model, opt, step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert read_checkpoint_info(tmp_path / "c").step == 2


def test_rank_zero_layers_and_generators_round_trip(tmp_path):
    """A layer truncated to rank 0 (zero-size factors) and a generator's stream survive."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(LowRankLinear(5, 4, 2, dtype=torch.float64, generator=g))
    U, S, V = model[0].point()
    model[0].set_point(FixedRankPoint(U, torch.zeros_like(S), V))
    opt = GeoLoRA(model, lr=0.5, tau=0.5, min_rank=0, max_rank=4)
    opt.zero_grad()
    model(torch.eye(5, dtype=torch.float64)).sum().mul(0.0).backward()
    opt.step()  # the augmented core is exactly zero: rank 0 (min_rank=0)
    assert model[0].rank == 0
    gen = torch.Generator().manual_seed(42)
    save_checkpoint(tmp_path / "c", model, opt, generators={"gen": gen})
    expected = torch.rand(4, generator=gen)
    m2 = nn.Sequential(LowRankLinear(5, 4, 2, dtype=torch.float64))
    o2 = GeoLoRA(m2, lr=0.5, tau=0.5, min_rank=0, max_rank=4)
    g2 = torch.Generator().manual_seed(7)
    load_checkpoint(tmp_path / "c", m2, o2, generators={"gen": g2})
    assert m2[0].rank == 0 and m2[0].U.shape == (4, 0)
    assert torch.equal(torch.rand(4, generator=g2), expected)
    assert o2.state_dict()["lowrank"]["ranks"] == [0]
