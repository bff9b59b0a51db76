"""A comparison from its command line to its outputs: parsing the comparison's own arguments and the
configuration its runs share (as the image or text classification task, chosen from the model and the data),
then planning, running, writing the results and keeping the best model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from warmstart.comparison.planning import ComparisonArguments, default_strategies, plan_comparison
from warmstart.comparison.results import (
    KNOWN_METRICS,
    comparison_table,
    headline_metric,
    keep_best,
    write_comparison,
)
from warmstart.comparison.running import run_comparison
from warmstart.comparison.soup import make_soups
from warmstart.config import (
    CliParser,
    RunConfig,
    argv_as_mapping,
    mapping_to_argv,
    parse_config,
    read_config_file,
    starts_with_config_file,
    underscored,
)
from warmstart.distributed import barrier, ensure_process_group, is_main_process
from warmstart.errors import WarmstartError, hub_offline
from warmstart.export import refuse_foreign_model
from warmstart.folder_lock import locked_folder
from warmstart.peers import watched_peers
from warmstart.preemption import preemptible
from warmstart.uncertainty import DEFAULT_LEVEL


def modality_of(model_name_or_path: str, image_folders: bool = False) -> str:
    """``image`` or ``text``: from the data (image folders), else from the model: its config.json (a local directory,
    or a hub id's, from the cache or, online, downloaded as the loaders would), a timm name or the timm organisation
    on the Hub. Where none says, ``text``: the text recipe's loader then says what it could not load."""
    if image_folders:
        return "image"
    from warmstart.models import is_image_model_config, read_model_config

    local = read_model_config(model_name_or_path)
    if local is not None:
        return "image" if is_image_model_config(local) else "text"
    import timm

    repo = model_name_or_path.removeprefix("hf-hub:")
    if timm.is_model(repo) or repo.startswith("timm/"):
        return "image"
    import huggingface_hub

    config = huggingface_hub.try_to_load_from_cache(repo, "config.json")
    if not isinstance(config, str) and not hub_offline():
        try:
            config = huggingface_hub.hf_hub_download(repo, "config.json")
        except Exception:  # noqa: BLE001 - no such repo, no network: the loader reports it with its own line
            config = None
    if isinstance(config, str):
        return "image" if is_image_model_config(json.loads(Path(config).read_text())) else "text"
    return "text"


def close_feature_store(store: dict[str, Any]) -> None:
    """Deletes the feature files the runs of a comparison shared (memory-mapped ones)."""
    for cached in store.values():
        cached.close()
    store.clear()


def parse_comparison(argv: Sequence[str]) -> tuple[ComparisonArguments, RunConfig]:
    """A comparison's command line: its own arguments (``--strategies``, ``--learning_rates``) and the configuration
    its runs share, parsed as the image or text classification task (chosen from the model and the data).

    Raises:
        WarmstartError: a bad argument, or one that does not apply to a comparison.
    """
    argv = list(argv)
    if starts_with_config_file(argv):  # the comparison's own arguments may be in the file too
        argv = mapping_to_argv(read_config_file(argv.pop(0))) + argv
    argv = underscored(argv)  # --learning-rate is --learning_rate: one spelling to read here
    own = CliParser(add_help=False, allow_abbrev=False)
    own.add_argument("--strategies", nargs="+")
    own.add_argument("--learning_rates", nargs="+", type=float)
    own.add_argument("--prefer", default="best")
    own.add_argument("--soup", default="greedy")
    parsed, rest = own.parse_known_args(argv)
    comparison = ComparisonArguments(parsed.strategies, parsed.learning_rates, parsed.prefer, parsed.soup)
    given = argv_as_mapping(rest)
    if given.get("freeze_strategy"):
        raise WarmstartError("--freeze_strategy is chosen per run here: list the strategies with --strategies")
    for flag, why in (
        ("push_to_hub", "push the kept model afterwards (it is a normal warmstart output)"),
        ("hparam_search", "search one strategy's hyperparameters with the recipe itself"),
    ):
        value = given.get(flag)
        if value is not None and str(value).lower() not in ("false", "none", "no", "0"):
            raise WarmstartError(f"--{flag} does not apply to a comparison: {why}")
    resume = given.get("resume_from_checkpoint")
    if resume is not None and resume not in ("auto", "none"):
        raise WarmstartError(
            f"--resume_from_checkpoint {resume}: a comparison resumes each interrupted run from its own checkpoints; "
            "give auto (finished runs are skipped either way)"
        )
    if not given.get("model_name_or_path") or not given.get("output_dir"):
        raise WarmstartError("--model_name_or_path and --output_dir are required")
    metric = str(given.get("metric_for_best_model") or "accuracy").removeprefix("eval_")
    if metric not in KNOWN_METRICS:  # which of them the runs report depends on their label shape, checked by each run
        raise WarmstartError(
            f"--metric_for_best_model {metric}: no run reports it (runs report {', '.join(KNOWN_METRICS)})"
        )
    strategies = comparison.strategies or default_strategies()
    if "gradual" in strategies and given.get("unfreeze_every") is None:
        raise WarmstartError("--strategies gradual needs --unfreeze_every N (epochs between unfreezings)")
    modality = modality_of(str(given["model_name_or_path"]), image_folders=given.get("train_dir") is not None)
    # the shared configuration as head_only's, the strategy that takes every policy flag a comparison may share
    # (--probe_train_rest among them); each run sets its own strategy
    config = parse_config([*rest, "--freeze_strategy", "head_only"], f"{modality}_classification")
    config.given.pop("freeze_strategy")
    comparison.strategies = strategies
    return comparison, config


def compare_strategies(comparison: ComparisonArguments, config: RunConfig) -> list[dict[str, Any]]:
    """Runs a comparison: every strategy (at each of its learning rates) a variant of ``config``, into
    ``<output_dir>/runs``; writes the comparison's table and plot, and keeps the best run's model in
    ``--output_dir`` (by ``--metric_for_best_model``, default the label shape's headline metric: accuracy, f1_micro
    or rmse).

    Returns:
        One row per run.

    Raises:
        WarmstartError: the output folder holds another model or another run is writing into it, or a run fails with
            a one-line error.
    """
    output_dir, writes = config.training.output_dir, is_main_process()
    # between its runs a signal stops it at once (a run stops after its step, with a checkpoint)
    with (
        locked_folder(output_dir, "a comparison", enabled=writes),
        preemptible(output_dir, config.performance.preempt_exit_code, writes=writes),
        watched_peers(output_dir, config.performance.peer_timeout),
    ):
        return _compare(comparison, config)


def _compare(comparison: ComparisonArguments, config: RunConfig) -> list[dict[str, Any]]:
    strategies = comparison.strategies or default_strategies()
    runs = plan_comparison(strategies, comparison.learning_rates, config)
    output_dir = Path(config.training.output_dir)
    refuse_foreign_model(output_dir, "comparison.csv", "a comparison", config.model.overwrite_output_dir)
    asked = config.training.metric_for_best_model
    resume = config.training.resume_from_checkpoint == "auto"
    ensure_process_group()  # several processes (torchrun): they agree on what to run before the first run
    store: dict = {}
    try:
        rows = run_comparison(runs, config, output_dir, feature_store=store, resume=resume)
    finally:
        close_feature_store(store)
    # default: the headline metric of the runs' label shape (accuracy, f1_micro or rmse)
    metric = (asked or headline_metric(rows)).removeprefix("eval_")
    if comparison.soup == "greedy":
        rows = [*rows, *make_soups(rows, runs, config, output_dir, metric)]
    if is_main_process():
        level = getattr(config.evaluation, "confidence_level", DEFAULT_LEVEL)
        best, kept, verdict = write_comparison(rows, output_dir, metric, level=level, prefer=comparison.prefer)
        keep_best(kept, rows, output_dir, metric, verdict)
        print(
            f"\nstrategy comparison ({config.modality}): best by eval_{metric} is {best['run']}; kept in "
            f"{output_dir}: {kept['run']}"
        )
        if verdict:
            print(verdict)
        print(comparison_table(rows, kept))
    barrier()  # the other processes return once the outputs are written
    return rows
