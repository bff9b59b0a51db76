"""Uncertainty (warmstart.uncertainty): intervals that cover the truth at their nominal rate, weighted metrics that
are warmstart's metrics, McNemar against statsmodels, the paired bootstrap, and a comparison that says when its best
is not significantly better than a cheaper run (and keeps that one with --prefer cheaper_if_tied)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_text_argv
from statsmodels.stats.contingency_tables import mcnemar

from warmstart.comparison import comparison_table, write_comparison
from warmstart.comparison.planning import ComparisonArguments
from warmstart.config import parse_config
from warmstart.errors import WarmstartError
from warmstart.metrics import classification_metrics, multi_label_metrics, regression_metrics
from warmstart.uncertainty import (
    exact_binomial_interval,
    mcnemar_p_value,
    metric_intervals,
    paired_bootstrap_p_value,
    paired_p_value,
    resample_weights,
    weighted_metric,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import text_classification  # noqa: E402

SINGLE, MULTI, REGRESSION = "single_label_classification", "multi_label_classification", "regression"


def _simulated_run(
    rng: np.random.Generator, n: int, accuracy: float, classes: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose argmax is right with probability ``accuracy``, and the labels."""
    labels = rng.integers(0, classes, n)
    right = rng.random(n) < accuracy
    predicted = np.where(right, labels, (labels + rng.integers(1, classes, n)) % classes)
    logits = rng.normal(0, 0.1, (n, classes))
    logits[np.arange(n), predicted] += 3.0
    return logits, labels


def test_intervals_cover_the_true_accuracy_at_the_nominal_rate():
    rng = np.random.default_rng(1)
    truth, trials, n = 0.8, 300, 250
    exact = bootstrap = 0
    scored_widths = []
    for trial in range(trials):
        logits, labels = _simulated_run(rng, n, truth)
        low, high = exact_binomial_interval(int((logits.argmax(1) == labels).sum()), n, 0.95)
        exact += low <= truth <= high
        accuracy = weighted_metric(SINGLE, "accuracy", logits, labels)
        samples = accuracy(resample_weights(n, 1000, seed=trial))
        b_low, b_high = np.quantile(samples, [0.025, 0.975])
        bootstrap += b_low <= truth <= b_high
        scored_widths.append(high - low)
    # Clopper-Pearson is conservative (>= 95 %); the percentile bootstrap is near 95 %; 300 trials: sd ~1.3 points
    assert 0.95 <= exact / trials <= 0.995
    assert 0.91 <= bootstrap / trials <= 0.985
    # the interval's width is what the binomial says: ~2 x 1.96 x sqrt(0.8 x 0.2 / 250) = 0.0992
    assert abs(np.median(scored_widths) - 0.0992) < 0.01


def test_weighted_metrics_are_warmstarts_metrics_on_the_resampled_examples():
    rng = np.random.default_rng(2)
    logits, labels = _simulated_run(rng, 120, 0.7, classes=4)
    multi_logits, multi_labels = rng.normal(0, 2, (120, 5)), (rng.random((120, 5)) < 0.3).astype(float)
    values, targets = rng.normal(3, 1, (120, 2)), rng.normal(3, 1, (120, 2))
    weights = resample_weights(120, 6, seed=5)
    cases = [
        (SINGLE, "accuracy", logits, labels, lambda o, y: classification_metrics(o, y)["accuracy"]),
        (SINGLE, "f1_macro", logits, labels, lambda o, y: classification_metrics(o, y)["f1_macro"]),
        (MULTI, "f1_micro", multi_logits, multi_labels, lambda o, y: multi_label_metrics(o, y)["f1_micro"]),
        (MULTI, "f1_macro", multi_logits, multi_labels, lambda o, y: multi_label_metrics(o, y)["f1_macro"]),
        (REGRESSION, "rmse", values, targets, lambda o, y: regression_metrics(o, y)["rmse"]),
        (REGRESSION, "mae", values, targets, lambda o, y: regression_metrics(o, y)["mae"]),
    ]
    for problem, metric, outputs, truth, reference in cases:
        scored = weighted_metric(problem, metric, outputs, truth)
        ones = np.ones((1, 120), dtype=np.float32)
        assert scored(ones)[0] == pytest.approx(reference(outputs, truth), abs=1e-6), (problem, metric)
        for row, w in zip(scored(weights), weights):  # a resample is the examples repeated as often as drawn
            repeated = np.repeat(np.arange(120), w.astype(int))
            assert row == pytest.approx(reference(outputs[repeated], truth[repeated]), abs=1e-5), (problem, metric)
    assert weighted_metric(SINGLE, "roc_auc", logits, labels) is None


