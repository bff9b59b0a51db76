"""The evaluation report of the label shapes beyond single-label classification: for multi-label, each label's
precision / recall / F1 / support at its decision threshold (JSON and a markdown table) and the precision-recall
curves; for regression, each target's errors (JSON and a table), predicted against true values and the residuals'
histogram. Both draw the training curves as the single-label report does
(:func:`~warmstart.report.evaluation.plot_training_curves`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, precision_recall_fscore_support

from warmstart.errors import WarmstartError
from warmstart.metrics import regression_metrics, sigmoid
from warmstart.problems import GREATER_IS_BETTER
from warmstart.report.evaluation import plot_training_curves
from warmstart.report.figures import new_figure, save_figure, write_note

REPORT_SIZE = (8.0, 6.0)  # 800 x 600 px
PLOTTED_LABELS = 10  # precision-recall curves drawn (the labels with the most positives)
MARKDOWN_ROWS = 50


def write_multi_label_report(
    output_dir: Path,
    labels: Sequence[str],
    targets: np.ndarray,
    logits: np.ndarray,
    thresholds: Sequence[float],
    log_history: Sequence[dict] = (),
    metric_for_best_model: str | None = None,
    split: str = "validation",
    greater_is_better: bool | None = None,
) -> tuple[list[tuple[str, str]], str]:
    """Writes ``label_report[_<split>].json`` (per label: precision, recall, F1, support, threshold, average
    precision), ``precision_recall[_<split>].png`` and ``training_curves.png``.

    Returns:
        The images written (caption, file name) and the markdown table for the model card.

    Raises:
        WarmstartError: predictions that do not match the labels.
    """
    targets = np.asarray(targets) >= 0.5
    probabilities = sigmoid(np.asarray(logits))
    if probabilities.shape != targets.shape or targets.shape[1] != len(labels):
        raise WarmstartError(
            f"predictions of shape {probabilities.shape} for targets {targets.shape} and {len(labels)} labels"
        )
    predicted = probabilities >= np.asarray(thresholds)[None, :]
    precision, recall, f1, support = precision_recall_fscore_support(targets, predicted, zero_division=0)
    rows = {}
    for i, label in enumerate(labels):
        ap = float(average_precision_score(targets[:, i], probabilities[:, i])) if targets[:, i].any() else None
        rows[str(label)] = {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "threshold": float(thresholds[i]),
            "average_precision": ap,
        }
    suffix = "" if split == "validation" else f"_{split}"
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"label_report{suffix}.json").write_text(json.dumps(rows, indent=2))

    fig = new_figure(REPORT_SIZE)
    ax = fig.add_subplot()
    plotted = [i for i in np.argsort(-support, kind="stable") if support[i] > 0][:PLOTTED_LABELS]
    for i in plotted:
        curve_precision, curve_recall, _ = precision_recall_curve(targets[:, i], probabilities[:, i])
        ax.plot(
            curve_recall, curve_precision, label=f"{labels[i]} (AP {rows[str(labels[i])]['average_precision']:.2f})"
        )
    if plotted:
        ax.legend(fontsize=8, loc="lower left")
    else:
        write_note(ax, f"no label has a positive example in the {split} split")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.01))
    shown = "" if len(plotted) == len(labels) else f" (the {len(plotted)} most frequent labels)"
    ax.set_title(f"Precision-recall per label, {split}{shown}")
    name = f"precision_recall{suffix}.png"
    save_figure(fig, output_dir / name)
    images = [(f"Precision-recall curves ({split})", name)]
    images.append(_training_curves(output_dir, log_history, metric_for_best_model or "f1_micro", greater_is_better))

    lines = [
        f"Per label ({split}, at each label's threshold):",
        "",
        "| label | precision | recall | F1 | support | threshold | AP |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, row in list(rows.items())[:MARKDOWN_ROWS]:
        ap = "" if row["average_precision"] is None else f"{row['average_precision']:.3f}"
        lines.append(
            f"| {label} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} | "
            f"{row['threshold']:.3f} | {ap} |"
        )
    if len(rows) > MARKDOWN_ROWS:
        lines.append(f"\n({len(rows) - MARKDOWN_ROWS} more labels in label_report{suffix}.json)")
    return images, "\n".join(lines)


def write_regression_report(
    output_dir: Path,
    names: Sequence[str],
    targets: np.ndarray,
    predictions: np.ndarray,
    log_history: Sequence[dict] = (),
    metric_for_best_model: str | None = None,
    split: str = "validation",
    greater_is_better: bool | None = None,
) -> tuple[list[tuple[str, str]], str]:
    """Writes ``regression_report[_<split>].json`` (per target: MSE, RMSE, MAE, R2, correlations),
    ``predicted_vs_true[_<split>].png`` (predicted against true values, and the residuals' histogram), in the
    targets' units, and ``training_curves.png``.

    Returns:
        The images written (caption, file name) and the markdown table for the model card.
    """
    truth = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    predicted = np.asarray(predictions, dtype=np.float64).reshape(len(predictions), -1)
    if truth.shape != predicted.shape or truth.shape[1] != len(names):
        raise WarmstartError(
            f"predictions of shape {predicted.shape} for targets {truth.shape} and {len(names)} names"
        )
    rows = {str(name): regression_metrics(predicted[:, i], truth[:, i]) for i, name in enumerate(names)}
    suffix = "" if split == "validation" else f"_{split}"
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"regression_report{suffix}.json").write_text(json.dumps(rows, indent=2))

    fig = new_figure((REPORT_SIZE[0], REPORT_SIZE[1] * min(len(names), 3) / 1.5))
    shown = list(names)[:3]
    for i, name in enumerate(shown):
        scatter = fig.add_subplot(len(shown), 2, 2 * i + 1)
        low, high = (
            float(min(truth[:, i].min(), predicted[:, i].min())),
            float(max(truth[:, i].max(), predicted[:, i].max())),
        )
        scatter.scatter(truth[:, i], predicted[:, i], s=8, alpha=0.5)
        scatter.plot([low, high], [low, high], color="gray", linewidth=1, linestyle="--")
        scatter.set(xlabel=f"true {name}", ylabel=f"predicted {name}")
        scatter.set_title(f"{name}, {split}: R2 {rows[str(name)].get('r2', float('nan')):.3f}", fontsize=10)
        residuals = fig.add_subplot(len(shown), 2, 2 * i + 2)
        residuals.hist(predicted[:, i] - truth[:, i], bins=30)
        residuals.set(xlabel="predicted - true", ylabel="examples")
        residuals.set_title(f"residuals: MAE {rows[str(name)]['mae']:.4g}", fontsize=10)
    name = f"predicted_vs_true{suffix}.png"
    save_figure(fig, output_dir / name)
    images = [(f"Predicted against true values ({split})", name)]
    images.append(_training_curves(output_dir, log_history, metric_for_best_model or "rmse", greater_is_better))

    lines = [
        f"Per target ({split}, in the targets' units):",
        "",
        "| target | RMSE | MAE | R2 | Pearson | Spearman |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for target, row in rows.items():
        cells = [f"{row[k]:.4g}" if k in row else "" for k in ("rmse", "mae", "r2", "pearson", "spearman")]
        lines.append(f"| {target} | {' | '.join(cells)} |")
    return images, "\n".join(lines)


def _training_curves(
    output_dir: Path, log_history: Sequence[dict], metric: str, greater_is_better: bool | None
) -> tuple[str, str]:
    """``training_curves.png``, the metric's direction known where not given (lower for an error)."""
    if greater_is_better is None:
        greater_is_better = GREATER_IS_BETTER.get(metric.removeprefix("eval_"), not metric.endswith("loss"))
    plot_training_curves(log_history, metric, greater_is_better, output_dir / "training_curves.png")
    return "Training curves", "training_curves.png"
