"""The metrics of each label shape, with scikit-learn and scipy (not ``evaluate.load``, which fetches its metrics from
the Hub: the built-in metrics need neither network nor cache; :func:`load_extra_metrics` adds ``evaluate`` metrics
where asked for): single-label classification,
multi-label classification (at per-label decision thresholds, tuned on validation by :func:`tune_thresholds`) and
regression (in the targets' own units)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)
from transformers import EvalPrediction

from warmstart.errors import WarmstartError, hub_unavailable


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits along the last axis (shifted by the maximum: no overflow)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Each logit's probability, without overflow for large negative logits."""
    logits = np.asarray(logits, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -logits))


def roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """ROC-AUC: binary on the positive class; multiclass one-vs-rest, macro-averaged over the classes present.

    sklearn's multiclass form fails outright when a validation set lacks a class; averaging over the classes that
    have both positives and negatives gives the same number when all are present and a defined one otherwise.

    Returns:
        The score, or ``None`` where it is undefined (a single class in ``labels``).
    """
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(labels, probabilities[:, 1])) if len(np.unique(labels)) == 2 else None
    scores = [
        roc_auc_score(labels == c, probabilities[:, c])
        for c in range(probabilities.shape[1])
        if 0 < (labels == c).sum() < len(labels)
    ]
    return float(np.mean(scores)) if scores else None


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1 and ROC-AUC of single-label predictions.

    Args:
        logits: ``(n, num_classes)`` scores.
        labels: ``(n,)`` class ids.

    Returns:
        ``accuracy``, ``f1_macro`` and, where defined, ``roc_auc`` (the Trainer prefixes them with ``eval_``).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    predictions = logits.argmax(axis=-1)
    metrics = {
        "accuracy": float(accuracy_score(labels, predictions)),
        "f1_macro": float(f1_score(labels, predictions, average="macro", labels=np.unique(labels), zero_division=0)),
    }
    auc = roc_auc(labels, softmax(logits))
    if auc is not None:
        metrics["roc_auc"] = auc
    return metrics


def multi_label_metrics(
    logits: np.ndarray, labels: np.ndarray, thresholds: Sequence[float] | float | None = None
) -> dict[str, float]:
    """The metrics of multi-label predictions: a label is predicted where its probability (the sigmoid of its logit)
    reaches its threshold.

    ``f1_micro`` (over every decision), ``f1_macro`` (the mean of the labels' F1; a label with neither a positive nor
    a prediction scores 1, as it made no mistake), ``subset_accuracy`` (every label of the example right) and
    ``hamming_loss`` (the share of wrong decisions) use the thresholds; ``mean_average_precision`` and ``roc_auc``
    rank the probabilities, macro-averaged over the labels they are defined for (AP: labels with a positive;
    ROC-AUC: labels with both positives and negatives).

    Args:
        logits: ``(n, num_labels)`` scores.
        labels: ``(n, num_labels)`` 0/1 targets.
        thresholds: one probability per label, or one for all (``None``: 0.5).

    Returns:
        The metrics by name (``mean_average_precision`` and ``roc_auc`` only where defined).
    """
    probabilities = sigmoid(logits)
    truth = np.asarray(labels) >= 0.5
    limits = np.broadcast_to(np.asarray(0.5 if thresholds is None else thresholds, dtype=np.float64), truth.shape[1:])
    predicted = probabilities >= limits
    per_label_f1 = [
        1.0 if not truth[:, c].any() and not predicted[:, c].any() else f1_score(truth[:, c], predicted[:, c])
        for c in range(truth.shape[1])
    ]
    metrics = {
        "f1_micro": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "f1_macro": float(np.mean(per_label_f1)),
        "subset_accuracy": float((truth == predicted).all(axis=1).mean()),
        "hamming_loss": float((truth != predicted).mean()),
    }
    with_positives = [c for c in range(truth.shape[1]) if truth[:, c].any()]
    if with_positives:
        metrics["mean_average_precision"] = float(
            np.mean([average_precision_score(truth[:, c], probabilities[:, c]) for c in with_positives])
        )
    both = [c for c in with_positives if not truth[:, c].all()]
    if both:
        metrics["roc_auc"] = float(np.mean([roc_auc_score(truth[:, c], probabilities[:, c]) for c in both]))
    return metrics


