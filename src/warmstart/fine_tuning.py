"""A policy turned into what the HF Trainer needs: the model (LoRA-wrapped where asked), an optimizer with parameter
groups (discriminative learning rates, layer-wise decay, no weight decay on biases and norms) and callbacks for
schedules that change what trains during the run (gradual unfreezing, LP-FT).

Every parameter that will ever train is in the optimizer from the first step. Until its stage it has no gradient
(``requires_grad`` off), so the optimizer skips it: no update, no weight decay, no state. Learning rates live in the
optimizer's groups, so every Trainer scheduler honours them (timm's ``lr_scale`` is read only by timm's schedulers).

Example:
    >>> tuning = prepare_fine_tuning(model, FreezePolicy("gradual", unfreeze_every=1, layer_lr_decay=0.8), args)
    >>> trainer = Trainer(args=args, train_dataset=train, **tuning.trainer_kwargs())
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from warmstart.errors import WarmstartError
from warmstart.freezing import (
    BlockLayout,
    FreezeReport,
    describe_blocks,
    freeze_report,
    held_in_eval,
    last_stage,
    set_trainable,
    trainable_parameter_names,
)
from warmstart.plan import change_training
from warmstart.policy import FreezePolicy

logger = logging.getLogger("warmstart")


@dataclass
class GroupSummary:
    """One optimizer parameter group, as logged and saved in the run's config."""

    name: str
    lr: float
    weight_decay: float
    num_params: int


def _identity(name: str) -> str:
    return name


def layer_lr_scales(layout: BlockLayout, policy: FreezePolicy) -> dict[str, float]:
    """The learning-rate factor of each layout group: block ``i`` of ``n`` (1-based, bottom up) gets
    ``d ** (n - i)``, the stem ``d ** n``, the neck 1 and the head ``head_lr_multiplier``."""
    n, d = len(layout.blocks), policy.layer_lr_decay
    scales = {"stem": d**n, "neck": 1.0, "head": policy.head_lr_multiplier}
    scales.update({f"blocks.{i}": d ** (n - 1 - i) for i in range(n)})
    return scales


def _no_weight_decay(model: nn.Module) -> set[str]:
    """Names timm models exempt from weight decay beyond biases and norms (position embeddings, class tokens)."""
    inner = getattr(model, "timm_model", None)
    exempt = getattr(inner, "no_weight_decay", None)
    return {f"timm_model.{name}" for name in exempt()} if callable(exempt) else set()


