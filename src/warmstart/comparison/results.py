"""A comparison's results: the best run by the validation metric (with its tie-break), whether it is significantly
better than each other run on the same validation examples (``p_value_vs_best``: McNemar for accuracy, a paired
bootstrap otherwise, :mod:`warmstart.uncertainty`) and which cheaper runs it does not beat, the comparison table
with each metric's confidence interval, the files written from the rows (``comparison.csv``, ``comparison.md``,
``comparison.png``), the majority-class level the runs are measured against, and the kept run's model in the
comparison's folder.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from warmstart.comparison.running import ROW_FILE
from warmstart.errors import WarmstartError
from warmstart.export import copy_run_output, markdown_table
from warmstart.problems import GREATER_IS_BETTER, PROBLEM_TYPES, greater_is_better
from warmstart.training.scoring import PREDICTIONS_FILE
from warmstart.uncertainty import DEFAULT_LEVEL, paired_p_value

# what the metrics of a classification run of any label shape are called (eval_<name>)
KNOWN_METRICS = tuple(GREATER_IS_BETTER)


def headline_metric(rows: Sequence[dict[str, Any]]) -> str:
    """The metric the runs' label shape is judged by (:data:`~warmstart.problems.PROBLEM_TYPES`' headline): the
    first shape whose headline the runs report; ``accuracy`` when none does."""
    for problem in PROBLEM_TYPES.values():
        if any(isinstance(row.get(f"eval_{problem.headline}"), (int, float)) for row in rows):
            return problem.headline
    return "accuracy"


def best_row(rows: Sequence[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The best run by ``eval_<metric>`` (lowest for a loss or an error, highest otherwise:
    :func:`~warmstart.problems.greater_is_better`); a tie goes to the lower validation loss, then to fewer
    trainable parameters.

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
    sign = -1 if greater_is_better(key) else 1

    def rank(row: dict[str, Any]) -> tuple[float, float, float]:
        loss = row.get("eval_loss")
        return sign * row[key], loss if isinstance(loss, (int, float)) else float("inf"), row["trainable_params"] or 0

    return min(scored, key=rank)


_TABLE_COLUMNS = (
    ("run", "run"),
    ("trainable_params", "trainable params"),
    ("train_seconds", "train s"),
    ("feature_cache_seconds", "feature cache s"),
    ("peak_rss_mb", "peak MiB"),
)


def comparison_table(rows: Sequence[dict[str, Any]], best: dict[str, Any] | None = None) -> str:
    """The comparison as a markdown table: one row per run, every eval / test metric (with its confidence interval,
    ``value [low, high]``, where the run has one), ``p_value_vs_best`` where measured, the best (kept) in bold."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    metrics = [k for k in keys if k.startswith(("eval_", "test_")) and not k.endswith(("_ci_low", "_ci_high"))]
    shown = [{**row, **{m: _with_interval(row, m) for m in metrics}} for row in rows]
    marked = next((s for s, row in zip(shown, rows) if best is not None and row["run"] == best["run"]), None)
    extra = [("p_value_vs_best", "p vs best")] if "p_value_vs_best" in keys else []
    return markdown_table(shown, [*_TABLE_COLUMNS, *((m, m) for m in metrics), *extra], best=marked)


def _with_interval(row: dict[str, Any], metric: str) -> Any:
    value, low, high = row.get(metric), row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (value, low, high)):
        return value
    return f"{value:.4g} [{low:.4g}, {high:.4g}]"


def add_significance(rows: Sequence[dict[str, Any]], output_dir: Path, metric: str, best: dict[str, Any]) -> None:
    """Sets each row's ``p_value_vs_best``: the p-value of the difference of ``eval_<metric>`` between the best run
    and it, on the same validation examples (their saved predictions, ``eval_predictions.npz``); ``None`` where a run
    saved none (a run of an older warmstart) or the metric has no paired test; the best's own is ``None``."""
    name = metric.removeprefix("eval_")
    predictions = {row["run"]: _predictions(output_dir / "runs" / str(row["run"])) for row in rows}
    ours = predictions.get(best["run"])
    for row in rows:
        theirs = predictions.get(row["run"])
        row["p_value_vs_best"] = None
        if (
            row["run"] == best["run"]
            or ours is None
            or theirs is None
            or ours["problem_type"] != theirs["problem_type"]
        ):
            continue
        row["p_value_vs_best"] = paired_p_value(
            ours["problem_type"], name, ours, theirs,
            thresholds_a=ours.get("thresholds"), thresholds_b=theirs.get("thresholds"),
        )  # fmt: skip


