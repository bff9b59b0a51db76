"""A classifier's evaluation report: the confusion matrix, scikit-learn's per-class precision / recall / F1 (as
JSON and as a markdown table for the model card), the training curves from the Trainer's log history and, for a
binary task, the ROC curve.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import classification_report, roc_curve

from warmstart.errors import WarmstartError
from warmstart.metrics import roc_auc, softmax
from warmstart.report.figures import (
    CONFUSION_MATRIX_DPI,
    CONFUSION_MATRIX_SIZE,
    ROC_CURVE_SIZE,
    TRAINING_CURVES_SIZE,
    finite_number,
    new_figure,
    save_figure,
    write_note,
)

ANNOTATED_CLASSES = 20  # counts are written in the cells up to this many classes
MARKDOWN_CLASS_ROWS = 50
_TICK_LABELS = 100  # beyond this many classes, only every k-th class is named on the axes
_NAME_CHARS = 24  # longer class names are cut on the axes, so that the matrix keeps its room


@dataclass
class EvaluationReport:
    """What :func:`write_evaluation_report` wrote.

    Attributes:
        images: ``(caption, file name)`` of the PNGs written, in the order a model card shows them (the ``images``
            of :func:`warmstart.export.write_model_card`).
        per_class: scikit-learn's ``classification_report`` as a dict: one entry per class name, ``accuracy``,
            ``macro avg`` and ``weighted avg``.
        markdown: the per-class precision / recall / F1 / support table, with the averages, for the model card.
        roc_auc: the area under the ROC curve of a binary task; ``None`` for multiclass tasks or a split holding
            one class only.
    """

    images: list[tuple[str, str]]
    per_class: dict[str, Any]
    markdown: str
    roc_auc: float | None = None


def confusion_counts(label_ids: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Args:
        label_ids: ``(n,)`` true class ids in ``[0, num_classes)``.
        predictions: ``(n,)`` predicted class ids in the same range.
        num_classes: the number of classes, including any absent from both arrays.

    Returns:
        A ``(num_classes, num_classes)`` integer matrix: row = true class, column = predicted class.

    Raises:
        WarmstartError: the arrays differ in length or hold an id outside the range.

    Example:
        >>> confusion_counts(np.array([0, 1, 1]), np.array([0, 0, 1]), 3)[1].tolist()
        [1, 1, 0]
    """
    label_ids = np.asarray(label_ids).reshape(-1)
    predictions = np.asarray(predictions).reshape(-1)
    if label_ids.shape != predictions.shape:
        raise WarmstartError(f"{len(label_ids)} labels but {len(predictions)} predictions: give one per example")
    for name, ids in (("label", label_ids), ("predicted", predictions)):
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise WarmstartError(
                f"a {name} id is outside 0..{num_classes - 1} (found {int(ids.min())}..{int(ids.max())}): the "
                "labels given do not match the model's classes"
            )
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (label_ids.astype(np.int64), predictions.astype(np.int64)), 1)
    return counts


