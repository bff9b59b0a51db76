"""Labels of every shape: which shape a run's labels have (``--problem_type``, else inferred from the label column as
the HF example infers it), and their encoding into the ``labels`` column the Trainer reads.

* **single-label**: one class per row (:func:`~warmstart.data.labels.encode_labels`, a ``ClassLabel``);
* **multi-label**: a set of labels per row, from a column of lists (a ``datasets`` list feature, a hub dataset's
  ``Sequence(ClassLabel)``, JSON lists in a table cell ``["red", "warm"]``, or text split by ``--label_separator``),
  or from several 0/1 columns named by ``--label_column_names``: a multi-hot ``float32`` vector, labels named from
  train;
* **regression**: a number per row (or one per column of ``--label_column_names``): ``float32``, in the targets'
  units (the loss standardises them with the train split's scale, :func:`target_scale`).

Inference, when ``--problem_type`` is not given: lists (or ``--label_separator``) -> multi-label; several columns of
0/1 -> multi-label, of other numbers -> regression; one column of numbers that are not all whole -> regression;
anything else -> single-label (whole numbers stay classes: ``--problem_type regression`` scores them as numbers).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
from datasets import ClassLabel, DatasetDict, Value

from warmstart.data.columns import LABEL_COLUMN, require_column, row_numbers
from warmstart.data.labels import encode_labels, label_order, leave_out_unlabeled
from warmstart.errors import WarmstartError
from warmstart.problems import MULTI_LABEL, REGRESSION, SINGLE_LABEL, LabelSpace, problem_named

logger = logging.getLogger(__name__)


def label_columns(data_args: Any) -> list[str]:
    """The label columns a run reads: ``--label_column_names`` (comma-separated), else ``--label_column_name``."""
    names = getattr(data_args, "label_column_names", None)
    if names:
        return [name.strip() for name in names.split(",") if name.strip()]
    return [data_args.label_column_name]


def encode_targets(splits: DatasetDict, data_args: Any) -> LabelSpace:
    """Decides the shape of the labels and encodes them as ``labels`` in every split (names from train).

    Args:
        splits: the raw splits; changed in place.
        data_args: ``label_column_name`` / ``label_column_names``, ``label_separator``, ``problem_type``.

    Returns:
        The run's :class:`~warmstart.problems.LabelSpace` (without a regression's scale, which is train's once the
        splits are final: :func:`target_scale`).

    Raises:
        WarmstartError: a missing column, a shape the data contradicts, or labels that cannot be encoded (see
            each shape).
    """
    columns = label_columns(data_args)
    flag = "--label_column_names" if len(columns) > 1 else "--label_column_name"
    for column in columns:
        require_column(splits, column, flag)
    separator = getattr(data_args, "label_separator", None)
    asked = getattr(data_args, "problem_type", None)
    inferred, why = infer_problem_type(splits["train"], columns, separator)
    problem_type = asked or inferred
    if asked:
        problem_named(asked)
        why = "--problem_type"
        _check_asked(splits["train"], columns, asked, inferred, separator)
    if problem_type == SINGLE_LABEL:
        if len(columns) > 1:
            raise WarmstartError(
                f"{flag} names {len(columns)} columns, and a single-label run reads one: give one "
                "--label_column_name, or --problem_type multi_label_classification for several 0/1 columns"
            )
        names = encode_labels(splits, columns[0])
    elif problem_type == MULTI_LABEL:
        names = _encode_multi_label(splits, columns, separator)
    else:
        names = _encode_regression(splits, columns)
    logger.info("labels: %s (%s), %d output(s)", problem_named(problem_type).description, why, len(names))
    return LabelSpace(problem_type, names, inferred=why)


def infer_problem_type(train: datasets.Dataset, columns: Sequence[str], separator: str | None) -> tuple[str, str]:
    """The label shape the train split's label columns suggest, and why (see the module docstring)."""
    if len(columns) > 1:
        values = [v for column in columns for v in train[column] if v is not None]
        if all(_is_flag(v) for v in values):
            return MULTI_LABEL, f"{len(columns)} label columns of 0/1"
        return REGRESSION, f"{len(columns)} label columns of numbers"
    column = columns[0]
    feature = train.features[column]
    if _is_list_feature(feature):
        return MULTI_LABEL, f"column {column!r} holds lists of labels"
    if separator:
        return MULTI_LABEL, f"--label_separator {separator!r}"
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        cells = [v.strip() for v in train[column] if isinstance(v, str) and v.strip()]
        if cells and all(c.startswith("[") for c in cells):
            return MULTI_LABEL, f"column {column!r} holds JSON lists of labels"
    if isinstance(feature, Value) and feature.dtype.startswith("float"):
        fractional = any(isinstance(v, float) and math.isfinite(v) and not v.is_integer() for v in train[column])
        if fractional:
            return REGRESSION, f"column {column!r} holds fractional numbers"
    return SINGLE_LABEL, f"column {column!r} holds one class per row"


