r"""Gradient compressors for communication-efficient (federated) training.

A compressor maps a vector ``x ∈ R^d`` to a *byte payload* (the message that actually
crosses between workers, a ``uint8`` tensor of fixed length for a given ``d``) and back.
Two classes matter for the theory:

* **unbiased** with variance parameter ``ω``: ``E[C(x)] = x`` and
  ``E‖C(x) − x‖² ≤ ω ‖x‖²`` (used by QGD and MARINA);
* **contractive** with parameter ``α ∈ (0, 1]``: ``‖C(x) − x‖² ≤ (1 − α)‖x‖²``
  (deterministically for Top-K; used by EF21).

* :class:`RandK` — unbiased, ``ω = d/k − 1``; payload ``k·b`` bytes (``b`` the
  itemsize; the indices come from shared randomness and are not sent).
* :class:`RandomDithering` — unbiased, ``ω = min(d/s², √d/s)``; payload
  ``b + ⌈d (1 + ⌈log₂(s+1)⌉)/8⌉`` bytes (the norm plus bit-packed sign/level codes).
* :class:`TopK` — contractive, ``α = k/d``; payload ``k·b + 4k`` bytes (values and
  ``int32`` indices).

``ratio(d, dtype) = payload_bytes(d, dtype) / (d · itemsize)`` is the fraction of the
uncompressed message that is sent.

Shared randomness. Rand-K's coordinate set is drawn from a generator that every worker
replicates (``shared_randomness(d, generator)``), so receivers regenerate the indices and
only the ``k`` scaled values are transmitted. Random dithering's rounding coins are
private to the sender (they do not need to be known to decode).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch

__all__ = [
    "Compressor",
    "RandK",
    "RandomDithering",
    "TopK",
    "make_compressor",
]


def _to_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _from_bytes(buf: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # clone() gives a fresh, aligned storage before reinterpreting the bytes
    return buf.clone().view(dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integer ``codes`` (< 2**bits) into a ``uint8`` tensor, LSB first."""
    shifts = torch.arange(bits, device=codes.device)
    b = ((codes.unsqueeze(-1) >> shifts) & 1).reshape(-1)
    pad = (-b.numel()) % 8
    if pad:
        b = torch.cat([b, b.new_zeros(pad)])
    w = (1 << torch.arange(8, device=codes.device)).to(b.dtype)
    return (b.reshape(-1, 8) * w).sum(-1).to(torch.uint8)


def _unpack_bits(buf: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    shifts = torch.arange(8, device=buf.device)
    b = ((buf.to(torch.int64).unsqueeze(-1) >> shifts) & 1).reshape(-1)[: count * bits]
    w = 1 << torch.arange(bits, device=buf.device)
    return (b.reshape(count, bits) * w).sum(-1)


def _resolve_k(k: int | None, ratio: float | None, d: int) -> int:
    if k is not None:
        if k > d:
            raise ValueError(f"k must be <= d = {d}, got k={k}")
        return k
    assert ratio is not None
    return max(1, min(d, math.floor(ratio * d)))


def _check_k_ratio(k: object, ratio: object) -> tuple[int | None, float | None]:
    if (k is None) == (ratio is None):
        raise ValueError("give exactly one of k (number of coordinates) or ratio (k/d)")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        return k, None
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"ratio must be a float in (0, 1], got {type(ratio).__name__}")
    if not (0.0 < float(ratio) <= 1.0):
        raise ValueError(f"ratio must lie in (0, 1], got {ratio!r}")
    return None, float(ratio)


