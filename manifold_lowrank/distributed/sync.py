r"""Data-parallel rank-adaptive training on :mod:`torch.distributed` (no DDP needed).

``N`` worker processes each hold a full replica of the model and compute the loss on
their own shard of every batch. Between ``loss.backward()`` and ``optimizer.step()``
:func:`sync_gradients` all-reduces — in one flat buffer per dtype, one collective each —

* the **projected gradients** ``(GV, UᵀGV, GᵀU)`` (Tucker: core and partial
  contractions) recorded by every low-rank layer (:mod:`manifold_lowrank.nn`), which
  are what DLRT and GeoLoRA read, and
* the ordinary ``.grad`` of every other trainable parameter (biases, a dense head,
  ``S`` in DLRT's coefficient steps, the packed points of Riemannian SGD/Adam, …),

and writes the averages back (:meth:`LowRankModule.set_projected_grads`, ``p.grad``).
Every worker then runs the *same* deterministic optimizer step on the *same* data:
the rank decisions (truncation of a ``2r×2r`` core by the rank rule) are identical on
every worker **by construction**, and so are the new factors, bit for bit (tested with
2 and 4 gloo processes after every step). Since the per-layer loss gradient is linear in
the data, ``N`` workers on equal shards with ``average=True`` reproduce the single-process
full-batch step up to rounding (tested to ``1e-6`` in float64).

Why not :class:`~torch.nn.parallel.DistributedDataParallel`
-----------------------------------------------------------
1. **Shapes change.** DDP's reducer lays the gradients of all parameters into buckets
   once, at construction, from the parameter shapes. A rank-adaptive step reallocates
   ``U``, ``S``, ``V`` at a new rank (GeoLoRA: possibly every step), after which the
   bucket layout is wrong and DDP fails or must be rebuilt (a full re-broadcast and
   re-bucketing) after every rank change.
2. **DDP reduces the wrong quantities.** DDP averages ``.grad``; GeoLoRA and DLRT's
   augmentation read the projected gradients that the layer's autograd function records
   on the module (``GV``, ``GᵀU`` cannot be recovered from ``∂L/∂U = GVSᵀ`` without
   inverting ``S``, which the library never does). Under plain DDP every worker would
   step with its *local* projected gradients and the replicas would diverge, ranks and
   all.
3. **It sends more than needed.** With :class:`~manifold_lowrank.optim.GeoLoRA` and
   :class:`~manifold_lowrank.optim.DLRT` the factor ``.grad`` are never read in a step
   that records projected gradients; :func:`sync_gradients` skips them
   (``factor_grads="auto"``), so per matrix layer only ``(m + n) r + r²`` numbers cross
   the wire (plus the bias), against ``m n`` for dense DDP (see
   ``benchmarks/distributed_comm.py``).
4. **Safety.** A cheap pre-flight collective (``check=True``) compares the sizes and the
   presence of everything to be reduced; if ranks ever differed between workers, *every*
   worker raises the same :class:`RuntimeError` instead of deadlocking or reducing
   garbage. A NaN/Inf on any worker propagates through the sum to all workers, so the
   optimizers' NaN policy (skip or raise) fires identically everywhere and the replicas
   stay identical.

If you must use DDP (e.g. for its compute/communication overlap on the dense part of a
large model): call :func:`ddp_ignore_lowrank_factors` on the model *before* wrapping it
(DDP then only manages the fixed-shape parameters — biases, embeddings, frozen base
weights, heads), and call ``sync_gradients(model, optimizer=opt, sync_dense=False)``
between backward and step (it reduces what DDP does not see: the projected gradients
and the factor gradients). The factor shapes may then change freely. Never let DDP
manage the factors themselves.

Broadcasts and checks
---------------------
:func:`broadcast_model` / :func:`broadcast_optimizer` send rank ``src``'s state to all
workers, *including* ranks that differ from the receivers' (the layers resize on load):
JSON skeleton plus one flat byte buffer, no pickle. :func:`replicas_in_sync` compares a
SHA-256 of all model (and optimizer) bytes across workers. :class:`DistributedLowRank`
bundles all of it: initial broadcast, gradient sync inside ``step`` (also inside a
closure, for the multi-pass ``integrator="bug"`` of DLRT), byte accounting, optional
periodic verification with resynchronisation.

Cost per step: one all-reduce per dtype of ``Σ_layers ((m + n) r + r²) + #dense`` numbers,
plus (``check=True``) one all-reduce of ``3 × #items`` int64.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from manifold_lowrank.checkpoint import pack_state, unpack_state
from manifold_lowrank.manifolds.types import ProjectedGradients, TuckerProjectedGradients
from manifold_lowrank.nn.base import TuckerModule
from manifold_lowrank.optim.dlrt import DLRT
from manifold_lowrank.optim.geolora import GeoLoRA
from manifold_lowrank.optim.lowrank_base import find_lowrank_layers, layer_rank

__all__ = [
    "DistributedLowRank",
    "SyncStats",
    "all_reduce_mean",
    "broadcast_buffers",
    "broadcast_generator",
    "broadcast_model",
    "broadcast_optimizer",
    "broadcast_state_dict",
    "ddp_ignore_lowrank_factors",
    "replicas_in_sync",
    "sync_gradients",
]

FACTOR_GRAD_MODES = ("auto", "all", "none")
# Optimizers that, in a step where a layer recorded projected gradients, never read the
# ordinary gradients of that layer's factors (so they need not be communicated).
_PROJECTED_GRAD_OPTIMIZERS: tuple[type, ...] = (GeoLoRA, DLRT)


# --------------------------------------------------------------------------- basics
def _require_dist(group: Any) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "torch.distributed is not initialised; call torch.distributed.init_process_group "
            "(e.g. backend='gloo') in every worker first"
        )


def _comm_device(group: Any) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _group_rank_to_global(group: Any, src: int) -> int:
    return src if group is None else dist.get_global_rank(group, src)


def _check_src(src: object, group: Any) -> int:
    world = dist.get_world_size(group)
    if isinstance(src, bool) or not isinstance(src, int) or not (0 <= src < world):
        raise ValueError(f"src must be an int in [0, {world - 1}] (group rank), got {src!r}")
    return src


@dataclass
class SyncStats:
    """Communication of one :func:`sync_gradients` call (this worker's view).

    Attributes
    ----------
    payload_bytes : int
        Bytes of the gradient buffers handed to ``all_reduce`` (what one worker
        contributes; a ring all-reduce moves ``2 (N−1)/N`` times this per worker).
    meta_bytes : int
        Bytes of the pre-flight size/presence check (``check=True``).
    collectives : int
        Number of collective calls.
    tensors : int
        Number of tensors reduced.
    projected_layers : int
        Layers whose projected gradients were reduced.
    finite : bool
        Whether every reduced value is finite (identical on all workers, since the
        reduced buffers are).
    """

    payload_bytes: int = 0
    meta_bytes: int = 0
    collectives: int = 0
    tensors: int = 0
    projected_layers: int = 0
    finite: bool = True

    @property
    def total_bytes(self) -> int:
        """``payload_bytes + meta_bytes``."""
        return self.payload_bytes + self.meta_bytes


def all_reduce_mean(x: torch.Tensor | float, group: Any = None) -> torch.Tensor:
    """Mean of a scalar/tensor over the workers (a new tensor; e.g. for logging the loss)."""
    _require_dist(group)
    t = torch.as_tensor(x).detach().clone().to(_comm_device(group), torch.float64)
    dist.all_reduce(t, group=group)
    return t / dist.get_world_size(group)


# --------------------------------------------------------------------------- items
def _pg_template(layer: nn.Module) -> Any:
    """Zero projected gradients of the shapes the layer would record now."""
    if isinstance(layer, TuckerModule):
        core = layer.tucker_parameters()[0]
        ranks, dims = layer.ranks, layer.dims
        parts = tuple(
            core.new_zeros(tuple(dims[k] if j == k else ranks[j] for j in range(len(ranks))))
            for k in range(len(ranks))
        )
        return TuckerProjectedGradients(core.new_zeros(ranks), parts)
    U, S, V = layer.factors()  # type: ignore[attr-defined]
    r = int(S.shape[0])
    return ProjectedGradients(
        U.new_zeros(int(U.shape[0]), r), S.new_zeros(r, r), V.new_zeros(int(V.shape[0]), r)
    )


def _leaves(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    out: list[torch.Tensor] = []
    for x in tree:
        out.extend(_leaves(x))
    return out


def _rebuild(template: Any, it: Any) -> Any:
    if isinstance(template, torch.Tensor):
        return next(it)
    items = [_rebuild(x, it) for x in template]
    return type(template)(*items) if hasattr(template, "_fields") else type(template)(items)


def _factor_ids(layer: nn.Module) -> set[int]:
    if isinstance(layer, TuckerModule):
        core, fs = layer.tucker_parameters()
        return {id(core), *(id(f) for f in fs)}
    return {id(p) for p in layer.factors()}  # type: ignore[attr-defined]


@dataclass
class _Item:
    kind: str  # "pg" | "grad"
    name: str
    obj: Any  # layer or parameter
    local: Any  # recorded pg / grad or None
    numel: int
    owner: int = -1  # index of the layer item owning a factor parameter (grads)


def _collect_items(model: nn.Module) -> list[_Item]:
    items: list[_Item] = []
    owner_of: dict[int, int] = {}
    for name, layer in find_lowrank_layers(model):
        pg = layer.projected_grads  # type: ignore[attr-defined]
        numel = sum(t.numel() for t in _leaves(_pg_template(layer)))
        idx = len(items)
        items.append(_Item("pg", name, layer, pg, numel))
        for pid in _factor_ids(layer):
            owner_of[pid] = idx
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        if p.grad is not None and p.grad.is_sparse:
            raise RuntimeError(f"sync_gradients does not support sparse gradients ({name})")
        items.append(_Item("grad", name, p, p.grad, p.numel(), owner_of.get(id(p), -1)))
    return items


def _as_optimizers(optimizer: Any) -> list[torch.optim.Optimizer]:
    if optimizer is None:
        return []
    opts = [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer)
    for o in opts:
        if not isinstance(o, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer or a sequence of them, got "
                f"{type(o).__name__}"
            )
    return opts


# --------------------------------------------------------------------------- sync
@torch.no_grad()
def sync_gradients(
    model: nn.Module,
    group: Any = None,
    *,
    optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None,
    average: bool = True,
    factor_grads: str = "auto",
    sync_dense: bool = True,
    check: bool = True,
) -> SyncStats:
    r"""All-reduce projected gradients and parameter gradients of ``model`` in place.

    Call it in every worker between ``loss.backward()`` and ``optimizer.step()`` (inside
    the closure, after ``backward()``, for closure-based steps).

    Parameters
    ----------
    model : nn.Module
        The local replica (the same architecture and ranks on every worker).
    group : ProcessGroup, optional
        Default: the world.
    optimizer : Optimizer or sequence of Optimizer, optional
        The optimizer(s) about to step; used by ``factor_grads="auto"``.
    average : bool
        Divide the sums by the world size (mean of the per-worker gradients: with a mean
        loss over equal shards this is the full-batch gradient).
    factor_grads : {"auto", "all", "none"}
        Whether the ordinary ``.grad`` of the factors ``U, S, V`` (core and factors for
        Tucker) of a layer is reduced. ``"auto"``: skipped for layers that recorded
        projected gradients and are optimised by a GeoLoRA or DLRT in ``optimizer`` (these
        do not read them in such a step), reduced otherwise — always correct. ``"all"``:
        always reduced. ``"none"``: never (only if your optimizer reads projected gradients only).
    sync_dense : bool
        Reduce the ``.grad`` of the parameters that are not factors of a low-rank layer.
        ``False`` when DDP handles them (see :func:`ddp_ignore_lowrank_factors`).
    check : bool
        Pre-flight all-reduce of the sizes and presence of every item (``3 × #items``
        int64). Workers that lack an item that others have contribute zeros (e.g. a
        layer that received no gradient on one worker); if sizes differ — ranks diverged
        — every worker raises the same :class:`RuntimeError`. ``False`` skips it and
        assumes identical layouts (a mismatch then fails inside the collective).

    Returns
    -------
    SyncStats

    Notes
    -----
    Buffers are grouped by ``(dtype, device)``; one ``all_reduce`` (SUM) each, then a
    division by the world size. Cost ``O(Σ (m + n) r + r² + #dense)`` copies.
    """
    _require_dist(group)
    if factor_grads not in FACTOR_GRAD_MODES:
        raise ValueError(f"factor_grads must be one of {FACTOR_GRAD_MODES}, got {factor_grads!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    world = dist.get_world_size(group)
    items = _collect_items(model)
    stats = SyncStats()
    present = [it.local is not None for it in items]
    if check:
        dev = _comm_device(group)
        sizes = torch.tensor([it.numel for it in items], dtype=torch.int64)
        flags = torch.tensor(present, dtype=torch.int64)
        meta = torch.cat([flags, sizes, -sizes]).to(dev)
        dist.all_reduce(meta, op=dist.ReduceOp.MAX, group=group)
        stats.meta_bytes += meta.numel() * 8
        stats.collectives += 1
        meta = meta.cpu()
        k = len(items)
        any_present = meta[:k] > 0
        max_size, min_size = meta[k : 2 * k], -meta[2 * k :]
        bad = [
            f"{it.kind}:{it.name} sizes {int(min_size[i])}..{int(max_size[i])}"
            for i, it in enumerate(items)
            if bool(any_present[i]) and int(max_size[i]) != int(min_size[i])
        ]
        if bad:
            raise RuntimeError(
                "sync_gradients: the replicas differ in shape (ranks diverged) for "
                f"{bad[:5]}; resynchronise with broadcast_model/broadcast_optimizer"
            )
        include_present = [bool(x) for x in any_present]
    else:
        include_present = present
    # which items are reduced
    pg_used = [it.kind == "pg" and include_present[i] for i, it in enumerate(items)]
    opts = _as_optimizers(optimizer)
    # layers optimised by GeoLoRA/DLRT: their factor .grad is unused when pg are recorded
    pg_readers = {
        id(layer)
        for o in opts
        if isinstance(o, _PROJECTED_GRAD_OPTIMIZERS)
        for layer in getattr(o, "layers", [])
    }
    chosen: list[int] = []
    for i, it in enumerate(items):
        if not include_present[i]:
            continue
        if it.kind == "grad":
            if it.owner >= 0:
                if factor_grads == "none":
                    continue
                owner = items[it.owner]
                if factor_grads == "auto" and pg_used[it.owner] and id(owner.obj) in pg_readers:
                    continue
            elif not sync_dense:
                continue
        chosen.append(i)
    # gather the local tensors (zeros where absent), grouped by (dtype, device)
    buckets: dict[tuple[torch.dtype, torch.device], list[tuple[int, int, torch.Tensor]]] = {}
    templates: dict[int, Any] = {}
    for i in chosen:
        it = items[i]
        if it.kind == "pg":
            tree = it.local if it.local is not None else _pg_template(it.obj)
            templates[i] = tree
            leaves = _leaves(tree)
        else:
            leaves = [it.local if it.local is not None else torch.zeros_like(it.obj)]
        for j, t in enumerate(leaves):
            buckets.setdefault((t.dtype, t.device), []).append((i, j, t))
    results: dict[tuple[int, int], torch.Tensor] = {}
    for entries in buckets.values():
        flat = torch.cat([t.reshape(-1) for _, _, t in entries])
        if flat.numel():  # (only rank-0 layers in this bucket: nothing to send anywhere)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
            stats.collectives += 1
        if average and world > 1:
            flat.div_(world)
        stats.payload_bytes += flat.numel() * flat.element_size()
        stats.finite = stats.finite and bool(torch.isfinite(flat).all())
        stats.tensors += len(entries)
        off = 0
        for i, j, t in entries:
            n = t.numel()
            results[(i, j)] = flat[off : off + n].view(t.shape)
            off += n
    # write back
    for i in chosen:
        it = items[i]
        if it.kind == "pg":
            tree = templates[i]
            n = len(_leaves(tree))
            new = _rebuild(tree, iter([results[(i, j)] for j in range(n)]))
            setter = getattr(it.obj, "set_projected_grads", None)
            if callable(setter):
                setter(new)
            else:  # pragma: no cover - every library layer has the setter
                it.obj._projected_grads = new
            stats.projected_layers += 1
        else:
            p: torch.Tensor = it.obj
            red = results[(i, 0)]
            if p.grad is None:
                p.grad = red.clone()
            else:
                p.grad.copy_(red)
    return stats


# --------------------------------------------------------------------------- broadcasts
def broadcast_state_dict(state: Any, src: int = 0, group: Any = None) -> Any:
    r"""Send a (nested) state dict from group rank ``src`` to every worker; no pickle.

    ``src`` packs it with :func:`~manifold_lowrank.checkpoint.pack_state` (JSON skeleton
    plus tensors); the JSON (as bytes) and one flat byte buffer holding all tensors are
    broadcast (three collectives). Tensor shapes travel in the JSON, so receivers need
    not know them (ranks may differ). On other ranks ``state`` is ignored.

    Returns
    -------
    The state (on ``src``: ``state`` itself; elsewhere: a fresh copy on the CPU).
    """
    _require_dist(group)
    src = _check_src(src, group)
    dev = _comm_device(group)
    me = dist.get_rank(group)
    gsrc = _group_rank_to_global(group, src)
    if me == src:
        skeleton, tensors = pack_state(state)
        names = list(tensors)
        spec = {
            "skeleton": skeleton,
            "tensors": [
                [n, str(tensors[n].dtype).removeprefix("torch."), list(tensors[n].shape)]
                for n in names
            ],
        }
        header = torch.frombuffer(bytearray(json.dumps(spec).encode("utf-8")), dtype=torch.uint8)
        length = torch.tensor([header.numel()], dtype=torch.int64)
        chunks = [tensors[n].reshape(-1).view(torch.uint8) for n in names]
        payload = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8)
    else:
        length = torch.zeros(1, dtype=torch.int64)
    length = length.to(dev)
    dist.broadcast(length, src=gsrc, group=group)
    if me != src:
        header = torch.empty(int(length.item()), dtype=torch.uint8)
    header = header.to(dev)
    dist.broadcast(header, src=gsrc, group=group)
    if me == src:
        nbytes = torch.tensor([payload.numel()], dtype=torch.int64, device=dev)
    else:
        spec = json.loads(header.cpu().numpy().tobytes().decode("utf-8"))
        nbytes = torch.zeros(1, dtype=torch.int64, device=dev)
    dist.broadcast(nbytes, src=gsrc, group=group)
    if me != src:
        payload = torch.empty(int(nbytes.item()), dtype=torch.uint8)
    buf = payload.to(dev)
    dist.broadcast(buf, src=gsrc, group=group)
    if me == src:
        return state
    buf = buf.cpu()
    out: dict[str, torch.Tensor] = {}
    off = 0
    for name, dname, shape in spec["tensors"]:
        dtype = getattr(torch, dname)
        n = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        out[name] = buf[off : off + n].clone().view(dtype).reshape(shape)
        off += n
    return unpack_state(spec["skeleton"], out)


def broadcast_model(model: nn.Module, src: int = 0, group: Any = None) -> None:
    """Make every worker's ``model`` equal to rank ``src``'s (ranks included).

    Receivers load the state with ``load_state_dict`` (low-rank layers resize to the
    sender's ranks; projected gradients are cleared). Collective.
    """
    _require_dist(group)
    sd = broadcast_state_dict(model.state_dict(), src, group)
    if dist.get_rank(group) != src:
        model.load_state_dict(sd)


@torch.no_grad()
def broadcast_buffers(model: nn.Module, src: int = 0, group: Any = None) -> int:
    """Copy every buffer of ``model`` (e.g. BatchNorm statistics) from rank ``src``, in place.

    One broadcast per dtype of a flat buffer (buffers have fixed shapes). Returns the
    number of bytes broadcast. Collective.
    """
    _require_dist(group)
    src = _check_src(src, group)
    dev = _comm_device(group)
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for b in model.buffers():
        groups.setdefault(b.dtype, []).append(b)
    nbytes = 0
    for bufs in groups.values():
        flat = torch.cat([b.detach().reshape(-1) for b in bufs]).to(dev)
        if not flat.numel():
            continue
        dist.broadcast(flat, src=_group_rank_to_global(group, src), group=group)
        nbytes += flat.numel() * flat.element_size()
        off = 0
        for b in bufs:
            n = b.numel()
            b.copy_(flat[off : off + n].view(b.shape))
            off += n
    return nbytes


def broadcast_generator(generator: torch.Generator, src: int = 0, group: Any = None) -> None:
    """Copy the state of ``generator`` from rank ``src`` to every worker (identical coins)."""
    _require_dist(group)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    src = _check_src(src, group)
    state = generator.get_state().to(_comm_device(group))
    dist.broadcast(state, src=_group_rank_to_global(group, src), group=group)
    if dist.get_rank(group) != src:
        generator.set_state(state.cpu())


def broadcast_optimizer(optimizer: torch.optim.Optimizer, src: int = 0, group: Any = None) -> None:
    """Make every worker's optimizer state equal to rank ``src``'s.

    Broadcast the model first (the state refers to the model's current ranks). An
    optimizer's ``generator`` attribute (Bernoulli-LoRA) is broadcast too.
    """
    _require_dist(group)
    sd = broadcast_state_dict(optimizer.state_dict(), src, group)
    if dist.get_rank(group) != src:
        optimizer.load_state_dict(sd)
    g = getattr(optimizer, "generator", None)
    if isinstance(g, torch.Generator):
        broadcast_generator(g, src, group)


def _fingerprint(objs: Iterable[Any]) -> torch.Tensor:
    h = hashlib.sha256()
    for obj in objs:
        skeleton, tensors = pack_state(obj)
        h.update(json.dumps(skeleton, sort_keys=True).encode("utf-8"))
        for name in sorted(tensors):
            t = tensors[name]
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    d = h.digest()
    return torch.tensor(
        [int.from_bytes(d[i : i + 8], "little", signed=True) for i in (0, 8, 16, 24)]
    )


def replicas_in_sync(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None,
    group: Any = None,
) -> bool:
    """``True`` on every worker iff all workers hold bitwise the same model (and optimizer).

    Compares a SHA-256 of the state dicts (every byte, every shape and rank, the JSON
    structure) with one all-reduce of 8 int64. Collective.
    """
    _require_dist(group)
    objs: list[Any] = [model.state_dict()]
    objs.extend(o.state_dict() for o in _as_optimizers(optimizer))
    h = _fingerprint(objs)
    both = torch.cat([h, torch.bitwise_not(h)]).to(_comm_device(group))
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    both = both.cpu()
    hmax, hmin = both[:4], torch.bitwise_not(both[4:])
    return bool(torch.equal(hmax, hmin))


def ddp_ignore_lowrank_factors(model: nn.Module) -> list[str]:
    """Tell :class:`~torch.nn.parallel.DistributedDataParallel` to leave the factors alone.

    Marks the factor parameters of every low-rank layer (names relative to ``model``) as
    ignored by DDP (``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model``),
    so DDP only buckets fixed-shape parameters. Call before wrapping ``model``; then
    call ``sync_gradients(model, optimizer=opt, sync_dense=False)`` after each backward.

    Returns
    -------
    list of str
        The ignored parameter names.
    """
    from torch.nn.parallel import DistributedDataParallel

    ids: set[int] = set()
    for _, layer in find_lowrank_layers(model):
        ids |= _factor_ids(layer)
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in ids]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
    return names


# --------------------------------------------------------------------------- wrapper
class DistributedLowRank:
    r"""Data-parallel training of a model with low-rank layers and any optimizer.

    Usage (every worker, after ``init_process_group``)::

        model = build_model()                       # same code on every worker
        opt = GeoLoRA(model, lr=1e-2, tau=0.1)
        ddp = DistributedLowRank(model, opt)        # broadcasts rank 0's model/optimizer
        for x, y in shard_of_the_batches:
            ddp.zero_grad()
            loss_fn(model(x), y).backward()
            ddp.step()                              # all-reduce, then opt.step()

    With a closure (DLRT ``integrator="bug"`` re-evaluates the model), ``ddp.step(closure)``
    all-reduces after every call of the closure.

    Parameters
    ----------
    model : nn.Module
    optimizer : torch.optim.Optimizer or sequence of them
        Any optimizer(s) over the model (GeoLoRA, DLRT, Riemannian SGD/Adam on
        ``ManifoldParameter`` s, ``torch.optim`` ones, Bernoulli-LoRA, …), e.g.
        ``[GeoLoRA(model), torch.optim.AdamW(head_params)]``: one gradient sync, then every
        optimizer steps in order.
    group : ProcessGroup, optional
    average, factor_grads, sync_dense, check
        Passed to :func:`sync_gradients`.
    broadcast : bool
        Broadcast model and optimizer state from ``src`` at construction (like DDP).
    src : int
        Group rank that is the reference for broadcasts.
    verify_every : int
        Every ``k`` steps check :func:`replicas_in_sync` (``0``: never).
    on_divergence : {"raise", "resync"}
        What a failed verification does: raise :class:`RuntimeError`, or re-broadcast from
        ``src`` with a :class:`RuntimeWarning`.
    sync_buffers : bool
        After every step broadcast the model's buffers (BatchNorm running statistics, …)
        from ``src``, as DDP does (their bytes are added to the statistics).
    nan_policy : {"skip", "raise", None}
        Non-finite reduced gradients (a NaN/Inf on *any* worker reaches all of them
        through the sum): ``"skip"`` — no optimizer steps, gradients cleared, a
        :class:`RuntimeWarning`, :attr:`nan_skips` incremented; ``"raise"`` —
        :class:`FloatingPointError`; both before any optimizer runs, so no parameter and
        no optimizer state is touched, and all workers decide alike. ``None`` leaves it to
        each optimizer's own policy. With a closure the first optimizer's own policy
        applies (the check happens inside its step); the others are skipped/raised by
        this policy.

    Attributes
    ----------
    last_stats : SyncStats or None
        Communication of the last step (summed over closure calls).
    bytes_total : int
        Payload plus check bytes of all steps.
    steps : int
    nan_skips : int
        Steps skipped by ``nan_policy="skip"``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer],
        group: Any = None,
        *,
        average: bool = True,
        factor_grads: str = "auto",
        sync_dense: bool = True,
        check: bool = True,
        broadcast: bool = True,
        src: int = 0,
        verify_every: int = 0,
        on_divergence: str = "raise",
        sync_buffers: bool = True,
        nan_policy: str | None = "skip",
    ) -> None:
        _require_dist(group)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        opts = _as_optimizers(optimizer)
        if not opts:
            raise ValueError("optimizer must be given (one optimizer or a non-empty sequence)")
        if factor_grads not in FACTOR_GRAD_MODES:
            raise ValueError(
                f"factor_grads must be one of {FACTOR_GRAD_MODES}, got {factor_grads!r}"
            )
        if isinstance(verify_every, bool) or not isinstance(verify_every, int) or verify_every < 0:
            raise ValueError(f"verify_every must be an int >= 0, got {verify_every!r}")
        if on_divergence not in ("raise", "resync"):
            raise ValueError(f"on_divergence must be 'raise' or 'resync', got {on_divergence!r}")
        if nan_policy not in ("skip", "raise", None):
            raise ValueError(f"nan_policy must be 'skip', 'raise' or None, got {nan_policy!r}")
        self.nan_policy = nan_policy
        self.nan_skips = 0
        self.sync_buffers = bool(sync_buffers) and any(True for _ in model.buffers())
        self.model = model
        self.optimizers = opts
        self.group = group
        self.src = _check_src(src, group)
        self.average = bool(average)
        self.factor_grads = factor_grads
        self.sync_dense = bool(sync_dense)
        self.check = bool(check)
        self.verify_every = verify_every
        self.on_divergence = on_divergence
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.last_stats: SyncStats | None = None
        self._pending: SyncStats | None = None
        self.bytes_total = 0
        self.steps = 0
        if broadcast:
            self.resync()

    # ------------------------------------------------------------------ collectives
    def sync_gradients(self) -> SyncStats:
        """All-reduce the current gradients (see :func:`sync_gradients`)."""
        st = sync_gradients(
            self.model,
            self.group,
            optimizer=self.optimizers,
            average=self.average,
            factor_grads=self.factor_grads,
            sync_dense=self.sync_dense,
            check=self.check,
        )
        self._acc(st)
        return st

    def _acc(self, st: SyncStats) -> None:
        if self._pending is None:
            self._pending = SyncStats()
        for f in ("payload_bytes", "meta_bytes", "collectives", "tensors", "projected_layers"):
            setattr(self._pending, f, getattr(self._pending, f) + getattr(st, f))
        self._pending.finite = st.finite  # of the last reduction (the one the step uses)

    def resync(self, src: int | None = None) -> None:
        """Broadcast model and optimizer state from ``src`` (default ``self.src``)."""
        s = self.src if src is None else _check_src(src, self.group)
        broadcast_model(self.model, s, self.group)
        for opt in self.optimizers:
            broadcast_optimizer(opt, s, self.group)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The first (main) optimizer."""
        return self.optimizers[0]

    def in_sync(self) -> bool:
        """:func:`replicas_in_sync` of the model and the optimizers."""
        return replicas_in_sync(self.model, self.optimizers, self.group)

    # ------------------------------------------------------------------ training
    def zero_grad(self, set_to_none: bool = True) -> None:
        """``zero_grad`` of every optimizer and clear the recorded projected gradients."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)
        for _, layer in find_lowrank_layers(self.model):
            layer.clear_projected_grads()  # type: ignore[operator]

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Synchronise the gradients, then step every optimizer.

        Without a closure the gradients of the preceding backward pass are reduced; with
        one, the closure goes to the first optimizer and the reduction runs after every
        call of it (so multi-pass optimizers see reduced gradients in every pass); the
        other optimizers then step with the gradients of the last call. Returns the first
        optimizer's return value.
        """
        self._pending = None
        if closure is None:
            st = self.sync_gradients()
            if not st.finite and self._nonfinite():
                return None
            out = self.optimizers[0].step()
        else:

            def wrapped() -> Any:
                with torch.enable_grad():
                    loss = closure()
                self.sync_gradients()
                return loss

            out = self.optimizers[0].step(wrapped)
            if self._pending is not None and not self._pending.finite and self._nonfinite():
                return out
        for opt in self.optimizers[1:]:
            opt.step()
        if self.sync_buffers:
            nb = broadcast_buffers(self.model, self.src, self.group)
            if self._pending is not None:
                self._pending.meta_bytes += nb
                self._pending.collectives += 1
        self.last_stats = self._pending
        if self._pending is not None:
            self.bytes_total += self._pending.total_bytes
        self.steps += 1
        if self.verify_every and self.steps % self.verify_every == 0 and not self.in_sync():
            if self.on_divergence == "raise":
                raise RuntimeError(
                    f"DistributedLowRank: replicas diverged (detected at step {self.steps})"
                )
            warnings.warn(
                f"DistributedLowRank: replicas diverged at step {self.steps}; re-broadcast "
                f"from rank {self.src}",
                RuntimeWarning,
                stacklevel=2,
            )
            self.resync()
        return out

    def _nonfinite(self) -> bool:
        """Apply the NaN policy; ``True`` if the remaining optimizer steps are skipped."""
        if self.nan_policy is None:
            return False
        self.last_stats = self._pending
        if self._pending is not None:
            self.bytes_total += self._pending.total_bytes
        msg = "DistributedLowRank: non-finite reduced gradients"
        if self.nan_policy == "raise":
            raise FloatingPointError(f"{msg}; no optimizer stepped, nothing was modified")
        self.nan_skips += 1
        warnings.warn(
            f"{msg}; the step was skipped on every worker (skip #{self.nan_skips})",
            RuntimeWarning,
            stacklevel=3,
        )
        self.zero_grad()
        return True

    def ranks(self) -> dict[str, Any]:
        """``{layer name: rank}`` of the local replica."""
        return {n: layer_rank(la) for n, la in find_lowrank_layers(self.model)}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Counters ``steps`` and ``bytes_total`` (for checkpoints)."""
        return {"steps": self.steps, "bytes_total": self.bytes_total, "nan_skips": self.nan_skips}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters of :meth:`state_dict`."""
        self.steps = int(state.get("steps", 0))
        self.bytes_total = int(state.get("bytes_total", 0))
        self.nan_skips = int(state.get("nan_skips", 0))
