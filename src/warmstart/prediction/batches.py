"""Running a predictor over an input in batches, in input order."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import UnidentifiedImageError
from sklearn.metrics import f1_score
from tqdm.auto import tqdm

from warmstart.data import (
    TextCollator,
)
from warmstart.data.decoding import load_image
from warmstart.errors import WarmstartError
from warmstart.metrics import regression_metrics
from warmstart.prediction.inputs import PredictionInput
from warmstart.prediction.predictor import Predictor
from warmstart.problems import MULTI_LABEL, REGRESSION


class ImageRows(torch.utils.data.Dataset):
    """Decodes and transforms the images of a :class:`PredictionInput` one row at a time (a table's image bytes stay
    on disk until needed). A row that cannot be read gives its error message instead of pixels: raised in a
    DataLoader worker, the error would reach the user wrapped in the worker's traceback."""

    def __init__(self, data: PredictionInput, transform: Callable):
        self.dataset = data.dataset
        self.column = data.columns[0]
        self.transform = transform
        self.source = data.source

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, row: int) -> tuple[int, torch.Tensor | None, str | None]:
        value = self.dataset[row][self.column]
        if value is None or not (value.get("bytes") or value.get("path")):
            return row, None, f"row {row} of {self.source} has no image: fill or drop it"
        name = value.get("path") or f"row {row} of {self.source}"
        try:
            image = load_image(value)  # upright, first frame, RGB, as in training: warmstart.data.decoding
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            return row, None, f"image {name} cannot be read ({err}): remove or replace the file"
        return row, self.transform(image), None


def _image_batch(items: list[tuple[int, torch.Tensor | None, str | None]]) -> tuple[list[int], dict[str, Any]]:
    errors = [error for _, _, error in items if error]
    if errors:
        return [], {"error": errors[0]}
    return [row for row, _, _ in items], {"pixel_values": torch.stack([pixels for _, pixels, _ in items])}