class Compressor(ABC):
    """Base class. Subclasses define the payload layout and the variance/contraction.

    Attributes
    ----------
    unbiased : bool
        ``E[C(x)] = x``.
    contractive : bool
        ``‖C(x) − x‖² ≤ (1 − α)‖x‖²`` for every ``x``.
    """

    unbiased: bool = False
    contractive: bool = False

    def shared_randomness(
        self, d: int, generator: torch.Generator | None, device: torch.device | None = None
    ) -> Any:
        """Randomness known to sender and receivers (``None`` if not needed)."""
        return None

    @abstractmethod
    def compress(
        self,
        x: torch.Tensor,
        *,
        shared: Any = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Encode a flat vector ``x`` (``(d,)``) into a ``uint8`` payload."""

    @abstractmethod
    def decompress(
        self, payload: torch.Tensor, d: int, dtype: torch.dtype, *, shared: Any = None
    ) -> torch.Tensor:
        """Decode a payload into ``C(x)`` (``(d,)``, ``dtype``)."""

    @abstractmethod
    def payload_bytes(self, d: int, dtype: torch.dtype) -> int:
        """Exact payload length in bytes for a ``d``-vector of ``dtype``."""

    def ratio(self, d: int, dtype: torch.dtype = torch.float32) -> float:
        """Payload bytes over uncompressed bytes ``d · itemsize``."""
        return self.payload_bytes(d, dtype) / (d * _itemsize(dtype))

    def omega(self, d: int) -> float:
        """Variance parameter ``ω`` (unbiased compressors)."""
        raise TypeError(f"{type(self).__name__} is not unbiased; it has no ω")

    def alpha(self, d: int) -> float:
        """Contraction parameter ``α`` (contractive compressors)."""
        raise TypeError(f"{type(self).__name__} is not contractive; it has no α")

    def __call__(
        self,
        x: torch.Tensor,
        *,
        shared: Any = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``C(x)`` for a flat ``x`` (encode then decode). Draws ``shared`` if needed."""
        if x.ndim != 1:
            raise ValueError(f"x must be a flat (d,) vector, got shape {tuple(x.shape)}")
        d = x.numel()
        if shared is None:
            shared = self.shared_randomness(d, generator, x.device)
        payload = self.compress(x, shared=shared, generator=generator)
        return self.decompress(payload, d, x.dtype, shared=shared)


class RandK(Compressor):
    r"""Rand-K: keep ``k`` uniformly random coordinates, scaled by ``d/k``.

    ``C(x) = (d/k) Σ_{i∈S} x_i e_i``, ``S`` a uniform ``k``-subset. Unbiased with
    ``E‖C(x) − x‖² = (d/k − 1)‖x‖²``, i.e. ``ω = d/k − 1``. With shared randomness the
    message is the ``k`` values only: ``ratio = k/d``.

    Parameters
    ----------
    k : int, optional
        Number of coordinates (``1 ≤ k ≤ d``).
    ratio : float, optional
        ``k/d ∈ (0, 1]`` instead of ``k`` (``k = max(1, ⌊ratio·d⌋)``).
    """

    unbiased = True

    def __init__(self, k: int | None = None, *, ratio: float | None = None) -> None:
        self.k, self.ratio_ = _check_k_ratio(k, ratio)

    def k_for(self, d: int) -> int:
        """``k`` for dimension ``d``."""
        return _resolve_k(self.k, self.ratio_, d)

    def shared_randomness(self, d, generator, device=None):
        k = self.k_for(d)
        gdev = generator.device if generator is not None else torch.device("cpu")
        idx = torch.randperm(d, generator=generator, device=gdev)[:k].sort().values
        return idx.to(device) if device is not None else idx

    def compress(self, x, *, shared=None, generator=None):
        if shared is None:
            raise ValueError("shared (the coordinate set from shared_randomness) is required")
        d = x.numel()
        vals = x[shared.to(x.device)] * (d / self.k_for(d))
        return _to_bytes(vals)

    def decompress(self, payload, d, dtype, *, shared=None):
        if shared is None:
            raise ValueError("shared (the coordinate set from shared_randomness) is required")
        out = torch.zeros(d, dtype=dtype, device=payload.device)
        out[shared.to(payload.device)] = _from_bytes(payload, dtype)
        return out

    def payload_bytes(self, d, dtype):
        return self.k_for(d) * _itemsize(dtype)

    def omega(self, d):
        return d / self.k_for(d) - 1.0

    def __repr__(self) -> str:
        return f"RandK(k={self.k})" if self.k is not None else f"RandK(ratio={self.ratio_})"


class RandomDithering(Compressor):
    r"""Random dithering / QSGD with ``s`` levels (Alistarh et al. 2017).

    ``C(x)_i = ‖x‖₂ · sign(x_i) · ξ_i / s`` where, with ``u = s|x_i|/‖x‖₂`` and
    ``l = ⌊u⌋``, ``ξ_i = l + 1`` with probability ``u − l`` and ``l`` otherwise.
    Unbiased with ``ω = min(d/s², √d/s)``.

    The payload is the norm (one value of ``dtype``) followed by one code per coordinate
    (sign bit + level in ``0..s``), bit-packed with ``1 + ⌈log₂(s + 1)⌉`` bits each.

    Parameters
    ----------
    levels : int
        ``s ≥ 1``.
    """

    unbiased = True

    def __init__(self, levels: int = 1) -> None:
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"levels must be a positive int, got {levels!r}")
        self.levels = levels
        self.level_bits = max(1, math.ceil(math.log2(levels + 1)))

    @property
    def bits(self) -> int:
        """Bits per coordinate: one sign bit plus the level bits."""
        return 1 + self.level_bits

    def compress(self, x, *, shared=None, generator=None):
        s = self.levels
        norm = torch.linalg.vector_norm(x)
        if float(norm) == 0.0:
            levels = torch.zeros(x.shape, dtype=torch.int64, device=x.device)
        else:
            u = (s * x.abs() / norm).clamp(max=s)
            low = torch.floor(u)
            gdev = generator.device if generator is not None else torch.device("cpu")
            coin = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=gdev)
            levels = (low + (coin.to(x.device) < (u - low)).to(x.dtype)).to(torch.int64)
        sign = (x < 0).to(torch.int64)
        codes = sign | (levels << 1)
        return torch.cat([_to_bytes(norm.reshape(1)), _pack_bits(codes, self.bits)])

    def decompress(self, payload, d, dtype, *, shared=None):
        b = _itemsize(dtype)
        norm = _from_bytes(payload[:b], dtype)[0]
        codes = _unpack_bits(payload[b:], self.bits, d)
        sign = 1.0 - 2.0 * (codes & 1).to(dtype)
        levels = (codes >> 1).to(dtype)
        return norm * sign * levels / self.levels

    def payload_bytes(self, d, dtype):
        return _itemsize(dtype) + math.ceil(d * self.bits / 8)

    def omega(self, d):
        s = self.levels
        return min(d / s**2, math.sqrt(d) / s)

    def __repr__(self) -> str:
        return f"RandomDithering(levels={self.levels})"


