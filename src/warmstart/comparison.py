"""Choosing a fine-tuning strategy with evidence: run several strategies (and learning rates) on the same splits,
seed and budget, one recipe run each, and keep the best by the validation metric.

Learning rates (:func:`plan_comparison`): parameter-efficient methods need 10-100x the rate of full fine-tuning, so
one rate for all would compare most of them untrained. Without ``--learning_rates`` each strategy sweeps its own
grid, its default rate (:func:`warmstart.freezing.default_learning_rate`) times
:data:`~warmstart.freezing.DEFAULT_LR_SWEEP` (a decade around it), and is compared at its best; ``--learning_rates``
crosses the rates given with every strategy; ``--learning_rate`` alone is one rate shared by all, as it always was.
A ``head_only`` whose head is solved (L-BFGS logistic regression on the cached backbone features: see
:func:`probe_is_solved`) uses no rate: it runs once, as ``head_only-lbfgs``.

Runs go to ``<output_dir>/runs/<strategy>-lr<lr>``; a finished run leaves ``comparison_row.json`` there and is
skipped by a rerun, so a comparison that crashed resumes where it stopped (with ``--resume_from_checkpoint auto``,
the interrupted run too resumes, from its last checkpoint). Under a multi-process launch every process runs each
run (a multi-process run of the recipe) and the main process writes. Frozen-backbone runs (``head_only``, the
probe of ``lp_ft``) share one feature cache: the backbone runs once for all of them.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from warmstart.config import (
    CliParser,
    RunConfig,
    argv_as_mapping,
    mapping_to_argv,
    parse_config,
    read_config_file,
    starts_with_config_file,
    to_plain,
    underscored,
)
from warmstart.distributed import barrier, broadcast_from_main, ensure_process_group, is_main_process
from warmstart.errors import WarmstartError
from warmstart.export import comparable_config, copy_run_output, markdown_table, refuse_foreign_model
from warmstart.policy import DEFAULT_LR_SWEEP, STRATEGIES, default_learning_rate
from warmstart.tasks import run
from warmstart.tasks.classification import feature_cache_refusal

logger = logging.getLogger(__name__)

ROW_FILE = "comparison_row.json"
# written when a run starts, with its arguments: a resumed comparison resumes only a run started with the same ones
STARTED_FILE = "comparison_started.json"
# what the metrics of a classification run are called (eval_<name>); loss is lower-is-better
KNOWN_METRICS = ("accuracy", "f1_macro", "roc_auc", "loss")


@dataclass
class ComparisonArguments:
    strategies: list[str] | None = field(
        default=None,
        metadata={
            "help": "Strategies to compare, e.g. head_only top_k:2 full lp_ft bitfit lora (top_k:K trains the top K "
            "blocks; default: those six, lora only when peft is installed)."
        },
    )
    learning_rates: list[float] | None = field(
        default=None,
        metadata={
            "help": "Learning rates to cross with every strategy (default: each strategy sweeps 0.3x, 1x and 3x its "
            "own default rate; --learning_rate alone: that one rate for all)."
        },
    )

    def __post_init__(self) -> None:
        for spec in self.strategies or ():
            parse_strategy(spec)
        for lr in self.learning_rates or ():
            if lr <= 0:
                raise WarmstartError(f"--learning_rates must be positive, got {lr:g}")


def parse_strategy(spec: str) -> tuple[str, int | None]:
    """``top_k:3`` -> ``("top_k", 3)``; ``full`` -> ``("full", None)``; ``top_k`` alone means k = 2.

    Raises:
        WarmstartError: an unknown strategy, or a k that is not a positive integer.
    """
    name, _, k = spec.partition(":")
    if name not in STRATEGIES:
        raise WarmstartError(f"unknown strategy {name!r} in --strategies: use {', '.join(STRATEGIES)}")
    if k and name != "top_k":
        raise WarmstartError(f"--strategies {spec}: only top_k takes a number (top_k:K)")
    if name != "top_k":
        return name, None
    if not k:
        return name, 2
    if not k.isdigit() or int(k) < 1:
        raise WarmstartError(f"--strategies {spec}: K in top_k:K must be a positive integer")
    return name, int(k)


def default_strategies() -> list[str]:
    """head_only, top_k:2, full, lp_ft, bitfit, and lora when peft is installed."""
    found = ["head_only", "top_k:2", "full", "lp_ft", "bitfit"]
    return [*found, "lora"] if importlib.util.find_spec("peft") is not None else found


@dataclass
class PlannedRun:
    """One strategy at one learning rate: its name (its folder under ``runs/``) and the arguments it changes in the
    comparison's configuration, by flag name. ``learning_rate`` is ``None`` for a run that uses none (``head_only``
    with the solved probe)."""

    name: str
    strategy: str
    learning_rate: float | None
    values: dict[str, Any]


def plan_runs(
    strategies: Sequence[str],
    learning_rates: Sequence[float] | None = None,
    *,
    modality: str | None = None,
    solved_head: bool = False,
    lp_ft_probe_epochs: float | None = None,
) -> list[PlannedRun]:
    """The runs of a comparison, strategy by strategy.

    Args:
        strategies: e.g. ``["head_only", "top_k:3", "lora"]`` (see :func:`parse_strategy`).
        learning_rates: crossed with every strategy; ``None``: each strategy sweeps its own default rate times
            :data:`~warmstart.freezing.DEFAULT_LR_SWEEP` (rounded to 3 significant digits).
        modality: ``image`` or ``text``, whose default rates a sweep uses (needed without ``learning_rates``).
        solved_head: ``head_only`` fits its head without a learning rate (see :func:`probe_is_solved`): it runs once,
            as ``head_only-lbfgs``, with no learning rate.
        lp_ft_probe_epochs: the lp_ft runs' ``probe_epochs``.

    Returns:
        The runs, named ``<strategy>-lr<rate>`` (``top_k3-lr0.001``).

    Raises:
        WarmstartError: an unknown strategy, the same run named twice, or no modality for the default rates.

    Example:
        >>> [run.name for run in plan_runs(["head_only", "bitfit"], modality="text", solved_head=True)]
        ['head_only-lbfgs', 'bitfit-lr0.0003', 'bitfit-lr0.001', 'bitfit-lr0.003']
    """
    if learning_rates is None and modality is None:
        raise WarmstartError("plan_runs: give learning_rates, or the modality whose default rates to sweep")
    runs = []
    for spec in strategies:
        name, k = parse_strategy(spec)
        label = f"{name}{k}" if k else name
        extra: dict[str, Any] = {"unfreeze_top_k": k} if k else {}
        if name == "lp_ft" and lp_ft_probe_epochs is not None:
            extra["probe_epochs"] = float(lp_ft_probe_epochs)
        if name == "head_only" and solved_head:
            runs.append(PlannedRun(f"{label}-lbfgs", spec, None, {"freeze_strategy": name, **extra}))
            continue
        if learning_rates is None:
            default = default_learning_rate(name, modality)
            # rounded: 5e-5 * 0.3 is 1.5000000000000002e-05 in floats, a flag nobody would type
            rates = [float(f"{default * factor:.3g}") for factor in DEFAULT_LR_SWEEP]
        else:
            rates = [float(lr) for lr in learning_rates]
        for lr in rates:
            runs.append(
                PlannedRun(f"{label}-lr{lr:g}", spec, lr, {"freeze_strategy": name, "learning_rate": lr, **extra})
            )
    if len({run.name for run in runs}) != len(runs):
        raise WarmstartError("--strategies / --learning_rates name the same run twice: give each once")
    return runs


def probe_is_solved(config: RunConfig) -> bool:
    """Whether the head of ``head_only`` runs and the probe of ``lp_ft`` runs made from ``config`` will be solved
    (L-BFGS logistic regression on the cached backbone features, no learning rate or epochs) rather than trained by
    the Trainer: the features are cached (:func:`warmstart.tasks.classification.feature_cache_refusal`, the rule the
    runs themselves follow) and ``--probe_solver trainer`` is not given.

    Example:
        >>> probe_is_solved(parse_config([*flags, "--hflip", "0.5"], "image_classification"))
        False
    """
    if config.policy.probe_solver == "trainer":
        return False
    return feature_cache_refusal(config.with_values(freeze_strategy="head_only", probe_train_rest=False)) is None


def plan_comparison(
    strategies: Sequence[str], learning_rates: Sequence[float] | None, config: RunConfig
) -> list[PlannedRun]:
    """The runs of a comparison, from ``--strategies`` / ``--learning_rates`` and the configuration all runs share.

    - Rates: ``learning_rates`` crossed with every strategy; without them, a ``--learning_rate`` given in
      ``config`` is one rate shared by all (what it meant before strategies had rates of their own); without
      either, each strategy sweeps its own grid (:func:`plan_runs`).
    - ``head_only`` with the solved probe (:func:`probe_is_solved`; not with ``--probe_train_rest``, which trains the
      head on after solving it) runs once, without a rate: every rate would give the same head.
    - ``lp_ft`` whose probe the Trainer trains probes for half the epochs where no ``--probe_epochs`` is given;
      the solved probe needs none (the whole run is its fine-tuning phase).

    Raises:
        WarmstartError: lp_ft with the Trainer's probe, ``--max_steps`` and no ``--probe_epochs`` (half of a step
            budget is not a number of epochs), or what :func:`plan_runs` refuses.
    """
    training, policy = config.training, config.policy
    solved = probe_is_solved(config)
    rates = learning_rates or ([training.learning_rate] if "learning_rate" in config.given else None)
    probe_epochs = None
    if not solved and policy.probe_epochs is None and any(parse_strategy(s)[0] == "lp_ft" for s in strategies):
        if training.max_steps > 0:
            raise WarmstartError(
                "--strategies lp_ft with --max_steps needs --probe_epochs (the length of the probe the Trainer "
                "trains here)"
            )
        probe_epochs = training.num_train_epochs / 2  # probe for half the budget unless told
    solved_head = solved and not policy.probe_train_rest
    return plan_runs(
        strategies, rates, modality=config.modality, solved_head=solved_head, lp_ft_probe_epochs=probe_epochs
    )


class PeakMemory:
    """The peak resident memory of this process while the block runs (sampled every 20 ms from /proc, so a
    shorter spike can be missed), and the peak CUDA memory allocated, when a GPU is in use."""

    def __enter__(self) -> PeakMemory:
        self.rss_mb = self.start_mb = self._rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.rss_mb = max(self.rss_mb, self._rss_mb())
        self.cuda_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.rss_mb = max(self.rss_mb, self._rss_mb())

    @staticmethod
    def _rss_mb() -> float:
        try:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):  # not Linux: the process's high-water mark instead
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def row_from_results(run: PlannedRun, results: dict[str, Any], wall: float, memory: PeakMemory) -> dict[str, Any]:
    """A comparison row: the run, its parameters, its times, its memory and every eval / test metric.

    ``train_seconds`` is the Trainer's time; ``feature_cache_seconds`` the backbone pass of a frozen-backbone run
    (0 for a run that reused another's features: the first one pays for all). ``peak_rss_mb`` is the process's
    peak during the run and ``rss_growth_mb`` its rise over where the run started, which earlier runs of the same
    process do not inflate.
    """
    row: dict[str, Any] = {
        "run": run.name,
        "strategy": run.strategy,
        "learning_rate": run.learning_rate,
        "trainable_params": results.get("trainable_params"),
        "total_params": results.get("total_params"),
        "train_seconds": round(results.get("train_runtime", 0.0), 2),
        "feature_cache_seconds": round(results.get("feature_cache_seconds", 0.0), 2),
        "wall_seconds": round(wall, 2),
        "peak_rss_mb": round(memory.rss_mb, 1),
        "rss_growth_mb": round(memory.rss_mb - memory.start_mb, 1),
    }
    if memory.cuda_mb is not None:
        row["peak_cuda_mb"] = round(memory.cuda_mb, 1)
    for key, value in results.items():
        if key.startswith(("eval_", "test_")) and not key.endswith(("_runtime", "_per_second", "_samples")):
            row[key] = value
    return row


def best_row(rows: Sequence[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The best run by ``eval_<metric>`` (lowest for a loss, highest otherwise); a tie goes to the lower
    validation loss, then to fewer trainable parameters.

    Raises:
        WarmstartError: no run reports the metric.
    """
    key = f"eval_{metric.removeprefix('eval_')}"
    scored = [row for row in rows if isinstance(row.get(key), (int, float))]
    if not scored:
        reported = sorted({k.removeprefix("eval_") for row in rows for k in row if k.startswith("eval_")})
        raise WarmstartError(
            f"--metric_for_best_model {metric}: no run reports {key} (they report {', '.join(reported)}): "
            "choose one of those"
        )
    sign = 1 if "loss" in key else -1

    def rank(row: dict[str, Any]) -> tuple[float, float, float]:
        loss = row.get("eval_loss")
        return sign * row[key], loss if isinstance(loss, (int, float)) else float("inf"), row["trainable_params"] or 0

    return min(scored, key=rank)


def run_comparison(
    runs: Sequence[PlannedRun],
    config: RunConfig,
    output_dir: Path,
    *,
    feature_store: dict[str, Any] | None = None,
    progress: Callable[[str], None] = print,
    resume: bool = False,
    runner: Callable[..., dict[str, Any]] = run,
) -> list[dict[str, Any]]:
    """Runs each planned run, a variant of ``config`` (:meth:`~warmstart.config.RunConfig.with_values`), into
    ``output_dir/runs/<name>``, skipping the runs a previous attempt finished with the same configuration, with one
    progress line per run.

    Under a multi-process launch every process runs the same runs (each a multi-process run); the main process
    decides what to skip, and alone writes the rows and the progress lines.

    Args:
        runs: from :func:`plan_runs`.
        config: the configuration all runs share (data, model, budget, seed).
        output_dir: the comparison's directory.
        feature_store: shared between runs, so that frozen-backbone runs compute the features once.
        progress: where the progress lines go.
        resume: a run an earlier attempt started with the same configuration and did not finish resumes from its
            last complete checkpoint (``--resume_from_checkpoint auto``), instead of starting again.
        runner: runs one configuration, ``runner(config, feature_store=...)`` (:func:`warmstart.run`).

    Returns:
        One row per run (see :func:`row_from_results`), in plan order.
    """
    rows = []
    main_process = is_main_process()
    say = progress if main_process else lambda line: None
    variants = [
        config.with_values(**run.values, output_dir=str(output_dir / "runs" / run.name), resume_from_checkpoint=None)
        for run in runs
    ]
    plans = [_plan(v, resume) for v in variants] if main_process else None
    plans = broadcast_from_main(plans)  # every process runs what the main process decided, from its files
    for i, (run_, variant, (record, action, row)) in enumerate(zip(runs, variants, plans, strict=True), start=1):
        run_dir = output_dir / "runs" / run_.name
        if action == "skip":
            rows.append(row)
            say(f"[{i}/{len(runs)}] {run_.name}: finished earlier, skipped")
            continue
        if action in ("replace", "restart"):
            why = "finished earlier with other arguments" if action == "replace" else "interrupted earlier"
            say(f"[{i}/{len(runs)}] {run_.name}: {why}, trained again from the start")
            variant = variant.with_values(overwrite_output_dir=True)  # the run's own folder, made by this comparison
        elif action == "resume":
            say(f"[{i}/{len(runs)}] {run_.name}: interrupted earlier, resuming from its last checkpoint ...")
            variant = variant.with_values(resume_from_checkpoint="auto")
        made = main_process and not run_dir.exists()
        if main_process:
            (run_dir / ROW_FILE).unlink(missing_ok=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / STARTED_FILE).write_text(json.dumps({"config": record}, indent=2))
        barrier()  # no process starts the run while the main process still changes its folder
        if action != "resume":
            say(f"[{i}/{len(runs)}] {run_.name}: training ...")
        started = time.perf_counter()
        try:
            with PeakMemory() as memory:
                results = runner(variant, feature_store=feature_store)
        except WarmstartError:
            if made and [p.name for p in run_dir.iterdir()] == [STARTED_FILE]:
                # refused before it wrote anything (bad arguments): the comparison leaves no trace of it
                shutil.rmtree(run_dir, ignore_errors=True)
                with contextlib.suppress(OSError):
                    run_dir.parent.rmdir()  # the runs/ folder, if this was its first run
            raise
        row = row_from_results(run_, results, time.perf_counter() - started, memory)
        if main_process:
            # written last, with the configuration: the run counts as finished from here, for it only
            (run_dir / ROW_FILE).write_text(json.dumps({**row, "config": record}, indent=2))
        rows.append(row)
        shown = ", ".join(f"{k} {row[k]:.4f}" for k in ("eval_accuracy", "eval_loss") if k in row)
        say(
            f"[{i}/{len(runs)}] {run_.name}: {shown}; {row['trainable_params']:,} trainable params, "
            f"{row['train_seconds'] + row['feature_cache_seconds']:.1f} s training, peak {row['peak_rss_mb']:.0f} MiB"
        )
    return rows


def run_record(config: RunConfig) -> dict[str, Any]:
    """What decides which model a run makes, as plain data (its sections and training arguments, without where it
    writes and how this attempt starts): two runs with equal records make the same model."""
    return comparable_config({**config.sections(), "training": to_plain(config.training)})


def _plan(config: RunConfig, resume: bool) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
    """What to do with a run, from what its folder holds: ``skip`` (finished with this configuration; its row),
    ``replace`` (finished with another), ``resume`` (started with this configuration, not finished, and resuming was
    asked for), ``restart`` (started, not finished, not resumed) or ``train``; with the run's record."""
    # through JSON, as the files hold it: a tuple is a list there
    record = json.loads(json.dumps(run_record(config), default=str))
    run_dir = Path(config.training.output_dir)
    finished = run_dir / ROW_FILE
    if finished.is_file():
        row = json.loads(finished.read_text())
        if row.pop("config", None) == record:
            return record, "skip", row
        return record, "replace", None
    started = run_dir / STARTED_FILE
    same = started.is_file() and json.loads(started.read_text()).get("config") == record
    if resume and same:
        return record, "resume", None
    # a folder from an interrupted attempt is this comparison's own: trained again
    return record, "restart" if run_dir.exists() else "train", None


_TABLE_COLUMNS = (
    ("run", "run"),
    ("trainable_params", "trainable params"),
    ("train_seconds", "train s"),
    ("feature_cache_seconds", "feature cache s"),
    ("peak_rss_mb", "peak MiB"),
)


def comparison_table(rows: Sequence[dict[str, Any]], best: dict[str, Any] | None = None) -> str:
    """The comparison as a markdown table: one row per run, every eval / test metric, the best in bold."""
    metrics = [k for k in dict.fromkeys(k for row in rows for k in row) if k.startswith(("eval_", "test_"))]
    marked = next((row for row in rows if best is not None and row["run"] == best["run"]), None)
    return markdown_table(rows, [*_TABLE_COLUMNS, *((m, m) for m in metrics)], best=marked)


def write_comparison(rows: Sequence[dict[str, Any]], output_dir: Path, metric: str) -> dict[str, Any]:
    """Writes ``comparison.csv``, ``comparison.md`` and ``comparison.png`` and returns the best row.

    The plot and the markdown show the majority-class level (what always predicting the most frequent validation
    class scores), from the validation support in the runs' ``classification_report.json`` (see
    :func:`validation_class_counts`); where no run wrote one, they go without it.
    """
    from warmstart.report import write_comparison_plot

    best = best_row(rows, metric)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (output_dir / "comparison.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    key = f"eval_{metric.removeprefix('eval_')}"
    counts = validation_class_counts(output_dir / "runs" / str(row["run"]) for row in rows)
    level = majority_class_level(counts, key) if counts else None
    majority = ""
    if counts:
        top = max(counts, key=counts.get)
        share = counts[top] / sum(counts.values())
        majority = f"Majority class: {100 * share:.1f} % of the validation split (`{top}`)"
        majority += f"; always predicting it scores {key} {level:.4f}.\n\n" if level is not None else ".\n\n"
    table = comparison_table(rows, best)
    (output_dir / "comparison.md").write_text(f"Best by {key}: **{best['run']}**\n\n{majority}{table}\n")
    write_comparison_plot(
        list(rows),
        key,
        output_dir / "comparison.png",
        time_key="train_seconds",
        name_key="run",
        best=best,
        reference=("majority class", level) if level is not None else None,
    )
    return best


def validation_class_counts(run_dirs: Iterable[Path]) -> dict[str, int] | None:
    """The validation examples per class, from the ``classification_report.json`` (its per-class support) of the
    first run that wrote one: every run of a comparison evaluates the same split, and the file is there for a run
    skipped as finished too. ``None`` where no run wrote one."""
    for run_dir in run_dirs:
        report = run_dir / "classification_report.json"
        if not report.is_file():
            continue
        per_class = json.loads(report.read_text())
        counts = {
            name: int(scores["support"])
            for name, scores in per_class.items()
            if name not in ("accuracy", "macro avg", "weighted avg", "micro avg") and isinstance(scores, dict)
        }
        if sum(counts.values()) > 0:
            return counts
    return None


def majority_class_level(class_counts: Mapping[str, int], metric: str) -> float | None:
    """What always predicting the most frequent class scores on ``metric``, as the runs' metrics
    (:func:`warmstart.metrics.classification_metrics`) count it: the majority share for accuracy; for macro F1, the
    majority class's F1 (precision the share, recall 1) over the classes present, the others scoring 0; 0.5 for
    ROC-AUC (constant scores rank nothing).

    Args:
        class_counts: examples per class in the evaluated split.
        metric: ``accuracy``, ``f1_macro``, ``roc_auc`` (with or without ``eval_``).

    Returns:
        The level, or ``None`` for a metric without one (a loss: a constant predictor's loss depends on the
        probabilities it would give), an empty split, and ROC-AUC of a split holding one class.

    Example:
        >>> majority_class_level({"neg": 60, "pos": 40}, "eval_accuracy")
        0.6
    """
    name = metric.removeprefix("eval_")
    present = [count for count in class_counts.values() if count > 0]
    if name not in ("accuracy", "f1_macro", "roc_auc") or not present:
        return None
    share = max(present) / sum(present)
    if name == "accuracy":
        return share
    if name == "f1_macro":
        return 2 * share / (1 + share) / len(present)
    return 0.5 if len(present) > 1 else None


def keep_best(best: dict[str, Any], rows: Sequence[dict[str, Any]], output_dir: Path, metric: str) -> None:
    """Copies the best run's model (its files, not its checkpoints) to ``output_dir`` and adds the comparison to
    its model card."""
    copy_run_output(output_dir / "runs" / best["run"], output_dir, skip=(ROW_FILE,))
    card = output_dir / "README.md"
    key = f"eval_{metric.removeprefix('eval_')}"
    card.write_text(
        card.read_text().rstrip()
        + f"\n\n## Strategy comparison\nThis model is the best of {len(rows)} runs by `{key}` (`{best['run']}`), "
        "on the same splits, seed and budget:\n\n"
        + comparison_table(rows, best)
        + "\n\n![validation metric against training time; marker size: trainable parameters](comparison.png)\n"
    )


def modality_of(model_name_or_path: str, image_folders: bool = False) -> str:
    """``image`` or ``text``: from the data (image folders), else from the model (its config.json, a timm name,
    or the config of a hub id in the local cache)."""
    if image_folders:
        return "image"
    from warmstart.models import is_image_model_config, read_model_config

    local = read_model_config(model_name_or_path)
    if local is not None:
        return "image" if is_image_model_config(local) else "text"
    import timm

    if timm.is_model(model_name_or_path.removeprefix("hf-hub:")):
        return "image"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model_name_or_path.removeprefix("hf-hub:"), "config.json")
    if isinstance(cached, str):
        return "image" if is_image_model_config(json.loads(Path(cached).read_text())) else "text"
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
    parsed, rest = own.parse_known_args(argv)
    comparison = ComparisonArguments(parsed.strategies, parsed.learning_rates)
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
    if metric not in KNOWN_METRICS:
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
    ``--output_dir`` (by ``--metric_for_best_model``, default accuracy).

    Returns:
        One row per run.

    Raises:
        WarmstartError: the output folder holds another model, or a run fails with a one-line error.
    """
    strategies = comparison.strategies or default_strategies()
    runs = plan_comparison(strategies, comparison.learning_rates, config)
    output_dir = Path(config.training.output_dir)
    refuse_foreign_model(output_dir, "comparison.csv", "a comparison", config.model.overwrite_output_dir)
    metric = (config.training.metric_for_best_model or "accuracy").removeprefix("eval_")
    resume = config.training.resume_from_checkpoint == "auto"
    ensure_process_group()  # several processes (torchrun): they agree on what to run before the first run
    store: dict = {}
    try:
        rows = run_comparison(runs, config, output_dir, feature_store=store, resume=resume)
    finally:
        close_feature_store(store)
    if is_main_process():
        best = write_comparison(rows, output_dir, metric)
        keep_best(best, rows, output_dir, metric)
        print(
            f"\nstrategy comparison ({config.modality}): best by eval_{metric} is {best['run']}, kept in {output_dir}"
        )
        print(comparison_table(rows, best))
    barrier()  # the other processes return once the outputs are written
    return rows
