#!/usr/bin/env python
"""Full image fine-tuning: warmstart ``full`` against a textbook PyTorch loop with timm's own transforms.

resnet18 (timm, random weights: nothing can be downloaded, and the speed does not depend on the weights) trains for
2 epochs at 64 px, batch 32, on scikit-learn's handwritten digits (warmstart's quick-start data: 1,437 train and 360
validation images, upscaled and written as PNG image folders). The sides:

- warmstart: ``recipes/image_classification.py --model_name_or_path resnet18 --random_init true --freeze_strategy
  full --precision fp32`` with its defaults;
- textbook loop: timm's ``create_transform`` from the model's data config, torchvision's ``ImageFolder``, a
  ``DataLoader``, AdamW, ``model.train()``, ``zero_grad / backward / step`` (``_baselines.textbook_timm_loop``),
  twice: with the tutorials' loader workers (``--baseline_workers``, default 4 capped at the visible cores) and
  with none, since on a machine of few cores the workers may take cores from the training step. The target is
  judged against the faster of the two in each pair;
- precision, where the CPU has native bf16 (AMX / AVX512-BF16): warmstart with bf16 autocast, against the fp32 run
  of the same pair; skipped, and said so, elsewhere (``--no_bf16`` skips it anyway).

Every side trains with the same augmentation (timm's random-resized crop and flip), AdamW at a constant learning
rate 1e-3 with weight decay 0.01, batch 32 and seed. The figure is train samples/s of the training loop (epochs x
train images / training time: the Trainer's ``train_samples_per_second`` for warmstart, the same clock around the
loop for the textbook sides); start-up and model building are not in it. The ratios are printed last.

    python benchmarks/vision_full_ft.py [--pairs 3] [--epochs 2] [--no_bf16]
    python benchmarks/vision_full_ft.py --quick
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import (
    PRECISION_ARGS,
    SPEED,
    add_common_arguments,
    as_flags,
    bf16_lines,
    bf16_note,
    function_side,
    native_bf16,
    print_header,
    print_ratios,
    print_table,
    ratio_line,
    recipe_side,
    run_pairs,
    speed_line,
    spread,
    visible_cores,
    write_digit_folders,
)

WARMSTART = "warmstart full"
WARMSTART_BF16 = "warmstart full, bf16"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--architecture", default="resnet18")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--baseline_workers", type=int, default=min(4, visible_cores()))
    parser.add_argument("--no_bf16", action="store_true", help="skip the bf16 side even where the CPU has native bf16")
    cli = parser.parse_args()
    train_size = validation_size = None
    if cli.quick:
        cli.pairs, cli.epochs, train_size, validation_size = 1, 1, 64, 32
    with_bf16 = native_bf16() and not cli.no_bf16
    shared = {"learning_rate": 1e-3, "weight_decay": 0.01, "seed": 42}

    textbook = {n: f"textbook loop, {n} loader worker{'s' * (n != 1)}" for n in sorted({cli.baseline_workers, 0})}
    with tempfile.TemporaryDirectory(prefix="warmstart-bench-data-") as data_dir:
        train_dir, validation_dir = write_digit_folders(Path(data_dir), cli.image_size, train_size, validation_size)
        recipe_args = as_flags(
            model_name_or_path=cli.architecture,
            random_init=True,
            train_dir=train_dir,
            validation_dir=validation_dir,
            image_size=cli.image_size,
            hflip=0.5,
            freeze_strategy="full",
            num_train_epochs=cli.epochs,
            per_device_train_batch_size=cli.batch_size,
            per_device_eval_batch_size=2 * cli.batch_size,
            lr_scheduler_type="constant",
            use_cpu=True,
            **shared,
        )
        sides = [
            recipe_side(WARMSTART, "image_classification.py", recipe_args + PRECISION_ARGS["fp32"]),
            *(
                function_side(
                    name,
                    "_baselines:textbook_timm_loop",
                    architecture=cli.architecture,
                    train_dir=str(train_dir),
                    validation_dir=str(validation_dir),
                    image_size=cli.image_size,
                    epochs=cli.epochs,
                    batch_size=cli.batch_size,
                    num_workers=workers,
                    **shared,
                )
                for workers, name in textbook.items()
            ),
        ]
        if with_bf16:
            sides.append(recipe_side(WARMSTART_BF16, "image_classification.py", recipe_args + PRECISION_ARGS["bf16"]))
        images = [sum(1 for _ in folder.rglob("*.png")) for folder in (train_dir, validation_dir)]
        pairs = list(run_pairs(sides, cli.pairs))

    print_header(
        f"vision_full_ft: warmstart full vs a textbook PyTorch loop ({cli.architecture}, {cli.image_size} px)",
        [
            f"data: scikit-learn digits as PNG folders, {images[0]} train + {images[1]} validation images, "
            f"{cli.epochs} epoch{'s' * (cli.epochs != 1)}, batch {cli.batch_size}, AdamW lr 1e-3 constant, weight "
            f"decay 0.01, random weights",
            "timed: train samples/s of the training loop (warmstart: the Trainer's train_samples_per_second; "
            "textbook: the same clock around its loop)",
            bf16_note(with_bf16),
        ],
        cli.quick,
    )
    rows = []
    for side in sides:
        runs = [pair[side.name] for pair in pairs]
        rows.append(
            [
                side.name,
                spread([r[SPEED] for r in runs], "{:.1f}"),
                spread([100 * r["eval_accuracy"] for r in runs], "{:.1f}", " %"),
                spread([r.wall_s for r in runs], "{:.1f}"),
                spread([r.peak_rss_mib for r in runs], "{:,.0f}"),
                str(runs[0].figures.get("precision", "fp32")),
            ]
        )
    print_table(["side", "train samples/s", "val accuracy", "wall s", "peak RSS MiB", "precision"], rows)

    faster = [max(pair[name][SPEED] for name in textbook.values()) for pair in pairs]
    lines = [
        ratio_line(
            "train samples/s, warmstart full / the faster textbook loop",
            [pair[WARMSTART][SPEED] / best for pair, best in zip(pairs, faster)],
            target=1.1,
        ),
        *(speed_line(pairs, WARMSTART, name) for name in textbook.values()),
    ]
    if with_bf16:
        lines += bf16_lines(pairs, WARMSTART, WARMSTART_BF16)
    print_ratios(lines, len(pairs), cli.quick)


if __name__ == "__main__":
    main()
