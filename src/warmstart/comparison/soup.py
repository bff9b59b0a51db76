"""Model soups in a comparison (Wortsman et al. 2022): the runs that share an architecture and a trainable set
(the same strategy at several learning rates, or full and lp_ft) started from the same pretrained weights and the
same seed, so their weights can be averaged. The greedy soup takes them best first by the validation metric and adds
each next one when the average with it is at least as good on validation; the soup is evaluated as a run of its own
(``--evaluate_only`` with ``--average_with``, into ``runs/soup-<strategy>``), and its row joins the table, to be kept
when it is the best. Its cost is its ingredients' (their train time summed); it adds a few evaluations.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from warmstart.comparison.planning import PlannedRun
from warmstart.comparison.running import ROW_FILE, PeakMemory, row_from_results
from warmstart.config import RunConfig
from warmstart.distributed import barrier, broadcast_from_main, is_main_process
from warmstart.problems import greater_is_better
from warmstart.run_folder import read_run_config
from warmstart.tasks import run

SOUP_PREFIX = "soup-"


def soup_key(run_dir: Path) -> str | None:
    """What a run's weights must share with another's to be averaged with them: its architecture (the saved
    config's architecture and labels, the parameter count) and its trainable set (the groups it trained and their
    parameter count), as one string; ``None`` for a folder without a finished classifier."""
    config_json = run_dir / "config.json"
    recorded = read_run_config(run_dir)
    if not config_json.is_file() or not recorded or "freeze_report" not in recorded:
        return None
    model = json.loads(config_json.read_text())
    report = recorded["freeze_report"]
    names = ("architecture", "architectures", "model_type", "id2label", "problem_type", "num_labels")
    architecture = {k: model.get(k) for k in names}
    trainable = (report.get("trainable_groups"), report.get("trainable_params"), report.get("total_params"))
    return json.dumps([architecture, trainable], sort_keys=True, default=str)


def soup_groups(rows: Sequence[dict[str, Any]], output_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The comparison's runs that can be souped, by soup name (``soup-<strategy>``, strategies joined by ``+`` where
    they differ): two or more rows sharing :func:`soup_key`, in the rows' order."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if str(row["run"]).startswith(SOUP_PREFIX):
            continue
        key = soup_key(output_dir / "runs" / str(row["run"]))
        if key is not None:
            by_key.setdefault(key, []).append(row)
    groups = {}
    for members in by_key.values():
        if len(members) >= 2:
            strategies = "+".join(dict.fromkeys(str(row["strategy"]).replace(":", "") for row in members))
            groups[f"{SOUP_PREFIX}{strategies}"] = members
    return groups


def greedy_order(members: Sequence[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The ingredients best first by ``key`` (its direction), runs without the metric left out."""
    scored = [row for row in members if isinstance(row.get(key), (int, float))]
    return sorted(scored, key=lambda row: row[key], reverse=greater_is_better(key))


def make_soups(
    rows: Sequence[dict[str, Any]],
    runs: Sequence[PlannedRun],
    config: RunConfig,
    output_dir: Path,
    metric: str,
    *,
    progress: Callable[[str], None] = print,
    runner: Callable[..., dict[str, Any]] = run,
) -> list[dict[str, Any]]:
    """Makes the greedy soup of each group of :func:`soup_groups` and returns their rows (a group where no addition
    was at least as good as its best run makes none). A soup whose ingredients and their scores are those of an
    earlier attempt is recognised by its row and not made again.

    Under a multi-process launch every process evaluates each candidate (a multi-process run) and the main process
    decides what to evaluate and writes.

    Args:
        rows: the comparison's rows (:func:`~warmstart.comparison.running.run_comparison`).
        runs: its planned runs (each row's arguments, by name).
        config: the configuration the runs share.
        output_dir: the comparison's folder.
        metric: the metric the comparison keeps its best by (``eval_`` optional).
        progress: where the progress lines go.
        runner: runs one configuration (:func:`warmstart.run`).
    """
    key = f"eval_{metric.removeprefix('eval_')}"
    say = progress if is_main_process() else lambda line: None
    groups = broadcast_from_main(soup_groups(rows, output_dir) if is_main_process() else None)
    planned = {planned_run.name: planned_run for planned_run in runs}
    made = []
    for name, members in groups.items():
        ordered = greedy_order(members, key)
        if len(ordered) < 2:
            continue
        row = _greedy_soup(name, ordered, planned, config, output_dir, key, say, runner)
        if row is not None:
            made.append(row)
    return made


