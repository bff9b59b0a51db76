"""Hyperparameter search (optuna over whole recipe runs): a 2-trial search keeps the best run and writes a config the
recipe accepts, a rerun goes on with the trials left, a killed trial resumes from its checkpoint, a search runs under
a 2-process torchrun launch, and bad search settings are one-line errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import image_data_flags, text_data_flags, torchrun_command, trainer_flags
from transformers import TrainerControl, TrainerState

from warmstart import WarmstartError
from warmstart.config import argv_as_mapping
from warmstart.search import PruneOnEvaluation

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes"))
import image_classification  # noqa: E402
import text_classification  # noqa: E402

SPACE = json.dumps({"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}, "per_device_train_batch_size": [4, 8]})


def search(tiny_bert, text_files, out, *extra):
    return text_classification.main(
        [
            *text_data_flags(tiny_bert, text_files),
            *trainer_flags(out),
            "--hparam_search",
            "optuna",
            "--hparam_space",
            SPACE,
            *extra,
        ]
    )


def test_two_trial_search_keeps_the_best_and_writes_a_config_the_recipe_takes(tiny_bert, text_files, tmp_path):
    out = tmp_path / "search"
    results = search(tiny_bert, text_files, out, "--n_trials", "2")
    with (out / "search_results.csv").open() as f:
        trials = list(csv.DictReader(f))
    assert [t["trial"] for t in trials] == ["0", "1"] and all(t["state"] == "complete" for t in trials)
    best = max(trials, key=lambda t: float(t["eval_accuracy"]))
    assert results["best_trial"] == int(best["trial"])
    assert results["eval_accuracy"] == pytest.approx(float(best["eval_accuracy"]))
    for trial in trials:
        assert 1e-4 <= float(trial["learning_rate"]) <= 1e-1 and trial["per_device_train_batch_size"] in ("4", "8")
    kept = yaml.safe_load((out / "warmstart_config.yaml").read_text())
    assert kept["training"]["learning_rate"] == pytest.approx(results["best_params"]["learning_rate"])
    assert "## Hyperparameter search" in (out / "README.md").read_text()

    config = yaml.safe_load((out / "best_config.yaml").read_text())
    assert config["learning_rate"] == results["best_params"]["learning_rate"]
    assert "hparam_search" not in config
    rerun = text_classification.main([str(out / "best_config.yaml"), "--output_dir", str(tmp_path / "best")])
    assert rerun["eval_accuracy"] == pytest.approx(results["eval_accuracy"])  # the same run, same seed

    more = search(tiny_bert, text_files, out, "--n_trials", "3")  # two finished: one more
    with (out / "search_results.csv").open() as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 3
    assert trials[2]["learning_rate"] not in (trials[0]["learning_rate"], trials[1]["learning_rate"])  # sampled anew
    assert more["best_trial"] in (0, 1, 2)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n_trials", "0"], "--n_trials must be at least 1"),
        (["--hparam_space", '{"learning_rate": {"low": 0.1, "high": 0.01}}'], "min 0.1 is above max 0.01"),
        (["--hparam_space", '{"momentum": [0.9]}'], "'momentum' cannot be searched"),
        (["--hparam_space", '{"learning_rate": {"low": 0, "high": 0.1, "log": true}}'], "log range needs low > 0"),
        (["--hparam_space", '{"unfreeze_top_k": {"low": 1, "high": 2.5}}'], "an integer range"),
        (["--hparam_space", "{not json"], "--hparam_space is not JSON"),
    ],
)
def test_bad_search_settings(extra, message, tiny_bert, text_files, tmp_path):
    out = tmp_path / "search"
    with pytest.raises(WarmstartError, match=message):
        search(tiny_bert, text_files, out, "--n_trials", "1", *extra)
    assert not out.exists()


def test_search_without_optuna_says_how_to_install(image_dirs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    with pytest.raises(WarmstartError, match=r"needs optuna: pip install 'warmstart\[hpo\]'"):
        image_classification.main(
            [
                *image_data_flags(image_dirs),
                *trainer_flags(tmp_path / "s"),
                "--hparam_search",
                "optuna",
            ]
        )


def test_command_lines_become_config_mappings(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 0.1\nrandom_init: true\n")
    assert argv_as_mapping([str(config), "--learning_rate", "0.2", "--random_crop_scale", "0.8", "1.0", "--x"]) == {
        "learning_rate": "0.2",
        "random_init": True,
        "random_crop_scale": ["0.8", "1.0"],
        "x": True,
    }


def test_a_search_rerun_with_other_settings_is_refused(tiny_bert, text_files, tmp_path):
    out = tmp_path / "search"
    search(tiny_bert, text_files, out, "--n_trials", "1")
    with pytest.raises(WarmstartError, match="holds a search with other settings"):
        search(tiny_bert, text_files, out, "--n_trials", "2", "--hparam_space", '{"weight_decay": [0.0, 0.1]}')


def test_a_dashed_search_flag_does_not_nest_searches(tiny_bert, text_files, tmp_path):
    out = tmp_path / "search"
    text_classification.main(
        [
            *text_data_flags(tiny_bert, text_files),
            *trainer_flags(out),
            "--hparam-search",
            "optuna",
            "--n-trials",
            "1",
            "--hparam_space",
            '{"weight_decay": [0.0]}',
        ]
    )
    trial = yaml.safe_load((out / "trials" / "trial-000" / "warmstart_config.yaml").read_text())
    assert trial["search"]["hparam_search"] == "none"
    assert not (out / "trials" / "trial-000" / "trials").exists()


def test_a_search_refuses_one_checkpoint_for_all_its_trials(tiny_bert, text_files, tmp_path):
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    out = tmp_path / "search"
    with pytest.raises(WarmstartError, match="--resume_from_checkpoint .* with --hparam_search: give auto"):
        search(tiny_bert, text_files, out, "--n_trials", "1", "--resume_from_checkpoint", str(checkpoint))
    assert not out.exists()


class ScriptedTrial:
    """The part of an optuna trial that pruning uses: it records the reports and prunes when told to."""

    def __init__(self, prune: bool):
        self.reports, self.prune = [], prune

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return self.prune


@pytest.mark.parametrize("prune", [False, True])
def test_pruning_numbers_evaluations_by_the_log_history(prune):
    trial = ScriptedTrial(prune)
    pruning = PruneOnEvaluation(trial, "eval_accuracy")
    state, control = TrainerState(), TrainerControl()
    # a run resumed from a checkpoint holding two evaluations: the third one is logged, then on_evaluate is called
    state.log_history = [
        {"eval_accuracy": 0.5, "step": 2},
        {"loss": 0.7, "step": 3},
        {"eval_accuracy": 0.6, "step": 4},
        {"eval_accuracy": 0.75, "step": 6},
    ]
    pruning.on_evaluate(None, state, control, metrics={"eval_accuracy": 0.75, "eval_loss": 0.4})
    assert trial.reports == [(3, 0.75)]
    assert pruning.pruned is prune and control.should_training_stop is prune
    pruning.on_evaluate(None, state, control, metrics={"eval_loss": 0.4})  # another metric: nothing to report
    assert trial.reports == [(3, 0.75)]


def finished_trials(out: Path) -> list:
    study = optuna.load_study(study_name="warmstart", storage=f"sqlite:///{out / 'search.db'}")
    return [t for t in study.trials if t.state.is_finished()]


def test_a_search_runs_under_a_two_process_torchrun_launch(tiny_bert, text_files, tmp_path):
    out = tmp_path / "search"
    command = [
        *torchrun_command(str(REPO / "recipes" / "text_classification.py")),
        *text_data_flags(tiny_bert, text_files),
        *trainer_flags(out),
        "--hparam_search",
        "optuna",
        "--n_trials",
        "3",
        # optuna's seeded start samples 1.0, 1e-5, 1.0: the third trial diverges as the first did, and is pruned at
        # its first evaluation, where the two processes must stop together
        "--hparam_space",
        '{"learning_rate": [1e-5, 1.0]}',
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "1",
        "--metric_for_best_model",
        "eval_loss",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with (out / "search_results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["trial"] for row in rows] == ["0", "1", "2"]  # each once: one process keeps the study
    assert [row["state"] for row in rows] == ["complete", "complete", "pruned"]
    assert done.stdout.count("[trial 2]") == 1
    pruned = json.loads((out / "trials" / "trial-002" / "trainer_state.json").read_text())
    assert pruned["global_step"] == 1  # stopped at its first evaluation, in both processes (or the run would hang)
    states = [t.state for t in finished_trials(out)]
    assert len(states) == 3 and optuna.trial.TrialState.FAIL not in states
    for trial in ("trial-000", "trial-001", "trial-002"):
        config = yaml.safe_load((out / "trials" / trial / "warmstart_config.yaml").read_text())
        assert len(config["lineage"]["runs"]) == 1  # written once, not once per process
    assert (out / "best_config.yaml").is_file() and (out / "model.safetensors").is_file()
    assert yaml.safe_load((out / "best_config.yaml").read_text())["learning_rate"] == 1e-5


def checkpointed_search(tiny_bert, text_files, out: Path) -> list[str]:
    """A 1-trial search of 12 steps, with a checkpoint and an evaluation every 2."""
    return [
        *text_data_flags(tiny_bert, text_files),
        *trainer_flags(out),
        *("--max_steps", "12", "--save_strategy", "steps", "--save_steps", "2"),
        *("--eval_strategy", "steps", "--eval_steps", "2"),
        *("--hparam_search", "optuna", "--n_trials", "1", "--hparam_space", SPACE),
    ]


def kill_once_checkpointed(argv: list[str], out: Path) -> int:
    """Runs the search of ``argv`` in a process killed with SIGKILL, as a crash would, once its first trial saved a
    checkpoint; returns the step of that trial's latest complete checkpoint."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with (out.parent / "killed.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "recipes" / "text_classification.py"), *argv],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        first = out / "trials" / "trial-000" / "checkpoint-2" / "trainer_state.json"
        deadline = time.monotonic() + 240
        while not first.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, (out.parent / "killed.log").read_text()[-3000:]
    steps = checkpoint_steps(out / "trials" / "trial-000")
    assert steps and steps[-1] < 12
    return steps[-1]


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps of the complete checkpoints in ``run_dir``, in order."""
    return sorted(int(p.parent.name.split("-")[1]) for p in run_dir.glob("checkpoint-*/trainer_state.json"))


def test_a_killed_trial_resumes_from_its_checkpoint_or_is_recorded_as_failed(tiny_bert, text_files, tmp_path, capsys):
    out = tmp_path / "search"
    step = kill_once_checkpointed(checkpointed_search(tiny_bert, text_files, out), out)
    assert finished_trials(out) == []  # the killed process left its trial running
    without = tmp_path / "without_auto"
    shutil.copytree(out, without)

    text_classification.main([*checkpointed_search(tiny_bert, text_files, out), "--resume_from_checkpoint", "auto"])
    printed = capsys.readouterr().out
    assert f"resumes interrupted trial 0 from {out / 'trials' / 'trial-000' / f'checkpoint-{step}'}" in printed
    old, new = finished_trials(out)
    assert old.state == optuna.trial.TrialState.FAIL and old.user_attrs["interrupted"]
    assert new.state == optuna.trial.TrialState.COMPLETE and new.params == old.params
    resumed = out / "trials" / "trial-001"
    assert checkpoint_steps(resumed) == list(range(step + 2, 13, 2))  # went on from the checkpoint, not from 0
    assert json.loads((resumed / "trainer_state.json").read_text())["global_step"] == 12
    assert sorted(new.intermediate_values) == [1, 2, 3, 4, 5, 6]  # evaluations numbered on across the resume
    with (out / "search_results.csv").open() as f:
        assert [(row["trial"], row["state"]) for row in csv.DictReader(f)] == [("0", "interrupted"), ("1", "complete")]

    # without auto: the interrupted trial stays failed, and a fresh one, sampled anew, takes its place
    text_classification.main(checkpointed_search(tiny_bert, text_files, without))
    assert "trial 0 was interrupted: recorded as failed" in capsys.readouterr().out
    old, new = finished_trials(without)
    assert old.state == optuna.trial.TrialState.FAIL and old.user_attrs["interrupted"]
    assert new.state == optuna.trial.TrialState.COMPLETE and "resumes_trial" not in new.user_attrs
    assert new.params != old.params
    assert checkpoint_steps(without / "trials" / "trial-001") == [2, 4, 6, 8, 10, 12]  # from the start
