"""The losses the Trainer takes as its ``compute_loss_func``, one per label shape, each normalised so that gradient
accumulation gives the gradient of one big batch: cross-entropy on hard or soft (mixup / cutmix) labels, with label
smoothing and per-class weights (and the inverse-frequency class weights of ``--class_weights auto``); binary
cross-entropy per label for multi-label heads (with ``pos_weight``); squared or Huber error on standardised targets
for regression.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from warmstart.errors import WarmstartError

IGNORE_INDEX = -100  # a hard label the loss skips, as in torch and transformers (the Trainer does not count it)


def class_weights_from_labels(
    labels: Sequence[int], num_classes: int, *, names: Sequence[str] | None = None
) -> torch.Tensor:
    """Inverse-frequency class weights from the training labels, scikit-learn's ``"balanced"`` weights.

    ``w_c = n_samples / (num_classes * count_c)``. Their average over the training *samples* (the classes weighted
    by their frequency) is exactly 1, so the weighted loss of the training set keeps the scale of the unweighted
    one; every class contributes the same total weight, ``n_samples / num_classes``. (Their plain average over the
    classes is 1 only for balanced data: it is larger the more imbalanced the classes are.)

    Args:
        labels: the class id of every training example (a list, array or tensor).
        num_classes: the number of classes of the head.
        names: class names, for the error message.

    Returns:
        A float32 tensor of ``num_classes`` weights.

    Raises:
        WarmstartError: a class that has no training example (its weight would be infinite), or a label outside
            ``0 .. num_classes - 1``.
    """
    ids = torch.as_tensor(list(labels) if not isinstance(labels, torch.Tensor) else labels).long().flatten()
    if num_classes < 1:
        raise WarmstartError(f"class weights need at least one class, got num_classes={num_classes}")
    if ids.numel() == 0:
        raise WarmstartError("class weights need training labels: the train split is empty")
    bad = ids[(ids < 0) | (ids >= num_classes)]
    if bad.numel():
        raise WarmstartError(f"label id {int(bad[0])} is outside the {num_classes} classes of the head")
    counts = torch.bincount(ids, minlength=num_classes).double()
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        shown = ", ".join(repr(names[i]) if names else str(i) for i in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise WarmstartError(
            f"--class_weights auto: class {shown}{more} has no training example, so its inverse-frequency weight is "
            "undefined: add training examples for it, or train with --class_weights none"
        )
    return (ids.numel() / (num_classes * counts)).float()


def _logits_of(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, dict):
        logits = outputs.get("logits")
    if logits is None and isinstance(outputs, (tuple, list)):
        logits = outputs[0]  # return_dict=False with no labels: (logits, ...)
    if logits is None:
        raise TypeError(f"cannot find logits in the model outputs ({type(outputs).__name__})")
    return logits


def make_loss_function(
    num_labels: int, label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None
) -> Callable[..., torch.Tensor]:
    """A cross-entropy loss for the Trainer's ``compute_loss_func``: ``loss(outputs, labels, num_items_in_batch)``.

    The Trainer pops ``labels`` from the batch before the forward pass (so the model returns logits only, and its
    ``config.problem_type`` is never consulted or changed), then calls this with the model outputs.

    Targets. Hard labels (an integer ``[B]`` tensor; ``-100`` is skipped) are one-hot targets; soft labels (a float
    ``[B, C]`` tensor, e.g. from :class:`MixupCollator`) are used as they are. Label smoothing then applies to both,
    ``(1 - eps) * target + eps / C``, so a soft one-hot target gives exactly the hard-label loss; mixup targets must
    therefore come unsmoothed (:class:`MixupCollator` does not smooth). Smoothing a mixed target is the same as
    mixing smoothed one-hots, as timm does.

    Class weights. Each sample is weighted by ``w_i = sum_c target_ic * class_weights[c]`` over its *unsmoothed*
    target: ``class_weights[y_i]`` for a hard label, the mixing proportions of its two classes for mixup. Smoothing
    is a change of the prediction target, not of the class a sample belongs to, so it does not move the weight. With
    smoothing, this weights the whole per-sample loss by ``w_i``; torch's ``cross_entropy(weight=, label_smoothing=)``
    instead weights the smoothing term of each class by that class's weight, and differs there.

    Reduction. The loss is ``sum_i w_i * l_i / N`` with ``N`` the number of (non-skipped) samples, a mean over the
    samples, not torch's weighted mean ``sum_i w_i * l_i / sum_i w_i``: dividing by the sum of the weights of the
    batch would make a sample's gradient depend on which other samples share its batch, and gradient accumulation
    could not reproduce the big batch (the Trainer does not tell the weight of the whole accumulated batch). With
    :func:`class_weights_from_labels` the weights average to 1 over the training samples, so both agree on average.

    Gradient accumulation. The Trainer counts the labels of the whole accumulated batch (over all processes) that
    are not ``-100`` and passes that as ``num_items_in_batch``; when a ``compute_loss_func`` is set it then takes the
    returned loss as already scaled for accumulation (it does *not* divide by ``gradient_accumulation_steps``). So
    the loss is the sum over this micro-batch divided by ``num_items_in_batch``, and the accumulated gradient equals
    that of one batch holding all the micro-batches, even when the last one is smaller. For soft labels the Trainer
    counts the ``B * C`` entries of the label tensor, so the count is divided by ``C`` to get samples: every
    micro-batch of a training run must then be soft (:class:`MixupCollator` makes every training batch soft, odd ones
    included). Without ``num_items_in_batch`` (a direct call) the loss is the mean over this batch.

    Args:
        num_labels: the number of classes ``C`` (at least 2).
        label_smoothing: epsilon in ``[0, 1)``.
        class_weights: ``C`` non-negative weights, e.g. from :func:`class_weights_from_labels`; ``None``: all 1.

    Returns:
        The loss function; it returns a float32 scalar.

    Raises:
        WarmstartError: a head of one output (regression), a bad epsilon, or weights of the wrong size or sign.
    """
    if num_labels < 2:
        raise WarmstartError(
            f"the classification loss needs at least 2 classes, got {num_labels} (a regression head has its own loss)"
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise WarmstartError(f"--label_smoothing must be in [0, 1), got {label_smoothing}")
    weights = None
    if class_weights is not None:
        weights = torch.as_tensor(class_weights).detach().to(torch.float32).flatten().clone()
        if weights.numel() != num_labels:
            raise WarmstartError(f"{weights.numel()} class weights for a head of {num_labels} classes")
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise WarmstartError("class weights must be finite and not negative")
    eps = float(label_smoothing)

    def loss_function(outputs: Any, labels: torch.Tensor | None, num_items_in_batch: Any = None) -> torch.Tensor:
        if labels is None:
            raise WarmstartError("the batch has no labels: the classification loss needs a 'labels' entry")
        logits = _logits_of(outputs).float()
        if logits.ndim != 2 or logits.shape[-1] != num_labels:
            raise ValueError(f"expected logits of shape [batch, {num_labels}], got {tuple(logits.shape)}")
        log_probs = torch.log_softmax(logits, dim=-1)
        if labels.ndim == 2:  # soft targets [B, C]
            if labels.shape != logits.shape:
                raise ValueError(f"soft labels of shape {tuple(labels.shape)} for logits {tuple(logits.shape)}")
            target = labels.to(log_probs.dtype)
            valid = torch.ones(labels.shape[0], dtype=log_probs.dtype, device=log_probs.device)
            entries_per_sample = num_labels  # what the Trainer counts per sample of a [B, C] label tensor
        else:
            labels = labels.view(-1)
            keep = labels != IGNORE_INDEX
            target = torch.nn.functional.one_hot(torch.where(keep, labels, 0).long(), num_labels).to(log_probs.dtype)
            valid = keep.to(log_probs.dtype)
            entries_per_sample = 1
        sample_weight = valid if weights is None else valid * (target @ weights.to(target.device))
        if eps:
            target = target * (1.0 - eps) + eps / num_labels
        per_sample = -(target * log_probs).sum(dim=-1)
        total = (per_sample * sample_weight).sum()
        if num_items_in_batch is None:
            samples = valid.sum()
        else:
            samples = torch.as_tensor(num_items_in_batch, dtype=total.dtype, device=total.device) / entries_per_sample
        return total / samples.clamp(min=1.0)

    return loss_function


def positive_weights_from_labels(targets: Any, *, names: Sequence[str] | None = None) -> torch.Tensor:
    """Multi-label ``pos_weight`` from the training targets: each label's negatives over its positives, as
    ``BCEWithLogitsLoss(pos_weight=)`` expects (a label on a tenth of the examples weighs its positives 9).

    A label on every example has nothing to balance: weight 1.

    Args:
        targets: ``(n, num_labels)`` 0/1 training targets.
        names: label names, for the error message.

    Returns:
        A float32 tensor of ``num_labels`` weights.

    Raises:
        WarmstartError: a label without a positive training example (its weight would be infinite).
    """
    truth = torch.as_tensor(targets, dtype=torch.float64).reshape(len(targets), -1) >= 0.5
    if truth.shape[0] == 0:
        raise WarmstartError("class weights need training labels: the train split is empty")
    positives = truth.sum(dim=0).double()
    missing = (positives == 0).nonzero().flatten().tolist()
    if missing:
        shown = ", ".join(repr(names[i]) if names else str(i) for i in missing[:5])
        raise WarmstartError(
            f"--class_weights auto: label {shown} has no positive training example, so its weight is undefined: add "
            "training examples for it, or train with --class_weights none"
        )
    negatives = truth.shape[0] - positives
    return torch.where(negatives > 0, negatives / positives, torch.ones_like(positives)).float()


def _entries_mean(total: torch.Tensor, entries: int, num_items_in_batch: Any) -> torch.Tensor:
    """``total`` (a sum over every label entry of a micro-batch) over the entries of the whole accumulated batch, as
    the Trainer counts them in ``num_items_in_batch`` (the label tensor's entries that are not -100); over this
    batch's entries without it (a direct call)."""
    if num_items_in_batch is None:
        return total / max(entries, 1)
    count = torch.as_tensor(num_items_in_batch, dtype=total.dtype, device=total.device)
    return total / count.clamp(min=1.0)


def make_multi_label_loss(
    num_labels: int, label_smoothing: float = 0.0, pos_weight: torch.Tensor | None = None
) -> Callable[..., torch.Tensor]:
    """The multi-label loss for the Trainer's ``compute_loss_func``: binary cross-entropy of each label's logit
    (``BCEWithLogitsLoss``), the mean over every label of every example, as the model's own
    ``problem_type="multi_label_classification"`` loss, normalised across gradient accumulation like
    :func:`make_loss_function`.

    Targets are ``(B, num_labels)`` 0/1 (or soft: mixup mixes them, as timm does); label smoothing moves each toward
    1/2: ``(1 - eps) * y + eps / 2``. ``pos_weight``: each label's positives weighted
    (:func:`positive_weights_from_labels`).

    Raises:
        WarmstartError: a bad epsilon, or weights of the wrong size or sign.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise WarmstartError(f"--label_smoothing must be in [0, 1), got {label_smoothing}")
    weights = None
    if pos_weight is not None:
        weights = torch.as_tensor(pos_weight).detach().to(torch.float32).flatten().clone()
        if weights.numel() != num_labels:
            raise WarmstartError(f"{weights.numel()} label weights for a head of {num_labels} labels")
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise WarmstartError("label weights must be finite and not negative")
    eps = float(label_smoothing)

    def loss_function(outputs: Any, labels: torch.Tensor | None, num_items_in_batch: Any = None) -> torch.Tensor:
        if labels is None:
            raise WarmstartError("the batch has no labels: the multi-label loss needs a 'labels' entry")
        logits = _logits_of(outputs).float()
        if logits.ndim != 2 or logits.shape[-1] != num_labels or labels.shape != logits.shape:
            raise ValueError(
                f"expected logits and labels of shape [batch, {num_labels}], got {tuple(logits.shape)}"
                f" and {tuple(labels.shape)}"
            )
        target = labels.to(logits.dtype)
        if eps:
            target = target * (1.0 - eps) + eps / 2
        per_entry = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, target, pos_weight=None if weights is None else weights.to(logits.device), reduction="none"
        )
        return _entries_mean(per_entry.sum(), per_entry.numel(), num_items_in_batch)

    return loss_function


def make_regression_loss(
    mean: Sequence[float], std: Sequence[float], kind: str = "mse", huber_delta: float = 1.0
) -> Callable[..., torch.Tensor]:
    """The regression loss for the Trainer's ``compute_loss_func``: the model outputs standardised targets, and the
    loss compares them with ``(labels - mean) / std`` (labels in the targets' units), so that every target weighs
    alike whatever its units and a new head starts at the right scale. ``kind``: ``mse`` (squared error) or
    ``huber`` (squared within ``huber_delta`` standard deviations, linear beyond: robust to outliers). The mean over
    every target of every example, normalised across gradient accumulation like :func:`make_loss_function`.

    Raises:
        WarmstartError: an unknown kind, a scale of the wrong size or a standard deviation that is not positive.
    """
    if kind not in ("mse", "huber"):
        raise WarmstartError(f"--regression_loss {kind!r}: use mse or huber")
    centre = torch.as_tensor(mean, dtype=torch.float32).flatten()
    spread = torch.as_tensor(std, dtype=torch.float32).flatten()
    if centre.shape != spread.shape or not bool((spread > 0).all()):
        raise WarmstartError("the regression targets' scale needs one positive standard deviation per target")
    outputs_per_example = centre.numel()

    def loss_function(outputs: Any, labels: torch.Tensor | None, num_items_in_batch: Any = None) -> torch.Tensor:
        if labels is None:
            raise WarmstartError("the batch has no labels: the regression loss needs a 'labels' entry")
        predicted = _logits_of(outputs).float().reshape(-1, outputs_per_example)
        target = (labels.float().reshape(-1, outputs_per_example) - centre.to(labels.device)) / spread.to(
            labels.device
        )
        if kind == "mse":
            per_entry = (predicted - target) ** 2
        else:
            per_entry = torch.nn.functional.huber_loss(predicted, target, reduction="none", delta=huber_delta)
        return _entries_mean(per_entry.sum(), per_entry.numel(), num_items_in_batch)

    return loss_function
