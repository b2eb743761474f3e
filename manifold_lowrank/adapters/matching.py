r"""Which modules get adapters: PEFT's ``target_modules`` semantics, reimplemented.

The rules are those of ``peft.tuners.tuners_utils.check_target_module_exists``
(peft 0.21), so a configuration behaves identically here and in PEFT:

* ``exclude_modules``: a ``str`` is a regex that must match the *full* module name
  (``re.fullmatch``); a list excludes a name equal to an entry or ending with
  ``"." + entry``.
* modules matched by ``modules_to_save`` (``re.match(rf"(^|.*\.){m}($|\..*)", name)``)
  never get an adapter (they are trained fully instead).
* ``target_modules``: a ``str`` is a regex matched with ``re.fullmatch``; a list matches
  a name equal to an entry or ending with ``"." + entry``;
  ``"all-linear"`` (case-insensitive) is every ``nn.Linear`` and transformers
  ``Conv1D`` except the output layer (``get_output_embeddings()`` of a transformers model,
  or for ``task_type="SEQ_CLS"`` the ``classifier``/``score`` head).
* ``rank_pattern`` keys are matched as by ``peft.utils.other.get_pattern_key``: the first
  key with ``re.match(rf"(.*\.)?({key})$", name)``.

Only modules of supported types may be targeted (:data:`SUPPORTED_TYPES`); anything else
raises a :class:`TypeError` naming the module and its type.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from torch import nn

from manifold_lowrank.adapters.config import AdapterConfig

__all__ = [
    "ALL_LINEAR",
    "SEQ_CLS_HEAD_NAMES",
    "SUPPORTED_TYPES",
    "check_target_module_exists",
    "find_target_modules",
    "get_pattern_key",
    "is_conv1d",
    "is_supported",
    "matches_modules_to_save",
]

ALL_LINEAR = "all-linear"
SEQ_CLS_HEAD_NAMES = ("score", "classifier")
SUPPORTED_TYPES = "torch.nn.Linear, transformers Conv1D, torch.nn.Conv2d (groups=1)"


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (detected by name, without importing transformers)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def is_supported(module: nn.Module) -> bool:
    """Whether an adapter can wrap ``module``."""
    if isinstance(module, nn.Linear) or is_conv1d(module):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1


def _is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def matches_modules_to_save(name: str, modules_to_save: Iterable[str] | None) -> bool:
    """PEFT's test for modules wrapped as ``modules_to_save`` (never adapted)."""
    if not modules_to_save:
        return False
    return any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in modules_to_save)


def _list_match(name: str, entries: Iterable[str]) -> bool:
    return any(name == e or name.endswith(f".{e}") for e in entries)


def check_target_module_exists(
    config: AdapterConfig, name: str, target_modules: Any = None
) -> bool:
    """Whether module ``name`` is targeted by ``config`` (PEFT's rules, see module doc).

    ``target_modules`` overrides ``config.target_modules`` (used after expanding
    ``"all-linear"`` into a set of names).
    """
    tm = config.target_modules if target_modules is None else target_modules
    ex = config.exclude_modules
    if ex:
        if isinstance(ex, str):
            if re.fullmatch(ex, name):
                return False
        elif _list_match(name, ex):
            return False
    if matches_modules_to_save(name, config.modules_to_save):
        return False
    if tm is None:
        return False
    if isinstance(tm, str):
        return re.fullmatch(tm, name) is not None
    return name in tm or _list_match(name, tm)


def _output_layer_names(model: nn.Module, config: AdapterConfig) -> set[str]:
    out: set[str] = set()
    get_out = getattr(model, "get_output_embeddings", None)
    emb = None
    if callable(get_out):
        try:
            emb = get_out()
        except (AttributeError, NotImplementedError):
            emb = None
    if emb is not None:
        out.update(n for n, m in model.named_modules() if m is emb)
    elif config.task_type == "SEQ_CLS":
        for head in SEQ_CLS_HEAD_NAMES:
            mod = getattr(model, head, None)
            if mod is not None:
                out.update(n for n, m in model.named_modules() if m is mod)
                break
    return out


def _expand_target_modules(model: nn.Module, config: AdapterConfig) -> Any:
    tm = config.target_modules
    if isinstance(tm, str) and tm.lower() == ALL_LINEAR:
        names = {n for n, m in model.named_modules() if _is_linear_like(m)}
        return names - _output_layer_names(model, config)
    return tm


def get_pattern_key(pattern_keys: Iterable[str], name: str) -> str | None:
    """The first key with ``re.match(rf"(.*\\.)?({key})$", name)`` (PEFT's rule), or ``None``."""
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return None


def _candidates(model: nn.Module) -> list[str]:
    """Short names of the supported layers, for error messages."""
    names: list[str] = []
    for n, m in model.named_modules():
        if n and is_supported(m):
            names.append(n)
    suffixes: list[str] = []
    for n in names:
        parts = n.split(".")
        # the last non-numeric component, plus its parent when it is generic ("dense")
        tail = parts[-1]
        if len(parts) > 1 and (tail.isdigit() or tail in ("dense", "proj", "linear")):
            tail = ".".join(parts[-2:])
        if tail not in suffixes:
            suffixes.append(tail)
    return suffixes


def find_target_modules(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Names of the modules of ``model`` that ``config`` targets (validated).

    Raises
    ------
    ValueError
        If ``target_modules`` is unset or matches no module; the message lists candidate
        module names (suffixes of the supported layers).
    TypeError
        If a matched module has an unsupported type (the message names it and lists the
        supported types).
    """
    if config.target_modules is None:
        raise ValueError(
            "config.target_modules is not set; give a list of module-name suffixes, a regex or "
            f"'all-linear'. Candidate modules of this model: {_candidates(model)[:40]}"
        )
    tm = _expand_target_modules(model, config)
    matched = [
        n for n, _ in model.named_modules() if n and check_target_module_exists(config, n, tm)
    ]
    if not matched:
        raise ValueError(
            f"target_modules={config.target_modules!r} matched no module of "
            f"{type(model).__name__}"
            + (f" (exclude_modules={config.exclude_modules!r})" if config.exclude_modules else "")
            + f". Candidate modules (supported layers): {_candidates(model)[:40]}"
        )
    bad = [(n, type(model.get_submodule(n)).__name__) for n in matched]
    bad = [(n, t) for n, t in bad if not is_supported(model.get_submodule(n))]
    if bad:
        listed = ", ".join(f"{n!r} ({t})" for n, t in bad[:10])
        raise TypeError(
            f"target_modules={config.target_modules!r} matched module(s) of unsupported type: "
            f"{listed}. Supported layer types: {SUPPORTED_TYPES}. Target the layers inside, "
            f"e.g. {_candidates(model)[:10]}"
        )
    return matched
