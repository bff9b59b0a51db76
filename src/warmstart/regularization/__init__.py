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

One concept a module: :mod:`~warmstart.regularization.losses` (the loss and the class weights),
:mod:`~warmstart.regularization.mixup` (the collator), :mod:`~warmstart.regularization.early_stopping` (the
settings and the callback), :mod:`~warmstart.regularization.assembly` (the checks and :func:`prepare_regularization`).
"""

from warmstart.data import TRAIN_MARKER
from warmstart.regularization.assembly import (
    IMAGE_ONLY_OPTIONS,
    SINGLE_LABEL,
    Regularization,
    check_regularization,
    needs_loss_function,
    prepare_regularization,
)
from warmstart.regularization.early_stopping import EVAL_METRICS, early_stopping_settings
from warmstart.regularization.losses import (
    IGNORE_INDEX,
    class_weights_from_labels,
    make_loss_function,
    make_multi_label_loss,
    make_regression_loss,
    positive_weights_from_labels,
)
from warmstart.regularization.mixup import MixupCollator

__all__ = [
    "EVAL_METRICS",
    "IGNORE_INDEX",
    "IMAGE_ONLY_OPTIONS",
    "SINGLE_LABEL",
    "TRAIN_MARKER",
    "MixupCollator",
    "Regularization",
    "check_regularization",
    "class_weights_from_labels",
    "early_stopping_settings",
    "make_loss_function",
    "make_multi_label_loss",
    "make_regression_loss",
    "positive_weights_from_labels",
    "needs_loss_function",
    "prepare_regularization",
]