def write_evaluation_report(
    output_dir: str | Path,
    labels: list[str],
    label_ids: np.ndarray,
    logits_or_probs: np.ndarray,
    log_history: list[dict[str, Any]],
    metric_for_best_model: str | None = None,
    split: str = "validation",
    greater_is_better: bool | None = None,
) -> EvaluationReport:
    """Writes a classifier's evaluation report into its output directory.

    Files written (for a split other than ``validation`` the split's name is added, as in
    ``confusion_matrix_test.png``, so that reports of two splits can sit side by side; the training curves do not
    depend on the split and keep their name):

    - ``confusion_matrix.png``: counts, coloured by their share of the true class (:data:`CONFUSION_MATRIX_SIZE` at
      :data:`CONFUSION_MATRIX_DPI`); counts are written in the cells up to :data:`ANNOTATED_CLASSES` classes;
    - ``classification_report.json``: scikit-learn's per-class precision / recall / F1 / support, every class
      listed, including those absent from the split;
    - ``training_curves.png``: train and eval loss, and the best-model metric per evaluation with the best marked
      (:data:`TRAINING_CURVES_SIZE`);
    - ``roc_curve.png``: binary tasks only, where the split holds both classes (:data:`ROC_CURVE_SIZE`).

    Args:
        output_dir: the run's directory (made if missing).
        labels: the class names, in class-id order.
        label_ids: ``(n,)`` true class ids.
        logits_or_probs: ``(n, len(labels))`` logits, or probabilities (rows of non-negative numbers summing to 1,
            used as they are); a Trainer prediction tuple is accepted, its first element being the logits.
        log_history: the Trainer's ``state.log_history``: train entries hold ``loss`` and ``step``, eval entries
            ``eval_loss`` and ``eval_<metric>``.
        metric_for_best_model: the metric drawn per evaluation, with or without its ``eval_`` prefix (default
            ``accuracy``).
        split: the split the predictions are from, for titles and file names.
        greater_is_better: whether a higher metric is better; by default, as the Trainer decides, unless the
            metric's name ends in ``loss``.

    Returns:
        The images written, the per-class report, its markdown table and the ROC-AUC of a binary task.

    Raises:
        WarmstartError: the predictions do not match the labels (shape, class count, empty split).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    labels = [str(label) for label in labels]
    probabilities = _as_probabilities(logits_or_probs, len(labels))
    label_ids = np.asarray(label_ids).reshape(-1)
    if label_ids.size and not np.array_equal(label_ids, np.round(label_ids)):
        raise WarmstartError(f"the {split} labels are not class ids (whole numbers): {label_ids[:5].tolist()} ...")
    label_ids = label_ids.astype(np.int64)  # float ids (1.0) would not match scikit-learn's integer class list
    if len(label_ids) != len(probabilities):
        raise WarmstartError(
            f"{len(label_ids)} labels but {len(probabilities)} predictions for the {split} split: give one per example"
        )
    if not len(label_ids):
        raise WarmstartError(f"the {split} split is empty: there is nothing to report on")
    if len(set(labels)) != len(labels):
        raise WarmstartError(f"class names repeat in {labels}: each class needs its own name")
    predictions = probabilities.argmax(axis=-1)
    counts = confusion_counts(label_ids, predictions, len(labels))
    suffix = "" if split == "validation" else f"_{split}"
    images = []

    name = f"confusion_matrix{suffix}.png"
    _plot_confusion_matrix(counts, labels, split, output_dir / name)
    images.append((f"Confusion matrix ({split})", name))

    per_class = classification_report(
        label_ids,
        predictions,
        labels=range(len(labels)),
        target_names=labels,
        output_dict=True,
        zero_division=0,
    )
    (output_dir / f"classification_report{suffix}.json").write_text(json.dumps(per_class, indent=2))

    name = "training_curves.png"
    plot_training_curves(log_history, metric_for_best_model, greater_is_better, output_dir / name)
    images.append(("Training curves", name))

    auc = roc_auc(label_ids, probabilities) if len(labels) == 2 else None
    if auc is not None:
        name = f"roc_curve{suffix}.png"
        _plot_roc_curve(label_ids, probabilities[:, 1], auc, labels[1], split, output_dir / name)
        images.append((f"ROC curve ({split})", name))
    return EvaluationReport(images, per_class, _per_class_markdown(per_class, labels, split), auc)


def _as_probabilities(logits_or_probs: Any, num_classes: int) -> np.ndarray:
    if isinstance(logits_or_probs, (tuple, list)) and logits_or_probs and np.ndim(logits_or_probs[0]) == 2:
        logits_or_probs = logits_or_probs[0]  # a Trainer prediction tuple: (logits, hidden states, ...)
    scores = np.asarray(logits_or_probs, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != num_classes:
        raise WarmstartError(
            f"predictions of shape {scores.shape} do not match {num_classes} classes: give (examples, classes) "
            "logits or probabilities"
        )
    is_distribution = (scores >= 0).all() and np.allclose(scores.sum(axis=-1), 1.0, atol=1e-4)
    return scores if is_distribution else softmax(scores)


def _short(name: str) -> str:
    return name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 1] + "\u2026"


def _plot_confusion_matrix(counts: np.ndarray, labels: list[str], split: str, path: Path) -> None:
    n = len(labels)
    support = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    fig = new_figure(CONFUSION_MATRIX_SIZE, CONFUSION_MATRIX_DPI)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    ticks = np.arange(n)[:: max(1, math.ceil(n / _TICK_LABELS))]
    names = [_short(labels[i]) for i in ticks]
    font = 9 if n <= ANNOTATED_CLASSES else 6 if n <= 50 else 4
    if n <= ANNOTATED_CLASSES:
        ax.set_xticks(ticks, names, fontsize=font, rotation=45, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticks(ticks, names, fontsize=font, rotation=90)
    ax.set_yticks(ticks, names, fontsize=font)
    if n > ANNOTATED_CLASSES:
        ax.tick_params(length=2, pad=1)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = int(counts.sum())
    accuracy = np.trace(counts) / max(total, 1)
    ax.set_title(f"Confusion matrix, {split} ({total} examples, accuracy {accuracy:.3f})")
    if n <= ANNOTATED_CLASSES:
        size = 9 if n <= 10 else 6
        for (i, j), count in np.ndenumerate(counts):
            color = "white" if share[i, j] > 0.5 else "black" if count else "lightgray"
            ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=size)
    save_figure(fig, path)


def _per_class_markdown(per_class: dict[str, Any], labels: list[str], split: str) -> str:
    def cells(scores: dict[str, float]) -> str:
        return (
            f"{scores['precision']:.3f} | {scores['recall']:.3f} | {scores['f1-score']:.3f} | "
            f"{int(scores['support'])} |"
        )

    def escape(name: str) -> str:
        return " ".join(name.split()).replace("|", "\\|")

    support = int(per_class["macro avg"]["support"])
    lines = [
        f"Per-class results on the {split} split ({support} examples):",
        "",
        "| class | precision | recall | F1 | support |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {escape(label)} | {cells(per_class[label])}" for label in labels[:MARKDOWN_CLASS_ROWS]]
    lines += [f"| **{average}** | {cells(per_class[average])}" for average in ("macro avg", "weighted avg")]
    if len(labels) > MARKDOWN_CLASS_ROWS:
        lines += [
            "",
            f"_{len(labels) - MARKDOWN_CLASS_ROWS} more classes are not shown: see classification_report.json._",
        ]
    if "accuracy" in per_class:
        lines += ["", f"Accuracy: {per_class['accuracy']:.4f}"]
    return "\n".join(lines)


def _series(log_history: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of one logged quantity; a step logged twice (the final evaluate after an evaluation at the
    last step) keeps its last value."""
    points: dict[float, float] = {}
    for position, entry in enumerate(log_history):
        value = finite_number(entry.get(key))
        if value is not None:
            step = finite_number(entry.get("step"))
            points[float(position) if step is None else step] = value
    steps = np.array(sorted(points), dtype=np.float64)
    return steps, np.array([points[s] for s in steps], dtype=np.float64)