def _check_asked(train: datasets.Dataset, columns: Sequence[str], asked: str, inferred: str, sep: str | None) -> None:
    """Refuses a ``--problem_type`` the label column cannot have."""
    if asked == REGRESSION and inferred == MULTI_LABEL and len(columns) == 1:
        raise WarmstartError(
            f"--problem_type regression, but column {columns[0]!r} holds lists of labels: drop --problem_type (it "
            "reads lists as multi-label), or give a column of numbers"
        )
    if asked == REGRESSION:
        for column in columns:
            bad = next((v for v in train[column] if v is not None and as_number(v) is None), None)
            if bad is not None:
                raise WarmstartError(
                    f"--problem_type regression, but column {column!r} holds {str(bad)[:40]!r}, not a number: give "
                    "a column of numbers, or drop --problem_type to classify its values"
                )
    if asked == SINGLE_LABEL and inferred == MULTI_LABEL and len(columns) == 1 and not sep:
        raise WarmstartError(
            f"--problem_type single_label_classification, but column {columns[0]!r} holds lists of labels: use "
            "--problem_type multi_label_classification, or give one class per row"
        )


def _is_list_feature(feature: Any) -> bool:
    return isinstance(feature, (list, datasets.Sequence)) or type(feature).__name__ in ("List", "LargeList")


def _is_flag(value: Any) -> bool:
    number = as_number(value)
    return number is not None and number in (0.0, 1.0)


