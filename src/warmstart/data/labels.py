"""Label encoding: one ``ClassLabel`` column ``labels`` in every split, names from train; ``1``, ``1.0`` and ``"1"``
are one class."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from datasets import ClassLabel, DatasetDict, Value

from warmstart.data.columns import LABEL_COLUMN, require_column, row_numbers
from warmstart.errors import WarmstartError

logger = logging.getLogger(__name__)


def encode_labels(splits: DatasetDict, label_column: str) -> list[str]:
    """Encodes the label column as ``labels`` (``ClassLabel``) in every split, with names from train.

    String and integer labels are both fine, and one label written as ``1``, ``1.0`` or ``"1"`` (across rows or
    splits) is one class; strings are trimmed; integer class names keep their numeric order. A non-train split
    without any label (an unlabeled test file) is left out, with a warning. A label that train never saw, a missing
    label elsewhere, fractional numbers and lists of labels are errors.

    Returns:
        The class names, in id order.

    Raises:
        WarmstartError: a missing column, a missing label, or a label outside the training set.
    """
    require_column(splits, label_column, "--label_column_name")
    train_feature = splits["train"].features[label_column]
    if isinstance(train_feature, ClassLabel):
        names = list(train_feature.names)
        train_ids = set(splits["train"].unique(label_column))
        for split in list(splits):
            ids = set(splits[split].unique(label_column))
            if split != "train" and ids == {-1}:  # an unlabeled test split, as in GLUE: nothing to score
                logger.warning("the %s split has no labels (all -1): it is left out", split)
                del splits[split]
                continue
            unseen = ids - train_ids
            if unseen:
                shown = names[min(unseen)] if min(unseen) >= 0 else min(unseen)
                raise WarmstartError(
                    f"label {shown!r} is in the {split} split but never in train: add training "
                    "examples for it or drop it from the evaluation data"
                )
            data = splits[split]
            if label_column != LABEL_COLUMN:
                if LABEL_COLUMN in data.column_names:
                    data = data.remove_columns(LABEL_COLUMN)
                data = data.rename_column(label_column, LABEL_COLUMN)
            splits[split] = data.cast_column(LABEL_COLUMN, ClassLabel(names=names, id=label_column))
        return names

    keys = {split: _label_keys(data[label_column], label_column) for split, data in splits.items()}
    leave_out_unlabeled(splits, keys, label_column)
    seen = sorted(set(keys["train"]), key=label_order(set(keys["train"])))
    to_id = {key: i for i, key in enumerate(seen)}
    for split, split_keys in keys.items():
        unseen = next((key for key in split_keys if key not in to_id), None)
        if unseen is not None:
            raise WarmstartError(
                f"label {unseen!r} is in the {split} split but never in train: add training "
                "examples for it or drop it from the evaluation data"
            )
    names = list(seen)

    def to_ids(batch: dict[str, list]) -> dict[str, list[int]]:
        return {"_label_id": [to_id[key] for key in _label_keys(batch[label_column], label_column, note=False)]}

    for split, data in splits.items():
        # a fresh column of int64: writing ids back into a string label column would store '0', '1'
        features = data.features.copy()
        features["_label_id"] = Value("int64")
        data = data.map(to_ids, batched=True, features=features, desc=f"encoding {split} labels")
        data = data.remove_columns(label_column)
        if LABEL_COLUMN in data.column_names:
            data = data.remove_columns(LABEL_COLUMN)
        # the feature's id keeps the user's column name, for messages that list the columns
        splits[split] = data.rename_column("_label_id", LABEL_COLUMN).cast_column(
            LABEL_COLUMN, ClassLabel(names=names, id=label_column)
        )
    return names


def leave_out_unlabeled(splits: DatasetDict, values: dict[str, list], column: str, hint: str = "") -> None:
    """Leaves out (with a warning) a split other than train whose every label is missing, an unlabeled test file
    as GLUE ships them, from ``splits`` and from ``values`` (each split's labels, ``None`` where missing).

    Raises:
        WarmstartError: a missing label anywhere else, with the count and the first rows (``hint`` appended).
    """
    for split in list(splits):
        missing = [row for row, value in enumerate(values[split]) if value is None]
        if split != "train" and missing and len(missing) == len(values[split]):
            logger.warning("the %s split has no %r values: it is left out", split, column)
            del splits[split], values[split]
        elif missing:
            raise WarmstartError(
                f"{len(missing)} data row(s) of the {split} split have no {column!r} value (rows "
                f"{row_numbers(missing)}, counting from 1): fill or drop them{hint}"
            )


def _label_keys(values: Sequence[Any], column: str, note: bool = True) -> list[str | None]:
    """Each label as its class name: strings trimmed, whole numbers written as integers whether they were stored as
    ints, floats (``1.0``, as pandas reads a numeric column with gaps) or strings (``"1"``); ``None`` for a missing
    label (``None``, NaN, a blank string).

    Raises:
        WarmstartError: labels that are lists (several labels per example) or fractional numbers.
    """
    keys: list[str | None] = []
    whole_floats = False
    for value in values:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            keys.append(None)
        elif isinstance(value, int):  # bools included: True, False
            keys.append(str(value))
        elif isinstance(value, float):
            if not value.is_integer():
                raise WarmstartError(
                    f"column {column!r} holds fractional numbers (e.g. {value}): classes are names or whole numbers: "
                    "use --problem_type regression to predict the numbers, or set --label_column_name to a column "
                    "of classes"
                )
            whole_floats = True
            keys.append(str(int(value)))
        elif isinstance(value, (list, tuple, dict)):
            raise WarmstartError(
                f"column {column!r} holds {type(value).__name__}s (e.g. {str(value)[:60]}), not one class per "
                "example: use --problem_type multi_label_classification, or give one label per row"
            )
        else:
            text = str(value).strip()
            keys.append(text if text else None)
    if whole_floats and note:
        logger.info("column %r holds whole numbers stored as floats: they are read as the classes 0, 1, ...", column)
    return keys


_INTEGER = re.compile(r"[+-]?\d+")


def label_order(keys: set[str]) -> Callable[[str], Any]:
    """The order of class (or label) names: numeric when every name is an integer (``2`` before ``10``), else the
    names' string order."""
    if all(_INTEGER.fullmatch(key) for key in keys):
        return int
    return str
