"""``python -m manifold_lowrank.cli``: the ``manifold-lowrank`` command line."""

from manifold_lowrank.cli import main

raise SystemExit(main())
