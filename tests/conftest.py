"""Suite-wide settings.

The suite runs under pytest-xdist with one worker per core (``-n 2``); each worker uses
one intra-op thread so that the workers do not oversubscribe the cores (on a 2-core
machine two workers × two threads made some tests 5× slower).
"""

import torch

torch.set_num_threads(1)

# Property tests draw a fixed, seeded set of examples so that CI is reproducible;
# `HYPOTHESIS_PROFILE=explore` draws fresh random examples locally.
import os  # noqa: E402

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
