"""Freezing policies: which parts of a pretrained backbone train, applied by one function to timm and BERT models.

A model is seen as an ordered list of parameter groups, ``stem -> blocks.0 .. blocks.N-1 -> neck -> head``. The
layout is read from data, never from ``if`` branches per architecture: timm models describe themselves through
``group_matcher()`` and ``pretrained_cfg["classifier"]``; BERT-family encoders through the small table
:data:`TEXT_LAYOUTS`, keyed by ``config.model_type``.

Example:
    >>> report = apply_freeze_policy(model, FreezePolicy("top_k", top_k=2))
    >>> report.trainable_params, report.frozen_groups
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from warmstart.errors import WarmstartError
from warmstart.policy import FreezePolicy

# timm's group_matcher marks a pattern with this suffix to merge it into the group before it (a ViT's final norm
# belongs with its last block): the same constant as timm.models._manipulate.MATCH_PREV_GROUP.
_MATCH_PREV_GROUP = (99999,)


@dataclass
class BlockLayout:
    """A model's parameter names in order from input to output."""

    stem: list[str] = field(default_factory=list)
    blocks: list[list[str]] = field(default_factory=list)
    neck: list[str] = field(default_factory=list)
    head: list[str] = field(default_factory=list)

    def groups(self) -> list[tuple[str, list[str]]]:
        """Named groups, bottom to top; empty ones are left out."""
        named = [("stem", self.stem)] + [(f"blocks.{i}", names) for i, names in enumerate(self.blocks)]
        named += [("neck", self.neck), ("head", self.head)]
        return [(name, names) for name, names in named if names]


@dataclass
class FreezeReport:
    """What :func:`apply_freeze_policy` did."""

    policy: dict[str, Any]
    trainable_params: int
    total_params: int
    trainable_groups: list[str]
    frozen_groups: list[str]
    num_blocks: int
    frozen_batchnorm_layers: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        share = 100.0 * self.trainable_params / max(self.total_params, 1)
        return (
            f"{self.policy['strategy']}: {self.trainable_params:,} of {self.total_params:,} parameters train "
            f"({share:.2f}%); frozen: {', '.join(self.frozen_groups) or 'nothing'}"
        )


@dataclass(frozen=True)
class TextLayout:
    """Where the stem, the blocks and the neck of a BERT-family encoder are, as regexes on parameter names relative
    to the base model (``model.base_model_prefix``). Everything outside the base model is the task head."""

    stem: str
    blocks: str
    neck: str | None = None


_BERT_LIKE = TextLayout(stem=r"embeddings\.", blocks=r"encoder\.layer\.(\d+)\.", neck=r"pooler\.")
TEXT_LAYOUTS: dict[str, TextLayout] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "camembert": _BERT_LIKE,
    "electra": TextLayout(stem=r"embeddings\.|embeddings_project\.", blocks=r"encoder\.layer\.(\d+)\."),
    "distilbert": TextLayout(stem=r"embeddings\.", blocks=r"transformer\.layer\.(\d+)\."),
    "deberta": TextLayout(stem=r"embeddings\.|encoder\.rel_embeddings\.", blocks=r"encoder\.layer\.(\d+)\."),
    "deberta-v2": TextLayout(
        stem=r"embeddings\.|encoder\.rel_embeddings\.|encoder\.LayerNorm\.|encoder\.conv\.",
        blocks=r"encoder\.layer\.(\d+)\.",
    ),
    "mpnet": TextLayout(
        stem=r"embeddings\.|encoder\.relative_attention_bias\.", blocks=r"encoder\.layer\.(\d+)\.", neck=r"pooler\."
    ),
    "modernbert": TextLayout(stem=r"embeddings\.", blocks=r"layers\.(\d+)\.", neck=r"final_norm\."),
}


