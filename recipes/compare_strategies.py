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

Writes comparison.csv, comparison.md and comparison.png (validation metric against training time, marker size:
trainable parameters, the majority-class level as a line) and the best model (by --metric_for_best_model, default
accuracy) into --output_dir, in hub format, with the comparison in its model card; every run stays in
output_dir/runs/. A rerun skips finished runs (with --resume_from_checkpoint auto it resumes the interrupted one from
its checkpoint). Under torchrun every run is a multi-process run, and the main process writes.
Takes every argument of the recipes (a config file too); the image or text recipe is chosen from the model / data.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from warmstart import WarmstartError, run_cli
from warmstart.arguments import CONFIG_FILE_SUFFIXES, CliParser, mapping_to_argv, read_config_file, underscored
from warmstart.comparison import (
    KNOWN_METRICS,
    ComparisonArguments,
    close_feature_store,
    comparison_table,
    default_strategies,
    keep_best,
    modality_of,
    plan_comparison,
    run_comparison,
    write_comparison,
)
from warmstart.distributed import barrier, ensure_process_group, is_main_process
from warmstart.export import refuse_foreign_model

sys.path.insert(0, str(Path(__file__).resolve().parent))


def split_arguments(argv: list[str]) -> tuple[ComparisonArguments, list[str], argparse.Namespace]:
    """The comparison's own arguments, the recipe's (a config file expanded into them), and the recipe values the
    comparison reads."""
    if argv and argv[0].endswith(CONFIG_FILE_SUFFIXES) and not argv[0].startswith("-"):
        argv = mapping_to_argv(read_config_file(argv.pop(0))) + argv
    argv = underscored(argv)  # --learning-rate is --learning_rate to the recipes: one spelling to read here
    own = CliParser(add_help=False, allow_abbrev=False)
    own.add_argument("--strategies", nargs="+")
    own.add_argument("--learning_rates", nargs="+", type=float)
    parsed, rest = own.parse_known_args(argv)
    comparison = ComparisonArguments(parsed.strategies, parsed.learning_rates)
    read = CliParser(add_help=False, allow_abbrev=False)
    for flag in READ_FLAGS:
        read.add_argument(f"--{flag}")
    recipe_values, _ = read.parse_known_args(rest)
    return comparison, rest, recipe_values


# recipe arguments the comparison reads (it passes them all on)
READ_FLAGS = (
    "model_name_or_path",
    "train_dir",
    "output_dir",
    "freeze_strategy",
    "metric_for_best_model",
    "unfreeze_every",
    "overwrite_output_dir",
    "push_to_hub",
    "resume_from_checkpoint",
    "hparam_search",
)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return []
    comparison, recipe_argv, values = split_arguments(argv)
    if values.freeze_strategy:
        raise WarmstartError("--freeze_strategy is chosen per run here: list the strategies with --strategies")
    for flag, why in (
        ("push_to_hub", "push the kept model afterwards (it is a normal warmstart output)"),
        ("hparam_search", "search one strategy's hyperparameters with the recipe itself"),
    ):
        value = getattr(values, flag)
        if value is not None and str(value).lower() not in ("false", "none", "no", "0"):
            raise WarmstartError(f"--{flag} does not apply to a comparison: {why}")
    resume = values.resume_from_checkpoint
    if resume is not None and resume not in ("auto", "none"):
        raise WarmstartError(
            f"--resume_from_checkpoint {resume}: a comparison resumes each interrupted run from its own checkpoints; "
            "give auto (finished runs are skipped either way)"
        )
    if not values.model_name_or_path or not values.output_dir:
        raise WarmstartError("--model_name_or_path and --output_dir are required")
    metric = (values.metric_for_best_model or "accuracy").removeprefix("eval_")
    if metric not in KNOWN_METRICS:
        raise WarmstartError(
            f"--metric_for_best_model {metric}: no run reports it (runs report {', '.join(KNOWN_METRICS)})"
        )
    strategies = comparison.strategies or default_strategies()
    if "gradual" in strategies and values.unfreeze_every is None:
        raise WarmstartError("--strategies gradual needs --unfreeze_every N (epochs between unfreezings)")
    modality = modality_of(values.model_name_or_path, image_folders=values.train_dir is not None)
    runs = plan_comparison(strategies, comparison.learning_rates, recipe_argv, modality)
    if modality == "image":
        import image_classification as recipe
    else:
        import text_classification as recipe
    output_dir = Path(values.output_dir)
    overwrite = str(values.overwrite_output_dir).lower() in ("true", "1", "yes")
    refuse_foreign_model(output_dir, "comparison.csv", "a comparison", overwrite)
    shared = [
        a for i, a in enumerate(recipe_argv) if not _is_flag_or_value(recipe_argv, i, ("output_dir", "learning_rate"))
    ]
    shared = [a for i, a in enumerate(shared) if not _is_flag_or_value(shared, i, ("resume_from_checkpoint",))]
    ensure_process_group()  # several processes (torchrun): they agree on what to run before the first run
    store: dict = {}
    try:
        rows = run_comparison(runs, recipe.main, shared, output_dir, feature_store=store, resume=resume == "auto")
    finally:
        close_feature_store(store)
    if is_main_process():
        best = write_comparison(rows, output_dir, metric)
        keep_best(best, rows, output_dir, metric)
        print(f"\nstrategy comparison ({modality}): best by eval_{metric} is {best['run']}, kept in {output_dir}")
        print(comparison_table(rows, best))
    barrier()  # the other processes return once the outputs are written
    return rows


def _is_flag_or_value(argv: list[str], i: int, flags: tuple[str, ...]) -> bool:
    """Whether ``argv[i]`` is one of ``--flags`` or the value right after it."""
    names = {f"--{flag}" for flag in flags}
    return argv[i] in names or argv[i].split("=")[0] in names or (i > 0 and argv[i - 1] in names)


if __name__ == "__main__":
    run_cli(main)
