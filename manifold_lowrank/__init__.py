"""manifold_lowrank: optimization on low-rank matrix and tensor manifolds.

Layers (each imports only from those below it): :mod:`~manifold_lowrank.linalg`,
:mod:`~manifold_lowrank.manifolds` (and :mod:`~manifold_lowrank.testing`),
:mod:`~manifold_lowrank.integrators`, :mod:`~manifold_lowrank.nn`,
:mod:`~manifold_lowrank.optim`, the PEFT-style API, distributed helpers and the
applications (command line, datasets, benchmarks).
"""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
