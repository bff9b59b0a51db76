"""A run as a value: one configuration from a command line, a file or a mapping; variants of it checked as parsing
checks them; the task table; and a run that leaves the configuration it was given as it was."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from conftest import text_data_flags, trainer_flags

import warmstart
from warmstart import FreezePolicy, RunConfig, WarmstartError, parse_config
from warmstart.config import TASKS, PolicyArguments, task_named
from warmstart.config.parsing import to_plain
from warmstart.policy import STRATEGY_SPECS, policy_flags
from warmstart.tasks import EXECUTIONS

BASE = ["--model_name_or_path", "bert-base-uncased", "--output_dir", "out", "--use_cpu", "true"]


def test_a_command_line_a_file_and_a_mapping_give_the_same_configuration(tmp_path):
    flags = {"freeze_strategy": "top_k", "unfreeze_top_k": 2, "learning_rate": 0.001, "label_smoothing": 0.1}
    argv = [*BASE, "--freeze_strategy", "top_k", "--unfreeze_top_k", "2", "--learning_rate", "0.001"]
    argv += ["--label_smoothing", "0.1"]
    mapping = {"model_name_or_path": "bert-base-uncased", "output_dir": "out", "use_cpu": True, **flags}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(mapping))
    configs = [parse_config(source, "text_classification") for source in (argv, mapping, path, [str(path)])]
    for config in configs:
        assert config.policy == FreezePolicy("top_k", top_k=2)
        assert config.regularization.label_smoothing == 0.1 and config.training.learning_rate == 0.001
        assert config.sections() == configs[0].sections()
    assert configs[0].given["learning_rate"] == "0.001" and configs[1].given["learning_rate"] == "0.001"


def test_the_policy_is_recorded_under_its_flags():
    config = parse_config([*BASE, "--freeze_strategy", "lora", "--lora_r", "4", "--save_adapter", "true"])
    freeze = config.sections()["freeze"]
    assert freeze["freeze_strategy"] == "lora" and freeze["lora_r"] == 4 and freeze["save_adapter"] is True
    assert set(freeze) == {*policy_flags().values(), "save_adapter"}
    assert {f.name for f in dataclasses.fields(PolicyArguments)} == set(freeze)  # one flag per policy field


def test_a_variant_changes_its_section_and_is_checked_as_parsing_checks():
    config = parse_config([*BASE, "--freeze_strategy", "full"])
    variant = config.with_values(freeze_strategy="gradual", unfreeze_every=1.0, learning_rate=0.02, hflip=0.0)
    assert variant.policy.strategy == "gradual" and variant.policy.unfreeze_every == 1.0
    assert variant.training.learning_rate == 0.02 and variant.data.hflip == 0.0
    assert variant.given["learning_rate"] == 0.02
    assert config.policy.strategy == "full" and "learning_rate" not in config.given  # the original as it was
    with pytest.raises(WarmstartError, match="gradual needs --unfreeze_every"):
        config.with_values(freeze_strategy="gradual")
    with pytest.raises(WarmstartError, match="unknown argument 'lerning_rate'"):
        config.with_values(lerning_rate=0.1)
    with pytest.raises(WarmstartError, match="--learning_rate must not be negative"):
        config.with_values(learning_rate=-1.0)


def test_a_copy_is_independent_and_keeps_what_was_resolved_after_parsing():
    config = parse_config(BASE)
    config.performance.precision_evidence = "timed"
    copy = config.copy()
    copy.training.learning_rate = 9.0
    copy.given["x"] = 1
    assert config.training.learning_rate != 9.0 and "x" not in config.given
    assert copy.performance.precision_evidence == "timed"
    assert to_plain(copy.training) == {**to_plain(config.training), "learning_rate": 9.0}


def test_every_task_has_an_execution_and_its_recipe_names_it():
    assert set(EXECUTIONS) == set(TASKS)
    assert task_named("pretrain_mlm").name == "masked_lm" and task_named("masked_lm").recipe == "pretrain_mlm"
    with pytest.raises(WarmstartError, match="unknown task 'nope'"):
        task_named("nope")
    config = parse_config([*BASE, "--mlm_probability", "0.2"], "pretrain_mlm")
    assert config.policy is None and config.objective.mlm_probability == 0.2
    with pytest.raises(WarmstartError, match="unrecognized arguments: --freeze_strategy"):
        parse_config([*BASE, "--freeze_strategy", "full"], "masked_lm")


def test_each_strategy_says_what_it_means_in_one_place():
    assert [name for name, spec in STRATEGY_SPECS.items() if spec.probes] == ["head_only", "lp_ft"]
    assert [name for name, spec in STRATEGY_SPECS.items() if spec.scheduled] == ["gradual", "lp_ft"]
    assert [name for name, spec in STRATEGY_SPECS.items() if not spec.trains_backbone] == ["head_only"]
    assert FreezePolicy("lora").spec.wraps_model and not FreezePolicy("bitfit").spec.wraps_model


def test_a_run_leaves_the_configuration_it_was_given_as_it_was(tiny_bert, text_files, tmp_path):
    flags = [a for a in trainer_flags(tmp_path / "out") if a not in ("--learning_rate", "1e-3")]
    config = parse_config([*text_data_flags(tiny_bert, text_files), *flags, "--freeze_strategy", "bitfit"])
    before = (to_plain(config.training), config.sections(), dict(config.given))
    results = warmstart.run(config)
    assert (to_plain(config.training), config.sections(), dict(config.given)) == before
    saved = yaml.safe_load((tmp_path / "out" / "warmstart_config.yaml").read_text())
    # the run resolved the strategy's own rate in its copy, and recorded it
    assert saved["learning_rate"] == {"value": 1e-3, "source": "the default for bitfit on text data"}
    assert config.training.learning_rate != 1e-3 and "eval_accuracy" in results
    assert isinstance(config, RunConfig)