def plot_training_curves(
    log_history: Sequence[dict[str, Any]], metric: str | None, greater_is_better: bool | None, path: Path
) -> None:
    """Draws ``training_curves.png``: train and eval loss, and ``metric`` per evaluation with the best marked
    (``greater_is_better``: its direction; by default higher, unless its name ends in ``loss``)."""
    metric = metric or "accuracy"
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    if greater_is_better is None:
        greater_is_better = not key.endswith("loss")
    train_steps, train_loss = _series(log_history, "loss")
    eval_steps, eval_loss = _series(log_history, "eval_loss")
    metric_steps, metric_values = _series(log_history, key)
    evaluated = any(any(k.startswith("eval_") for k in entry) for entry in log_history)

    fig = new_figure(TRAINING_CURVES_SIZE)
    loss_ax, metric_ax = fig.subplots(2, 1, sharex=True)
    if len(train_steps):
        marker = "." if len(train_steps) < 50 else None  # dots show where few points are; many would blur the line
        loss_ax.plot(train_steps, train_loss, color="tab:blue", marker=marker, label="train loss")
    if len(eval_steps):
        loss_ax.plot(eval_steps, eval_loss, color="tab:orange", marker="o", label="eval loss")
    if len(train_steps) or len(eval_steps):
        loss_ax.legend(loc="best", fontsize=8)
    if not len(train_steps):
        message = "no training loss logged (a run shorter than logging_steps, or logging off)"
        loss_ax.text(0.5, 0.9, message, transform=loss_ax.transAxes, ha="center", va="top", color="dimgray")
    loss_ax.set_ylabel("loss")
    loss_ax.grid(True, alpha=0.3)

    finite = np.isfinite(metric_values)
    if finite.any():
        metric_ax.plot(metric_steps, metric_values, color="tab:green", marker="o", label=key)
        candidates = np.where(finite, metric_values, -np.inf if greater_is_better else np.inf)
        best = int(candidates.argmax() if greater_is_better else candidates.argmin())
        label = f"best: {metric_values[best]:.4g} at step {metric_steps[best]:g}"
        metric_ax.scatter(
            metric_steps[best], metric_values[best], s=220, marker="*", color="tab:red", zorder=3, label=label
        )
        metric_ax.legend(loc="best", fontsize=8)
    else:
        write_note(metric_ax, f"{key} not logged" if evaluated else "no evaluation during training")
    metric_ax.set_ylabel(key)
    metric_ax.set_xlabel("step")
    metric_ax.grid(True, alpha=0.3)

    if not len(train_steps) and not evaluated:
        title = "Training curves: nothing logged"
    elif not evaluated:
        title = "Training curves (train loss only: no evaluation during training)"
    elif not len(train_steps):
        title = "Training curves (no training loss logged)"
    else:
        title = "Training curves"
    fig.suptitle(title)
    save_figure(fig, path)


def _plot_roc_curve(
    label_ids: np.ndarray, scores: np.ndarray, auc: float, positive: str, split: str, path: Path
) -> None:
    false_positive, true_positive, _ = roc_curve(label_ids, scores, pos_label=1)
    fig = new_figure(ROC_CURVE_SIZE)
    ax = fig.add_subplot()
    ax.plot(false_positive, true_positive, color="tab:blue", linewidth=2, label=f"ROC (AUC = {auc:.4f})")
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="chance")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC curve, {split} (positive class: {_short(positive)})")
    ax.legend(loc="lower right")
    ax.grid(True, alpha=0.3)
    save_figure(fig, path)
