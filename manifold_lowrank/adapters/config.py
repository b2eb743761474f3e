r"""The adapter configuration (a PEFT-shaped dataclass) and the method registry.

:class:`AdapterConfig` uses PEFT's field names where they mean the same thing
(``target_modules``, ``exclude_modules``, ``modules_to_save``, ``rank_pattern``,
``task_type``, ``bias``, ``inference_mode``, ``base_model_name_or_path``) and adds the
fields of rank-adaptive methods (``max_rank``, ``min_rank``, ``tau``). It does **not**
inherit from PEFT's ``LoraConfig`` (PEFT's AdaLoRA does, which is why it carries an ignored
``r``); PEFT need not be installed.

The scaling is a constant ``scaling`` (default 1): the adapter contributes
``scaling · U S Vᵀ x``. LoRA's ``alpha / r`` would make the output jump every time a
rank-adaptive method changes ``r`` (a bug of the original GeoLoRA code); here the rank
is free to change and the output is continuous.

Methods are looked up in a registry (:func:`register_method`), so that other
rank-adaptive methods (``"debora"``, ``"bernoulli"``, ``"raclora"``) can plug their own
layer factory into the same wrapper, checkpoint format and PEFT export.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import nn

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "LIBRARY_NAME",
    "AdapterConfig",
    "LayerFactory",
    "register_method",
    "registered_methods",
]

LIBRARY_NAME = "manifold_lowrank"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"

LayerFactory = Callable[[nn.Module, "AdapterConfig", int, str], nn.Module]
"""``factory(base_module, config, rank, module_name) -> adapter module``."""

_METHODS: dict[str, LayerFactory | None] = {"geolora": None}  # None = built-in factory


def register_method(name: str, factory: LayerFactory | None = None) -> None:
    """Register a method name for :attr:`AdapterConfig.method`.

    Parameters
    ----------
    name : str
        Lower-case method name (e.g. ``"debora"``).
    factory : callable, optional
        ``factory(base, config, rank, name) -> nn.Module`` building the adapter for one
        targeted module. ``None`` uses the built-in low-rank adapters of
        :mod:`manifold_lowrank.nn` (the method then differs only by its optimizer).
    """
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"method name must be a non-empty lower-case string, got {name!r}")
    _METHODS[name] = factory


def registered_methods() -> dict[str, LayerFactory | None]:
    """A copy of the registry ``{name: factory or None}``."""
    return dict(_METHODS)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class AdapterConfig:
    """Configuration of rank-adaptive low-rank adapters (PEFT-shaped).

    Every field is documented by its ``help`` metadata (``AdapterConfig.help()``).

    Examples
    --------
    >>> cfg = AdapterConfig(r=8, max_rank=32, tau=0.1,
    ...                     target_modules=["query", "key", "value", "dense"],
    ...                     modules_to_save=["classifier"])
    """

    method: str = field(
        default="geolora",
        metadata=_help(
            "Rank-adaptive method. 'geolora' is built in; other methods register themselves "
            "with manifold_lowrank.adapters.register_method."
        ),
    )
    r: int = field(
        default=8,
        metadata=_help(
            "Initial rank of every adapter (clipped to min(out, in) and to max_rank). The "
            "optimizer (e.g. GeoLoRA) changes it during training."
        ),
    )
    max_rank: int = field(
        default=32,
        metadata=_help(
            "Largest rank an adapter may reach during training (clipped to min(out, in))."
        ),
    )
    min_rank: int = field(
        default=1,
        metadata=_help("Smallest rank after a truncation (0 lets an unused adapter switch off)."),
    )
    tau: float = field(
        default=0.1,
        metadata=_help(
            "Relative truncation tolerance in [0, 1): after a step, the smallest rank whose "
            "discarded singular values have norm <= tau * (norm of all) is kept. Larger tau "
            "gives smaller adapters."
        ),
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata=_help(
            "Modules to adapt, with PEFT's matching rules: a list matches a module whose name "
            "equals an entry or ends with '.' + entry; a string is a regular expression that "
            "must match the full module name; 'all-linear' targets every Linear/Conv1D layer "
            "except the output layer."
        ),
    )
    exclude_modules: list[str] | str | None = field(
        default=None,
        metadata=_help("Modules never to adapt; same rules as target_modules (list or regex)."),
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata=_help(
            "Modules (other than adapters) to train fully and save with the adapter, e.g. a "
            "freshly initialised classifier head ['classifier']. Matched by name suffix."
        ),
    )
    dropout: float = field(
        default=0.0,
        metadata=_help(
            "Dropout probability on the adapter input (PEFT's lora_dropout), in [0, 1)."
        ),
    )
    scaling: float = field(
        default=1.0,
        metadata=_help(
            "Constant output scaling s of every adapter (W = W0 + s U S V^T). It does not "
            "depend on the rank, so the output does not jump when a rank changes."
        ),
    )
    conv_format: str = field(
        default="matrix",
        metadata=_help(
            "Adapter for nn.Conv2d: 'matrix' (U S V^T of the (out, in*kh*kw) kernel matrix, "
            "exportable to PEFT LoRA) or 'tucker' (a Tucker core with factors on the "
            "out/in modes)."
        ),
    )
    tucker_full_modes: list[int] = field(
        default_factory=lambda: [2, 3],
        metadata=_help("Tucker adapters: modes kept at full rank (default the two spatial modes)."),
    )
    rank_pattern: dict[str, int] = field(
        default_factory=dict,
        metadata=_help(
            "Per-module initial ranks {name or regex: rank}, matched like PEFT's rank_pattern "
            "(the key must match the end of the module name)."
        ),
    )
    bias: str = field(
        default="none",
        metadata=_help("Which biases to train: only 'none' is supported (biases stay frozen)."),
    )
    task_type: str | None = field(
        default=None,
        metadata=_help(
            "PEFT task type, e.g. 'SEQ_CLS'. For 'SEQ_CLS' with modules_to_save unset, an "
            "existing 'classifier' or 'score' head is trained and saved, as in PEFT."
        ),
    )
    inference_mode: bool = field(
        default=False,
        metadata=_help("If true, adapters are created frozen (requires_grad=False)."),
    )
    base_model_name_or_path: str | None = field(
        default=None, metadata=_help("Name or path of the base model (informational).")
    )
    init_seed: int | None = field(
        default=0,
        metadata=_help(
            "Seed of the random orthonormal initial bases (None: use torch's global RNG). "
            "S starts at zero, so the adapted model starts equal to the base model."
        ),
    )
    method_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata=_help("Extra options of a registered method (free-form, saved in the JSON)."),
    )

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or self.method not in _METHODS:
            raise ValueError(
                f"method must be one of {sorted(_METHODS)} (register others with "
                f"register_method), got {self.method!r}"
            )
        for name in ("r", "max_rank", "min_rank"):
            v = getattr(self, name)
            lo = 0 if name in ("r", "min_rank") else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if self.min_rank > self.max_rank:
            raise ValueError(f"min_rank ({self.min_rank}) must be <= max_rank ({self.max_rank})")
        if self.r > self.max_rank:
            raise ValueError(f"r ({self.r}) must be <= max_rank ({self.max_rank})")
        if not isinstance(self.tau, (int, float)) or not (0.0 <= float(self.tau) < 1.0):
            raise ValueError(f"tau must be in [0, 1), got {self.tau!r}")
        if not isinstance(self.dropout, (int, float)) or not (0.0 <= float(self.dropout) < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if (
            isinstance(self.scaling, bool)
            or not isinstance(self.scaling, (int, float))
            or not math.isfinite(float(self.scaling))
        ):
            raise ValueError(f"scaling must be a finite float, got {self.scaling!r}")
        if self.conv_format not in ("matrix", "tucker"):
            raise ValueError(f"conv_format must be 'matrix' or 'tucker', got {self.conv_format!r}")
        if self.bias != "none":
            raise ValueError(
                f"bias must be 'none' (training biases is not supported), got {self.bias!r}"
            )
        for name in ("target_modules", "exclude_modules"):
            v = getattr(self, name)
            if v is None or isinstance(v, str):
                continue
            if isinstance(v, (list, tuple, set)) and all(isinstance(x, str) for x in v):
                setattr(self, name, list(v))
                continue
            raise TypeError(f"{name} must be a list of str, a regex str or None, got {v!r}")
        if self.modules_to_save is not None:
            v = self.modules_to_save
            if isinstance(v, str) or not all(isinstance(x, str) for x in v):
                raise TypeError(f"modules_to_save must be a list of str or None, got {v!r}")
            self.modules_to_save = list(v)
        if not isinstance(self.rank_pattern, dict) or not all(
            isinstance(k, str) and isinstance(x, int) and not isinstance(x, bool) and x >= 0
            for k, x in self.rank_pattern.items()
        ):
            raise TypeError(
                f"rank_pattern must be a dict {{str: int >= 0}}, got {self.rank_pattern!r}"
            )
        tfm = self.tucker_full_modes
        if not isinstance(tfm, (list, tuple)) or not all(
            isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= 3 for k in tfm
        ):
            raise ValueError(f"tucker_full_modes must be a list of modes in [0, 3], got {tfm!r}")
        self.tucker_full_modes = [int(k) for k in tfm]
        seed = self.init_seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"init_seed must be an int or None, got {seed!r}")
        for name, pats in (
            ("target_modules", self.target_modules),
            ("exclude_modules", self.exclude_modules),
            ("rank_pattern", list(self.rank_pattern)),
        ):
            for pat in [pats] if isinstance(pats, str) else (pats or []):
                try:
                    re.compile(pat)
                except re.error as exc:
                    raise ValueError(
                        f"{name}: invalid regular expression {pat!r} ({exc})"
                    ) from None

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdapterConfig:
        """Build from a dict, ignoring keys that are not fields (e.g. ``library``)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write ``adapter_config.json`` (plus ``"library": "manifold_lowrank"``)."""
        os.makedirs(directory, exist_ok=True)
        d = {"library": LIBRARY_NAME, "peft_type": self.method.upper(), **self.to_dict()}
        with open(os.path.join(directory, ADAPTER_CONFIG_NAME), "w", encoding="utf-8") as fh:
            json.dump(d, fh, indent=2, sort_keys=True)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> AdapterConfig:
        """Read ``adapter_config.json`` written by this library (never unpickles)."""
        path = os.path.join(directory, ADAPTER_CONFIG_NAME)
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
        if d.get("library") != LIBRARY_NAME:
            raise ValueError(
                f'{path} was not written by {LIBRARY_NAME} (no "library": "{LIBRARY_NAME}" '
                "key); a standard PEFT checkpoint is loaded with peft.PeftModel.from_pretrained"
            )
        return cls.from_dict(d)

    @classmethod
    def help(cls) -> str:
        """One line per field: ``name: help``."""
        return "\n".join(f"{f.name}: {f.metadata.get('help', '')}" for f in fields(cls))
