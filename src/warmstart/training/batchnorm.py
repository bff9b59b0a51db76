"""BatchNorm in a classifier run: whether it trains on batch statistics, the warning that several processes each
normalise their own share of a batch, and the one training example left out where a last batch would hold one."""

from __future__ import annotations

import logging
import random

from torch import nn
from transformers import TrainingArguments

from warmstart.policy import FreezePolicy

logger = logging.getLogger("warmstart")


def trains_batchnorm(model: nn.Module, policy: FreezePolicy) -> bool:
    """Whether BatchNorm layers normalise with batch statistics in this run (now, or once a schedule unfreezes
    them)."""
    if policy.holds_batchnorm_stats:
        return False
    batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return any(p.requires_grad for m in batchnorms for p in m.parameters()) or (
        bool(batchnorms) and policy.spec.scheduled
    )


def warn_of_per_process_batchnorm(model: nn.Module, policy: FreezePolicy, training_args: TrainingArguments) -> None:
    """Says, under several processes, that BatchNorm normalises each process's share of a batch: the one thing that
    keeps such a run from computing what one process computes on the same global batch (measured: a full fine-tune
    of a ResNet on 24 images, 2 processes of 6 against 1 of 12, ended at train loss 0.42 against 0.17). PyTorch's
    SyncBatchNorm, which would normalise over the global batch, runs on GPUs only."""
    if training_args.world_size > 1 and trains_batchnorm(model, policy):
        logger.warning(
            "BatchNorm trains here and each of the %d processes normalises its own %d examples per step: results "
            "differ from one process with the same global batch (a frozen backbone, or a model without BatchNorm, "
            "does not have this difference)",
            training_args.world_size,
            training_args.per_device_train_batch_size,
        )


def avoid_single_sample_batches(
    model: nn.Module, policy: FreezePolicy, training_args: TrainingArguments, train_size: int
) -> list[int] | None:
    """A trainable BatchNorm cannot normalise a batch of one sample at 1x1 resolution, and a last batch of one is
    an accident of the data size: one training example (chosen with the seed) is left out rather than crash at the
    end of an epoch. (``dataloader_drop_last`` would do it, but the Trainer applies it to evaluation too, where it
    silently dropped whole validation batches.) Returns the training rows to keep, or ``None``: all."""
    batch = training_args.per_device_train_batch_size * max(training_args.world_size, 1)
    if train_size % batch != 1 or training_args.dataloader_drop_last or train_size == 1:
        return None
    if not trains_batchnorm(model, policy):
        return None
    left_out = random.Random(training_args.seed).randrange(train_size)
    logger.warning(
        "the last training batch would hold one sample, which BatchNorm cannot train on: training example %d of %d "
        "is left out",
        left_out,
        train_size,
    )
    return [i for i in range(train_size) if i != left_out]