def test_metric_intervals_bracket_the_metric_and_are_seeded():
    rng = np.random.default_rng(3)
    logits, labels = _simulated_run(rng, 400, 0.75)
    intervals = metric_intervals(SINGLE, logits, labels)
    assert set(intervals) == {"accuracy_ci_low", "accuracy_ci_high", "f1_macro_ci_low", "f1_macro_ci_high"}
    scores = classification_metrics(logits, labels)
    for metric in ("accuracy", "f1_macro"):
        assert intervals[f"{metric}_ci_low"] < scores[metric] < intervals[f"{metric}_ci_high"]
    assert metric_intervals(SINGLE, logits, labels) == intervals
    narrower = metric_intervals(SINGLE, logits, labels, level=0.5)
    assert (
        narrower["f1_macro_ci_high"] - narrower["f1_macro_ci_low"]
        < intervals["f1_macro_ci_high"] - intervals["f1_macro_ci_low"]
    )
    assert metric_intervals(SINGLE, logits[:1], labels[:1]) == {}


@pytest.mark.parametrize("seed", range(6))
def test_mcnemar_is_statsmodels_exact_test(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    a, b = rng.random(n) < rng.uniform(0.5, 0.9), rng.random(n) < rng.uniform(0.5, 0.9)
    table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
    assert mcnemar_p_value(a, b) == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-9)
    assert mcnemar_p_value(a, a) == 1.0


def test_the_paired_bootstrap_separates_a_real_difference_from_none():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 600)
    good = np.eye(2)[np.where(rng.random(600) < 0.9, labels, 1 - labels)]
    worse = np.eye(2)[np.where(rng.random(600) < 0.7, labels, 1 - labels)]
    same_but_noisy = good.copy()
    flip = rng.choice(600, 6, replace=False)
    same_but_noisy[flip] = 1 - same_but_noisy[flip]
    f1 = {name: weighted_metric(SINGLE, "f1_macro", o, labels) for name, o in (("good", good), ("worse", worse))}
    assert paired_bootstrap_p_value(f1["good"], f1["worse"], 600) < 0.01
    near = weighted_metric(SINGLE, "f1_macro", same_but_noisy, labels)
    assert paired_bootstrap_p_value(f1["good"], near, 600) > 0.05
    # runs scored on other labels are not compared
    assert (
        paired_p_value(
            SINGLE, "f1_macro", {"outputs": good, "labels": labels}, {"outputs": good, "labels": labels[::-1]}
        )
        is None
    )


def _run_folder(root: Path, run: str, logits: np.ndarray, labels: np.ndarray) -> None:
    folder = root / "runs" / run
    folder.mkdir(parents=True)
    np.savez_compressed(
        folder / "eval_predictions.npz", outputs=logits, labels=labels, problem_type=np.asarray(SINGLE)
    )


def _comparison_rows(tmp_path: Path) -> list[dict]:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 300)
    runs = {  # full: best; head_only: 1 point behind, 1,000x fewer parameters; bitfit: 20 points behind
        "full": (0.86, 1_000_000, 60.0),
        "head_only": (0.85, 1_000, 5.0),
        "bitfit": (0.66, 10_000, 20.0),
    }
    rows = []
    base = np.where(rng.random(300) < 0.86, labels, 1 - labels)
    for run, (accuracy, params, seconds) in runs.items():
        predicted = base.copy()
        wrong = int(round((0.86 - accuracy) * 300))
        right = np.flatnonzero(predicted == labels)[:wrong]
        predicted[right] = 1 - predicted[right]
        logits = np.eye(2)[predicted]
        _run_folder(tmp_path, run, logits, labels)
        rows.append(
            {
                "run": run,
                "strategy": run,
                "trainable_params": params,
                "train_seconds": seconds,
                "eval_accuracy": float((predicted == labels).mean()),
                "eval_accuracy_ci_low": 0.0,
                "eval_accuracy_ci_high": 1.0,
                "eval_loss": 0.5,
            }
        )
    return rows


