"""Evaluation reports with plots: a confusion matrix, per-class precision / recall / F1, training curves, a ROC curve
for binary tasks, and the strategy-comparison plot.

The figures are drawn on :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas directly: pyplot is
never imported, so no window opens, no backend is selected globally and no figure is left registered anywhere.
Figure sizes and the resolution are fixed, so the pixel size of every PNG is known in advance (see the ``*_SIZE``
constants, in inches, times :data:`DPI`, or :data:`CONFUSION_MATRIX_DPI` for the confusion matrix).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import classification_report, roc_curve

from warmstart.errors import WarmstartError
from warmstart.metrics import roc_auc, softmax

DPI = 100
CONFUSION_MATRIX_SIZE = (8.0, 8.0)  # at CONFUSION_MATRIX_DPI: 1200 x 1200 px
CONFUSION_MATRIX_DPI = 150  # finer than the others: 100 classes get ~9 px cells and 8 px tick labels
TRAINING_CURVES_SIZE = (8.0, 6.0)  # 800 x 600 px
ROC_CURVE_SIZE = (6.0, 6.0)  # 600 x 600 px
COMPARISON_SIZE = (8.0, 6.0)  # 800 x 600 px
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


@dataclass
class ComparisonPlot:
    """What :func:`write_comparison_plot` drew.

    Attributes:
        path: the PNG.
        metric: the key of ``rows`` that was plotted (``eval_`` added where the rows have it only with the prefix).
        best: the row with the best metric, or ``None`` where no row has it.
        plotted: the rows drawn, in their order in ``rows``; the others lacked the metric or the train time.
        figure: the figure as rendered into the PNG (to show it in a notebook, or save it in another format).
    """

    path: Path
    metric: str
    best: dict[str, Any] | None
    plotted: list[dict[str, Any]] = field(default_factory=list)
    figure: Figure | None = field(default=None, repr=False, compare=False)


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
    _plot_training_curves(log_history, metric_for_best_model, greater_is_better, output_dir / name)
    images.append(("Training curves", name))

    auc = roc_auc(label_ids, probabilities) if len(labels) == 2 else None
    if auc is not None:
        name = f"roc_curve{suffix}.png"
        _plot_roc_curve(label_ids, probabilities[:, 1], auc, labels[1], split, output_dir / name)
        images.append((f"ROC curve ({split})", name))
    return EvaluationReport(images, per_class, _per_class_markdown(per_class, labels, split), auc)


def write_comparison_plot(
    rows: list[dict[str, Any]],
    metric: str,
    path: str | Path,
    time_key: str = "train_runtime",
    size_key: str = "trainable_params",
    name_key: str = "strategy",
    greater_is_better: bool | None = None,
    best: dict[str, Any] | None = None,
    reference: tuple[str, float] | None = None,
) -> ComparisonPlot:
    """Plots a strategy comparison: the validation metric against train wall time, marker size for trainable
    parameters, the best run marked and named in the title.

    Marker diameters grow with the order of magnitude of the parameter count, so that a 1e3-parameter head and a
    1e8-parameter full fine-tune are both visible. Each point is labelled with ``row[name_key]``, and with its
    learning rate where the rows hold ``learning_rate`` and more than one value appears; labels never overlap: where
    points crowd, their labels are stacked apart, each joined to its point by a thin line. Values may be numbers or
    strings (rows read back from a CSV). The figure is :data:`COMPARISON_SIZE` at :data:`DPI`.

    Args:
        rows: one dict per run.
        metric: the key of the metric; ``eval_<metric>`` is used when the rows have only that.
        path: the PNG to write.
        time_key: the key of the train wall time in seconds.
        size_key: the key of the trainable parameter count (a row without it gets the smallest marker).
        name_key: the key of the run's name.
        greater_is_better: whether a higher metric is better; by default yes, unless ``loss`` is in its name.
        best: the row to mark as the best (chosen by the caller, e.g. with a tie-break); by default the first of
            the best values.
        reference: ``(name, value)``: a labelled horizontal line at that metric value, e.g. the level of always
            predicting the majority class (:func:`warmstart.comparison.majority_class_level`), so that runs which
            learned nothing show as such.

    Returns:
        The path, the metric key used, the best row, the rows plotted and the figure. Rows lacking the metric or
        the time are left out; where none remains, the PNG holds a note saying so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def reported(name: str) -> bool:
        return any(_number(row.get(name)) is not None for row in rows)

    key = f"eval_{metric}" if not reported(metric) and reported(f"eval_{metric}") else metric
    if greater_is_better is None:
        greater_is_better = "loss" not in key
    plotted = [row for row in rows if _number(row.get(key)) is not None and _number(row.get(time_key)) is not None]
    best = best if best is not None and any(row is best for row in plotted) else _best(plotted, key, greater_is_better)

    fig = _figure(COMPARISON_SIZE)
    ax = fig.add_subplot()
    ax.set_xlabel("train wall time (s)")
    ax.set_ylabel(key)
    ax.grid(True, alpha=0.3)
    if best is None:
        fig.suptitle(f"Strategy comparison: no run reports {key}")
        _note(ax, f"none of the {len(rows)} runs reports {key}")
        _save(fig, path)
        return ComparisonPlot(path, key, None, [], fig)

    rates = {_number(row.get("learning_rate")) for row in plotted} - {None}
    show_lr = len(rates) > 1
    times = np.array([_number(row[time_key]) for row in plotted])
    values = np.array([_number(row[key]) for row in plotted])
    params = [_number(row.get(size_key)) for row in plotted]
    areas = [_marker_area(p) for p in params]
    ax.scatter(times, values, s=areas, alpha=0.55, color="tab:blue", edgecolors="navy")
    best_index = next(i for i, row in enumerate(plotted) if row is best)
    areas[best_index] += 250  # the ring around the best: its label keeps clear of it
    ax.scatter(
        times[best_index],
        values[best_index],
        s=areas[best_index],
        facecolors="none",
        edgecolors="tab:red",
        linewidths=2.5,
        zorder=3,
    )
    reference_value = _number(reference[1]) if reference is not None else None
    if reference_value is not None:
        ax.axhline(reference_value, color="dimgray", linestyle="--", linewidth=1.2, label=reference[0], zorder=1)
    if len(times) > 1 and times.min() > 0 and times.max() / times.min() > 30:
        ax.set_xscale("log")
    ax.margins(0.15)
    _size_legend(ax, [p for p in params if p is not None], size_key)
    fig.suptitle(f"Best: {_run_name(best, name_key, show_lr)} ({key} {values[best_index]:.4g})")
    skipped = len(rows) - len(plotted)
    if skipped:
        ax.set_title(f"{skipped} of {len(rows)} runs not shown: no {key} or {time_key}", fontsize=9, color="dimgray")

    # labels are placed in display space, so the layout (axes position, limits) is settled first and then frozen
    fig.draw_without_rendering()
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    names = [_run_name(row, name_key, show_lr) for row in plotted]
    weights = ["bold" if row is best else "normal" for row in plotted]
    radii = [math.sqrt(a) / 2 for a in areas]  # in points
    boxes = _label_points(ax, times, values, names, weights, radii)
    if reference_value is not None:
        pixels = [r * fig.dpi / 72 for r in radii]
        centres = ax.transData.transform(np.column_stack([times, values]))
        markers = [(x - r, y - r, x + r, y + r) for (x, y), r in zip(centres, pixels)]
        _label_reference(ax, reference_value, f"{reference[0]}: {reference_value:.3g}", boxes, markers)
    _save(fig, path)
    return ComparisonPlot(path, key, best, plotted, fig)


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


