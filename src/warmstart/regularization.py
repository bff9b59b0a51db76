"""Regularization for fine-tuning: label smoothing, class weights, mixup / cutmix and early stopping.

The pieces plug into the HF Trainer:

* :func:`make_loss_function` is its ``compute_loss_func``: cross-entropy on hard labels (``[B]`` ids) or soft ones
  (``[B, C]`` distributions from mixup / cutmix), with label smoothing and class weights, normalised so that
  gradient accumulation gives the gradient of one big batch.
* :class:`MixupCollator` is its ``data_collator``: timm's ``Mixup`` on training batches only (the Trainer has one
  collator for training and evaluation; training examples carry :data:`TRAIN_MARKER`, see
  :func:`warmstart.data.attach_image_transforms`).
* :func:`early_stopping_settings` makes the training arguments consistent with early stopping and returns the
  callback.
* :func:`check_regularization` refuses options that do not apply to the modality or the head.
* :func:`prepare_regularization` does all of it for a recipe, from its ``RegularizationArguments``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import EarlyStoppingCallback, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from warmstart.data import LABEL_COLUMN, TRAIN_MARKER, image_collate
from warmstart.errors import WarmstartError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # a hard label the loss skips, as in torch and transformers (the Trainer does not count it)
SINGLE_LABEL = "single_label_classification"
IMAGE_ONLY_OPTIONS = ("mixup_alpha", "cutmix_alpha", "auto_augment", "random_erasing")
# warmstart's compute_metrics (metrics.classification_metrics) and the Trainer's loss: the direction of each
EVAL_METRICS = {"loss": False, "accuracy": True, "f1_macro": True, "roc_auc": True}


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


class MixupCollator:
    """Collates a batch, then applies timm's mixup / cutmix to it if it is a training batch.

    Training batches are those whose examples all carry :data:`TRAIN_MARKER` (set by
    ``attach_image_transforms(..., mark_train=True)`` on the train split only); other batches (validation, test)
    are the base collator's, with hard labels, so evaluation loss and metrics are plain. The marker is removed
    before the base collator sees the examples.

    A training batch gets soft float labels ``[B, C]`` (each row sums to 1) and mixed ``pixel_values``; the loss
    must then come from :func:`make_loss_function` given as the Trainer's ``compute_loss_func`` (a model's own loss
    expects class ids). Mixing is timm's ``mode="batch"``: one lambda per batch, each image mixed with the batch
    reversed. timm needs an even batch: in an odd batch (the last of an epoch) the first ``B - 1`` examples are
    mixed and the last keeps its image, with its label as a one-hot soft target, so that every training batch is
    soft (the loss's gradient-accumulation count relies on it). A batch of one is not mixed.

    No label smoothing here: :func:`make_loss_function` smooths every target (mixed or not) itself.

    Args:
        num_classes: the number of classes.
        mixup_alpha: Beta(alpha, alpha) of mixup; 0: off.
        cutmix_alpha: Beta(alpha, alpha) of cutmix; 0: off. With both on, each batch is cutmix with probability
            ``switch_prob``, mixup otherwise.
        base_collate: turns examples into ``{"pixel_values", "labels"}`` (default:
            :func:`warmstart.data.image_collate`).
        prob: probability that a training batch is mixed at all (timm's ``prob``).
        switch_prob: probability of cutmix rather than mixup when both are on.

    Raises:
        WarmstartError: both alphas 0, or a bad probability.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        *,
        base_collate: Callable[[list[dict[str, Any]]], dict[str, Any]] = image_collate,
        prob: float = 1.0,
        switch_prob: float = 0.5,
    ) -> None:
        from timm.data import Mixup

        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise WarmstartError(f"mixup / cutmix alphas must not be negative, got {mixup_alpha}, {cutmix_alpha}")
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise WarmstartError("MixupCollator needs --mixup_alpha or --cutmix_alpha above 0")
        if not (0.0 <= prob <= 1.0 and 0.0 <= switch_prob <= 1.0):
            raise WarmstartError(f"mixup probabilities must be in [0, 1], got prob={prob}, switch_prob={switch_prob}")
        self.num_classes = num_classes
        self.base_collate = base_collate
        self.mixup = Mixup(
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            prob=prob,
            switch_prob=switch_prob,
            mode="batch",
            label_smoothing=0.0,  # timm's default is 0.1: smoothing belongs to the loss
            num_classes=num_classes,
        )

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        training = bool(examples) and all(e.get(TRAIN_MARKER) for e in examples)
        examples = [{k: v for k, v in e.items() if k != TRAIN_MARKER} for e in examples]
        batch = self.base_collate(examples)
        if not training:
            return batch
        pixels, labels = batch["pixel_values"], batch[LABEL_COLUMN]
        if labels.ndim != 1:
            raise ValueError(f"MixupCollator mixes class ids, got labels of shape {tuple(labels.shape)}")
        soft = torch.nn.functional.one_hot(labels.long(), self.num_classes).float()
        mixed = len(labels) - len(labels) % 2
        if mixed >= 2:
            head_pixels, head_labels = self.mixup(pixels[:mixed].clone(), labels[:mixed])
            pixels = torch.cat([head_pixels, pixels[mixed:]]) if mixed < len(labels) else head_pixels
            soft = torch.cat([head_labels.float(), soft[mixed:]])
        batch["pixel_values"], batch[LABEL_COLUMN] = pixels, soft
        return batch


def early_stopping_settings(
    training_args: TrainingArguments, patience: int, *, default_metric: str = "accuracy", threshold: float = 0.0
) -> EarlyStoppingCallback:
    """Makes ``training_args`` consistent with early stopping and returns the callback for the Trainer.

    * ``eval_strategy``: kept, ``epoch`` when it is ``no``;
    * ``save_strategy``: the evaluation strategy (and ``save_steps = eval_steps`` for ``steps``), so that every
      evaluation has its checkpoint and the best one can be restored; ``best`` is kept (it saves at every new best);
    * ``load_best_model_at_end = True``: the model saved at the end is the best evaluated one, not the last;
    * ``metric_for_best_model``: kept, ``default_metric`` when unset; ``greater_is_better`` follows it when unset.

    Args:
        training_args: changed in place.
        patience: evaluations without improvement before training stops (at least 1).
        default_metric: the metric when ``metric_for_best_model`` is unset (``accuracy``, from warmstart's
            ``compute_metrics``).
        threshold: the least improvement that counts (``EarlyStoppingCallback``'s ``early_stopping_threshold``).

    Returns:
        ``transformers.EarlyStoppingCallback(patience, threshold)``.

    Raises:
        WarmstartError: ``save_strategy`` ``no`` (the best model could not be restored), a metric that warmstart's
            evaluation does not produce, or a ``greater_is_better`` that would keep the worst model.
    """
    if patience < 1:
        raise WarmstartError(f"--early_stopping_patience must be at least 1, got {patience}")
    save = SaveStrategy(training_args.save_strategy)
    evaluation = IntervalStrategy(training_args.eval_strategy)
    if save == SaveStrategy.NO:
        raise WarmstartError(
            "--early_stopping_patience restores the best checkpoint at the end, but --save_strategy is no: "
            "drop --save_strategy (it then follows --eval_strategy) or set it to best"
        )
    if evaluation == IntervalStrategy.NO:
        logger.info("early stopping: evaluating (and saving a checkpoint) every epoch")
        evaluation = IntervalStrategy.EPOCH
    training_args.eval_strategy = evaluation
    training_args.do_eval = True
    if evaluation == IntervalStrategy.STEPS and not training_args.eval_steps:
        training_args.eval_steps = training_args.logging_steps  # as TrainingArguments does
    if save != SaveStrategy.BEST:
        if save.value != evaluation.value:
            logger.info("early stopping: --save_strategy %s follows --eval_strategy %s", save.value, evaluation.value)
        training_args.save_strategy = SaveStrategy(evaluation.value)
        if evaluation == IntervalStrategy.STEPS:
            training_args.save_steps = training_args.eval_steps
    else:
        training_args.save_strategy = save
    training_args.load_best_model_at_end = True

    metric = training_args.metric_for_best_model or default_metric
    name = metric.removeprefix("eval_")
    if name not in EVAL_METRICS:
        raise WarmstartError(
            f"--metric_for_best_model {metric!r} is not a metric of the evaluation: use one of "
            f"{', '.join(EVAL_METRICS)}"
        )
    training_args.metric_for_best_model = metric
    if training_args.greater_is_better is None:
        training_args.greater_is_better = EVAL_METRICS[name]
    elif bool(training_args.greater_is_better) != EVAL_METRICS[name]:
        raise WarmstartError(
            f"--greater_is_better {str(training_args.greater_is_better).lower()} with --metric_for_best_model "
            f"{metric} would keep the worst model: drop --greater_is_better (it follows the metric)"
        )
    return EarlyStoppingCallback(early_stopping_patience=patience, early_stopping_threshold=threshold)


def needs_loss_function(reg_args: Any) -> bool:
    """Whether the options need :func:`make_loss_function` as the Trainer's ``compute_loss_func`` (label smoothing,
    class weights, or mixup / cutmix soft labels); without them the model's own loss is used, as before."""
    return reg_args.label_smoothing > 0 or reg_args.class_weights == "auto" or reg_args.mixes_labels


def check_regularization(
    reg_args: Any, modality: str, problem_type: str | None, training_args: TrainingArguments | None = None
) -> None:
    """Refuses regularization options that cannot apply, before anything is trained.

    Args:
        reg_args: a :class:`warmstart.arguments.RegularizationArguments`.
        modality: ``"image"`` or ``"text"``.
        problem_type: the head's ``config.problem_type`` (``single_label_classification``, ``regression`` ...).
        training_args: when given, also checked against the options: the Trainer's own
            ``label_smoothing_factor`` is ignored once a ``compute_loss_func`` is set, and mixup needs batches of 2.

    Raises:
        WarmstartError: image augmentation for text; class weights, label smoothing or mixup on a head that is not
            single-label classification; ``--label_smoothing_factor`` together with a warmstart loss option; mixup
            with a training batch of one.
    """
    if modality not in ("image", "text"):
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
    if modality == "text":
        asked = [
            f"--{name}"
            for name in IMAGE_ONLY_OPTIONS
            if getattr(reg_args, name) and str(getattr(reg_args, name)).lower() != "none"
        ]
        if asked:
            raise WarmstartError(
                f"{', '.join(asked)} {'applies' if len(asked) == 1 else 'apply'} to images only: drop "
                f"{'it' if len(asked) == 1 else 'them'} for text classification"
            )
    if problem_type not in (None, SINGLE_LABEL):
        head = "a regression head" if problem_type == "regression" else f"a {problem_type} head"
        if reg_args.class_weights == "auto":
            raise WarmstartError(
                f"--class_weights auto weights classes, but the model has {head}: use it for classification only"
            )
        if reg_args.label_smoothing > 0:
            raise WarmstartError(f"--label_smoothing smooths class targets, but the model has {head}")
        if reg_args.mixes_labels:
            raise WarmstartError(f"--mixup_alpha / --cutmix_alpha mix class targets, but the model has {head}")
    if training_args is not None:
        if training_args.label_smoothing_factor > 0 and needs_loss_function(reg_args):
            raise WarmstartError(
                "--label_smoothing_factor (the Trainer's) is ignored by warmstart's loss, which --label_smoothing, "
                "--class_weights or mixup / cutmix need: set --label_smoothing instead"
            )
        if reg_args.mixes_labels and training_args.per_device_train_batch_size < 2:
            raise WarmstartError("mixup / cutmix mix pairs of images: --per_device_train_batch_size must be 2 or more")


@dataclass
class Regularization:
    """What a recipe hands the Trainer for its regularization options (see :func:`prepare_regularization`).

    Attributes:
        loss_function: the Trainer's ``compute_loss_func``; ``None`` when no option needs one (the model's loss).
        callbacks: Trainer callbacks (early stopping).
        class_weights: the ``--class_weights auto`` weights, in class-id order, for the record; ``None`` if off.
        mixup_alpha: mixup alpha of the training batches (0: off).
        cutmix_alpha: cutmix alpha of the training batches (0: off).
        num_classes: the classes of the head.
    """

    loss_function: Callable[..., torch.Tensor] | None = None
    callbacks: list[Any] = field(default_factory=list)
    class_weights: list[float] | None = None
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    num_classes: int = 0

    def collator(self, base_collate: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> Callable:
        """The data collator: ``base_collate`` itself, or a :class:`MixupCollator` around it when mixup / cutmix
        is on (the train split must then carry :data:`TRAIN_MARKER`: ``attach_image_transforms(...,
        mark_train=True)``)."""
        if self.mixup_alpha > 0 or self.cutmix_alpha > 0:
            return MixupCollator(self.num_classes, self.mixup_alpha, self.cutmix_alpha, base_collate=base_collate)
        return base_collate


def prepare_regularization(
    reg_args: Any, modality: str, model_config: Any, train_split: Any, training_args: TrainingArguments
) -> Regularization:
    """Checks a recipe's regularization options and builds what the Trainer needs for them.

    Runs :func:`check_regularization`; with ``--class_weights auto`` computes :func:`class_weights_from_labels`
    from the ``labels`` column of ``train_split`` (read without its transform: no image is decoded); builds
    :func:`make_loss_function` when :func:`needs_loss_function`; with ``--early_stopping_patience`` changes
    ``training_args`` by :func:`early_stopping_settings` and returns its callback.

    Args:
        reg_args: a :class:`warmstart.arguments.RegularizationArguments`.
        modality: ``"image"`` or ``"text"``.
        model_config: the model's config (``num_labels``, ``problem_type``, ``id2label``).
        train_split: the train ``datasets.Dataset``, labels in ``labels``.
        training_args: the Trainer's arguments; changed in place for early stopping.

    Returns:
        A :class:`Regularization`.

    Raises:
        WarmstartError: an option that does not apply (see :func:`check_regularization`), a class without
            training examples under ``--class_weights auto``, or impossible early-stopping settings.
    """
    problem_type = getattr(model_config, "problem_type", None)
    check_regularization(reg_args, modality, problem_type, training_args)
    num_classes = int(model_config.num_labels)
    regularization = Regularization(num_classes=num_classes)
    weights = None
    if reg_args.class_weights == "auto":
        id2label = getattr(model_config, "id2label", None) or {}
        names = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(num_classes)]
        plain = train_split.with_format(None) if hasattr(train_split, "with_format") else train_split
        weights = class_weights_from_labels(list(plain[LABEL_COLUMN]), num_classes, names=names)
        regularization.class_weights = [round(float(w), 6) for w in weights]
        logger.info("class weights %s", dict(zip(names, regularization.class_weights)))
    if needs_loss_function(reg_args):
        regularization.loss_function = make_loss_function(num_classes, reg_args.label_smoothing, weights)
    if modality == "image" and reg_args.mixes_labels:
        regularization.mixup_alpha = reg_args.mixup_alpha
        regularization.cutmix_alpha = reg_args.cutmix_alpha
    if reg_args.early_stopping_patience is not None:
        regularization.callbacks.append(early_stopping_settings(training_args, reg_args.early_stopping_patience))
    return regularization
