r"""Wrap any ``nn.Module`` with rank-adaptive adapters: :func:`get_adapter_model`.

The returned :class:`AdaptedModel` mirrors PEFT's ``PeftModel`` where it makes sense:
the wrapped model is ``adapted.base_model.model`` (so state-dict keys read
``base_model.model.<module path>…`` as in PEFT), missing attributes are forwarded to it,
and it offers ``print_trainable_parameters()`` (PEFT's exact format),
``targeted_module_names``, ``merge_adapter``/``unmerge_adapter``,
``merge_and_unload``, ``unload``, the ``disable_adapter()`` context, ``save_pretrained``/
``from_pretrained`` and :meth:`AdaptedModel.export_to_peft`. It adds rank reporting
(:meth:`AdaptedModel.rank_pattern`, :meth:`AdaptedModel.rank_report`,
:meth:`AdaptedModel.print_rank_summary`).

Adapters are injected *in place* (the original modules become ``base_layer`` of the
adapters); every parameter of the original model is frozen, the adapter factors are
trainable, and ``modules_to_save`` are replaced by a :class:`ModulesToSaveWrapper` that
trains a copy and keeps the original (used inside ``disable_adapter()``).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from manifold_lowrank.adapters.config import AdapterConfig, registered_methods
from manifold_lowrank.adapters.matching import (
    SEQ_CLS_HEAD_NAMES,
    find_target_modules,
    get_pattern_key,
    is_conv1d,
)
from manifold_lowrank.nn.adapters import (
    LowRankAdapter,
    LowRankConv2dAdapter,
    TuckerConv2dAdapter,
    is_adapter_parameter,
)
from manifold_lowrank.nn.base import LowRankModule, TuckerModule

__all__ = [
    "AdaptedModel",
    "ModulesToSaveWrapper",
    "get_adapter_model",
    "get_peft_model",
    "layer_kind",
]


# --------------------------------------------------------------------------- helpers
class ModulesToSaveWrapper(nn.Module):
    """Trains a copy of a module (``trained_module``) and keeps the original frozen.

    The forward pass uses the trained copy, or the original inside
    :meth:`AdaptedModel.disable_adapter`. Attribute access falls through to the trained
    copy (``wrapper.weight`` is the trained weight).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.original_module = module
        self.trained_module = copy.deepcopy(module)
        for p in self.original_module.parameters():
            p.requires_grad_(False)
        for p in self.trained_module.parameters():
            p.requires_grad_(True)
        self.disabled = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        mod = self.original_module if self.disabled else self.trained_module
        return mod(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            trained = self._modules.get("trained_module")
            if trained is None:
                raise
            return getattr(trained, name)


class _BaseModelHolder(nn.Module):
    """Gives the wrapped model the PEFT key prefix ``base_model.model.``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - not used
        return self.model(*args, **kwargs)


def layer_kind(module: nn.Module) -> str:
    """``"linear"``, ``"conv1d"``, ``"conv2d"`` or ``"tucker_conv2d"`` (adapter or base layer)."""
    if isinstance(module, TuckerConv2dAdapter):
        return "tucker_conv2d"
    if isinstance(module, LowRankConv2dAdapter):
        return "conv2d"
    if isinstance(module, LowRankAdapter):
        return "conv1d" if module.fan_in_fan_out else "linear"
    base = getattr(module, "base_layer", module)
    if isinstance(base, nn.Conv2d):
        return "conv2d"
    if is_conv1d(base):
        return "conv1d"
    if isinstance(base, nn.Linear):
        return "linear"
    return type(module).__name__


def _matrix_shape(base: nn.Module) -> tuple[int, int]:
    if isinstance(base, nn.Conv2d):
        out, cin, kh, kw = base.weight.shape
        return int(out), int(cin * kh * kw)
    if is_conv1d(base):
        n, m = base.weight.shape
        return int(m), int(n)
    return int(base.weight.shape[0]), int(base.weight.shape[1])


def _generator_for(base: nn.Module, seed: int | None, index: int) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=base.weight.device)
    g.manual_seed(int(seed) * 1_000_003 + index)
    return g


def build_adapter(
    base: nn.Module,
    config: AdapterConfig,
    rank: int | tuple[int, ...],
    name: str,
    *,
    index: int = 0,
    max_rank: int | tuple[int, ...] | None = None,
) -> nn.Module:
    """The adapter module for ``base`` (built-in layers unless the method registered a factory).

    ``rank`` is clipped to the layer's ``max_rank = min(config.max_rank, m, n)`` (for
    Tucker, per mode); an explicit ``max_rank`` (used when loading) overrides it.
    """
    factory = registered_methods().get(config.method)
    if factory is not None:
        r = rank if isinstance(rank, int) else int(rank[0])
        return factory(base, config, r, name)
    gen = _generator_for(base, config.init_seed, index)
    kw: dict[str, Any] = {
        "scaling": float(config.scaling),
        "dropout": float(config.dropout),
        "generator": gen,
    }
    if isinstance(base, nn.Conv2d) and config.conv_format == "tucker":
        dims = tuple(int(d) for d in base.weight.shape)
        full = tuple(config.tucker_full_modes)
        if max_rank is None:
            mrs = tuple(dims[k] if k in full else min(config.max_rank, dims[k]) for k in range(4))
        else:
            mrs = tuple(max_rank)  # type: ignore[arg-type]
        if isinstance(rank, int):
            rs = tuple(None if k in full else min(rank, mrs[k]) for k in range(4))
        else:
            rs = tuple(None if k in full else int(rank[k]) for k in range(4))
        return TuckerConv2dAdapter(base, rs, full_modes=full, max_ranks=mrs, **kw)
    m, n = _matrix_shape(base)
    mr = min(config.max_rank, m, n) if max_rank is None else int(max_rank)  # type: ignore[arg-type]
    r = min(int(rank), mr)  # type: ignore[arg-type]
    if isinstance(base, nn.Conv2d):
        return LowRankConv2dAdapter(base, r, max_rank=mr, **kw)
    return LowRankAdapter(base, r, max_rank=mr, **kw)


def _initial_rank(config: AdapterConfig, name: str) -> int:
    key = get_pattern_key(config.rank_pattern.keys(), name)
    return int(config.rank_pattern[key]) if key is not None else int(config.r)


def _split(name: str) -> tuple[str, str]:
    parent, _, child = name.rpartition(".")
    return parent, child


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, child = _split(name)
    setattr(model.get_submodule(parent) if parent else model, child, new)


def resolve_modules_to_save(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Module names wrapped as ``modules_to_save`` (validated; PEFT's SEQ_CLS default)."""
    wanted = config.modules_to_save
    if wanted is None:
        if config.task_type != "SEQ_CLS":
            return []
        for head in SEQ_CLS_HEAD_NAMES:
            if isinstance(getattr(model, head, None), nn.Module):
                return [head]
        return []
    names = [n for n, _ in model.named_modules() if n]
    out: list[str] = []
    for n in names:
        if any(n == w or n.endswith(f".{w}") for w in wanted):
            if any(n.startswith(o + ".") for o in out):
                continue  # nested inside an already wrapped module
            out.append(n)
    missing = [w for w in wanted if not any(n == w or n.endswith(f".{w}") for n in out)]
    if missing:
        top = [n for n in names if "." not in n]
        raise ValueError(
            f"modules_to_save entries {missing} match no module of {type(model).__name__}; "
            f"top-level modules: {top[:30]}"
        )
    return out


