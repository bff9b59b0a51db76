"""Strategy comparison end to end (tiny models, small generated data): the table, the plot, the best model kept,
finished runs skipped on a rerun, one feature cache for the frozen-backbone runs; and the evaluation report every
run writes."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import image_data_flags, text_data_flags, trainer_flags
from PIL import Image
from transformers import AutoModelForSequenceClassification

from warmstart import WarmstartError
from warmstart.comparison import (
    ROW_FILE,
    PlannedRun,
    best_row,
    comparison_table,
    majority_class_level,
    modality_of,
    parse_strategy,
    plan_comparison,
    plan_runs,
    probe_is_solved,
    run_comparison,
    validation_class_counts,
    write_comparison,
)
from warmstart.config import RunConfig, parse_config
from warmstart.policy import DEFAULT_LEARNING_RATES, DEFAULT_LR_SWEEP
from warmstart.tasks import run as run_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import compare_strategies  # noqa: E402
import image_classification  # noqa: E402
import text_classification  # noqa: E402


def _config(argv: list[str], modality: str) -> RunConfig:
    """A configuration a comparison could share, with these flags (parsing loads no model or data)."""
    model = "test_resnet" if modality == "image" else "bert-base-uncased"
    base = [
        "--model_name_or_path",
        model,
        "--output_dir",
        "unused",
        "--use_cpu",
        "true",
        "--freeze_strategy",
        "head_only",
    ]
    return parse_config([*base, *argv], f"{modality}_classification")


def text_comparison(tiny_bert, text_files, out, *extra):
    flags = [a for a in trainer_flags(out) if a not in ("--learning_rate", "1e-3")]
    return compare_strategies.main([*text_data_flags(tiny_bert, text_files), *flags, *extra])


def test_comparison_of_three_strategies_keeps_the_best_and_resumes(tiny_bert, text_files, tmp_path, capsys):
    out = tmp_path / "cmp"
    rows = text_comparison(
        tiny_bert, text_files, out, "--strategies", "head_only", "full", "bitfit", "--learning_rates", "1e-2"
    )
    # text features are cached: head_only's head is solved, once, whatever the rates
    assert [r["run"] for r in rows] == ["head_only-lbfgs", "full-lr0.01", "bitfit-lr0.01"]
    assert rows[0]["learning_rate"] is None
    assert rows[0]["trainable_params"] < rows[2]["trainable_params"] < rows[1]["trainable_params"]
    for row in rows:
        assert row["peak_rss_mb"] > 100 and row["train_seconds"] > 0 and 0 <= row["eval_accuracy"] <= 1

    with (out / "comparison.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == [r["run"] for r in rows]
    assert float(table[1]["eval_accuracy"]) == pytest.approx(rows[1]["eval_accuracy"])
    assert table[0]["learning_rate"] == "" and float(table[1]["learning_rate"]) == 0.01
    best = best_row(rows, "accuracy")
    summary = (out / "comparison.md").read_text()
    assert f"Best by eval_accuracy: **{best['run']}**" in summary
    assert "Majority class: 50.0 % of the validation split" in summary  # 8 of the 16 sentences each
    assert Image.open(out / "comparison.png").size == (800, 600)

    # the best run's model, in hub format at the top, with the comparison in its card
    kept = yaml.safe_load((out / "warmstart_config.yaml").read_text())
    assert kept["freeze"]["freeze_strategy"] == best["strategy"]
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 2
    card = (out / "README.md").read_text()
    assert "## Strategy comparison" in card and "(best)" in card and "comparison.png" in card

    capsys.readouterr()
    finished = {r["run"]: (out / "runs" / r["run"] / "model.safetensors").stat().st_mtime_ns for r in rows}
    again = text_comparison(
        tiny_bert, text_files, out, "--strategies", "head_only", "full", "bitfit", "--learning_rates", "1e-2"
    )
    printed = capsys.readouterr().out
    assert printed.count("finished earlier, skipped") == 3
    assert again == rows
    assert finished == {r: (out / "runs" / r / "model.safetensors").stat().st_mtime_ns for r in finished}


def test_without_rates_each_strategy_runs_its_own_sweep(tiny_bert, text_files, tmp_path):
    out = tmp_path / "cmp"
    rows = text_comparison(tiny_bert, text_files, out, "--strategies", "head_only", "bitfit")
    bitfit = [DEFAULT_LEARNING_RATES["text"]["bitfit"] * f for f in DEFAULT_LR_SWEEP]
    planned = [r for r in rows if not r.get("soup_of")]  # a soup of the bitfit runs may follow them
    assert [r["run"] for r in planned] == ["head_only-lbfgs", *(f"bitfit-lr{lr:.3g}" for lr in bitfit)]
    assert all(r["run"] == "soup-bitfit" for r in rows[len(planned) :])
    for row in planned[1:]:
        config = yaml.safe_load((out / "runs" / row["run"] / "warmstart_config.yaml").read_text())
        assert config["training"]["learning_rate"] == pytest.approx(row["learning_rate"])
    record = json.loads((out / "runs" / "head_only-lbfgs" / ROW_FILE).read_text())["config"]
    assert record["freeze"]["freeze_strategy"] == "head_only"


def test_a_crashed_comparison_resumes_with_the_runs_left(tiny_bert, text_files, tmp_path):
    out = tmp_path / "cmp"
    runs = plan_runs(["head_only", "bitfit", "full"], [1e-2])
    shared = [
        *text_data_flags(tiny_bert, text_files),
        *[a for a in trainer_flags(out) if a not in ("--output_dir", str(out), "--learning_rate", "1e-3")],
    ]
    shared = parse_config(shared, "text_classification")
    calls = []

    def crashing(config, feature_store=None):
        calls.append(config.policy.strategy)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return run_config(config, feature_store=feature_store)

    with pytest.raises(RuntimeError, match="killed"):
        run_comparison(runs, shared, out, progress=lambda line: None, runner=crashing)
    calls.clear()

    def recording(config, feature_store=None):
        calls.append(config.policy.strategy)
        return run_config(config, feature_store=feature_store)

    rows = run_comparison(runs, shared, out, progress=lambda line: None, runner=recording)
    assert calls == ["bitfit", "full"]  # head_only had finished before the crash
    assert [r["strategy"] for r in rows] == ["head_only", "bitfit", "full"]


def test_frozen_backbone_runs_share_one_feature_cache(image_dirs, tmp_path):
    out = tmp_path / "cmp"
    compare_strategies.main(
        [
            *image_data_flags(image_dirs),
            "--strategies",
            "head_only",
            "lp_ft",
            "--num_train_epochs",
            "2",
            "--probe_solver",
            "trainer",
            # one precision for both runs: auto times the model, and under load two runs may choose differently
            "--precision",
            "fp32",
            *[a for a in trainer_flags(out) if a not in ("--max_steps", "3")],
        ]
    )
    first = yaml.safe_load((out / "runs" / "head_only-lr0.001" / "warmstart_config.yaml").read_text())
    second = yaml.safe_load((out / "runs" / "lp_ft-lr0.001" / "warmstart_config.yaml").read_text())
    assert first["feature_cache"]["used"] and second["feature_cache"]["used"]
    assert "shared" not in first["feature_cache"]["splits"]["train"]
    assert second["feature_cache"]["splits"]["train"]["shared"] is True  # computed once, by the first run
    assert second["freeze"]["probe_epochs"] == 1.0  # half of the epochs, as none was given


def test_best_run_ties_go_to_the_lower_loss_then_fewer_parameters():
    rows = [
        {"run": "a", "eval_accuracy": 0.9, "eval_loss": 0.5, "trainable_params": 10},
        {"run": "b", "eval_accuracy": 0.9, "eval_loss": 0.3, "trainable_params": 1000},
        {"run": "c", "eval_accuracy": 0.9, "eval_loss": 0.3, "trainable_params": 100},
        {"run": "d", "eval_accuracy": 0.8, "eval_loss": 0.1, "trainable_params": 1},
    ]
    assert best_row(rows, "accuracy")["run"] == "c"
    assert best_row(rows, "eval_loss")["run"] == "d"  # a loss: lower is better
    with pytest.raises(WarmstartError, match="no run reports eval_roc_auc"):
        best_row(rows, "roc_auc")


def test_strategy_specs_and_plans():
    assert parse_strategy("top_k") == ("top_k", 2) and parse_strategy("top_k:3") == ("top_k", 3)
    runs = plan_runs(["head_only", "top_k:3"], [1e-3, 1e-4])
    assert [r.name for r in runs] == ["head_only-lr0.001", "head_only-lr0.0001", "top_k3-lr0.001", "top_k3-lr0.0001"]
    assert runs[2].values == {"freeze_strategy": "top_k", "learning_rate": 0.001, "unfreeze_top_k": 3}
    assert isinstance(runs[0], PlannedRun)


# ---------------------------------------------------------------- planning: rates, the solved head, lp_ft's probe


@pytest.mark.parametrize("modality", ["text", "image"])
def test_without_rates_each_strategy_sweeps_a_decade_around_its_own_default(modality):
    runs = plan_comparison(["full", "top_k:3", "lp_ft", "bitfit", "lora"], None, _config([], modality))
    swept: dict[str, list[float]] = {}
    for run in runs:
        swept.setdefault(run.strategy, []).append(run.learning_rate)
        label = run.strategy.replace("top_k:", "top_k")
        assert run.name == f"{label}-lr{run.learning_rate:g}"
        rate = run.values["learning_rate"]
        assert rate == run.learning_rate and repr(rate) == repr(float(f"{rate:.3g}"))  # no 1.5000000000000002e-05
    assert list(swept) == ["full", "top_k:3", "lp_ft", "bitfit", "lora"]
    for spec, rates in swept.items():
        default = DEFAULT_LEARNING_RATES[modality][parse_strategy(spec)[0]]
        assert rates == pytest.approx([default * factor for factor in DEFAULT_LR_SWEEP], rel=1e-3)
        assert rates[1] == default and max(rates) / min(rates) == pytest.approx(10.0)
    if modality == "text":  # the point of it: parameter-efficient methods get rates far above full fine-tuning's
        assert swept["bitfit"][1] >= 10 * swept["full"][1] and swept["lora"][1] >= 10 * swept["full"][1]


def test_given_rates_cross_every_strategy_and_one_given_rate_is_shared():
    crossed = plan_comparison(["full", "bitfit"], [1e-3, 1e-4], _config(["--learning_rate", "0.02"], "text"))
    assert [r.name for r in crossed] == ["full-lr0.001", "full-lr0.0001", "bitfit-lr0.001", "bitfit-lr0.0001"]
    shared = plan_comparison(["full", "bitfit"], None, _config(["--learning-rate=0.02"], "image"))
    assert [r.name for r in shared] == ["full-lr0.02", "bitfit-lr0.02"]
    assert shared[1].values == {"freeze_strategy": "bitfit", "learning_rate": 0.02}


@pytest.mark.parametrize("rates", [None, [1e-3, 1e-4]])
@pytest.mark.parametrize(("modality", "argv"), [("text", []), ("image", []), ("text", ["--learning_rate", "0.1"])])
def test_a_solved_head_only_runs_once_without_a_rate(rates, modality, argv):
    runs = plan_comparison(["head_only", "top_k:2"], rates, _config(argv, modality))
    assert [r.name for r in runs if r.strategy == "head_only"] == ["head_only-lbfgs"]
    assert runs[0].learning_rate is None and runs[0].values == {"freeze_strategy": "head_only"}
    assert len(runs) == 1 + (len(rates) if rates else len(DEFAULT_LR_SWEEP) if not argv else 1)


@pytest.mark.parametrize(
    ("modality", "argv"),
    [
        ("text", ["--probe_solver", "trainer"]),
        ("text", ["--cache_features", "false"]),
        ("image", ["--cache_features", "no"]),
        ("image", ["--hflip", "0.5"]),
        ("image", ["--random_crop_scale", "0.5", "1.0"]),
        ("image", ["--auto_augment", "rand-m9-mstd0.5"]),
        ("image", ["--random_erasing", "0.25"]),
        ("image", ["--mixup_alpha", "0.2"]),
        ("image", ["--cutmix_alpha", "1.0"]),
    ],
)
def test_head_only_sweeps_where_the_trainer_trains_its_probe(modality, argv):
    assert not probe_is_solved(_config(argv, modality))
    runs = plan_comparison(["head_only"], None, _config(argv, modality))
    default = DEFAULT_LEARNING_RATES[modality]["head_only"]
    assert [r.learning_rate for r in runs] == pytest.approx([default * f for f in DEFAULT_LR_SWEEP])
    assert plan_comparison(["head_only"], [1e-3, 1e-2], _config(argv, modality))[1].name == "head_only-lr0.01"


def test_head_only_trained_on_after_its_solved_head_sweeps():
    argv = ["--probe_train_rest", "true"]
    # the head is solved first, then the Trainer trains it on: that needs rates
    assert probe_is_solved(_config(argv, "text"))
    assert [r.name for r in plan_comparison(["head_only"], [1e-3], _config(argv, "text"))] == ["head_only-lr0.001"]


@pytest.mark.parametrize(
    ("modality", "argv"),
    [
        ("image", []),
        ("image", ["--hflip", "0"]),
        ("image", ["--auto_augment", "None", "--random_erasing", "0", "--mixup_alpha", "0"]),
        ("image", ["--cache_features"]),
        ("image", ["--probe_solver", "lbfgs"]),
        ("text", ["--hflip", "0.5", "--random_crop_scale", "0.5", "1"]),  # image augmentation means nothing to text
    ],
)
def test_the_probe_is_solved_where_the_features_are_cached(modality, argv):
    assert probe_is_solved(_config(argv, modality))


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--hflip", "0.5"],
        ["--hflip", "0"],
        ["--random_crop_scale", "0.5", "1.0"],
        ["--auto_augment", "none"],
        ["--auto_augment", "rand-m9-mstd0.5"],
        ["--mixup_alpha", "0.2"],
        ["--cache_features", "false"],
        ["--cache_features"],
        ["--probe_solver", "trainer"],
    ],
)
def test_the_planned_solver_is_the_one_the_recipe_picks(argv, tmp_path):
    """The comparison decides from the shared configuration what the run decides from its own: the same answer."""
    from warmstart.tasks.classification import feature_cache_settings, probe_policy, start_classification

    base = ["--model_name_or_path", "test_resnet", "--freeze_strategy", "head_only", "--use_cpu", "true"]
    config = parse_config([*base, "--output_dir", str(tmp_path / "run"), *argv], "image_classification").copy()
    run = start_classification(config)
    solver = probe_policy(config, run, feature_cache_settings(config, run, lambda batch: batch)).probe_solver
    assert probe_is_solved(_config(argv, "image")) == (solver == "lbfgs")


def test_lp_ft_gets_half_the_epochs_of_probing_only_from_the_trainer_probe():
    def probe_flags(argv, modality="text"):
        values = plan_comparison(["lp_ft"], [1e-3], _config(argv, modality))[0].values
        return ["--probe_epochs", str(values["probe_epochs"])] if "probe_epochs" in values else []

    assert probe_flags(["--num_train_epochs", "4"]) == []  # solved: the whole run fine-tunes
    assert probe_flags(["--max_steps", "3"]) == []
    assert probe_flags(["--num_train_epochs", "4", "--probe_solver", "trainer"]) == ["--probe_epochs", "2.0"]
    assert probe_flags(["--probe_solver", "trainer"]) == ["--probe_epochs", "1.5"]  # the Trainer's 3 epochs
    assert probe_flags(["--hflip", "0.5", "--num_train_epochs", "2"], "image") == ["--probe_epochs", "1.0"]
    assert probe_flags(["--probe_solver", "trainer", "--probe_epochs", "1"]) == []  # the user's, passed on as given
    with pytest.raises(WarmstartError, match="lp_ft with --max_steps needs --probe_epochs"):
        plan_comparison(["lp_ft"], None, _config(["--max_steps", "3", "--probe_solver", "trainer"], "text"))


def test_a_sweep_needs_the_modality():
    with pytest.raises(WarmstartError, match="give learning_rates, or the modality"):
        plan_runs(["full"])
    assert [r.name for r in plan_runs(["full"], [1e-3])] == ["full-lr0.001"]


# ---------------------------------------------------------------- rows without a rate, the majority class


def _row(run, strategy, lr, accuracy, params):
    return {
        "run": run,
        "strategy": strategy,
        "learning_rate": lr,
        "trainable_params": params,
        "total_params": 10**6,
        "train_seconds": 1.0 + params / 10**5,
        "feature_cache_seconds": 0.0,
        "peak_rss_mb": 500.0,
        "eval_accuracy": accuracy,
        "eval_loss": 1.0 - accuracy,
    }


def test_rows_without_a_learning_rate_go_through_the_csv_table_plot_and_best(tmp_path):
    rows = [
        _row("head_only-lbfgs", "head_only", None, 0.85, 1_000),
        _row("full-lr5e-05", "full", 5e-5, 0.80, 1_000_000),
        _row("full-lr0.00015", "full", 1.5e-4, 0.80, 1_000_000),
    ]
    assert best_row(rows, "accuracy")["run"] == "head_only-lbfgs"
    plain = tmp_path / "plain"
    plain.mkdir()
    write_comparison(rows, plain, "accuracy")
    assert "Majority class" not in (plain / "comparison.md").read_text()  # no run left a report to count from

    # the second run left its per-class report: 120 + 80 validation examples
    report = {"neg": {"support": 120.0}, "pos": {"support": 80.0}, "accuracy": 0.8, "macro avg": {"support": 200.0}}
    (tmp_path / "runs" / "full-lr5e-05").mkdir(parents=True)
    (tmp_path / "runs" / "full-lr5e-05" / "classification_report.json").write_text(json.dumps(report))
    best, kept, verdict = write_comparison(rows, tmp_path, "accuracy")
    assert best["run"] == "head_only-lbfgs" and best["learning_rate"] is None
    assert kept is best and verdict == ""  # no run saved its predictions: no test, no tie
    with (tmp_path / "comparison.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["learning_rate"] for r in table] == ["", "5e-05", "0.00015"]
    summary = (tmp_path / "comparison.md").read_text()
    assert (
        "Majority class: 60.0 % of the validation split (`neg`); always predicting it scores eval_accuracy 0.6000"
        in summary
    )
    assert "| **head_only-lbfgs** (best) |" in summary and summary.endswith(comparison_table(rows, best) + "\n")
    assert Image.open(tmp_path / "comparison.png").size == (800, 600)
    # the majority line is drawn: the same runs without it give another picture
    assert (tmp_path / "comparison.png").read_bytes() != (plain / "comparison.png").read_bytes()


def test_validation_counts_come_from_the_first_run_that_reported_them(tmp_path):
    runs = [tmp_path / name for name in ("a", "b", "c")]
    assert validation_class_counts(runs) is None
    for run_dir, support in zip(runs[1:], (7, 9)):
        run_dir.mkdir()
        report = {"x": {"support": support}, "y": {"support": 3}, "accuracy": 0.5, "weighted avg": {"support": 10}}
        (run_dir / "classification_report.json").write_text(json.dumps(report))
    assert validation_class_counts(runs) == {"x": 7, "y": 3}


def test_majority_class_levels_are_what_a_constant_predictor_scores():
    from sklearn.metrics import f1_score

    counts = {"neg": 60, "pos": 30, "other": 10}
    labels = np.repeat([0, 1, 2], [60, 30, 10])
    constant = np.zeros_like(labels)
    assert majority_class_level(counts, "eval_accuracy") == pytest.approx(0.6)
    assert majority_class_level(counts, "f1_macro") == pytest.approx(f1_score(labels, constant, average="macro"))
    assert majority_class_level(counts, "roc_auc") == pytest.approx(0.5)
    assert majority_class_level({"a": 5, "b": 0}, "roc_auc") is None  # one class: the runs report no ROC-AUC either
    assert majority_class_level(counts, "loss") is None and majority_class_level({"a": 0}, "accuracy") is None
    # a class absent from the split does not count in the macro average, as in the runs' own metric
    assert majority_class_level({"a": 5, "b": 3, "c": 0}, "f1_macro") == pytest.approx(2 * 0.625 / 1.625 / 2)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strategies", "head_only", "warp_speed"], "unknown strategy 'warp_speed'"),
        (["--strategies", "full:2"], "only top_k takes a number"),
        (["--strategies", "top_k:0"], "K in top_k:K must be a positive integer"),
        (["--metric_for_best_model", "precision"], "--metric_for_best_model precision: no run reports it"),
        (["--freeze_strategy", "full"], "list the strategies with --strategies"),
        (["--strategies", "gradual"], "gradual needs --unfreeze_every"),
        (["--learning_rates", "0"], "--learning_rates must be positive"),
    ],
)
def test_comparison_bad_inputs(extra, message, tiny_bert, text_files, tmp_path):
    out = tmp_path / "cmp"
    with pytest.raises(WarmstartError, match=message):
        text_comparison(tiny_bert, text_files, out, *extra)
    assert not out.exists()


def test_comparison_will_not_overwrite_another_model(tiny_bert, text_files, tmp_path):
    out = tmp_path / "model"
    text_classification.main(
        ["--model_name_or_path", str(tiny_bert), "--train_file", str(text_files["train"])] + trainer_flags(out)
    )
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(WarmstartError, match="already holds a model that is not a comparison's"):
        text_comparison(tiny_bert, text_files, out, "--strategies", "head_only")
    assert (out / "model.safetensors").read_bytes() == before


# ---------------------------------------------------------------- the report every run writes


def test_image_run_writes_the_evaluation_report(image_dirs, tmp_path):
    out = tmp_path / "img"
    image_classification.main(
        [
            *image_data_flags(image_dirs),
            *trainer_flags(out, "--eval_strategy", "steps", "--eval_steps", "1", "--logging_steps", "1"),
        ]
    )
    assert Image.open(out / "confusion_matrix.png").size == (1200, 1200)
    assert Image.open(out / "training_curves.png").size == (800, 600)
    assert not (out / "roc_curve.png").exists()  # three classes: no ROC curve
    report = json.loads((out / "classification_report.json").read_text())
    assert set(report) >= {"blue", "green", "red", "macro avg", "weighted avg"}
    results = json.loads((out / "all_results.json").read_text())
    assert report["accuracy"] == pytest.approx(results["eval_accuracy"])
    card = (out / "README.md").read_text()
    assert "### Per class" in card and "](confusion_matrix.png)" in card and "](training_curves.png)" in card


def test_binary_text_run_adds_a_roc_curve(tiny_bert, text_files, tmp_path):
    out = tmp_path / "txt"
    results = text_classification.main([*text_data_flags(tiny_bert, text_files), *trainer_flags(out)])
    assert Image.open(out / "roc_curve.png").size == (600, 600)
    assert "](roc_curve.png)" in (out / "README.md").read_text()
    assert json.loads((out / "classification_report.json").read_text())["accuracy"] == pytest.approx(
        results["eval_accuracy"]
    )


@pytest.mark.parametrize("tracker", ["tensorboard", "trackio"])
def test_trackers_log_and_the_run_records_its_environment(tracker, tiny_bert, text_files, tmp_path):
    import os
    import subprocess

    import timm
    import torch
    import transformers

    pytest.importorskip(tracker)
    out = tmp_path / "run"
    command = [
        sys.executable,
        str(Path(__file__).resolve().parents[1] / "recipes" / "text_classification.py"),
        "--model_name_or_path",
        str(tiny_bert),
        "--train_file",
        str(text_files["train"]),
        *trainer_flags(out, "--logging_steps", "1"),
        "--report_to",
        tracker,
    ]
    # trackio reads TRACKIO_DIR when it is imported: a process of its own
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRACKIO_DIR": str(tmp_path / "trackio")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    if tracker == "tensorboard":
        assert list((out / "runs").rglob("events.out.tfevents.*"))
    else:
        assert list((tmp_path / "trackio").glob("*.db"))
    environment = yaml.safe_load((out / "warmstart_config.yaml").read_text())["environment"]
    assert torch.__version__.startswith(environment["torch"])
    assert environment["transformers"] == transformers.__version__ and environment["timm"] == timm.__version__
    assert {"datasets", "accelerate", "warmstart", "python"} <= set(environment)


def test_a_rerun_with_other_arguments_trains_again(tiny_bert, text_files, tmp_path, capsys):
    out = tmp_path / "cmp"
    first = text_comparison(tiny_bert, text_files, out, "--strategies", "head_only", "--learning_rates", "1e-2")
    capsys.readouterr()
    again = text_comparison(
        tiny_bert, text_files, out, "--strategies", "head_only", "--learning_rates", "1e-2", "--max_steps", "5"
    )
    assert "finished earlier with other arguments, trained again" in capsys.readouterr().out
    kept = yaml.safe_load((out / "runs" / "head_only-lbfgs" / "warmstart_config.yaml").read_text())
    assert kept["training"]["max_steps"] == 5 and first[0]["run"] == again[0]["run"]


def test_dashed_flags_are_read_as_the_recipes_read_them(tiny_bert, text_files, tmp_path):
    out = tmp_path / "cmp"
    rows = text_comparison(tiny_bert, text_files, out, "--strategies", "bitfit", "--learning-rate", "0.02")
    assert [r["run"] for r in rows] == ["bitfit-lr0.02"]
    config = yaml.safe_load((out / "runs" / "bitfit-lr0.02" / "warmstart_config.yaml").read_text())
    assert config["training"]["learning_rate"] == 0.02
    with pytest.raises(WarmstartError, match="unrecognized arguments: --learning_r"):
        text_classification.main([*text_data_flags(tiny_bert, text_files), "--learning_r", "0.1", "--output_dir", "x"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--push_to_hub", "true"], "--push_to_hub does not apply to a comparison"),
        (["--hparam_search", "optuna"], "--hparam_search does not apply to a comparison"),
        (["--strategies", "lp_ft", "--probe_solver", "trainer"], "lp_ft with --max_steps needs --probe_epochs"),
        (["--strategies", "head_only", "--not_a_flag", "1"], "unrecognized arguments: --not_a_flag 1"),
        (["--learning_rates", "abc"], "invalid float value: 'abc'"),
    ],
)
def test_comparison_refuses_what_does_not_apply(extra, message, tiny_bert, text_files, tmp_path):
    out = tmp_path / "cmp"
    with pytest.raises(WarmstartError, match=message):
        text_comparison(tiny_bert, text_files, out, *extra)
    assert not (out / "runs").exists()


@pytest.mark.parametrize("batchnorm_stats", ["held", "moving"])
def test_lp_ft_reuses_features_only_for_the_same_rows(batchnorm_stats, image_dirs, tmp_path):
    """A BatchNorm model whose last batch would hold one sample leaves a row out where its statistics move (lp_ft
    with --freeze_batchnorm_stats false; not head_only): the features of head_only's rows do not fit it, so it
    computes its own. lp_ft holds them by default: then nothing is left out and it shares head_only's features."""
    from conftest import write_image_folder

    train = write_image_folder(tmp_path / "nine", 3, 0)  # 9 images: batches of 8 leave one
    out = tmp_path / "cmp"
    moving = ["--freeze_batchnorm_stats", "false"] if batchnorm_stats == "moving" else []
    rows = compare_strategies.main(
        [
            *image_data_flags({"train": train, "validation": image_dirs["validation"]}),
            "--strategies",
            "head_only",
            "lp_ft",
            "--num_train_epochs",
            "2",
            "--probe_solver",
            "trainer",
            # one precision for both runs: auto times the model, and under load two runs may choose differently
            # (the features of another precision are not shared)
            "--precision",
            "fp32",
            *moving,
            *[a for a in trainer_flags(out) if a not in ("--max_steps", "3")],
        ]
    )
    assert [r["strategy"] for r in rows] == ["head_only", "lp_ft"]
    second = yaml.safe_load((out / "runs" / "lp_ft-lr0.001" / "warmstart_config.yaml").read_text())
    if moving:
        assert second["feature_cache"]["splits"]["train"]["examples"] == 8
        assert "shared" not in second["feature_cache"]["splits"]["train"]
    else:
        assert second["feature_cache"]["splits"]["train"]["examples"] == 9
        assert "shared" in second["feature_cache"]["splits"]["train"]


