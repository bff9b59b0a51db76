"""Mixup and cutmix as the Trainer's ``data_collator``: timm's ``Mixup`` applied to training batches only (those whose
examples carry :data:`~warmstart.data.TRAIN_MARKER`), giving soft labels for the loss of
:mod:`warmstart.regularization.losses`; evaluation batches pass through with their hard labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from warmstart.data import LABEL_COLUMN, TRAIN_MARKER, image_collate
from warmstart.errors import WarmstartError


class MixupCollator:
    """Collates a batch, then applies timm's mixup / cutmix to it if it is a training batch.

    Training batches are those whose examples all carry :data:`TRAIN_MARKER` (set by
    ``attach_image_transforms(..., mark_train=True)`` on the train split only); other batches (validation, test)
    are the base collator's, with hard labels, so evaluation loss and metrics are plain. The marker is removed
    before the base collator sees the examples.

    A training batch gets soft float labels ``[B, C]`` (each row sums to 1; multi-label targets ``[B, C]`` are mixed
    as timm mixes one-hot ones, into soft per-label targets) and mixed ``pixel_values``; the loss must then come from
    :func:`make_loss_function` (:func:`make_multi_label_loss`) given as the Trainer's ``compute_loss_func`` (a
    model's own loss expects class ids). Mixing is timm's ``mode="batch"``: one lambda per batch, each image mixed
    with the batch reversed. timm needs an even batch: in an odd batch (the last of an epoch) the first ``B - 1``
    examples are mixed and the last keeps its image, with its label as a one-hot soft target, so that every training
    batch is soft (the loss's gradient-accumulation count relies on it). A batch of one is not mixed.

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
            num_classes=max(num_classes, 2),  # multi-label batches give it ids 0 and 1 (see __call__)
        )

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        training = bool(examples) and all(e.get(TRAIN_MARKER) for e in examples)
        examples = [{k: v for k, v in e.items() if k != TRAIN_MARKER} for e in examples]
        batch = self.base_collate(examples)
        if not training:
            return batch
        pixels, labels = batch["pixel_values"], batch[LABEL_COLUMN]
        if labels.ndim == 2 and labels.shape[1] == self.num_classes:  # multi-label targets: mixed as they are
            soft = labels.float()
        elif labels.ndim == 1:
            soft = torch.nn.functional.one_hot(labels.long(), self.num_classes).float()
        else:
            raise ValueError(f"MixupCollator mixes class ids or multi-hot targets, got labels {tuple(labels.shape)}")
        mixed = len(labels) - len(labels) % 2
        if mixed >= 2 and labels.ndim == 1:
            head_pixels, head_labels = self.mixup(pixels[:mixed].clone(), labels[:mixed])
            pixels = torch.cat([head_pixels, pixels[mixed:]]) if mixed < len(labels) else head_pixels
            soft = torch.cat([head_labels.float(), soft[mixed:]])
        elif mixed >= 2:
            # timm mixes class ids only: it is given ids from which its lambda reads back (the first image's class 0,
            # its partner's, the last's, 1), and the multi-hot targets are mixed with that lambda, as timm mixes
            # one-hot ones: each with the batch reversed
            ids = torch.zeros(mixed, dtype=torch.long)
            ids[-1] = 1
            head_pixels, mixed_ids = self.mixup(pixels[:mixed].clone(), ids)
            lam = float(mixed_ids[0, 0])
            head = soft[:mixed]
            pixels = torch.cat([head_pixels, pixels[mixed:]]) if mixed < len(labels) else head_pixels
            soft = torch.cat([lam * head + (1 - lam) * head.flip(0), soft[mixed:]])
        batch["pixel_values"], batch[LABEL_COLUMN] = pixels, soft
        return batch
