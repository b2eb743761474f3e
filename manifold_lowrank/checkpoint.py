r"""Training checkpoints that survive rank changes: safetensors + JSON, never pickle.

A rank-adaptive run changes the shapes of its parameters (``U``: ``m×r``, ``S``: ``r×r``,
``V``: ``n×r`` with a new ``r`` after every truncation) and of the optimizer state tied to
them (momenta in the coordinates of the current bases). :func:`save_checkpoint` writes
everything needed to continue such a run *bit for bit* in a fresh process, and
:func:`load_checkpoint` restores it into freshly constructed objects (the layers resize
themselves to the saved ranks, see :class:`~manifold_lowrank.nn.LowRankModule`).

Layout of a checkpoint directory
--------------------------------
``checkpoint.json``
    ``{"library": "manifold_lowrank", "format_version": 1, "kind": "training_checkpoint",
    "step", "ranks": {layer: rank}, "model": {"skeleton"}, "optimizers": {name:
    {"class", "skeleton"}}, "stateful": {...}, "generators": {name: {"device"}},
    "rng": {"python": ..., "numpy": ...}, "metadata": {user JSON}, "files": {file:
    sha256}}``. The *skeleton* of a state dict is its nested structure in JSON, with every
    tensor replaced by ``{"__tensor__": "<key in the safetensors file>"}`` (see
    :func:`pack_state`).
``model.safetensors``
    ``model.state_dict()`` under its own keys, factors at their current ranks (readable
    alone with :func:`safetensors.torch.load_file`).
``optimizer.safetensors``
    the tensors of every optimizer and other stateful object, named
    ``<name>/<path inside its state dict>`` (``state/3/exp_avg``, …). Step counters,
    hyper-parameters, the DLRT cycle position, rank histories are in the JSON skeleton.
``rng.safetensors``
    ``torch.get_rng_state()``, the CUDA generators (if CUDA is initialised), every named
    :class:`torch.Generator`'s ``get_state()`` (a ``uint8`` tensor) and NumPy's global
    MT19937 key; Python's :mod:`random` state is in the JSON.

Security and robustness
-----------------------
Loading uses only :func:`json.load` and :func:`safetensors.torch.load_file`: **no pickle,
no** :func:`torch.load`, so a checkpoint from an untrusted source cannot execute code.
The JSON is validated strictly (only the markers above, every tensor reference must
exist, every tensor must be referenced); the SHA-256 of every tensor file is checked.
Everything is validated before anything is modified; if applying the state still fails
(e.g. a saved rank exceeds a layer's ``max_rank``), the model, optimizers and generators
are rolled back to their previous state and a :class:`ValueError` is raised.
Saving is atomic: files are written to a temporary sibling directory which then replaces
the target, so a crash during a save never leaves a half-written checkpoint under the
target name (an existing checkpoint is kept until the new one is complete).

Determinism
-----------
With the same code, thread count and :func:`torch.use_deterministic_algorithms`, a run
resumed from a checkpoint continues with *exactly* the losses of the uninterrupted run
(tested in a fresh process): tensors are stored bit-exactly, the optimizer's step
counters and rank-adaptive bookkeeping are restored, and so are the RNG streams.

Cost: one pass over all tensors (copy to CPU, SHA-256); the load keeps a copy of the
current model/optimizer state for the rollback (memory ``≈ 2×`` the model while loading).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from manifold_lowrank.optim.lowrank_base import find_lowrank_layers, layer_rank

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "CheckpointInfo",
    "load_checkpoint",
    "pack_state",
    "read_checkpoint_info",
    "save_checkpoint",
    "unpack_state",
]

CHECKPOINT_FORMAT_VERSION = 1
LIBRARY_NAME = "manifold_lowrank"
KIND = "training_checkpoint"
META_NAME = "checkpoint.json"
MODEL_FILE = "model.safetensors"
STATE_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
_MARKERS = ("__tensor__", "__tuple__", "__dict__", "__float__", "__dtype__", "__device__")
_MAX_DEPTH = 64


# --------------------------------------------------------------------------- pack/unpack
def _float_json(x: float) -> Any:
    if math.isfinite(x):
        return x
    return {"__float__": "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")}


def pack_state(obj: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    r"""Split a (nested) state dict into a JSON skeleton and a flat dict of tensors.

    Encoding: ``None``, ``bool``, ``int``, ``str`` and finite ``float`` stay as they are;
    ``list`` → list; ``tuple`` → ``{"__tuple__": [...]}``; ``dict`` →
    ``{"__dict__": [[key, value], ...]}`` (keys may be ``int``, as in optimizer states);
    non-finite floats → ``{"__float__": "nan" | "inf" | "-inf"}``;
    :class:`torch.dtype` → ``{"__dtype__": "float32"}``; :class:`torch.device` →
    ``{"__device__": "cpu"}``; a tensor → ``{"__tensor__": name}`` with ``name`` =
    ``prefix`` + its path (``state/0/exp_avg``); the tensor (detached, contiguous, on the
    CPU; copied if it shares memory with another one) goes into the returned dict.

    Parameters
    ----------
    obj : Any
        A state dict (``module.state_dict()``, ``optimizer.state_dict()``, …).
    prefix : str
        Prepended to every tensor name.

    Returns
    -------
    skeleton : JSON-serialisable object
    tensors : dict of str to torch.Tensor

    Raises
    ------
    TypeError
        For any other type, naming the path of the offending entry.
    """
    tensors: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()

    def name_for(path: list[str]) -> str:
        base = prefix + "/".join(path) if path else prefix + "tensor"
        name, i = base, 1
        while name in tensors:
            name = f"{base}#{i}"
            i += 1
        return name

    def rec(x: Any, path: list[str], depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise TypeError(f"state is nested deeper than {_MAX_DEPTH} levels at {'/'.join(path)}")
        if isinstance(x, torch.Tensor):
            t = x.detach().to("cpu")
            if not t.is_contiguous():
                t = t.contiguous()
            if t.numel():  # safetensors refuses tensors that share memory: copy repeats
                ptr = t.untyped_storage().data_ptr()
                if ptr in seen_storage:
                    t = t.clone()
                else:
                    seen_storage.add(ptr)
            name = name_for(path)
            tensors[name] = t
            return {"__tensor__": name}
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int):
            return int(x)
        if isinstance(x, float):
            return _float_json(float(x))
        if isinstance(x, torch.dtype):
            return {"__dtype__": str(x).removeprefix("torch.")}
        if isinstance(x, torch.device):
            return {"__device__": str(x)}
        if isinstance(x, tuple):
            return {"__tuple__": [rec(y, [*path, str(i)], depth + 1) for i, y in enumerate(x)]}
        if isinstance(x, list):
            return [rec(y, [*path, str(i)], depth + 1) for i, y in enumerate(x)]
        if isinstance(x, Mapping):
            items = []
            for k, v in x.items():
                if isinstance(k, torch.Tensor) or not (
                    k is None or isinstance(k, (bool, int, float, str, tuple))
                ):
                    raise TypeError(
                        f"state key {k!r} at {'/'.join(path) or '<root>'} has type "
                        f"{type(k).__name__}; only str, int, float, bool, None and tuples can "
                        "be saved"
                    )
                items.append(
                    [rec(k, [*path, "<key>"], depth + 1), rec(v, [*path, str(k)], depth + 1)]
                )
            return {"__dict__": items}
        raise TypeError(
            f"cannot save an object of type {type(x).__name__} at "
            f"{'/'.join(path) or '<root>'}: checkpoints hold tensors and JSON values only "
            "(no pickle)"
        )

    skeleton = rec(obj, [], 0)
    return skeleton, tensors


def unpack_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`pack_state`: rebuild the nested state from its skeleton.

    The skeleton is validated strictly (it usually comes from a file): only the markers of
    :func:`pack_state` are accepted, and every tensor reference must exist in ``tensors``.
    The tensors are used as they are (not copied).

    Raises
    ------
    ValueError
        On a malformed skeleton or a missing tensor.
    """

    def rec(x: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise ValueError(f"checkpoint skeleton is nested deeper than {_MAX_DEPTH} levels")
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, list):
            return [rec(y, depth + 1) for y in x]
        if isinstance(x, dict):
            if len(x) != 1:
                raise ValueError(f"malformed checkpoint skeleton entry with keys {sorted(x)[:5]}")
            ((tag, val),) = x.items()
            if tag == "__tensor__":
                if not isinstance(val, str) or val not in tensors:
                    raise ValueError(f"checkpoint refers to a missing tensor {val!r}")
                return tensors[val]
            if tag == "__tuple__" and isinstance(val, list):
                return tuple(rec(y, depth + 1) for y in val)
            if tag == "__dict__" and isinstance(val, list):
                out: dict[Any, Any] = {}
                for item in val:
                    if not isinstance(item, list) or len(item) != 2:
                        raise ValueError("malformed dict entry in checkpoint skeleton")
                    k = rec(item[0], depth + 1)
                    if isinstance(k, (torch.Tensor, list, dict)):
                        raise ValueError("checkpoint skeleton has an unhashable dict key")
                    out[k] = rec(item[1], depth + 1)
                return out
            if tag == "__float__" and val in ("nan", "inf", "-inf"):
                return float(val)
            if tag == "__dtype__" and isinstance(val, str):
                dt = getattr(torch, val, None)
                if not isinstance(dt, torch.dtype):
                    raise ValueError(f"unknown dtype {val!r} in checkpoint")
                return dt
            if tag == "__device__" and isinstance(val, str):
                try:
                    return torch.device(val)
                except RuntimeError as exc:
                    raise ValueError(f"invalid device {val!r} in checkpoint") from exc
            raise ValueError(f"unknown marker {tag!r} in checkpoint skeleton")
        raise ValueError(f"unexpected {type(x).__name__} in checkpoint skeleton")

    return rec(skeleton, 0)


