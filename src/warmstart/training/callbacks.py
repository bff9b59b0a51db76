"""The Trainer callbacks and metrics every run adds: a non-finite loss stops the run, the training loss is logged
where evaluations and the end need it, and multi-process evaluation losses count each example once."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from transformers import EvalPrediction, TrainerCallback

from warmstart.errors import WarmstartError
from warmstart.metrics import compute_metrics, logits_of
from warmstart.run_folder import checkpoints


class StopOnNonFiniteLoss(TrainerCallback):
    """Stops a run whose logged training loss (or gradient norm) is NaN or infinite, with one line naming the step
    and the last checkpoint saved before it (a checkpoint is saved after the log of its step, so none with the
    non-finite value is made at that step)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                saved = checkpoints(args.output_dir, complete=False)
                kept = f"the last good checkpoint is {saved[-1]}" if saved else "no checkpoint was saved"
                raise WarmstartError(
                    f"the training {key} became {value} at step {state.global_step}: lower --learning_rate (or train "
                    f"in fp32, or clip with --max_grad_norm); {kept}"
                )


class LogBeforeEvaluationAndAtTheEnd(TrainerCallback):
    """Logs the training loss at the last step and before each evaluation, besides every ``logging_steps``.

    The Trainer averages the loss over processes only when it logs; the steps after the last log entered
    ``train_loss`` with the main process's loss alone, so a multi-process run reported another ``train_loss`` than
    one process on the same global batches. Logged at the end, every step is averaged over the processes. Logged
    before an evaluation, the training curve has a training loss beside each evaluation (and early stopping, which
    ends a run at an evaluation, ends it on a logged step)."""

    def on_step_end(self, args, state, control, **kwargs):
        if args.logging_strategy != "no" and (state.global_step >= state.max_steps or control.should_evaluate):
            control.should_log = True


def exact_loss_metrics(
    loss_function: Callable | None, metrics_function: Callable[[EvalPrediction], dict[str, float]] = compute_metrics
) -> Callable[[EvalPrediction], dict[str, float]]:
    """``metrics_function`` (:func:`~warmstart.metrics.compute_metrics`, or another label shape's) plus the loss
    over the evaluated examples, for a multi-process run.

    Several processes evaluate a split in batches made even by repeating examples; the Trainer drops the repeats
    from the predictions but averages batch losses that include them, so ``eval_loss`` differed from a single
    process's (2 % on a 33-example split, measured). Computed here from the gathered predictions, with the training
    loss (``loss_function``, else cross-entropy), the loss covers each example once; returned as ``loss``, it takes
    the place of the Trainer's ``eval_loss``.
    """

    def metrics(prediction: EvalPrediction) -> dict[str, float]:
        values = metrics_function(prediction)
        logits = logits_of(prediction)
        logits, labels = torch.as_tensor(np.asarray(logits)).float(), torch.as_tensor(np.asarray(prediction.label_ids))
        if loss_function is not None:
            loss = loss_function({"logits": logits}, labels)
        else:
            loss = torch.nn.functional.cross_entropy(logits, labels.long(), ignore_index=-100)
        return {**values, "loss": float(loss)}

    return metrics