def _freeze_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def _set_adapters_trainable(layers: dict[str, nn.Module], trainable: bool) -> None:
    for layer in layers.values():
        if isinstance(layer, TuckerModule):
            frozen = set(layer.full_modes)
            core, fs = layer.tucker_parameters()
            core.requires_grad_(trainable)
            for k, f in enumerate(fs):
                f.requires_grad_(trainable and k not in frozen)
        elif isinstance(layer, LowRankModule):
            for p in layer.factors():
                p.requires_grad_(trainable)
        else:
            for n, p in layer.named_parameters():
                if is_adapter_parameter(n):
                    p.requires_grad_(trainable)


def inject(
    model: nn.Module,
    config: AdapterConfig,
    adapters: dict[str, nn.Module],
    modules_to_save: list[str],
    *,
    trainable: bool,
) -> AdaptedModel:
    """Put prepared ``adapters`` and ``modules_to_save`` wrappers into ``model`` (no checks)."""
    _freeze_all(model)
    for name, layer in adapters.items():
        _replace(model, name, layer)
    for name in modules_to_save:
        wrapper = ModulesToSaveWrapper(model.get_submodule(name))
        if not trainable:
            for p in wrapper.trained_module.parameters():
                p.requires_grad_(False)
        _replace(model, name, wrapper)
    _set_adapters_trainable(adapters, trainable)
    return AdaptedModel(model, config, list(adapters), modules_to_save)