def predict_batches(
    predictor: Predictor,
    data: PredictionInput,
    batch_size: int = 64,
    *,
    progress: bool = True,
    num_workers: int = 0,
    rows: Sequence[int] | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Runs the model over the input in batches.

    Images are decoded and transformed (``num_workers`` processes) in input order; texts are tokenized once and
    batched longest first, each batch padded to its own longest text, as the recipe evaluates.

    Args:
        predictor: the model (:func:`load_predictor`).
        data: the input (:func:`read_prediction_input`).
        batch_size: inputs per forward pass.
        progress: show a tqdm progress bar (rows).
        num_workers: images: DataLoader worker processes.
        rows: the row numbers of ``data`` to predict (a process's share of a multi-process run); ``None``: all.

    Yields:
        ``(rows, scores)``: the batch's row numbers in ``data`` and a ``(len(rows), num_labels)`` float32 CPU
        tensor, :meth:`Predictor.scores` of the logits (class or label probabilities, or regression values).

    Raises:
        WarmstartError: ``batch_size`` < 1, or an image that cannot be read (named).
    """
    total = len(data.ids) if rows is None else len(rows)
    batches = input_batches(predictor, data, batch_size, num_workers=num_workers, rows=rows)
    with tqdm(total=total, unit="row", desc="predicting", disable=not progress) as bar:
        for batch_rows, batch in batches:
            logits = predictor.logits(batch)
            yield batch_rows, predictor.scores(logits).cpu()
            bar.update(len(batch_rows))


def input_batches(
    predictor: Predictor,
    data: PredictionInput,
    batch_size: int = 64,
    *,
    num_workers: int = 0,
    rows: Sequence[int] | None = None,
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """The model's inputs, preprocessed, in batches on ``predictor.device``: what :func:`predict_batches` runs the
    model on (and what an ONNX export is traced and checked with).

    Yields:
        ``(rows, batch)``: the batch's row numbers in ``data`` and its tensors (``pixel_values``; or ``input_ids``,
        ``attention_mask``...), padded to the batch's longest text.

    Raises:
        WarmstartError: ``batch_size`` < 1, or an image that cannot be read (named).
    """
    if batch_size < 1:
        raise WarmstartError(f"--batch_size must be a positive integer, got {batch_size}")
    if predictor.modality == "image":
        batches = torch.utils.data.DataLoader(
            ImageRows(data, predictor.preprocess),
            batch_size=batch_size,
            sampler=rows,
            num_workers=num_workers,
            collate_fn=_image_batch,
            pin_memory=predictor.device.type == "cuda",
        )
    else:
        batches = _text_batches(predictor, data, batch_size, rows)
    for batch_rows, batch in batches:
        if "error" in batch:
            raise WarmstartError(batch["error"])
        yield batch_rows, {k: v.to(predictor.device, non_blocking=True) for k, v in batch.items()}


def _text_batches(
    predictor: Predictor, data: PredictionInput, batch_size: int, rows: Sequence[int] | None = None
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    # only the rows asked for are read and tokenized: a process of a multi-process run does its share alone
    dataset = data.dataset if rows is None else data.dataset.select(rows)
    if len(dataset) == 0:
        return
    numbers = range(len(dataset)) if rows is None else list(rows)
    encoded = predictor.preprocess(*(dataset[c] for c in data.columns))
    features = [dict(zip(encoded.keys(), values)) for values in zip(*encoded.values())]
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]), reverse=True)
    collate = TextCollator(predictor.tokenizer)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        yield [numbers[i] for i in batch], collate([features[i] for i in batch])


def predict(
    predictor: Predictor,
    data: PredictionInput,
    batch_size: int = 64,
    *,
    progress: bool = True,
    num_workers: int = 0,
    rows: Sequence[int] | None = None,
) -> torch.Tensor:
    """The class probabilities of every input row, in input order: :func:`predict_batches` gathered.

    Args:
        rows: the row numbers of ``data`` to predict, the others being left out; ``None``: all.

    Returns:
        A ``(rows, num_labels)`` float32 tensor: a row per input row, or per entry of ``rows`` in its order.
    """
    count = len(data.ids) if rows is None else len(rows)
    probs = torch.empty(count, len(predictor.labels), dtype=torch.float32)
    # the batches name rows of the input; with a subset, each goes to its place in ``rows``
    place = None if rows is None else {row: i for i, row in enumerate(rows)}
    batches = predict_batches(predictor, data, batch_size, progress=progress, num_workers=num_workers, rows=rows)
    for batch_rows, batch_probs in batches:
        probs[batch_rows if place is None else [place[row] for row in batch_rows]] = batch_probs
    return probs


def prediction_accuracy(probs: torch.Tensor, true_labels: Sequence[int] | None) -> float | None:
    """The share of rows whose most probable class is the true one; ``None`` without true labels."""
    if true_labels is None or len(true_labels) == 0:
        return None
    return (probs.argmax(dim=-1) == torch.as_tensor(list(true_labels))).float().mean().item()


def prediction_metric(
    predictor: Predictor, scores: torch.Tensor, true_labels: Sequence | None
) -> tuple[str, float] | None:
    """The headline metric of the predictions against the input's true labels, as the model's label shape scores
    it: ``accuracy`` (single-label), ``f1_micro`` at the model's thresholds (multi-label), ``rmse`` (regression);
    ``None`` without true labels."""
    if true_labels is None or len(true_labels) == 0:
        return None
    if predictor.problem_type == MULTI_LABEL:
        predicted = scores.double().numpy() >= np.asarray(predictor.thresholds or 0.5)
        truth = np.asarray(true_labels, dtype=np.float64) >= 0.5
        return "f1_micro", float(f1_score(truth, predicted, average="micro", zero_division=0))
    if predictor.problem_type == REGRESSION:
        truth = np.asarray(true_labels, dtype=np.float64).reshape(len(true_labels), -1)
        return "rmse", regression_metrics(scores.double().numpy().reshape(truth.shape), truth)["rmse"]
    return "accuracy", prediction_accuracy(scores, true_labels)
