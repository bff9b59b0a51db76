"""Weight averaging: the exponential moving average (``--ema_decay``) is the weighted sum of the weights it saw,
survives a checkpoint, and is saved only when it is better on validation; ``--average_with`` / ``--evaluate_only``
save the uniform average of runs; a comparison's greedy soup averages the runs it names, added best first while the
average is at least as good."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_text_argv, trainer_flags
from safetensors.torch import load_file
from torch import nn
from transformers import TrainerCallback

from warmstart import run
from warmstart.averaging import (
    EMA_FILE,
    WeightAverage,
    architecture_difference,
    average_state_dicts,
    batchnorm_layers_that_differ,
    choose_average,
    ema_decay_at,
    recompute_batchnorm,
)
from warmstart.comparison.planning import PlannedRun
from warmstart.comparison.soup import make_soups, soup_groups
from warmstart.config import parse_config
from warmstart.errors import WarmstartError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import compare_strategies  # noqa: E402
import text_classification  # noqa: E402


def test_the_decay_warms_up_and_is_capped():
    assert ema_decay_at(1, 0.99) == 0.0  # the first update copies the weights
    warmed = [ema_decay_at(t, 0.99) for t in range(2, 2000)]
    assert all(a <= b for a, b in zip(warmed, warmed[1:], strict=False))
    assert warmed[0] == pytest.approx(1 - 2 ** (-2 / 3))
    assert max(warmed) == 0.99
    assert ema_decay_at(2, 0.99, warmup=False) == 0.99


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    model[0].requires_grad_(False)  # frozen: its average is itself, not kept
    return model


@pytest.mark.parametrize("warmup", [True, False])
def test_the_average_is_the_weighted_sum_of_the_weights_it_saw(warmup):
    """After T updates the average is sum_t w_t (1 - d_t) prod_{s > t} d_s (d_1 = 0): computed here from the recorded
    weights, not by the update's own recursion."""
    model = _model()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    average = WeightAverage(model, 0.8, warmup=warmup)
    average.tracked(optimizer)
    assert not any(name.startswith("0.") for name in average.names)
    assert "1.running_mean" in average.names and "1.num_batches_tracked" not in average.names
    seen = []
    for _ in range(7):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        average.update()
        seen.append({name: t.detach().clone() for name, t in model.state_dict().items()})
    decays = [ema_decay_at(t, 0.8, warmup) for t in range(1, len(seen) + 1)]
    for name, shadow in zip(average.names, average.shadow, strict=True):
        expected = sum(w[name] * (1 - decays[t]) * math.prod(decays[t + 1 :]) for t, w in enumerate(seen))
        torch.testing.assert_close(shadow, expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(shadow, seen[-1][name])  # an average, not the last weights


def test_swapping_the_average_in_and_out():
    model = _model()
    average = WeightAverage(model, 0.5)
    average.tracked()
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for shadow in average.shadow:
            shadow.add_(1.0)
    average.swap_in()
    assert torch.equal(model[3].weight, raw["3.weight"] + 1)
    assert torch.equal(model[0].weight, raw["0.weight"])  # frozen: untouched
    average.restore()
    for name, value in model.state_dict().items():
        assert torch.equal(value, raw[name]), name


class _Output:
    def __init__(self, accuracy: float):
        self.metrics = {"eval_accuracy": accuracy}


class _ScoringTrainer:
    """predict scores the model's current last-layer bias: the average scores what it holds."""

    def __init__(self, model: nn.Module):
        self.model = model

    def predict(self, dataset, metric_key_prefix="eval"):
        return _Output(float(self.model[3].bias.detach().sum()))


@pytest.mark.parametrize("shift, kept", [(1.0, "ema"), (-1.0, "raw"), (0.0, "raw")])
def test_the_average_is_kept_only_when_better_on_validation(shift, kept):
    model = _model()
    average = WeightAverage(model, 0.5)
    average.tracked()
    raw_bias = model[3].bias.detach().clone()
    with torch.no_grad():
        average.shadow[average.names.index("3.bias")].add_(shift)
    output, record = choose_average(_ScoringTrainer(model), average, None, lambda o: o.metrics["eval_accuracy"], True)
    assert record["kept"] == kept
    expected = raw_bias + shift if kept == "ema" else raw_bias
    torch.testing.assert_close(model[3].bias.detach(), expected)
    assert output.metrics["eval_accuracy"] == pytest.approx(float(expected.sum()), abs=1e-5)


def test_averaged_state_dicts_are_the_mean_and_refuse_another_architecture():
    a, b = (
        _model().state_dict(),
        {k: v + 2 if v.is_floating_point() else v + 5 for k, v in _model().state_dict().items()},
    )
    mean = average_state_dicts([a, b])
    torch.testing.assert_close(mean["3.weight"], a["3.weight"] + 1)
    assert torch.equal(mean["1.num_batches_tracked"], a["1.num_batches_tracked"])  # not averaged: the first's
    other = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 5)).state_dict()
    assert "differ in shape" in architecture_difference(a, other)
    with pytest.raises(WarmstartError, match="another architecture"):
        average_state_dicts([a, other])


