"""Leakage and data checks before training: evaluation examples that are also in train, one input with different
labels, and labels distributed differently between the splits.

What counts as the same input:

* **text** (or a text pair, its two columns hashed together): *exact*, the same text once leading and trailing
  whitespace is stripped; *near*, the same text once lowercased, NFKC-normalised, punctuation and symbols replaced by
  spaces and whitespace collapsed (``"Good  movie!"`` is ``"good movie"``). Keys are made by Arrow's string kernels
  and dictionary encoding over whole columns, so 100,000 short texts take a fraction of a second;
* **images**, decoded as the model sees them (:func:`~warmstart.data.decoding.load_image`): *exact*, the same pixels
  (a hash of the decoded bytes); *near*, the same 64-bit difference hash (grey levels at 9 x 8, each bit whether a
  cell is brighter than its left neighbour: a re-saved JPEG or a brightness change keeps it), or one at most
  ``hash_radius`` bits away. The radius search splits each hash into ``radius + 1`` bands (two hashes that close
  agree on one band) and compares only hashes that share a band; it is skipped, and only identical hashes count,
  when that would mean more than :data:`RADIUS_PAIRS_BUDGET` comparisons. An image of one flat colour has no
  difference hash (every flat image would share it): only its exact copies count.

An evaluation example whose input is in train (exact or near) is *leaked*: ``--on_leakage warn`` logs the counts,
``drop`` removes those rows from the evaluation splits (never from train), ``refuse`` stops the run with one line.
Conflicting labels and label shift are logged (a warning where they are large) and recorded whatever the setting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import DatasetDict

from warmstart.data.decoding import decode_error
from warmstart.data.image_hashes import HASH_RADIUS, RADIUS_PAIRS_BUDGET, hamming_matches, image_keys
from warmstart.data.label_shift import arrow_column, label_shift, label_values, log_shift
from warmstart.errors import WarmstartError
from warmstart.problems import LabelSpace

logger = logging.getLogger(__name__)

ON_LEAKAGE = ("warn", "drop", "refuse")
ROW_COLUMN = "_warmstart_row"  # each example's row in the data as read (number_rows), until check_splits drops it
SHOWN = 3  # examples named per finding


def number_rows(splits: DatasetDict) -> DatasetDict:
    """Each split with its row numbers (from 0) in ``ROW_COLUMN``: added before a validation split is held out or a
    split is shuffled, so that :func:`check_splits` names the rows of the data as it was read."""
    return DatasetDict({name: data.add_column(ROW_COLUMN, np.arange(len(data))) for name, data in splits.items()})


def check_splits(
    splits: DatasetDict,
    labels: LabelSpace,
    *,
    text_columns: Sequence[str] = (),
    image_column: str | None = None,
    on_leakage: str = "warn",
    held_out: Mapping[str, str] | None = None,
    hash_radius: int = HASH_RADIUS,
    keep_row_numbers: bool = False,
) -> tuple[DatasetDict, dict[str, Any]]:
    """Checks every split other than train for examples also in train, every split for inputs with different labels,
    and the label distributions against train's; logs what it finds and acts on leaked examples.

    Args:
        splits: the labelled splits (``train`` and the evaluation splits, labels encoded in ``labels``). A split with
            a ``ROW_COLUMN`` (:func:`number_rows`) is named by those rows; the column is dropped from what is returned
            unless ``keep_row_numbers``.
        labels: the run's label space (the shape, and the names for messages).
        text_columns: the text column, or the two of a pair; or
        image_column: the image column.
        on_leakage: ``warn``, ``drop`` (leaked evaluation rows are removed) or ``refuse``.
        held_out: splits whose rows are another split's (``{"validation": "train"}``: held out of train), for
            messages.
        hash_radius: difference-hash bits two near-duplicate images may differ in (0: identical hashes only).
        keep_row_numbers: leave ``ROW_COLUMN`` in the splits returned.

    Returns:
        The splits (leaked rows dropped with ``drop``) and the report: plain data, rows counted from 1 (a held-out
        split's entry under ``duplicates`` says whose rows with ``rows_of``; a skipped radius search is noted under
        ``radius_search``)::

            {"inputs": "text", "on_leakage": "warn",
             "duplicates": {"validation": {"examples": 16, "exact": 2, "near": 1, "dropped": 0,
                                           "e.g.": [{"row": 4, "train_row": 17, "match": "exact"}]}},
             "conflicting_labels": {"train": {"inputs": 1, "rows": 2, "e.g.": [[3, 9]]},
                                    "validation": {"rows": 1, "e.g.": [{"row": 4, "train_row": 17}]}},
             "label_shift": {"validation": {"total_variation": 0.31, "expected_from_sampling": 0.1,
                                            "shifted": True, "rare_in_train": [...]}}}

        Images that cannot be decoded (never counted as duplicates) are listed under ``unreadable``, each as a
        :class:`~warmstart.data.bad_examples.BadExample`'s fields (``split``, ``row``, ``error``, ``file``,
        ``rows_of``), for the caller to act on as ``--on_bad_example`` says.

    Raises:
        WarmstartError: ``on_leakage`` is not one of :data:`ON_LEAKAGE`; ``refuse`` and leaked examples; ``drop``
            leaving an evaluation split empty.
    """
    if on_leakage not in ON_LEAKAGE:
        raise WarmstartError(f"--on_leakage {on_leakage!r} is not one of {', '.join(ON_LEAKAGE)}: pick one")
    if bool(text_columns) == bool(image_column) or "train" not in splits or not 0 <= hash_radius < 32:
        raise ValueError("check_splits takes a train split, text_columns or image_column, and 0 <= hash_radius < 32")
    rows, stripped = _take_row_numbers(splits)
    splits = DatasetDict(splits) if keep_row_numbers else stripped
    names = list(splits)
    place = _Places(rows, held_out or {})
    report: dict[str, Any] = {}
    if image_column:
        exact, near, hashes = image_keys(splits, image_column)
        report["unreadable"] = _unreadable(splits, image_column, exact, place)
        inputs = "images"
        # a flat image has no difference hash: its pixels say which images are one input
        offset = 1 + max((int(k.max()) for k in near.values() if len(k)), default=0)
        same_input = {
            n: np.where(near[n] >= 0, near[n], np.where(exact[n] >= 0, exact[n] + offset, -1)) for n in names
        }
    else:
        exact, near = _text_keys(splits, text_columns)
        hashes, inputs, same_input = None, "text pairs" if len(text_columns) == 2 else "text", near
    report = {"inputs": inputs, "on_leakage": on_leakage, **report}
    label_ids = _label_ids(splits)

    leaked: dict[str, np.ndarray] = {}
    duplicates: dict[str, Any] = {}
    for name in (n for n in names if n != "train"):
        exact_match = _first_match(exact["train"], exact[name])
        near_match = np.where(exact_match >= 0, -1, _first_match(near["train"], near[name]))
        if hashes is not None and hash_radius > 0:
            missing = (exact_match < 0) & (near_match < 0)
            close = hamming_matches(hashes["train"], hashes[name], missing, hash_radius)
            if close is None:
                report["radius_search"] = f"skipped: more than {RADIUS_PAIRS_BUDGET:,} hash comparisons"
            else:
                near_match = np.where(missing, close, near_match)
        leaked[name] = match = np.where(exact_match >= 0, exact_match, near_match)
        duplicates[name] = {
            "examples": len(match),
            "exact": int((exact_match >= 0).sum()),
            "near": int((near_match >= 0).sum()),
            "dropped": 0,
            "e.g.": [
                {"row": place.row(name, i), "train_row": place.row("train", match[i]), "match": _kind(exact_match, i)}
                for i in np.flatnonzero(match >= 0)[:SHOWN]
            ],
        }
        if name in place.held_out:
            duplicates[name]["rows_of"] = place.held_out[name]
    report["duplicates"] = duplicates
    report["conflicting_labels"] = _conflicts(same_input, label_ids, leaked, place)
    report["label_shift"] = {n: label_shift(splits["train"], splits[n], labels) for n in leaked if len(splits[n])}

    def example(split: str, i: int) -> str:
        return place.name(split, i) + _describe(splits[split], i, text_columns, image_column)

    splits = _act(splits, leaked, report, on_leakage, example)
    _log_findings(report)
    return splits, report


def _unreadable(
    splits: DatasetDict, column: str, exact: dict[str, np.ndarray], place: _Places
) -> list[dict[str, Any]]:
    """The images :func:`~warmstart.data.image_hashes.image_keys` could not decode (an exact key of -1), each with
    its file and why (decoded once more: there are few)."""
    out = []
    for name, data in splits.items():
        bad = np.flatnonzero(exact[name] < 0)
        if not len(bad):
            continue
        raw = data.select_columns([column]).cast_column(column, datasets.Image(decode=False)).select(bad)
        for i, value in zip(bad, raw[column]):
            example = {"split": name, "row": place.row(name, int(i)), "error": decode_error(value) or "unreadable"}
            if (value or {}).get("path"):
                example["file"] = value["path"]
            if name in place.held_out:
                example["rows_of"] = place.held_out[name]
            out.append(example)
    return out


class _Places:
    """Row numbers for messages and the report: each split's rows in the data it was read from, counted from 1."""

    def __init__(self, rows: dict[str, np.ndarray], held_out: Mapping[str, str]) -> None:
        self.rows, self.held_out = rows, dict(held_out)

    def row(self, split: str, i: int) -> int:
        return int(self.rows[split][i]) + 1

    def name(self, split: str, i: int) -> str:
        source = self.held_out.get(split)
        if source:
            return f"{source} row {self.row(split, i)} (held out as {split})"
        return f"{split} row {self.row(split, i)}"


