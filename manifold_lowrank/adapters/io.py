r"""Adapter checkpoints: ``adapter_config.json`` + ``adapter_model.safetensors``.

The layout is PEFT's (two files, never ``model.safetensors`` or ``config.json``), with
this library's own format inside:

``adapter_config.json``
    the :class:`~manifold_lowrank.adapters.AdapterConfig` fields, plus
    ``"library": "manifold_lowrank"``, ``"peft_type"`` (the method in upper case),
    ``"format_version"``, and ``"layers"``: ``{module name: {"kind", "shape", "rank",
    "max_rank"}}`` with the **current** (trained, heterogeneous) ranks — rank-0 layers
    included — and ``"modules_to_save_resolved"``.
``adapter_model.safetensors``
    ``base_model.model.<name>.adapter_U`` (``m×r``), ``.adapter_S`` (``r×r``),
    ``.adapter_V`` (``n×r``) per matrix adapter (zero-size tensors for rank 0);
    ``.adapter_core`` and ``.adapter_factors.<k>`` (adaptive modes only) per Tucker
    adapter; ``base_model.model.<name>.<param>`` for each ``modules_to_save`` module (the
    trained copy), as in PEFT.

Loading never unpickles (JSON and safetensors only) and validates everything — module
names, layer kinds, shapes, ranks, ``modules_to_save`` parameters — *before* modifying
the model: on any mismatch a :class:`ValueError` lists every problem and the model is
left unchanged.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from manifold_lowrank.adapters.config import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    LIBRARY_NAME,
    AdapterConfig,
)
from manifold_lowrank.adapters.matching import is_supported
from manifold_lowrank.adapters.model import AdaptedModel, build_adapter, inject, layer_kind
from manifold_lowrank.manifolds.types import FixedRankPoint, TuckerPoint
from manifold_lowrank.nn.base import TuckerModule

__all__ = ["FORMAT_VERSION", "load_adapter_model", "load_into_adapted", "save_adapter"]

FORMAT_VERSION = 1
PREFIX = "base_model.model."


def _require_safetensors() -> Any:
    try:
        import safetensors.torch as st
    except ImportError as exc:  # pragma: no cover - safetensors is a test dependency
        raise ImportError(
            "saving/loading adapters needs the 'safetensors' package (pip install safetensors)"
        ) from exc
    return st


def _layer_record(layer: nn.Module) -> dict[str, Any]:
    kind = layer_kind(layer)
    if isinstance(layer, TuckerModule):
        return {
            "kind": kind,
            "shape": list(layer.dims),
            "rank": list(layer.ranks),
            "max_rank": list(layer.max_ranks),
            "full_modes": list(layer.full_modes),
        }
    base = layer.base_layer  # type: ignore[attr-defined]
    return {
        "kind": kind,
        "shape": [int(s) for s in base.weight.shape],
        "rank": int(layer.rank),  # type: ignore[attr-defined]
        "max_rank": int(layer.max_rank),  # type: ignore[attr-defined]
    }


def adapter_tensors(adapted: AdaptedModel) -> dict[str, torch.Tensor]:
    """The tensors written to ``adapter_model.safetensors`` (detached, contiguous, CPU)."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in adapted.adapter_layers().items():
        pre = f"{PREFIX}{name}."
        if isinstance(layer, TuckerModule):
            core, fs = layer.point()
            out[pre + "adapter_core"] = core
            for k, f in enumerate(fs):
                if k not in layer.full_modes:
                    out[f"{pre}adapter_factors.{k}"] = f
        else:
            U, S, V = layer.point()  # type: ignore[operator]
            out[pre + "adapter_U"] = U
            out[pre + "adapter_S"] = S
            out[pre + "adapter_V"] = V
    for name, wrapper in adapted.modules_to_save_wrappers().items():
        for k, v in wrapper.trained_module.state_dict().items():
            out[f"{PREFIX}{name}.{k}"] = v
    return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}


