"""LoRA fine-tuning through peft: low-rank adapters on a backbone's attention or convolution layers, plus a fully
trained classification head.

peft is an optional dependency (``pip install "warmstart[peft]"``); it is imported only when a function here needs
it, so ``import warmstart`` works without it. Which layers LoRA adapts is read from data, as the block layout is:
:data:`TEXT_LORA_TARGETS` per ``config.model_type`` for BERT-family encoders, :data:`TIMM_LORA_TARGETS` (rules on
layer types and names, tried in order) for timm models.

Example:
    >>> peft_model = apply_lora(model, FreezePolicy("lora", lora_r=8), describe_blocks(model))
    >>> ...  # train with a transformers Trainer
    >>> save_lora_adapter(peft_model, "out/adapter")  # the adapter alone: a few MB
    >>> plain = merge_lora(peft_model)  # a model with no trace of peft, for save_image_model / save_text_model
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

# the module, not its names: freezing may import this module in turn without a circular-import failure
from warmstart import freezing
from warmstart.errors import WarmstartError

if TYPE_CHECKING:
    from warmstart.freezing import BlockLayout
    from warmstart.policy import FreezePolicy

PEFT_INSTALL = 'pip install "warmstart[peft]"'

# Linear-like attention projections of BERT-family encoders, as each architecture names them (checked against
# models built from transformers.CONFIG_MAPPING). A list is peft's "name or name suffix" form: "query" matches
# "bert.encoder.layer.0.attention.self.query" and not DeBERTa-v2's "pos_query_proj".
TEXT_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("query", "key", "value"),
    "roberta": ("query", "key", "value"),
    "xlm-roberta": ("query", "key", "value"),
    "camembert": ("query", "key", "value"),
    "electra": ("query", "key", "value"),
    "distilbert": ("q_lin", "k_lin", "v_lin"),
    "deberta": ("in_proj",),  # DeBERTa v1 fuses q, k and v into one projection
    "deberta-v2": ("query_proj", "key_proj", "value_proj"),
    "mpnet": ("q", "k", "v"),
    "modernbert": ("Wqkv",),
}


@dataclass(frozen=True)
class LoraTargetRule:
    """Which layers of a timm model LoRA adapts: layers of ``layer_types`` whose last name part fully matches
    ``names`` (``None``: any name). Only layers inside the blocks (see :func:`describe_blocks`) count, and never a
    grouped (depthwise) convolution: it holds one small filter per channel, which a low-rank update cannot shrink."""

    family: str
    layer_types: tuple[type[nn.Module], ...]
    names: str | None = None


# Tried in order; the first rule that finds layers in a model's blocks gives its targets. Transformers (and
# hybrids with attention stages) get their attention projections, as LoRA was designed for; the rest get every dense
# convolution and Linear layer of the blocks (ResNet's 3x3 and 1x1 convs, EfficientNet's pointwise convs,
# ConvNeXt's MLP Linears and downsampling convs), which is where a CNN's capacity lives.
TIMM_LORA_TARGETS: tuple[LoraTargetRule, ...] = (
    LoraTargetRule(
        "attention (ViT, DeiT, Swin, EVA, PVT, CoAtNet ...)",
        (nn.Linear, nn.Conv2d),
        r"qkv|qkv_proj|q|k|v|kv|q_proj|k_proj|v_proj",
    ),
    LoraTargetRule("convolutional (ResNet, EfficientNet, ConvNeXt ...)", (nn.Conv2d, nn.Linear)),
)

# Layer types peft's LoRA can adapt (peft.tuners.lora.layer.dispatch_default); anything else matched by a target
# makes peft fail with the whole module printed, so it is refused here first, on one line.
_ADAPTABLE = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention)
# Characters that make one --lora_target_modules value a regex rather than a name ("." is not one: it separates
# the parts of a dotted name suffix such as "attention.self.query").
_REGEX_CHARACTERS = frozenset("*+?[](){}|^$\\")
_MAX_CANDIDATES = 15

# Hooks that keep frozen BatchNorm layers in eval mode, per wrapped base model, removed again by merge_lora.


def _import_peft():
    try:
        import peft
    except ImportError:
        raise WarmstartError(f"--freeze_strategy lora needs peft, which is not installed: {PEFT_INSTALL}") from None
    return peft


def _is_adaptable(module: nn.Module) -> bool:
    # transformers' GPT-2 style Conv1D is a Linear in disguise; peft adapts it too
    return isinstance(module, _ADAPTABLE) or type(module).__name__ == "Conv1D"


def _is_dense(module: nn.Module) -> bool:
    return getattr(module, "groups", 1) == 1


def _candidates(model: nn.Module, excluded: Iterable[str] = ()) -> str:
    """The last name parts of the Linear / Conv layers outside ``excluded``, deduplicated, as a short list."""
    excluded = tuple(excluded)
    names: dict[str, None] = {}
    for name, module in model.named_modules():
        linear_or_conv = isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or type(module).__name__ == "Conv1D"
        if linear_or_conv and not _within(name, excluded):
            names.setdefault(name.rpartition(".")[2], None)
    shown = list(names)[:_MAX_CANDIDATES]
    return ", ".join(shown) + (" ..." if len(names) > _MAX_CANDIDATES else "") if shown else "none"


def _within(name: str, roots: Iterable[str]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


def _timm_inner(model: nn.Module) -> nn.Module | None:
    """The timm model in ``model`` (itself, or the one a transformers TimmWrapper holds), else ``None``."""
    inner = getattr(model, "timm_model", model)
    return inner if hasattr(inner, "group_matcher") and hasattr(inner, "pretrained_cfg") else None


def _timm_targets(model: nn.Module) -> list[str]:
    layout = freezing.describe_blocks(model)
    in_blocks = {name for block in layout.blocks for name in block}
    layers = {
        name: module
        for name, module in model.named_modules()
        if _is_adaptable(module)
        and _is_dense(module)
        and (params := [f"{name}.{p}" for p, _ in module.named_parameters()])
        and all(p in in_blocks for p in params)
    }
    for rule in TIMM_LORA_TARGETS:
        chosen = [
            name
            for name, module in layers.items()
            if isinstance(module, rule.layer_types)
            and (rule.names is None or re.fullmatch(rule.names, name.rpartition(".")[2]))
        ]
        if chosen:
            return _shortest_form(model, chosen)
    raise WarmstartError(
        f"{type(_timm_inner(model)).__name__} has no Linear or dense Conv2d layer in its blocks for LoRA: "
        f"pass --lora_target_modules (layers: {_candidates(model)})"
    )


def _shortest_form(model: nn.Module, chosen: list[str]) -> list[str]:
    """``chosen`` as last name parts (``["qkv"]``) when those match exactly the chosen layers and nothing else (as
    peft matches a name suffix), else as full names: adapter_config.json stays readable for a ViT, exact for a CNN."""
    leaves = sorted({name.rpartition(".")[2] for name in chosen})
    matched = {name for name, _ in model.named_modules() if name.rpartition(".")[2] in leaves}
    return leaves if matched == set(chosen) else chosen


def default_lora_targets(model: nn.Module) -> list[str] | str:
    """The layers LoRA adapts in ``model`` when ``--lora_target_modules`` is not given.

    BERT-family encoders: the attention's query / key / value projections, from :data:`TEXT_LORA_TARGETS`. timm
    models (bare, or inside a transformers TimmWrapper): the first rule of :data:`TIMM_LORA_TARGETS` that finds layers
    in the blocks: a ViT's ``qkv`` projections, a CNN's dense (``groups == 1``) convolutions and Linear layers. The
    stem, the neck and the classification head are never targets (the head trains fully, see :func:`apply_lora`).

    Args:
        model: a model :func:`warmstart.describe_blocks` understands.

    Returns:
        Targets in peft's ``target_modules`` form: a list of layer names or name suffixes (``["query", "key",
        "value"]``, ``["qkv"]``, or full names such as ``["timm_model.layer1.0.conv1", ...]`` where suffixes would
        also match layers outside the blocks). A ``str`` would be a regex; the tables here do not need one.

    Raises:
        WarmstartError: the architecture has no entry, or no layer to adapt.
    """
    if _timm_inner(model) is not None:
        return _timm_targets(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in TEXT_LORA_TARGETS:
        raise WarmstartError(
            f"no default LoRA target modules for model_type {model_type!r} (known: {', '.join(TEXT_LORA_TARGETS)}): "
            f"pass --lora_target_modules, e.g. from the layers {_candidates(model)}"
        )
    return list(TEXT_LORA_TARGETS[model_type])


def _policy_targets(entries: list[str] | None) -> list[str] | str | None:
    """``--lora_target_modules`` in peft's form: one value with regex characters is a regex (peft takes a ``str`` as
    a regex, fully matched against module names); otherwise a list of names or name suffixes."""
    if not entries:
        return None
    if len(entries) == 1 and _REGEX_CHARACTERS.intersection(entries[0]):
        return entries[0]
    return list(entries)


def _matches(target: str, name: str, *, regex: bool) -> bool:
    # peft's own rules (peft.tuners.tuners_utils.check_target_module_exists), so that this check and peft agree
    return bool(re.fullmatch(target, name)) if regex else name == target or name.endswith("." + target)


def _check_targets(model: nn.Module, targets: list[str] | str, head_modules: list[str]) -> None:
    """Refuses, on one line, targets that match no adaptable layer outside the head, or match a layer LoRA cannot
    adapt. peft only fails when nothing at all matches, so a misspelt entry of a list would go unnoticed."""
    regex = isinstance(targets, str)
    if regex:
        try:
            re.compile(targets)
        except re.error as err:
            raise WarmstartError(f"--lora_target_modules {targets!r} is not a valid regex ({err})") from None
    modules = [(name, module) for name, module in model.named_modules() if name and not _within(name, head_modules)]
    for target in [targets] if regex else targets:
        matched = [(name, module) for name, module in modules if _matches(target, name, regex=regex)]
        if not matched:
            raise WarmstartError(
                f"--lora_target_modules {target!r} matches no layer of {type(model).__name__} outside its "
                f"classification head: give layer names or name suffixes, e.g. {_candidates(model, head_modules)}"
            )
        unsupported = [(name, module) for name, module in matched if not _is_adaptable(module)]
        if unsupported:
            name, module = unsupported[0]
            raise WarmstartError(
                f"--lora_target_modules {target!r} matches {name} (a {type(module).__name__}), which LoRA cannot "
                f"adapt: target Linear or Conv layers, e.g. {_candidates(model, head_modules)}"
            )


def _head_modules(model: nn.Module, layout: BlockLayout) -> list[str]:
    """The modules holding the head's parameters (``timm_model.fc.weight`` -> ``timm_model.fc``), model order."""
    modules = list(dict.fromkeys(name.rpartition(".")[0] for name in layout.head))
    if "" in modules:
        raise WarmstartError(
            f"the head of {type(model).__name__} has parameters outside any sub-module, which LoRA cannot train"
        )
    return modules