def _predictions(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / PREDICTIONS_FILE.format(prefix="eval")
    if not path.is_file():
        return None
    with np.load(path) as saved:
        loaded = {key: saved[key] for key in saved.files}
    loaded["problem_type"] = str(loaded.get("problem_type", ""))
    return loaded


def _cost(row: dict[str, Any]) -> tuple[float, float]:
    params, seconds = row.get("trainable_params"), row.get("train_seconds")
    return (
        float(params) if isinstance(params, (int, float)) else float("inf"),
        float(seconds) if isinstance(seconds, (int, float)) else float("inf"),
    )


def cheaper_ties(rows: Sequence[dict[str, Any]], best: dict[str, Any], level: float) -> list[dict[str, Any]]:
    """The runs cheaper than the best (fewer trainable parameters, or as many and less train time) that it is not
    significantly better than (``p_value_vs_best`` at least ``1 - level``), cheapest first."""
    alpha = 1.0 - level
    tied = [
        row
        for row in rows
        if isinstance(row.get("p_value_vs_best"), float)
        and row["p_value_vs_best"] >= alpha
        and _cost(row) < _cost(best)
    ]
    return sorted(tied, key=_cost)


def tie_verdict(best: dict[str, Any], tied: Sequence[dict[str, Any]], key: str, level: float) -> str:
    """One paragraph: which cheaper runs the best does not significantly beat, and how much cheaper they are."""
    if not tied:
        return ""
    parts = []
    for row in tied[:5]:
        cost = []
        if _cost(row)[0] < _cost(best)[0] and _cost(row)[0] > 0:
            cost.append(f"{_cost(best)[0] / _cost(row)[0]:.3g}x fewer trainable parameters")
        if _cost(row)[1] < _cost(best)[1] and _cost(row)[1] > 0:
            cost.append(f"{_cost(best)[1] / _cost(row)[1]:.3g}x less train time")
        value = row.get(key)
        shown = f"{key} {value:.4g}, " if isinstance(value, (int, float)) else ""
        parts.append(f"{row['run']} ({shown}p = {row['p_value_vs_best']:.3g}; {', '.join(cost) or 'cheaper'})")
    return (
        f"{best['run']} is not significantly better (at {100 * (1 - level):.0f} %) than the cheaper "
        + "; ".join(parts)
        + ": at this validation size the gap may be sampling noise."
    )


def write_comparison(
    rows: Sequence[dict[str, Any]],
    output_dir: Path,
    metric: str,
    *,
    level: float = DEFAULT_LEVEL,
    prefer: str = "best",
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Writes ``comparison.csv``, ``comparison.md`` and ``comparison.png``; returns the best row, the row to keep
    and the verdict on ties.

    Each row gets ``p_value_vs_best`` (:func:`add_significance`). Where the best is not significantly better than
    cheaper runs, the markdown says so; with ``prefer="cheaper_if_tied"`` the cheapest of them is the one kept.
    The plot and the markdown show the majority-class level (what always predicting the most frequent validation
    class scores), from the validation support in the runs' ``classification_report.json`` (see
    :func:`validation_class_counts`); where no run wrote one, they go without it.
    """
    from warmstart.report import write_comparison_plot

    best = best_row(rows, metric)
    key = f"eval_{metric.removeprefix('eval_')}"
    add_significance(rows, output_dir, metric, best)
    tied = cheaper_ties(rows, best, level)
    verdict = tie_verdict(best, tied, key, level)
    kept = tied[0] if tied and prefer == "cheaper_if_tied" else best
    if kept is not best:
        verdict += f" Kept: {kept['run']} (--prefer cheaper_if_tied)."
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (output_dir / "comparison.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    counts = validation_class_counts(output_dir / "runs" / str(row["run"]) for row in rows)
    majority_level = majority_class_level(counts, key) if counts else None
    majority = ""
    if counts:
        top = max(counts, key=counts.get)
        share = counts[top] / sum(counts.values())
        majority = f"Majority class: {100 * share:.1f} % of the validation split (`{top}`)"
        majority += (
            f"; always predicting it scores {key} {majority_level:.4f}.\n\n" if majority_level is not None else ".\n\n"
        )
    table = comparison_table(rows, kept)
    soups = "".join(
        f"{row['run']}: the greedy soup of {', '.join(row['soup_of'])} (their weights averaged; train s: theirs, "
        "summed).\n\n"
        for row in rows
        if row.get("soup_of")
    )
    tests = "McNemar's exact test" if key == "eval_accuracy" else "a paired bootstrap"
    significance = (
        f"Intervals: {100 * level:.0f} % over the validation examples; p vs best: {tests} on the same examples.\n\n"
    )
    (output_dir / "comparison.md").write_text(
        f"Best by {key}: **{best['run']}**\n\n{verdict + chr(10) * 2 if verdict else ''}{majority}{significance}"
        f"{soups}{table}\n"
    )
    write_comparison_plot(
        list(rows),
        key,
        output_dir / "comparison.png",
        time_key="train_seconds",
        name_key="run",
        best=best,
        reference=("majority class", majority_level) if majority_level is not None else None,
    )
    return best, kept, verdict


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


def keep_best(
    best: dict[str, Any], rows: Sequence[dict[str, Any]], output_dir: Path, metric: str, verdict: str = ""
) -> None:
    """Copies the kept run's model (its files, not its checkpoints) to ``output_dir`` and adds the comparison (and
    the verdict on ties) to its model card."""
    copy_run_output(output_dir / "runs" / best["run"], output_dir, skip=(ROW_FILE,))
    card = output_dir / "README.md"
    key = f"eval_{metric.removeprefix('eval_')}"
    card.write_text(
        card.read_text().rstrip()
        + f"\n\n## Strategy comparison\nThis model is the kept one of {len(rows)} runs by `{key}` (`{best['run']}`), "
        "on the same splits, seed and budget:\n\n"
        + (f"{verdict}\n\n" if verdict else "")
        + comparison_table(rows, best)
        + "\n\n![validation metric against training time; marker size: trainable parameters](comparison.png)\n"
    )
