"""The predictions CSV: checked before any prediction runs, written atomically by the main process."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from warmstart.distributed import (
    active,
    is_main_process,
)
from warmstart.errors import WarmstartError
from warmstart.prediction.processes import stop_together
from warmstart.problems import MULTI_LABEL, REGRESSION, SINGLE_LABEL

ID_COLUMN = "id"
PREDICTION_COLUMN = "predicted_label"
PREDICTED_LABELS_COLUMN = "predicted_labels"  # multi-label: the labels at their thresholds, as a JSON list
PROBABILITY_PREFIX = "prob_"
VALUE_PREFIX = "predicted_"  # regression: one column per target


def check_output_path(path: str | Path, overwrite: bool = False) -> Path:
    """Refuses an output that exists (unless ``overwrite``), is a folder, or cannot be written; checked before any
    prediction runs.

    Raises:
        WarmstartError: as above.
    """
    path = Path(path)
    if path.is_dir():
        raise WarmstartError(f"--output {path} is a folder: give a file name, e.g. {path / 'predictions.csv'}")
    if path.exists() and not overwrite:
        raise WarmstartError(f"--output {path} already exists: choose another file or pass --overwrite true")
    existing = next(p for p in (path.absolute().parent, *path.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise WarmstartError(f"--output {path} cannot be written ({existing} is not a writable folder)")
    return path


def check_output_path_once(path: str | Path, overwrite: bool = False) -> Path:
    """:func:`check_output_path`, decided by the main process (the one that writes) and agreed by all the processes
    of a launch: a refusal stops every one of them at once, with one message, rather than leaving the others to
    load the model and wait for a process that stopped. In one process, :func:`check_output_path`.

    Raises:
        WarmstartError: as :func:`check_output_path` (raised in the main process; the others exit with status 2).
    """
    if not active():
        return check_output_path(path, overwrite)
    with stop_together():
        if is_main_process():
            check_output_path(path, overwrite)
    return Path(path)


def write_predictions_once(
    path: str | Path,
    ids: Sequence[str],
    labels: Sequence[str],
    probs: torch.Tensor,
    *,
    overwrite: bool = False,
    problem_type: str = SINGLE_LABEL,
    thresholds: Sequence[float] | None = None,
) -> Path:
    """:func:`write_predictions` by the main process alone, the others waiting until it is written (or failed, which
    stops them all): no process returns, and so the launch does not end, before the file is in place. In one
    process, :func:`write_predictions`.

    Raises:
        WarmstartError: as :func:`write_predictions` (raised in the main process; the others exit with status 2).
    """
    with stop_together():  # its closing collective is the barrier
        if not active() or is_main_process():
            write_predictions(
                path, ids, labels, probs, overwrite=overwrite, problem_type=problem_type, thresholds=thresholds
            )
    return Path(path)


def write_predictions(
    path: str | Path,
    ids: Sequence[str],
    labels: Sequence[str],
    probs: torch.Tensor,
    *,
    overwrite: bool = False,
    problem_type: str = SINGLE_LABEL,
    thresholds: Sequence[float] | None = None,
) -> Path:
    """Writes one row per input, comma-separated (tab for a ``.tsv`` name), numbers to 9 significant digits (a
    float32 exactly):

    - single-label: ``id``, ``predicted_label`` and ``prob_<label>`` per class;
    - multi-label: ``id``, ``predicted_labels`` (a JSON list of the labels whose probability reaches its threshold;
      ``thresholds``, 0.5 each by default) and ``prob_<label>`` per label;
    - regression: ``id`` and ``predicted_<target>`` per target, in the targets' units.

    The file is written next to its final place and moved there in one step (``os.replace``): a crash leaves
    neither half a file nor a damaged older one.

    Raises:
        WarmstartError: the output exists and ``overwrite`` is off, or it cannot be written.
    """
    path = check_output_path(path, overwrite)
    if probs.shape != (len(ids), len(labels)):
        raise ValueError(f"probabilities of shape {tuple(probs.shape)} for {len(ids)} ids and {len(labels)} labels")
    path.parent.mkdir(parents=True, exist_ok=True)
    values = probs.tolist()
    numbers = [[format(p, ".9g") for p in row] for row in values]
    if problem_type == REGRESSION:
        header = [ID_COLUMN, *(f"{VALUE_PREFIX}{label}" for label in labels)]
        rows = [[row_id, *row] for row_id, row in zip(ids, numbers)]
    elif problem_type == MULTI_LABEL:
        limits = list(thresholds) if thresholds is not None else [0.5] * len(labels)
        header = [ID_COLUMN, PREDICTED_LABELS_COLUMN, *(f"{PROBABILITY_PREFIX}{label}" for label in labels)]
        chosen = [json.dumps([lab for lab, p, t in zip(labels, row, limits) if p >= t]) for row in values]
        rows = [[row_id, tags, *row] for row_id, tags, row in zip(ids, chosen, numbers)]
    else:
        header = [ID_COLUMN, PREDICTION_COLUMN, *(f"{PROBABILITY_PREFIX}{label}" for label in labels)]
        predicted = probs.argmax(dim=-1).tolist()
        rows = [[row_id, labels[best], *row] for row_id, best, row in zip(ids, predicted, numbers)]
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
