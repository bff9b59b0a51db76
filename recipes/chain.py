#!/usr/bin/env python
"""Run a chain of recipes from one YAML file: pretrain, then fine-tune, each link starting from an earlier link's
output (``{name}`` in an argument), with a summary table of every link's metric and wall time.

    python recipes/chain.py recipes/configs/digits_chain.yaml [--output_dir outputs/digits_chain] [--only full]

See src/warmstart/chain.py for the file format, and recipes/configs/digits_chain.yaml for a worked chain.
"""

from __future__ import annotations

from collections.abc import Sequence

from warmstart import WarmstartError, run_cli
from warmstart.chain import chain_table, load_chain, run_chain
from warmstart.config import CliParser
from warmstart.distributed import ensure_process_group, is_main_process


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = CliParser(description=__doc__.splitlines()[0])
    parser.add_argument("chain_file", help="the chain's YAML file")
    parser.add_argument("--output_dir", help="where the links write (default: the file's output_dir)")
    parser.add_argument("--only", nargs="+", help="run only these links (the others' outputs must exist)")
    args = parser.parse_args(argv)
    chain = load_chain(args.chain_file, args.output_dir)
    for name in args.only or ():
        if name not in {link.name for link in chain.links}:
            raise WarmstartError(f"--only {name}: no link of that name in {args.chain_file}")
    ensure_process_group()  # under torchrun: the links' runs and the writes agree from the start
    rows = run_chain(chain, only=args.only)
    if is_main_process():
        print(f"\nchain {args.chain_file} -> {chain.output_dir}\n{chain_table(rows)}")
    return rows


if __name__ == "__main__":
    run_cli(main)
