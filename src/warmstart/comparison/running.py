"""Running a comparison's planned runs: each a variant of the shared configuration in its own folder under
``runs/``, a finished one recognised by the row it left (``comparison_row.json``, with its configuration) and
skipped by a rerun, an interrupted one trained again or resumed; each run's row holds its parameters, times, peak
memory and metrics. Under a multi-process launch every process runs each run and the main process writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from warmstart.comparison.planning import PlannedRun
from warmstart.config import RunConfig, to_plain
from warmstart.distributed import barrier, broadcast_from_main, is_main_process
from warmstart.errors import WarmstartError
from warmstart.export import comparable_config
from warmstart.tasks import run

ROW_FILE = "comparison_row.json"
# written when a run starts, with its arguments: a resumed comparison resumes only a run started with the same ones
STARTED_FILE = "comparison_started.json"


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
    timing = ("_runtime", "_per_second", "_samples", "_preparation_time")
    for key, value in results.items():
        if key.startswith(("eval_", "test_")) and not key.endswith(timing):
            row[key] = value
    return row


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