def _greedy_soup(
    name: str,
    ordered: list[dict[str, Any]],
    planned: dict[str, PlannedRun],
    config: RunConfig,
    output_dir: Path,
    key: str,
    say: Callable[[str], None],
    runner: Callable[..., dict[str, Any]],
) -> dict[str, Any] | None:
    runs_dir = output_dir / "runs"
    soup_dir, candidate_dir = runs_dir / name, runs_dir / f"{name}.candidate"
    record = {"candidates": [[row["run"], row[key]] for row in ordered], "metric": key}
    earlier = _earlier_row(soup_dir, record) if is_main_process() else None
    earlier = broadcast_from_main(earlier)
    if earlier is not None:
        say(f"{name}: made earlier from the same runs, skipped")
        return earlier
    first = ordered[0]
    base = planned[first["run"]].values
    members, best, kept, seconds = [first], first[key], None, 0.0
    greater = greater_is_better(key)
    say(f"{name}: greedy soup of {len(ordered)} runs sharing an architecture and trainable set, from {first['run']}")
    for candidate in ordered[1:]:
        together = [*members, candidate]
        variant = config.with_values(
            **base,
            model_name_or_path=str(runs_dir / str(together[0]["run"])),
            average_with=[str(runs_dir / str(row["run"])) for row in together[1:]],
            evaluate_only=True,
            random_init=False,  # the runs' weights, whatever the runs started from
            reset_head=False,
            output_dir=str(candidate_dir),
            overwrite_output_dir=True,
            resume_from_checkpoint=None,
        )
        started = time.perf_counter()
        with PeakMemory() as memory:
            results = runner(variant)
        seconds += time.perf_counter() - started
        score = results.get(key)
        accepted = isinstance(score, (int, float)) and (score >= best if greater else score <= best)
        outcome = "added" if accepted else "left out"
        say(f"{name}: + {candidate['run']}: {key} {score:.4f} vs {best:.4f} without it: {outcome}")
        if is_main_process():
            if accepted:
                shutil.rmtree(soup_dir, ignore_errors=True)
                os.replace(candidate_dir, soup_dir)
            else:
                shutil.rmtree(candidate_dir, ignore_errors=True)
        barrier()
        if accepted:
            members, best, kept = together, score, (results, memory)
    if kept is None:
        say(f"{name}: no average was as good as {first['run']} alone: no soup")
        if is_main_process():
            shutil.rmtree(soup_dir, ignore_errors=True)
        return None
    results, memory = kept
    row = row_from_results(PlannedRun(name, str(first["strategy"]), None, {}), results, seconds, memory)
    row.update(
        trainable_params=first.get("trainable_params"),
        train_seconds=round(sum(float(r.get("train_seconds") or 0.0) for r in members), 2),
        feature_cache_seconds=round(sum(float(r.get("feature_cache_seconds") or 0.0) for r in members), 2),
        soup_of=[str(r["run"]) for r in members],
    )
    if is_main_process():
        (soup_dir / ROW_FILE).write_text(json.dumps({**row, "config": record}, indent=2))
    say(f"{name}: {len(members)} runs ({', '.join(row['soup_of'])}): {key} {best:.4f}")
    return row


def _earlier_row(soup_dir: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    path = soup_dir / ROW_FILE
    if not path.is_file():
        return None
    row = json.loads(path.read_text())
    return row if row.pop("config", None) == json.loads(json.dumps(record)) else None
