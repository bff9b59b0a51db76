"""Policies over a whole Trainer run: at given steps, exactly which parameters changed and each group's learning
rate, for a tiny BERT, a timm CNN and a timm ViT; resume mid-schedule; the same under 2-process DDP."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    ListDataset,
    tiny_bert_classifier,
    torchrun_command,
    trainer_flags,
    without_zero_init_scales,
)
from transformers import Trainer, TrainerCallback, TrainingArguments

from warmstart import FreezePolicy, WarmstartError, describe_blocks, prepare_fine_tuning
from warmstart.fine_tuning import layer_lr_scales
from warmstart.models import load_image_model

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 2  # 8 examples, batch 4


def build(name: str):
    if name == "bert":
        return tiny_bert_classifier(layers=3)
    return without_zero_init_scales(load_image_model(name, ["a", "b", "c"], random_init=True))


def examples(name: str, n: int = 8):
    generator = torch.Generator().manual_seed(0)
    if name == "bert":
        return [{"input_ids": torch.randint(5, 40, (10,), generator=generator), "labels": i % 3} for i in range(n)]
    return [{"pixel_values": torch.randn(3, 32, 32, generator=generator), "labels": i % 3} for i in range(n)]


class Recorder(TrainerCallback):
    """After every optimizer step: which parameters changed in it, and every group's learning rate used."""

    def __init__(self, model):
        self.model = model
        self.changed: list[set[str]] = []
        self.lrs: list[dict[str, float]] = []
        self._before = None

    def _snapshot(self):
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self._before = self._snapshot()
        self.lrs.append({g["name"]: g["lr"] for g in optimizer.param_groups})

    def on_step_end(self, args, state, control, **kwargs):
        after = dict(self.model.named_parameters())
        self.changed.append({n for n, v in self._before.items() if not torch.equal(v, after[n])})


def run(name, policy, tmp_path, steps, **overrides):
    model = build(name)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=0.05,
        lr_scheduler_type="constant",
        weight_decay=0.01,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=0,
        logging_steps=1000,
        **overrides,
    )
    tuning = prepare_fine_tuning(model, policy, args)
    recorder = Recorder(tuning.model)
    trainer = Trainer(args=args, train_dataset=ListDataset(examples(name)), **tuning.trainer_kwargs())
    trainer.add_callback(recorder)
    trainer.train()
    return tuning, recorder, describe_blocks(model)


def names_of(layout, *groups):
    return {n for g, members in layout.groups() if g in groups for n in members}


MODELS = ["bert", "test_resnet", "test_vit"]


@pytest.mark.parametrize("name", MODELS)
def test_gradual_unfreezes_one_block_group_per_epoch_top_down(name, tmp_path):
    policy = FreezePolicy("gradual", unfreeze_every=1, top_k=2)
    tuning, rec, layout = run(name, policy, tmp_path, steps=3 * STEPS_PER_EPOCH)
    n = len(layout.blocks)
    expected_by_epoch = [
        names_of(layout, "head"),
        names_of(layout, "head", "neck", f"blocks.{n - 1}"),
        names_of(layout, "head", "neck", f"blocks.{n - 1}", f"blocks.{n - 2}"),
    ]
    for epoch, expected in enumerate(expected_by_epoch):
        steps = rec.changed[epoch * STEPS_PER_EPOCH : (epoch + 1) * STEPS_PER_EPOCH]
        # a block's first step may leave a few tensors as they were (timm zero-initialises each residual branch's
        # last BatchNorm scale, so the layers before it get no gradient until that scale has moved once)
        assert all(changed <= expected for changed in steps), epoch
        assert set().union(*steps) == expected, (epoch, sorted(expected - set().union(*steps)))
    # every parameter that ever trains is in the optimizer from the first step
    optimized = {id(p) for g in tuning.optimizer.param_groups for p in g["params"]}
    params = dict(tuning.model.named_parameters())
    assert {n for n in params if id(params[n]) in optimized} == expected_by_epoch[-1]
    assert [stage for _, stage, _ in tuning.callbacks[-1].history] == [0, 1, 2]


@pytest.mark.parametrize("name", MODELS)
def test_lp_ft_probes_then_trains_everything_at_the_lower_rate(name, tmp_path):
    policy = FreezePolicy("lp_ft", probe_epochs=1, finetune_lr_multiplier=0.1)
    tuning, rec, layout = run(name, policy, tmp_path, steps=2 * STEPS_PER_EPOCH)
    everything = names_of(layout, *[g for g, _ in layout.groups()])
    assert rec.changed[0] == rec.changed[1] == set(layout.head)
    assert rec.changed[2] <= everything and rec.changed[2] | rec.changed[3] == everything
    head_group = next(g for g in rec.lrs[0] if g.startswith("head"))
    assert rec.lrs[0][head_group] == pytest.approx(0.05)
    assert rec.lrs[2][head_group] == pytest.approx(0.005)  # the fine-tuning phase at 0.1x
    assert all(lr == pytest.approx(0.005) for lr in rec.lrs[3].values())