def tune_thresholds(logits: np.ndarray, labels: np.ndarray) -> list[float]:
    """Per-label decision thresholds that maximise each label's F1 on the given (validation) predictions.

    Each label's candidates are the midpoints between consecutive distinct probabilities (and 0.5): every distinct
    decision the data can tell apart; ties go to the threshold nearest 0.5. A label without a positive example keeps
    0.5 (its F1 cannot tell thresholds apart; any threshold below its highest probability only adds false
    positives).

    Returns:
        One probability threshold per label, in (0, 1).
    """
    probabilities = sigmoid(logits)
    truth = np.asarray(labels) >= 0.5
    thresholds = []
    for c in range(truth.shape[1]):
        positives = truth[:, c]
        if not positives.any():
            thresholds.append(0.5)
            continue
        order = np.sort(np.unique(probabilities[:, c]))
        candidates = np.concatenate([[0.5], (order[:-1] + order[1:]) / 2, [order[0] / 2], [(order[-1] + 1) / 2]])
        candidates = candidates[(candidates > 0) & (candidates < 1)]
        predicted = probabilities[:, c][None, :] >= candidates[:, None]  # (candidates, n)
        tp = (predicted & positives).sum(axis=1)
        fp = (predicted & ~positives).sum(axis=1)
        fn = positives.sum() - tp
        f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        best = np.flatnonzero(f1 == f1.max())
        thresholds.append(float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]]))
    return thresholds


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """MSE, RMSE, MAE, R2, Pearson and Spearman correlation of predicted values, in the targets' units; with several
    target columns, each metric is the mean over the columns (R2: sklearn's uniform average). A correlation that is
    undefined (constant predictions or targets) is left out.

    Args:
        predictions: ``(n,)`` or ``(n, targets)``.
        targets: the same shape.
    """
    predicted = np.asarray(predictions, dtype=np.float64).reshape(len(predictions), -1)
    truth = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    mse = float(mean_squared_error(truth, predicted))
    metrics = {
        "mse": mse,
        "rmse": float(np.mean(np.sqrt(((truth - predicted) ** 2).mean(axis=0)))),
        "mae": float(mean_absolute_error(truth, predicted)),
    }
    if len(truth) > 1:
        metrics["r2"] = float(r2_score(truth, predicted))
    for name, correlate in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
        values = [
            float(correlate(predicted[:, c], truth[:, c])[0])
            for c in range(truth.shape[1])
            if len(truth) > 1 and np.ptp(predicted[:, c]) > 0 and np.ptp(truth[:, c]) > 0
        ]
        if values:
            metrics[name] = float(np.mean(values))
    return metrics


def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """The Trainer's ``compute_metrics`` of a single-label run: :func:`classification_metrics` of an
    ``EvalPrediction`` (see :func:`metrics_function` for every label shape)."""
    return classification_metrics(logits_of(prediction), prediction.label_ids)


def logits_of(prediction: Any) -> np.ndarray:
    """The logits of a Trainer prediction (``EvalPrediction`` or ``PredictionOutput``): its ``predictions``, or their
    first element where the model returned more (hidden states, ...)."""
    return prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions


def in_target_units(outputs: Any, scale: tuple[Sequence[float], Sequence[float]] | None) -> np.ndarray:
    """A regression head's standardised outputs as values in the targets' units, ``(n, targets)``:
    ``output * std + mean`` (``scale``: each target's ``(mean, std)``; ``None``: as they are)."""
    values = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    if scale is None:
        return values
    mean, std = (np.asarray(v, dtype=np.float64) for v in scale)
    return values * std + mean