def test_a_comparison_tests_its_best_and_names_the_cheaper_ties(tmp_path):
    rows = _comparison_rows(tmp_path)
    best, kept, verdict = write_comparison(rows, tmp_path, "accuracy")
    assert best["run"] == kept["run"] == "full"
    by_run = {row["run"]: row for row in rows}
    assert by_run["full"]["p_value_vs_best"] is None
    assert by_run["head_only"]["p_value_vs_best"] > 0.05 and by_run["bitfit"]["p_value_vs_best"] < 1e-6
    assert verdict.startswith("full is not significantly better (at 5 %) than the cheaper head_only")
    assert "1e+03x fewer trainable parameters" in verdict and "bitfit" not in verdict
    summary = (tmp_path / "comparison.md").read_text()
    assert verdict in summary and "McNemar's exact test" in summary
    assert "| p vs best |" in comparison_table(rows, best)
    assert "| **full** (best) | 1,000,000 | 60 |" in summary
    assert f"| {by_run['full']['eval_accuracy']:.4g} [0, 1] |" in summary  # the value with its interval
    with (tmp_path / "comparison.csv").open() as f:
        header = f.readline().strip().split(",")
    assert {"eval_accuracy_ci_low", "eval_accuracy_ci_high", "p_value_vs_best"} <= set(header)


def test_prefer_cheaper_if_tied_keeps_the_cheaper_run(tmp_path):
    rows = _comparison_rows(tmp_path)
    best, kept, verdict = write_comparison(rows, tmp_path, "accuracy", prefer="cheaper_if_tied")
    assert best["run"] == "full" and kept["run"] == "head_only"
    assert verdict.endswith("Kept: head_only (--prefer cheaper_if_tied).")
    assert "| **head_only** (best) |" in (tmp_path / "comparison.md").read_text()
    # at a level of 0.5 the head is significantly worse: nothing is tied, the best is kept
    (tmp_path / "other").mkdir()
    rows = _comparison_rows(tmp_path / "other")
    assert write_comparison(rows, tmp_path / "other", "accuracy", level=0.5, prefer="cheaper_if_tied")[1]["run"] in (
        "full",
        "head_only",
    )


def test_bad_levels_and_preferences_are_one_line(tmp_path):
    with pytest.raises(WarmstartError, match=r"--confidence_level is a probability in \(0, 1\), e.g. 0.95, got 1.5"):
        parse_config(
            [
                "--model_name_or_path",
                "m",
                "--train_file",
                "t.csv",
                "--output_dir",
                str(tmp_path),
                "--confidence_level",
                "1.5",
            ],
            "text_classification",
        )
    with pytest.raises(WarmstartError, match="--prefer must be one of best, cheaper_if_tied, got 'cheapest'"):
        ComparisonArguments(prefer="cheapest")


def test_a_run_records_its_intervals_and_its_validation_predictions(tmp_path):
    out = tmp_path / "out"
    text_classification.main(tiny_text_argv(tmp_path, 24, 20, 2))
    results = json.loads((out / "all_results.json").read_text())
    correct = round(results["eval_accuracy"] * 20)
    assert (results["eval_accuracy_ci_low"], results["eval_accuracy_ci_high"]) == pytest.approx(
        exact_binomial_interval(correct, 20, 0.95)
    )
    assert results["eval_f1_macro_ci_low"] <= results["eval_f1_macro"] <= results["eval_f1_macro_ci_high"]
    with np.load(out / "eval_predictions.npz") as saved:
        assert saved["outputs"].shape == (20, 2) and saved["labels"].shape == (20,)
        assert str(saved["problem_type"]) == SINGLE
        assert (saved["outputs"].argmax(1) == saved["labels"]).sum() == correct
