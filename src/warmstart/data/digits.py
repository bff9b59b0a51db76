"""Scikit-learn's handwritten digits (real 8x8 scans, 1,797 of them, shipped with scikit-learn) as image data: the
quickstart's data set, and the three parquet files of the worked pretrain-then-fine-tune chain, offline."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from warmstart.distributed import broadcast_from_main, ensure_process_group, on_main_process
from warmstart.errors import WarmstartError

_DIGITS_MAX = 16  # the scans' intensity range is 0..16


def digits_image_dataset(image_size: int = 64, seed: int = 0, val_fraction: float = 0.2) -> datasets.DatasetDict:
    """Scikit-learn's 8x8 handwritten digits as RGB images in a stratified train/validation split.

    Intensities 0..16 are scaled to 0..255 and kept as bright ink on a dark background, the dataset's own polarity;
    fine-tuning adapts to either polarity, so inverting would only add a convention to remember. The grey image is
    upsampled with bicubic interpolation and replicated to three channels to fit ImageNet-pretrained models.

    Args:
        image_size: Side length in pixels of the square output images.
        seed: Seed of the stratified split.
        val_fraction: Fraction of the 1797 samples that goes to the validation split.

    Returns:
        A ``DatasetDict`` with ``train`` and ``validation`` splits, each with an ``image`` column
        (``datasets.Image``) and a ``label`` column (``datasets.ClassLabel`` with names ``"0"`` to ``"9"``).
    """
    digits = load_digits()
    pixels = np.rint(digits.images * (255 / _DIGITS_MAX)).astype(np.uint8)
    images = [
        Image.fromarray(grey).resize((image_size, image_size), Image.Resampling.BICUBIC).convert("RGB")
        for grey in pixels
    ]
    labels = digits.target.tolist()

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    dataset = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    splits = dataset.train_test_split(test_size=val_fraction, stratify_by_column="label", seed=seed)
    return datasets.DatasetDict({"train": splits["train"], "validation": splits["test"]})


def write_digits_chain_data(
    output_dir: str | Path, image_size: int = 32, labeled_fraction: float = 0.1, seed: int = 0
) -> dict[str, Path]:
    """Writes scikit-learn's digits as the three parquet files of a pretrain-then-fine-tune chain.

    - ``unlabeled.parquet``: every training image, with no label column (autoencoder pretraining).
    - ``labeled.parquet``: a stratified ``labeled_fraction`` of the same training images, with labels.
    - ``validation.parquet``: the held-out 20 %, with labels, never seen in pretraining.

    Returns:
        The paths by name (``unlabeled``, ``labeled``, ``validation``).

    Raises:
        ValueError: ``labeled_fraction`` leaves a class without an example.
    """
    if not 0.0 < labeled_fraction <= 1.0:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {labeled_fraction}")
    splits = digits_image_dataset(image_size=image_size, seed=seed)
    train = splits["train"]
    if labeled_fraction * len(train) < 10:
        raise ValueError(f"labeled_fraction {labeled_fraction} leaves a digit without a labeled example: raise it")
    if labeled_fraction < 1.0:
        labeled = train.train_test_split(train_size=labeled_fraction, stratify_by_column="label", seed=seed)["train"]
    else:
        labeled = train
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: output_dir / f"{name}.parquet" for name in ("unlabeled", "labeled", "validation")}
    train.remove_columns("label").to_parquet(paths["unlabeled"])
    labeled.to_parquet(paths["labeled"])
    splits["validation"].to_parquet(paths["validation"])
    return paths


def digits_data_step(output_dir: str, image_size: int = 32, labeled_fraction: float = 0.1, seed: int = 0) -> dict:
    """The ``digits_data`` step of a chain (and ``recipes/digits_data.py``): :func:`write_digits_chain_data` on the
    main process, the others waiting for the files.

    Returns:
        The paths written, by name.

    Raises:
        WarmstartError: an image size below the scans' 8 pixels, or a fraction that leaves a class without labels.
    """
    if image_size < 8:
        raise WarmstartError(f"--image_size must be at least 8 (the scans are 8x8), got {image_size}")

    def write() -> dict[str, str]:
        try:
            paths = write_digits_chain_data(output_dir, image_size, labeled_fraction, seed)
        except ValueError as err:
            raise WarmstartError(f"--labeled_fraction: {err}") from None
        return {name: str(path) for name, path in paths.items()}

    ensure_process_group()  # in a chain under torchrun: the main process writes, the others wait for the files
    return broadcast_from_main(on_main_process(write))