def _timm_model(model: nn.Module) -> nn.Module | None:
    """The timm model inside ``model`` (itself, or the one a transformers TimmWrapper holds), else ``None``."""
    inner = getattr(model, "timm_model", model)
    return inner if hasattr(inner, "group_matcher") and hasattr(inner, "pretrained_cfg") else None


def _timm_layout(model: nn.Module, timm_model: nn.Module) -> BlockLayout:
    prefix = "timm_model." if timm_model is not model else ""
    classifier = timm_model.pretrained_cfg.get("classifier") or ()
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    matcher = timm_model.group_matcher(coarse=True)
    if not isinstance(matcher, dict):
        raise WarmstartError(
            f"{type(timm_model).__name__} does not describe its blocks as a dict group_matcher; "
            "use --freeze_strategy full with this model"
        )
    compiled = []  # (regex, ordinal of the matcher key, suffix), in the order timm tries them
    for ordinal, (key, spec) in enumerate(matcher.items()):
        specs = spec if isinstance(spec, (list, tuple)) else [(spec, None)] if spec else []
        compiled += [(re.compile(regex), key, ordinal, suffix) for regex, suffix in specs]

    layout = BlockLayout()
    by_ordinal: dict[tuple[float, ...], list[str]] = {}
    merge_prev: list[str] = []
    for name, _ in timm_model.named_parameters():
        full_name = prefix + name
        if any(name == c or name.startswith(c + ".") for c in classifiers):
            layout.head.append(full_name)
            continue
        for regex, key, ordinal, suffix in compiled:
            found = regex.match(name)
            if not found:
                continue
            if key == "stem":
                layout.stem.append(full_name)
            elif suffix == _MATCH_PREV_GROUP:
                merge_prev.append(full_name)
            else:
                parts = (ordinal, *(float(g) for g in found.groups() if g is not None), *(suffix or ()))
                by_ordinal.setdefault(parts, []).append(full_name)
            break
        else:
            layout.neck.append(full_name)  # pooling norms, conv heads: pretrained, above the blocks, not the head
    layout.blocks = [by_ordinal[k] for k in sorted(by_ordinal)]
    if merge_prev:
        if layout.blocks:
            layout.blocks[-1].extend(merge_prev)
        else:
            layout.neck.extend(merge_prev)
    return layout


def _text_layout(model: nn.Module) -> BlockLayout:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    table = TEXT_LAYOUTS.get(model_type)
    if table is None:
        raise WarmstartError(
            f"no block layout for model_type {model_type!r}: supported are {', '.join(sorted(TEXT_LAYOUTS))}; "
            "use --freeze_strategy full with this model"
        )
    prefix = model.base_model_prefix + "."
    stem, blocks, neck = re.compile(table.stem), re.compile(table.blocks), re.compile(table.neck or r"(?!)")
    layout = BlockLayout()
    by_index: dict[int, list[str]] = {}
    unmapped = []
    for name, _ in model.named_parameters():
        if not name.startswith(prefix):
            layout.head.append(name)
            continue
        inner = name[len(prefix) :]
        if stem.match(inner):
            layout.stem.append(name)
        elif found := blocks.match(inner):
            by_index.setdefault(int(found.group(1)), []).append(name)
        elif neck.match(inner):
            layout.neck.append(name)
        else:
            unmapped.append(name)
    if unmapped:
        raise WarmstartError(f"the {model_type} layout table does not place {unmapped[0]}: update TEXT_LAYOUTS")
    layout.blocks = [by_index[i] for i in sorted(by_index)]
    return layout


def describe_blocks(model: nn.Module) -> BlockLayout:
    """Splits a model's parameters into stem, blocks, neck and head.

    Args:
        model: a timm model, a transformers ``TimmWrapperForImageClassification``, or a BERT-family
            ``...ForSequenceClassification`` whose ``model_type`` is in :data:`TEXT_LAYOUTS`.

    Returns:
        The :class:`BlockLayout`, with every parameter name in exactly one group.

    Raises:
        WarmstartError: the model's layout is unknown.
    """
    timm_model = _timm_model(model)
    layout = _timm_layout(model, timm_model) if timm_model is not None else _text_layout(model)
    if not layout.head:
        raise WarmstartError(f"could not find the classification head of {type(model).__name__}")
    return layout