def apply_lora(model: nn.Module, policy: FreezePolicy, layout: BlockLayout | None = None) -> nn.Module:
    """Wraps ``model`` with LoRA adapters (peft), for training with a transformers ``Trainer``.

    The backbone is frozen; low-rank adapters are added to the target layers and the classification head trains
    fully (peft's ``modules_to_save``: a trainable copy of the head, saved with the adapter). Frozen BatchNorm layers
    stay in eval mode through every ``model.train()``. ``model`` itself is modified: peft puts the adapters into its
    module tree.

    Args:
        model: a model :func:`warmstart.describe_blocks` understands (a TimmWrapper, a timm model or a BERT-family
            sequence classifier).
        policy: ``lora_r``, ``lora_alpha``, ``lora_dropout`` and ``lora_target_modules``: layer names or name
            suffixes (``["query", "value"]``), or a single regex (``[".*attn\\.qkv"]``), fully matched against
            module names as peft does; ``None``: :func:`default_lora_targets`.
        layout: the model's :class:`BlockLayout` (its head is what trains fully); ``None``: computed here.

    Returns:
        The ``peft.PeftModel``; its forward takes the same arguments as ``model`` (``pixel_values`` or
        ``input_ids``, ``labels``) and returns the same outputs, loss included.

    Raises:
        WarmstartError: peft is not installed, or the target modules match no layer (or one LoRA cannot adapt).
    """
    peft = _import_peft()
    layout = layout if layout is not None else freezing.describe_blocks(model)
    head_modules = _head_modules(model, layout)
    targets = _policy_targets(policy.lora_target_modules) or default_lora_targets(model)
    _check_targets(model, targets, head_modules)
    config = peft.LoraConfig(
        r=policy.lora_r,
        lora_alpha=policy.lora_alpha,
        lora_dropout=policy.lora_dropout,
        target_modules=targets,
        modules_to_save=head_modules,
        bias="none",
    )
    try:
        peft_model = peft.get_peft_model(model, config)
    except ValueError as err:  # anything the checks above did not foresee, still on one line
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WarmstartError(f"peft cannot add LoRA adapters to {type(model).__name__}: {first_line[:200]}") from None

    # peft's defaults already train just these; stated here because optimizer groups and reports rely on it. The
    # shared freezing mechanism also keeps frozen BatchNorm in eval mode through model.train(): its statistics must
    # not move, or the adapter saved alone (which holds no BatchNorm buffers) would not reproduce the trained model.
    trainable = {n for n, _ in peft_model.named_parameters() if _is_lora_parameter(n) or ".modules_to_save." in n}
    freezing.set_trainable(peft_model, trainable, hold_batchnorm=policy.holds_batchnorm_stats)
    return peft_model