def _running_means(model) -> dict[str, torch.Tensor]:
    batchnorms = model.named_modules()
    return {n: m.running_mean.clone() for n, m in batchnorms if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


@pytest.mark.parametrize(("freeze_stats", "moves"), [(None, False), (False, True)])
@pytest.mark.parametrize("solver", ["trainer", "lbfgs"])
def test_lp_ft_keeps_batchnorm_statistics_unless_told(freeze_stats, moves, solver, tmp_path):
    """LP-FT's probe was fitted on the features the loaded statistics give: they stay, in both phases, while the
    BatchNorm weights train with the rest; --freeze_batchnorm_stats false lets them follow the batches."""
    probe = {"probe_solver": "trainer", "probe_epochs": 1} if solver == "trainer" else {"probe_solver": "lbfgs"}
    policy = FreezePolicy("lp_ft", freeze_batchnorm_stats=freeze_stats, **probe)
    before = _running_means(build("test_resnet"))  # build() seeds nothing: the statistics start at 0 either way
    tuning, rec, _ = run("test_resnet", policy, tmp_path, steps=2 * STEPS_PER_EPOCH)
    after = _running_means(tuning.model)
    assert after.keys() == before.keys() and len(after) > 3
    moved = [n for n in after if not torch.equal(after[n], before[n])]
    assert (moved == list(after)) if moves else not moved
    batchnorm_weights = {f"{n}.weight" for n in after}
    assert batchnorm_weights <= rec.changed[-1]  # their affine weights train in the fine-tuning phase
    assert tuning.report.frozen_batchnorm_layers == (0 if moves else len(after))


@pytest.mark.parametrize("name", MODELS)
def test_bitfit_trains_only_biases_and_the_head(name, tmp_path):
    tuning, rec, layout = run(name, FreezePolicy("bitfit"), tmp_path, steps=2)
    expected = {n for n, _ in tuning.model.named_parameters() if n.endswith(".bias")} | set(layout.head)
    assert rec.changed[0] == rec.changed[1] == expected
    assert tuning.report.trainable_params < tuning.report.total_params / 5


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("strategy", "top_k"), [("full", None), ("head_only", None), ("top_k", 2)])
def test_fixed_strategies_with_layer_decay_and_head_multiplier(name, strategy, top_k, tmp_path):
    policy = FreezePolicy(strategy, top_k=top_k, layer_lr_decay=0.5, head_lr_multiplier=10.0)
    tuning, rec, layout = run(name, policy, tmp_path, steps=2)
    n = len(layout.blocks)
    trained = {
        "full": [g for g, _ in layout.groups()],
        "head_only": ["head"],
        "top_k": ["head", "neck", f"blocks.{n - 1}", f"blocks.{n - 2}"],
    }[strategy]
    assert rec.changed[0] == rec.changed[1] == names_of(layout, *trained)
    expected_scale = {
        "stem": 0.5**n,
        "neck": 1.0,
        "head": 10.0,
        **{f"blocks.{i}": 0.5 ** (n - 1 - i) for i in range(n)},
    }
    for group in tuning.optimizer.param_groups:
        base = group["name"].split("/")[0]
        assert base in trained
        assert rec.lrs[0][group["name"]] == pytest.approx(0.05 * expected_scale[base]), group["name"]
        decays = not group["name"].endswith("/no_decay")
        assert group["weight_decay"] == (0.01 if decays else 0.0)
        assert all((p.ndim > 1) == decays for p in group["params"]) or name == "test_vit"
    assert layer_lr_scales(layout, policy) == pytest.approx(expected_scale)