# --------------------------------------------------------------------------- entry point
def get_adapter_model(model: nn.Module, config: AdapterConfig) -> AdaptedModel:
    """Inject rank-adaptive adapters into ``model`` (in place) and wrap it.

    Parameters
    ----------
    model : nn.Module
        Any model (a transformers ``PreTrainedModel`` or a plain module).
    config : AdapterConfig
        Which modules (``target_modules`` with PEFT's rules), initial rank ``r``
        (``rank_pattern`` per module), ``max_rank``, ``scaling``, ``dropout``,
        ``modules_to_save``.

    Returns
    -------
    AdaptedModel
        Its output equals the original model's at initialisation (``ΔW = 0``).

    Raises
    ------
    ValueError
        ``target_modules`` matches nothing (the message lists candidate names), or a
        ``modules_to_save`` entry matches nothing, or ``model`` is already adapted.
    TypeError
        A matched module has an unsupported type.
    """
    if not isinstance(config, AdapterConfig):
        raise TypeError(f"config must be an AdapterConfig, got {type(config).__name__}")
    if isinstance(model, AdaptedModel):
        raise ValueError("model is already an AdaptedModel; adapters cannot be nested")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    mts = resolve_modules_to_save(model, config)
    cfg = copy.deepcopy(config)
    cfg.modules_to_save = mts or config.modules_to_save
    names = find_target_modules(model, cfg)
    # build everything first: nothing is modified if a constructor raises
    adapters = {
        n: build_adapter(model.get_submodule(n), cfg, _initial_rank(cfg, n), n, index=i)
        for i, n in enumerate(names)
    }
    return inject(model, cfg, adapters, mts, trainable=not cfg.inference_mode)


get_peft_model = get_adapter_model
"""Alias of :func:`get_adapter_model` (PEFT's name)."""


