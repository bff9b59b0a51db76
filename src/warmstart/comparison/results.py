"""A comparison's results: the best run by the validation metric (with its tie-break), the comparison table,
the files written from the rows (``comparison.csv``, ``comparison.md``, ``comparison.png``), the majority-class
level the runs are measured against, and the best run's model kept in the comparison's folder.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from warmstart.comparison.running import ROW_FILE
from warmstart.errors import WarmstartError
from warmstart.export import copy_run_output, markdown_table
from warmstart.problems import GREATER_IS_BETTER, PROBLEM_TYPES, greater_is_better

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