def _referenced(skeleton: Any, out: set[str]) -> set[str]:
    if isinstance(skeleton, list):
        for y in skeleton:
            _referenced(y, out)
    elif isinstance(skeleton, dict):
        for k, v in skeleton.items():
            if k == "__tensor__" and isinstance(v, str):
                out.add(v)
            else:
                _referenced(v, out)
    return out


# --------------------------------------------------------------------------- helpers
def _require_safetensors() -> Any:
    try:
        import safetensors.torch as st
    except ImportError as exc:  # pragma: no cover - safetensors is a dependency of the tests
        raise ImportError(
            "checkpoints need the 'safetensors' package (pip install safetensors)"
        ) from exc
    return st


def _as_named(obj: Any, default: str, what: str) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str) or not k or "/" in k:
                raise ValueError(f"{what} names must be non-empty str without '/', got {k!r}")
            out[k] = v
        return out
    return {default: obj}


def _check_stateful(name: str, obj: Any, what: str) -> None:
    if not (
        callable(getattr(obj, "state_dict", None))
        and callable(getattr(obj, "load_state_dict", None))
    ):
        raise TypeError(
            f"{what} {name!r} must have state_dict() and load_state_dict(), "
            f"got {type(obj).__name__}"
        )


def _generators(
    generators: Mapping[str, torch.Generator] | None, optimizers: Mapping[str, Any]
) -> dict[str, torch.Generator]:
    out = dict(_as_named(generators, "generator", "generators"))
    for name, g in out.items():
        if not isinstance(g, torch.Generator):
            raise TypeError(
                f"generators[{name!r}] must be a torch.Generator, got {type(g).__name__}"
            )
    # optimizers that own a generator (Bernoulli-LoRA, ...) are resumed with it
    for name, opt in optimizers.items():
        g = getattr(opt, "generator", None)
        if isinstance(g, torch.Generator) and not any(g is h for h in out.values()):
            out[f"{name}.generator"] = g
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_safetensors(st: Any, tensors: dict[str, torch.Tensor], path: Path) -> None:
    st.save_file(tensors, str(path), metadata={"format": "pt", "library": LIBRARY_NAME})
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _ranks(model: nn.Module | None) -> dict[str, Any]:
    if model is None:
        return {}
    return {name: layer_rank(layer) for name, layer in find_lowrank_layers(model)}