class _Recorder(TrainerCallback):
    """The model's weights after every optimizer step (added before the run's own average updates: same weights)."""

    def __init__(self):
        self.seen = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.seen.append({n: p.detach().clone() for n, p in model.named_parameters()})


def test_a_run_averages_checkpoints_and_saves_the_weights_its_record_names(tmp_path):
    argv = tiny_text_argv(
        tmp_path, 48, 24, 8, "--ema_decay", "0.7", "--save_strategy", "steps", "--save_steps", "4",
        "--learning_rate", "3e-2", "--precision", "fp32",
    )  # fmt: skip
    recorder = _Recorder()
    results = run(parse_config(argv, "text_classification"), callbacks=[recorder])
    out = tmp_path / "out"
    assert len(recorder.seen) == 8
    for step in (4, 8):  # each checkpoint carries the average of its step
        ema = load_file(out / f"checkpoint-{step}" / EMA_FILE)
        decays = [ema_decay_at(t, 0.7) for t in range(1, step + 1)]
        for name in recorder.seen[-1]:
            expected = sum(
                w[name] * (1 - decays[t]) * math.prod(decays[t + 1 :]) for t, w in enumerate(recorder.seen[:step])
            )
            torch.testing.assert_close(ema[name], expected, rtol=1e-5, atol=1e-6)
    record = yaml.safe_load((out / "warmstart_config.yaml").read_text())["weight_average"]
    assert record["updates"] == 8 and record["decay"] == 0.7 and record["metric"] == "eval_accuracy"
    assert results["ema_kept"] == (record["kept"] == "ema")
    assert results["raw_eval_accuracy"] == record["score_raw"] and results["ema_eval_accuracy"] == record["score_ema"]
    assert results["eval_accuracy"] == (record["score_ema"] if results["ema_kept"] else record["score_raw"])
    saved = load_file(out / "model.safetensors")
    claimed = load_file(out / "checkpoint-8" / (EMA_FILE if results["ema_kept"] else "model.safetensors"))
    for name in ("classifier.weight", "bert.encoder.layer.1.output.dense.weight"):
        torch.testing.assert_close(saved[name], claimed[name])
    assert "exponential moving average" in (out / "README.md").read_text()


def test_no_average_where_nothing_trains_step_by_step(tmp_path):
    argv = tiny_text_argv(tmp_path, 32, 16, 4, "--freeze_strategy", "head_only", "--ema_decay", "0.9")
    results = text_classification.main(argv)
    record = yaml.safe_load((tmp_path / "out" / "warmstart_config.yaml").read_text())["weight_average"]
    assert record["used"] is False and "solved" in record["reason"]
    assert "ema_kept" not in results


def _train(root: Path, lr: str, *extra: str) -> Path:
    argv = tiny_text_argv(root, 48, 24, 6, "--learning_rate", lr, "--precision", "fp32", *extra)
    text_classification.main(argv)
    return root / "out"


def test_average_with_and_evaluate_only_save_the_mean_of_the_runs(tmp_path):
    a, b = _train(tmp_path / "a", "1e-2"), _train(tmp_path / "b", "3e-2")
    argv = tiny_text_argv(tmp_path / "soup", 48, 24, 6, "--precision", "fp32")
    argv[argv.index("--model_name_or_path") + 1] = str(a)
    results = text_classification.main([*argv, "--average_with", str(b), "--evaluate_only"])
    out = tmp_path / "soup" / "out"
    saved, first, second = (load_file(p / "model.safetensors") for p in (out, a, b))
    for name, value in saved.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (first[name] + second[name]) / 2, rtol=1e-6, atol=1e-7)
    assert results["evaluate_only"] is True and "eval_accuracy_ci_low" in results
    assert not (out / "train_results.json").exists() and (out / "eval_predictions.npz").is_file()
    assert yaml.safe_load((out / "warmstart_config.yaml").read_text())["weight_average"]["method"] == "uniform"
    assert "uniform average of 2 models" in (out / "README.md").read_text()