def test_no_weight_decay_on_norms_biases_and_vit_position_embeddings(tmp_path):
    tuning, _, _ = run("test_vit", FreezePolicy("full"), tmp_path, steps=1)
    params = dict(tuning.model.named_parameters())
    by_id = {id(p): n for n, p in params.items()}
    no_decay = {by_id[id(p)] for g in tuning.optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "timm_model.pos_embed" in no_decay and "timm_model.cls_token" in no_decay
    assert all(n in no_decay for n, p in params.items() if p.ndim <= 1)
    assert not any(params[n].ndim > 1 for n in no_decay - {"timm_model.pos_embed", "timm_model.cls_token"})


@pytest.mark.parametrize(
    ("policy_kwargs", "message"),
    [
        ({"strategy": "full", "layer_lr_decay": 0.0}, "--layer_lr_decay must be in (0, 1]"),
        ({"strategy": "full", "layer_lr_decay": 1.5}, "--layer_lr_decay must be in (0, 1]"),
        ({"strategy": "full", "head_lr_multiplier": 0.0}, "--head_lr_multiplier must be > 0"),
        ({"strategy": "gradual", "unfreeze_every": 0.5}, "--unfreeze_every must be at least 1"),
        ({"strategy": "gradual"}, "needs --unfreeze_every"),
        ({"strategy": "lp_ft", "probe_solver": "trainer"}, "needs --probe_epochs"),
    ],
)
def test_bad_schedule_settings_are_refused(policy_kwargs, message):
    with pytest.raises(WarmstartError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        FreezePolicy(**policy_kwargs)


def test_gradual_counts_steps_too(tmp_path):
    _, rec, layout = run(
        "test_resnet", FreezePolicy("gradual", unfreeze_every=3, unfreeze_unit="steps"), tmp_path, steps=4
    )
    assert rec.changed[0] == rec.changed[2] == set(layout.head)
    assert rec.changed[3] == names_of(layout, "head", "neck", f"blocks.{len(layout.blocks) - 1}")


def _final_weights(name, policy, out, resume=None, accumulation=1):
    model = build(name)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=6,
        per_device_train_batch_size=4 // accumulation,
        gradient_accumulation_steps=accumulation,
        learning_rate=0.05,
        report_to="none",
        use_cpu=True,
        save_strategy="steps",
        save_steps=2,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=0,
        logging_steps=1000,
    )
    tuning = prepare_fine_tuning(model, policy, args)
    trainer = Trainer(args=args, train_dataset=ListDataset(examples(name)), **tuning.trainer_kwargs())
    trainer.train(resume_from_checkpoint=resume)
    return {n: p.detach().clone() for n, p in tuning.model.named_parameters()}, tuning


@pytest.mark.parametrize(
    ("name", "policy"),
    [
        ("test_resnet", FreezePolicy("gradual", unfreeze_every=1)),
        ("bert", FreezePolicy("lp_ft", probe_epochs=1, finetune_lr_multiplier=0.5)),
    ],
)
def test_resume_mid_schedule_ends_with_the_same_weights(name, policy, tmp_path):
    straight, _ = _final_weights(name, policy, tmp_path / "straight")
    # the same run again, resumed from its checkpoint at step 2 (the end of the first stage)
    checkpoint = tmp_path / "straight" / "checkpoint-2"
    resumed, tuning = _final_weights(name, policy, tmp_path / "resumed", resume=str(checkpoint))
    assert [stage for _, stage, _ in tuning.callbacks[-1].history][0] == 1  # resumed straight into stage 1
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6, msg=key)


def test_gradient_accumulation_unfreezes_on_optimizer_steps(tmp_path):
    _, tuning = _final_weights("test_resnet", FreezePolicy("gradual", unfreeze_every=1), tmp_path, accumulation=2)
    # 8 examples of batch 2 x 2 accumulation: two optimizer steps per epoch, one stage per epoch
    assert [(step, stage) for step, stage, _ in tuning.callbacks[-1].history] == [(0, 0), (2, 1), (4, 2)]


@pytest.mark.parametrize(
    "strategy",
    [
        ["--freeze_strategy", "gradual", "--unfreeze_every", "1"],
        ["--freeze_strategy", "lp_ft", "--probe_epochs", "1", "--probe_solver", "trainer"],
    ],
)
def test_schedules_run_under_two_process_ddp(strategy, tiny_bert, text_files, tmp_path):
    out = tmp_path / "out"
    flags = [a for a in trainer_flags(out) if a != "--max_steps" and a != "3"]
    command = [
        *torchrun_command(str(REPO / "recipes" / "text_classification.py")),
        "--model_name_or_path",
        str(tiny_bert),
        "--train_file",
        str(text_files["train"]),
        "--validation_file",
        str(text_files["validation"]),
        *flags,
        "--num_train_epochs",
        "3",
        "--per_device_train_batch_size",
        "12",
        "--layer_lr_decay",
        "0.8",
        *strategy,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    config = yaml.safe_load((out / "warmstart_config.yaml").read_text())
    assert config["training_adjusted"]["ddp_find_unused_parameters"] is True
    stages = [row["stage"] for row in config["schedule"]]
    assert stages == sorted(stages) and stages[-1] >= 1 and len(stages) >= 2
    results = json.loads((out / "all_results.json").read_text())
    assert results["epoch"] == pytest.approx(3.0)
    # two labels: a loss near ln 2, not twice that (the Trainer used to scale a batch-mean loss by the world size)
    assert results["eval_loss"] < 1.0
    assert {g["name"].split("/")[0] for g in config["param_groups"]} >= {"stem", "blocks.0", "blocks.1", "head"}