def _is_lora_parameter(name: str) -> bool:
    return any(part.startswith("lora_") for part in name.split("."))


def _is_peft_model(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # without peft nothing can be a peft model
        return False
    return isinstance(model, PeftModel)


def merge_lora(model: nn.Module) -> nn.Module:
    """Folds the LoRA adapters into the weights and returns the plain model, as if it had never been wrapped.

    The head comes from the trained ``modules_to_save`` copy. The result has the original model's class, state dict
    keys and save functions (:func:`warmstart.save_image_model`, :func:`warmstart.save_text_model`), and loads
    without peft.

    Args:
        model: the model :func:`apply_lora` returned, or any other model (returned unchanged).

    Returns:
        The merged base model, or ``model`` itself when it is not a peft model.
    """
    if not _is_peft_model(model):
        return model
    # a plain model trains everything and holds nothing in eval mode, as if it had never been wrapped
    freezing.set_trainable(model, {name for name, _ in model.named_parameters()})
    # safe_merge: a diverged adapter (NaN or inf) raises instead of silently corrupting the saved weights
    return model.merge_and_unload(safe_merge=True)


def save_lora_adapter(model: nn.Module, directory: str | Path) -> None:
    """Saves the adapter alone: ``adapter_config.json`` and ``adapter_model.safetensors`` (the LoRA weights and the
    trained head), loadable onto the original backbone with ``peft.PeftModel.from_pretrained(base, directory)``.

    Raises:
        WarmstartError: ``model`` is not a peft model.
    """
    if not _is_peft_model(model):
        raise WarmstartError(
            f"save_lora_adapter needs the model apply_lora returned, got a {type(model).__name__} (already merged?)"
        )
    model.save_pretrained(str(directory), safe_serialization=True)


# Name parts peft puts between a module and its parameters: the wrapped layer, the head's original and copies.
_WRAPPER_PARTS = frozenset({"base_layer", "original_module"})


def base_parameter_name(name: str) -> str:
    """The base-model parameter that a parameter of a peft-wrapped model adapts, copies or is.

    Examples:
        ``base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight`` ->
        ``bert.encoder.layer.0.attention.self.query.weight`` (an adapter: the weight it adapts);
        ``base_model.model.classifier.modules_to_save.default.weight`` -> ``classifier.weight`` (the head's trained
        copy; ``original_module`` likewise); ``...query.base_layer.weight`` -> ``...query.weight``. A name of an
        unwrapped model is returned unchanged.

    Args:
        name: a name from ``PeftModel.named_parameters()`` (or from its base model's, without the prefix).

    Returns:
        The parameter name in the model :func:`apply_lora` was given, as :class:`BlockLayout` lists it.
    """
    parts = name.removeprefix("base_model.model.").split(".")
    kept: list[str] = []
    i = 0
    while i < len(parts):
        part = parts[i]
        if part.startswith("lora_"):
            # lora_A.<adapter>.weight, lora_embedding_A.<adapter>, lora_magnitude_vector.<adapter>.weight adapt the
            # layer's weight; lora_B.<adapter>.bias (peft's lora_bias) adapts its bias
            return ".".join([*kept, "bias" if parts[i + 2 :] == ["bias"] else "weight"])
        if part == "modules_to_save":
            i += 2  # "modules_to_save.<adapter>"
            continue
        if part not in _WRAPPER_PARTS:
            kept.append(part)
        i += 1
    return ".".join(kept)
