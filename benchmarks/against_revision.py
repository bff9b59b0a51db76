#!/usr/bin/env python
"""This checkout against another revision of warmstart: did a change cost speed or accuracy?

The same recipe runs from two source trees, this checkout and ``--revision`` (a commit, tag or branch, checked out
into a temporary git worktree), each with its own ``src/`` first on the path (never the installed package), in
interleaved pairs as every benchmark here. Three workloads, each a figure that a change of the library could move:

- ``text_head_only``: the frozen_backbone benchmark's warmstart side (MiniLM-L6, head_only, cached features,
  10 epochs of 2,000 generated sentences, lr 1e-2). Figure: wall time of the whole process (start-up, loading,
  tokenizing, the feature cache, training, evaluation, saving), where set-up and decisions outside the Trainer show.
- ``text_full``: the text_full_ft benchmark's warmstart side (MiniLM-L6, full fine-tuning, 1 epoch, lr 5e-5).
  Figure: train samples/s of the Trainer's loop.
- ``image_full``: the vision_full_ft benchmark's warmstart side (resnet18, random weights, 64 px, digits, 2 epochs).
  Figure: train samples/s of the Trainer's loop.

Each ratio is this checkout over the revision within a pair (higher is better: revision wall time / this
checkout's, and this checkout's samples/s / the revision's), with validation accuracies side by side. Since the
peers of the other benchmarks (the HF example, the textbook timm loop) do not change with warmstart's code, a ratio
of 1.00 here means their ratios are unchanged too.

    python benchmarks/against_revision.py --revision 0d7263c [--pairs 3] [--workloads text_head_only,text_full]
    python benchmarks/against_revision.py --revision HEAD~1 --quick
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from _common import (
    PRECISION_ARGS,
    REPO,
    SPEED,
    add_common_arguments,
    as_flags,
    difference_line,
    minilm_path,
    print_header,
    print_ratios,
    print_table,
    ratio_line,
    recipe_side,
    run_pairs,
    spread,
    text_comparison,
    write_digit_folders,
    write_text_csvs,
)

WORKLOADS = ("text_head_only", "text_full", "image_full")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--revision", required=True, help="the git revision to compare with (commit, tag, branch)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, of {', '.join(WORKLOADS)}")
    parser.add_argument("--train_size", type=int, default=2000, help="text examples to train on")
    cli = parser.parse_args()
    workloads = [w.strip() for w in cli.workloads.split(",") if w.strip()]
    unknown = sorted(set(workloads) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workloads {', '.join(unknown)}: use any of {', '.join(WORKLOADS)}")
    text_sizes = (64, 32) if cli.quick else (cli.train_size, cli.train_size // 2)
    if cli.quick:
        cli.pairs = 1

    commit = _git("rev-parse", "--short", cli.revision)
    with (
        tempfile.TemporaryDirectory(prefix="warmstart-revision-") as tree,
        tempfile.TemporaryDirectory(prefix="warmstart-bench-data-") as data_dir,
    ):
        other = Path(tree) / "checkout"
        _git("worktree", "add", "--detach", str(other), cli.revision)
        try:
            sides, figures = _sides(workloads, other, cli.revision, Path(data_dir), text_sizes, cli.quick)
            pairs = list(run_pairs(sides, cli.pairs))
        finally:
            _git("worktree", "remove", "--force", str(other))

    here = _git("rev-parse", "--short", "HEAD") + (
        " (with uncommitted changes)" if _git("status", "--porcelain") else ""
    )
    print_header(
        f"against_revision: this checkout ({here}) vs {cli.revision} ({commit})",
        [
            f"text: MiniLM-L6, {text_sizes[0]} train + {text_sizes[1]} validation generated sentences, fp32",
            "image: resnet18 (random weights), 64 px, scikit-learn digits, fp32",
            "timed: text_head_only by the wall time of the whole process; text_full and image_full by the train "
            "samples/s of the Trainer's loop",
        ],
        cli.quick,
    )
    rows, lines = [], []
    for workload in workloads:
        for side in (f"{workload}, this checkout", f"{workload}, {cli.revision}"):
            runs = [pair[side] for pair in pairs]
            rows.append(
                [
                    side,
                    spread([r.wall_s for r in runs], "{:.1f}"),
                    spread([r[SPEED] for r in runs], "{:.1f}"),
                    spread([100 * r["eval_accuracy"] for r in runs], "{:.1f}", " %"),
                    spread([r.peak_rss_mib for r in runs], "{:,.0f}"),
                ]
            )
        current, previous = f"{workload}, this checkout", f"{workload}, {cli.revision}"
        if figures[workload] == "wall":
            values = [pair[previous].wall_s / pair[current].wall_s for pair in pairs]
            lines.append(ratio_line(f"{workload}: wall time, {cli.revision} / this checkout", values))
        else:
            values = [pair[current][SPEED] / pair[previous][SPEED] for pair in pairs]
            lines.append(ratio_line(f"{workload}: train samples/s, this checkout / {cli.revision}", values))
        gap = [100 * (pair[current]["eval_accuracy"] - pair[previous]["eval_accuracy"]) for pair in pairs]
        lines.append(difference_line(f"{workload}: validation accuracy, this checkout - {cli.revision}", gap))
    print_table(["side", "wall s", "train samples/s", "val accuracy", "peak RSS MiB"], rows)
    print_ratios(lines, len(pairs), cli.quick)


def _sides(
    workloads: list[str], other: Path, revision: str, data_dir: Path, text_sizes: tuple[int, int], quick: bool
) -> tuple[list, dict[str, str]]:
    """Each workload's two sides (this checkout first, then the revision), and the figure it is judged by."""
    sides, figures = [], {}
    if {"text_head_only", "text_full"} & set(workloads):
        train_file, validation_file = write_text_csvs(data_dir, *text_sizes)
    for workload in workloads:
        if workload == "image_full":
            train_dir, validation_dir = write_digit_folders(data_dir, 64, *((64, 32) if quick else (None, None)))
            args = as_flags(
                model_name_or_path="resnet18",
                random_init=True,
                train_dir=train_dir,
                validation_dir=validation_dir,
                image_size=64,
                hflip=0.5,
                freeze_strategy="full",
                num_train_epochs=1 if quick else 2,
                per_device_train_batch_size=32,
                per_device_eval_batch_size=64,
                lr_scheduler_type="constant",
                learning_rate=1e-3,
                weight_decay=0.01,
                seed=42,
                use_cpu=True,
            )
            recipe, figures[workload] = "image_classification.py", "speed"
        else:
            head_only = workload == "text_head_only"
            args, _ = text_comparison(
                minilm_path(),
                train_file,
                validation_file,
                freeze_strategy="head_only" if head_only else "full",
                epochs=(1 if quick else 10) if head_only else 1,
                learning_rate=1e-2 if head_only else 5e-5,
            )
            recipe, figures[workload] = "text_classification.py", "wall" if head_only else "speed"
        args += PRECISION_ARGS["fp32"]
        sides.append(recipe_side(f"{workload}, this checkout", recipe, args, checkout=REPO))
        sides.append(recipe_side(f"{workload}, {revision}", recipe, args, checkout=other))
    return sides, figures


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


if __name__ == "__main__":
    main()
