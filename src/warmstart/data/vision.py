"""Image columns and the path from a file to a batch: the column (paths resolved against their table), the up-front
readability check, timm's transforms, applied lazily per split, and the collator."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from datasets import DatasetDict
from PIL import Image, UnidentifiedImageError

from warmstart.data.bad_examples import RETRIES, BadExample, BadExamples
from warmstart.data.columns import LABEL_COLUMN, require_column
from warmstart.data.decoding import DECODE_ERRORS, describe_error, image_file, load_image
from warmstart.data.leakage import ROW_COLUMN
from warmstart.data.sources import (
    is_path_column,
    resolve_image_paths,
)
from warmstart.errors import WarmstartError

logger = logging.getLogger(__name__)

TRAIN_MARKER = "_warmstart_train"  # key on each training example (attach_image_transforms(mark_train=True))


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
    (:func:`warmstart.data.sources.resolve_image_paths`); ``where`` names the splits in its messages (default ``the
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
    require_column(splits, image_column, "--image_column_name")
    feature = reference.features[image_column]
    if not isinstance(feature, datasets.Image):
        if not is_path_column(feature):
            raise WarmstartError(f"column {image_column!r} holds {feature}, not images or image paths")
        for split in splits:
            base = (base_dirs or {}).get(split)
            place = (where or {}).get(split, f"the {split} split")
            splits[split] = resolve_image_paths(splits[split], image_column, base, place)
    return image_column


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
        labels = torch.as_tensor([e[LABEL_COLUMN] for e in examples])
        # class ids as int64; multi-hot vectors and regression targets as float32
        batch[LABEL_COLUMN] = labels.long() if not labels.is_floating_point() else labels.float()
    return batch


def attach_image_transforms(
    splits: DatasetDict,
    image_column: str,
    train_transform: Callable[[Image.Image], torch.Tensor],
    eval_transform: Callable[[Image.Image], torch.Tensor],
    *,
    mark_train: bool = False,
    bad_examples: BadExamples | None = None,
) -> DatasetDict:
    """Transforms images lazily (``set_transform``): train augmentation for train, the eval transform elsewhere.

    Images are decoded here rather than by ``datasets``, so that a file that breaks mid-epoch is named: by its file
    and its row as read, where the split carries ``ROW_COLUMN``
    (:func:`~warmstart.data.splits.load_checked_splits` with ``keep_row_numbers``).

    Args:
        splits: the splits, labels (if any) in ``labels``.
        image_column: the column of images (or image paths).
        train_transform: for the ``train`` split.
        eval_transform: for every other split.
        mark_train: give each ``train`` example the key :data:`TRAIN_MARKER` (``True``),
            so that one collator can tell training batches from evaluation ones (the Trainer uses the same
            ``data_collator`` for both): :class:`warmstart.regularization.MixupCollator` mixes marked batches only.
            Needs ``remove_unused_columns=False`` (the recipes set it), or the Trainer drops the key.
        bad_examples: what to do with an image that does not decode (default: stop with one line): with ``skip``,
            the next readable example of the split takes its place (:class:`~warmstart.data.bad_examples.BadExamples`).
    """
    marker = TRAIN_MARKER if mark_train else None
    bad_examples = bad_examples or BadExamples()

    def make(transform: Callable, split: str, raw: datasets.Dataset) -> Callable[[dict[str, list]], dict[str, list]]:
        replacements = _Replacements(raw, image_column, split, bad_examples)

        def apply(batch: dict[str, list]) -> dict[str, list]:
            pixels, labels = [], list(batch[LABEL_COLUMN]) if LABEL_COLUMN in batch else None
            rows = batch.get(ROW_COLUMN)
            for i, value in enumerate(batch[image_column]):
                try:
                    image = load_image(value)  # upright, first frame, RGB: warmstart.data.decoding
                except DECODE_ERRORS as err:
                    row = None if rows is None else int(rows[i])
                    bad_examples.meet(_bad_image(value, split, row, err, bad_examples))
                    image, label = replacements.after(value, row)  # skip: the next readable example
                    if labels is not None:
                        labels[i] = label
                pixels.append(transform(image))
            out = {"pixel_values": pixels}
            if labels is not None:  # unlabeled images (pretraining) have none
                out[LABEL_COLUMN] = labels
            if marker is not None and split == "train":
                out[marker] = [True] * len(pixels)
            return out

        return apply

    for split in list(splits):
        raw = splits[split].cast_column(image_column, datasets.Image(decode=False))
        data = raw.with_transform(make(train_transform if split == "train" else eval_transform, split, raw))
        splits[split] = data
    return splits


def _bad_image(
    value: dict[str, Any] | None, split: str, row: int | None, err: BaseException, bad_examples: BadExamples
) -> BadExample:
    return BadExample(
        split,
        0 if row is None else row + 1,
        describe_error(err),
        file=(value or {}).get("path") or None,
        rows_of=bad_examples.held_out.get(split),
        when="during training",
    )


class _Replacements:
    """The readable example that takes a bad one's place (``--on_bad_example skip``): the next rows of the split,
    as timm's ``ImageDataset`` does, up to :data:`~warmstart.data.bad_examples.RETRIES` of them."""

    def __init__(self, raw: datasets.Dataset, column: str, split: str, bad_examples: BadExamples) -> None:
        self.raw, self.column, self.split, self.bad_examples = raw, column, split, bad_examples
        self._positions: dict[int, int] | None = None

    def after(self, value: dict[str, Any] | None, row: int | None) -> tuple[Image.Image, Any]:
        n = len(self.raw)
        start = self._position(value, row)
        for step in range(1, RETRIES + 1):
            example = self.raw[(start + step) % n]
            candidate = example.get(ROW_COLUMN)
            if candidate is not None and (self.split, int(candidate) + 1) in self.bad_examples.found:
                continue
            try:
                return load_image(example[self.column]), example.get(LABEL_COLUMN)
            except DECODE_ERRORS as err:
                self.bad_examples.meet(_bad_image(example[self.column], self.split, candidate, err, self.bad_examples))
        raise WarmstartError(
            f"{RETRIES} examples of the {self.split} split after row {row} cannot be read either: the data is "
            "broken there; fix or remove it"
        )

    def _position(self, value: dict[str, Any] | None, row: int | None) -> int:
        """The bad example's position in the split: found by its row number; else its file; else 0."""
        if row is not None and ROW_COLUMN in self.raw.column_names:
            if self._positions is None:
                self._positions = {int(r): i for i, r in enumerate(self.raw.with_format("numpy")[ROW_COLUMN])}
            return self._positions.get(row, 0)
        path = (value or {}).get("path")
        if path:
            paths = [(v or {}).get("path") for v in self.raw[self.column]]
            if path in paths:
                return paths.index(path)
        return 0


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
