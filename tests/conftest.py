"""Suite-wide settings.

The suite runs under pytest-xdist with one worker per core (``-n 2``); each worker uses
one intra-op thread so that the workers do not oversubscribe the cores (on a 2-core
machine two workers × two threads made some tests 5× slower).
"""

import torch

torch.set_num_threads(1)
