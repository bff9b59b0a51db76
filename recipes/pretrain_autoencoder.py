#!/usr/bin/env python
"""Unsupervised pretraining of a timm backbone on unlabeled images: its encoder plus a light convolutional decoder,
trained to reconstruct the input (MSE), or with --mask_ratio the masked patches of it (MAE-style loss; the masked
pixels are zeroed in the input, as SimMIM does, so CNNs and ViTs train alike).

    accelerate launch recipes/pretrain_autoencoder.py \
        --model_name_or_path resnet18 --random_init --train_dir unlabeled_images/ --image_size 64 \
        --mask_ratio 0.5 --output_dir outputs/resnet18-ae --num_train_epochs 20 --learning_rate 1e-3

The output is the ENCODER alone, a normal timm / transformers hub-format model (no decoder, no classifier), with
reconstructions.png (inputs, masked inputs, reconstructions); the classification recipe fine-tunes it:

    accelerate launch recipes/image_classification.py --model_name_or_path outputs/resnet18-ae ...
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from warmstart import (
    apply_devices,
    attach_image_transforms,
    check_images,
    image_collate,
    image_transforms,
    load_timm_backbone,
    load_unlabeled_splits,
    run_cli,
)
from warmstart.autoencoder import (
    AutoencoderArguments,
    build_image_autoencoder,
    save_image_encoder,
    save_reconstruction_grid,
)
from warmstart.training import pretrain_evaluate_save, start_pretraining


def main(argv: Sequence[str] | None = None) -> dict:
    args = start_pretraining(argv, AutoencoderArguments, task="autoencoder pretraining")
    data_args, objective, training_args = args.data, args.objective, args.training
    training_args.remove_unused_columns = False  # the image column is decoded by our transform

    timm_model = load_timm_backbone(
        args.model.model_name_or_path,
        random_init=args.model.random_init,
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
    apply_devices(args, model, "image", input_size=data_config["input_size"])
    splits = attach_image_transforms(splits, image_column, train_transform, eval_transform)
    args.run.config.update(
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

    return pretrain_evaluate_save(
        args.run,
        model=model,
        training_args=training_args,
        splits=splits,
        data_collator=image_collate,
        after_training=write_grid,
        save_model=lambda trained, output_dir: save_image_encoder(trained.encoder, output_dir, data_config),
        card={
            "modality": "image",
            "name": str(args.run.output_dir),
            "base_model": args.model.model_name_or_path + (" (random init)" if args.model.random_init else ""),
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


if __name__ == "__main__":
    run_cli(main)
