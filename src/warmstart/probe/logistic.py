"""Multinomial logistic regression with an L2 penalty, solved full batch by L-BFGS, and the choice of its strength:
:func:`fit_logistic_regression` fits one problem, :func:`choose_c` cross-validates C on stratified folds of the
training features (the folds of one C solved together as one batched problem), the lowest held-out cross-entropy
choosing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# C values tried (scikit-learn's C: the inverse L2 strength, on the centred, scaled features): a decade apart from
# nearly no fit (1e-4) to nearly none (1e4), then half a decade either side of the best.
DEFAULT_C_GRID = tuple(10.0**e for e in range(-4, 5))
DEFAULT_FOLDS = 5
# L-BFGS iterations and gradient tolerance (largest entry of the gradient of the 1/N-scaled objective) of the final
# fit, and of each cross-validation fit (scikit-learn's defaults: held-out accuracy does not need the last digits)
MAX_ITERATIONS = 1000
GRADIENT_TOLERANCE = 1e-6
CV_MAX_ITERATIONS = 200
CV_GRADIENT_TOLERANCE = 1e-5


@dataclass
class _Solution:
    weight: torch.Tensor  # (classes, features), in the centred, scaled space; (problems, classes, features) for many
    bias: torch.Tensor  # (classes,); (problems, classes) for many
    iterations: int
    gradient_norm: float
    converged: bool


def smoothed_targets(labels: torch.Tensor, classes: int, label_smoothing: float, dtype: torch.dtype) -> torch.Tensor:
    """One-hot targets of ``labels``, smoothed to ``(1 - eps) * one_hot + eps / classes`` when ``label_smoothing``."""
    target = F.one_hot(labels, classes).to(dtype)
    return target * (1.0 - label_smoothing) + label_smoothing / classes if label_smoothing else target


def _fit_many(
    z: torch.Tensor,
    target: torch.Tensor,
    rows: torch.Tensor,
    c: float,
    init: tuple[torch.Tensor, torch.Tensor],
    max_iterations: int,
    tolerance: float,
) -> _Solution:
    """Solves ``P`` logistic regressions on subsets of the same rows at once (the folds of a cross-validation):
    their objectives are independent, so their sum is minimised by each one's minimiser, and one matmul of ``P * K``
    outputs runs several times faster per problem than ``P`` of ``K`` (a skinny matmul uses a CPU poorly).

    ``rows``: ``(N, P)`` weight of each example in each problem (its sample weight, 0 where it is left out).
    """
    problems, (classes, features) = rows.shape[1], init[0].shape[-2:]
    counts = (rows > 0).sum(0).to(z.dtype).clamp_min(1.0)  # N_p
    w, b = (t.detach().clone().to(device=z.device, dtype=z.dtype).requires_grad_(True) for t in init)
    scale = rows / counts  # w_i / N_p

    def objective() -> torch.Tensor:
        logits = (z @ w.reshape(problems * classes, features).T).reshape(len(z), problems, classes) + b
        ce = -(target[:, None, :] * torch.log_softmax(logits, dim=2)).sum(2)  # (N, P)
        return (scale * ce).sum() + ((w * w).sum((1, 2)) / (2.0 * c * counts)).sum()

    optimizer = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iterations,
        tolerance_grad=tolerance,
        tolerance_change=1e-12,  # a step that changes nothing: the best float arithmetic can do
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
        optimizer.zero_grad()
        objective().backward()
    gradient = max(w.grad.abs().max().item(), b.grad.abs().max().item())
    iterations = int(optimizer.state[optimizer._params[0]].get("n_iter", 0))
    converged = gradient <= tolerance or iterations < max_iterations  # met the tolerance, or stalled at the optimum
    return _Solution(w.detach(), b.detach(), iterations, gradient, converged)


def _prior_start(
    target: torch.Tensor, rows: torch.Tensor, features: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    # zero weights and the prior's log-odds as the bias: already the best constant model of each problem
    prior = (rows.T @ target).clamp_min(1e-12)  # (P, K)
    weight = torch.zeros(rows.shape[1], target.shape[1], features, dtype=dtype, device=target.device)
    return weight, torch.log(prior / prior.sum(1, keepdim=True))


def fit_logistic_regression(
    z: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    c: float,
    *,
    sample_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iterations: int = MAX_ITERATIONS,
    tolerance: float = GRADIENT_TOLERANCE,
) -> _Solution:
    """Multinomial logistic regression with an L2 penalty on the weights (not the bias), full batch, L-BFGS.

    Args:
        z: ``(N, D)`` features (centred and scaled by the caller), in the dtype the solve runs in.
        labels: ``(N,)`` class ids.
        classes: the number of classes.
        c: scikit-learn's C: the objective is ``sum_i w_i CE_i / N + ||W||^2 / (2 C N)``.
        sample_weights: ``w_i`` (default 1).
        label_smoothing: epsilon: targets ``(1 - eps) * one_hot + eps / classes``.
        init: a starting point ``(W, b)``; zero weights and the class prior's log-odds otherwise.
        max_iterations: L-BFGS iterations at most.
        tolerance: converged when the largest gradient entry falls below it.

    Returns:
        The solution (the best iterate, whether or not it converged).
    """
    target = smoothed_targets(labels.to(z.device), classes, label_smoothing, z.dtype)
    weights = torch.ones(len(z), dtype=z.dtype, device=z.device) if sample_weights is None else sample_weights.to(z)
    rows = weights[:, None]
    start = _prior_start(target, rows, z.shape[1], z.dtype) if init is None else (init[0][None], init[1][None])
    solution = _fit_many(z, target, rows, c, start, max_iterations, tolerance)
    return _Solution(solution.weight[0], solution.bias[0], solution.iterations, solution.gradient_norm,
                     solution.converged)  # fmt: skip


def _folds_of(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """A fold id per example, stratified: each class's examples, shuffled with ``seed``, dealt round-robin."""
    generator = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(labels), dtype=torch.long)
    offset = 0
    for label in labels.unique(sorted=True).tolist():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        fold[members] = (torch.arange(len(members)) + offset) % folds
        offset += len(members)  # the next class starts where this one stopped: folds stay even in size
    return fold


