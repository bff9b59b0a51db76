"""A recipe's regularization options put together: the checks that refuse options which do not apply to the modality
or the head, and :func:`prepare_regularization`, which builds what the Trainer needs for them (the loss, the class
weights, the mixup collator, the early-stopping callback) as one :class:`Regularization`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

from warmstart.data import LABEL_COLUMN
from warmstart.errors import WarmstartError
from warmstart.problems import MULTI_LABEL, REGRESSION, SINGLE_LABEL, LabelSpace, problem_named
from warmstart.regularization.early_stopping import early_stopping_settings
from warmstart.regularization.losses import (
    class_weights_from_labels,
    make_loss_function,
    make_multi_label_loss,
    make_regression_loss,
    positive_weights_from_labels,
)
from warmstart.regularization.mixup import MixupCollator

logger = logging.getLogger(__name__)

IMAGE_ONLY_OPTIONS = ("mixup_alpha", "cutmix_alpha", "auto_augment", "random_erasing")


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
    if problem_type is not None:
        problem = problem_named(problem_type)
        head = f"a {problem.description} head"
        if reg_args.class_weights == "auto" and problem.class_weights is None:
            raise WarmstartError(f"--class_weights auto weights classes, but the model has {head}: drop it")
        if reg_args.label_smoothing > 0 and not problem.smooths:
            raise WarmstartError(f"--label_smoothing smooths class targets, but the model has {head}: drop it")
        if reg_args.mixes_labels and not problem.mixes:
            raise WarmstartError(
                f"--mixup_alpha / --cutmix_alpha mix class targets, but the model has {head}: drop them"
            )
    if problem_type != REGRESSION and reg_args.regression_loss != "mse":
        raise WarmstartError(
            f"--regression_loss {reg_args.regression_loss} is the loss of a regression head, and the run is "
            f"{'not known to be one' if problem_type is None else problem_type}: give --problem_type regression, or "
            "drop it"
        )
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
    reg_args: Any,
    modality: str,
    model_config: Any,
    train_split: Any,
    training_args: TrainingArguments,
    labels: LabelSpace | None = None,
) -> Regularization:
    """Checks a recipe's regularization options and builds what the Trainer needs for them.

    Runs :func:`check_regularization`; with ``--class_weights auto`` computes :func:`class_weights_from_labels`
    (multi-label: :func:`positive_weights_from_labels`) from the ``labels`` column of ``train_split`` (read without
    its transform: no image is decoded); builds the loss of the label shape (:func:`make_loss_function` when
    :func:`needs_loss_function`, the model's own loss otherwise; :func:`make_multi_label_loss` and
    :func:`make_regression_loss` always: the model's own ignores ``pos_weight`` and standardisation); with
    ``--early_stopping_patience`` changes ``training_args`` by :func:`early_stopping_settings` and returns its
    callback.

    Args:
        reg_args: a :class:`warmstart.arguments.RegularizationArguments`.
        modality: ``"image"`` or ``"text"``.
        model_config: the model's config (``num_labels``, ``problem_type``, ``id2label``).
        train_split: the train ``datasets.Dataset``, labels in ``labels``.
        training_args: the Trainer's arguments; changed in place for early stopping.
        labels: the run's label space (``None``: single-label, the classes of ``model_config``); a regression's
            needs its target scale.

    Returns:
        A :class:`Regularization`.

    Raises:
        WarmstartError: an option that does not apply (see :func:`check_regularization`), a class without
            training examples under ``--class_weights auto``, or impossible early-stopping settings.
    """
    problem_type = labels.problem_type if labels is not None else getattr(model_config, "problem_type", None)
    problem = problem_named(problem_type or SINGLE_LABEL)
    check_regularization(reg_args, modality, problem.name, training_args)
    num_classes = int(model_config.num_labels)
    regularization = Regularization(num_classes=num_classes)
    weights = None
    if reg_args.class_weights == "auto":
        id2label = getattr(model_config, "id2label", None) or {}
        names = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(num_classes)]
        plain = train_split.with_format(None) if hasattr(train_split, "with_format") else train_split
        if problem.name == MULTI_LABEL:
            weights = positive_weights_from_labels(plain[LABEL_COLUMN], names=names)
        else:
            weights = class_weights_from_labels(list(plain[LABEL_COLUMN]), num_classes, names=names)
        regularization.class_weights = [round(float(w), 6) for w in weights]
        logger.info(
            "%s weights %s",
            "label" if problem.name == MULTI_LABEL else "class",
            dict(zip(names, regularization.class_weights)),
        )
    if problem.name == MULTI_LABEL:
        regularization.loss_function = make_multi_label_loss(num_classes, reg_args.label_smoothing, weights)
    elif problem.name == REGRESSION:
        if labels is None or labels.scale is None:
            raise ValueError("a regression's loss needs its targets' scale: give the run's LabelSpace")
        regularization.loss_function = make_regression_loss(*labels.scale, reg_args.regression_loss)
    elif needs_loss_function(reg_args):
        regularization.loss_function = make_loss_function(num_classes, reg_args.label_smoothing, weights)
    if modality == "image" and reg_args.mixes_labels:
        regularization.mixup_alpha = reg_args.mixup_alpha
        regularization.cutmix_alpha = reg_args.cutmix_alpha
    if reg_args.early_stopping_patience is not None:
        regularization.callbacks.append(
            early_stopping_settings(
                training_args,
                reg_args.early_stopping_patience,
                default_metric=problem.headline,
                reported=(*problem.metrics, "loss"),
            )
        )
    return regularization
