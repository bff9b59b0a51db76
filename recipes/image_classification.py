#!/usr/bin/env python
"""Fine-tune a timm backbone on an image classification dataset with a fine-tuning policy.

    accelerate launch recipes/image_classification.py \
        --model_name_or_path timm/resnet18.a1_in1k --train_dir data/train --validation_dir data/val \
        --freeze_strategy gradual --unfreeze_every 1 --layer_lr_decay 0.7 --output_dir outputs/resnet18-gradual \
        --num_train_epochs 5 --learning_rate 3e-4 --per_device_train_batch_size 64 --eval_strategy epoch

Or with every argument in one file, the command line overriding it:

    accelerate launch recipes/image_classification.py config.yaml --learning_rate 1e-4
"""

from __future__ import annotations

from collections.abc import Sequence

import warmstart
from warmstart import parse_config, run_cli

TASK = "image_classification"


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses the command line (or a config file), and runs or searches."""
    config = parse_config(argv, TASK)  # --help and bad arguments end here, before training's libraries load
    return warmstart.run_search(config) if config.searching else warmstart.run(config)


if __name__ == "__main__":
    run_cli(main)
