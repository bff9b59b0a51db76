"""Column names as the user gave them, the check that a column exists (naming the nearest ones), and row numbers for
messages."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence

import datasets
from datasets import ClassLabel, DatasetDict

from warmstart.errors import WarmstartError

logger = logging.getLogger(__name__)


LABEL_COLUMN = "labels"  # what the Trainer and the models expect


def column_names(data: datasets.Dataset) -> list[str]:
    """The columns as the user named them: the encoded ``labels`` column shows as the label column it came from."""
    feature = data.features.get(LABEL_COLUMN)
    original = feature.id if isinstance(feature, ClassLabel) else None
    return [original if name == LABEL_COLUMN and original else name for name in data.column_names]


def require_column(splits: DatasetDict, column: str, flag: str) -> None:
    for split, data in splits.items():
        if column not in data.column_names:
            names = column_names(data)
            shown = ", ".join(names)
            raise WarmstartError(
                f"column {column!r} is not in the {split} split (columns: {shown}){near_miss(column, names)}: "
                f"set {flag} to one of them"
            )


def near_miss(column: str, names: Sequence[str]) -> str:
    """``; nearest: 'label'`` when a column name is close to the one asked for (case, spaces, a typo), else ``""``."""
    folded = {name.strip().casefold(): name for name in names}
    close = [folded[column.strip().casefold()]] if column.strip().casefold() in folded else []
    close += [n for n in difflib.get_close_matches(column, names, n=2, cutoff=0.75) if n not in close]
    return f"; nearest: {', '.join(repr(n) for n in close)}" if close else ""


def row_numbers(rows: Sequence[int], shown: int = 5) -> str:
    """Row numbers counted from 1, the first ``shown`` of them."""
    head = ", ".join(str(r + 1) for r in rows[:shown])
    return head + (", ..." if len(rows) > shown else "")
