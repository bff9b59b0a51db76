"""How the labels of an evaluation split differ from train's, for the data checks (:mod:`warmstart.data.leakage`):
the total variation distance of the class frequencies beside what sampling alone gives (single-label), per-label
frequencies (multi-label), standardized mean differences of the targets (regression), and the classes rare in train."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from warmstart.data.columns import LABEL_COLUMN
from warmstart.problems import MULTI_LABEL, REGRESSION, LabelSpace

logger = logging.getLogger("warmstart.data.leakage")


def arrow_column(data: datasets.Dataset, column: str) -> pa.Array:
    values = data.with_format("arrow")[column]
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


# ------------------------------------------------------------------------------------------------------------- keys


def label_values(data: datasets.Dataset) -> np.ndarray:
    """The ``labels`` column as numbers: one per row, or a row of them (multi-hot vectors, several targets)."""
    column = arrow_column(data, LABEL_COLUMN)
    if isinstance(column.type, (pa.ListType, pa.LargeListType, pa.FixedSizeListType)):
        return column.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(column), -1)
    return column.to_numpy(zero_copy_only=False).astype(np.float64)


# --------------------------------------------------------------------------------------------------------- matching


def label_shift(train: datasets.Dataset, other: datasets.Dataset, labels: LabelSpace) -> dict[str, Any]:
    """How ``other``'s labels differ from train's, by shape (see :func:`check_splits`); ``shifted``: more than 0.1
    apart (0.2 standard deviations for a regression's means) and beyond what sampling alone would give."""
    before, after = label_values(train), label_values(other)
    n, names = len(after), labels.names
    if labels.problem_type == REGRESSION:
        before, after = before.reshape(len(before), -1), after.reshape(n, -1)
        noise = math.sqrt(1 / len(before) + 1 / n)
        targets = []
        for j, name in enumerate(names):
            mean, std = after[:, j].mean(), after[:, j].std()
            train_mean, train_std = before[:, j].mean(), before[:, j].std()
            pooled = math.sqrt((std**2 + train_std**2) / 2)
            difference = (mean - train_mean) / pooled if pooled > 0 else 0.0
            targets.append(
                {
                    "target": name,
                    "train_mean": _round(train_mean),
                    "train_std": _round(train_std),
                    "mean": _round(mean),
                    "std": _round(std),
                    "standardized_mean_difference": _round(difference),
                    "shifted": bool(abs(difference) >= 0.2 and abs(difference) > 3 * noise),
                }
            )
        return {"targets": targets, "shifted": any(t["shifted"] for t in targets)}
    if labels.problem_type == MULTI_LABEL:
        p, q = before.mean(axis=0), after.mean(axis=0)
        gap = np.abs(q - p)
        shifted = (gap >= 0.1) & (gap > 3 * np.sqrt(p * (1 - p) / n))
        largest = np.argsort(-gap, kind="stable")[:5]
        return {
            "mean_absolute_difference": _round(gap.mean()),
            "largest": [{"label": names[i], "train": _round(p[i]), "frequency": _round(q[i])} for i in largest],
            "shifted_labels": [names[i] for i in np.flatnonzero(shifted)],
            "rare_in_train": _rare(names, p, q),
            "shifted": bool(shifted.any()),
        }
    p = np.bincount(before.astype(int), minlength=len(names)) / len(before)
    q = np.bincount(after.astype(int), minlength=len(names)) / n
    distance = 0.5 * np.abs(p - q).sum()
    expected = 0.5 * math.sqrt(2 / math.pi) * np.sqrt(p * (1 - p) / n).sum()
    return {
        "total_variation": _round(distance),
        "expected_from_sampling": _round(expected),
        "shifted": bool(distance >= 0.1 and distance > 2 * expected),
        "rare_in_train": _rare(names, p, q),
    }


def _rare(names: Sequence[str], train: np.ndarray, other: np.ndarray) -> list[dict[str, Any]]:
    """Classes (labels) of the evaluation split at least five times rarer in train."""
    return [
        {"label": names[i], "train": _round(train[i]), "frequency": _round(other[i])}
        for i in np.flatnonzero((other > 0) & (train * 5 <= other))
    ]


def _round(value: float) -> float:
    return round(float(value), 4)


def log_shift(name: str, shift: dict[str, Any]) -> None:
    if "total_variation" in shift:
        message = (
            f"labels of {name} vs train: total variation {shift['total_variation']:.2f} (sampling alone gives about "
            f"{shift['expected_from_sampling']:.2f})"
        )
        logger.log(logging.WARNING if shift["shifted"] else logging.INFO, "%s", message)
    elif "targets" in shift:
        for target in shift["targets"]:
            message = (
                f"target {target['target']!r} of {name} vs train: mean {target['mean']:g} vs {target['train_mean']:g} "
                f"(standardized mean difference {target['standardized_mean_difference']:.2f})"
            )
            logger.log(logging.WARNING if target["shifted"] else logging.INFO, "%s", message)
    elif shift["shifted_labels"]:
        shown = ", ".join(
            f"{t['label']!r} {t['frequency']:.0%} vs {t['train']:.0%}"
            for t in shift["largest"]
            if t["label"] in shift["shifted_labels"]
        )
        logger.warning("label frequencies of %s differ from train's: %s", name, shown)
    if shift.get("rare_in_train"):
        shown = ", ".join(f"{r['label']!r} {r['frequency']:.0%} vs {r['train']:.0%}" for r in shift["rare_in_train"])
        logger.warning("in %s, labels at least five times rarer in train: %s", name, shown)
