r"""``AdapterConfig(method="debora")``: the dEBORA layer factory (registered on import).

``get_adapter_model(model, AdapterConfig(method="debora", r=16, target_modules=[...]))``
injects :class:`~manifold_lowrank.nn.debora.DeboraLinearAdapter` (``nn.Linear`` /
``Conv1D``), :class:`~manifold_lowrank.nn.debora.DeboraConv2dAdapter`
(``conv_format="matrix"``) or :class:`~manifold_lowrank.nn.debora.DeboraTuckerConv2dAdapter`
(``conv_format="tucker"``). These are subclasses of the built-in adapters with the same
parameters, so ``save_pretrained``/``from_pretrained``, ``merge_and_unload`` and
``export_to_peft`` work unchanged (``S = diag(s)`` is stored as the ``r×r`` ``adapter_S``;
a Tucker/CP adapter is a Tucker adapter whose core slices have norms ``s``).

Train with :class:`~manifold_lowrank.optim.DEBORA` (the budget ``τ`` is an optimizer
argument; ``AdapterConfig.tau`` is GeoLoRA's truncation tolerance and is ignored here).

``method_kwargs`` (all optional, saved in ``adapter_config.json``)
    ``eps`` (float, default ``1e-3``): initial weights ``s = ε𝟏`` (``ΔW ≈ 0``;
    ``DEBORA(init="auto")`` then moves them to the barycentre ``ε + τ/(R+1)`` of the
    simplex);
    ``bases`` (``"auto"``, ``"stiefel"``, ``"oblique"``, ``"free"``);
    ``tensor_format`` (``"tucker"`` or ``"cp"``, for ``conv_format="tucker"``);
    ``tucker_in_rank`` (int): rank of the input-channel mode of Tucker adapters
    (default ``min(r, in_channels)``).
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
from torch import nn

from manifold_lowrank.adapters.config import AdapterConfig, register_method
from manifold_lowrank.adapters.matching import is_conv1d
from manifold_lowrank.nn.debora import (
    DeboraConv2dAdapter,
    DeboraLinearAdapter,
    DeboraTuckerConv2dAdapter,
)

__all__ = ["DEBORA_METHOD_KWARGS", "debora_layer_factory"]

DEBORA_METHOD_KWARGS = ("eps", "bases", "tensor_format", "tucker_in_rank")


def _generator(base: nn.Module, seed: int | None, name: str) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=base.weight.device)
    g.manual_seed(int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8")))
    return g


def debora_layer_factory(base: nn.Module, config: AdapterConfig, rank: int, name: str) -> nn.Module:
    """Build the dEBORA adapter of one targeted module (see the module docstring).

    ``rank`` is clipped to ``min(config.max_rank, out, in)`` (per mode for Tucker).

    Raises
    ------
    ValueError
        Unknown ``method_kwargs`` keys, or Tucker full modes other than ``[2, 3]``.
    TypeError
        Unsupported module type.
    """
    kw: dict[str, Any] = dict(config.method_kwargs or {})
    unknown = sorted(set(kw) - set(DEBORA_METHOD_KWARGS))
    if unknown:
        raise ValueError(
            f"unknown method_kwargs for method='debora': {unknown}; allowed: "
            f"{list(DEBORA_METHOD_KWARGS)}"
        )
    eps = kw.get("eps", 1e-3)
    bases = kw.get("bases", "auto")
    common: dict[str, Any] = {
        "scaling": float(config.scaling),
        "dropout": float(config.dropout),
        "generator": _generator(base, config.init_seed, name),
        "eps": eps,
        "bases": bases,
    }
    if isinstance(base, nn.Conv2d):
        out_c, in_c, kh, kw_ = (int(d) for d in base.weight.shape)
        if config.conv_format == "tucker":
            if list(config.tucker_full_modes) != [2, 3]:
                raise ValueError(
                    "method='debora' Tucker adapters keep the spatial modes full: "
                    f"tucker_full_modes must be [2, 3], got {config.tucker_full_modes}"
                )
            fmt = kw.get("tensor_format", "tucker")
            mr = (min(config.max_rank, out_c), min(config.max_rank, in_c), kh, kw_)
            if fmt == "cp":
                r = min(int(rank), mr[0], mr[1])
                in_rank = None
            else:
                r = min(int(rank), mr[0])
                in_rank = kw.get("tucker_in_rank")
                in_rank = min(r, mr[1]) if in_rank is None else min(int(in_rank), mr[1])
            return DeboraTuckerConv2dAdapter(
                base, r, tensor_format=fmt, in_rank=in_rank, max_ranks=mr, **common
            )
        mr_ = min(config.max_rank, out_c, in_c * kh * kw_)
        return DeboraConv2dAdapter(base, min(int(rank), mr_), max_rank=mr_, **common)
    if isinstance(base, nn.Linear):
        m, n = int(base.weight.shape[0]), int(base.weight.shape[1])
    elif is_conv1d(base):
        n, m = int(base.weight.shape[0]), int(base.weight.shape[1])
    else:
        raise TypeError(
            f"method='debora' supports nn.Linear, transformers Conv1D and nn.Conv2d, got "
            f"{type(base).__name__} for {name!r}"
        )
    mr = min(config.max_rank, m, n)
    return DeboraLinearAdapter(base, min(int(rank), mr), max_rank=mr, **common)


register_method("debora", debora_layer_factory)