def _figure(size: tuple[float, float], dpi: int = DPI) -> Figure:
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    # print_png renders at the figure's own size and dpi: savefig would apply the user's rcParams
    # (savefig.bbox: tight, savefig.dpi), which change the pixel size
    fig.canvas.print_png(path)


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=11, color="dimgray")


def _short(name: str) -> str:
    return name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 1] + "\u2026"


def _plot_confusion_matrix(counts: np.ndarray, labels: list[str], split: str, path: Path) -> None:
    n = len(labels)
    support = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    fig = _figure(CONFUSION_MATRIX_SIZE, CONFUSION_MATRIX_DPI)
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
    _save(fig, path)


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
        value = _number(entry.get(key))
        if value is not None:
            step = _number(entry.get("step"))
            points[float(position) if step is None else step] = value
    steps = np.array(sorted(points), dtype=np.float64)
    return steps, np.array([points[s] for s in steps], dtype=np.float64)


def _plot_training_curves(
    log_history: Sequence[dict[str, Any]], metric: str | None, greater_is_better: bool | None, path: Path
) -> None:
    metric = metric or "accuracy"
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    if greater_is_better is None:
        greater_is_better = not key.endswith("loss")
    train_steps, train_loss = _series(log_history, "loss")
    eval_steps, eval_loss = _series(log_history, "eval_loss")
    metric_steps, metric_values = _series(log_history, key)
    evaluated = any(any(k.startswith("eval_") for k in entry) for entry in log_history)

    fig = _figure(TRAINING_CURVES_SIZE)
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
        _note(metric_ax, f"{key} not logged" if evaluated else "no evaluation during training")
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
    _save(fig, path)