def build_param_groups(
    model: nn.Module,
    layout: BlockLayout,
    policy: FreezePolicy,
    names: set[str],
    learning_rate: float,
    weight_decay: float,
    base_name: Callable[[str], str] = _identity,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for the parameters in ``names``, bottom to top.

    Args:
        model: the model whose parameters are grouped (possibly LoRA-wrapped).
        layout: the layout of the unwrapped model.
        policy: gives ``layer_lr_decay`` and ``head_lr_multiplier``.
        names: the parameters that ever train.
        learning_rate: the base learning rate.
        weight_decay: applied to matrices and convolution kernels; never to biases, norm weights, or what timm
            exempts (position embeddings, class tokens).
        base_name: maps a parameter name of ``model`` to the layout's name (for LoRA's wrapped names).

    Returns:
        Groups for a torch optimizer, each with ``params``, ``lr``, ``weight_decay`` and a ``name``.
    """
    group_of = {member: group for group, members in layout.groups() for member in members}
    scales = layer_lr_scales(layout, policy)
    exempt = _no_weight_decay(model)
    order = [group for group, _ in layout.groups()]
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if name not in names:
            continue
        base = base_name(name)
        group = group_of.get(base)
        if group is None:
            raise WarmstartError(f"parameter {name} is in no block group of the model: cannot set its learning rate")
        decays = param.ndim > 1 and base not in exempt
        buckets.setdefault((group, decays), []).append(param)
    groups = []
    for (group, decays), params in sorted(buckets.items(), key=lambda item: (order.index(item[0][0]), item[0][1])):
        groups.append(
            {
                "params": params,
                "lr": learning_rate * scales[group],
                "weight_decay": weight_decay if decays else 0.0,
                "name": group if decays else f"{group}/no_decay",
            }
        )
    return groups


def _summaries(groups: list[dict[str, Any]]) -> list[GroupSummary]:
    return [GroupSummary(g["name"], g["lr"], g["weight_decay"], sum(p.numel() for p in g["params"])) for g in groups]


class UnfreezeSchedule(TrainerCallback):
    """Changes what trains as the run goes: gradual unfreezing (ULMFiT) or LP-FT.

    The stage is computed from the Trainer's state (epoch or global step) at the start of every optimizer step, so
    it is right after a resume from a checkpoint and always falls on an optimizer-step boundary, whatever the
    gradient accumulation. For LP-FT, the fine-tuning phase scales every group's base learning rate by
    ``finetune_lr_multiplier`` inside the Trainer's scheduler, so the schedule's shape is kept.
    """

    def __init__(
        self, model: nn.Module, policy: FreezePolicy, layout: BlockLayout, names_at: Callable[[int], set[str]]
    ):
        self.model, self.policy, self.layout, self.names_at = model, policy, layout, names_at
        self.stage: int | None = None
        self.history: list[tuple[int, int, list[str]]] = []  # (global step, stage, training groups)

    def stage_at(self, epoch: float, global_step: int) -> int:
        if self.policy.strategy == "lp_ft":  # a solved probe was fitted before the run: all of it fine-tunes
            return 1 if self.policy.probe_solver == "lbfgs" else int(epoch + 1e-9 >= self.policy.probe_epochs)
        progress = epoch if self.policy.unfreeze_unit == "epochs" else global_step
        return min(int(math.floor(progress / self.policy.unfreeze_every + 1e-9)), last_stage(self.policy, self.layout))

    def _apply(self, state: Any, lr_scheduler: Any = None, optimizer: Any = None) -> None:
        stage = self.stage_at(state.epoch or 0.0, state.global_step)
        if stage == self.stage:
            return
        self.stage = stage
        held = set_trainable(self.model, self.names_at(stage), hold_batchnorm=self.policy.holds_batchnorm_stats)
        report = freeze_report(self.model, self.policy, self.layout, held)
        self.history.append((state.global_step, stage, report.trainable_groups))
        logger.info(
            "step %d: stage %d, training %s (%s parameters)",
            state.global_step,
            stage,
            ", ".join(report.trainable_groups),
            f"{report.trainable_params:,}",
        )
        if self.policy.strategy == "lp_ft" and self.policy.finetune_lr_multiplier != 1.0:
            _scale_base_lrs(lr_scheduler, optimizer, self.policy.finetune_lr_multiplier if stage >= 1 else 1.0)

    def on_train_begin(self, args, state, control, lr_scheduler=None, optimizer=None, **kwargs):
        self.stage = None
        self._apply(state, lr_scheduler, optimizer)

    def on_step_begin(self, args, state, control, lr_scheduler=None, optimizer=None, **kwargs):
        self._apply(state, lr_scheduler, optimizer)

    def on_epoch_begin(self, args, state, control, **kwargs):
        training = {name for name, p in self.model.named_parameters() if p.requires_grad}
        groups = [g for g, members in self.layout.groups() if training.intersection(members)]
        logger.info("epoch %.2f: training %s", state.epoch or 0.0, ", ".join(groups))


def _scale_base_lrs(lr_scheduler: Any, optimizer: Any, factor: float) -> None:
    """Sets every group's base learning rate to ``initial_lr * factor`` in a LambdaLR-style scheduler (all of the
    Trainer's, but reduce-on-plateau), and its current rate to match."""
    if lr_scheduler is None or not hasattr(lr_scheduler, "base_lrs") or not hasattr(lr_scheduler, "lr_lambdas"):
        raise WarmstartError(
            "--finetune_lr_multiplier needs one of the Trainer's lambda schedulers (linear, cosine, "
            "constant, ...), not reduce_lr_on_plateau"
        )
    groups = lr_scheduler.optimizer.param_groups
    lr_scheduler.base_lrs = [g["initial_lr"] * factor for g in groups]
    for group, base, fn in zip(groups, lr_scheduler.base_lrs, lr_scheduler.lr_lambdas):
        group["lr"] = base * fn(lr_scheduler.last_epoch)


