"""Placing the labels of a scatter plot's points: each beside its marker, none overlapping another (crowded labels
stacked apart and joined to their points by thin lines), and the label of a reference line where it covers no run
label and no marker. The geometry is worked in display pixels, on axes whose layout is already settled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

_LABEL_FONT = 8
Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in display pixels
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


def label_points(
    ax: Any, xs: np.ndarray, ys: np.ndarray, names: list[str], weights: list[str], radii: list[float]
) -> list[Box]:
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


def label_reference(ax: Any, value: float, text: str, labels: list[Box], markers: list[Box]) -> None:
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

    def free(place: tuple[float, float], taken: list[Box]) -> bool:
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
