"""What a label shape is: single-label classification, multi-label classification and regression, as entries of one
table (:data:`PROBLEM_TYPES`, keyed by the ``problem_type`` names transformers gives them), and a run's labels as a
value (:class:`LabelSpace`: the shape, the names of its outputs, a regression's target scale, a multi-label head's
decision thresholds).

What differs between the shapes is data here: what a run reports and is judged by, what ``--class_weights auto``
weighs, whether label smoothing and mixup apply. The code that acts on it (label encoding in
:mod:`warmstart.data.targets`, the loss in :mod:`warmstart.regularization.losses`, the metrics in
:mod:`warmstart.metrics`) reads the entry, so that a new shape is a new entry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from warmstart.errors import WarmstartError

# every metric a run can report (eval_<name>), and whether a higher value is better
GREATER_IS_BETTER = {
    "loss": False,
    "accuracy": True,
    "f1_macro": True,
    "roc_auc": True,
    "f1_micro": True,
    "mean_average_precision": True,
    "subset_accuracy": True,
    "hamming_loss": False,
    "mse": False,
    "rmse": False,
    "mae": False,
    "r2": True,
    "pearson": True,
    "spearman": True,
}

SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
REGRESSION = "regression"


@dataclass(frozen=True)
class ProblemType:
    """One label shape.

    Attributes:
        name: transformers' ``config.problem_type`` (what ``pipeline()`` reads to apply softmax, sigmoid or nothing).
        description: for logs and cards (``multi-label classification``).
        headline: the metric a run is judged by when ``--metric_for_best_model`` is not given.
        metrics: what its evaluation reports (``eval_<name>``), besides ``loss`` (some only where defined).
        class_weights: what ``--class_weights auto`` weighs (``None``: nothing; refused).
        smooths: whether ``--label_smoothing`` applies to its targets.
        mixes: whether mixup / cutmix can mix its targets.
        thresholds: whether its decisions take per-output probability thresholds (tuned on validation).
    """

    name: str
    description: str
    headline: str
    metrics: tuple[str, ...]
    class_weights: str | None
    smooths: bool
    mixes: bool
    thresholds: bool = False

    def check_metric(self, metric: str) -> str:
        """The metric's plain name (``eval_`` dropped), checked against what this shape reports.

        Raises:
            WarmstartError: a metric its runs do not report.
        """
        name = metric.removeprefix("eval_")
        if name != "loss" and name not in self.metrics:
            raise WarmstartError(
                f"--metric_for_best_model {metric}: a {self.description} run does not report it (it reports "
                f"{', '.join((*self.metrics, 'loss'))})"
            )
        return name


PROBLEM_TYPES: dict[str, ProblemType] = {
    problem.name: problem
    for problem in (
        ProblemType(
            SINGLE_LABEL,
            "single-label classification",
            "accuracy",
            ("accuracy", "f1_macro", "roc_auc"),
            class_weights="each class by its inverse frequency",
            smooths=True,
            mixes=True,
        ),
        ProblemType(
            MULTI_LABEL,
            "multi-label classification",
            "f1_micro",
            ("f1_micro", "f1_macro", "mean_average_precision", "roc_auc", "subset_accuracy", "hamming_loss"),
            class_weights="each label's positives by its negatives / positives (pos_weight)",
            smooths=True,
            mixes=True,
            thresholds=True,
        ),
        ProblemType(
            REGRESSION,
            "regression",
            "rmse",
            ("mse", "rmse", "mae", "r2", "pearson", "spearman"),
            class_weights=None,
            smooths=False,
            mixes=False,
        ),
    )
}


def problem_named(name: str) -> ProblemType:
    """The entry of a ``problem_type``.

    Raises:
        WarmstartError: no such label shape.
    """
    try:
        return PROBLEM_TYPES[name]
    except KeyError:
        raise WarmstartError(f"unknown --problem_type {name!r}: use one of {', '.join(PROBLEM_TYPES)}") from None


@dataclass
class LabelSpace:
    """A run's labels: their shape and what the head's outputs mean.

    Attributes:
        problem_type: a key of :data:`PROBLEM_TYPES`.
        names: the head's outputs, in order: the classes (single-label), the labels (multi-label) or the target
            columns (regression).
        target_mean, target_std: regression: each target's mean and standard deviation on train. The head trains on
            standardised targets; the saved model has the scale folded into its last layer, so it outputs values in
            the targets' units.
        thresholds: multi-label: each label's decision threshold on its probability (tuned on validation, or
            ``--threshold``); ``None`` until decided.
        inferred: how the shape was decided (``--problem_type``, or what the label column holds), for the record.
    """

    problem_type: str
    names: list[str]
    target_mean: list[float] | None = None
    target_std: list[float] | None = None
    thresholds: list[float] | None = None
    inferred: str = ""

    @property
    def problem(self) -> ProblemType:
        return problem_named(self.problem_type)

    @property
    def num_outputs(self) -> int:
        return len(self.names)

    @property
    def scale(self) -> tuple[list[float], list[float]] | None:
        """A regression's ``(mean, std)`` per target, or ``None``."""
        if self.target_mean is None or self.target_std is None:
            return None
        return self.target_mean, self.target_std

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "names"}


def greater_is_better(metric: str) -> bool:
    """Whether a higher value of a run's metric (with or without ``eval_``) is better; a name warmstart does not
    report is judged as the Trainer judges it (lower for a loss)."""
    name = metric.removeprefix("eval_")
    return GREATER_IS_BETTER.get(name, not name.endswith("loss"))
