#!/usr/bin/env python
"""Write scikit-learn's handwritten digits (real 8x8 scans, upsampled) as the data of a pretrain-then-fine-tune
chain, offline: unlabeled.parquet (every training image, no labels), labeled.parquet (a stratified fraction of
them, with labels) and validation.parquet (the held-out 20 %, never seen in pretraining).

    python recipes/digits_data.py --output_dir data/digits --image_size 32 --labeled_fraction 0.1
"""

from __future__ import annotations

from collections.abc import Sequence

from warmstart import run_cli
from warmstart.config import CliParser
from warmstart.data.digits import digits_data_step


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    parser = CliParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True, help="where the three parquet files go")
    parser.add_argument("--image_size", type=int, default=32, help="side of the square images in pixels")
    parser.add_argument("--labeled_fraction", type=float, default=0.1, help="fraction of train that keeps labels")
    parser.add_argument("--seed", type=int, default=0, help="seeds the validation split and the labeled subset")
    return digits_data_step(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    run_cli(main)
