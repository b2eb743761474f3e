r"""Layer 6: a PEFT-shaped API for rank-adaptive adapters on any ``nn.Module``.

Quick start::

    from manifold_lowrank.adapters import AdapterConfig, get_adapter_model
    from manifold_lowrank.optim import GeoLoRA

    cfg = AdapterConfig(r=8, max_rank=32, tau=0.1,
                        target_modules=["query", "key", "value", "dense"],
                        modules_to_save=["classifier"])
    model = get_adapter_model(base, cfg)          # alias: get_peft_model
    model.print_trainable_parameters()
    opt = GeoLoRA(model, lr=1e-3, tau=cfg.tau, max_rank=cfg.max_rank)
    ...
    model.print_rank_summary()
    model.save_pretrained("out")                  # our format (ranks kept)
    model.export_to_peft("out_peft")              # standard PEFT LoRA checkpoint

Public names
------------
:class:`AdapterConfig`, :func:`register_method`
    Configuration (PEFT field names) and the method registry.
:func:`get_adapter_model` / :func:`get_peft_model`, :class:`AdaptedModel`
    Wrapping, reporting, merge/unload, ``disable_adapter()``.
:func:`load_adapter_model` (= ``AdaptedModel.from_pretrained``), :func:`save_adapter`
    Checkpoints (``adapter_config.json`` + ``adapter_model.safetensors``).
:func:`export_to_peft`
    Exact export to a standard PEFT ``LoraConfig`` checkpoint.
:func:`check_target_module_exists`, :func:`find_target_modules`
    PEFT's ``target_modules`` matching rules.
``GeoLoRACallback``
    transformers ``TrainerCallback`` (imported lazily: importing this package does not
    import transformers).
loralib-style layer API (re-exported from :mod:`manifold_lowrank.nn`)
    :class:`AdaptedLinear`, :func:`mark_only_adapters_as_trainable`,
    :func:`adapter_state_dict`.
"""

from __future__ import annotations

from typing import Any

from manifold_lowrank.adapters import debora as _debora  # noqa: F401  (registers method='debora')
from manifold_lowrank.adapters.config import AdapterConfig, register_method, registered_methods
from manifold_lowrank.adapters.export import export_to_peft
from manifold_lowrank.adapters.io import load_adapter_model, save_adapter
from manifold_lowrank.adapters.matching import check_target_module_exists, find_target_modules
from manifold_lowrank.adapters.model import (
    AdaptedModel,
    ModulesToSaveWrapper,
    get_adapter_model,
    get_peft_model,
)
from manifold_lowrank.nn.adapters import (
    AdaptedLinear,
    adapter_state_dict,
    mark_only_adapters_as_trainable,
)

__all__ = [
    "AdaptedLinear",
    "AdaptedModel",
    "AdapterConfig",
    "GeoLoRACallback",
    "ModulesToSaveWrapper",
    "adapter_state_dict",
    "check_target_module_exists",
    "export_to_peft",
    "find_target_modules",
    "get_adapter_model",
    "get_peft_model",
    "load_adapter_model",
    "mark_only_adapters_as_trainable",
    "register_method",
    "registered_methods",
    "save_adapter",
]


def __getattr__(name: str) -> Any:
    if name == "GeoLoRACallback":
        from manifold_lowrank.adapters.hf import GeoLoRACallback

        return GeoLoRACallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
