"""The freezing helper on a tiny BERT and on timm CNNs with BatchNorm and a ViT: exactly which parameters train,
frozen BatchNorm statistics and dropout under the Trainer's model.train(), gradients and optimizer state."""

from __future__ import annotations

import re

import pytest
import timm
import torch
import transformers
from conftest import tiny_bert_classifier, tiny_text_config, train_steps

from warmstart import FreezePolicy, WarmstartError, apply_freeze_policy, describe_blocks
from warmstart.freezing import TEXT_LAYOUTS
from warmstart.models import load_image_model


def timm_classifier(arch: str, num_labels: int = 3):
    return load_image_model(arch, [f"c{i}" for i in range(num_labels)], random_init=True)


# For each model and policy, the trainable parameters, written as regexes independently of the layout code.
EXPECTED = {
    ("bert", "full"): r".*",
    ("bert", "head_only"): r"classifier\.",
    ("bert", "top_k1"): r"classifier\.|bert\.pooler\.|bert\.encoder\.layer\.1\.",
    ("bert", "top_k2"): r"classifier\.|bert\.pooler\.|bert\.encoder\.layer\.[01]\.",
    ("test_resnet", "full"): r".*",
    ("test_resnet", "head_only"): r"timm_model\.fc\.",
    ("test_resnet", "top_k1"): r"timm_model\.(fc|layer4)\.",
    ("test_resnet", "top_k2"): r"timm_model\.(fc|layer4|layer3)\.",
    ("test_efficientnet", "head_only"): r"timm_model\.classifier\.",
    # the conv head and its BatchNorm sit above the last stage, so they train with it
    ("test_efficientnet", "top_k1"): r"timm_model\.(classifier|conv_head|bn2|blocks\.4)\.",
    ("test_vit", "head_only"): r"timm_model\.head\.",
    ("test_vit", "top_k1"): r"timm_model\.(head|norm|blocks\.5)\.",
    ("test_vit", "top_k2"): r"timm_model\.(head|norm|blocks\.[45])\.",
}
POLICIES = {
    "full": FreezePolicy("full"),
    "head_only": FreezePolicy("head_only"),
    "top_k1": FreezePolicy("top_k", top_k=1),
    "top_k2": FreezePolicy("top_k", top_k=2),
}


def build(name: str):
    return tiny_bert_classifier() if name == "bert" else timm_classifier(name)


@pytest.mark.parametrize(("model_name", "policy_name"), sorted(EXPECTED))
def test_exactly_the_expected_parameters_train(model_name, policy_name):
    model = build(model_name)
    report = apply_freeze_policy(model, POLICIES[policy_name])
    pattern = re.compile(EXPECTED[(model_name, policy_name)])
    for name, param in model.named_parameters():
        assert param.requires_grad == bool(pattern.match(name)), name
    params = list(model.parameters())
    assert report.total_params == sum(p.numel() for p in params)
    assert report.trainable_params == sum(p.numel() for p in params if p.requires_grad)
    assert 0 < report.trainable_params <= report.total_params
    if policy_name == "full":
        assert report.frozen_groups == []
    else:
        assert report.trainable_params < report.total_params
        assert "head" in report.trainable_groups and "stem" in report.frozen_groups


@pytest.mark.parametrize("model_name", ["bert", "test_resnet", "test_efficientnet", "test_vit"])
def test_top_k_beyond_the_number_of_blocks_is_refused(model_name):
    model = build(model_name)
    blocks = len(describe_blocks(model).blocks)
    apply_freeze_policy(model, FreezePolicy("top_k", top_k=blocks))  # the largest k is fine
    with pytest.raises(WarmstartError, match=f"larger than the model's {blocks} blocks"):
        apply_freeze_policy(model, FreezePolicy("top_k", top_k=blocks + 1))


@pytest.mark.parametrize(
    ("strategy", "top_k", "message"),
    [("top_k", 0, "at least 1"), ("top_k", None, "needs --unfreeze_top_k"), ("half", None, "unknown freeze strategy")],
)
def test_bad_policies_are_refused(strategy, top_k, message):
    with pytest.raises(WarmstartError, match=message):
        FreezePolicy(strategy, top_k=top_k)


@pytest.mark.parametrize("arch", [n for n in timm.list_models("test_*") if n not in ("test_coatnet", "test_maxvit")])
def test_every_timm_parameter_lands_in_exactly_one_group(arch):
    model = timm_classifier(arch)
    layout = describe_blocks(model)
    grouped = [name for _, names in layout.groups() for name in names]
    assert sorted(grouped) == sorted(name for name, _ in model.named_parameters())
    assert len(grouped) == len(set(grouped))
    assert layout.stem and len(layout.blocks) >= 2 and layout.head


@pytest.mark.parametrize("model_type", sorted(TEXT_LAYOUTS))
def test_text_layout_table_places_every_parameter(model_type):
    model = transformers.AutoModelForSequenceClassification.from_config(tiny_text_config(model_type))
    layout = describe_blocks(model)
    grouped = [name for _, names in layout.groups() for name in names]
    assert sorted(grouped) == sorted(name for name, _ in model.named_parameters())
    assert len(layout.blocks) == 2 and layout.stem and layout.head
    assert all(not name.startswith(model.base_model_prefix + ".") for name in layout.head)