def _python_rng_json() -> Any:
    version, state, gauss = random.getstate()
    return [version, list(state), gauss]


def _numpy_rng() -> tuple[Any, torch.Tensor] | None:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return None
    kind, key, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (global state)
    return [str(kind), int(pos), int(has_gauss), float(cached)], torch.from_numpy(
        np.asarray(key, dtype=np.int64).copy()
    )


# --------------------------------------------------------------------------- save
def save_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | Mapping[str, Any] | None = None,
    *,
    stateful: Mapping[str, Any] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    rng: bool = True,
    step: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    r"""Write a training checkpoint (see the module docstring for the layout).

    Parameters
    ----------
    directory : path
        Target directory (replaced atomically when it exists and ``overwrite``).
    model : nn.Module, optional
        Saved with ``state_dict()``: low-rank factors at their current ranks.
    optimizer : Optimizer or mapping of str to Optimizer, optional
        One optimizer (saved as ``"optimizer"``) or several by name (e.g. GeoLoRA plus
        AdamW for the head). An optimizer's ``generator`` attribute (Bernoulli-LoRA) is
        saved automatically as ``"<name>.generator"``.
    stateful : mapping of str to object, optional
        Other objects with ``state_dict()``/``load_state_dict()`` (LR schedulers,
        ``torch.amp.GradScaler``, …).
    generators : mapping of str to torch.Generator, optional
        Named generators (data shuffling, sketches, …); their ``get_state()`` is saved.
    rng : bool
        Also save the global RNGs (torch CPU, CUDA if initialised, Python, NumPy).
    step : int, optional
        Training step, reported back by :func:`load_checkpoint`.
    metadata : mapping, optional
        Any JSON-serialisable user data.
    overwrite : bool
        Replace an existing checkpoint at ``directory`` (default) or raise
        :class:`FileExistsError`.

    Returns
    -------
    pathlib.Path
        The checkpoint directory.

    Raises
    ------
    TypeError
        When a state holds an object that is neither a tensor nor a JSON value (the path
        of the entry is named), or an argument has the wrong type.
    """
    st = _require_safetensors()
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        raise TypeError(f"step must be an int or None, got {type(step).__name__}")
    optimizers = _as_named(optimizer, "optimizer", "optimizer")
    others = _as_named(stateful, "stateful", "stateful")
    for name in optimizers:
        if name in others:
            raise ValueError(f"stateful name {name!r} is also an optimizer name")
    for name, obj in {**optimizers, **others}.items():
        _check_stateful(name, obj, "optimizer" if name in optimizers else "stateful")
    gens = _generators(generators, optimizers)
    try:
        user_meta = json.loads(json.dumps(dict(metadata or {}), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serialisable (finite numbers): {exc}") from None

    meta: dict[str, Any] = {
        "library": LIBRARY_NAME,
        "kind": KIND,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "torch_version": torch.__version__,
        "step": step,
        "ranks": _ranks(model),
        "metadata": user_meta,
    }
    model_tensors: dict[str, torch.Tensor] = {}
    if model is not None:
        skel, model_tensors = pack_state(model.state_dict())
        meta["model"] = {"skeleton": skel}
    state_tensors: dict[str, torch.Tensor] = {}
    for section, objs in (("optimizers", optimizers), ("stateful", others)):
        meta[section] = {}
        for name, obj in objs.items():
            skel, tens = pack_state(obj.state_dict(), prefix=f"{name}/")
            meta[section][name] = {"class": type(obj).__name__, "skeleton": skel}
            state_tensors.update(tens)
    rng_tensors: dict[str, torch.Tensor] = {}
    meta["generators"] = {}
    for name, g in gens.items():
        rng_tensors[f"generator/{name}"] = g.get_state().clone()
        meta["generators"][name] = {"device": str(g.device)}
    meta["rng"] = None
    if rng:
        rinfo: dict[str, Any] = {"python": _python_rng_json(), "cuda": 0, "numpy": None}
        rng_tensors["torch/cpu"] = torch.get_rng_state().clone()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states = torch.cuda.get_rng_state_all()
            for i, s in enumerate(states):
                rng_tensors[f"torch/cuda/{i}"] = s.cpu().clone()
            rinfo["cuda"] = len(states)
        npr = _numpy_rng()
        if npr is not None:
            rinfo["numpy"] = npr[0]
            rng_tensors["numpy/key"] = npr[1]
        meta["rng"] = rinfo

    target = Path(directory)
    if target.exists() and not overwrite:
        raise FileExistsError(f"directory {str(target)!r} exists (pass overwrite=True)")
    parent = target.parent if str(target.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files: dict[str, str] = {}
        for fname, tens, present in (
            (MODEL_FILE, model_tensors, model is not None),
            (STATE_FILE, state_tensors, bool(optimizers or others)),
            (RNG_FILE, rng_tensors, bool(rng_tensors)),
        ):
            if present:
                _write_safetensors(st, tens, tmp / fname)
                files[fname] = _sha256(tmp / fname)
        meta["files"] = files
        with open(tmp / META_NAME, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=1, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        old = None
        if target.exists():
            old = parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# --------------------------------------------------------------------------- load
@dataclass
class CheckpointInfo:
    """What :func:`load_checkpoint` restored.

    Attributes
    ----------
    step : int or None
        The ``step`` given to :func:`save_checkpoint`.
    ranks : dict
        ``{layer name: rank}`` at save time.
    metadata : dict
        The user metadata.
    restored : list of str
        Which parts were restored (``"model"``, ``"optimizer:<name>"``, ``"generator:<name>"``,
        ``"rng"``, …).
    """

    step: int | None
    ranks: dict[str, Any]
    metadata: dict[str, Any]
    restored: list[str] = field(default_factory=list)


def _read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / META_NAME
    if not meta_path.is_file():
        raise ValueError(f"{str(path)!r} is not a checkpoint directory (no {META_NAME})")
    try:
        with open(meta_path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{meta_path} is not valid JSON: {exc}") from None
    if (
        not isinstance(meta, dict)
        or meta.get("library") != LIBRARY_NAME
        or meta.get("kind") != KIND
    ):
        raise ValueError(f"{meta_path} was not written by {LIBRARY_NAME}.save_checkpoint")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION or version < 1:
        raise ValueError(
            f"{meta_path}: unsupported checkpoint format_version {version!r} "
            f"(this library reads <= {CHECKPOINT_FORMAT_VERSION})"
        )
    files = meta.get("files")
    if not isinstance(files, dict) or not all(
        f in (MODEL_FILE, STATE_FILE, RNG_FILE) and isinstance(h, str) for f, h in files.items()
    ):
        raise ValueError(f"{meta_path}: malformed 'files' entry")
    return meta


def read_checkpoint_info(directory: str | os.PathLike[str]) -> CheckpointInfo:
    """Step, ranks and user metadata of a checkpoint (reads only the JSON)."""
    meta = _read_meta(Path(directory))
    return CheckpointInfo(
        meta.get("step"), dict(meta.get("ranks") or {}), dict(meta.get("metadata") or {})
    )


def _load_tensors(
    st: Any, path: Path, fname: str, meta: dict[str, Any], verify: bool
) -> dict[str, torch.Tensor]:
    if fname not in meta["files"]:
        return {}
    fpath = path / fname
    if not fpath.is_file():
        raise ValueError(f"checkpoint file {fpath} is missing")
    if verify and _sha256(fpath) != meta["files"][fname]:
        raise ValueError(f"checkpoint file {fpath} is corrupted (SHA-256 mismatch)")
    try:
        tensors = st.load_file(str(fpath), device="cpu")
    except Exception as exc:  # safetensors raises its own error types on malformed files
        raise ValueError(f"cannot read {fpath}: {exc}") from None
    # fresh, aligned, writable storage (independent of the file buffer)
    return {k: v.clone() for k, v in tensors.items()}


def _snapshot_tree(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, Mapping):
        return {k: _snapshot_tree(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_snapshot_tree(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_snapshot_tree(v) for v in x)
    return copy.deepcopy(x)


def _check_model_keys(model: nn.Module, sd: Mapping[str, Any], strict: bool) -> None:
    if not isinstance(sd, Mapping):
        raise ValueError("checkpoint model state is not a dict")
    if not strict:
        return
    have = set(model.state_dict().keys())
    got = set(sd.keys())
    missing, unexpected = sorted(have - got), sorted(got - have)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the model: missing keys {missing[:10]}, unexpected "
            f"keys {unexpected[:10]} (nothing was loaded)"
        )


def load_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | Mapping[str, Any] | None = None,
    *,
    stateful: Mapping[str, Any] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    rng: bool = True,
    strict: bool = True,
    verify: bool = True,
) -> CheckpointInfo:
    r"""Restore a checkpoint written by :func:`save_checkpoint` into live objects.

    Construct the model and the optimizers exactly as in the original run (same
    constructor arguments), then call this. The model is loaded first — its low-rank
    layers resize to the saved ranks — then the optimizers (whose state refers to those
    ranks), the other stateful objects, the named generators and the global RNGs.

    Parameters
    ----------
    directory : path
        A checkpoint directory.
    model, optimizer, stateful, generators
        As in :func:`save_checkpoint` (same names). An optimizer's ``generator`` attribute
        is restored automatically. Each given name must exist in the checkpoint.
    rng : bool
        Restore the global RNG states (if they were saved).
    strict : bool
        Require the model's state-dict keys to match the checkpoint exactly.
    verify : bool
        Check the SHA-256 of the tensor files.

    Returns
    -------
    CheckpointInfo

    Raises
    ------
    ValueError
        Malformed, corrupted or mismatching checkpoint. Nothing is modified: checks run
        before any write, and a failure while applying rolls everything back.
    TypeError
        Arguments of the wrong type.

    Notes
    -----
    Only :func:`json.load` and :func:`safetensors.torch.load_file` read the files; no
    pickle is ever involved.
    """
    st = _require_safetensors()
    path = Path(directory)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
    optimizers = _as_named(optimizer, "optimizer", "optimizer")
    others = _as_named(stateful, "stateful", "stateful")
    for name, obj in {**optimizers, **others}.items():
        _check_stateful(name, obj, "optimizer" if name in optimizers else "stateful")
    gens = _generators(generators, optimizers)
    meta = _read_meta(path)

    # ---- read and validate everything (no writes)
    model_t = _load_tensors(st, path, MODEL_FILE, meta, verify)
    state_t = _load_tensors(st, path, STATE_FILE, meta, verify)
    rng_t = _load_tensors(st, path, RNG_FILE, meta, verify)
    referenced: set[str] = set()
    model_sd = None
    if model is not None:
        if "model" not in meta or not isinstance(meta["model"], dict):
            raise ValueError(f"checkpoint {str(path)!r} holds no model state")
        skel = meta["model"].get("skeleton")
        model_sd = unpack_state(skel, model_t)
        _check_model_keys(model, model_sd, strict)
    if "model" in meta:
        referenced |= _referenced(meta["model"].get("skeleton"), set())
        if set(model_t) - referenced:
            raise ValueError(f"{MODEL_FILE} holds unreferenced tensors")
    opt_sds: dict[str, Any] = {}
    for section, objs in (("optimizers", optimizers), ("stateful", others)):
        saved = meta.get(section) or {}
        if not isinstance(saved, dict):
            raise ValueError(f"malformed {section!r} entry in the checkpoint")
        for name, obj in objs.items():
            if name not in saved or not isinstance(saved[name], dict):
                raise ValueError(
                    f"checkpoint has no {section[:-1]} named {name!r} (saved: {sorted(saved)})"
                )
            cls = saved[name].get("class")
            if cls != type(obj).__name__:
                raise ValueError(
                    f"{section[:-1]} {name!r} was saved from a {cls}, cannot load into a "
                    f"{type(obj).__name__}"
                )
            opt_sds[name] = unpack_state(saved[name].get("skeleton"), state_t)
    all_refs: set[str] = set()
    for section in ("optimizers", "stateful"):
        for entry in (meta.get(section) or {}).values():
            if isinstance(entry, dict):
                _referenced(entry.get("skeleton"), all_refs)
    if set(state_t) - all_refs:
        raise ValueError(f"{STATE_FILE} holds unreferenced tensors")
    saved_gens = meta.get("generators") or {}
    new_gen_states: dict[str, torch.Tensor] = {}
    for name, g in gens.items():
        key = f"generator/{name}"
        if name not in saved_gens or key not in rng_t:
            raise ValueError(
                f"checkpoint has no generator named {name!r} (saved: {sorted(saved_gens)})"
            )
        state = rng_t[key]
        cur = g.get_state()
        if state.dtype != torch.uint8 or state.shape != cur.shape:
            raise ValueError(
                f"generator {name!r}: saved state has shape {tuple(state.shape)} and dtype "
                f"{state.dtype}, the generator needs {tuple(cur.shape)} uint8 (another device?)"
            )
        new_gen_states[name] = state
    rinfo = meta.get("rng") if rng else None
    if rinfo is not None:
        if not isinstance(rinfo, dict) or "torch/cpu" not in rng_t:
            raise ValueError("malformed 'rng' entry in the checkpoint")
        py = rinfo.get("python")
        if not (isinstance(py, list) and len(py) == 3 and isinstance(py[1], list)):
            raise ValueError("malformed Python RNG state in the checkpoint")
        if (
            rng_t["torch/cpu"].dtype != torch.uint8
            or rng_t["torch/cpu"].shape != torch.get_rng_state().shape
        ):
            raise ValueError("malformed torch RNG state in the checkpoint")

    # ---- snapshot, apply, roll back on failure
    snap_model = _snapshot_tree(model.state_dict()) if model is not None else None
    snap_objs = {n: _snapshot_tree(o.state_dict()) for n, o in {**optimizers, **others}.items()}
    snap_gens = {n: g.get_state() for n, g in gens.items()}
    snap_rng = (torch.get_rng_state(), random.getstate())
    restored: list[str] = []
    try:
        if model is not None:
            model.load_state_dict(model_sd, strict=strict)  # type: ignore[arg-type]
            restored.append("model")
        for name, obj in {**optimizers, **others}.items():
            obj.load_state_dict(opt_sds[name])
            restored.append(f"{'optimizer' if name in optimizers else 'stateful'}:{name}")
        for name, state in new_gen_states.items():
            gens[name].set_state(state.clone())
            restored.append(f"generator:{name}")
        if rinfo is not None:
            torch.set_rng_state(rng_t["torch/cpu"].clone())
            py = rinfo["python"]
            random.setstate((int(py[0]), tuple(int(v) for v in py[1]), py[2]))
            n_cuda = int(rinfo.get("cuda") or 0)
            if n_cuda and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(
                    [
                        rng_t[f"torch/cuda/{i}"]
                        for i in range(min(n_cuda, torch.cuda.device_count()))
                    ]
                )
            npi = rinfo.get("numpy")
            if npi is not None and "numpy/key" in rng_t:
                import numpy as np

                np.random.set_state(  # noqa: NPY002 (the global legacy RNG)
                    (
                        str(npi[0]),
                        rng_t["numpy/key"].numpy().astype(np.uint32),
                        int(npi[1]),
                        int(npi[2]),
                        float(npi[3]),
                    )
                )
            restored.append("rng")
    except Exception as exc:
        if model is not None and snap_model is not None:
            model.load_state_dict(snap_model, strict=False)
        for name, obj in {**optimizers, **others}.items():
            obj.load_state_dict(snap_objs[name])
        for name, g in gens.items():
            g.set_state(snap_gens[name])
        torch.set_rng_state(snap_rng[0])
        random.setstate(snap_rng[1])
        raise ValueError(
            f"cannot apply checkpoint {str(path)!r}: {exc} (everything was rolled back)"
        ) from exc
    return CheckpointInfo(
        meta.get("step"), dict(meta.get("ranks") or {}), dict(meta.get("metadata") or {}), restored
    )
