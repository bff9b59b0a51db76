"""How a trained classifier's predictions are scored and reported, as its label shape asks: the Trainer's metrics
function (the shape's metrics, ``evaluate`` extras, the exact loss of a multi-process evaluation), a multi-label
head's decision thresholds, and each split's evaluation report."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from warmstart.calibration import (
    calibrated_thresholds,
    expected_calibration_error,
    fit_temperature,
    fold_temperature,
    write_reliability_diagram,
)
from warmstart.metrics import in_target_units, logits_of, metrics_function, tune_thresholds, with_extra_metrics
from warmstart.problems import MULTI_LABEL, REGRESSION, LabelSpace, greater_is_better
from warmstart.report import write_evaluation_report, write_multi_label_report, write_regression_report
from warmstart.training.callbacks import exact_loss_metrics
from warmstart.uncertainty import metric_intervals

PREDICTIONS_FILE = "{prefix}_predictions.npz"

logger = logging.getLogger("warmstart")


def metrics_for(
    labels: LabelSpace,
    extra: Sequence[tuple[str, Any]],
    *,
    thresholds: Sequence[float] | None = None,
    world_size: int = 1,
    loss_function: Callable | None = None,
) -> Callable:
    """The Trainer's ``compute_metrics`` for the run's label shape: its metrics at ``thresholds`` (multi-label) or
    in the targets' units (regression), the ``evaluate`` metrics of ``extra``, and, under several processes, the
    loss over each evaluated example once (:func:`~warmstart.training.callbacks.exact_loss_metrics`)."""
    scored = metrics_function(labels.problem_type, thresholds=thresholds, scale=labels.scale)
    scored = with_extra_metrics(scored, extra, labels.problem_type, thresholds=thresholds, scale=labels.scale)
    return scored if world_size <= 1 else exact_loss_metrics(loss_function, scored)


def decide_thresholds(output: Any, labels: LabelSpace, threshold: float | None) -> list[float]:
    """A multi-label head's decision thresholds: ``threshold`` for every label, or each label's tuned for F1 on the
    validation predictions (:func:`~warmstart.metrics.tune_thresholds`). Logged."""
    if threshold is not None:
        chosen = [float(threshold)] * labels.num_outputs
        logger.info("multi-label decision threshold %g for every label (--threshold)", threshold)
        return chosen
    logits = logits_of(output)
    chosen = tune_thresholds(logits, output.label_ids)
    shown = ", ".join(f"{name} {value:.3f}" for name, value in list(zip(labels.names, chosen))[:10])
    logger.info("multi-label decision thresholds tuned for F1 on validation: %s%s", shown, " ..." * (len(chosen) > 10))
    return chosen


def report_split(
    staging: Path, labels: LabelSpace, output: Any, log_history: list, metric: str | None, split: str
) -> tuple[list[tuple[str, str]], str]:
    """The evaluation report of one split, as the label shape draws it: images (caption, file) and the card's
    markdown; its predictions are saved beside it (:func:`save_predictions`)."""
    save_predictions(staging, output, labels, "eval" if split == "validation" else "test")
    logits = logits_of(output)
    direction = greater_is_better(metric or labels.problem.headline)
    if labels.problem_type == MULTI_LABEL:
        return write_multi_label_report(
            staging, labels.names, output.label_ids, logits, labels.thresholds or [0.5] * labels.num_outputs,
            log_history, metric, split, direction,
        )  # fmt: skip
    if labels.problem_type == REGRESSION:
        values = in_target_units(logits, labels.scale)
        return write_regression_report(
            staging, labels.names, output.label_ids, values, log_history, metric, split, direction
        )
    written = write_evaluation_report(
        staging, labels.names, output.label_ids, logits, log_history, metric_for_best_model=metric, split=split
    )
    return written.images, written.markdown


def scored_outputs(output: Any, labels: LabelSpace) -> dict[str, np.ndarray]:
    """A split's predictions as the metrics read them: ``outputs`` (logits; regression: values in the targets'
    units) and ``labels``."""
    logits = np.asarray(logits_of(output), dtype=np.float64)
    outputs = in_target_units(logits, labels.scale) if labels.problem_type == REGRESSION else logits
    return {"outputs": outputs, "labels": np.asarray(output.label_ids)}


def interval_metrics(output: Any, labels: LabelSpace, level: float, prefix: str) -> dict[str, float]:
    """The confidence intervals of the split's headline metrics (:func:`~warmstart.uncertainty.metric_intervals`),
    named ``<prefix>_<metric>_ci_low`` / ``_ci_high``."""
    scored = scored_outputs(output, labels)
    intervals = metric_intervals(
        labels.problem_type, scored["outputs"], scored["labels"], thresholds=labels.thresholds, level=level
    )
    return {f"{prefix}_{name}": value for name, value in intervals.items()}


def save_predictions(staging: Path, output: Any, labels: LabelSpace, prefix: str) -> None:
    """Writes the split's predictions (``<prefix>_predictions.npz``: ``outputs``, ``labels``, ``problem_type`` and
    the multi-label ``thresholds``), in the order the split was evaluated (text: longest first, a stable sort, the
    same for every run on the same split), so that runs on the same split can be compared example by example."""
    scored = scored_outputs(output, labels)
    extra = {"thresholds": np.asarray(labels.thresholds, dtype=np.float64)} if labels.thresholds else {}
    path = staging / PREDICTIONS_FILE.format(prefix=prefix)
    np.savez_compressed(path, **scored, **extra, problem_type=np.asarray(labels.problem_type))


def calibrate(run: Any, labels: LabelSpace, output: Any) -> float:
    """Fits the temperature to the validation predictions (:func:`~warmstart.calibration.fit_temperature`), moves
    multi-label thresholds to the calibrated probabilities (the same decisions), records both and returns it."""
    logits = np.asarray(logits_of(output), dtype=np.float64)
    temperature = fit_temperature(logits, output.label_ids, labels.problem_type)
    before = expected_calibration_error(logits, output.label_ids, labels.problem_type)
    after = expected_calibration_error(logits, output.label_ids, labels.problem_type, temperature)
    logger.info("temperature scaling on validation: T = %.4g, ECE %.4f -> %.4f", temperature, before, after)
    run.plan.decide(
        "calibration",
        {"method": "temperature", "temperature": temperature, "fitted_on": "validation", "ece_before": before,
         "ece_after": after},
    )  # fmt: skip
    if labels.thresholds:
        labels.thresholds = calibrated_thresholds(labels.thresholds, temperature)
        run.plan.decide("targets", labels.to_dict())
    return temperature


def calibration_metrics(output: Any, labels: LabelSpace, temperature: float | None, prefix: str) -> dict[str, float]:
    """The split's expected calibration error, ``<prefix>_ece``, of the probabilities the saved model gives (scaled by
    ``temperature`` where one was fitted; then also ``<prefix>_ece_uncalibrated``); nothing for a regression."""
    if labels.problem_type == REGRESSION:
        return {}
    logits, truth = np.asarray(logits_of(output), dtype=np.float64), output.label_ids
    metrics = {f"{prefix}_ece": expected_calibration_error(logits, truth, labels.problem_type, temperature or 1.0)}
    if temperature is not None:
        metrics[f"{prefix}_ece_uncalibrated"] = expected_calibration_error(logits, truth, labels.problem_type)
    return metrics


def apply_calibration(
    staging: Path, model: Any, labels: LabelSpace, temperature: float | None, validation: Any
) -> list[tuple[str, str]]:
    """Folds the temperature into the model about to be saved and draws the validation reliability diagram;
    returns the card's images (none without a temperature)."""
    if temperature is None:
        return []
    fold_temperature(model, temperature, labels.num_outputs)
    logits = np.asarray(logits_of(validation), dtype=np.float64)
    write_reliability_diagram(
        staging / "reliability.png", logits, validation.label_ids, labels.problem_type, temperature, "validation"
    )
    return [("reliability on validation before and after temperature scaling", "reliability.png")]