def _image_items(n=8, size=32):
    generator = torch.Generator().manual_seed(0)
    return [
        {"pixel_values": torch.randn(3, size, size, generator=generator) * 3 + 1, "labels": i % 3} for i in range(n)
    ]


def _bn_state(model):
    return {
        name: (m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked))
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    }


@pytest.mark.parametrize("arch", ["test_resnet", "test_efficientnet"])
def test_frozen_batchnorm_statistics_do_not_move_during_trainer_steps(arch, tmp_path):
    model = timm_classifier(arch)
    report = apply_freeze_policy(model, FreezePolicy("top_k", top_k=1))
    assert report.frozen_batchnorm_layers > 0
    before = _bn_state(model)
    frozen_weights = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained_weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = train_steps(model, _image_items(), tmp_path)
    after = _bn_state(model)
    top_block = "timm_model.layer4." if arch == "test_resnet" else "timm_model.blocks.4."
    moved = [name for name in before if not torch.equal(before[name][0], after[name][0])]
    assert moved, "BatchNorm in the trained top block should update its statistics"
    assert all(name.startswith(top_block) or name == "timm_model.bn2" for name in moved), moved
    for name, value in frozen_weights.items():
        assert torch.equal(value, dict(model.named_parameters())[name]), name
    assert any(not torch.equal(v, dict(model.named_parameters())[n]) for n, v in trained_weights.items())
    # frozen parameters hold no gradient and no optimizer state
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert param.grad is None and id(param) not in optimized and param not in trainer.optimizer.state, name
        else:
            assert id(param) in optimized, name


def test_head_only_keeps_every_batchnorm_still(tmp_path):
    model = timm_classifier("test_resnet")
    apply_freeze_policy(model, FreezePolicy("head_only"))
    before = _bn_state(model)
    train_steps(model, _image_items(), tmp_path)
    after = _bn_state(model)
    for name in before:
        assert torch.equal(before[name][0], after[name][0]) and before[name][2] == after[name][2], name


def test_full_fine_tuning_does_update_batchnorm(tmp_path):
    model = timm_classifier("test_resnet")
    apply_freeze_policy(model, FreezePolicy("full"))
    before = _bn_state(model)
    train_steps(model, _image_items(), tmp_path)
    after = _bn_state(model)
    assert all(not torch.equal(before[n][0], after[n][0]) for n in before)


def _encoder_outputs_twice(model):
    model.train()  # as the Trainer does every step
    ids = torch.randint(5, 40, (2, 12), generator=torch.Generator().manual_seed(0))
    return [model.bert(input_ids=ids).last_hidden_state for _ in range(2)]


def test_frozen_encoder_runs_without_dropout_and_policy_can_be_replaced():
    model = tiny_bert_classifier()
    model.config.hidden_dropout_prob = 0.5
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    first, second = _encoder_outputs_twice(model)
    assert not torch.equal(first, second), "dropout should be active in a trainable encoder"
    apply_freeze_policy(model, FreezePolicy("head_only"))
    first, second = _encoder_outputs_twice(model)
    assert torch.equal(first, second), "a frozen encoder must run in eval mode"
    apply_freeze_policy(model, FreezePolicy("full"))
    first, second = _encoder_outputs_twice(model)
    assert not torch.equal(first, second), "re-applying a policy must drop the previous eval-mode hooks"


def test_report_is_serialisable_and_policy_round_trips():
    import json

    model = tiny_bert_classifier()
    policy = FreezePolicy("top_k", top_k=1)
    report = apply_freeze_policy(model, policy)
    assert FreezePolicy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
    data = json.loads(json.dumps(report.to_dict()))
    assert data["trainable_groups"] == ["blocks.1", "neck", "head"]
    assert data["frozen_groups"] == ["stem", "blocks.0"]
    assert "top_k" in report.summary()


@pytest.mark.parametrize("name", ["bert", "test_resnet", "test_vit"])
def test_top_k_builds_no_autograd_graph_below_the_top_blocks(name):
    """Frozen bottom blocks run without recording a graph: their outputs need no gradient, so backward stops at
    the first trainable block and the bottom of the network costs only its forward."""
    model = build(name)
    apply_freeze_policy(model, FreezePolicy("top_k", top_k=1))
    if name == "bert":
        blocks, inputs = model.bert.encoder.layer, {"input_ids": torch.randint(5, 40, (2, 8))}
    else:
        inner = model.timm_model
        blocks = inner.blocks if hasattr(inner, "blocks") else [inner.layer1, inner.layer2, inner.layer3, inner.layer4]
        inputs = {"pixel_values": torch.randn(2, 3, 32, 32)}
    records = []
    handles = [
        block.register_forward_hook(
            lambda _m, _i, out: records.append((out[0] if isinstance(out, tuple) else out).requires_grad)
        )
        for block in blocks
    ]
    model.train()
    model(**inputs).logits.sum().backward()
    for handle in handles:
        handle.remove()
    assert records[:-1] == [False] * (len(records) - 1) and records[-1] is True, records
