"""Private helpers of :mod:`manifold_lowrank.nn`: argument checks, mode products, init."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch

__all__: list[str] = []


def is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_positive_int(name: str, value: object) -> int:
    if not is_int(value) or value <= 0:  # type: ignore[operator]
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)  # type: ignore[arg-type]


def check_rank(
    name: str, rank: object, limit: int, *, allow_zero: bool = False, limit_name: str = ""
) -> int:
    """Validate ``rank ∈ [1 (or 0), limit]`` and return it as ``int``."""
    low = 0 if allow_zero else 1
    what = limit_name or "min(out, in)"
    if not is_int(rank) or not (low <= rank <= limit):  # type: ignore[operator]
        raise ValueError(
            f"{name} must be an integer in [{low}, {limit}] ({low} <= {name} <= {what}), "
            f"got {rank!r}"
        )
    return int(rank)  # type: ignore[arg-type]


def check_max_rank(max_rank: object, full: int) -> int:
    if max_rank is None:
        return full
    if not is_int(max_rank) or not (1 <= max_rank <= full):  # type: ignore[operator]
        raise ValueError(
            f"max_rank must be an integer in [1, {full}] (at most min(out, in) = {full}), "
            f"got {max_rank!r}"
        )
    return int(max_rank)  # type: ignore[arg-type]


def pair(name: str, value: object, *, minimum: int) -> tuple[int, int]:
    """Normalise an int or a pair of ints to a pair, each ``>= minimum``."""
    if is_int(value):
        out = (int(value), int(value))  # type: ignore[arg-type]
    elif (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(is_int(v) for v in value)
    ):
        out = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(out) < minimum:
        raise ValueError(f"{name} entries must be >= {minimum}, got {value!r}")
    return out


def conv_padding(value: object) -> tuple[int, int]:
    if value == "valid":
        return (0, 0)
    if isinstance(value, str):
        raise ValueError(
            f"padding must be an int, a pair of ints or 'valid' ('same' is not supported: "
            f"give the explicit padding), got {value!r}"
        )
    return pair("padding", value, minimum=0)


def set_conv_geometry(
    module: torch.nn.Module,
    in_channels: object,
    out_channels: object,
    kernel_size: object,
    stride: object,
    padding: object,
    dilation: object,
    groups: object,
) -> tuple[int, int, int, int]:
    """Validate a Conv2d geometry, store it on ``module`` as :class:`torch.nn.Conv2d` does
    (``in_channels``, ``out_channels``, ``kernel_size``, ``stride``, ``padding``,
    ``dilation``) and return ``(in_channels, out_channels, kh, kw)``."""
    cin = check_positive_int("in_channels", in_channels)
    cout = check_positive_int("out_channels", out_channels)
    if groups != 1:
        raise ValueError(f"groups must be 1 (grouped convolutions unsupported), got {groups!r}")
    kh, kw = pair("kernel_size", kernel_size, minimum=1)
    module.in_channels, module.out_channels = cin, cout
    module.kernel_size = (kh, kw)
    module.stride = pair("stride", stride, minimum=1)
    module.padding = conv_padding(padding)
    module.dilation = pair("dilation", dilation, minimum=1)
    return cin, cout, kh, kw


def mode_dot(t: torch.Tensor, m: torch.Tensor, mode: int) -> torch.Tensor:
    """``t ×_mode m``: contract mode ``mode`` of ``t`` (size ``I``) with ``m`` (``J×I``).

    A tiny torch-only helper instead of :func:`tensorly.tenalg.mode_dot`: tensorly's
    functions dispatch on its *global* backend, which a library must not set at import
    time (see the common brief).
    """
    out = torch.tensordot(m, t, dims=([1], [mode]))  # (J, other modes...)
    return out.movedim(0, mode)


def unfold(t: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-``mode`` unfolding ``(n_mode, prod(other))`` (tensorly's ordering)."""
    return t.movedim(mode, 0).reshape(t.shape[mode], -1)


