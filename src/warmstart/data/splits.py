"""Loading the splits a recipe names (a hub dataset, downloaded as ``datasets`` does or read from the Hugging Face
cache with ``HF_HUB_OFFLINE=1``; tables; image folders), a seeded validation split when there is none, and the
sample limits."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets
from datasets import ClassLabel, DatasetDict

from warmstart.data.bad_examples import BadExample, BadExamples
from warmstart.data.columns import LABEL_COLUMN
from warmstart.data.leakage import ROW_COLUMN, check_splits, number_rows
from warmstart.data.sources import (
    CORPUS_BUILDERS,
    LOAD_ERRORS,
    datasets_errors_not_logged,
    read_image_folders,
    read_tables,
    root_cause,
)
from warmstart.data.targets import encode_targets, target_scale
from warmstart.data.text import (
    check_text_cells,
    empty_text_cells,
    has_text,
    resolve_corpus_text_column,
    resolve_text_columns,
)
from warmstart.data.vision import resolve_image_column
from warmstart.errors import WarmstartError, hub_unavailable
from warmstart.problems import REGRESSION, LabelSpace

logger = logging.getLogger(__name__)


_SPLIT_ALIASES = {"validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


def load_raw_splits(
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    data_files: dict[str, str] | None = None,
    data_dirs: dict[str, str] | None = None,
    cache_dir: str | None = None,
    encoding: str | None = None,
    labeled: bool = True,
) -> DatasetDict:
    """Loads the splits from exactly one kind of source, with ``validation`` / ``test`` names normalised.

    Tables and image folders are read by the rules of :mod:`warmstart.data.sources` (encodings, trimmed column names, a
    class per first-level folder of each split's directory); ``encoding`` is the tables' text encoding (``None``:
    UTF-8, or what a byte-order mark says); ``labeled=False`` reads image folders without class folders too.

    Raises:
        WarmstartError: no source, a missing file or folder, or a hub dataset that cannot be downloaded (offline: that
            is not in the Hugging Face cache).
    """
    if dataset_name:
        try:
            raw = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
        except (FileNotFoundError, ConnectionError, ValueError, OSError) as err:
            shown = f"dataset {dataset_name!r}" + (f" ({dataset_config_name})" if dataset_config_name else "")
            if Path(dataset_name).exists():  # a local dataset folder: the Hub has nothing to do with it
                raise WarmstartError(f"cannot load {shown}: {root_cause(err)}") from None
            raise WarmstartError(
                hub_unavailable(shown, err) + "; or give local files (--train_file / --train_dir)"
            ) from None
    elif data_files:
        raw = read_tables(data_files, encoding=encoding)
    elif data_dirs:
        raw = read_image_folders(data_dirs, labeled=labeled)
    else:
        raise WarmstartError("no data: give --dataset_name, --train_file or --train_dir")
    splits = DatasetDict({_canonical_split(name): data for name, data in raw.items()})
    if "train" not in splits:
        raise WarmstartError(f"the data has no train split (splits: {', '.join(raw)})")
    return splits


def load_labeled_splits(data_args: Any, seed: int, modality: str = "text") -> tuple[DatasetDict, LabelSpace]:
    """:func:`load_checked_splits` without its report of the data checks (they are logged, and acted on, all the
    same)."""
    splits, labels, _ = load_checked_splits(data_args, seed, modality)
    return splits, labels


def load_checked_splits(
    data_args: Any,
    seed: int,
    modality: str = "text",
    *,
    bad_examples: BadExamples | None = None,
    keep_row_numbers: bool = False,
) -> tuple[DatasetDict, LabelSpace, dict[str, Any]]:
    """Loads the splits a recipe's :class:`~warmstart.arguments.DataArguments` name, encodes their labels, makes a
    validation split when there is none, applies the sample limits and checks the final splits for leakage
    (:func:`~warmstart.data.leakage.check_splits`, acting as ``--on_leakage`` says) and for examples that cannot be
    used (acting as ``--on_bad_example`` says: :class:`~warmstart.data.bad_examples.BadExamples`).

    Before any split is made (so that row numbers in messages are the file's): images get their image column
    resolved (paths in a table relative to the table's folder, :func:`resolve_image_column`); texts get their text
    columns checked for empty cells (:func:`check_text_cells`). Every image is decoded once, by the leakage check:
    one that does not decode stops the run (``fail``) or is dropped from its split (``skip``), as is an empty text.

    Args:
        data_args: the data arguments.
        seed: seeds the validation split made from train, and the sample limits.
        modality: ``text`` or ``image``.
        bad_examples: the run's policy for bad examples, which records those dropped here (default: from
            ``data_args``, recording nowhere).
        keep_row_numbers: leave each example's row as read (from 0) in ``ROW_COLUMN``, for later messages.

    Returns:
        The splits (``train``, ``validation``, maybe ``test``; labels in ``labels``), their
        :class:`~warmstart.problems.LabelSpace` (the label shape and the head's output names; a regression's target
        scale from the final train split), and the data checks' report (what a run records as ``data_checks``).

    Raises:
        WarmstartError: see :func:`load_raw_splits`, :func:`~warmstart.data.targets.encode_targets` and
            :func:`~warmstart.data.leakage.check_splits` (``--on_leakage refuse``); an example that cannot be used
            (``--on_bad_example fail``), or too many (``skip``).
    """
    bad_examples = bad_examples or BadExamples.for_run(data_args, None)
    splits = load_raw_splits(
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        data_files=data_args.data_files(),
        data_dirs=data_args.data_dirs(),
        encoding=getattr(data_args, "encoding", None),
    )
    check_not_empty(splits)
    image_column, text_columns, empty = None, [], []
    if modality == "image":
        image_column = resolve_image_column(splits, data_args.image_column_name, base_dirs=table_dirs(data_args))
    labels = encode_targets(splits, data_args)
    if modality == "text":
        text_columns = resolve_text_columns(splits, data_args.text_column_names, data_args.label_column_name)
        if bad_examples.skips:
            empty = empty_text_cells(splits, text_columns)
        else:
            check_text_cells(splits, text_columns)
    held_out = {} if "validation" in splits else {"validation": "train"}
    bad_examples.held_out.update(held_out)
    splits = bad_examples.drop(number_rows(splits), empty, ROW_COLUMN)
    splits = make_validation_split(splits, data_args.train_val_split, seed)
    splits = limit_samples(splits, data_args.max_train_samples, data_args.max_eval_samples, seed)
    check_not_empty(splits)
    splits, report = check_splits(
        splits,
        labels,
        text_columns=text_columns,
        image_column=image_column,
        on_leakage=getattr(data_args, "on_leakage", "warn"),
        held_out=held_out,
        keep_row_numbers=True,
    )
    unreadable = [BadExample(**example) for example in report.pop("unreadable", [])]
    splits = bad_examples.drop(splits, unreadable, ROW_COLUMN)
    if not keep_row_numbers:
        splits = DatasetDict({name: data.remove_columns(ROW_COLUMN) for name, data in splits.items()})
    if labels.problem_type == REGRESSION:
        labels.target_mean, labels.target_std = target_scale(splits["train"], labels.names)
    return splits, labels, report


def load_unlabeled_splits(data_args: Any, modality: str, seed: int) -> tuple[DatasetDict, str]:
    """Loads the pretraining data named by :class:`~warmstart.arguments.UnlabeledDataArguments`: one column of
    texts or of images per split, anything else (labels included) dropped.

    Text comes from a hub dataset, csv / json / parquet / .txt files (one text per line), or a folder of .txt
    files; images from a hub dataset, files with an image (or image path) column, or a folder of images (class
    sub-folders allowed, their names unused). A validation split is split off train (seeded) when there is none.

    Args:
        data_args: the data arguments.
        modality: ``text`` or ``image``.
        seed: seeds the validation split and the sample limits.

    Returns:
        The splits (``train``, ``validation``) and the name of their one column.

    Raises:
        WarmstartError: no readable source, no text / image column, or an empty split.
    """
    dirs = data_args.data_dirs()
    encoding = getattr(data_args, "encoding", None)
    if modality == "text" and dirs:
        files = {}
        for split, folder in dirs.items():
            texts = sorted(str(f) for f in Path(folder).rglob("*.txt") if f.is_file()) if Path(folder).is_dir() else []
            if not texts:
                raise WarmstartError(f"--{split}_dir {folder} holds no .txt files: give a folder of text files")
            files[split] = texts
        try:
            with datasets_errors_not_logged():
                raw = datasets.load_dataset("text", data_files=files, encoding=encoding or "utf-8")
        except LOAD_ERRORS as err:
            raise WarmstartError(
                f"cannot read the text folders: {root_cause(err)}: files not in UTF-8 need --encoding"
            ) from None
        splits = DatasetDict({_canonical_split(name): data for name, data in raw.items()})
    elif data_args.data_files():
        splits = read_tables(data_args.data_files(), CORPUS_BUILDERS, encoding)
    else:
        splits = load_raw_splits(
            dataset_name=data_args.dataset_name,
            dataset_config_name=data_args.dataset_config_name,
            data_dirs=dirs,
            labeled=False,
        )
    splits = DatasetDict({name: data for name, data in splits.items() if name in ("train", "validation")})
    check_not_empty(splits)
    if modality == "text":
        column = resolve_corpus_text_column(splits, data_args.text_column_name)
    else:
        column = resolve_image_column(
            splits, data_args.image_column_name, purpose="pretraining", base_dirs=table_dirs(data_args)
        )
    for name, data in splits.items():
        splits[name] = data.remove_columns([c for c in data.column_names if c != column])
    if modality == "text":  # blank lines of .txt files (paragraph breaks) are not examples
        splits = DatasetDict(
            {
                name: data.filter(has_text, input_columns=column, desc=f"dropping empty {name} texts")
                for name, data in splits.items()
            }
        )
    splits = make_validation_split(splits, data_args.train_val_split, seed)
    splits = limit_samples(splits, data_args.max_train_samples, data_args.max_eval_samples, seed)
    check_not_empty(splits)
    return splits, column


def table_dirs(data_args: Any) -> dict[str, Path]:
    """The folder of each split's table (``--train_file`` ...), against which the image paths in it are read."""
    return {split: Path(file).resolve().parent for split, file in data_args.data_files().items()}


def make_validation_split(splits: DatasetDict, fraction: float, seed: int) -> DatasetDict:
    """Splits ``fraction`` of train off as validation when the data has none (stratified when labels allow)."""
    if "validation" in splits:
        return splits
    train = splits["train"]
    stratify = LABEL_COLUMN if isinstance(train.features.get(LABEL_COLUMN), ClassLabel) else None
    try:
        parts = train.train_test_split(test_size=fraction, seed=seed, stratify_by_column=stratify)
    except ValueError:  # a class too small to stratify: fall back to a plain seeded split
        try:
            parts = train.train_test_split(test_size=fraction, seed=seed)
        except ValueError:
            raise WarmstartError(
                f"the train split has {len(train)} examples, too few to hold out --train_val_split {fraction:g} as "
                "validation: give a validation file / folder, or more data"
            ) from None
    splits["train"], splits["validation"] = parts["train"], parts["test"]
    return splits


def limit_samples(splits: DatasetDict, max_train: int | None, max_eval: int | None, seed: int) -> DatasetDict:
    """Keeps a seeded random subset of train (``max_train``) and of the evaluation splits (``max_eval``)."""
    for split in list(splits):
        limit = max_train if split == "train" else max_eval
        if limit is not None and len(splits[split]) > limit:
            splits[split] = splits[split].shuffle(seed=seed).select(range(limit))
    return splits


def check_not_empty(splits: DatasetDict) -> None:
    for split, data in splits.items():
        if len(data) == 0:
            raise WarmstartError(f"the {split} split is empty: check the data source and the sample limits")


def _canonical_split(name: str) -> str:
    return next((c for c, aliases in _SPLIT_ALIASES.items() if name in aliases), name)
