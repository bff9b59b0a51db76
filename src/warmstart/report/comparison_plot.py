"""The strategy-comparison plot: the validation metric of each run against its train wall time, marker size for
its trainable parameters, the best run ringed and named in the title, an optional reference level (such as the
majority class's), every run labelled without overlaps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from warmstart.report.figures import COMPARISON_SIZE, finite_number, new_figure, save_figure, write_note
from warmstart.report.labels import label_points, label_reference


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

    A row holding ``<metric>_ci_low`` / ``<metric>_ci_high`` gets its confidence interval drawn as a vertical bar.
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
        return any(finite_number(row.get(name)) is not None for row in rows)

    key = f"eval_{metric}" if not reported(metric) and reported(f"eval_{metric}") else metric
    if greater_is_better is None:
        greater_is_better = "loss" not in key
    plotted = [
        row for row in rows if finite_number(row.get(key)) is not None and finite_number(row.get(time_key)) is not None
    ]
    best = best if best is not None and any(row is best for row in plotted) else _best(plotted, key, greater_is_better)

    fig = new_figure(COMPARISON_SIZE)
    ax = fig.add_subplot()
    ax.set_xlabel("train wall time (s)")
    ax.set_ylabel(key)
    ax.grid(True, alpha=0.3)
    if best is None:
        fig.suptitle(f"Strategy comparison: no run reports {key}")
        write_note(ax, f"none of the {len(rows)} runs reports {key}")
        save_figure(fig, path)
        return ComparisonPlot(path, key, None, [], fig)

    rates = {finite_number(row.get("learning_rate")) for row in plotted} - {None}
    show_lr = len(rates) > 1
    times = np.array([finite_number(row[time_key]) for row in plotted])
    values = np.array([finite_number(row[key]) for row in plotted])
    params = [finite_number(row.get(size_key)) for row in plotted]
    areas = [_marker_area(p) for p in params]
    lows = [finite_number(row.get(f"{key}_ci_low")) for row in plotted]
    highs = [finite_number(row.get(f"{key}_ci_high")) for row in plotted]
    with_interval = [i for i in range(len(plotted)) if lows[i] is not None and highs[i] is not None]
    if with_interval:  # each run's confidence interval (warmstart.uncertainty) as a vertical bar
        ax.errorbar(
            times[with_interval],
            values[with_interval],
            yerr=[
                [max(values[i] - lows[i], 0.0) for i in with_interval],
                [max(highs[i] - values[i], 0.0) for i in with_interval],
            ],
            fmt="none",
            ecolor="navy",
            elinewidth=1.0,
            capsize=3,
            alpha=0.7,
            zorder=2,
        )
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
    reference_value = finite_number(reference[1]) if reference is not None else None
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
    boxes = label_points(ax, times, values, names, weights, radii)
    if reference_value is not None:
        pixels = [r * fig.dpi / 72 for r in radii]
        centres = ax.transData.transform(np.column_stack([times, values]))
        markers = [(x - r, y - r, x + r, y + r) for (x, y), r in zip(centres, pixels)]
        label_reference(ax, reference_value, f"{reference[0]}: {reference_value:.3g}", boxes, markers)
    save_figure(fig, path)
    return ComparisonPlot(path, key, best, plotted, fig)


def _best(rows: list[dict[str, Any]], key: str, greater_is_better: bool) -> dict[str, Any] | None:
    """The row with the best value of ``key`` (the first of a tie)."""
    best = None
    for row in rows:
        value = finite_number(row.get(key))
        if value is None:
            continue
        if best is None or (
            value > finite_number(best[key]) if greater_is_better else value < finite_number(best[key])
        ):
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
    rate = finite_number(row.get("learning_rate"))
    already = f"lr{rate:g}" in name if rate is not None else False  # a comparison's run names carry it
    return f"{name} (lr {rate:g})" if show_lr and rate is not None and not already else name
