#!/usr/bin/env python
"""Run a chain of recipes from one YAML file: pretrain, then fine-tune, each link starting from an earlier link's
output (``{name}`` in an argument), with a summary table of every link's metric and wall time.

    python recipes/chain.py recipes/configs/digits_chain.yaml [--output_dir outputs/digits_chain] [--only full]

See src/warmstart/chain.py for the file format, and recipes/configs/digits_chain.yaml for a worked chain.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from warmstart import WarmstartError, run_cli
from warmstart.arguments import CliParser
from warmstart.chain import chain_table, load_chain, run_chain
from warmstart.distributed import ensure_process_group, is_main_process

RECIPES = Path(__file__).resolve().parent


def recipe_main(name: str):
    """A recipe's ``main`` by its name (recipes/<name>.py)."""
    if not (RECIPES / f"{name}.py").is_file() or name == "chain":
        known = sorted(p.stem for p in RECIPES.glob("*.py") if p.stem != "chain")
        raise WarmstartError(f"unknown recipe {name!r} in the chain: use one of {', '.join(known)}")
    if str(RECIPES) not in sys.path:
        sys.path.insert(0, str(RECIPES))
    return importlib.import_module(name).main


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
    ensure_process_group()  # under torchrun: the links' recipes and the writes agree from the start
    rows = run_chain(chain, recipe_main, only=args.only)
    if is_main_process():
        print(f"\nchain {args.chain_file} -> {chain.output_dir}\n{chain_table(rows)}")
    return rows


if __name__ == "__main__":
    run_cli(main)
