r"""
dEBORA: choosing the rank by bilevel optimisation and Frank–Wolfe
==================================================================

dEBORA (Zangrando, Venturini, Rinaldi & Tudisco, ICLR 2025) writes a low-rank adapter as a
weighted sum of rank-one components,

.. math::  ΔW = U \operatorname{diag}(s) V^\top = \sum_{j=1}^r s_j\, u_j v_j^\top ,

and treats the **weights** ``s`` and the **bases** ``U, V`` as two levels of one problem.
The training data are split in two halves ``D₁`` and ``D₂``:

.. math::

    \min_{s\in\mathcal S} f_1\big(B^*(s), s\big)\quad\text{s.t.}\quad
    B^*(s) \in \arg\min_{B} f_2(B, s),\qquad
    \mathcal S = \{ s \ge ε\mathbf 1,\ \mathbf 1^\top s \le τ + rε \}.

* The **lower level** fits the bases on ``D₂`` for fixed weights (Riemannian steps on
  the Stiefel manifold).
* The **upper level** moves the weights on ``D₁`` inside the *perturbed simplex* ``𝒮``
  — an ℓ1 ball of radius ``τ`` (the budget) shifted by ``ε`` — with an **away-step
  Frank–Wolfe** method. Frank–Wolfe only ever moves towards a vertex ``ε𝟏 + τe_i`` (put the
  budget on one component) or away from one; the away steps can set a weight *exactly* back
  to ``ε``. Weights that stay at ``ε`` are pruned: the rank falls, and the budget ends up
  on the components that help the held-out loss ``f₁``.

With orthonormal bases ``‖ΔW‖_* = ‖s‖₁``, so ``τ`` is a nuclear-norm budget.

The hypergradient ``dF/ds`` comes from one backward pass on ``D₁``
(:func:`manifold_lowrank.optim.debora.closed_form_hypergradient`). Here we build a problem
where everything is known in closed form, so we can watch the method find the right rank.
"""

# %%
# A bilevel problem with a known answer
# -------------------------------------
# A linear layer ``y = ΔW x`` (frozen base ``W₀ = 0``) and two regression data sets with
# white inputs, so that ``E f_k = ½‖ΔW − A_k‖²_F + const``. ``A₂`` (the lower level's
# target) fixes the directions: the optimal Stiefel bases are its singular vectors for
# every ``s``. ``A₁`` (the upper level's target) uses the same directions with
# coefficients ``c``; the upper objective is then ``½‖s − c‖²`` and the optimal weights
# are the projection of ``c`` onto ``𝒮``.
import time

import matplotlib.pyplot as plt
import torch
from torch import nn

from manifold_lowrank.nn.debora import DeboraLinearAdapter
from manifold_lowrank.optim import DEBORA, DEBORATrainer
from manifold_lowrank.optim.frank_wolfe import PerturbedSimplex

torch.set_num_threads(1)
t_start = time.perf_counter()
gen = torch.Generator().manual_seed(0)
m, n, r = 20, 16, 8
tau, eps = 3.0, 0.02
P = torch.linalg.qr(torch.randn(m, m, generator=gen))[0]
Q = torch.linalg.qr(torch.randn(n, n, generator=gen))[0]
sigma = 6.0 * 0.65 ** torch.arange(10.0)  # well separated singular values
A2 = P[:, :10] @ torch.diag(sigma) @ Q[:, :10].T
c = torch.tensor([2.0, 1.2, 0.8, -0.3, -0.5, 0.1, -1.0, -0.2])
A1 = P[:, :r] @ torch.diag(c) @ Q[:, :r].T
s_star = PerturbedSimplex(r, tau, eps).project(c)
print("optimal weights s* =", [round(float(x), 3) for x in s_star])
print("optimal support    =", (s_star > eps + 1e-9).nonzero().flatten().tolist())


def stream(A: torch.Tensor, seed: int, batch: int = 128, noise: float = 0.1):
    """Endless minibatches (x, y) with y = A x + noise."""
    g = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(batch, n, generator=g)
        yield x, x @ A.T + noise * torch.randn(batch, m, generator=g)


class Batches:
    """A re-iterable view of an endless stream (what DEBORATrainer expects)."""

    def __init__(self, A: torch.Tensor, seed: int) -> None:
        self.it = stream(A, seed)

    def __iter__(self):
        return self.it