def _plot_roc_curve(
    label_ids: np.ndarray, scores: np.ndarray, auc: float, positive: str, split: str, path: Path
) -> None:
    false_positive, true_positive, _ = roc_curve(label_ids, scores, pos_label=1)
    fig = _figure(ROC_CURVE_SIZE)
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
    _save(fig, path)


def _number(value: Any) -> float | None:
    """A finite float from a number or a numeric string; ``None`` for anything else (missing, empty, NaN)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _best(rows: list[dict[str, Any]], key: str, greater_is_better: bool) -> dict[str, Any] | None:
    """The row with the best value of ``key`` (the first of a tie)."""
    best = None
    for row in rows:
        value = _number(row.get(key))
        if value is None:
            continue
        if best is None or (value > _number(best[key]) if greater_is_better else value < _number(best[key])):
            best = row
    return best


def _marker_area(params: float | None) -> float:
    # the diameter grows by 5 points per order of magnitude (1e3 -> 15 pt, 1e8 -> 40 pt): areas proportional to the
    # count would shrink a head-only run to a dot beside a full fine-tune
    diameter = 5.0 * math.log10(max(params or 10.0, 10.0))
    return diameter**2


def _size_legend(ax: Any, params: list[float], size_key: str) -> None:
    if not params:
        return
    low, high = math.floor(math.log10(max(min(params), 1.0))), math.ceil(math.log10(max(max(params), 1.0)))
    powers = list(range(low, max(high, low + 1) + 1))
    powers = powers[:: max(1, math.ceil(len(powers) / 4))]
    handles = [
        ax.scatter([], [], s=_marker_area(10.0**p), color="tab:blue", alpha=0.55, edgecolors="navy") for p in powers
    ]
    ax.figure.legend(
        handles,
        [f"1e{p}" for p in powers],
        title=size_key.replace("_", " "),
        loc="outside right upper",
        fontsize=8,
        title_fontsize=8,
        labelspacing=2.0,
        borderpad=1.2,
        frameon=False,
    )


def _run_name(row: dict[str, Any], name_key: str, show_lr: bool) -> str:
    name = str(row.get(name_key, "?"))
    rate = _number(row.get("learning_rate"))
    already = f"lr{rate:g}" in name if rate is not None else False  # a comparison's run names carry it
    return f"{name} (lr {rate:g})" if show_lr and rate is not None and not already else name


_LABEL_FONT = 8
_Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in display pixels
_LABEL_PAD = 3.0  # points between a marker's edge and its label
_LABEL_GAP = 2.0  # points between two stacked labels


@dataclass
class _Label:
    """A run's label in display pixels: its box ``x0..x1`` of ``height``, beside the point ``(px, py)`` at
    ``offset`` from it (the marker's radius and a pad), on its right or its left; ``centre`` is where it goes."""

    x0: float
    x1: float
    height: float
    px: float
    py: float
    offset: float
    right: bool
    centre: float = 0.0


def _label_points(
    ax: Any, xs: np.ndarray, ys: np.ndarray, names: list[str], weights: list[str], radii: list[float]
) -> list[_Box]:
    """Labels each point beside its marker (``radii`` in points) so that no two labels overlap; returns the label
    boxes ``(x0, y0, x1, y1)`` in display pixels.

    A label sits right of its point, or left where the axes end first. Labels that would collide get one edge per
    side, clear of all their markers. Then labels whose horizontal extents overlap form a column, stacked in the
    order of their points' heights, each as near its point as the stacking allows (least squares: an isotonic
    regression, by pool-adjacent-violators), inside the axes where the column fits. A label away from its point is
    joined to it by a thin line. Deterministic: the same points give the same picture.
    """
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    pixels_per_point = ax.figure.dpi / 72
    labels = []
    for (px, py), name, weight, radius in zip(
        ax.transData.transform(np.column_stack([xs, ys])), names, weights, radii
    ):
        probe = ax.text(0, 0, name, fontsize=_LABEL_FONT, fontweight=weight)
        width, height = probe.get_window_extent(renderer).size
        probe.remove()
        offset = (radius + _LABEL_PAD) * pixels_per_point
        room_right, room_left = frame.x1 - (px + offset), (px - offset) - frame.x0
        right = bool(room_right >= width or room_right >= room_left)
        x0 = px + offset if right else px - offset - width
        labels.append(_Label(x0, x0 + width, height, px, py, offset, right, py))
    gap = _LABEL_GAP * pixels_per_point
    for crowd in _crowds(labels, gap):  # labels that would collide: one edge per side, clear of all their markers
        for side in (True, False):
            members = [label for label in crowd if label.right == side]
            if not members:
                continue
            edge = max(lb.px + lb.offset for lb in members) if side else min(lb.px - lb.offset for lb in members)
            for label in members:
                width = label.x1 - label.x0
                if side:
                    label.x0 = max(label.px + label.offset, min(edge, frame.x1 - width))
                else:
                    label.x0 = min(label.px - label.offset, max(edge, frame.x0 + width)) - width
                label.x1 = label.x0 + width
    for column in _columns(labels):  # formed again on the final extents: only these may not overlap
        _stack(column, gap, frame.y0 + gap, frame.y1 - gap)
    to_data = ax.transData.inverted()
    for label, x, y, name, weight, radius in zip(labels, xs, ys, names, weights, radii):
        anchor = np.array([label.x0 - 1 if label.right else label.x1 + 1, label.centre])
        ax.annotate(
            name,
            (x, y),
            xytext=((anchor[0] - label.px) / pixels_per_point, (label.centre - label.py) / pixels_per_point),
            textcoords="offset points",
            ha="left" if label.right else "right",
            va="center",
            fontsize=_LABEL_FONT,
            fontweight=weight,
        ).set_in_layout(False)  # the layout was settled before the labels: they must not move the axes
        point = np.array([label.px, label.py])
        reach = np.linalg.norm(anchor - point)
        if abs(label.centre - label.py) > label.height / 2 or reach > label.offset + 6 * pixels_per_point:
            # a leader line from the marker's edge to the label, a line of its own (the label's box stays the text)
            start = point + (anchor - point) * radius * pixels_per_point / reach
            (line_x, line_y) = to_data.transform(np.array([start, anchor])).T
            ax.plot(line_x, line_y, color="gray", linewidth=0.6, zorder=2)[0].set_in_layout(False)
    return [(lb.x0, lb.centre - lb.height / 2, lb.x1, lb.centre + lb.height / 2) for lb in labels]


def _crowds(labels: list[_Label], gap: float) -> list[list[_Label]]:
    """The labels grouped by collision: two labels whose boxes beside their points would overlap (or come closer
    than ``gap``) are in one crowd, and so is what collides with either."""
    crowd = list(range(len(labels)))  # union-find: each label's representative

    def find(i: int) -> int:
        while crowd[i] != i:
            i = crowd[i]
        return i

    for i, a in enumerate(labels):
        for j in range(i + 1, len(labels)):
            b = labels[j]
            if a.x0 < b.x1 + gap and b.x0 < a.x1 + gap and abs(a.py - b.py) < (a.height + b.height) / 2 + gap:
                crowd[find(j)] = find(i)
    groups: dict[int, list[_Label]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(find(i), []).append(label)
    return list(groups.values())


def _columns(labels: list[_Label]) -> list[list[_Label]]:
    """The labels grouped into columns: a label whose horizontal extent overlaps a column's joins it."""
    columns: list[list[_Label]] = []
    reach = -math.inf
    for label in sorted(labels, key=lambda lb: lb.x0):  # a sweep over the left edges (a stable sort: ties keep order)
        if columns and label.x0 < reach:
            columns[-1].append(label)
        else:
            columns.append([label])
            reach = -math.inf
        reach = max(reach, label.x1)
    return columns


def _stack(column: list[_Label], gap: float, bottom: float, top: float) -> None:
    """Sets the centres of a column's labels: in the order of their points' heights, ``gap`` apart, as near their
    points as can be, and inside ``bottom..top`` where the column fits."""
    column = sorted(column, key=lambda lb: (lb.py, lb.px))
    heights = np.array([lb.height for lb in column])
    # centre k sits at least floor[k] above centre 0: with q_k = centre_k - floor[k] the stack is q non-decreasing
    floor = np.concatenate([[0.0], np.cumsum((heights[:-1] + heights[1:]) / 2 + gap)])
    centres = _isotonic(np.array([lb.py for lb in column]) - floor) + floor
    low, high = centres[0] - heights[0] / 2, centres[-1] + heights[-1] / 2
    if high - low <= top - bottom:
        centres += max(0.0, bottom - low) - max(0.0, high - top)
    for label, centre in zip(column, centres):
        label.centre = float(centre)


def _isotonic(targets: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence nearest to ``targets`` in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for target in targets:
        blocks.append([float(target), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, count = blocks.pop()
            blocks[-1] = [
                (blocks[-1][0] * blocks[-1][1] + mean * count) / (blocks[-1][1] + count),
                blocks[-1][1] + count,
            ]
    return np.array([mean for mean, count in blocks for _ in range(int(count))])


def _label_reference(ax: Any, value: float, text: str, labels: list[_Box], markers: list[_Box]) -> None:
    """Names the reference line at ``value`` (above it, else below it, leftmost first) where its label covers no
    run label and no marker; else where it covers no run label; where every place is taken, at the left above the
    line. Boxes are ``(x0, y0, x1, y1)`` in display pixels."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    pixels_per_point = ax.figure.dpi / 72
    probe = ax.text(0, 0, text, fontsize=_LABEL_FONT, color="dimgray")
    width, height = probe.get_window_extent(renderer).size
    probe.remove()
    line = ax.transData.transform((ax.get_xlim()[0], value))[1]  # the line's height in display pixels
    gap, margin = _LABEL_GAP * pixels_per_point, 4 * pixels_per_point
    places = [
        (x0, line + side * (height / 2 + gap))
        for side in (1, -1)
        for x0 in np.arange(
            frame.x0 + margin, max(frame.x1 - margin - width, frame.x0 + margin + 1), 5 * pixels_per_point
        )
    ]

    def free(place: tuple[float, float], taken: list[_Box]) -> bool:
        x0, centre = place
        return not any(
            x0 - gap < b[2]
            and b[0] < x0 + width + gap
            and centre - height / 2 - gap < b[3]
            and b[1] < centre + height / 2 + gap
            for b in taken
        )

    x0, centre = next(
        (place for taken in (labels + markers, labels) for place in places if free(place, taken)), places[0]
    )
    ax.annotate(
        text,
        ((x0 - frame.x0) / frame.width, value),
        xycoords=("axes fraction", "data"),
        xytext=(0, (centre - line) / pixels_per_point),
        textcoords="offset points",
        ha="left",
        va="center",
        fontsize=_LABEL_FONT,
        color="dimgray",
    ).set_in_layout(False)