def test_a_calibrated_run_is_averaged_without_its_temperature(tmp_path):
    a = _train(tmp_path / "a", "3e-2", "--calibration", "temperature")
    b = _train(tmp_path / "b", "1e-2")
    temperature = yaml.safe_load((a / "warmstart_config.yaml").read_text())["calibration"]["temperature"]
    argv = tiny_text_argv(tmp_path / "soup", 48, 24, 6, "--precision", "fp32")
    argv[argv.index("--model_name_or_path") + 1] = str(a)
    text_classification.main([*argv, "--average_with", str(b), "--evaluate_only"])
    saved, first, second = (load_file(p / "model.safetensors") for p in (tmp_path / "soup" / "out", a, b))
    # a's head was divided by its temperature when it was saved: the soup averages the head as trained
    expected = (first["classifier.weight"] * temperature + second["classifier.weight"]) / 2
    torch.testing.assert_close(saved["classifier.weight"], expected, rtol=1e-5, atol=1e-6)


def _write_run(run_dir: Path, strategy: str, trainable: int, labels=("neg", "pos")) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"model_type": "bert", "id2label": dict(enumerate(labels))}))
    report = {"trainable_groups": ["head"] if strategy == "bitfit" else ["all"], "trainable_params": trainable}
    (run_dir / "warmstart_config.yaml").write_text(yaml.safe_dump({"freeze_report": report}))


def test_the_greedy_soup_adds_runs_best_first_while_the_average_is_as_good(tmp_path):
    """Runs a, b, c of one strategy (0.9, 0.8, 0.7) and d of another: the soup tries a+b (0.91: added), a+b+c (0.85:
    left out); d has no partner. A fake runner scores each average and makes its folder."""
    rows = [
        {"run": "full-a", "strategy": "full", "eval_accuracy": 0.9, "trainable_params": 10, "train_seconds": 1.0},
        {"run": "full-c", "strategy": "full", "eval_accuracy": 0.7, "trainable_params": 10, "train_seconds": 3.0},
        {"run": "full-b", "strategy": "full", "eval_accuracy": 0.8, "trainable_params": 10, "train_seconds": 2.0},
        {"run": "bitfit-d", "strategy": "bitfit", "eval_accuracy": 0.95, "trainable_params": 2, "train_seconds": 1.0},
    ]
    for row in rows:
        _write_run(tmp_path / "runs" / row["run"], row["strategy"], row["trainable_params"])
    assert list(soup_groups(rows, tmp_path)) == ["soup-full"]
    scores = {("full-a", "full-b"): 0.91, ("full-a", "full-b", "full-c"): 0.85}
    tried = []

    def runner(config, **kwargs):
        members = (config.model.model_name_or_path, *config.model.average_with)
        names = tuple(Path(m).name for m in members)
        tried.append(names)
        assert config.evaluation.evaluate_only and config.policy.strategy == "full"
        Path(config.training.output_dir).mkdir(parents=True)
        return {"eval_accuracy": scores[names], "eval_loss": 0.3}

    config = parse_config(["--model_name_or_path", "bert", "--output_dir", str(tmp_path)], "text_classification")
    planned = [PlannedRun(r["run"], r["strategy"], 1e-3, {"freeze_strategy": r["strategy"]}) for r in rows]
    made = make_soups(rows, planned, config, tmp_path, "accuracy", progress=lambda line: None, runner=runner)
    assert tried == [("full-a", "full-b"), ("full-a", "full-b", "full-c")]
    (soup,) = made
    assert soup["run"] == "soup-full" and soup["soup_of"] == ["full-a", "full-b"]
    assert soup["eval_accuracy"] == 0.91 and soup["train_seconds"] == 3.0 and soup["trainable_params"] == 10
    assert (tmp_path / "runs" / "soup-full").is_dir() and not (tmp_path / "runs" / "soup-full.candidate").exists()
    # made again from the same runs and scores: recognised, not evaluated again
    again = make_soups(rows, planned, config, tmp_path, "accuracy", progress=lambda line: None, runner=runner)
    assert again == made and len(tried) == 2