# %%
# Train
# -----
# The trainer alternates ``T = 2`` lower-level steps on ``D₂`` batches with one upper-level
# step on a ``D₁`` batch. The Frank–Wolfe step diminishes, ``α_t = 30/(t + 30)`` (capped
# at ``α_max`` for away steps), which averages the minibatch noise; weights that sit at
# ``ε`` for 20 consecutive upper steps after step 150 are pruned.
base = nn.Linear(n, m, bias=False)
nn.init.zeros_(base.weight)
layer = DeboraLinearAdapter(base, r, eps=eps, generator=gen)
opt = DEBORA(
    [layer],
    tau=tau,
    eps=eps,
    lr=0.05,
    lower="adam",
    step_rule="diminishing",
    step_offset=30.0,
    prune_after=150,
    prune_patience=20,
    lower_steps=2,
    record_weights=True,
)


def loss_fn(batch):
    x, y = batch
    return 0.5 * ((layer(x) - y) ** 2).sum(1).mean()


trainer = DEBORATrainer(opt, loss_fn, Batches(A1, 1), Batches(A2, 2))
records = trainer.fit(400)
print(f"final rank {layer.rank}, weights {[round(float(x), 3) for x in opt.weights()['0']]}")

# %%
# The weights over the iterations
# -------------------------------
# ``opt.history`` records every weight with its component id (pruned components end at
# the prune step). The lower level assigns the ``j``-th largest weight to the ``j``-th
# singular direction of ``A₂``; the dashed lines are the optimal values ``s*``.
T = len(opt.history)
W = torch.full((T, r), float("nan"))
for t, h in enumerate(opt.history):
    W[t, h["ids"][0]] = h["weights"][0]

fig, ax = plt.subplots(1, 3, figsize=(14, 4))
for j in range(r):
    ax[0].plot(W[:, j], lw=1.2, label=f"component {j}")
for v in sorted({round(float(x), 6) for x in s_star}):
    ax[0].axhline(v, ls="--", c="k", lw=0.8)
ax[0].set_xlabel("upper-level iteration")
ax[0].set_ylabel("weight $s_j$")
ax[0].set_title("weights $s$ (dashed: the optimal values)")
ax[0].legend(fontsize=7, ncol=2)

gaps = [h["gap"] for h in opt.history]
ax[1].semilogy(gaps, lw=0.8, label="FW gap (minibatch)")
run = torch.tensor(gaps).cummin(0).values
ax[1].semilogy(run, lw=1.5, label="running minimum")
ax[1].set_xlabel("upper-level iteration")
ax[1].set_ylabel(r"$\langle g, s - z\rangle$")
ax[1].set_title("Frank–Wolfe gap")
ax[1].legend()

ax[2].plot([h["components"] for h in opt.history], label="rank (components kept)")
ax[2].plot(
    [int((h["weights"][0] > eps * (1 + 1e-9)).sum()) for h in opt.history],
    label="weights above $ε$",
)
ax[2].axvline(150, ls=":", c="gray", label="pruning allowed")
ax[2].set_xlabel("upper-level iteration")
ax[2].set_ylabel("count")
ax[2].set_title("support identification and pruning")
ax[2].legend()
fig.tight_layout()

# %%
# What happened
# -------------
# * The weights start at the barycentre of ``𝒮`` (``ε + τ/(r+1)`` each: every component
#   takes part from the first step). Frank–Wolfe steps pour budget into the components
#   with the most negative hypergradient; away steps take it back from components that do
#   not help ``f₁``, and a *drop step* puts such a weight exactly at ``ε``.
# * The support (weights above ``ε``) settles long before pruning is allowed; pruning then
#   removes the idle components, so the parameters really shrink.
# * With stochastic gradients the gap fluctuates (it is evaluated on one minibatch), but
#   its running minimum decreases; the final weights are close to ``s*`` — up to the
#   minibatch noise and the lower level's inexact bases.
#
# The same optimizer drives adapters injected into any model with
# ``get_adapter_model(model, AdapterConfig(method="debora", ...))``, including Tucker and
# CP adapters of convolutions (``conv_format="tucker"``); see ``benchmarks/debora.py``.
U, S, V = layer.point()
err = torch.linalg.norm(layer.delta_weight() - P[:, :r] @ torch.diag(s_star) @ Q[:, :r].T)
print(f"parameters: {U.numel() + V.numel() + S.shape[0]} (started with {r * (m + n + 1)})")
print(f"‖ΔW − ΔW*‖_F = {float(err):.3f}  (‖ΔW*‖_F = {float(s_star.norm()):.3f})")
print(f"tutorial time {time.perf_counter() - t_start:.1f}s")
plt.show()
