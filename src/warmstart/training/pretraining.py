"""The training loop of the pretraining tasks: a self-supervised objective (the model returns its own loss),
evaluated on validation, saved with a card and the run's lineage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from datasets import DatasetDict
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from warmstart.disk_space import checkpoint_bytes, guard_checkpoints
from warmstart.plan import change_training
from warmstart.training.callbacks import LogBeforeEvaluationAndAtTheEnd, StopOnNonFiniteLoss
from warmstart.training.output import finish_output, staged_output, write_output
from warmstart.training.setup import Run, resume_point


def train_self_supervised(
    run: Run,
    *,
    model: nn.Module,
    training_args: TrainingArguments,
    splits: DatasetDict,
    data_collator: Callable | None,
    save_model: Callable[[nn.Module, Path], None],
    card: dict[str, Any],
    processing_class: Any = None,
    derived_metrics: Callable[[dict[str, float], str], dict[str, float]] | None = None,
    after_training: Callable[[nn.Module, Path], list[tuple[str, str]]] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any]:
    """Trains a self-supervised objective with the HF Trainer (the model returns its own loss), evaluates the loss
    on validation, and saves what the next run fine-tunes, with a model card and the run's lineage.

    Args:
        run: from :func:`~warmstart.training.setup.start_run`.
        model: the model being pretrained; its forward returns the loss.
        training_args: the Trainer's arguments.
        splits: ``train`` and ``validation``.
        data_collator: batches examples (for masked-LM: draws the masks).
        save_model: writes the part worth keeping (the encoder, the masked-LM model) into a directory.
        card: model-card fields (see :func:`warmstart.export.write_model_card`) without metrics.
        processing_class: the tokenizer, for text.
        derived_metrics: metrics computed from the Trainer's (perplexity from the loss), given the metrics and their
            prefix (``eval``).
        after_training: writes more files into the output directory on the main process (a reconstruction grid),
            given the trained model and the directory; returns ``(caption, file name)`` of PNGs for the card.
        callbacks: more Trainer callbacks (a search's pruning, a test's probe).

    Returns:
        All metrics, as in ``all_results.json``.
    """
    if training_args.should_save:
        run.output_dir.mkdir(parents=True, exist_ok=True)
    change_training(
        training_args,
        "nothing to score but the loss: outputs stay out of memory; a NaN loss shows in the log",
        prediction_loss_only=True,
        logging_nan_inf_filter=False,
    )
    training_args = run.plan.resolve()  # every decision is made: the Trainer's arguments, built once
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=data_collator,
        processing_class=processing_class,
        callbacks=[*callbacks, StopOnNonFiniteLoss(), LogBeforeEvaluationAndAtTheEnd()],
    )
    guard_checkpoints(trainer, checkpoint_bytes(model))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    train_result = trainer.train(resume_from_checkpoint=resume_point(training_args))
    results: dict[str, Any] = dict(train_result.metrics)
    results.update(
        train_samples=len(splits["train"]),
        trainable_params=trainable,
        total_params=sum(p.numel() for p in model.parameters()),
    )
    trainer.log_metrics("train", results)
    files = {"train": dict(results)}
    metrics = trainer.evaluate(metric_key_prefix="eval")
    metrics["eval_samples"] = len(splits["validation"])
    if derived_metrics is not None:
        metrics.update(derived_metrics(metrics, "eval"))
    trainer.log_metrics("eval", metrics)
    files["eval"] = metrics
    results.update(metrics)
    files["all"] = dict(results)
    if trainer.is_world_process_zero():
        with staged_output(run.output_dir, model) as staging:
            images = after_training(model, staging) if after_training is not None else []
            write_output(run, staging, model, save_model, {**card, "images": images}, results, files, trainer)
        finish_output(run)
    return results