def _check_top_k(top_k: int | None, layout: BlockLayout) -> None:
    if top_k is not None and top_k > len(layout.blocks):
        raise WarmstartError(
            f"--unfreeze_top_k {top_k} is larger than the model's {len(layout.blocks)} blocks: "
            f"use 1..{len(layout.blocks)}, or --freeze_strategy full"
        )


def _top_groups(layout: BlockLayout, k: int) -> set[str]:
    """The head, and from k >= 1 the neck and the top k blocks; k beyond the blocks adds the stem."""
    n = len(layout.blocks)
    groups = {"head"}
    if k >= 1:
        groups |= {"neck"} | {f"blocks.{i}" for i in range(max(n - k, 0), n)}
    if k > n:
        groups.add("stem")
    return groups


def last_stage(policy: FreezePolicy, layout: BlockLayout) -> int:
    """The last stage of a scheduled policy (0 for fixed ones): gradual unfreezes one block group per stage, up
    to ``top_k`` blocks or, without it, every block and then the stem; lp_ft has a probe stage and a full one."""
    if policy.strategy == "gradual":
        return policy.top_k if policy.top_k is not None else len(layout.blocks) + 1
    return 1 if policy.strategy == "lp_ft" else 0


def trainable_groups(policy: FreezePolicy, layout: BlockLayout, stage: int | None = 0) -> set[str]:
    """The groups that train under ``policy`` at ``stage`` (``None``: every group that ever trains).

    Raises:
        WarmstartError: ``top_k`` exceeds the number of blocks.
    """
    _check_top_k(policy.top_k, layout)
    every = {name for name, _ in layout.groups()}
    strategy = policy.strategy
    if stage is None:
        stage = last_stage(policy, layout)
    if strategy in ("full", "bitfit", "lora"):
        return every  # bitfit and lora pick parameters inside the groups: see trainable_parameter_names
    if strategy == "head_only":
        return {"head"}
    if strategy == "top_k":
        return _top_groups(layout, policy.top_k) & every
    if strategy == "gradual":
        return _top_groups(layout, min(stage, last_stage(policy, layout))) & every
    return every if stage >= 1 else {"head"}  # lp_ft


def trainable_parameter_names(
    model: nn.Module, policy: FreezePolicy, layout: BlockLayout, stage: int | None = 0
) -> set[str]:
    """The parameters that train under ``policy`` at ``stage`` (``None``: all that ever train)."""
    groups = trainable_groups(policy, layout, stage)
    names = {name for group, members in layout.groups() if group in groups for name in members}
    if policy.strategy == "bitfit":
        # BitFit (Ben Zaken et al. 2022): only bias terms, plus the new head
        names = {n for n in names if n.endswith(".bias") or n == "bias"} | set(layout.head)
    return names


# (module, hook) pairs that keep frozen sub-trees in eval mode, per model, so a policy applied again replaces them.
_EVAL_HOOKS: weakref.WeakKeyDictionary[nn.Module, list] = weakref.WeakKeyDictionary()


def _keep_eval(module: nn.Module, _inputs: Any) -> None:
    # The Trainer calls model.train() every step; a frozen sub-tree must still run as in inference: BatchNorm
    # statistics must not drift (fastai's train_bn=False) and dropout there is noise with nothing to learn from.
    if module.training:
        module.train(False)