# --------------------------------------------------------------------------- the wrapper
class AdaptedModel(nn.Module):
    """A model with rank-adaptive adapters (returned by :func:`get_adapter_model`).

    Attributes
    ----------
    base_model : nn.Module
        Holder whose ``.model`` is the (modified in place) wrapped model.
    adapter_config : AdapterConfig
    targeted_module_names : list of str
        Names (relative to the wrapped model) of the adapted modules.
    modules_to_save_names : list of str
    """

    def __init__(
        self,
        model: nn.Module,
        config: AdapterConfig,
        targeted_module_names: list[str],
        modules_to_save_names: list[str],
    ) -> None:
        super().__init__()
        self.base_model = _BaseModelHolder(model)
        self.adapter_config = config
        self.targeted_module_names = list(targeted_module_names)
        self.modules_to_save_names = list(modules_to_save_names)
        self._initial_ranks = {n: _rank_of(m) for n, m in self.adapter_layers().items()}
        self._unloaded = False

    # ------------------------------------------------------------------ plumbing
    def get_base_model(self) -> nn.Module:
        """The wrapped model (with adapters injected)."""
        return self.base_model.model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._check_live()
        return self.base_model.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_model", "_modules"):
                raise
            return getattr(self.base_model.model, name)

    def _check_live(self) -> None:
        if self.__dict__.get("_unloaded", False):
            raise RuntimeError("the adapters were unloaded; use the model returned by unload()")

    def adapter_layers(self) -> dict[str, nn.Module]:
        """``{name: adapter module}`` (names relative to the wrapped model)."""
        m = self.base_model.model
        return {n: m.get_submodule(n) for n in self.targeted_module_names}

    def modules_to_save_wrappers(self) -> dict[str, ModulesToSaveWrapper]:
        """``{name: ModulesToSaveWrapper}``."""
        m = self.base_model.model
        return {n: m.get_submodule(n) for n in self.modules_to_save_names}  # type: ignore[misc]

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The trainable adapter factors (for an optimizer of your choice)."""
        return [
            p
            for layer in self.adapter_layers().values()
            for p in layer.parameters(recurse=True)
            if p.requires_grad and not _is_base_param(layer, p)
        ]

    def non_adapter_trainable_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters that are not adapter factors (e.g. the classifier head).

        Give these to a standard optimizer next to :class:`~manifold_lowrank.optim.GeoLoRA`.
        """
        ids = {id(p) for p in self.adapter_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in ids]

    # ------------------------------------------------------------------ reporting
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable parameters, all parameters)`` counted like PEFT."""
        trainable = total = 0
        for p in self.parameters():
            total += p.numel()
            if p.requires_grad:
                trainable += p.numel()
        return trainable, total

    def print_trainable_parameters(self) -> None:
        """Print ``trainable params: … || all params: … || trainable%: …`` (PEFT's format)."""
        trainable, total = self.get_nb_trainable_parameters()
        pct = 100 * trainable / total if total else 0.0
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {pct:.4f}"
        )

    def rank_pattern(self) -> dict[str, Any]:
        """``{module name: current rank}`` (a tuple of ranks for Tucker adapters)."""
        return {n: _rank_of(m) for n, m in self.adapter_layers().items()}

    def num_adapter_parameters(self) -> int:
        """Entries currently held by the trainable adapter factors."""
        return sum(p.numel() for p in self.adapter_parameters())

    def rank_report(self) -> list[dict[str, Any]]:
        """One dict per adapter: name, kind, matrix/kernel shape, rank, initial rank,
        max rank, adapter parameters, dense parameters of ``ΔW``."""
        rows = []
        for n, layer in self.adapter_layers().items():
            kind = layer_kind(layer)
            if isinstance(layer, TuckerModule):
                shape: tuple[int, ...] = tuple(layer.dims)
                max_rank: Any = tuple(layer.max_ranks)
            else:
                shape = tuple(layer.matrix_shape)  # type: ignore[attr-defined]
                max_rank = int(layer.max_rank)  # type: ignore[attr-defined]
            dense = 1
            for s in shape:
                dense *= int(s)
            params = sum(
                p.numel()
                for p in layer.parameters()
                if not _is_base_param(layer, p) and p.requires_grad
            )
            rows.append(
                {
                    "name": n,
                    "kind": kind,
                    "shape": shape,
                    "rank": _rank_of(layer),
                    "initial_rank": self._initial_ranks.get(n),
                    "max_rank": max_rank,
                    "params": int(params),
                    "dense_params": int(dense),
                }
            )
        return rows

    def print_rank_summary(self) -> None:
        """Print a per-layer table of ranks and parameters, and the totals."""
        rows = self.rank_report()
        if not rows:
            print("no adapters")
            return
        w = max(len(r["name"]) for r in rows)
        print(
            f"{'module':<{w}}  {'kind':<13} {'shape':<16} {'rank':>12} {'init':>12} {'params':>10}"
        )
        for r in rows:
            shape = "x".join(str(s) for s in r["shape"])
            print(
                f"{r['name']:<{w}}  {r['kind']:<13} {shape:<16} {r['rank']!s:>12} "
                f"{r['initial_rank']!s:>12} {r['params']:>10,d}"
            )
        total = sum(r["params"] for r in rows)
        dense = sum(r["dense_params"] for r in rows)
        print(
            f"{len(rows)} adapters, {total:,d} adapter parameters "
            f"({100 * total / max(dense, 1):.3f}% of the adapted weights)"
        )

    # ------------------------------------------------------------------ merging
    def merge_adapter(self) -> None:
        """Add every ``s ΔW`` into its base weight (forward then skips the adapters)."""
        self._check_live()
        for layer in self.adapter_layers().values():
            if not layer.merged:
                layer.merge()

    def unmerge_adapter(self) -> None:
        """Undo :meth:`merge_adapter`."""
        self._check_live()
        for layer in self.adapter_layers().values():
            if layer.merged:
                layer.unmerge()

    def _unload(self, merge: bool, safe_merge: bool = False) -> nn.Module:
        self._check_live()
        model = self.base_model.model
        layers = self.adapter_layers()
        if merge and safe_merge:
            for n, layer in layers.items():
                if layer.merged:
                    continue
                w = layer.base_layer.weight
                new = w + layer._delta_base_layout().to(w.dtype)
                if not bool(torch.isfinite(new).all()):
                    raise ValueError(
                        f"safe_merge: merging the adapter of {n!r} gives NaN/Inf; nothing merged"
                    )
        for n, layer in layers.items():
            if merge and not layer.merged:
                layer.merge()
            if not merge and layer.merged:
                layer.unmerge()
            _replace(model, n, layer.base_layer)
        for n, wrapper in self.modules_to_save_wrappers().items():
            _replace(model, n, wrapper.trained_module)
        self._unloaded = True
        return model

    def merge_and_unload(self, safe_merge: bool = False) -> nn.Module:
        """Merge the adapters into the base weights and return the plain model.

        ``safe_merge=True`` checks every merged weight for NaN/Inf first (nothing is
        merged if one is not finite). ``modules_to_save`` are replaced by their trained
        copies. The :class:`AdaptedModel` is unusable afterwards.
        """
        return self._unload(merge=True, safe_merge=safe_merge)

    def unload(self) -> nn.Module:
        """Remove the adapters without merging and return the plain model.

        Adapted base layers get back their original weights (merged adapters are
        unmerged); ``modules_to_save`` keep their trained copies (as in PEFT).
        """
        return self._unload(merge=False)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Context in which the model computes the *original* model's output.

        Adapters are bypassed (merged ones are unmerged and merged again on exit) and
        ``modules_to_save`` use their original modules.
        """
        self._check_live()
        layers = list(self.adapter_layers().values())
        merged = [la for la in layers if la.merged]
        for la in merged:
            la.unmerge()
        prev = [la.disable_adapters for la in layers]
        wrappers = list(self.modules_to_save_wrappers().values())
        prev_w = [w.disabled for w in wrappers]
        try:
            for la in layers:
                la.disable_adapters = True
            for w in wrappers:
                w.disabled = True
            yield
        finally:
            for la, p in zip(layers, prev):
                la.disable_adapters = p
            for w, p in zip(wrappers, prev_w):
                w.disabled = p
            for la in merged:
                la.merge()

    # ------------------------------------------------------------------ I/O
    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (see :mod:`.io`)."""
        from manifold_lowrank.adapters.io import save_adapter

        self._check_live()
        save_adapter(self, save_directory)

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        model_id: str | os.PathLike[str],
        *,
        is_trainable: bool = False,
    ) -> AdaptedModel:
        """Load an adapter saved by :meth:`save_pretrained` into ``model`` (see :mod:`.io`)."""
        from manifold_lowrank.adapters.io import load_adapter_model

        return load_adapter_model(model, model_id, is_trainable=is_trainable)

    def load_adapter(self, model_id: str | os.PathLike[str]) -> None:
        """Replace the adapter weights and ranks by a saved adapter (same target modules)."""
        from manifold_lowrank.adapters.io import load_into_adapted

        self._check_live()
        load_into_adapted(self, model_id)

    def export_to_peft(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> dict:
        """Write a standard PEFT LoRA checkpoint (see :func:`.export.export_to_peft`)."""
        from manifold_lowrank.adapters.export import export_to_peft

        self._check_live()
        return export_to_peft(self, save_directory, **kwargs)

    def extra_repr(self) -> str:
        return f"method={self.adapter_config.method!r}, adapters={len(self.targeted_module_names)}"


def _rank_of(layer: nn.Module) -> Any:
    if isinstance(layer, TuckerModule):
        return tuple(layer.ranks)
    return int(getattr(layer, "rank", 0))


def _is_base_param(layer: nn.Module, p: nn.Parameter) -> bool:
    base = getattr(layer, "base_layer", None)
    if base is None:
        return False
    return any(p is q for q in base.parameters())