def random_orthonormal(
    n: int,
    r: int,
    *,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``n×r`` orthonormal matrix: sign-fixed QR of a standard Gaussian (``r ≤ n``)."""
    from manifold_lowrank.linalg import orthonormalize

    if r == 0:
        return torch.zeros(n, 0, device=device, dtype=dtype)
    g = torch.randn(n, r, generator=generator, device=device, dtype=dtype)
    return orthonormalize(g).contiguous()


def kaiming_uniform_singular_values(
    m: int,
    n: int,
    r: int,
    *,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The ``r`` largest singular values of a matrix drawn like ``nn.Linear.weight``.

    ``nn.Linear`` draws ``W ~ U(-1/√n, 1/√n)`` (Kaiming-uniform with ``a = √5``). Cost
    ``O(m n min(m, n))`` once, at construction.
    """
    bound = 1.0 / math.sqrt(n)
    w = torch.rand(m, n, generator=generator, device=device, dtype=dtype)
    w = (2.0 * w - 1.0) * bound
    return torch.linalg.svdvals(w)[:r].contiguous()


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager[None]:
    """Disable autocast for ``device_type`` inside a custom autograd function.

    The low-rank functions cast activations to the factor dtype themselves, so an
    enclosing autocast region must not re-cast the small factor products.
    """
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # older torch / unsupported device type
        enabled = False
    if enabled:
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


_SKIP_INIT = [0]


@contextlib.contextmanager
def skip_random_init() -> Iterator[None]:
    """Within this block, layer constructors skip their random initialisation.

    Used by the ``from_dense`` constructors, which overwrite the factors at once (this
    avoids the ``O(mn min(m, n))`` initial SVD). Not thread-safe; private.
    """
    _SKIP_INIT[0] += 1
    try:
        yield
    finally:
        _SKIP_INIT[0] -= 1


def init_is_skipped() -> bool:
    return _SKIP_INIT[0] > 0


def new_like(p: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """A freshly allocated contiguous copy of ``src`` on ``p``'s device, with ``p``'s dtype."""
    out = torch.empty(tuple(src.shape), dtype=p.dtype, device=p.device)
    out.copy_(src.detach())
    return out


def replace_data(p: torch.Tensor, new: torch.Tensor) -> None:
    """``p.data = new`` that also works when the shape changes while an old graph is alive.

    PyTorch caches the leaf's ``AccumulateGrad`` node (with the *old* shape) for as long
    as any autograd graph that used ``p`` is alive (e.g. the previous iteration's
    ``loss``); a later backward then fails with "invalid gradient … expected shape
    compatible with [old shape]". ``set_data`` drops that cache only when the dtype or
    device changes, so a shape change goes through a momentary dtype change.
    """
    if tuple(p.shape) != tuple(new.shape):
        other = torch.float64 if p.dtype != torch.float64 else torch.float32
        p.data = torch.empty(0, dtype=other, device=p.device)
    p.data = new


FACTOR_DTYPES = (torch.float32, torch.float64)


def check_factor_dtype(dtype: object) -> torch.dtype | None:
    """``dtype`` of the factors: ``None``, ``torch.float32`` or ``torch.float64``.

    QR/SVD (LAPACK) need single or double precision; half-precision *activations* are
    supported with float32 factors (the layers cast them).
    """
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or None, got {dtype!r}")
    if dtype not in FACTOR_DTYPES:
        raise TypeError(
            f"dtype must be torch.float32 or torch.float64 for the factors, got {dtype} "
            "(float16/bfloat16 activations work with float32 factors)"
        )
    return dtype


def check_factory_kwargs(
    dtype: object, device: object, generator: object
) -> tuple[torch.dtype, torch.device | None]:
    """Validate the factory arguments of a layer; returns ``(dtype or default, device)``.

    Raises :class:`TypeError`/:class:`ValueError` naming ``dtype``, ``device`` (unknown or
    unavailable, e.g. ``"cuda"`` without CUDA) or ``generator``.
    """
    dt = check_factor_dtype(dtype)
    dev = None
    if device is not None:
        if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
            raise TypeError(f"device must be a str, int or torch.device, got {device!r}")
        try:
            dev = torch.device(device)
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise ValueError(f"device {device!r} is not available: {exc}") from None
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
    return (dt if dt is not None else torch.get_default_dtype()), dev
