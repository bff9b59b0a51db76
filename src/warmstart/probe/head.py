"""Solving a model's head as a linear probe: :func:`solve_head` finds the head's classifier
(:func:`classifier_of`), sets newly initialised layers in front of it to pass the features through, collects the
classifier's inputs on the cached training features, centres and scales them (:func:`feature_scale`), solves the
logistic regression with a cross-validated C and writes the solution, unscaled, into the classifier."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from warmstart.probe.fit import ProbeFit, ProbeUnsolvable
from warmstart.probe.logistic import (
    DEFAULT_C_GRID,
    DEFAULT_FOLDS,
    choose_c,
    fit_logistic_regression,
    smoothed_targets,
)
from warmstart.probe.pass_through import PASS_THROUGH, activation_of, set_pass_through

logger = logging.getLogger(__name__)

# the centred, scaled features take this much memory at most in float64; above it the solve runs in float32
FLOAT64_BUDGET_BYTES = 2**30


def classifier_of(head: nn.Module, num_labels: int) -> tuple[str, nn.Linear]:
    """The head's last linear layer with ``num_labels`` outputs: the one that gives the logits.

    Raises:
        ProbeUnsolvable: there is none (a head that is not linear at its end).
    """
    found = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
    if not found:
        raise ProbeUnsolvable(f"the head of {type(head).__name__} has no linear layer with {num_labels} outputs")
    return found[-1]


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
            set_pass_through(layer, activation_of(model, activation), _inputs_of(layer, run, batches))
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
    target = smoothed_targets(labels, num_labels, label_smoothing, dtype)
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