def metrics_function(
    problem_type: str,
    *,
    thresholds: Sequence[float] | None = None,
    scale: tuple[Sequence[float], Sequence[float]] | None = None,
) -> Callable[[EvalPrediction], dict[str, float]]:
    """The Trainer's ``compute_metrics`` for a label shape.

    Args:
        problem_type: ``single_label_classification``, ``multi_label_classification`` or ``regression``.
        thresholds: multi-label decision thresholds (``None``: 0.5 each).
        scale: regression: the targets' ``(mean, std)`` per column: the model in training outputs standardised
            values, scored against the labels (in the targets' units) as ``output * std + mean``.
    """
    if problem_type == "single_label_classification":
        return compute_metrics
    if problem_type == "multi_label_classification":
        return lambda prediction: multi_label_metrics(logits_of(prediction), prediction.label_ids, thresholds)
    if problem_type == "regression":

        def regression(prediction: EvalPrediction) -> dict[str, float]:
            values = in_target_units(logits_of(prediction), scale)
            return regression_metrics(values, np.asarray(prediction.label_ids, dtype=np.float64).reshape(values.shape))

        return regression
    raise ValueError(f"unknown problem type {problem_type!r}")


def load_extra_metrics(names: Sequence[str]) -> list[tuple[str, Any]]:
    """Loads ``evaluate`` metrics by Hub name (downloaded, or from evaluate's cache with ``HF_HUB_OFFLINE=1``) or local
    script path, before anything trains.

    Returns:
        ``(name, metric)`` pairs (a script's name without ``.py``).

    Raises:
        WarmstartError: ``evaluate`` is not installed, or a metric cannot be loaded (a Hub name that cannot be
            downloaded, or offline is not cached; a script that fails), in one line.
    """
    if not names:
        return []
    try:
        import evaluate
    except ImportError:
        raise WarmstartError("--extra_metrics loads metrics with evaluate: pip install evaluate") from None
    loaded = []
    for name in names:
        local = Path(name).suffix == ".py" or Path(name).exists()
        if local and not Path(name).exists():
            raise WarmstartError(f"--extra_metrics {name}: no such metric script")
        try:
            metric = evaluate.load(str(Path(name).resolve()) if local else name)
        except Exception as err:  # evaluate raises whatever its download or the script raised
            if not local and isinstance(err, OSError):  # not fetched: offline and not cached, no network, no such name
                raise WarmstartError(
                    hub_unavailable(f"--extra_metrics {name}", err) + "; or give a local metric script"
                ) from None
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise WarmstartError(
                f"--extra_metrics {name} cannot be loaded ({type(err).__name__}: {first}): check the metric's "
                "script and what it needs installed"
            ) from None
        loaded.append((Path(name).stem if local else name.rsplit("/", 1)[-1], metric))
    return loaded


def with_extra_metrics(
    metrics: Callable[[EvalPrediction], dict[str, float]],
    extra: Sequence[tuple[str, Any]],
    problem_type: str,
    *,
    thresholds: Sequence[float] | None = None,
    scale: tuple[Sequence[float], Sequence[float]] | None = None,
) -> Callable[[EvalPrediction], dict[str, float]]:
    """``metrics`` plus each ``evaluate`` metric of ``extra``, given what the run decides: class ids (single-label),
    0/1 label vectors at the thresholds (multi-label), values in the targets' units (regression), against the true
    labels. Each of its numeric results is added under its own name, or ``<metric>_<name>`` where a built-in one has
    that name."""
    if not extra:
        return metrics

    def combined(prediction: EvalPrediction) -> dict[str, float]:
        values = metrics(prediction)
        logits = np.asarray(logits_of(prediction), dtype=np.float64)
        labels = np.asarray(prediction.label_ids)
        if problem_type == "multi_label_classification":
            limits = np.asarray(0.5 if thresholds is None else thresholds)
            predicted, references = (sigmoid(logits) >= limits).astype(int), (labels >= 0.5).astype(int)
        elif problem_type == "regression":
            predicted = in_target_units(logits, scale)
            references = labels.astype(np.float64).reshape(predicted.shape)
            if predicted.shape[1] == 1:
                predicted, references = predicted[:, 0], references[:, 0]
        else:
            predicted, references = logits.argmax(axis=-1), labels.astype(int)
        for name, metric in extra:
            result = metric.compute(predictions=predicted.tolist(), references=references.tolist()) or {}
            for key, value in result.items():
                if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                    values[key if key not in values else f"{name}_{key}"] = float(value)
        return values

    return combined
