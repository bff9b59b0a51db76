"""Hyperparameter search (optuna over whole recipe runs): a 2-trial search keeps the best run and writes a config the
recipe accepts, a rerun goes on with the trials left, and bad search settings are one-line errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import image_data_flags, text_data_flags, trainer_flags

from warmstart import WarmstartError
from warmstart.search import argv_as_mapping

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
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
        assert len(list(csv.DictReader(f))) == 3
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
