"""How sure a metric is: confidence intervals of a run's headline metrics over its validation examples, and paired
tests of two runs scored on the same examples.

- Accuracy's interval is the exact binomial one (Clopper-Pearson): the number of right answers is binomial.
- Other metrics (macro F1, micro F1, RMSE, MAE) get a percentile bootstrap interval over the examples, seeded, the
  resamples drawn as multinomial weights so that every resample is a few matrix products, not a Python loop.
- Two runs on the same examples: McNemar's exact test for accuracy (only the examples the two disagree on count),
  a paired bootstrap for the other metrics (both runs scored on each resample; the difference's spread).

The names follow the metric's: ``eval_accuracy_ci_low`` / ``eval_accuracy_ci_high`` beside ``eval_accuracy``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from scipy import stats

from warmstart.errors import WarmstartError

DEFAULT_LEVEL = 0.95
RESAMPLES = 1000
SEED = 0
_CHUNK = 250  # resamples drawn at a time, at most
_CHUNK_ELEMENTS = 10_000_000  # and at most this many draws at a time: a large split's memory stays bounded
# the metrics an interval is given to, per label shape (each its shape's headline and its closest companion)
INTERVAL_METRICS = {
    "single_label_classification": ("accuracy", "f1_macro"),
    "multi_label_classification": ("f1_micro", "f1_macro"),
    "regression": ("rmse", "mae"),
}


def check_level(level: float, flag: str = "--confidence_level") -> float:
    """``level`` when it is a probability strictly between 0 and 1.

    Raises:
        WarmstartError: otherwise, in one line.
    """
    if not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
        raise WarmstartError(f"{flag} is a probability in (0, 1), e.g. 0.95, got {level!r}")
    return float(level)


def exact_binomial_interval(successes: int, trials: int, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """The Clopper-Pearson interval of a proportion: ``successes`` of ``trials``, at ``level``.

    Example:
        >>> low, high = exact_binomial_interval(80, 100)
        >>> round(low, 3), round(high, 3)
        (0.708, 0.873)
    """
    if trials <= 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2
    low = stats.beta.ppf(tail, successes, trials - successes + 1) if successes > 0 else 0.0
    high = stats.beta.ppf(1 - tail, successes + 1, trials - successes) if successes < trials else 1.0
    return float(low), float(high)


def resample_weights(examples: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``(resamples, examples)`` bootstrap weights: how often each example is drawn in each resample (each row sums
    to ``examples``); the same seed gives the same resamples, so two runs on the same examples are resampled alike."""
    return np.concatenate(list(_weight_chunks(examples, resamples, seed)))


def _weight_chunks(examples: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """:func:`resample_weights` a few hundred rows at a time (the same rows): a large validation split's resamples
    are scored chunk by chunk, never all held at once."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(_CHUNK, _CHUNK_ELEMENTS // max(examples, 1)))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        # each resample draws ``examples`` rows with replacement; its weights are how often each row was drawn
        drawn = rng.integers(0, examples, size=(size, examples)) + (np.arange(size) * examples)[:, None]
        yield np.bincount(drawn.ravel(), minlength=size * examples).reshape(size, examples).astype(np.float32)


def _resampled(metric: Callable[[np.ndarray], np.ndarray], examples: int, resamples: int, seed: int) -> np.ndarray:
    """``metric`` on each of the seeded resamples, chunk by chunk."""
    return np.concatenate([metric(weights) for weights in _weight_chunks(examples, resamples, seed)])


def weighted_metric(
    problem_type: str,
    metric: str,
    outputs: np.ndarray,
    labels: np.ndarray,
    thresholds: Sequence[float] | None = None,
) -> Callable[[np.ndarray], np.ndarray] | None:
    """``metric`` of the predictions as a function of bootstrap weights ``(resamples, examples) -> (resamples,)``,
    computed as :mod:`warmstart.metrics` computes it (weights of ones give its value); ``None`` for a metric it does
    not know.

    Args:
        outputs: single-label and multi-label: the logits; regression: the values in the targets' units.
        labels: class ids, 0/1 label vectors, or target values.
        thresholds: multi-label decision thresholds on the probabilities (``None``: 0.5).
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    labels = np.asarray(labels)
    if problem_type == "single_label_classification":
        predicted = outputs.argmax(axis=-1)
        truth = labels.astype(np.int64)
        if metric == "accuracy":
            correct = (predicted == truth).astype(np.float32)
            return lambda w: (w @ correct) / w.sum(axis=1)
        if metric == "f1_macro":
            classes = np.unique(truth)
            hit = np.stack([(predicted == c) & (truth == c) for c in classes], axis=1).astype(np.float32)
            said = np.stack([predicted == c for c in classes], axis=1).astype(np.float32)
            true = np.stack([truth == c for c in classes], axis=1).astype(np.float32)
            return lambda w: _macro_f1(w @ hit, w @ said, w @ true)
        return None
    if problem_type == "multi_label_classification":
        limits = np.asarray(0.5 if thresholds is None else thresholds, dtype=np.float64)
        said = np.exp(-np.logaddexp(0.0, -outputs)) >= limits
        true = labels >= 0.5
        if metric == "f1_micro":
            tp = (said & true).sum(axis=1).astype(np.float32)
            wrong = (said ^ true).sum(axis=1).astype(np.float32)  # false positives and false negatives
            return lambda w: _ratio(2 * (w @ tp), 2 * (w @ tp) + w @ wrong, empty=0.0)
        if metric == "f1_macro":
            hit, said_f, true_f = ((said & true).astype(np.float32), said.astype(np.float32), true.astype(np.float32))
            # a label with neither a positive nor a prediction scores 1 (metrics.multi_label_metrics)
            return lambda w: _per_label_f1(w @ hit, w @ said_f, w @ true_f).mean(axis=1)
        return None
    if problem_type == "regression":
        values = outputs.reshape(len(outputs), -1)
        targets = labels.astype(np.float64).reshape(values.shape)
        if metric == "rmse":
            squared = ((values - targets) ** 2).astype(np.float32)
            return lambda w: np.sqrt((w @ squared) / w.sum(axis=1, keepdims=True)).mean(axis=1)
        if metric == "mae":
            absolute = np.abs(values - targets).mean(axis=1).astype(np.float32)
            return lambda w: (w @ absolute) / w.sum(axis=1)
        return None
    return None


def _ratio(numerator: np.ndarray, denominator: np.ndarray, empty: float) -> np.ndarray:
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, empty)


