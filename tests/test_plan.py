"""A run's plan: decisions made once the data and model are loaded, resolved once into the Trainer's arguments."""

from __future__ import annotations

import pytest
from transformers import TrainingArguments

from warmstart.plan import PlannedTraining, RunPlan, change_training


def _args(tmp_path) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)


def test_a_plan_is_read_through_its_view_and_applied_once(tmp_path):
    asked = _args(tmp_path)
    plan = RunPlan(asked)
    view = plan.training
    assert change_training(view, "the CPUs this process has", dataloader_num_workers=3) == {
        "dataloader_num_workers": 3
    }
    assert change_training(view, "no change", seed=asked.seed) == {}  # the value it holds: nothing planned
    # decided, not yet applied: the view reads the plan, the arguments stay as asked until the Trainer is built
    assert view.dataloader_num_workers == 3 and asked.dataloader_num_workers == 0
    assert view.to_dict()["dataloader_num_workers"] == 3 and view.seed == asked.seed
    resolved = plan.resolve()
    assert resolved is asked and asked.dataloader_num_workers == 3
    assert plan.record()["plan"] == {"dataloader_num_workers": {"value": 3, "reason": "the CPUs this process has"}}


def test_a_plan_takes_no_change_after_its_trainer_is_built(tmp_path):
    plan = RunPlan(_args(tmp_path))
    plan.resolve()
    with pytest.raises(RuntimeError, match="resolved when its Trainer was built; dataloader_num_workers"):
        change_training(plan.training, "too late", dataloader_num_workers=2)


def test_a_planned_view_refuses_assignment_and_unknown_fields(tmp_path):
    view = RunPlan(_args(tmp_path)).training
    assert isinstance(view, PlannedTraining)
    with pytest.raises(AttributeError, match=r"change_training\(training_args, reason, seed=...\)"):
        view.seed = 3
    with pytest.raises(AttributeError, match="no field 'learning_rte'"):
        change_training(view, "a typo", learning_rte=1e-3)


def test_a_later_decision_replaces_an_earlier_one_and_decisions_are_recorded(tmp_path):
    asked = _args(tmp_path)
    plan = RunPlan(asked)
    change_training(plan.training, "--group_by_length", train_sampling_strategy="group_by_length")
    change_training(plan.training, "the head trains on cached features", train_sampling_strategy="random")
    plan.decide("feature_cache", {"used": True, "reason": "the backbone is frozen"})
    record = plan.record()
    assert record["plan"]["train_sampling_strategy"]["reason"] == "the head trains on cached features"
    assert record["feature_cache"] == {"used": True, "reason": "the backbone is frozen"}
    assert plan.resolve().train_sampling_strategy == "random"


def test_plain_training_arguments_are_changed_directly(tmp_path):
    """Outside a run (a downstream project's own arguments), the library's functions change them as they always
    have."""
    args = _args(tmp_path)
    assert change_training(args, "a schedule", ddp_find_unused_parameters=True) == {"ddp_find_unused_parameters": True}
    assert args.ddp_find_unused_parameters is True
