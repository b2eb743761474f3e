"""Layer 7: multi-process training on :mod:`torch.distributed` (gloo on CPU, nccl on GPU).

Public names
------------
:class:`FederatedBernoulliLoRA`
    Bernoulli-LoRA with the QGD, MARINA and EF21 estimators; only compressed messages
    cross between workers, and all workers keep bitwise-identical weights.
:class:`RandK`, :class:`RandomDithering`, :class:`TopK`, :class:`Compressor`
    Compressors with documented variance ``ω`` / contraction ``α`` and exact byte counts.
:func:`launch_local`, :func:`find_free_port`, :func:`replicas_identical`
    Launch ``n`` local worker processes on 127.0.0.1; check replicas.
:func:`sync_gradients`, :class:`DistributedLowRank`, :class:`SyncStats`
    Data-parallel DLRT/GeoLoRA/any optimizer: all-reduce of the projected gradients and
    plain gradients, rank decisions identical on every worker (why not DDP: see
    :mod:`~manifold_lowrank.distributed.sync`).
:func:`broadcast_model`, :func:`broadcast_optimizer`, :func:`broadcast_generator`
    Broadcasts across rank changes (no pickle).
:func:`broadcast_buffers`, :func:`broadcast_state_dict`, :func:`all_reduce_mean`
    Broadcast buffers and state dicts; mean all-reduce.
:func:`replicas_in_sync`, :func:`ddp_ignore_lowrank_factors`
    Replica checks, and the DDP fallback.
"""

from manifold_lowrank.distributed.compressors import (
    Compressor,
    RandK,
    RandomDithering,
    TopK,
    make_compressor,
)
from manifold_lowrank.distributed.federated import (
    FEDERATED_ESTIMATORS,
    FederatedBernoulliLoRA,
    find_free_port,
    launch_local,
    replicas_identical,
)
from manifold_lowrank.distributed.sync import (
    DistributedLowRank,
    SyncStats,
    all_reduce_mean,
    broadcast_buffers,
    broadcast_generator,
    broadcast_model,
    broadcast_optimizer,
    broadcast_state_dict,
    ddp_ignore_lowrank_factors,
    replicas_in_sync,
    sync_gradients,
)

__all__ = [
    "FEDERATED_ESTIMATORS",
    "Compressor",
    "DistributedLowRank",
    "FederatedBernoulliLoRA",
    "RandK",
    "RandomDithering",
    "SyncStats",
    "TopK",
    "all_reduce_mean",
    "broadcast_buffers",
    "broadcast_generator",
    "broadcast_model",
    "broadcast_optimizer",
    "broadcast_state_dict",
    "ddp_ignore_lowrank_factors",
    "find_free_port",
    "launch_local",
    "make_compressor",
    "replicas_identical",
    "replicas_in_sync",
    "sync_gradients",
]
