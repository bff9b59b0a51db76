#!/usr/bin/env python
"""Compare fine-tuning strategies on your validation set and keep the best: each strategy at each of its learning
rates is one run of the image or text recipe on the same splits, seed and budget.

    accelerate launch recipes/compare_strategies.py \
        --model_name_or_path timm/resnet18.a1_in1k --train_dir data/train --validation_dir data/val \
        --strategies head_only top_k:2 full lp_ft bitfit \
        --num_train_epochs 5 --eval_strategy epoch --output_dir outputs/resnet18-comparison

Learning rates: by default each strategy sweeps its own three, 0.3x, 1x and 3x its default rate (full fine-tuning
and parameter-efficient methods need rates 10-100x apart), and is compared at its best. --learning_rates 1e-3 1e-4
crosses those rates with every strategy instead; --learning_rate 1e-4 alone is one rate shared by all. head_only
with its head solved (L-BFGS on the cached features: the default unless --probe_solver trainer, --cache_features
false or image augmentation) needs no rate and runs once, as head_only-lbfgs; so lp_ft's probe needs no
--probe_epochs there (with the Trainer's probe it gets half the epochs unless told).

Soups: the runs that share an architecture and trainable set (a strategy at its three rates) are averaged into a
greedy model soup (best first, each run added when the average is at least as good on validation), a row of its own,
kept when best; --soup none turns it off. --prefer cheaper_if_tied keeps the cheapest run the best does not
significantly beat.

Writes comparison.csv, comparison.md and comparison.png (validation metric against training time, marker size:
trainable parameters, the majority-class level as a line) and the best model (by --metric_for_best_model, default
accuracy) into --output_dir, in hub format, with the comparison in its model card; every run stays in
output_dir/runs/. A rerun skips finished runs (with --resume_from_checkpoint auto it resumes the interrupted one from
its checkpoint). Under torchrun every run is a multi-process run, and the main process writes.
Takes every argument of the recipes (a config file too); the image or text recipe is chosen from the model / data.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from warmstart import run_cli
from warmstart.comparison import compare_strategies, parse_comparison


def main(argv: Sequence[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return []
    return compare_strategies(*parse_comparison(argv))


if __name__ == "__main__":
    run_cli(main)
