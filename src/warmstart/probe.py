"""The solved linear probe: a frozen backbone's head fitted to the optimum on its cached features.

With the backbone frozen, training the head is a convex problem on a fixed table of features: multinomial logistic
regression. SGD epochs (the Trainer, timm, fastai, Lightning) only approach its optimum, at a speed that hangs on the
learning rate: MiniLM-L6 on a real sentiment set ended at the majority class (60 %) after 2 epochs at 1e-3 and at
68.6 % after 20 at 1e-2, where the solved problem gives 70.0 % in seconds. So, as the LP-FT paper (Kumar et al. 2022)
and CLIP's linear-probe protocol do, warmstart solves it: full batch, L-BFGS, an L2 strength chosen by k-fold
cross-validation on the *training* features (the validation split is what the run reports, so it never chooses),
then one fit on all training features. C is the one of lowest held-out cross-entropy (a proper score, smooth in C,
where held-out accuracy on small folds moves by single examples).

The problem, on features centred with the training set's means and scaled by one number (the root-mean-square of
their standard deviations, :func:`feature_scale`, so one grid of strengths fits every backbone's feature scale; the
centring and scaling are folded back into the weights, so the model computes the same logits on the raw features)::

    minimise  (1 / N) * sum_i w_i * CE(W z_i + b, t_i)  +  ||W||^2 / (2 C N)

with ``w_i`` the class weight of example ``i`` (``--class_weights auto``; 1 otherwise), ``t_i`` its one-hot target,
smoothed as ``--label_smoothing`` asks, and the bias unpenalised. This is scikit-learn's
``LogisticRegression(C=C)`` (multinomial, lbfgs) on the same centred and scaled features; for two classes the
softmax pair equals scikit-learn's binary model at ``2 C``.

What is fitted: the head's last linear layer (the one that outputs the logits), in the model's own layout, saved and
loaded as any head. Layers between the cut and that classifier stay as they are when they are pretrained (BERT's
pooler, timm's pre-logits layers, ModernBERT's prediction head: they belong to the cached features, or come from the
checkpoint); a *newly initialised* layer there (RoBERTa's, ELECTRA's and MPNet's ``classifier.dense``, DistilBERT's
``pre_classifier``, DeBERTa's ``pooler``) is set to pass the features through (:data:`PASS_THROUGH`) so that the
probe is linear in the backbone's representation and no random projection sits frozen in front of the classifier.
``--probe_train_rest`` then trains every trainable part of the head with the Trainer on the cached features, from
the solved values.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from warmstart.errors import WarmstartError

logger = logging.getLogger(__name__)

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
# the centred, scaled features take this much memory at most in float64; above it the solve runs in float32
FLOAT64_BUDGET_BYTES = 2**30

# Newly initialised layers between the cached features and the classifier, by config.model_type: the Linear's
# module name and its activation (a name, or ``config:<attribute>`` naming the config field that holds it).
PASS_THROUGH: dict[str, tuple[str, str]] = {
    "roberta": ("classifier.dense", "tanh"),
    "xlm-roberta": ("classifier.dense", "tanh"),
    "camembert": ("classifier.dense", "tanh"),
    "mpnet": ("classifier.dense", "tanh"),
    "electra": ("classifier.dense", "config:hidden_act"),
    "distilbert": ("pre_classifier", "relu"),
    "deberta": ("pooler.dense", "config:pooler_hidden_act"),
    "deberta-v2": ("pooler.dense", "config:pooler_hidden_act"),
}
# gelu(z) = z * Phi(z) is z within 0.14 % for z >= 3: a shift that puts every training feature there makes it a
# pass-through (the classifier's bias absorbs the shift)
_GELU_SHIFT = 3.0
# tanh(z) is z within 8 % for |z| <= 0.5, far closer for most features: the scale that keeps them there
_TANH_RANGE = 0.5


class ProbeUnsolvable(WarmstartError):
    """The head cannot be solved as a linear probe (the message says why): train it with the Trainer instead."""


@dataclass
class ProbeFit:
    """What the solver did, recorded in ``warmstart_config.yaml`` (``probe``) and the model card.

    Attributes:
        c_grid: the C values cross-validated (scikit-learn's C: inverse L2 strength on the centred, scaled features).
        cv_accuracy: mean held-out accuracy over the folds, per C (class-weighted when class weights are on).
        cv_loss: mean held-out cross-entropy, per C: the lowest chooses C.
        c: the C chosen, then fitted on all training features.
        folds: the number of folds (0: too few examples to cross-validate; C = 1).
        converged: whether the final fit met the gradient tolerance within its iterations (else the best iterate
            is kept, and this says so).
        iterations: L-BFGS iterations of the final fit.
        gradient_norm: the largest gradient entry at the end of the final fit.
        train_loss: the regularised objective's cross-entropy part on all training features.
        train_accuracy: accuracy on the training features.
        examples: training examples; features: their dimension; classes: the head's outputs.
        seconds: time of the whole solve (cross-validation included).
        fitted: the parameters the solver wrote.
        pass_through: newly initialised layers set to pass the features through.
        kept: other head parameters, kept at their (pretrained) values.
        dtype: ``float64`` or ``float32`` (features too large for float64).
    """

    c_grid: list[float]
    cv_accuracy: list[float]
    cv_loss: list[float]
    c: float
    folds: int
    converged: bool
    iterations: int
    gradient_norm: float
    train_loss: float
    train_accuracy: float
    examples: int
    features: int
    classes: int
    seconds: float
    fitted: list[str] = field(default_factory=list)
    pass_through: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    dtype: str = "float64"

    def to_dict(self) -> dict[str, Any]:
        return {"solver": "lbfgs", **asdict(self)}

    def summary(self) -> str:
        """One line for the log."""
        converged = "converged" if self.converged else f"NOT converged (gradient {self.gradient_norm:.2g}; best kept)"
        cv = f"C = {self.c:g} by {self.folds}-fold cross-validation on train" if self.folds else "C = 1 (no CV)"
        return (
            f"probe solved by L-BFGS logistic regression on {self.examples:,} x {self.features} features: {cv}, "
            f"{converged} in {self.iterations} iterations, train accuracy {self.train_accuracy:.4f}, "
            f"{self.seconds:.1f} s"
        )

    def markdown(self) -> str:
        """The model card's paragraph: the solver, what it fitted and kept, and the cross-validation curve."""
        lines = [
            "The head was solved, not trained: multinomial logistic regression (L-BFGS, full batch) on the frozen "
            f"backbone's features of the {self.examples:,} training examples, centred and scaled by one number; "
            "the L2 strength "
            + (
                f"chosen by {self.folds}-fold cross-validation on the training set (never on validation): "
                f"C = {self.c:g}."
                if self.folds
                else "fixed at C = 1 (too few examples to cross-validate)."
            ),
            f"Final fit: {'converged' if self.converged else 'not converged (best iterate kept)'} in "
            f"{self.iterations} iterations; train accuracy {self.train_accuracy:.4f}.",
            f"Fitted: {', '.join(f'`{n}`' for n in self.fitted)}."
            + (f" Set to pass the features through: {', '.join(f'`{n}`' for n in self.pass_through)}." if
               self.pass_through else "")
            + (f" Kept at their values: {', '.join(f'`{n}`' for n in self.kept)}." if self.kept else ""),
        ]  # fmt: skip
        if self.folds:
            lines += ["", "| C | CV accuracy | CV loss |", "| --- | --- | --- |"]
            for c, accuracy, loss in sorted(zip(self.c_grid, self.cv_accuracy, self.cv_loss)):
                mark = "**" if c == self.c else ""
                lines.append(f"| {mark}{c:g}{mark} | {accuracy:.4f} | {loss:.4f} |")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ logistic regression


@dataclass
class _Solution:
    weight: torch.Tensor  # (classes, features), in the centred, scaled space; (problems, classes, features) for many
    bias: torch.Tensor  # (classes,); (problems, classes) for many
    iterations: int
    gradient_norm: float
    converged: bool


def _targets(labels: torch.Tensor, classes: int, label_smoothing: float, dtype: torch.dtype) -> torch.Tensor:
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
    target = _targets(labels.to(z.device), classes, label_smoothing, z.dtype)
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
    target = _targets(labels, classes, label_smoothing, z.dtype)
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


# -------------------------------------------------------------------------------------------------- the head


def classifier_of(head: nn.Module, num_labels: int) -> tuple[str, nn.Linear]:
    """The head's last linear layer with ``num_labels`` outputs: the one that gives the logits.

    Raises:
        ProbeUnsolvable: there is none (a head that is not linear at its end).
    """
    found = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
    if not found:
        raise ProbeUnsolvable(f"the head of {type(head).__name__} has no linear layer with {num_labels} outputs")
    return found[-1]


def _activation(model: nn.Module, spec: str) -> str:
    if spec.startswith("config:"):
        spec = str(getattr(model.config, spec.removeprefix("config:"), "gelu"))
    return spec.lower()


def _set_pass_through(layer: nn.Linear, activation: str, inputs: torch.Tensor) -> None:
    """Makes ``activation(layer(x))`` (nearly) ``x`` plus a constant on the training inputs ``inputs``: the
    identity matrix, with a shift into the linear part of a ReLU or GELU, or a scale into that of tanh."""
    if layer.in_features != layer.out_features:
        raise ProbeUnsolvable(f"a {layer.in_features} -> {layer.out_features} layer cannot pass its input through")
    eye = torch.eye(layer.in_features, dtype=torch.float64)
    x = inputs.to(torch.float64)
    with torch.no_grad():
        if activation == "tanh":
            scale = _TANH_RANGE / x.abs().amax(0).clamp_min(1e-6)
            layer.weight.copy_(torch.diag(scale))
            layer.bias.zero_()
        elif activation == "relu":
            layer.weight.copy_(eye)
            layer.bias.copy_((-x.amin(0)).clamp_min(0.0))
        elif activation.startswith("gelu"):
            layer.weight.copy_(eye)
            layer.bias.copy_(_GELU_SHIFT - x.amin(0))
        else:
            raise ProbeUnsolvable(f"a layer with activation {activation!r} has no pass-through set-up")


@torch.no_grad()
def _inputs_of(module: nn.Module, run: Any, batches: Sequence[Any]) -> torch.Tensor:
    """What ``module`` receives while ``run(batch)`` runs over ``batches`` (a forward hook)."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach().float().cpu()))
    try:
        for batch in batches:
            run(batch)
    finally:
        handle.remove()
    return torch.cat(seen)


def feature_scale(x: torch.Tensor) -> torch.Tensor:
    """One scale for every feature: the root-mean-square of their standard deviations (1 if all are constant).

    One number, not one per feature, so that the penalty stays the L2 norm of the weights on the features the model
    computes (as weight decay has it), only rescaled so that one grid of C fits every backbone. Per-feature
    standardisation let the near-constant features of a CNN (EfficientNet-Lite0 on digits: half of 1,280 under
    0.01) take weights of 1/std: the fit was as good on the cached features (92.2 % against 93.6 % for this
    scale), but a head the slightest change of those features (a training step, BatchNorm's batch statistics)
    broke: LP-FT fine-tuned from it at a learning rate of 1e-12 fell to 8 % on the first step.
    """
    rms = x.std(0, unbiased=False).pow(2).mean().sqrt()
    return torch.where(rms > 0, rms, torch.ones_like(rms))


def solve_head(
    model: nn.Module,
    head: nn.Module,
    head_inputs: Any,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    new_weights: Sequence[str] = (),
    class_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    folds: int = DEFAULT_FOLDS,
    grid: Sequence[float] = DEFAULT_C_GRID,
    seed: int = 0,
    batch_size: int = 1024,
) -> ProbeFit:
    """Solves the head of ``model`` on cached features and writes the result into its classifier.

    Args:
        model: the full model (its ``config.model_type`` selects :data:`PASS_THROUGH`).
        head: the head model on cached features (``warmstart.feature_cache.head_model``), sharing the head's modules.
        head_inputs: ``head_inputs(features)`` -> the head model's keyword arguments for a batch of features.
        features: the training split's cached features, in dataset order.
        labels: their class ids.
        new_weights: names of the model's parameters that loading initialised afresh (not from the checkpoint).
        class_weights: per-class weights of the loss (``--class_weights auto``); ``None``: all 1.
        label_smoothing: epsilon of the targets.
        folds: folds of the cross-validation.
        grid: the C values tried.
        seed: the folds' shuffle.
        batch_size: examples per forward of the head while its classifier's inputs are collected.

    Returns:
        The :class:`ProbeFit`.

    Raises:
        ProbeUnsolvable: the head is not a linear classifier on the features, or a newly initialised layer in front
            of it cannot be set to pass them through.
    """
    began = time.perf_counter()
    num_labels = int(getattr(model.config, "num_labels", 0) or labels.max().item() + 1)
    name, classifier = classifier_of(head, num_labels)
    head_params = dict(head.named_parameters())
    model_names = {id(p): n for n, p in model.named_parameters()}
    classifier_ids = {id(p) for p in classifier.parameters()}
    new_in_head = {model_names[id(p)] for p in head_params.values() if id(p) not in classifier_ids}
    was_training = head.training
    head.eval()  # dropout off: the classifier sees the features as at evaluation
    batches = [features[i : i + batch_size] for i in range(0, len(features), batch_size)]

    def run(batch: torch.Tensor) -> None:
        head(**head_inputs(batch))

    pass_through: list[str] = []
    layer_name, activation = PASS_THROUGH.get(getattr(model.config, "model_type", ""), (None, ""))
    layer = dict(model.named_modules()).get(layer_name) if layer_name else None
    layer_is_new = layer is not None and any(model_names.get(id(p)) in new_weights for p in layer.parameters())
    in_head = {model_names.get(id(p)) for p in head_params.values()}
    # new weights anywhere in front of the classifier: in the head, or in the backbone the features come from
    before = [n for n in model_names.values() if n in new_weights and (n not in in_head or n in new_in_head)]
    try:
        if layer_is_new:
            _set_pass_through(layer, _activation(model, activation), _inputs_of(layer, run, batches))
            pass_through = [model_names[id(p)] for p in layer.parameters()]
        unexplained = sorted(set(before) - set(pass_through))
        if unexplained:
            raise ProbeUnsolvable(
                f"newly initialised layers sit in front of the classifier ({', '.join(unexplained[:3])}) and "
                "warmstart cannot set them to pass the features through"
            )
        inputs = _inputs_of(classifier, run, batches)
    finally:
        head.train(was_training)

    # centre with the training features' means, scale all by one number (their root-mean-square deviation)
    use64 = inputs.numel() * 8 <= FLOAT64_BUDGET_BYTES
    dtype = torch.float64 if use64 else torch.float32
    x = inputs.to(dtype)
    mean, std = x.mean(0), feature_scale(x).expand(x.shape[1])
    z = (x - mean) / std
    labels = labels.long().cpu()
    weights = None
    if class_weights is not None:
        weights = torch.as_tensor(list(class_weights), dtype=dtype)[labels]
    # the cross-validation in float32 (held-out scores need no more), the final fit in the solve's dtype
    c, scores, used_folds, start = choose_c(
        z.float(), labels, num_labels, grid=grid, folds=folds, seed=seed, label_smoothing=label_smoothing,
        sample_weights=None if weights is None else weights.float(),
    )  # fmt: skip
    solution = fit_logistic_regression(
        z, labels, num_labels, c, sample_weights=weights, label_smoothing=label_smoothing, init=start
    )
    # fold the centring and scaling into the layer: W z + b = (W / std) x + (b - W (mean / std))
    weight = solution.weight / std
    bias = solution.bias - solution.weight @ (mean / std)
    with torch.no_grad():
        classifier.weight.copy_(weight.to(classifier.weight.dtype))
        if classifier.bias is not None:
            classifier.bias.copy_(bias.to(classifier.bias.dtype))
        elif bias.abs().max() > 0:
            raise ProbeUnsolvable(f"the classifier {name} has no bias to hold the solved intercept")
    logits = z @ solution.weight.T + solution.bias
    target = _targets(labels, num_labels, label_smoothing, dtype)
    train_loss = float(-(target * torch.log_softmax(logits, 1)).sum(1).mean())
    fitted = [model_names[id(p)] for p in classifier.parameters()]
    kept = [model_names[id(p)] for p in head_params.values() if model_names[id(p)] not in fitted + pass_through]
    fit = ProbeFit(
        c_grid=sorted(scores),
        cv_accuracy=[round(scores[k][0], 6) for k in sorted(scores)],
        cv_loss=[round(scores[k][1], 6) for k in sorted(scores)],
        c=c,
        folds=used_folds,
        converged=solution.converged,
        iterations=solution.iterations,
        gradient_norm=solution.gradient_norm,
        train_loss=round(train_loss, 6),
        train_accuracy=round(float((logits.argmax(1) == labels).double().mean()), 6),
        examples=len(labels),
        features=z.shape[1],
        classes=num_labels,
        seconds=round(time.perf_counter() - began, 3),
        fitted=fitted,
        pass_through=pass_through,
        kept=kept,
        dtype=str(dtype).removeprefix("torch."),
    )
    if not fit.converged:
        logger.warning(
            "the probe's L-BFGS solve did not converge in %d iterations (largest gradient %.2g): the best iterate "
            "is kept",
            fit.iterations,
            fit.gradient_norm,
        )
    return fit
