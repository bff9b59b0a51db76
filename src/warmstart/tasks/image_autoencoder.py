"""The ``image_autoencoder`` task: unsupervised pretraining of a timm backbone on unlabelled images, its encoder
plus a light convolutional decoder trained to reconstruct the input (or, with ``--mask_ratio``, its masked
patches); the encoder alone is saved, for the image classification task to fine-tune."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from warmstart.autoencoder import build_image_autoencoder, save_image_encoder, save_reconstruction_grid
from warmstart.config import RunConfig
from warmstart.data import (
    attach_image_transforms,
    check_images,
    image_collate,
    image_transforms,
    load_unlabeled_splits,
)
from warmstart.models import load_timm_backbone
from warmstart.plan import change_training
from warmstart.tasks.classification import apply_devices
from warmstart.training import start_run, train_self_supervised


def execute(
    config: RunConfig, *, callbacks: Sequence[TrainerCallback] = (), feature_store: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Runs the task (see :func:`warmstart.run`; ``feature_store`` has no use here)."""
    run = start_run(config)
    data_args, objective, training_args = config.data, config.objective, config.training
    change_training(training_args, "the image column is decoded by our transform", remove_unused_columns=False)

    timm_model = load_timm_backbone(
        config.model.model_name_or_path,
        random_init=config.model.random_init,
        image_size=data_args.image_size,
        purpose="pretrain",
    )
    splits, image_column = load_unlabeled_splits(data_args, "image", seed=training_args.seed)
    check_images(splits, image_column)
    data_config, train_transform, eval_transform = image_transforms(
        timm_model, data_args.image_size, data_args.hflip, data_args.random_crop_scale
    )
    if not data_args.hflip and data_args.random_crop_scale is None:
        train_transform = eval_transform  # no augmentation asked for: the images as they are, resized
    timm_model.reset_classifier(0)  # a classifier gets no gradient from reconstruction, and is not saved
    # each process masks its own patches: the Trainer seeds every process alike
    mask_seed = training_args.seed + training_args.process_index
    model = build_image_autoencoder(timm_model, data_config["input_size"], objective, mask_seed=mask_seed)
    apply_devices(config, run, model, input_size=data_config["input_size"])
    splits = attach_image_transforms(splits, image_column, train_transform, eval_transform)
    run.config.update(
        image_data_config=dict(data_config),
        mask_patch_size=model.mask_patch_size,
        objective_description=objective.describe(model.mask_patch_size),
    )

    def write_grid(trained: torch.nn.Module, output_dir: Path) -> list[tuple[str, str]]:
        shown = splits["validation"].select(range(min(objective.num_reconstructions, len(splits["validation"]))))
        pixels = image_collate(list(shown))["pixel_values"]
        path = save_reconstruction_grid(
            trained, pixels, data_config["mean"], data_config["std"], output_dir / "reconstructions.png"
        )
        return [("validation images (top), masked (middle, with --mask_ratio) and reconstructed", path.name)]

    return train_self_supervised(
        run,
        model=model,
        training_args=training_args,
        splits=splits,
        data_collator=image_collate,
        after_training=write_grid,
        callbacks=callbacks,
        save_model=lambda trained, output_dir: save_image_encoder(trained.encoder, output_dir, data_config),
        card={
            "modality": "image",
            "name": str(run.output_dir),
            "base_model": config.model.describe(),
            "data": data_args.describe() + f"; image column `{image_column}`, labels unused",
            "objective": objective.describe(model.mask_patch_size)
            + ". Saved here: the encoder alone (no decoder, no classifier).",
            "pipeline_tag": "image-feature-extraction",
            "load": (
                "Fine-tune it for classification (a new head is sized to your labels):\n\n```bash\naccelerate launch "
                "recipes/image_classification.py --model_name_or_path <this directory> --train_dir data/train ...\n"
                "```\n\nor use it as a feature extractor:\n\n```python\nimport timm\nencoder = timm.create_model("
                '"local-dir:<this directory>", pretrained=True)\n```'
            ),
        },
    )