class LogParamGroups(TrainerCallback):
    """Logs each optimizer group's learning rate and weight decay at the first step."""

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if state.global_step == 0 and optimizer is not None and state.is_world_process_zero:
            for group in optimizer.param_groups:
                logger.info(
                    "param group %-18s lr %.3g  weight decay %g  %s parameters",
                    group.get("name", "?"),
                    group["lr"],
                    group["weight_decay"],
                    f"{sum(p.numel() for p in group['params']):,}",
                )


@dataclass
class FineTuning:
    """What :func:`prepare_fine_tuning` returns: hand ``trainer_kwargs()`` to the ``Trainer``."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    callbacks: list[TrainerCallback]
    report: FreezeReport
    groups: list[GroupSummary] = field(default_factory=list)

    def trainer_kwargs(self) -> dict[str, Any]:
        return {"model": self.model, "optimizers": (self.optimizer, None), "callbacks": list(self.callbacks)}

    def groups_as_dicts(self) -> list[dict[str, Any]]:
        return [asdict(g) for g in self.groups]


def prepare_fine_tuning(model: nn.Module, policy: FreezePolicy, training_args: TrainingArguments) -> FineTuning:
    """Applies a policy for a whole Trainer run, in one call.

    Args:
        model: a timm (TimmWrapper) or BERT-family classifier that :func:`describe_blocks` understands.
        policy: the fine-tuning policy.
        training_args: gives the learning rate, weight decay and ``--optim`` (the optimizer class); for scheduled
            policies under DDP, ``ddp_find_unused_parameters`` is turned on (not-yet-unfrozen blocks get no
            gradient).

    Returns:
        A :class:`FineTuning`: the model (LoRA-wrapped for ``lora``), the optimizer with its parameter groups, the
        callbacks (schedule, group logging) and the report of what trains at the start.

    Raises:
        WarmstartError: the layout is unknown, a setting does not fit the model, or peft is missing for lora.
    """
    layout = describe_blocks(model)
    base_name = _identity
    if policy.strategy == "lora":
        from warmstart import lora

        model = lora.apply_lora(model, policy, layout)
        base_name = lora.base_parameter_name
        ever = {n for n, p in model.named_parameters() if p.requires_grad}
        held = held_in_eval(model)
        names_at = None
    else:
        ever = trainable_parameter_names(model, policy, layout, stage=None)

        def names_at(stage: int) -> set[str]:
            return trainable_parameter_names(model, policy, layout, stage)

        held = set_trainable(model, names_at(0), hold_batchnorm=policy.holds_batchnorm_stats)
    report = freeze_report(model, policy, layout, held, base_name)

    groups = build_param_groups(
        model, layout, policy, ever, training_args.learning_rate, training_args.weight_decay, base_name
    )
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
    optimizer = optimizer_cls(groups, **optimizer_kwargs)
    callbacks: list[TrainerCallback] = [LogParamGroups()]
    if policy.spec.scheduled:
        # DDP registers the parameters that require grad when it wraps the model, and must see every one that will
        # ever train; the schedule then switches the not-yet ones off at the first step, which DDP allows only
        # when told that some parameters may get no gradient.
        held = set_trainable(model, ever, hold_batchnorm=policy.holds_batchnorm_stats)
        change_training(training_args, "a schedule trains more parameters later", ddp_find_unused_parameters=True)
        callbacks.append(UnfreezeSchedule(model, policy, layout, names_at))
        report = freeze_report(model, policy, layout, held)  # over the run: everything that trains at some stage
    return FineTuning(model=model, optimizer=optimizer, callbacks=callbacks, report=report, groups=_summaries(groups))
