r"""Exact export to a standard PEFT LoRA checkpoint.

PEFT's LoRA computes ``y = W₀x + (α/r)·B A x`` with ``lora_A = A`` (``r×n``) and
``lora_B = B`` (``m×r``). Our adapter computes ``y = W₀x + s·U S Vᵀ x``. Writing

.. math::  \texttt{lora\_B} = s\,U S \ (m\times r),\qquad \texttt{lora\_A} = V^\top\ (r\times n),
           \qquad \texttt{rank\_pattern}[name] = \texttt{alpha\_pattern}[name] = r

makes every PEFT scaling ``α/r = 1`` and ``B A = s U S Vᵀ`` exactly, so
``peft.PeftModel.from_pretrained(base, dir)`` reproduces the adapted model's outputs (up
to float rounding). The checkpoint is a plain ``LoraConfig`` one (``"peft_type":
"LORA"``), usable by any tool that reads PEFT LoRA (vLLM, diffusers, …); PEFT is not
imported here.

Layer types
-----------
* ``nn.Linear``: as above. transformers ``Conv1D`` (weight ``(in, out)``): same tensors,
  with ``fan_in_fan_out=True`` in the config (PEFT then transposes the delta).
* ``nn.Conv2d``, matrix adapter over the ``(out, in·kh·kw)`` kernel matrix:
  ``lora_A`` = ``Vᵀ`` reshaped to ``(r, in, kh, kw)``, ``lora_B`` = ``s U S`` reshaped to
  ``(out, r, 1, 1)`` (PEFT's LoRA-Conv2d: a ``kh×kw`` conv to ``r`` channels with the base's
  stride and padding, then a ``1×1`` conv). PEFT ignores the base's dilation, so a dilated
  convolution raises :class:`ValueError`.
* ``nn.Conv2d``, Tucker adapter ``C ×₁U₁ ×₂U₂ ×₃U₃ ×₄U₄``: exact at rank ``r₁`` with
  ``lora_B = s U₁`` ``(out, r₁, 1, 1)`` and ``lora_A = C ×₂U₂ ×₃U₃ ×₄U₄``
  ``(r₁, in, kh, kw)``.
* Rank-0 adapters contribute nothing and are left out (not targeted in the export).
* ``modules_to_save``: their trained weights under ``base_model.model.<name>.<param>``.

Module-name keys: ``rank_pattern``/``alpha_pattern`` keys are matched by PEFT with
``re.match(rf"(.*\.)?({key})$", name)``; the plain module name is used when it matches
exactly one exported module, otherwise the anchored regex ``^<escaped name>``.
``target_modules`` is the list of names when no other module of the model would match it
(PEFT also matches name suffixes), otherwise one anchored regex.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch
from torch import nn

from manifold_lowrank.adapters.model import AdaptedModel, layer_kind
from manifold_lowrank.nn.base import TuckerModule

__all__ = ["export_to_peft", "peft_lora_tensors"]

PREFIX = "base_model.model."


def _mode_dot(t: torch.Tensor, m: torch.Tensor, mode: int) -> torch.Tensor:
    # torch-only mode product (tensorly's would need its global backend)
    return torch.tensordot(m, t, dims=([1], [mode])).movedim(0, mode)


def _lora_pair(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(lora_A, lora_B)`` of one adapter, or ``None`` for rank 0."""
    s = float(layer.scaling)  # type: ignore[attr-defined]
    kind = layer_kind(layer)
    if isinstance(layer, TuckerModule):
        if 0 in layer.ranks:
            return None
        core, fs = layer.point()
        a = core
        for k in range(1, core.dim()):
            a = _mode_dot(a, fs[k], k)
        b = s * fs[0]
        return a.contiguous(), b.reshape(b.shape[0], b.shape[1], 1, 1).contiguous()
    U, S, V = layer.point()  # type: ignore[operator]
    r = S.shape[0]
    if r == 0:
        return None
    A = V.transpose(0, 1)
    B = s * (U @ S)
    if kind == "conv2d":
        cin, kh, kw = layer.kernel_shape  # type: ignore[attr-defined]
        A = A.reshape(r, cin, kh, kw)
        B = B.reshape(B.shape[0], r, 1, 1)
    return A.contiguous(), B.contiguous()