def test_a_comparison_soups_a_strategy_across_its_learning_rates(tmp_path):
    argv = tiny_text_argv(tmp_path, 48, 24, 6, "--precision", "fp32")
    del argv[argv.index("--learning_rate") : argv.index("--learning_rate") + 2]
    rows = compare_strategies.main([*argv, "--strategies", "full", "--learning_rates", "1e-2", "3e-2"])
    # six steps of a tiny model: both runs score the majority level, a tie the greedy soup takes (>=)
    (soup,) = [row for row in rows if row["run"].startswith("soup-")]
    runs_dir = tmp_path / "out" / "runs"
    assert soup["soup_of"] == ["full-lr0.01", "full-lr0.03"]
    members = [load_file(runs_dir / name / "model.safetensors") for name in soup["soup_of"]]
    saved = load_file(runs_dir / "soup-full" / "model.safetensors")
    for name in ("classifier.weight", "bert.encoder.layer.0.attention.self.query.weight"):
        torch.testing.assert_close(saved[name], (members[0][name] + members[1][name]) / 2)
    assert "greedy soup of full-lr0.01, full-lr0.03" in (tmp_path / "out" / "comparison.md").read_text()
    assert soup["train_seconds"] == pytest.approx(sum(r["train_seconds"] for r in rows[:2]), abs=0.02)
    assert not (runs_dir / "soup-full.candidate").exists()
    none = compare_strategies.main(
        [*argv, "--strategies", "full", "--learning_rates", "1e-2", "3e-2", "--soup", "none",
         "--output_dir", str(tmp_path / "plain")]
    )  # fmt: skip
    assert not any(row["run"].startswith("soup-") for row in none)


def test_batchnorm_statistics_that_differ_are_recomputed_on_the_data_and_the_others_kept():
    """Two models whose second BatchNorm was trained apart: averaging leaves its statistics fitting neither; they
    are recomputed from the batches (a cumulative average: the data's mean, and the mean of the batch variances),
    while the first BatchNorm, shared, keeps its statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 5), nn.BatchNorm1d(5))
    with torch.no_grad():
        model[1].running_mean.fill_(3.0)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = {k: v.clone() for k, v in a.items()}
    b["3.running_mean"] += 1.0
    assert batchnorm_layers_that_differ(model, [a, b]) == ["3"]
    model.load_state_dict(average_state_dicts([a, b]))
    data = [torch.randn(64, 4) * 2 + 1 for _ in range(3)]
    seen = recompute_batchnorm(model, ["3"], ({"input": x} for x in data), max_batches=2)
    assert seen == 2 and model.training and model[3].momentum == 0.1  # the mode and the momentum as they were
    with torch.no_grad():
        inner = [model[2](model[1].eval()(model[0](x))) for x in data[:2]]
    torch.testing.assert_close(model[3].running_mean, torch.stack([h.mean(0) for h in inner]).mean(0))
    torch.testing.assert_close(model[3].running_var, torch.stack([h.var(0) for h in inner]).mean(0))
    assert torch.equal(model[1].running_mean, torch.full((6,), 3.0))


def test_an_image_soup_recomputes_its_batchnorm_statistics(tmp_path):
    import image_classification
    from conftest import write_image_folder

    train, validation = write_image_folder(tmp_path / "train", 6, 0), write_image_folder(tmp_path / "val", 2, 1)
    base = ["--model_name_or_path", "test_resnet", "--random_init", "--image_size", "32", "--train_dir", str(train),
            "--validation_dir", str(validation), "--precision", "fp32"]  # fmt: skip
    outs = []
    for lr in ("1e-2", "3e-2"):
        out = tmp_path / f"run-{lr}"
        image_classification.main([*base, *trainer_flags(out, "--max_steps", "4", "--learning_rate", lr)])
        outs.append(out)
    soup = tmp_path / "soup"
    argv = [*base[2:], *trainer_flags(soup), "--model_name_or_path", str(outs[0]), "--average_with", str(outs[1])]
    argv.remove("--random_init")
    results = image_classification.main([*argv, "--evaluate_only"])
    record = yaml.safe_load((soup / "warmstart_config.yaml").read_text())["weight_average"]
    assert record["batchnorm_recomputed"]["layers"] > 0 and record["batchnorm_recomputed"]["batches"] >= 1
    first, second, saved = (load_file(p / "model.safetensors") for p in (*outs, soup))
    name = next(k for k in saved if k.endswith("running_mean") and not torch.equal(first[k], second[k]))
    assert not torch.allclose(saved[name], (first[name] + second[name]) / 2)  # recomputed, not averaged
    weight = name.replace("running_mean", "weight")
    torch.testing.assert_close(saved[weight], (first[weight] + second[weight]) / 2)
    assert "eval_accuracy" in results
