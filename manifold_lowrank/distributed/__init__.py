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

__all__ = [
    "FEDERATED_ESTIMATORS",
    "Compressor",
    "FederatedBernoulliLoRA",
    "RandK",
    "RandomDithering",
    "TopK",
    "find_free_port",
    "launch_local",
    "make_compressor",
    "replicas_identical",
]
