"""A small problem suite for the theory of the randomized LoRA methods (application layer).

Every problem is an objective over one weight matrix ``W ∈ R^{m×n}`` with one consistent
oracle (loss, analytic gradient and minibatch gradient are of the same function):

:class:`MatrixQuadratic`
    ``½ (w − w*)ᵀ Q (w − w*)``, strongly convex, known ``L``, ``μ`` and optimum.
:class:`LinearRegression`, :func:`make_regression_pair`
    least squares (optional non-convex regulariser) and the papers' sklearn
    ``make_regression`` pre-training / fine-tuning pair.
:class:`LogisticRegression`
    multinomial logistic regression with an ``ℓ₂`` term.
:func:`run_lora_baseline`
    LoRA, chain-of-LoRA and asymmetric LoRA by plain factor gradient descent.
"""

from manifold_lowrank.problems.base import MatrixProblem
from manifold_lowrank.problems.linear_regression import LinearRegression, make_regression_pair
from manifold_lowrank.problems.logistic_regression import LogisticRegression
from manifold_lowrank.problems.lora_baselines import run_lora_baseline
from manifold_lowrank.problems.quadratic import MatrixQuadratic

__all__ = [
    "LinearRegression",
    "LogisticRegression",
    "MatrixProblem",
    "MatrixQuadratic",
    "make_regression_pair",
    "run_lora_baseline",
]
