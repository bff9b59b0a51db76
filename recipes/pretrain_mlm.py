#!/usr/bin/env python
"""Continued (domain-adaptive) masked-language-model pretraining of a BERT-family model on unlabeled text.

    accelerate launch recipes/pretrain_mlm.py \
        --model_name_or_path bert-base-uncased --train_file corpus.txt --max_seq_length 128 \
        --output_dir outputs/bert-domain --num_train_epochs 3 --learning_rate 5e-5 --eval_strategy epoch

The output is a hub-format masked-LM model (with its tokenizer) that the classification recipe fine-tunes:

    accelerate launch recipes/text_classification.py --model_name_or_path outputs/bert-domain ...

Text comes from a .txt file (one text per line), a folder of .txt files (--train_dir), a csv / json / parquet
column (--text_column_name) or a hub dataset; perplexity on the validation split is reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import warmstart
from warmstart import parse_config, run_cli

TASK = "masked_lm"


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses the command line (or a config file), and runs."""
    config = parse_config(argv, TASK)  # --help and bad arguments end here, before training's libraries load
    return warmstart.run(config)


if __name__ == "__main__":
    run_cli(main)
