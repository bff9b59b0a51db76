"""LoRA through peft on a tiny BERT and timm test models: the default targets per architecture, exactly which
parameters train, Trainer steps that move the adapters and the head and nothing else, merging into a plain model that
loads (in a process without peft) with the same logits, the adapter saved alone, and one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from conftest import tiny_bert_classifier, tiny_text_config, train_steps, without_zero_init_scales
from safetensors import safe_open
from torch import nn

from warmstart import FreezePolicy, WarmstartError, describe_blocks
from warmstart.data import image_transforms
from warmstart.export import save_image_model, save_text_model
from warmstart.freezing import TEXT_LAYOUTS
from warmstart.lora import (
    TEXT_LORA_TARGETS,
    apply_lora,
    base_parameter_name,
    default_lora_targets,
    merge_lora,
    save_lora_adapter,
)
from warmstart.models import load_image_model, load_text_model

peft = pytest.importorskip("peft")

LABELS = ["c0", "c1", "c2"]


def build(name: str) -> nn.Module:
    torch.manual_seed(0)  # the same weights every time: test_adapter_saves_alone rebuilds the base model
    if name == "bert":
        return tiny_bert_classifier()
    return without_zero_init_scales(load_image_model(name, LABELS, random_init=True))


def adapted_layers(peft_model: nn.Module) -> set[str]:
    """Names (in the unwrapped model) of the layers that carry a LoRA adapter."""
    return {
        base_parameter_name(name).removesuffix(".weight")
        for name, _ in peft_model.named_parameters()
        if ".lora_A." in name
    }


# ------------------------------------------------------------------------------------------------- default targets

# The layers each timm test model should adapt, written out independently of the rule table: a ViT's fused qkv; a
# CNN's dense convolutions inside the blocks (ConvNeXt's 1x1 convs are its MLP Linears), never a depthwise conv,
# the stem or the head.
TIMM_EXPECTED = {
    "test_vit": r"timm_model\.blocks\.\d\.attn\.qkv",
    "test_resnet": r"timm_model\.layer\d\.0\.(conv\d|downsample\.1)",
    "test_efficientnet": r"timm_model\.(conv_head|"
    r"blocks\.\d\.0\.(conv|conv_exp|conv_pw|conv_pwl|se\.conv_reduce|se\.conv_expand))",
    "test_convnext": r"timm_model\.stages\.\d\.(downsample\.1|blocks\.\d\.mlp\.fc[12])",
}


@pytest.mark.parametrize("arch", sorted(TIMM_EXPECTED))
def test_timm_default_targets_match_the_blocks_dense_layers(arch):
    model = build(arch)
    candidates = {name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    expected = {name for name in candidates if re.fullmatch(TIMM_EXPECTED[arch], name)}
    assert expected
    targets = default_lora_targets(model)
    peft_model = apply_lora(model, FreezePolicy("lora", lora_r=2))
    adapted = adapted_layers(peft_model)
    assert adapted == expected, targets
    modules = dict(peft_model.get_base_model().named_modules())
    assert all(getattr(modules[name].base_layer, "groups", 1) == 1 for name in adapted)


@pytest.mark.parametrize("model_type", sorted(TEXT_LAYOUTS))
def test_text_default_targets_are_the_attention_projections_of_every_layer(model_type):
    assert model_type in TEXT_LORA_TARGETS, "every architecture with a block layout needs LoRA targets"
    model = transformers.AutoModelForSequenceClassification.from_config(tiny_text_config(model_type))
    targets = default_lora_targets(model)
    layout = describe_blocks(model)  # before wrapping: peft changes the model's own parameter names
    peft_model = apply_lora(model, FreezePolicy("lora", lora_r=2), layout)
    adapted = adapted_layers(peft_model)
    assert {name.rpartition(".")[2] for name in adapted} == set(targets)
    assert len(adapted) == 2 * len(targets)  # each of the 2 encoder layers
    assert all(name.startswith(model.base_model_prefix + ".") for name in adapted)
    _assert_only_adapters_and_head_train(peft_model, layout)


def _assert_only_adapters_and_head_train(peft_model, layout):
    head = set(layout.head)
    for name, param in peft_model.named_parameters():
        is_lora = ".lora_A." in name or ".lora_B." in name
        is_head_copy = ".modules_to_save." in name
        assert param.requires_grad == (is_lora or is_head_copy), name
        if is_head_copy:
            assert base_parameter_name(name) in head, name
    trained_head = {base_parameter_name(n) for n, p in peft_model.named_parameters() if ".modules_to_save." in n}
    assert trained_head == head


# --------------------------------------------------------------------------------------------- training and merging


def _inputs(name: str, n: int = 8) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    if name == "bert":
        ids = torch.randint(5, 40, (n, 10), generator=generator)
        return [
            {"input_ids": ids[i], "attention_mask": torch.ones(10, dtype=torch.long), "labels": i % 3}
            for i in range(n)
        ]
    images = torch.randn(n, 3, 32, 32, generator=generator) * 2
    return [{"pixel_values": images[i], "labels": i % 3} for i in range(n)]


def _batch(items) -> dict[str, torch.Tensor]:
    return {k: torch.stack([item[k] for item in items]) for k in items[0] if k != "labels"}


def _train(model, items, tmp_path, steps=3):
    return train_steps(model, items, tmp_path / "trainer", steps=steps)


@torch.no_grad()
def _logits(model, batch) -> torch.Tensor:
    model.eval()
    return model(**batch).logits


def _trained(name: str, tmp_path):
    """A model wrapped with LoRA and trained for a few steps (so the adapters are no longer zero), with what it was
    before: its state dict (parameters and buffers) and layout."""
    model = build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layout = describe_blocks(model)
    peft_model = apply_lora(model, FreezePolicy("lora", lora_r=4, lora_alpha=8), layout)
    lora_before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    trainer = _train(peft_model, _inputs(name), tmp_path)
    return peft_model, before, layout, lora_before, trainer


@pytest.mark.parametrize("name", ["bert", "test_vit", "test_resnet"])
def test_trainer_moves_only_adapters_and_head_and_merging_keeps_the_logits(name, tmp_path):
    peft_model, before, layout, lora_before, trainer = _trained(name, tmp_path)
    original_class = type(peft_model.get_base_model())
    _assert_only_adapters_and_head_train(peft_model, layout)

    params = dict(peft_model.named_parameters())
    for param_name, value in lora_before.items():
        assert not torch.equal(value, params[param_name]), f"{param_name} did not train"
    # every base parameter and buffer (BatchNorm statistics included) is as it was: the adapter alone describes the
    # fine-tune; the head's original_module is the untouched pretrained head
    for state_name, value in peft_model.state_dict().items():
        if ".lora_" not in state_name and ".modules_to_save." not in state_name:
            assert torch.equal(value, before[base_parameter_name(state_name)]), state_name
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in params.values() if p.requires_grad}

    batch = _batch(_inputs(name, 6))
    expected = _logits(peft_model, batch)
    merged = merge_lora(peft_model)
    assert type(merged) is original_class
    assert list(merged.state_dict()) == list(before)
    assert not any("lora" in n for n, _ in merged.named_modules())
    torch.testing.assert_close(_logits(merged, batch), expected, atol=1e-5, rtol=1e-5)
    head = {n: p for n, p in merged.named_parameters() if n in set(layout.head)}
    assert all(not torch.equal(p, before[n]) for n, p in head.items()), "the merged head is the trained copy"
    assert merge_lora(merged) is merged  # a plain model comes back unchanged


# Loads a saved model in a process where peft cannot be imported, and compares its logits with the expected ones.
_LOAD_WITHOUT_PEFT = textwrap.dedent(
    """
    import sys
    sys.modules["peft"] = None  # any import of peft now fails: the model must load without it
    import torch
    directory, data = sys.argv[1], torch.load(sys.argv[2])
    try:
        import peft  # noqa: F401
        raise SystemExit("peft is importable")
    except ImportError:
        pass
    if "pixel_values" in data["inputs"]:
        import timm
        from transformers import AutoModelForImageClassification
        timm_model = timm.create_model("local-dir:" + directory, pretrained=True).eval()
        hf_model = AutoModelForImageClassification.from_pretrained(directory).eval()
        loaded = {
            "timm": timm_model(data["inputs"]["pixel_values"]),
            "transformers": hf_model(**data["inputs"]).logits,
        }
    else:
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
        loaded = {"transformers": model(**data["inputs"]).logits}
    for library, logits in loaded.items():
        torch.testing.assert_close(logits.detach(), data["logits"], atol=1e-5, rtol=1e-5, msg=library)
    print("loaded by", ", ".join(loaded))
    """
)


def _load_in_a_process_without_peft(directory, batch, expected, tmp_path) -> str:
    data = tmp_path / "expected.pt"
    torch.save({"inputs": batch, "logits": expected}, data)
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_PEFT, str(directory), str(data)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("arch", ["test_resnet"])  # convolutions and BatchNorm: the harder merge; ViTs merge above
def test_merged_image_model_saves_and_loads_without_peft(arch, tmp_path):
    peft_model, *_ = _trained(arch, tmp_path)
    batch = _batch(_inputs(arch, 4))
    expected = _logits(peft_model, batch)
    merged = merge_lora(peft_model)
    output = tmp_path / "model"
    output.mkdir()
    save_image_model(merged, output, image_transforms(merged, 32)[0])
    assert not (output / "adapter_config.json").exists()
    assert "loaded by timm, transformers" in _load_in_a_process_without_peft(output, batch, expected, tmp_path)


def test_merged_text_model_saves_and_loads_without_peft(tiny_bert, tmp_path):
    torch.manual_seed(0)
    model, tokenizer = load_text_model(str(tiny_bert), ["neg", "pos"])
    peft_model = apply_lora(model, FreezePolicy("lora", lora_r=4))
    encoded = tokenizer(["the movie was good", "bad plot", "it was really very dull", "love it"] * 2, padding=True)
    items = [
        {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": i % 2}
        for i, (ids, mask) in enumerate(zip(encoded["input_ids"], encoded["attention_mask"]))
    ]
    _train(peft_model, items, tmp_path)
    batch = _batch(items[:4])
    expected = _logits(peft_model, batch)
    output = tmp_path / "model"
    save_text_model(merge_lora(peft_model), tokenizer, output)
    assert "model.safetensors" in {f.name for f in output.iterdir()} and not (output / "adapter_config.json").exists()
    assert "loaded by transformers" in _load_in_a_process_without_peft(output, batch, expected, tmp_path)


def test_adapter_saves_alone_and_reproduces_the_trained_model(tmp_path):
    peft_model, before, layout, *_ = _trained("test_resnet", tmp_path)
    save_lora_adapter(peft_model, tmp_path / "adapter")
    files = {f.name for f in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files and "model.safetensors" not in files
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["modules_to_save"] == ["timm_model.fc"]
    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(".lora_" in k or ".fc." in k for k in keys)
    assert sum(".lora_" in k for k in keys) == 2 * 12  # A and B of the 12 adapted convolutions

    # the original backbone plus the adapter file is the trained model: no BatchNorm statistic moved in training
    batch = _batch(_inputs("test_resnet", 4))
    reloaded = peft.PeftModel.from_pretrained(build("test_resnet"), str(tmp_path / "adapter"))
    torch.testing.assert_close(_logits(reloaded, batch), _logits(peft_model, batch), atol=1e-5, rtol=1e-5)


def test_save_lora_adapter_refuses_a_plain_model(tmp_path):
    with pytest.raises(WarmstartError, match="needs the model apply_lora returned"):
        save_lora_adapter(tiny_bert_classifier(), tmp_path)


# ------------------------------------------------------------------------------------------- chosen target modules

TARGET_CASES = [
    # (--lora_target_modules, the layers adapted in the tiny BERT)
    (["query", "value"], r"bert\.encoder\.layer\.\d\.attention\.self\.(query|value)"),
    (["attention.output.dense"], r"bert\.encoder\.layer\.\d\.attention\.output\.dense"),  # a dotted suffix
    ([r"bert\.encoder\.layer\.1\..*\.(query|key)"], r"bert\.encoder\.layer\.1\.attention\.self\.(query|key)"),  # regex
    (["bert.encoder.layer.0.intermediate.dense"], r"bert\.encoder\.layer\.0\.intermediate\.dense"),  # a full name
]


@pytest.mark.parametrize(("targets", "expected"), TARGET_CASES)
def test_chosen_target_modules(targets, expected):
    model = tiny_bert_classifier()
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    peft_model = apply_lora(model, FreezePolicy("lora", lora_target_modules=targets))
    assert adapted_layers(peft_model) == {name for name in linears if re.fullmatch(expected, name)}


ERROR_CASES = [
    # (model, --lora_target_modules, fragments of the one-line message)
    ("bert", ["qurey"], ("'qurey' matches no layer", "query, key, value, dense")),
    ("bert", ["query", "vlaue"], ("'vlaue' matches no layer", "query, key, value")),  # one bad entry is enough
    ("bert", ["classifier"], ("matches no layer of BertForSequenceClassification outside its classification head",)),
    ("bert", [r".*\.nothing"], (r"'.*\\.nothing' matches no layer", "query")),
    ("bert", ["query("], ("is not a valid regex",)),
    ("bert", ["attention"], ("matches bert.encoder.layer.0.attention (a BertAttention)", "cannot adapt")),
    ("test_resnet", ["qkv"], ("'qkv' matches no layer of TimmWrapperForImageClassification", "conv1, conv2")),
]


@pytest.mark.parametrize(("name", "targets", "fragments"), ERROR_CASES)
def test_unmatched_targets_are_refused_with_candidates(name, targets, fragments):
    model = build(name)
    with pytest.raises(WarmstartError) as raised:
        apply_lora(model, FreezePolicy("lora", lora_target_modules=targets))
    message = str(raised.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    assert not any(".lora_" in n for n, _ in model.named_parameters()), "a refused model is left as it was"


def test_candidates_are_the_layer_names_outside_the_head_once_each():
    model = build("test_efficientnet")
    with pytest.raises(WarmstartError, match=r"e\.g\. (\w+, ){3,}") as raised:
        apply_lora(model, FreezePolicy("lora", lora_target_modules=["nothing"]))
    candidates = str(raised.value).rpartition("e.g. ")[2].removesuffix(" ...").split(", ")
    assert candidates == ["conv_stem", "conv", "conv_exp", "conv_pwl", "conv_pw", "conv_dw"] + [
        "conv_reduce",
        "conv_expand",
        "conv_head",
    ]  # conv_dw is a name one may give, though never a default target; the head "classifier" is left out


def test_missing_peft_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    model = tiny_bert_classifier()
    with pytest.raises(WarmstartError, match=re.escape('pip install "warmstart[peft]"')) as raised:
        apply_lora(model, FreezePolicy("lora"))
    assert "\n" not in str(raised.value)
    assert default_lora_targets(model) == ["query", "key", "value"]  # needs no peft
    assert merge_lora(model) is model  # without peft nothing is a peft model


def test_unknown_text_architecture_asks_for_targets():
    model = transformers.AutoModelForSequenceClassification.from_config(
        transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, num_labels=2, pad_token_id=0)
    )
    with pytest.raises(WarmstartError, match=r"no default LoRA target modules for model_type 'gpt2'.*c_attn, c_proj"):
        default_lora_targets(model)


# -------------------------------------------------------------------------------------------- base parameter names

BASE_NAMES = [
    (
        "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight",
        "bert.encoder.layer.0.attention.self.query.weight",
    ),
    ("base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.other.weight", None),
    ("base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight", None),
    ("base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.bias", None),
    ("base_model.model.classifier.modules_to_save.default.weight", "classifier.weight"),
    ("base_model.model.classifier.original_module.bias", "classifier.bias"),
    ("base_model.model.timm_model.fc.modules_to_save.default.bias", "timm_model.fc.bias"),
    ("base_model.model.timm_model.layer1.0.conv1.lora_B.default.weight", "timm_model.layer1.0.conv1.weight"),
    ("base_model.model.bert.embeddings.word_embeddings.lora_embedding_A.default", None),
    ("base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.default.bias", None),  # lora_bias
    ("base_model.model.bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.weight"),
    ("bert.encoder.layer.0.attention.self.key.lora_A.default.weight", None),  # the base model's own names
    ("classifier.weight", "classifier.weight"),  # an unwrapped model
]
EXPECTED_BASE = {
    "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.other.weight": (
        "bert.encoder.layer.1.attention.self.value.weight"
    ),
    "base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight": (
        "bert.encoder.layer.0.attention.self.query.weight"
    ),
    "base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.bias": (
        "bert.encoder.layer.0.attention.self.query.bias"
    ),
    "base_model.model.bert.embeddings.word_embeddings.lora_embedding_A.default": (
        "bert.embeddings.word_embeddings.weight"
    ),
    "base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.default.bias": (
        "bert.encoder.layer.0.attention.self.query.bias"
    ),
    "bert.encoder.layer.0.attention.self.key.lora_A.default.weight": "bert.encoder.layer.0.attention.self.key.weight",
}


@pytest.mark.parametrize(("name", "expected"), BASE_NAMES)
def test_base_parameter_name(name, expected):
    assert base_parameter_name(name) == (expected or EXPECTED_BASE[name])


@pytest.mark.parametrize("name", ["bert", "test_vit", "test_efficientnet"])
def test_every_wrapped_parameter_maps_to_a_parameter_of_its_block(name):
    model = build(name)
    layout = describe_blocks(model)
    group_of = {param: group for group, names in layout.groups() for param in names}
    peft_model = apply_lora(model, FreezePolicy("lora"), layout)
    groups = {}
    for param_name, param in peft_model.named_parameters():
        base = base_parameter_name(param_name)
        assert base in group_of, param_name
        if param.requires_grad:
            groups.setdefault(group_of[base], []).append(param_name)
    assert set(groups) == {"head"} | {f"blocks.{i}" for i in range(len(layout.blocks))}