def _frozen_subtrees(model: nn.Module, hold_batchnorm: bool = False) -> list[nn.Module]:
    """The largest modules whose parameters are all frozen (and that have any), and every BatchNorm whose own
    affine parameters are frozen inside a module that trains (LoRA, BitFit): its statistics are part of the frozen
    function too; with ``hold_batchnorm``, every BatchNorm."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            found.append(module)
            return
        for child in module.children():
            visit(child)

    visit(model)
    inside = {id(m) for tree in found for m in tree.modules()}
    for module in model.modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or id(module) in inside:
            continue
        if hold_batchnorm or not any(p.requires_grad for p in module.parameters(recurse=False)):
            found.append(module)
    return found


def set_trainable(model: nn.Module, names: set[str], *, hold_batchnorm: bool = False) -> list[nn.Module]:
    """Makes exactly ``names`` trainable and keeps every frozen sub-tree in eval mode through ``model.train()``;
    with ``hold_batchnorm``, every BatchNorm layer too (its statistics stay; its affine weights may train).

    Returns:
        The modules held in eval mode.
    """
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    for module, handle in _EVAL_HOOKS.pop(model, []):
        handle.remove()
        module.train(model.training)  # released: back to the mode of the model (the Trainer may not call train())
    subtrees = _frozen_subtrees(model, hold_batchnorm)
    _EVAL_HOOKS[model] = [(module, module.register_forward_pre_hook(_keep_eval)) for module in subtrees]
    for module in subtrees:
        module.train(False)
    return subtrees


def held_in_eval(model: nn.Module) -> list[nn.Module]:
    """The modules :func:`set_trainable` keeps in eval mode in ``model`` now."""
    return [module for module, _ in _EVAL_HOOKS.get(model, [])]


def freeze_report(
    model: nn.Module,
    policy: FreezePolicy,
    layout: BlockLayout,
    held: list[nn.Module],
    base_name: Callable[[str], str] | None = None,
) -> FreezeReport:
    """What is trainable now, by group (``base_name`` maps a wrapped model's names to the layout's, for LoRA)."""
    params = dict(model.named_parameters())
    trainable = {(base_name or str)(name) for name, p in params.items() if p.requires_grad}
    groups = layout.groups()
    training = [g for g, members in groups if any(m in trainable for m in members)]
    return FreezeReport(
        policy=policy.to_dict(),
        trainable_params=sum(p.numel() for p in params.values() if p.requires_grad),
        total_params=sum(p.numel() for p in params.values()),
        trainable_groups=training,
        frozen_groups=[g for g, _ in groups if g not in training],
        num_blocks=len(layout.blocks),
        frozen_batchnorm_layers=sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for t in held for m in t.modules()),
    )


def apply_freeze_policy(model: nn.Module, policy: FreezePolicy, stage: int = 0) -> FreezeReport:
    """Applies a freezing policy: sets ``requires_grad`` per parameter group and keeps frozen parts in eval mode.

    Call it before the ``Trainer`` is built: the Trainer's optimizer takes only parameters that require grad, so
    frozen ones get neither gradients nor optimizer state. Frozen sub-trees stay in eval mode through every
    ``model.train()`` (BatchNorm running statistics do not move, dropout is off). Applying a policy again replaces
    the previous one. Scheduled policies (gradual, lp_ft) are applied at a ``stage``; for a whole run with the
    Trainer use :func:`warmstart.prepare_fine_tuning`, which also builds the optimizer and the schedule.

    Args:
        model: a model :func:`describe_blocks` understands.
        policy: what should train.
        stage: for gradual / lp_ft, the stage to apply (0: the start).

    Returns:
        A :class:`FreezeReport` with trainable / total parameter counts and the trainable and frozen groups.

    Raises:
        WarmstartError: the layout is unknown or ``top_k`` exceeds the number of blocks.
    """
    if policy.strategy == "lora":
        raise WarmstartError(
            "lora wraps the model in adapters: use warmstart.prepare_fine_tuning (or warmstart.lora.apply_lora)"
        )
    layout = describe_blocks(model)
    names = trainable_parameter_names(model, policy, layout, stage)
    held = set_trainable(model, names, hold_batchnorm=policy.holds_batchnorm_stats)
    return freeze_report(model, policy, layout, held)
