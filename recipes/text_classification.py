#!/usr/bin/env python
"""Fine-tune a BERT-family model on a text (or text-pair) classification dataset with a fine-tuning policy.

    accelerate launch recipes/text_classification.py \
        --model_name_or_path bert-base-uncased --train_file train.csv --validation_file dev.csv \
        --text_column_names text --label_column_name label --freeze_strategy lp_ft --probe_epochs 1 \
        --output_dir outputs/bert-lpft --num_train_epochs 3 --learning_rate 5e-5 --eval_strategy epoch

Or with every argument in one file, the command line overriding it:

    accelerate launch recipes/text_classification.py config.yaml --learning_rate 3e-5
"""

from __future__ import annotations

from collections.abc import Sequence

import warmstart
from warmstart import parse_config, run_cli

TASK = "text_classification"


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses the command line (or a config file), and runs or searches."""
    config = parse_config(argv, TASK)  # --help and bad arguments end here, before training's libraries load
    return warmstart.run_search(config) if config.searching else warmstart.run(config)


if __name__ == "__main__":
    run_cli(main)
