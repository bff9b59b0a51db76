#!/usr/bin/env python
"""Write scikit-learn's handwritten digits (real 8x8 scans, upsampled) as the data of a pretrain-then-fine-tune
chain, offline: unlabeled.parquet (every training image, no labels), labeled.parquet (a stratified fraction of
them, with labels) and validation.parquet (the held-out 20 %, never seen in pretraining).

    python recipes/digits_data.py --output_dir data/digits --image_size 32 --labeled_fraction 0.1
"""

from __future__ import annotations

from collections.abc import Sequence

from warmstart import WarmstartError, run_cli
from warmstart.arguments import CliParser
from warmstart.distributed import broadcast_from_main, ensure_process_group, on_main_process
from warmstart.quickstart import write_digits_chain_data


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    parser = CliParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True, help="where the three parquet files go")
    parser.add_argument("--image_size", type=int, default=32, help="side of the square images in pixels")
    parser.add_argument("--labeled_fraction", type=float, default=0.1, help="fraction of train that keeps labels")
    parser.add_argument("--seed", type=int, default=0, help="seeds the validation split and the labeled subset")
    args = parser.parse_args(argv)
    if args.image_size < 8:
        raise WarmstartError(f"--image_size must be at least 8 (the scans are 8x8), got {args.image_size}")

    def write() -> dict[str, str]:
        try:
            paths = write_digits_chain_data(args.output_dir, args.image_size, args.labeled_fraction, args.seed)
        except ValueError as err:
            raise WarmstartError(f"--labeled_fraction: {err}") from None
        return {name: str(path) for name, path in paths.items()}

    ensure_process_group()  # in a chain under torchrun: the main process writes, the others wait for the files
    return broadcast_from_main(on_main_process(write))


if __name__ == "__main__":
    run_cli(main)