def choose_c(
    z: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    *,
    grid: Sequence[float] = DEFAULT_C_GRID,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    sample_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> tuple[float, dict[float, tuple[float, float]], int, tuple[torch.Tensor, torch.Tensor] | None]:
    """Cross-validates C on the training features: ``grid`` from strong to weak regularisation (stopping once the
    held-out loss has risen twice past its best: it only climbs from there), then half a decade either side of the
    best. The folds of one C are solved together (:func:`_fit_many`), each C starting from the previous one's
    solutions.

    Returns:
        The chosen C; ``{C: (mean held-out accuracy, mean held-out loss)}`` (accuracy and loss weighted by the
        sample weights); the folds used (0: too few examples; C = 1); and the folds' mean solution at the chosen C
        (a start for the final fit).
    """
    folds = min(folds, len(labels) // 2)
    if folds < 2:
        return 1.0, {}, 0, None
    labels = labels.to(z.device)
    weights = torch.ones(len(z), dtype=z.dtype, device=z.device) if sample_weights is None else sample_weights.to(z)
    fold_of = _folds_of(labels.cpu(), folds, seed).to(z.device)
    held_out = F.one_hot(fold_of, folds).to(z.dtype)  # (N, folds)
    rows = (1.0 - held_out) * weights[:, None]
    target = smoothed_targets(labels, classes, label_smoothing, z.dtype)
    scores: dict[float, tuple[float, float]] = {}
    solutions: dict[float, _Solution] = {}

    def evaluate(c: float) -> None:
        stronger = max((s for s in solutions if s < c), default=None)
        start = _prior_start(target, rows, z.shape[1], z.dtype) if stronger is None else (
            solutions[stronger].weight, solutions[stronger].bias)  # fmt: skip
        solution = solutions[c] = _fit_many(z, target, rows, c, start, CV_MAX_ITERATIONS, CV_GRADIENT_TOLERANCE)
        logits = (z @ solution.weight.reshape(folds * classes, -1).T).reshape(len(z), folds, classes)
        logits = logits + solution.bias
        own = logits[torch.arange(len(z)), fold_of]  # each example scored by the model that did not see it
        mass = held_out * weights[:, None]
        correct = (own.argmax(1) == labels).to(z.dtype)
        loss = F.cross_entropy(own, labels, reduction="none")
        per_fold = mass.sum(0).clamp_min(1e-12)
        scores[c] = (
            float(((mass * correct[:, None]).sum(0) / per_fold).mean()),
            float(((mass * loss[:, None]).sum(0) / per_fold).mean()),
        )

    def best() -> float:
        # the lowest held-out cross-entropy: a proper score, smooth in C, where held-out accuracy on small folds
        # moves by single examples; among equals the stronger regularisation
        return min(scores, key=lambda c: (round(scores[c][1], 9), c))

    rises = 0
    for c in sorted(grid):
        evaluate(c)
        rises = rises + 1 if scores[c][1] > scores[best()][1] else 0
        if rises == 2:
            break
    chosen = best()
    for c in (chosen / math.sqrt(10.0), chosen * math.sqrt(10.0)):
        evaluate(c)
    chosen = best()
    mean = solutions[chosen]
    return chosen, scores, folds, (mean.weight.mean(0), mean.bias.mean(0))
