"""Shared figure helpers of the reports: the fixed figure sizes and resolution, figures drawn on a
:class:`matplotlib.figure.Figure` rendered by the Agg canvas directly (pyplot is never imported, so no window opens,
no backend is selected globally and no figure is left registered anywhere) and saved at their own size, so that the
pixel size of every PNG is known in advance (the ``*_SIZE`` constants, in inches, times :data:`DPI`, or
:data:`CONFUSION_MATRIX_DPI` for the confusion matrix), and the reading of plotted values.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
CONFUSION_MATRIX_SIZE = (8.0, 8.0)  # at CONFUSION_MATRIX_DPI: 1200 x 1200 px
CONFUSION_MATRIX_DPI = 150  # finer than the others: 100 classes get ~9 px cells and 8 px tick labels
TRAINING_CURVES_SIZE = (8.0, 6.0)  # 800 x 600 px
ROC_CURVE_SIZE = (6.0, 6.0)  # 600 x 600 px
COMPARISON_SIZE = (8.0, 6.0)  # 800 x 600 px


def new_figure(size: tuple[float, float], dpi: int = DPI) -> Figure:
    """A figure of ``size`` inches at ``dpi``, with the constrained layout, on an Agg canvas of its own."""
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    """Writes ``fig`` to ``path`` as a PNG, at the figure's own size and resolution."""
    # print_png renders at the figure's own size and dpi: savefig would apply the user's rcParams
    # (savefig.bbox: tight, savefig.dpi), which change the pixel size
    fig.canvas.print_png(path)


def write_note(ax: Any, text: str) -> None:
    """Writes ``text`` in the middle of the axes, in gray: what stands where there is nothing to plot."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=11, color="dimgray")


def finite_number(value: Any) -> float | None:
    """A finite float from a number or a numeric string; ``None`` for anything else (missing, empty, NaN)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
