"""Chains of runs: pretrain, then fine-tune, each link a recipe whose output the next one starts from, written as one
YAML file and run in order (``recipes/chain.py``).

A chain file::

    output_dir: outputs/digits_chain     # link <name> writes to <output_dir>/<name>
    links:
      - name: pretrain
        recipe: pretrain_autoencoder     # recipes/<recipe>.py (the task it runs)
        args: {model_name_or_path: resnet10t, random_init: true, train_file: data/unlabeled.parquet}
      - name: head_only
        recipe: image_classification
        seeds: [0, 1, 2]                 # one run per seed, in <name>-seed<k>; the summary gives their mean
        args: {model_name_or_path: "{pretrain}", freeze_strategy: head_only, ...}

A string ``{name}`` in an argument is the output directory of the earlier link ``name`` (``{output_dir}``: the
chain's). YAML anchors and merge keys (``<<: *finetune``) share settings between links; a top-level ``common:``
mapping is a place to define them.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from warmstart.config import TASKS, parse_config
from warmstart.data.digits import digits_data_step
from warmstart.distributed import barrier, is_main_process
from warmstart.errors import WarmstartError
from warmstart.search import run_search
from warmstart.tasks import run

logger = logging.getLogger(__name__)

_REFERENCE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# the metric a link's summary shows: a classifier's accuracy, else the loss the pretraining minimised
_SUMMARY_METRICS = ("eval_accuracy", "eval_f1_micro", "eval_rmse", "eval_perplexity", "eval_loss")


@dataclass
class Link:
    """One run of a chain: a recipe, its arguments, and the seeds it repeats with (``None``: once, as given)."""

    name: str
    recipe: str
    args: dict[str, Any]
    seeds: list[int] | None = None


@dataclass
class Chain:
    output_dir: Path
    links: list[Link] = field(default_factory=list)


def load_chain(path: str | Path, output_dir: str | Path | None = None) -> Chain:
    """Reads and checks a chain file.

    Args:
        path: the YAML file.
        output_dir: overrides the file's ``output_dir``.

    Raises:
        WarmstartError: an unreadable file, a link without a name or recipe, a duplicate name, a reference to a
            link that does not come earlier, or to a link that runs with several seeds (which output would it be?).
    """
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise WarmstartError(f"cannot read the chain file {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("links"), list) or not spec["links"]:
        raise WarmstartError(f"the chain file {path} needs a list of links (`links:`), each a name, recipe and args")
    unknown = sorted(set(spec) - {"output_dir", "links", "common"})
    if unknown:
        raise WarmstartError(f"unknown key {unknown[0]!r} in the chain file {path}: use output_dir, links, common")
    chain = Chain(output_dir=Path(output_dir or spec.get("output_dir") or "chain_output"))
    seeded: set[str] = set()
    for i, raw in enumerate(spec["links"]):
        if not isinstance(raw, dict) or not raw.get("name") or not raw.get("recipe"):
            raise WarmstartError(f"link {i + 1} of {path} needs a `name` and a `recipe`")
        extra = sorted(set(raw) - {"name", "recipe", "args", "seeds"})
        if extra:
            raise WarmstartError(f"unknown key {extra[0]!r} in link {raw['name']!r}: use name, recipe, args, seeds")
        link = Link(str(raw["name"]), str(raw["recipe"]), dict(raw.get("args") or {}), raw.get("seeds"))
        if any(link.name == earlier.name for earlier in chain.links) or link.name == "output_dir":
            raise WarmstartError(f"two links are named {link.name!r} in {path}: names must be unique")
        if link.seeds is not None and (
            not isinstance(link.seeds, list) or not link.seeds or not all(isinstance(s, int) for s in link.seeds)
        ):
            raise WarmstartError(f"`seeds` of link {link.name!r} must be a list of integers, got {link.seeds!r}")
        names = {earlier.name for earlier in chain.links}
        for value in link.args.values():
            for ref in _REFERENCE.findall(str(value)):
                if ref != "output_dir" and ref not in names:
                    raise WarmstartError(
                        f"link {link.name!r} refers to {{{ref}}}, which is not an earlier link: order the links so "
                        "that each starts from one before it"
                    )
                if ref in seeded:
                    raise WarmstartError(
                        f"link {link.name!r} starts from {{{ref}}}, which runs with several seeds: give that link "
                        "one seed, or start from a single run"
                    )
        if link.seeds and len(link.seeds) > 1:
            seeded.add(link.name)
        chain.links.append(link)
    return chain


def _resolve(value: Any, outputs: dict[str, Path]) -> Any:
    if isinstance(value, str):
        return _REFERENCE.sub(lambda m: str(outputs.get(m.group(1), m.group(0))), value)
    if isinstance(value, list):
        return [_resolve(v, outputs) for v in value]
    return value


def _summary_metric(results: dict[str, Any]) -> tuple[str, float] | None:
    for name in _SUMMARY_METRICS:
        if isinstance(results.get(name), (int, float)):
            return name, float(results[name])
    return None


# links that prepare data rather than train: their recipe's name and the function that runs them on the link's args
STEPS: dict[str, Callable[..., Any]] = {"digits_data": digits_data_step}


def run_link(recipe: str, args: dict[str, Any]) -> Any:
    """Runs one run of a link: a step (:data:`STEPS`) on its arguments, or a task's run, the arguments parsed as the
    task's configuration (as a config file is), then :func:`warmstart.run`, or the search they ask for.

    Raises:
        WarmstartError: an argument the step or the task does not take, or what the run refuses.
    """
    if recipe in STEPS:
        try:
            return STEPS[recipe](**args)
        except TypeError as err:
            raise WarmstartError(f"the {recipe} step of the chain: {err}") from None
    config = parse_config(args, recipe)
    return run_search(config) if config.searching else run(config)


def check_recipe(recipe: str) -> None:
    """Refuses a link's ``recipe`` that is neither a step nor a task's.

    Raises:
        WarmstartError: the recipe is unknown, with the known ones.
    """
    if recipe in STEPS or any(recipe in (task.name, task.recipe) for task in TASKS.values()):
        return
    known = ", ".join([*(task.recipe for task in TASKS.values()), *STEPS])
    raise WarmstartError(f"unknown recipe {recipe!r} in the chain: use one of {known}")


def run_chain(
    chain: Chain,
    *,
    only: Sequence[str] | None = None,
    runner: Callable[[str, dict[str, Any]], Any] = run_link,
) -> list[dict[str, Any]]:
    """Runs the links in order, in this process, and writes ``chain_results.json`` and ``chain_results.md`` (link,
    recipe, metric: mean and per seed, wall time) into the chain's output directory. Under a multi-process launch
    every process runs every link (each a multi-process run), and the main process writes.

    Args:
        chain: from :func:`load_chain`.
        only: run just these links (the others must have run before: their outputs are used as they are).
        runner: runs one run of a link, given its recipe and arguments (:func:`run_link`).

    Returns:
        One summary row per link run.
    """
    outputs = {"output_dir": chain.output_dir}
    # every recipe is looked up before the first link runs: an unknown one in a late link must not cost the
    # earlier links' runs (nor leave their outputs behind)
    for link in chain.links:
        if not only or link.name in only:
            check_recipe(link.recipe)
    rows = []
    for link in chain.links:
        one_seed = link.seeds is not None and len(link.seeds) == 1  # a later {name} is that one run's output
        outputs[link.name] = chain.output_dir / (f"{link.name}-seed{link.seeds[0]}" if one_seed else link.name)
        if only and link.name not in only:
            continue
        per_seed: list[float] = []
        metric = None
        started = time.perf_counter()
        for seed in link.seeds or [None]:
            args = {k: _resolve(v, outputs) for k, v in link.args.items()}
            out = outputs[link.name] if seed is None else chain.output_dir / f"{link.name}-seed{seed}"
            if seed is not None:
                args["seed"] = seed
            args["output_dir"] = str(out)
            logger.warning("chain: %s (%s)%s", link.name, link.recipe, f", seed {seed}" if seed is not None else "")
            results = runner(link.recipe, args)
            barrier()  # under torchrun: the next link reads this one's output only once it is written
            found = _summary_metric(results) if isinstance(results, dict) else None
            if found is not None:
                metric = found[0]
                per_seed.append(found[1])
        rows.append(
            {
                "link": link.name,
                "recipe": link.recipe,
                "metric": metric,
                "mean": round(statistics.mean(per_seed), 4) if per_seed else None,
                "per_seed": [round(v, 4) for v in per_seed] if link.seeds else None,
                "seeds": link.seeds,
                "wall_seconds": round(time.perf_counter() - started, 1),
                "wall_seconds_per_run": round((time.perf_counter() - started) / len(link.seeds or [None]), 1),
            }
        )
    if is_main_process():
        chain.output_dir.mkdir(parents=True, exist_ok=True)
        (chain.output_dir / "chain_results.json").write_text(json.dumps(rows, indent=2))
        (chain.output_dir / "chain_results.md").write_text(chain_table(rows) + "\n")
    barrier()
    return rows


def chain_table(rows: list[dict[str, Any]]) -> str:
    """The summary as a markdown table."""
    lines = ["| link | recipe | metric | mean | per seed | wall s per run |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        per_seed = ", ".join(f"{v:.4f}" for v in row["per_seed"]) if row["per_seed"] else ""
        mean = f"{row['mean']:.4f}" if row["mean"] is not None else ""
        lines.append(
            f"| {row['link']} | {row['recipe']} | {row['metric'] or ''} | {mean} | {per_seed} "
            f"| {row['wall_seconds_per_run']} |"
        )
    return "\n".join(lines)