def save_adapter(adapted: AdaptedModel, save_directory: str | os.PathLike[str]) -> None:
    """Write the two checkpoint files into ``save_directory`` (created if needed)."""
    st = _require_safetensors()
    os.makedirs(save_directory, exist_ok=True)
    cfg = adapted.adapter_config
    d = {
        "library": LIBRARY_NAME,
        "peft_type": cfg.method.upper(),
        "format_version": FORMAT_VERSION,
        **cfg.to_dict(),
        "layers": {n: _layer_record(la) for n, la in adapted.adapter_layers().items()},
        "modules_to_save_resolved": list(adapted.modules_to_save_names),
    }
    tensors = adapter_tensors(adapted)
    st.save_file(
        tensors, os.path.join(save_directory, ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"}
    )
    with open(os.path.join(save_directory, ADAPTER_CONFIG_NAME), "w", encoding="utf-8") as fh:
        json.dump(d, fh, indent=2, sort_keys=True)


def _read(model_id: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    cpath = os.path.join(model_id, ADAPTER_CONFIG_NAME)
    wpath = os.path.join(model_id, ADAPTER_WEIGHTS_NAME)
    if not os.path.isfile(cpath) or not os.path.isfile(wpath):
        raise FileNotFoundError(
            f"{model_id!s} must contain {ADAPTER_CONFIG_NAME} and {ADAPTER_WEIGHTS_NAME}"
        )
    with open(cpath, encoding="utf-8") as fh:
        d = json.load(fh)
    if d.get("library") != LIBRARY_NAME:
        raise ValueError(
            f'{cpath} was not written by {LIBRARY_NAME} (no "library": "{LIBRARY_NAME}" key); '
            "a standard PEFT checkpoint is loaded with peft.PeftModel.from_pretrained"
        )
    if int(d.get("format_version", 1)) > FORMAT_VERSION:
        raise ValueError(
            f"{cpath} has format_version {d['format_version']}, newer than this library's "
            f"{FORMAT_VERSION}; upgrade manifold_lowrank"
        )
    tensors = _require_safetensors().load_file(os.path.join(model_id, ADAPTER_WEIGHTS_NAME))
    return d, tensors


def _base_kind(module: nn.Module, want: str) -> str:
    k = layer_kind(module)
    if want == "tucker_conv2d" and k == "conv2d":
        return "tucker_conv2d"
    return k


def _expected_shapes(rec: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    kind, shape, rank = rec["kind"], rec["shape"], rec["rank"]
    if kind == "tucker_conv2d":
        full = set(rec.get("full_modes", [2, 3]))
        out = {"adapter_core": tuple(int(r) for r in rank)}
        for k in range(len(shape)):
            if k not in full:
                out[f"adapter_factors.{k}"] = (int(shape[k]), int(rank[k]))
        return out
    if kind == "conv2d":
        m, n = int(shape[0]), int(shape[1] * shape[2] * shape[3])
    elif kind == "conv1d":
        n, m = int(shape[0]), int(shape[1])
    else:
        m, n = int(shape[0]), int(shape[1])
    r = int(rank)
    return {"adapter_U": (m, r), "adapter_S": (r, r), "adapter_V": (n, r)}


def _validate(
    model: nn.Module,
    d: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    *,
    adapted: AdaptedModel | None,
) -> list[str]:
    """Every problem found (empty list: safe to load)."""
    errors: list[str] = []
    used: set[str] = set()
    layers: dict[str, Any] = d.get("layers", {})
    if not isinstance(layers, dict) or not layers:
        return ["the checkpoint lists no adapter layers ('layers' is missing or empty)"]
    if adapted is not None and sorted(layers) != sorted(adapted.targeted_module_names):
        errors.append(
            "the checkpoint adapts modules "
            f"{sorted(set(layers) ^ set(adapted.targeted_module_names))[:10]} that differ from "
            "this model's adapters (symmetric difference shown)"
        )
    for name, rec in layers.items():
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            errors.append(f"module {name!r} does not exist in {type(model).__name__}")
            continue
        if adapted is None and not is_supported(mod):
            errors.append(f"module {name!r} has unsupported type {type(mod).__name__}")
            continue
        base = getattr(mod, "base_layer", mod)
        kind = _base_kind(mod, rec["kind"])
        if kind != rec["kind"]:
            errors.append(f"module {name!r} is a {kind} but the checkpoint has a {rec['kind']}")
            continue
        got = [int(s) for s in base.weight.shape]
        if got != [int(s) for s in rec["shape"]]:
            errors.append(
                f"module {name!r}: weight shape {tuple(got)} differs from the checkpoint's "
                f"{tuple(rec['shape'])}"
            )
            continue
        mr = rec["max_rank"]
        rk = rec["rank"]
        if isinstance(rk, list):
            if any(int(a) > int(b) for a, b in zip(rk, mr)):
                errors.append(f"module {name!r}: ranks {rk} exceed max ranks {mr}")
        else:
            shp = _expected_shapes(rec)
            full_rank = min(shp["adapter_U"][0], shp["adapter_V"][0])
            if not (0 <= int(rk) <= int(mr) <= full_rank):
                errors.append(
                    f"module {name!r}: need 0 <= rank ({rk}) <= max_rank ({mr}) <= {full_rank}"
                )
        if adapted is not None:
            layer = adapted.adapter_layers()[name]
            lmr = list(layer.max_ranks) if isinstance(layer, TuckerModule) else layer.max_rank
            if (isinstance(rk, list) and any(int(a) > int(b) for a, b in zip(rk, lmr))) or (
                not isinstance(rk, list) and int(rk) > int(lmr)
            ):
                errors.append(
                    f"module {name!r}: saved rank {rk} exceeds the adapter's max_rank {lmr}"
                )
        for key, shape in _expected_shapes(rec).items():
            full = f"{PREFIX}{name}.{key}"
            if full not in tensors:
                errors.append(f"tensor {full!r} is missing from the checkpoint")
            elif tuple(tensors[full].shape) != shape:
                errors.append(
                    f"tensor {full!r} has shape {tuple(tensors[full].shape)}, expected {shape}"
                )
            used.add(full)
    for name in d.get("modules_to_save_resolved", []):
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            errors.append(f"modules_to_save module {name!r} does not exist")
            continue
        mod = getattr(mod, "trained_module", mod)
        for k, v in mod.state_dict().items():
            full = f"{PREFIX}{name}.{k}"
            if full not in tensors:
                errors.append(f"tensor {full!r} (modules_to_save) is missing")
            elif tuple(tensors[full].shape) != tuple(v.shape):
                errors.append(
                    f"modules_to_save tensor {full!r} has shape {tuple(tensors[full].shape)}, "
                    f"the model has {tuple(v.shape)}"
                )
            used.add(full)
    nonfinite = [
        k for k in sorted(used & set(tensors)) if not bool(torch.isfinite(tensors[k]).all())
    ]
    if nonfinite:
        errors.append(f"tensors with NaN/Inf: {nonfinite[:10]}")
    extra = sorted(set(tensors) - used)
    if extra:
        errors.append(f"unexpected tensors in the checkpoint: {extra[:10]}")
    return errors


def _raise(errors: list[str], model_id: Any, model: nn.Module) -> None:
    listed = "\n  - ".join(errors[:20])
    more = f"\n  … and {len(errors) - 20} more" if len(errors) > 20 else ""
    raise ValueError(
        f"cannot load the adapter at {model_id!s} into {type(model).__name__}; the model was "
        f"not modified:\n  - {listed}{more}"
    )


def _point_from(
    layer: nn.Module, name: str, tensors: dict[str, torch.Tensor]
) -> FixedRankPoint | TuckerPoint:
    pre = f"{PREFIX}{name}."
    if isinstance(layer, TuckerModule):
        core0, fs0 = layer.tucker_parameters()
        dev, dt = core0.device, core0.dtype
        core = tensors[pre + "adapter_core"].to(device=dev, dtype=dt)
        fs = []
        for k, f in enumerate(fs0):
            key = f"{pre}adapter_factors.{k}"
            if k in layer.full_modes:
                fs.append(torch.eye(f.shape[0], dtype=dt, device=dev))
            else:
                fs.append(tensors[key].to(device=dev, dtype=dt))
        return TuckerPoint(core, tuple(fs))
    U0 = layer.factors()[0]  # type: ignore[operator]
    dev, dt = U0.device, U0.dtype
    return FixedRankPoint(
        *(
            tensors[pre + k].to(device=dev, dtype=dt)
            for k in ("adapter_U", "adapter_S", "adapter_V")
        )
    )


def _load_mts(model: nn.Module, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
    for name in names:
        wrapper = model.get_submodule(name)
        mod = getattr(wrapper, "trained_module", wrapper)
        pre = f"{PREFIX}{name}."
        sd = {k[len(pre) :]: v for k, v in tensors.items() if k.startswith(pre)}
        mod.load_state_dict(sd, strict=True)


def load_adapter_model(
    model: nn.Module, model_id: str | os.PathLike[str], *, is_trainable: bool = False
) -> AdaptedModel:
    """Inject a saved adapter into a plain ``model`` (``AdaptedModel.from_pretrained``).

    Adapters are created at exactly the saved modules with the saved (possibly different
    per layer, possibly 0) ranks and ``max_rank``; their factors and the
    ``modules_to_save`` weights are loaded. With ``is_trainable=False`` (default, as in
    PEFT) every parameter is frozen.

    Raises
    ------
    ValueError
        Not a checkpoint of this library, or the model does not fit it (names, kinds,
        shapes); the message lists every problem and the model is unchanged.
    """
    if isinstance(model, AdaptedModel):
        raise ValueError("model already has adapters; use adapted.load_adapter(path) instead")
    d, tensors = _read(model_id)
    errors = _validate(model, d, tensors, adapted=None)
    if errors:
        _raise(errors, model_id, model)
    config = AdapterConfig.from_dict(d)
    config.inference_mode = not is_trainable
    adapters: dict[str, nn.Module] = {}
    for i, (name, rec) in enumerate(d["layers"].items()):
        rank = tuple(rec["rank"]) if isinstance(rec["rank"], list) else int(rec["rank"])
        mr = tuple(rec["max_rank"]) if isinstance(rec["max_rank"], list) else int(rec["max_rank"])
        if rec["kind"] == "tucker_conv2d":
            config_t = AdapterConfig.from_dict({**config.to_dict(), "conv_format": "tucker"})
            config_t.tucker_full_modes = list(rec.get("full_modes", [2, 3]))
        elif rec["kind"] == "conv2d":
            config_t = AdapterConfig.from_dict({**config.to_dict(), "conv_format": "matrix"})
        else:
            config_t = config
        layer = build_adapter(model.get_submodule(name), config_t, rank, name, index=i, max_rank=mr)
        layer.set_point(_point_from(layer, name, tensors))  # type: ignore[operator]
        adapters[name] = layer
    mts = list(d.get("modules_to_save_resolved", []))
    adapted = inject(model, config, adapters, mts, trainable=is_trainable)
    _load_mts(model, mts, tensors)
    if not is_trainable:
        for p in adapted.parameters():
            p.requires_grad_(False)
    adapted._initial_ranks = {n: adapted.rank_pattern()[n] for n in adapters}
    return adapted


def load_into_adapted(adapted: AdaptedModel, model_id: str | os.PathLike[str]) -> None:
    """Load saved factors (any ranks up to each adapter's ``max_rank``) into ``adapted``.

    Validated first; on error nothing is modified.
    """
    d, tensors = _read(model_id)
    model = adapted.get_base_model()
    errors = _validate(model, d, tensors, adapted=adapted)
    if errors:
        _raise(errors, model_id, model)
    layers = adapted.adapter_layers()
    points = {n: _point_from(layers[n], n, tensors) for n in d["layers"]}
    merged = [la for la in layers.values() if la.merged]
    for la in merged:
        la.unmerge()
    for n, pt in points.items():
        layers[n].set_point(pt)  # type: ignore[operator]
    for la in merged:
        la.merge()
    _load_mts(model, list(d.get("modules_to_save_resolved", [])), tensors)