def _take_row_numbers(splits: DatasetDict) -> tuple[dict[str, np.ndarray], DatasetDict]:
    rows, out = {}, DatasetDict()
    for name, data in splits.items():
        if ROW_COLUMN in data.column_names:
            rows[name] = arrow_column(data, ROW_COLUMN).to_numpy()
            data = data.remove_columns(ROW_COLUMN)
        else:
            rows[name] = np.arange(len(data))
        out[name] = data
    return rows, out


def _text_keys(splits: DatasetDict, columns: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each split's exact and near keys: ids shared across splits (equal ids, equal texts), -1 where a text has
    nothing left to compare once normalised (punctuation only)."""
    sizes = [len(data) for data in splits.values()]
    texts = []
    for column in columns:
        parts = [pc.cast(arrow_column(data, column), pa.large_string()) for data in splits.values()]
        texts.append(pc.fill_null(pa.concat_arrays(parts), ""))
    exact = _join([pc.utf8_trim_whitespace(t) for t in texts])
    near = [_normalise(t) for t in texts]
    blank = np.zeros(len(exact), dtype=bool)
    for part in near:
        blank |= pc.equal(pc.utf8_length(part), 0).to_numpy(zero_copy_only=False)
    near_ids = np.where(blank, -1, _ids(_join(near)))
    return _by_split(_ids(exact), splits, sizes), _by_split(near_ids, splits, sizes)


def _normalise(texts: pa.Array) -> pa.Array:
    texts = pc.utf8_lower(pc.utf8_normalize(texts, "NFKC"))
    texts = pc.replace_substring_regex(texts, r"[\p{P}\p{S}]+", " ")
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(texts, r"[\s\p{Z}]+", " "))


def _join(columns: list[pa.Array]) -> pa.Array:
    # a control character no normalised text holds between the two texts of a pair
    return (
        columns[0]
        if len(columns) == 1
        else pc.binary_join_element_wise(*columns, pa.scalar("\x1f", pa.large_string()))
    )


def _ids(texts: pa.Array) -> np.ndarray:
    return pc.dictionary_encode(texts).indices.to_numpy().astype(np.int64)


def _by_split(values: np.ndarray, splits: DatasetDict, sizes: list[int]) -> dict[str, np.ndarray]:
    return dict(zip(splits, np.split(values, np.cumsum(sizes)[:-1])))


def _label_ids(splits: DatasetDict) -> dict[str, np.ndarray]:
    """Each row's label (a class, a set of labels, a target vector) as an id shared across splits."""
    values = [label_values(data) for data in splits.values()]
    table = np.concatenate(values).reshape(sum(len(v) for v in values), -1)
    _, ids = np.unique(table, axis=0, return_inverse=True)
    return dict(zip(splits, np.split(ids.reshape(-1), np.cumsum([len(v) for v in values])[:-1])))


def _first_match(train: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """For each key, the first train row with the same key; -1 where none (or the key is -1)."""
    rows = np.flatnonzero(train >= 0)
    if not len(rows):
        return np.full(len(keys), -1)
    order = np.argsort(train[rows], kind="stable")
    sorted_keys, rows = train[rows][order], rows[order]
    at = np.searchsorted(sorted_keys, keys).clip(max=len(sorted_keys) - 1)
    return np.where((sorted_keys[at] == keys) & (keys >= 0), rows[at], -1)


def _kind(exact_match: np.ndarray, i: int) -> str:
    return "exact" if exact_match[i] >= 0 else "near"


# ---------------------------------------------------------------------------------------------- labels and shifts


def _conflicts(
    keys: dict[str, np.ndarray], label_ids: dict[str, np.ndarray], leaked: dict[str, np.ndarray], place: _Places
) -> dict[str, Any]:
    """Inputs (``keys``) with more than one label in train, and leaked evaluation rows labelled otherwise than their
    train example (or whose input train itself labels in more than one way)."""
    train, train_labels = keys["train"], label_ids["train"]
    size = max((int(k.max()) + 1 for k in keys.values() if len(k)), default=0)
    known = train >= 0
    pairs = np.unique(np.stack([train[known], train_labels[known]]), axis=1)
    label_count = np.bincount(pairs[0], minlength=size)
    conflicting = np.flatnonzero(label_count > 1)
    in_conflict = np.flatnonzero(known & np.isin(train, conflicting))
    first_rows = np.sort(np.unique(train[in_conflict], return_index=True)[1])
    groups = [np.flatnonzero(train == key) for key in train[in_conflict][first_rows][:SHOWN]]
    out: dict[str, Any] = {
        "train": {
            "inputs": len(conflicting),
            "rows": len(in_conflict),
            "e.g.": [[place.row("train", i) for i in group[:4]] for group in groups],
        }
    }
    for name, match in leaked.items():
        rows = np.flatnonzero(match >= 0)
        train_rows = match[rows]
        train_keys = train[train_rows]
        ambiguous = (train_keys >= 0) & (label_count[np.where(train_keys >= 0, train_keys, 0)] > 1)
        differs = ambiguous | (train_labels[train_rows] != label_ids[name][rows])
        out[name] = {
            "rows": int(differs.sum()),
            "e.g.": [
                {"row": place.row(name, i), "train_row": place.row("train", t)}
                for i, t in zip(rows[differs][:SHOWN], train_rows[differs][:SHOWN])
            ],
        }
    return out


# ------------------------------------------------------------------------------------------------ messages, actions


def _act(
    splits: DatasetDict,
    leaked: dict[str, np.ndarray],
    report: dict[str, Any],
    on_leakage: str,
    example: Callable[[str, int], str],
) -> DatasetDict:
    """Logs the leaked examples, drops them, or refuses the run (``on_leakage``); ``example`` names one row."""
    duplicates = report["duplicates"]
    found = [name for name, d in duplicates.items() if d["exact"] or d["near"]]
    if not found:
        if duplicates:
            logger.info("data checks: no %s example is also in train", " or ".join(duplicates))
        return splits
    counts = " and ".join(
        f"{duplicates[n]['exact'] + duplicates[n]['near']} {n} example(s) ({duplicates[n]['exact']} exact, "
        f"{duplicates[n]['near']} near)"
        for n in found
    )
    first = int(np.flatnonzero(leaked[found[0]] >= 0)[0])
    where = f"e.g. {example(found[0], first)} = {example('train', int(leaked[found[0]][first]))}"
    if on_leakage == "refuse":
        raise WarmstartError(
            f"{counts} are duplicates of train examples ({where}): remove them, or pass --on_leakage drop / warn"
        )
    if on_leakage == "warn":
        logger.warning(
            "%s are also in train (%s): their scores overstate the model; --on_leakage drop removes them, refuse "
            "stops the run",
            counts,
            where,
        )
        return splits
    for name in found:
        keep = np.flatnonzero(leaked[name] < 0)
        if not len(keep):
            raise WarmstartError(
                f"every {name} example is also in train ({where}): give {name} data of its own, or pass "
                "--on_leakage warn"
            )
        duplicates[name]["dropped"] = len(leaked[name]) - len(keep)
        splits[name] = splits[name].select(keep)
    logger.warning("dropped %s that are also in train (%s; --on_leakage drop)", counts, where)
    return splits


def _describe(data: datasets.Dataset, i: int, text_columns: Sequence[str], image_column: str | None) -> str:
    """One input, briefly, for a message: its text (clipped) or its image's file name."""
    if image_column:
        value = data.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))[i]
        path = (value[image_column] or {}).get("path")
        return f" ({Path(path).name})" if path else ""
    text = " | ".join(" ".join(str(data[i][column]).split()) for column in text_columns)
    return f" ({text[:40] + '...' if len(text) > 40 else text!r})"


def _log_findings(report: dict[str, Any]) -> None:
    conflicts = report["conflicting_labels"]
    train = conflicts["train"]
    if train["inputs"]:
        shown = "; ".join(", ".join(map(str, rows)) for rows in train["e.g."])
        logger.warning(
            "%d input(s) appear in train with different labels (%d rows; e.g. train rows %s): check those labels",
            train["inputs"],
            train["rows"],
            shown,
        )
    for name, found in conflicts.items():
        if name != "train" and found["rows"]:
            example = found["e.g."][0]
            logger.warning(
                "%d %s example(s) are labelled otherwise than the same input in train (e.g. %s row %d vs train row "
                "%d)",
                found["rows"],
                name,
                name,
                example["row"],
                example["train_row"],
            )
    for name, shift in report["label_shift"].items():
        log_shift(name, shift)
