"""Classification metrics with scikit-learn (``evaluate.load`` would fetch from the Hub and fails offline)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from transformers import EvalPrediction


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits along the last axis (shifted by the maximum: no overflow)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


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


def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """The Trainer's ``compute_metrics``: :func:`classification_metrics` of an ``EvalPrediction``."""
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return classification_metrics(logits, prediction.label_ids)
