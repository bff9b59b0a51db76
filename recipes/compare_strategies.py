#!/usr/bin/env python
"""Compare fine-tuning strategies on your validation set and keep the best: each strategy (crossed with each
learning rate) is one run of the image or text recipe on the same splits, seed and budget.

    accelerate launch recipes/compare_strategies.py \
        --model_name_or_path timm/resnet18.a1_in1k --train_dir data/train --validation_dir data/val \
        --strategies head_only top_k:2 full lp_ft bitfit --learning_rates 1e-3 1e-4 \
        --num_train_epochs 5 --eval_strategy epoch --output_dir outputs/resnet18-comparison

Writes comparison.csv, comparison.md and comparison.png (validation metric against training time, marker size:
trainable parameters) and the best model (by --metric_for_best_model, default accuracy) into --output_dir, in hub
format, with the comparison in its model card; every run stays in output_dir/runs/. A rerun skips finished runs.
Takes every argument of the recipes (a config file too); the image or text recipe is chosen from the model / data.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from warmstart import WarmstartError, run_cli
from warmstart.arguments import CONFIG_FILE_SUFFIXES, mapping_to_argv
from warmstart.comparison import (
    KNOWN_METRICS,
    ComparisonArguments,
    close_feature_store,
    comparison_table,
    default_strategies,
    keep_best,
    modality_of,
    plan_runs,
    run_comparison,
    write_comparison,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))


def split_arguments(argv: list[str]) -> tuple[ComparisonArguments, list[str], argparse.Namespace]:
    """The comparison's own arguments, the recipe's (a config file expanded into them), and the recipe values the
    comparison reads."""
    import yaml

    if argv and argv[0].endswith(CONFIG_FILE_SUFFIXES) and not argv[0].startswith("-"):
        path = Path(argv.pop(0))
        try:
            values = yaml.safe_load(path.read_text())  # JSON is YAML too
        except (OSError, yaml.YAMLError) as err:
            raise WarmstartError(f"cannot read the config file {path}: {str(err).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise WarmstartError(f"the config file {path} must hold a mapping of argument names to values")
        argv = mapping_to_argv(values) + argv
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--strategies", nargs="+")
    own.add_argument("--learning_rates", nargs="+", type=float)
    parsed, rest = own.parse_known_args(argv)
    comparison = ComparisonArguments(parsed.strategies, parsed.learning_rates)
    read = argparse.ArgumentParser(add_help=False)
    for flag in (
        "model_name_or_path",
        "train_dir",
        "output_dir",
        "freeze_strategy",
        "learning_rate",
        "metric_for_best_model",
        "num_train_epochs",
        "probe_epochs",
        "unfreeze_every",
    ):
        read.add_argument(f"--{flag}")
    recipe_values, _ = read.parse_known_args(rest)
    return comparison, rest, recipe_values


def main(argv: Sequence[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return []
    comparison, recipe_argv, values = split_arguments(argv)
    if values.freeze_strategy:
        raise WarmstartError("--freeze_strategy is chosen per run here: list the strategies with --strategies")
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
    learning_rates = comparison.learning_rates or [float(values.learning_rate or 5e-5)]
    runs = plan_runs(strategies, learning_rates)
    if any(run.strategy == "lp_ft" for run in runs) and values.probe_epochs is None:
        half = float(values.num_train_epochs or 3.0) / 2  # probe for half the budget unless told
        for run in runs:
            if run.strategy == "lp_ft":
                run.flags += ["--probe_epochs", repr(half)]

    modality = modality_of(values.model_name_or_path, image_folders=values.train_dir is not None)
    if modality == "image":
        import image_classification as recipe
    else:
        import text_classification as recipe
    output_dir = Path(values.output_dir)
    holds_model = (output_dir / "config.json").is_file() and not (output_dir / "comparison.csv").is_file()
    if holds_model and "--overwrite_output_dir" not in recipe_argv:
        raise WarmstartError(
            f"--output_dir {output_dir} already holds a model that is not a comparison's: choose another --output_dir "
            "or pass --overwrite_output_dir true"
        )
    shared = [
        a for i, a in enumerate(recipe_argv) if not _is_flag_or_value(recipe_argv, i, ("output_dir", "learning_rate"))
    ]
    store: dict = {}
    try:
        rows = run_comparison(runs, recipe.main, shared, output_dir, feature_store=store)
    finally:
        close_feature_store(store)
    best = write_comparison(rows, output_dir, metric)
    keep_best(best, rows, output_dir, metric)
    print(f"\nstrategy comparison ({modality}): best by eval_{metric} is {best['run']}, kept in {output_dir}")
    print(comparison_table(rows, best))
    return rows


def _is_flag_or_value(argv: list[str], i: int, flags: tuple[str, ...]) -> bool:
    """Whether ``argv[i]`` is one of ``--flags`` or the value right after it."""
    names = {f"--{flag}" for flag in flags}
    return argv[i] in names or argv[i].split("=")[0] in names or (i > 0 and argv[i - 1] in names)


if __name__ == "__main__":
    run_cli(main)