def test_an_interrupted_run_resumes_from_its_checkpoint_when_asked(tiny_bert, text_files, tmp_path):
    """With resume, the run a crash interrupted goes on from its last checkpoint (the finished one is skipped) and
    ends with the weights of a comparison never interrupted; without it, the run trains again from the start."""
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 5:
                raise RuntimeError("killed")

    runs = plan_runs(["head_only", "full"], [1e-2])
    shared = [
        *text_data_flags(tiny_bert, text_files),
        *trainer_flags(tmp_path / "unused", "--max_steps", "8", "--save_strategy", "steps", "--save_steps", "2"),
        *("--precision", "fp32", "--group_by_length", "false", "--per_device_train_batch_size", "4"),
    ]
    shared = [a for a in shared if a not in ("--output_dir", str(tmp_path / "unused"), "--learning_rate", "1e-3")]
    shared = parse_config(shared, "text_classification")
    straight = tmp_path / "straight"
    run_comparison(runs, shared, straight, progress=lambda line: None)

    out, calls, lines = tmp_path / "cmp", [], []

    def crashing(config, feature_store=None):
        crash = [Crash()] if config.policy.strategy == "full" else []
        return run_config(config, feature_store=feature_store, callbacks=crash)

    with pytest.raises(RuntimeError, match="killed"):
        run_comparison(runs, shared, out, progress=lambda line: None, runner=crashing)
    assert (out / "runs" / "full-lr0.01" / "checkpoint-4" / "trainer_state.json").is_file()

    def recording(config, feature_store=None):
        calls.append(config)
        return run_config(config, feature_store=feature_store)

    rows = run_comparison(runs, shared, out, progress=lines.append, resume=True, runner=recording)
    assert [config.policy.strategy for config in calls] == ["full"]
    assert calls[0].training.resume_from_checkpoint == "auto"
    assert "full-lr0.01: interrupted earlier, resuming from its last checkpoint ..." in lines[1]
    state = json.loads((out / "runs" / "full-lr0.01" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e][0] > 4  # nothing before the checkpoint again
    expected = load_file(straight / "runs" / "full-lr0.01" / "model.safetensors")
    resumed = load_file(out / "runs" / "full-lr0.01" / "model.safetensors")
    for name, value in expected.items():
        assert torch.equal(resumed[name], value), name
    assert [r["strategy"] for r in rows] == ["head_only", "full"]

    # the same interruption without resume: trained again from the start, in its own folder
    (out / "runs" / "full-lr0.01" / ROW_FILE).unlink()
    calls.clear()
    run_comparison(runs, shared, out, progress=lines.append, runner=recording)
    assert calls[0].model.overwrite_output_dir and calls[0].training.resume_from_checkpoint is None
    assert "full-lr0.01: interrupted earlier, trained again from the start" in lines[-3]


def test_the_modality_of_a_hub_model_comes_from_its_config_downloaded_when_not_cached(tmp_path, monkeypatch):
    """Online, a hub id that was never downloaded is asked for its config.json (as the loaders would), instead of
    being taken for a text model; offline it is not asked."""
    import huggingface_hub

    configs = {"someone/vit": {"architecture": "vit_tiny_patch16_224"}, "someone/bert": {"model_type": "bert"}}
    asked = []

    def download(repo, filename):
        asked.append(repo)
        path = tmp_path / repo.replace("/", "--") / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(configs[repo]))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, filename: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr("warmstart.comparison.driver.hub_offline", lambda: False)
    assert modality_of("someone/vit") == "image"
    assert modality_of("hf-hub:someone/bert") == "text"
    assert modality_of("timm/resnet18.a1_in1k") == "image"  # the timm organisation: no download needed
    assert asked == ["someone/vit", "someone/bert"]
    monkeypatch.setattr("warmstart.comparison.driver.hub_offline", lambda: True)
    assert modality_of("someone/vit") == "text"  # offline and not cached: the text loader says it cannot load it
    assert asked == ["someone/vit", "someone/bert"]