class TopK(Compressor):
    r"""Top-K: keep the ``k`` largest-magnitude coordinates (ties broken by index).

    Deterministic and contractive: ``‖C(x) − x‖² ≤ (1 − k/d)‖x‖²``, ``α = k/d``
    (the ``d − k`` discarded squares are the smallest, so their mean is at most the mean
    of all squares). Biased. Payload: ``k`` values and ``k`` ``int32`` indices.

    Parameters
    ----------
    k : int, optional
        Number of coordinates (``1 ≤ k ≤ d``).
    ratio : float, optional
        ``k/d ∈ (0, 1]`` instead of ``k``.
    """

    contractive = True

    def __init__(self, k: int | None = None, *, ratio: float | None = None) -> None:
        self.k, self.ratio_ = _check_k_ratio(k, ratio)

    def k_for(self, d: int) -> int:
        """``k`` for dimension ``d``."""
        return _resolve_k(self.k, self.ratio_, d)

    def compress(self, x, *, shared=None, generator=None):
        d = x.numel()
        if d >= 2**31:
            raise ValueError(f"TopK indices are int32; x has d = {d} >= 2**31 entries")
        k = self.k_for(d)
        idx = torch.topk(x.abs(), k, sorted=False).indices.sort().values
        return torch.cat([_to_bytes(x[idx]), _to_bytes(idx.to(torch.int32))])

    def decompress(self, payload, d, dtype, *, shared=None):
        k = self.k_for(d)
        nb = k * _itemsize(dtype)
        vals = _from_bytes(payload[:nb], dtype)
        idx = _from_bytes(payload[nb:], torch.int32).to(torch.int64)
        out = torch.zeros(d, dtype=dtype, device=payload.device)
        out[idx] = vals
        return out

    def payload_bytes(self, d, dtype):
        return self.k_for(d) * (_itemsize(dtype) + 4)

    def alpha(self, d):
        return self.k_for(d) / d

    def __repr__(self) -> str:
        return f"TopK(k={self.k})" if self.k is not None else f"TopK(ratio={self.ratio_})"


_COMPRESSORS: dict[str, type[Compressor]] = {
    "randk": RandK,
    "dithering": RandomDithering,
    "random_dithering": RandomDithering,
    "topk": TopK,
}


def make_compressor(compressor: str | Compressor, **kwargs: Any) -> Compressor:
    """A compressor from its name (``"randk"``, ``"dithering"``, ``"topk"``) and kwargs,
    or an instance unchanged."""
    if isinstance(compressor, Compressor):
        return compressor
    if not isinstance(compressor, str) or compressor.lower() not in _COMPRESSORS:
        raise ValueError(
            f"compressor must be one of {sorted(_COMPRESSORS)} or a Compressor, got {compressor!r}"
        )
    return _COMPRESSORS[compressor.lower()](**kwargs)
