"""Early stopping: the training arguments made consistent with it (an evaluation and a checkpoint at the same
interval, the best model restored at the end, a metric the evaluation produces and its direction) and the
``EarlyStoppingCallback`` for the Trainer.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from transformers import EarlyStoppingCallback, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from warmstart.errors import WarmstartError
from warmstart.plan import change_training
from warmstart.problems import GREATER_IS_BETTER

logger = logging.getLogger(__name__)

# what a single-label run's evaluation reports (warmstart.metrics.classification_metrics, and the Trainer's loss)
EVAL_METRICS = {name: GREATER_IS_BETTER[name] for name in ("loss", "accuracy", "f1_macro", "roc_auc")}


def early_stopping_settings(
    training_args: TrainingArguments,
    patience: int,
    *,
    default_metric: str = "accuracy",
    threshold: float = 0.0,
    reported: Collection[str] = tuple(EVAL_METRICS),
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
        reported: the metrics the run's evaluation reports (its label shape's, and ``loss``).

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
    changes: dict[str, Any] = {"eval_strategy": evaluation, "do_eval": True}
    eval_steps = training_args.eval_steps
    if evaluation == IntervalStrategy.STEPS and not eval_steps:
        eval_steps = changes["eval_steps"] = training_args.logging_steps  # as TrainingArguments does
    if save != SaveStrategy.BEST:
        if save.value != evaluation.value:
            logger.info("early stopping: --save_strategy %s follows --eval_strategy %s", save.value, evaluation.value)
        changes["save_strategy"] = SaveStrategy(evaluation.value)
        if evaluation == IntervalStrategy.STEPS:
            changes["save_steps"] = eval_steps
    else:
        changes["save_strategy"] = save
    changes["load_best_model_at_end"] = True

    metric = training_args.metric_for_best_model or default_metric
    name = metric.removeprefix("eval_")
    if name not in reported:
        raise WarmstartError(
            f"--metric_for_best_model {metric!r} is not a metric of the evaluation: use one of {', '.join(reported)}"
        )
    changes["metric_for_best_model"] = metric
    if training_args.greater_is_better is None:
        changes["greater_is_better"] = GREATER_IS_BETTER[name]
    elif bool(training_args.greater_is_better) != GREATER_IS_BETTER[name]:
        raise WarmstartError(
            f"--greater_is_better {str(training_args.greater_is_better).lower()} with --metric_for_best_model "
            f"{metric} would keep the worst model: drop --greater_is_better (it follows the metric)"
        )
    change_training(training_args, "early stopping", **changes)
    return EarlyStoppingCallback(early_stopping_patience=patience, early_stopping_threshold=threshold)
