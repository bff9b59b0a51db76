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

import warmstart
from warmstart import parse_config, run_cli

TASK = "image_autoencoder"


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses the command line (or a config file), and runs."""
    config = parse_config(argv, TASK)  # --help and bad arguments end here, before training's libraries load
    return warmstart.run(config)


if __name__ == "__main__":
    run_cli(main)
