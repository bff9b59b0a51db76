"""What to predict on: an image folder, a table or a dataset split, read as training reads data."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import ClassLabel, DatasetDict

from warmstart.data import (
    as_number,
    check_text_cells,
    read_label_sets,
    resolve_image_column,
    resolve_text_columns,
)
from warmstart.data.sources import (
    LOAD_ERRORS,
    datasets_errors_not_logged,
    image_files,
    read_table,
    root_cause,
)
from warmstart.errors import WarmstartError, hub_unavailable
from warmstart.prediction.predictor import Predictor
from warmstart.problems import MULTI_LABEL, REGRESSION, SINGLE_LABEL

logger = logging.getLogger(__name__)

_IMAGE_FOLDER_COLUMN = "image"


@dataclass
class PredictionInput:
    """What to predict on.

    Attributes:
        ids: one id per row, as written to the output (image path relative to the folder, the ``--id_column``
            value, or the row number).
        dataset: the rows; images (undecoded) in ``columns[0]``, or text in ``columns``.
        columns: the image column, or the text column(s).
        true_labels: each row's true label as the model's label shape reads it (a class id, a 0/1 vector per
            label, a number per target), when the input has them; else ``None``.
        source: the input as given, for messages.
    """

    ids: list[str]
    dataset: datasets.Dataset
    columns: list[str]
    true_labels: list | None = None
    source: str = ""


def parse_dataset_spec(spec: str) -> tuple[str, str | None, str]:
    """Splits a dataset split given as ``name[:config]:split`` (a split may carry a slice: ``imdb:test[:100]``).

    Returns:
        ``(name, config or None, split)``.

    Raises:
        WarmstartError: not of that form.

    Example:
        >>> parse_dataset_spec("glue:sst2:validation")
        ('glue', 'sst2', 'validation')
    """
    head, bracket, tail = spec.partition("[")
    parts = head.split(":")
    if len(parts) not in (2, 3) or not all(p.strip() for p in parts):
        raise WarmstartError(
            f"--input {spec} does not exist: give an image folder, a csv / tsv / json / jsonl / parquet file, or a "
            "dataset split as name[:config]:split (e.g. imdb:test)"
        )
    name, *config, split = (p.strip() for p in parts)
    return name, (config[0] if config else None), split + bracket + tail


def read_prediction_input(
    source: str | Path,
    predictor: Predictor,
    *,
    id_column: str | None = None,
    image_column: str | None = None,
    text_columns: str | Sequence[str] | None = None,
    label_column: str | None = "label",
    encoding: str | None = None,
) -> PredictionInput:
    """Reads the inputs to predict on.

    ``source`` is an image folder (every image PIL reads, sub-folders included, sorted by path; the id is the path
    relative to the folder), a csv / tsv / json / jsonl / parquet file, or a dataset split given as
    ``name[:config]:split`` (whatever ``datasets.load_dataset(name, config, split=split)`` reads: downloaded from
    the Hub, or from the cache alone with ``HF_HUB_OFFLINE=1``; a local dataset folder included). A
    table's id is ``id_column``'s value, else the row number.

    Images in a table come from ``image_column`` (an ``Image`` feature or image paths, relative ones read from the
    table's folder first), else the first ``Image`` column, else ``image`` / ``img``. Text comes from
    ``text_columns``, else the columns the model was trained on, else a common name (``text``, ``sentence``,
    ``premise,hypothesis``...).

    True labels, for accuracy: ``label_column`` when the input has it and all its values are the model's label
    names (or ids); for an image folder, the first-level sub-folder of each image (deeper folders are storage, as
    in training) when every one is named after a label.

    Args:
        source: the input (see above).
        predictor: the model it is for (its modality, labels and recorded text columns).
        id_column: tables: the column of ids.
        image_column: tables: the image column.
        text_columns: tables: one text column or a pair (``"a,b"`` or ``["a", "b"]``).
        label_column: the column of true labels, used only when present.
        encoding: a table's text encoding (``None``: UTF-8, or what its byte-order mark says).

    Returns:
        The :class:`PredictionInput`.

    Raises:
        WarmstartError: a missing input, an unreadable file, no rows, or a missing id / image / text column.
    """
    source = str(source)
    path = Path(source)
    if path.is_dir():
        if predictor.modality == "image":
            return _read_image_folder(path, predictor)
        raise WarmstartError(
            f"--input {path} is a folder but the model is a text classifier: give a csv / tsv / json / jsonl / "
            "parquet file or a dataset split (name[:config]:split)"
        )
    data = read_table(path, "--input", encoding=encoding, empty="nothing to predict") if path.is_file() else None
    data = data if data is not None else _read_dataset_split(source)
    if len(data) == 0:
        raise WarmstartError(f"--input {source} has no rows: nothing to predict")
    ids = _row_ids(data, id_column)
    if predictor.modality == "image":
        base_dir = path.resolve().parent if path.is_file() else None
        data, column = _image_column(data, image_column, base_dir, f"--input {source}")
        columns = [column]
        data = data.cast_column(column, datasets.Image(decode=False))
    else:
        columns = _text_columns(data, predictor, text_columns, label_column)
        check_text_cells(DatasetDict({"input": data}), columns, where={"input": f"--input {source}"})
    true_labels = _true_labels(data, label_column, predictor) if label_column else None
    return PredictionInput(ids=ids, dataset=data, columns=columns, true_labels=true_labels, source=source)


def _read_image_folder(folder: Path, predictor: Predictor) -> PredictionInput:
    files = image_files(folder)  # at any depth, any case of extension, hidden files left out, sorted
    if not files:
        raise WarmstartError(f"--input {folder} holds no image files: nothing to predict")
    relative = [f.relative_to(folder) for f in files]
    data = datasets.Dataset.from_dict({_IMAGE_FOLDER_COLUMN: [{"path": str(f), "bytes": None} for f in files]})
    data = data.cast_column(_IMAGE_FOLDER_COLUMN, datasets.Image(decode=False))
    label_ids = {label: i for i, label in enumerate(predictor.labels)}
    folders = [r.parts[0] if len(r.parts) >= 2 else None for r in relative]  # as training: the first-level folder
    true_labels = [label_ids[f] for f in folders] if all(f in label_ids for f in folders) else None
    if predictor.problem_type != SINGLE_LABEL:  # a class folder is one label: no truth for other shapes
        true_labels = None
    return PredictionInput(
        ids=[r.as_posix() for r in relative],
        dataset=data,
        columns=[_IMAGE_FOLDER_COLUMN],
        true_labels=true_labels,
        source=str(folder),
    )


def _read_dataset_split(spec: str) -> datasets.Dataset:
    name, config, split = parse_dataset_spec(spec)
    try:
        with datasets_errors_not_logged():
            data = datasets.load_dataset(name, config, split=split)
    except LOAD_ERRORS as err:  # ConnectionError and the hub's offline errors are OSErrors
        shown = f"split {split!r} of dataset {name!r}{f' ({config})' if config else ''}"
        raise WarmstartError(
            f"cannot load {shown}: {root_cause(err)}" if Path(name).exists() else hub_unavailable(shown, err)
        ) from None
    if not isinstance(data, datasets.Dataset):
        raise WarmstartError(f"--input {spec} is not one split of a dataset: name the split as name[:config]:split")
    return data


def _require_input_column(data: datasets.Dataset, column: str, flag: str) -> None:
    if column not in data.column_names:
        raise WarmstartError(
            f"the input has no column {column!r} (columns: {', '.join(data.column_names)}): set {flag} to one of them"
        )


def _row_ids(data: datasets.Dataset, id_column: str | None) -> list[str]:
    if id_column is None:
        return [str(i) for i in range(len(data))]
    _require_input_column(data, id_column, "--id_column")
    return [str(v) for v in data[id_column]]


def _image_column(
    data: datasets.Dataset, image_column: str | None, base_dir: Path | None, where: str
) -> tuple[datasets.Dataset, str]:
    if image_column is not None:
        _require_input_column(data, image_column, "--image_column_name")
    # guessed and checked as in training (an Image feature or a column of paths, read relative to the table first)
    splits = DatasetDict({"input": data})
    column = resolve_image_column(splits, image_column, "prediction", {"input": base_dir}, where={"input": where})
    return splits["input"], column


def _text_columns(
    data: datasets.Dataset, predictor: Predictor, given: str | Sequence[str] | None, label_column: str | None
) -> list[str]:
    if isinstance(given, str):
        given = [c.strip() for c in given.split(",") if c.strip()]
    names = list(given) if given else predictor.text_columns
    if names:
        if predictor.text_columns and len(names) != len(predictor.text_columns):
            trained = ", ".join(predictor.text_columns)
            raise WarmstartError(
                f"the model was trained on {len(predictor.text_columns)} text column(s) ({trained}), "
                f"--text_column_names gives {len(names)}: give {len(predictor.text_columns)}"
            )
        for name in names:
            _require_input_column(data, name, "--text_column_names")
    splits = DatasetDict({"train": data})
    return resolve_text_columns(splits, ",".join(names) if names else None, label_column or "")


def _true_labels(data: datasets.Dataset, label_column: str, predictor: Predictor) -> list | None:
    """The true labels of the rows, when ``label_column`` holds them throughout as the model's label shape reads
    them: label names or ids (single-label: ids), lists of the model's labels (multi-label: 0/1 vectors), numbers
    (regression; several targets: ``label_column`` names their columns comma-separated)."""
    labels = predictor.labels
    if predictor.problem_type == REGRESSION:
        columns = [c.strip() for c in label_column.split(",")] if "," in label_column else [label_column]
        if len(columns) != len(labels) and columns == [label_column] and label_column not in data.column_names:
            columns = list(labels)  # the targets' own column names, as the model was trained on
        if not all(c in data.column_names for c in columns) or len(columns) != len(labels):
            return None
        table = [[as_number(v) for v in data[c]] for c in columns]
        if any(v is None for column in table for v in column):
            logger.info("the true values are not all numbers: no error is reported")
            return None
        return [list(row) if len(row) > 1 else row[0] for row in zip(*table)]
    if label_column not in data.column_names:
        return None
    feature = data.features[label_column]
    values = data[label_column]
    if predictor.problem_type == MULTI_LABEL:
        inner = getattr(feature, "feature", None)
        sets = read_label_sets(values, label_column, names=inner.names if isinstance(inner, ClassLabel) else None)
        index = {label: i for i, label in enumerate(labels)}
        if any(row is None or any(label not in index for label in row) for row in sets):
            logger.info("column %r does not hold lists of the model's labels: no F1 is reported", label_column)
            return None
        return [[1.0 if label in row else 0.0 for label in labels] for row in sets]
    by_name = {label: i for i, label in enumerate(labels)}
    if isinstance(feature, ClassLabel):
        if not all(name in by_name for name in feature.names) or any(v is None or v < 0 for v in values):
            return None
        return [by_name[feature.names[v]] for v in values]
    if all(v is not None and str(v) in by_name for v in values):
        return [by_name[str(v)] for v in values]
    if all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(labels) for v in values):
        return list(values)
    logger.info("column %r does not hold the model's labels: no accuracy is reported", label_column)
    return None
