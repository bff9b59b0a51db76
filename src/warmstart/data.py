"""Data: ``datasets`` splits from a hub id (cache only), local csv / json / parquet files or image folders; column
mapping; a seeded validation split when there is none; label encoding; tokenization and image transforms."""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from datasets import ClassLabel, DatasetDict, Value
from PIL import Image, UnidentifiedImageError

from warmstart.errors import WarmstartError
from warmstart.images import image_file, load_image
from warmstart.sources import (
    CORPUS_BUILDERS,
    LOAD_ERRORS,
    datasets_errors_not_logged,
    is_path_column,
    read_image_folders,
    read_tables,
    resolve_image_paths,
    root_cause,
)

logger = logging.getLogger(__name__)

LABEL_COLUMN = "labels"  # what the Trainer and the models expect
_SPLIT_ALIASES = {"validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
_TEXT_COLUMN_GUESSES = (
    ("sentence1", "sentence2"),
    ("question", "sentence"),
    ("premise", "hypothesis"),
    ("text",),
    ("sentence",),
    ("content",),
    ("review",),
)


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

    Tables and image folders are read by the rules of :mod:`warmstart.sources` (encodings, trimmed column names, a
    class per first-level folder of each split's directory); ``encoding`` is the tables' text encoding (``None``:
    UTF-8, or what a byte-order mark says); ``labeled=False`` reads image folders without class folders too.

    Raises:
        WarmstartError: no source, a missing file or folder, or a hub dataset that is not cached.
    """
    if dataset_name:
        try:
            raw = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
        except (FileNotFoundError, ConnectionError, ValueError, OSError) as err:
            raise WarmstartError(
                f"cannot load dataset {dataset_name!r} ({type(err).__name__}): warmstart runs offline, so give local "
                "files (--train_file/--train_dir) or a dataset already in the Hugging Face cache"
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


def _column_names(data: datasets.Dataset) -> list[str]:
    """The columns as the user named them: the encoded ``labels`` column shows as the label column it came from."""
    feature = data.features.get(LABEL_COLUMN)
    original = feature.id if isinstance(feature, ClassLabel) else None
    return [original if name == LABEL_COLUMN and original else name for name in data.column_names]


def _require_column(splits: DatasetDict, column: str, flag: str) -> None:
    for split, data in splits.items():
        if column not in data.column_names:
            names = _column_names(data)
            shown = ", ".join(names)
            raise WarmstartError(
                f"column {column!r} is not in the {split} split (columns: {shown}){_near_miss(column, names)}: "
                f"set {flag} to one of them"
            )


def _near_miss(column: str, names: Sequence[str]) -> str:
    """``; nearest: 'label'`` when a column name is close to the one asked for (case, spaces, a typo), else ``""``."""
    folded = {name.strip().casefold(): name for name in names}
    close = [folded[column.strip().casefold()]] if column.strip().casefold() in folded else []
    close += [n for n in difflib.get_close_matches(column, names, n=2, cutoff=0.75) if n not in close]
    return f"; nearest: {', '.join(repr(n) for n in close)}" if close else ""


def resolve_image_column(
    splits: DatasetDict,
    image_column: str | None,
    purpose: str = "training",
    base_dirs: Mapping[str, Path] | None = None,
    *,
    where: Mapping[str, str] | None = None,
) -> str:
    """The image column: the one given, else the first ``Image`` feature, else ``image`` / ``img``.

    A column of image paths becomes an ``Image`` column of absolute paths (in place, in ``splits``): a relative path
    is read relative to ``base_dirs[split]`` (the folder of the table that names it), then to the working directory
    (:func:`warmstart.sources.resolve_image_paths`); ``where`` names the splits in its messages (default ``the
    <split> split``).

    Raises:
        WarmstartError: no image column, a column of something else, a URL or a path that is no file.
    """
    reference = splits["train"] if "train" in splits else next(iter(splits.values()))
    if image_column is None:
        features = reference.features
        image_column = next((name for name, f in features.items() if isinstance(f, datasets.Image)), None)
        image_column = image_column or next((n for n in ("image", "img") if n in features), None)
        if image_column is None:
            shown = ", ".join(f"{n} ({f})" for n, f in features.items())
            raise WarmstartError(
                f"the data has no image column for {purpose} (columns: {shown}): set --image_column_name to a column "
                "of images or image paths"
            )
    _require_column(splits, image_column, "--image_column_name")
    feature = reference.features[image_column]
    if not isinstance(feature, datasets.Image):
        if not is_path_column(feature):
            raise WarmstartError(f"column {image_column!r} holds {feature}, not images or image paths")
        for split in splits:
            base = (base_dirs or {}).get(split)
            place = (where or {}).get(split, f"the {split} split")
            splits[split] = resolve_image_paths(splits[split], image_column, base, place)
    return image_column


def resolve_text_columns(splits: DatasetDict, text_column_names: str | None, label_column: str) -> list[str]:
    """The text column(s): those given (``a`` or ``a,b`` for pairs), else a common name or name pair."""
    columns = splits["train"].column_names
    if text_column_names:
        names = [c.strip() for c in text_column_names.split(",") if c.strip()]
    else:
        names = next((list(g) for g in _TEXT_COLUMN_GUESSES if all(c in columns for c in g)), None)
        if names is None:
            shown = ", ".join(_column_names(splits["train"]))
            raise WarmstartError(f"cannot tell the text column (columns: {shown}): set --text_column_names")
    if not 1 <= len(names) <= 2:
        raise WarmstartError(f"--text_column_names takes one column or a pair, got {len(names)}")
    for name in names:
        # after encode_labels the label column is called `labels`: neither name may be read as text
        if name in (label_column, LABEL_COLUMN):
            raise WarmstartError(f"{name!r} is both the label column and a text column: set --text_column_names")
        _require_column(splits, name, "--text_column_names")
    return names


def check_text_cells(splits: DatasetDict, columns: Sequence[str], where: Mapping[str, str] | None = None) -> None:
    """Refuses text columns with empty cells (missing, or blank), naming how many and the first rows.

    Args:
        splits: the splits.
        columns: their text columns.
        where: how to name each split in the message (default ``the <split> split``).

    Raises:
        WarmstartError: a text cell that is missing or blank.
    """
    for split, data in splits.items():
        for column in columns:
            empty = [row for row, text in enumerate(data[column]) if not _has_text(text)]
            if empty:
                place = (where or {}).get(split, f"the {split} split")
                raise WarmstartError(
                    f"{len(empty)} data row(s) of {place} have no text in column {column!r} (rows {_rows(empty)}, "
                    "counting from 1): fill or drop them"
                )


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
    _require_column(splits, label_column, "--label_column_name")
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
    for split in list(splits):
        missing = [row for row, key in enumerate(keys[split]) if key is None]
        if split != "train" and missing and len(missing) == len(keys[split]):  # an unlabeled test file
            logger.warning("the %s split has no %r values: it is left out", split, label_column)
            del splits[split], keys[split]
        elif missing:
            raise WarmstartError(
                f"{len(missing)} data row(s) of the {split} split have no {label_column!r} value (rows "
                f"{_rows(missing)}, counting from 1): fill or drop them"
            )
    seen = sorted(set(keys["train"]), key=_label_order(set(keys["train"])))
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
                    f"column {column!r} holds fractional numbers (e.g. {value}): warmstart trains classifiers, whose "
                    "labels are class names or whole numbers: set --label_column_name to a column of classes"
                )
            whole_floats = True
            keys.append(str(int(value)))
        elif isinstance(value, (list, tuple, dict)):
            raise WarmstartError(
                f"column {column!r} holds {type(value).__name__}s (e.g. {str(value)[:60]}), not one class per "
                "example: give one label per row"
            )
        else:
            text = str(value).strip()
            keys.append(text if text else None)
    if whole_floats and note:
        logger.info("column %r holds whole numbers stored as floats: they are read as the classes 0, 1, ...", column)
    return keys


_INTEGER = re.compile(r"[+-]?\d+")


def _label_order(keys: set[str]) -> Callable[[str], Any]:
    """Numeric order when every class name is an integer (``2`` before ``10``), else the names' string order."""
    if all(_INTEGER.fullmatch(key) for key in keys):
        return int
    return str


def _rows(rows: Sequence[int], shown: int = 5) -> str:
    """Row numbers counted from 1, the first ``shown`` of them."""
    head = ", ".join(str(r + 1) for r in rows[:shown])
    return head + (", ..." if len(rows) > shown else "")


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
        column = _resolve_corpus_text_column(splits, data_args.text_column_name)
    else:
        column = resolve_image_column(
            splits, data_args.image_column_name, purpose="pretraining", base_dirs=table_dirs(data_args)
        )
    for name, data in splits.items():
        splits[name] = data.remove_columns([c for c in data.column_names if c != column])
    if modality == "text":  # blank lines of .txt files (paragraph breaks) are not examples
        splits = DatasetDict(
            {
                name: data.filter(_has_text, input_columns=column, desc=f"dropping empty {name} texts")
                for name, data in splits.items()
            }
        )
    splits = make_validation_split(splits, data_args.train_val_split, seed)
    splits = limit_samples(splits, data_args.max_train_samples, data_args.max_eval_samples, seed)
    check_not_empty(splits)
    return splits, column


def _has_text(value: Any) -> bool:
    return value is not None and bool(str(value).strip())


def _canonical_split(name: str) -> str:
    return next((c for c, aliases in _SPLIT_ALIASES.items() if name in aliases), name)


def _resolve_corpus_text_column(splits: DatasetDict, column: str | None) -> str:
    features = splits["train"].features
    if column is None:
        strings = [n for n, f in features.items() if isinstance(f, Value) and f.dtype in ("string", "large_string")]
        common = [name for group in _TEXT_COLUMN_GUESSES if len(group) == 1 for name in group if name in strings]
        column = common[0] if common else strings[0] if len(strings) == 1 else None
        if not strings:
            shown = ", ".join(f"{n} ({f})" for n, f in features.items())
            raise WarmstartError(
                f"the data has no text column to pretrain on (columns: {shown}): set --text_column_name to a "
                "column of strings"
            )
        if column is None:
            raise WarmstartError(
                f"cannot tell which column to pretrain on (text columns: {', '.join(strings)}): set --text_column_name"
            )
    _require_column(splits, column, "--text_column_name")
    feature = features[column]
    if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
        raise WarmstartError(f"column {column!r} holds {feature}, not text: set --text_column_name to a text column")
    return column


LENGTH_COLUMN = "length"  # tokens per example, computed once at tokenization (the Trainer's length_column_name)


def tokenize_splits(
    splits: DatasetDict, tokenizer: Any, text_columns: Sequence[str], max_seq_length: int
) -> DatasetDict:
    """Tokenizes text (one column or a pair), truncated to ``max_seq_length`` and not padded: the collator pads
    each batch to its own longest sequence.

    Each example also gets its token count in ``length``, so that length-grouped sampling never has to read the
    token ids back; evaluation splits are sorted by it (longest first), so that their batches pad little.
    """

    def tokenize(batch: dict[str, list]) -> dict[str, Any]:
        texts = [[("" if t is None else str(t)) for t in batch[c]] for c in text_columns]
        encoded = tokenizer(*texts, truncation=True, max_length=max_seq_length)
        encoded[LENGTH_COLUMN] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    out = DatasetDict()
    for split, data in splits.items():
        drop = [c for c in data.column_names if c != LABEL_COLUMN]
        tokenized = data.map(tokenize, batched=True, remove_columns=drop, desc=f"tokenizing {split}")
        if split != "train":
            # an index order, not Dataset.sort (pyarrow warns about its sort options on stderr)
            lengths = list(tokenized[LENGTH_COLUMN])
            longest_first = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
            tokenized = tokenized.select(longest_first)
        out[split] = tokenized
    return out


class TextCollator:
    """Pads a batch of tokenized examples to its longest sequence (or a multiple of ``pad_to_multiple_of``, for
    tensor cores) and leaves out the ``length`` bookkeeping column the model does not take."""

    def __init__(self, tokenizer: Any, pad_to_multiple_of: int | None = None):
        from transformers import DataCollatorWithPadding

        self._pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self._pad([{k: v for k, v in e.items() if k != LENGTH_COLUMN} for e in examples])


def _describe(value: dict[str, Any], split: str, row: int) -> str:
    return value.get("path") or f"row {row} of {split}"


def check_images(splits: DatasetDict, image_column: str) -> None:
    """Opens every image header once, so that a corrupt file is named before training rather than mid-epoch.

    Raises:
        WarmstartError: an image cannot be read.
    """
    for split, data in splits.items():
        raw = data.cast_column(image_column, datasets.Image(decode=False))
        for row, value in enumerate(raw[image_column]):
            if value is None:
                raise WarmstartError(f"row {row} of the {split} split has no image: fill or drop it")
            try:
                with Image.open(image_file(value)) as image:
                    image.verify()
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
                raise WarmstartError(
                    f"image {_describe(value, split, row)} cannot be read ({err}): remove or replace the file"
                ) from None


def image_collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stacks transformed images and their labels (when they have them) into a batch."""
    batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples])}
    if LABEL_COLUMN in examples[0]:
        batch[LABEL_COLUMN] = torch.tensor([e[LABEL_COLUMN] for e in examples], dtype=torch.long)
    return batch


def attach_image_transforms(
    splits: DatasetDict,
    image_column: str,
    train_transform: Callable[[Image.Image], torch.Tensor],
    eval_transform: Callable[[Image.Image], torch.Tensor],
    *,
    mark_train: bool = False,
) -> DatasetDict:
    """Transforms images lazily (``set_transform``): train augmentation for train, the eval transform elsewhere.

    Images are decoded here rather than by ``datasets``, so that a file that breaks mid-epoch is named.

    Args:
        splits: the splits, labels (if any) in ``labels``.
        image_column: the column of images (or image paths).
        train_transform: for the ``train`` split.
        eval_transform: for every other split.
        mark_train: give each ``train`` example the key :data:`warmstart.regularization.TRAIN_MARKER` (``True``),
            so that one collator can tell training batches from evaluation ones (the Trainer uses the same
            ``data_collator`` for both): :class:`warmstart.regularization.MixupCollator` mixes marked batches only.
            Needs ``remove_unused_columns=False`` (the recipes set it), or the Trainer drops the key.
    """
    marker = None
    if mark_train:
        from warmstart.regularization import TRAIN_MARKER  # here: regularization imports this module

        marker = TRAIN_MARKER

    def make(transform: Callable, split: str) -> Callable[[dict[str, list]], dict[str, list]]:
        def apply(batch: dict[str, list]) -> dict[str, list]:
            pixels = []
            for value in batch[image_column]:
                try:
                    image = load_image(value)  # upright, first frame, RGB: warmstart.images
                except (UnidentifiedImageError, OSError, ValueError) as err:
                    raise WarmstartError(
                        f"image {value.get('path') or 'in ' + split} cannot be read ({err})"
                    ) from None
                pixels.append(transform(image))
            out = {"pixel_values": pixels}
            if LABEL_COLUMN in batch:  # unlabeled images (pretraining) have none
                out[LABEL_COLUMN] = batch[LABEL_COLUMN]
            if marker is not None and split == "train":
                out[marker] = [True] * len(pixels)
            return out

        return apply

    for split in list(splits):
        data = splits[split].cast_column(image_column, datasets.Image(decode=False))
        data.set_transform(make(train_transform if split == "train" else eval_transform, split))
        splits[split] = data
    return splits


def load_labeled_splits(data_args: Any, seed: int, modality: str = "text") -> tuple[DatasetDict, list[str]]:
    """Loads the splits a recipe's :class:`~warmstart.arguments.DataArguments` name, encodes their labels, makes a
    validation split when there is none and applies the sample limits.

    Before any split is made (so that row numbers in messages are the file's): images get their image column
    resolved (paths in a table relative to the table's folder, :func:`resolve_image_column`); texts get their text
    columns checked for empty cells (:func:`check_text_cells`).

    Returns:
        The splits (``train``, ``validation``, maybe ``test``; labels in ``labels``) and the class names.
    """
    splits = load_raw_splits(
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        data_files=data_args.data_files(),
        data_dirs=data_args.data_dirs(),
        encoding=getattr(data_args, "encoding", None),
    )
    check_not_empty(splits)
    if modality == "image":
        resolve_image_column(splits, data_args.image_column_name, base_dirs=table_dirs(data_args))
    labels = encode_labels(splits, data_args.label_column_name)
    if modality == "text":
        columns = resolve_text_columns(splits, data_args.text_column_names, data_args.label_column_name)
        check_text_cells(splits, columns)
    splits = make_validation_split(splits, data_args.train_val_split, seed)
    splits = limit_samples(splits, data_args.max_train_samples, data_args.max_eval_samples, seed)
    check_not_empty(splits)
    return splits, labels


def image_transforms(
    model: Any,
    image_size: int | None,
    hflip: float = 0.5,
    crop_scale: Sequence[float] | None = None,
    *,
    auto_augment: str | None = None,
    random_erasing: float = 0.0,
) -> tuple[dict[str, Any], Callable, Callable]:
    """timm's preprocessing for a model: its pretrained config (mean, std, interpolation, crop), at ``image_size``.

    Args:
        model: a timm model, or a transformers wrapper of one (``.timm_model``).
        image_size: input resolution (default: the model's pretrained config).
        hflip: probability of a horizontal flip in training.
        crop_scale: area range of the random-resized crop in training (default: timm's 0.08 - 1.0).
        auto_augment: a timm auto-augment policy for training, e.g. ``rand-m9-mstd0.5`` (RandAugment),
            ``augmix-m5-w3``, ``original``, ``v0``, ``3a``; ``None``, ``""`` or ``"none"``: off. As in timm, the
            color jitter of the plain training transform is left out when a policy is on.
        random_erasing: probability of timm's random erasing (one rectangle, constant fill) in training.

    Returns:
        The data config (saved with the model, so that loaders preprocess as in training), the training transform
        (random-resized crop over ``crop_scale`` of the area, flip, then auto-augment and random erasing when
        asked for) and the evaluation transform (resize, center crop).

    Raises:
        WarmstartError: an auto-augment policy timm does not know, or a random-erasing probability outside [0, 1].
    """
    from timm.data import create_transform, resolve_data_config

    timm_model = getattr(model, "timm_model", model)
    overrides = {"input_size": (3, image_size, image_size)} if image_size else {}
    data_config = resolve_data_config(overrides, model=timm_model)
    crop = {"scale": tuple(crop_scale)} if crop_scale else {}
    if not 0.0 <= random_erasing <= 1.0:
        raise WarmstartError(f"--random_erasing is a probability in [0, 1], got {random_erasing}")
    if auto_augment is not None and auto_augment.strip().lower() in ("", "none"):
        auto_augment = None
    augment = {"auto_augment": auto_augment} if auto_augment else {}
    if random_erasing > 0:
        augment["re_prob"] = random_erasing
    try:
        train = create_transform(**data_config, is_training=True, hflip=hflip, **crop, **augment)
    except (AssertionError, ValueError, KeyError, IndexError, TypeError) as err:
        if not auto_augment:
            raise
        # timm checks policy strings with asserts ("Unknown AA policy x") and float() / dict look-ups
        reason = " ".join(str(err).split()) or type(err).__name__
        raise WarmstartError(
            f"--auto_augment {auto_augment!r} is not a timm auto-augment policy ({reason}): use e.g. "
            "rand-m9-mstd0.5 (RandAugment), augmix-m5-w3 (AugMix), original or v0 (AutoAugment)"
        ) from None
    evaluation = create_transform(**data_config)
    return data_config, train, evaluation