def _check_exportable(name: str, layer: nn.Module) -> None:
    base = layer.base_layer  # type: ignore[attr-defined]
    if isinstance(base, nn.Conv2d) and tuple(base.dilation) != (1, 1):
        raise ValueError(
            f"module {name!r}: PEFT's LoRA-Conv2d ignores dilation, so a dilated convolution "
            f"(dilation={tuple(base.dilation)}) cannot be exported exactly"
        )


def peft_lora_tensors(adapted: AdaptedModel) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """``(tensors, ranks)`` of the PEFT export; rank-0 adapters are omitted."""
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for name, layer in adapted.adapter_layers().items():
        _check_exportable(name, layer)
        pair = _lora_pair(layer)
        if pair is None:
            continue
        A, B = pair
        tensors[f"{PREFIX}{name}.lora_A.weight"] = A
        tensors[f"{PREFIX}{name}.lora_B.weight"] = B
        ranks[name] = int(A.shape[0])
    for name, wrapper in adapted.modules_to_save_wrappers().items():
        for k, v in wrapper.trained_module.state_dict().items():
            tensors[f"{PREFIX}{name}.{k}"] = v
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, ranks


def _pattern_key(name: str, names: list[str]) -> str:
    hits = [n for n in names if re.match(rf"(.*\.)?({name})$", n)]
    return name if hits == [name] else "^" + re.escape(name)


def _target_modules(model: nn.Module, names: list[str]) -> list[str] | str:
    chosen = set(names)
    for n, _ in model.named_modules():
        if n in chosen or not n:
            continue
        if any(n.endswith(f".{t}") for t in names):
            return "(" + "|".join(re.escape(t) for t in names) + ")"
        # PEFT matches `key in target_modules` exactly too; covered by `chosen`
    return list(names)


def export_to_peft(
    adapted: AdaptedModel,
    save_directory: str | os.PathLike[str],
    *,
    base_model_name_or_path: str | None = None,
) -> dict[str, Any]:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` as a PEFT LoRA checkpoint.

    Parameters
    ----------
    adapted : AdaptedModel
        The model with (possibly heterogeneous-rank) adapters.
    save_directory : path
        Created if needed.
    base_model_name_or_path : str, optional
        Stored in the config (default: the adapter config's value).

    Returns
    -------
    dict
        The written LoRA config.

    Raises
    ------
    ValueError
        Every adapter has rank 0 (nothing to export), or a layer cannot be represented
        exactly by PEFT LoRA (dilated Conv2d).
    """
    import safetensors.torch as st

    tensors, ranks = peft_lora_tensors(adapted)
    if not ranks:
        raise ValueError("every adapter has rank 0: there is nothing to export")
    names = list(ranks)
    model = adapted.get_base_model()
    counts: dict[int, int] = {}
    for r in ranks.values():
        counts[r] = counts.get(r, 0) + 1
    r0 = max(counts, key=lambda r: (counts[r], r))
    pattern = {_pattern_key(n, names): r for n, r in ranks.items()}
    layers = adapted.adapter_layers()
    fan_in_fan_out = any(layer_kind(layers[n]) == "conv1d" for n in names)
    cfg = adapted.adapter_config
    lora: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": cfg.task_type,
        "base_model_name_or_path": base_model_name_or_path or cfg.base_model_name_or_path,
        "inference_mode": True,
        "r": r0,
        "lora_alpha": r0,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": _target_modules(model, names),
        "exclude_modules": None,
        "lora_dropout": float(cfg.dropout),
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": list(adapted.modules_to_save_names) or None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": None,
    }
    os.makedirs(save_directory, exist_ok=True)
    st.save_file(
        tensors,
        os.path.join(save_directory, "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    with open(os.path.join(save_directory, "adapter_config.json"), "w", encoding="utf-8") as fh:
        json.dump(lora, fh, indent=2, sort_keys=True)
    return lora