def _macro_f1(hit: np.ndarray, said: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Macro F1 over the classes present in each resample's truth (as sklearn's ``labels=np.unique(labels)``)."""
    f1 = _ratio(2 * hit, said + true, empty=0.0)
    present = true > 0
    return (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _per_label_f1(hit: np.ndarray, said: np.ndarray, true: np.ndarray) -> np.ndarray:
    return _ratio(2 * hit, said + true, empty=1.0)


def metric_intervals(
    problem_type: str,
    outputs: np.ndarray,
    labels: np.ndarray,
    *,
    thresholds: Sequence[float] | None = None,
    level: float = DEFAULT_LEVEL,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, float]:
    """The confidence intervals of a label shape's metrics (:data:`INTERVAL_METRICS`) on one split.

    Returns:
        ``<metric>_ci_low`` and ``<metric>_ci_high`` of each (unprefixed: the caller adds ``eval_`` / ``test_``);
        accuracy's exact binomial, the others' percentile bootstrap. Empty for fewer than two examples.
    """
    count = len(labels)
    if count < 2:
        return {}
    intervals: dict[str, float] = {}
    for metric in INTERVAL_METRICS.get(problem_type, ()):
        if problem_type == "single_label_classification" and metric == "accuracy":
            right = int((np.asarray(outputs).argmax(axis=-1) == np.asarray(labels)).sum())
            low, high = exact_binomial_interval(right, count, level)
        else:
            scored = weighted_metric(problem_type, metric, outputs, labels, thresholds)
            if scored is None:
                continue
            low, high = np.quantile(_resampled(scored, count, resamples, seed), [(1 - level) / 2, (1 + level) / 2])
        intervals[f"{metric}_ci_low"], intervals[f"{metric}_ci_high"] = float(low), float(high)
    return intervals


def mcnemar_p_value(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """McNemar's exact test of two classifiers on the same examples: two-sided, binomial on the examples exactly one
    of them gets right (1.0 when there are none).

    Args:
        correct_a, correct_b: per example, whether each classifier was right.
    """
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_bootstrap_p_value(
    metric_a: Callable[[np.ndarray], np.ndarray],
    metric_b: Callable[[np.ndarray], np.ndarray],
    examples: int,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> float:
    """Two-sided p-value of the difference of one metric between two runs on the same examples: each resample
    scores both, and the p-value is the share of centred resampled differences at least as large as the observed
    one (+1 smoothing: never 0)."""
    ones = np.ones((1, examples), dtype=np.float32)
    observed = float(metric_a(ones)[0] - metric_b(ones)[0])
    differences = _resampled(lambda w: metric_a(w) - metric_b(w), examples, resamples, seed)
    extreme = np.abs(differences - differences.mean()) >= abs(observed) - 1e-12
    return float((1 + extreme.sum()) / (1 + resamples))


def paired_p_value(
    problem_type: str,
    metric: str,
    a: dict[str, Any],
    b: dict[str, Any],
    *,
    thresholds_a: Sequence[float] | None = None,
    thresholds_b: Sequence[float] | None = None,
) -> float | None:
    """The p-value of ``metric`` between two runs' predictions on the same examples (``outputs`` and ``labels`` of
    each, as :func:`weighted_metric` takes them): McNemar for single-label accuracy, the paired bootstrap otherwise;
    ``None`` where the metric is not one it knows, or the runs were not scored on the same labels."""
    labels_a, labels_b = np.asarray(a["labels"]), np.asarray(b["labels"])
    if labels_a.shape != labels_b.shape or not np.array_equal(labels_a, labels_b):
        return None
    if problem_type == "single_label_classification" and metric == "accuracy":
        return mcnemar_p_value(
            np.asarray(a["outputs"]).argmax(-1) == labels_a, np.asarray(b["outputs"]).argmax(-1) == labels_b
        )
    scored_a = weighted_metric(problem_type, metric, a["outputs"], labels_a, thresholds_a)
    scored_b = weighted_metric(problem_type, metric, b["outputs"], labels_b, thresholds_b)
    if scored_a is None or scored_b is None:
        return None
    return paired_bootstrap_p_value(scored_a, scored_b, len(labels_a))