def as_number(value: Any) -> float | None:
    """A cell as a number (``"2.5"`` too, booleans as 0 / 1), or ``None``: not one."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float, np.number)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def read_label_sets(
    values: Sequence[Any], column: str, separator: str | None = None, names: Sequence[str] | None = None
) -> list:
    """Each row's labels as a list of names (``None``: missing). ``names``: a ``Sequence(ClassLabel)``'s class
    names, which its integer values index."""
    sets: list[list[str] | None] = []
    for value in values:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            sets.append(None)
            continue
        if isinstance(value, str):
            text = value.strip()
            if separator:
                items: list[Any] = [part for part in text.split(separator)] if text else []
            elif text.startswith("["):
                try:
                    items = json.loads(text)
                except json.JSONDecodeError as err:
                    raise WarmstartError(
                        f"column {column!r} holds {text[:60]!r}, which is not a JSON list ({err.msg}): write lists "
                        'as ["a", "b"], or give --label_separator'
                    ) from None
                if not isinstance(items, list):
                    items = [items]
            else:
                items = [text] if text else []
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [value]
        labels = []
        for item in items:
            if names is not None and isinstance(item, int):
                item = names[item]
            elif isinstance(item, float) and item.is_integer():
                item = int(item)
            label = str(item).strip()
            if label and label not in labels:
                labels.append(label)
        sets.append(labels)
    return sets


def _encode_multi_label(splits: DatasetDict, columns: Sequence[str], separator: str | None) -> list[str]:
    """Multi-hot ``float32`` vectors in ``labels``; the label names (train's, sorted) in order.

    Raises:
        WarmstartError: a missing value, a label train never has, no label in any train row, or (several columns)
            a value that is not 0/1.
    """
    if len(columns) > 1:
        return _encode_flag_columns(splits, columns)
    column = columns[0]
    feature = splits["train"].features[column]
    inner = getattr(feature, "feature", None)
    class_names = list(inner.names) if isinstance(inner, ClassLabel) else None
    sets = {split: read_label_sets(data[column], column, separator, class_names) for split, data in splits.items()}
    leave_out_unlabeled(splits, sets, column, " (an empty list [] is a row without labels)")
    seen = {label for row in sets["train"] for label in row}
    if not seen:
        raise WarmstartError(
            f"column {column!r} has no label in any train row: a multi-label run needs examples of each label"
        )
    names = sorted(seen, key=label_order(seen))
    index = {name: i for i, name in enumerate(names)}
    for split, rows in sets.items():
        for row, labels in enumerate(rows):
            unseen = next((label for label in labels if label not in index), None)
            if unseen is not None:
                raise WarmstartError(
                    f"label {unseen!r} (row {row + 1} of the {split} split) is never in train: add training examples "
                    "for it or drop it from the evaluation data"
                )
    counts = np.zeros(len(names), dtype=int)
    for labels in sets["train"]:
        counts[[index[label] for label in labels]] += 1
    never_negative = [names[i] for i in np.flatnonzero(counts == len(sets["train"]))]
    if never_negative:
        logger.warning("labels on every train row (nothing to learn for them): %s", ", ".join(never_negative[:5]))
    for split, rows in sets.items():
        vectors = np.zeros((len(rows), len(names)), dtype=np.float32)
        for row, labels in enumerate(rows):
            vectors[row, [index[label] for label in labels]] = 1.0
        splits[split] = _with_labels(splits[split], [column], vectors.tolist(), len(names))
    return names


def _encode_flag_columns(splits: DatasetDict, columns: Sequence[str]) -> list[str]:
    for split, data in splits.items():
        for column in columns:
            bad = [row for row, v in enumerate(data[column]) if not _is_flag(v)]
            if bad:
                shown = data[column][bad[0]]
                raise WarmstartError(
                    f"column {column!r} of the {split} split holds {shown!r} (rows {row_numbers(bad)}, counting from "
                    "1): several label columns are 0/1 flags, one per label"
                )
    positives = {c: sum(as_number(v) for v in splits["train"][c]) for c in columns}
    if not any(positives.values()):
        raise WarmstartError(
            f"the label columns {', '.join(columns)} are 0 in every train row: a multi-label run needs positives"
        )
    for split, data in splits.items():
        vectors = np.stack([np.asarray([as_number(v) for v in data[c]], dtype=np.float32) for c in columns], axis=1)
        splits[split] = _with_labels(data, columns, vectors.tolist(), len(columns))
    return list(columns)


def _encode_regression(splits: DatasetDict, columns: Sequence[str]) -> list[str]:
    """``float32`` targets in ``labels`` (a vector where there are several columns); the target names.

    Raises:
        WarmstartError: a value that is not a number, NaN or infinite; a missing value in train.
    """
    rows: dict[str, list] = {}
    for split, data in splits.items():
        table = []
        for column in columns:
            cells = data[column]
            numbers = [as_number(v) for v in cells]
            blank = {
                row for row, cell in enumerate(cells) if cell is None or (isinstance(cell, str) and not cell.strip())
            }
            not_numbers = [row for row, n in enumerate(numbers) if n is None and row not in blank]
            if not_numbers:
                raise WarmstartError(
                    f"column {column!r} of the {split} split holds {str(cells[not_numbers[0]])[:40]!r}, not a number "
                    f"(rows {row_numbers(not_numbers)}, counting from 1): regression targets are numbers"
                )
            bad = [row for row, n in enumerate(numbers) if n is not None and math.isinf(n)]
            if bad:
                raise WarmstartError(
                    f"column {column!r} of the {split} split holds {numbers[bad[0]]} (rows {row_numbers(bad)}, "
                    "counting from 1): regression targets must be finite numbers"
                )
            table.append([None if n is None or math.isnan(n) else n for n in numbers])
        # a row is missing where any of its targets is
        rows[split] = [None if None in row else row for row in zip(*table)]
    leave_out_unlabeled(splits, rows, ", ".join(columns))
    values = {
        split: np.asarray(cells, dtype=np.float32).reshape(len(cells), len(columns)) for split, cells in rows.items()
    }
    for split, targets in values.items():
        cells = targets[:, 0].tolist() if len(columns) == 1 else targets.tolist()
        splits[split] = _with_labels(splits[split], columns, cells, len(columns) if len(columns) > 1 else None)
    return list(columns)


def _with_labels(data: datasets.Dataset, columns: Sequence[str], cells: list, length: int | None) -> datasets.Dataset:
    """``data`` with ``columns`` replaced by a ``labels`` column of ``cells`` (float32; a fixed-length list feature
    when ``length``)."""
    dropped = [c for c in (*columns, LABEL_COLUMN) if c in data.column_names]
    data = data.remove_columns(dropped)
    feature = datasets.Sequence(Value("float32"), length=length) if length else Value("float32")
    return data.add_column(LABEL_COLUMN, cells, feature=feature)


def target_scale(train: datasets.Dataset, names: Sequence[str]) -> tuple[list[float], list[float]]:
    """Each regression target's mean and standard deviation over the train split (what the loss standardises by).

    Raises:
        WarmstartError: a target that is constant over train (nothing to learn).
    """
    targets = np.asarray(train.with_format(None)[LABEL_COLUMN], dtype=np.float64).reshape(len(train), -1)
    mean, std = targets.mean(axis=0), targets.std(axis=0)
    constant = [name for name, s in zip(names, std) if not s > 0]
    if constant:
        raise WarmstartError(
            f"the regression target {constant[0]!r} is constant over the train split "
            f"({mean[list(names).index(constant[0])]:g}): there is nothing to learn; check the label column"
        )
    return [float(m) for m in mean], [float(s) for s in std]
