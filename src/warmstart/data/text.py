"""Text columns: which ones (given or guessed), empty cells refused, tokenization and the padding collator."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from datasets import Dataset, DatasetDict, Value

from warmstart.data.bad_examples import BadExample, BadExamples
from warmstart.data.columns import LABEL_COLUMN, column_names, require_column, row_numbers
from warmstart.data.decoding import describe_error
from warmstart.data.leakage import ROW_COLUMN
from warmstart.errors import WarmstartError

logger = logging.getLogger(__name__)


_TEXT_COLUMN_GUESSES = (
    ("sentence1", "sentence2"),
    ("question", "sentence"),
    ("premise", "hypothesis"),
    ("text",),
    ("sentence",),
    ("content",),
    ("review",),
)


def resolve_text_columns(splits: DatasetDict, text_column_names: str | None, label_column: str) -> list[str]:
    """The text column(s): those given (``a`` or ``a,b`` for pairs), else a common name or name pair."""
    columns = splits["train"].column_names
    if text_column_names:
        names = [c.strip() for c in text_column_names.split(",") if c.strip()]
    else:
        names = next((list(g) for g in _TEXT_COLUMN_GUESSES if all(c in columns for c in g)), None)
        if names is None:
            shown = ", ".join(column_names(splits["train"]))
            raise WarmstartError(f"cannot tell the text column (columns: {shown}): set --text_column_names")
    if not 1 <= len(names) <= 2:
        raise WarmstartError(f"--text_column_names takes one column or a pair, got {len(names)}")
    for name in names:
        # after encode_labels the label column is called `labels`: neither name may be read as text
        if name in (label_column, LABEL_COLUMN):
            raise WarmstartError(f"{name!r} is both the label column and a text column: set --text_column_names")
        require_column(splits, name, "--text_column_names")
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
            empty = [row for row, text in enumerate(data[column]) if not has_text(text)]
            if empty:
                place = (where or {}).get(split, f"the {split} split")
                raise WarmstartError(
                    f"{len(empty)} data row(s) of {place} have no text in column {column!r} "
                    f"(rows {row_numbers(empty)}, counting from 1): fill or drop them, or pass --on_bad_example skip"
                )


def empty_text_cells(splits: DatasetDict, columns: Sequence[str]) -> list[BadExample]:
    """The rows (of the data as read) with a missing or blank cell in a text column, as bad examples."""
    found: dict[tuple[str, int], BadExample] = {}
    for split, data in splits.items():
        for column in columns:
            for row, text in enumerate(data[column]):
                if not has_text(text) and (split, row + 1) not in found:
                    found[split, row + 1] = BadExample(split, row + 1, "no text", column=column)
    return list(found.values())


def has_text(value: Any) -> bool:
    return value is not None and bool(str(value).strip())


def resolve_corpus_text_column(splits: DatasetDict, column: str | None) -> str:
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
    require_column(splits, column, "--text_column_name")
    feature = features[column]
    if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
        raise WarmstartError(f"column {column!r} holds {feature}, not text: set --text_column_name to a text column")
    return column


LENGTH_COLUMN = "length"  # tokens per example, computed once at tokenization (the Trainer's length_column_name)


BAD_COLUMN = "_warmstart_bad"  # why a row could not be tokenized ("" when it could), until tokenize_splits drops it


def tokenize_splits(
    splits: DatasetDict,
    tokenizer: Any,
    text_columns: Sequence[str],
    max_seq_length: int,
    bad_examples: BadExamples | None = None,
) -> DatasetDict:
    """Tokenizes text (one column or a pair), truncated to ``max_seq_length`` and not padded: the collator pads
    each batch to its own longest sequence.

    Each example also gets its token count in ``length``, so that length-grouped sampling never has to read the
    token ids back; evaluation splits are sorted by it (longest first), so that their batches pad little.

    A text the tokenizer fails on stops the run with one line naming its row (and the row as read, where the split
    carries ``ROW_COLUMN``), or, with ``bad_examples`` skipping, is dropped and recorded
    (:class:`~warmstart.data.bad_examples.BadExamples`).

    Raises:
        WarmstartError: a text that cannot be tokenized (``--on_bad_example fail``), or too many (``skip``).
    """
    bad_examples = bad_examples or BadExamples()
    skips = bad_examples.skips
    columns = ", ".join(text_columns)

    def tokenize(batch: dict[str, list], split: str) -> dict[str, Any]:
        texts = [[("" if t is None else str(t)) for t in batch[c]] for c in text_columns]
        try:
            encoded = dict(tokenizer(*texts, truncation=True, max_length=max_seq_length))
            errors = [""] * len(texts[0])
        except Exception:  # noqa: BLE001 - whatever the tokenizer raises, the row that made it is found below
            encoded, errors = _tokenize_rows(tokenizer, texts, max_seq_length)
            rows = batch.get(ROW_COLUMN)
            for i, error in enumerate(errors):
                if error and not skips:
                    row = int(rows[i]) + 1 if rows is not None else 0
                    bad_examples.refuse([BadExample(split, row, error, column=columns)])
        encoded[LENGTH_COLUMN] = [len(ids) for ids in encoded["input_ids"]]
        if skips:
            encoded[BAD_COLUMN] = errors
        return encoded

    out = DatasetDict()
    for split, data in splits.items():
        drop = [c for c in data.column_names if c != LABEL_COLUMN]
        tokenized = data.map(
            tokenize, batched=True, remove_columns=drop, desc=f"tokenizing {split}", fn_kwargs={"split": split}
        )
        if skips:
            tokenized = _skip_untokenized(tokenized, data, split, columns, bad_examples)
        if split != "train":
            # an index order, not Dataset.sort (pyarrow warns about its sort options on stderr)
            lengths = list(tokenized[LENGTH_COLUMN])
            longest_first = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
            tokenized = tokenized.select(longest_first)
        out[split] = tokenized
    return out


def _tokenize_rows(tokenizer: Any, texts: list[list[str]], max_seq_length: int) -> tuple[dict[str, list], list[str]]:
    """Tokenizes a batch row by row: the encodings (an empty text's where a row fails) and each row's error."""
    empty = dict(tokenizer(*[""] * len(texts), truncation=True, max_length=max_seq_length))
    encoded: dict[str, list] = {key: [] for key in empty}
    errors = []
    for row in zip(*texts):
        try:
            one, error = dict(tokenizer(*row, truncation=True, max_length=max_seq_length)), ""
        except Exception as err:  # noqa: BLE001 - the row is named with the tokenizer's own words
            one, error = empty, describe_error(err)
        for key in encoded:
            encoded[key].append(one[key])
        errors.append(error)
    return encoded, errors


def _skip_untokenized(
    tokenized: Dataset, data: Dataset, split: str, columns: str, bad_examples: BadExamples
) -> Dataset:
    """Drops the rows ``tokenize`` marked (``BAD_COLUMN``), recording each, and the mark itself."""
    errors = tokenized[BAD_COLUMN]
    failed = [i for i, error in enumerate(errors) if error]
    tokenized = tokenized.remove_columns(BAD_COLUMN)
    if not failed:
        return tokenized
    rows = data.select(failed)[ROW_COLUMN] if ROW_COLUMN in data.column_names else [-1] * len(failed)
    bad = [BadExample(split, int(row) + 1, errors[i], column=columns) for i, row in zip(failed, rows)]
    return bad_examples.drop_positions(split, tokenized, failed, bad)


class TextCollator:
    """Pads a batch of tokenized examples to its longest sequence (or a multiple of ``pad_to_multiple_of``, for
    tensor cores) and leaves out the ``length`` bookkeeping column the model does not take."""

    def __init__(self, tokenizer: Any, pad_to_multiple_of: int | None = None):
        from transformers import DataCollatorWithPadding

        self._pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self._pad([{k: v for k, v in e.items() if k != LENGTH_COLUMN} for e in examples])
