"""Evaluation reports with plots: a confusion matrix, per-class precision / recall / F1, training curves, a ROC curve
for binary tasks (:mod:`warmstart.report.evaluation`), per-label tables and precision-recall curves for
multi-label heads and predicted-against-true plots for regression (:mod:`warmstart.report.targets`), and the
strategy-comparison plot (:mod:`warmstart.report.comparison_plot`, its labels placed by
:mod:`warmstart.report.labels`).

The figures are drawn on :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas directly: pyplot is
never imported, so no window opens, no backend is selected globally and no figure is left registered anywhere.
Figure sizes and the resolution are fixed, so the pixel size of every PNG is known in advance (see the ``*_SIZE``
constants, in inches, times :data:`DPI`, or :data:`CONFUSION_MATRIX_DPI` for the confusion matrix;
:mod:`warmstart.report.figures`).
"""

from __future__ import annotations

from warmstart.report.comparison_plot import ComparisonPlot, write_comparison_plot
from warmstart.report.evaluation import (
    ANNOTATED_CLASSES,
    MARKDOWN_CLASS_ROWS,
    EvaluationReport,
    confusion_counts,
    plot_training_curves,
    write_evaluation_report,
)
from warmstart.report.figures import (
    COMPARISON_SIZE,
    CONFUSION_MATRIX_DPI,
    CONFUSION_MATRIX_SIZE,
    DPI,
    ROC_CURVE_SIZE,
    TRAINING_CURVES_SIZE,
)
from warmstart.report.targets import write_multi_label_report, write_regression_report

__all__ = [
    "ANNOTATED_CLASSES",
    "COMPARISON_SIZE",
    "CONFUSION_MATRIX_DPI",
    "CONFUSION_MATRIX_SIZE",
    "DPI",
    "MARKDOWN_CLASS_ROWS",
    "ROC_CURVE_SIZE",
    "TRAINING_CURVES_SIZE",
    "ComparisonPlot",
    "EvaluationReport",
    "confusion_counts",
    "plot_training_curves",
    "write_comparison_plot",
    "write_evaluation_report",
    "write_multi_label_report",
    "write_regression_report",
]
