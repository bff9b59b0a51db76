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

The runs are planned in :mod:`warmstart.comparison.planning`, run in :mod:`warmstart.comparison.running`, their
rows judged and written in :mod:`warmstart.comparison.results`; :mod:`warmstart.comparison.driver` does it all
from a command line.
"""

from __future__ import annotations

from warmstart.comparison.driver import close_feature_store, compare_strategies, modality_of, parse_comparison
from warmstart.comparison.planning import (
    ComparisonArguments,
    PlannedRun,
    default_strategies,
    parse_strategy,
    plan_comparison,
    plan_runs,
    probe_is_solved,
)
from warmstart.comparison.results import (
    KNOWN_METRICS,
    best_row,
    comparison_table,
    headline_metric,
    keep_best,
    majority_class_level,
    validation_class_counts,
    write_comparison,
)
from warmstart.comparison.running import (
    ROW_FILE,
    STARTED_FILE,
    PeakMemory,
    row_from_results,
    run_comparison,
    run_record,
)

__all__ = [
    "ComparisonArguments",
    "KNOWN_METRICS",
    "PeakMemory",
    "PlannedRun",
    "ROW_FILE",
    "STARTED_FILE",
    "best_row",
    "headline_metric",
    "close_feature_store",
    "compare_strategies",
    "comparison_table",
    "default_strategies",
    "keep_best",
    "majority_class_level",
    "modality_of",
    "parse_comparison",
    "parse_strategy",
    "plan_comparison",
    "plan_runs",
    "probe_is_solved",
    "row_from_results",
    "run_comparison",
    "run_record",
    "validation_class_counts",
    "write_comparison",
]
