"""Text columns: which ones (given or guessed), empty cells refused, tokenization and the padding collator."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from datasets import DatasetDict, Value

from warmstart.data.columns import LABEL_COLUMN, column_names, require_column, row_numbers
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
                    f"(rows {row_numbers(empty)}, counting from 1): fill or drop them"
                )


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
