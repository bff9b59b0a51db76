"""Weight averaging: an exponential moving average of the weights a run trains (``--ema_decay``, as timm's
``--model-ema``), carried in every checkpoint so that a resumed run averages as an uninterrupted one, then evaluated
beside the raw weights and kept only where it is better on validation; and the uniform average of several models'
weights, the step a model soup (Wortsman et al. 2022) is made of.

Only what trains is averaged: the parameters in the optimizer and the floating buffers (BatchNorm statistics). A
frozen parameter's average is itself, so a top_k, BitFit or LoRA run keeps a copy of what it trains alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from warmstart.errors import WarmstartError

logger = logging.getLogger("warmstart")

EMA_FILE = "ema.safetensors"
# timm's ModelEmaV3 warmup power (its default): the decay of update t is 1 - (1 + t) ** -power, capped at the decay
WARMUP_POWER = 2 / 3


def check_ema_decay(decay: float | None) -> None:
    """Raises:
    WarmstartError: a decay outside (0, 1)."""
    if decay is not None and not 0.0 < decay < 1.0:
        raise WarmstartError(
            f"--ema_decay is the weight an average keeps per step, in (0, 1), got {decay:g}: e.g. 0.999 (or drop it)"
        )


def ema_decay_at(update: int, decay: float, warmup: bool = True) -> float:
    """The decay of the ``update``-th update (from 1): the first copies the weights (0); after it ``decay``, or with
    ``warmup`` timm's ``1 - (1 + t) ** -2/3`` capped at ``decay`` (t = update - 1), so that a run of a few hundred
    steps averages its recent weights instead of the ones it started from.

    Example:
        >>> ema_decay_at(1, 0.999), round(ema_decay_at(2, 0.999), 4), ema_decay_at(10**9, 0.999)
        (0.0, 0.37, 0.999)
    """
    step = update - 1
    if step <= 0:
        return 0.0
    return min(decay, 1.0 - (1.0 + step) ** -WARMUP_POWER) if warmup else decay


class WeightAverage(TrainerCallback, ExportableState):
    """An exponential moving average of a model's trained weights, updated after every optimizer step.

    What it averages is fixed when training begins: the parameters the optimizer holds (a parameter that unfreezes
    later is there from the start, at learning rate 0) and the model's floating buffers; it holds an fp32 copy of
    each. The average is written into each checkpoint (``ema.safetensors``) while the Trainer writes it, before
    ``trainer_state.json``, so a checkpoint counts as complete only with its average; ``resume_from`` reads it back.

    Args:
        model: the model the run saves (its parameters are the ones the Trainer's model trains, whatever wraps it).
        decay: in (0, 1).
        warmup: timm's warmup of the decay (:func:`ema_decay_at`).
        resume_from: the checkpoint the run resumes from, if any.
    """

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = True, resume_from: str | None = None):
        check_ema_decay(decay)
        self.model, self.decay, self.warmup, self.resume_from = model, decay, warmup, resume_from
        self.updates = 0
        self.names: list[str] = []
        self._live: list[torch.Tensor] = []
        self.shadow: list[torch.Tensor] = []
        self._checkpoint: Path | None = None
        self._raw: list[torch.Tensor] | None = None

    def tracked(self, optimizer: Any = None) -> None:
        """Chooses what is averaged (the optimizer's parameters, else those that require grad, and the floating
        buffers) and starts the average from their values now."""
        in_optimizer = (
            {id(p) for group in optimizer.param_groups for p in group["params"]} if optimizer is not None else None
        )
        names, live = [], []
        for name, param in self.model.named_parameters():
            if (id(param) in in_optimizer) if in_optimizer is not None else param.requires_grad:
                names.append(name)
                live.append(param)
        for name, buffer in self.model.named_buffers():
            if buffer.is_floating_point():
                names.append(name)
                live.append(buffer)
        self.names, self._live = names, live
        self.shadow = [t.detach().float().clone() for t in live]

    @property
    def tracked_params(self) -> int:
        return sum(t.numel() for t in self.shadow)

    @torch.no_grad()
    def update(self) -> None:
        """One update: ``average = decay * average + (1 - decay) * weights`` at this update's decay."""
        self.updates += 1
        weight = 1.0 - ema_decay_at(self.updates, self.decay, self.warmup)
        current = [t.detach().float() for t in self._live]
        torch._foreach_lerp_(self.shadow, current, weight)

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.tracked(optimizer)
        if self.resume_from:
            self._load(Path(self.resume_from))

    def on_step_end(self, args, state, control, **kwargs):
        self.update()
        # a checkpoint of this step, if one is saved, goes here (the Trainer's folder naming)
        self._checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"

    def state(self) -> dict[str, Any]:
        """The Trainer's hook into its checkpoint (called as it writes one, before ``trainer_state.json``): the
        average is written into the checkpoint folder here, and the state names the file and the update count."""
        if self._checkpoint is not None and self._checkpoint.is_dir():
            tensors = {name: t.detach().cpu().contiguous() for name, t in zip(self.names, self.shadow, strict=True)}
            partial = self._checkpoint / f".{EMA_FILE}.partial"
            save_file(tensors, str(partial), metadata={"updates": str(self.updates), "decay": repr(self.decay)})
            os.replace(partial, self._checkpoint / EMA_FILE)
        return {"args": {"decay": self.decay, "warmup": self.warmup}, "attributes": {"updates": self.updates}}

    def _load(self, checkpoint: Path) -> None:
        path = checkpoint / EMA_FILE
        if not path.is_file():
            logger.warning(
                "--ema_decay: %s holds no weight average (saved without --ema_decay): the average starts from the "
                "resumed weights", checkpoint,
            )  # fmt: skip
            return
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            updates = int((f.metadata() or {}).get("updates", 0))
        saved = load_file(str(path))
        missing = [name for name in self.names if name not in saved]
        if missing:
            raise WarmstartError(
                f"{path} averages other weights than this run trains ({len(missing)} missing, e.g. {missing[0]}): "
                "resume with the arguments the checkpoint was trained with"
            )
        for shadow, name in zip(self.shadow, self.names, strict=True):
            shadow.copy_(saved[name].to(shadow.device))
        self.updates = updates
        logger.info("weight average resumed from %s (%d updates)", path, updates)

    @torch.no_grad()
    def swap_in(self) -> None:
        """Puts the average into the model, keeping the raw weights (on the CPU) for :meth:`restore`."""
        self._raw = [t.detach().to("cpu", copy=True) for t in self._live]
        for live, shadow in zip(self._live, self.shadow, strict=True):
            live.copy_(shadow.to(live.dtype))

    @torch.no_grad()
    def restore(self) -> None:
        """Puts the raw weights back (after :meth:`swap_in`)."""
        if self._raw is None:
            return
        for live, raw in zip(self._live, self._raw, strict=True):
            live.copy_(raw.to(live.device))
        self._raw = None

    def release(self) -> None:
        """Drops the average and the kept raw weights (their memory), once the run has chosen."""
        self.shadow, self._raw, self._live = [], None, []


@contextmanager
def averaged(average: WeightAverage) -> Iterator[None]:
    """The model holds the average inside the block and its raw weights after it."""
    average.swap_in()
    try:
        yield
    finally:
        average.restore()


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform average of several models' weights (floating tensors; the others, e.g. BatchNorm's
    ``num_batches_tracked``, are the first model's), in fp32 then cast back to each tensor's dtype.

    Raises:
        WarmstartError: the models do not have the same tensors of the same shapes (another architecture).
    """
    if not states:
        raise ValueError("nothing to average")
    first = states[0]
    for i, state in enumerate(states[1:], start=1):
        differ = architecture_difference(first, state)
        if differ:
            raise WarmstartError(f"model {i + 1} of the average has another architecture than the first: {differ}")
    averaged_state = {}
    for name, tensor in first.items():
        if tensor.is_floating_point():
            total = torch.stack([state[name].float() for state in states]).mean(dim=0)
            averaged_state[name] = total.to(tensor.dtype)
        else:
            averaged_state[name] = tensor.clone()
    return averaged_state


def architecture_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> str:
    """How two state dicts differ in their tensors' names and shapes ("": they do not)."""
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        example = (only_a or only_b)[0]
        return f"{len(only_a) + len(only_b)} tensors are in one only (e.g. {example})"
    shapes = [name for name in a if tuple(a[name].shape) != tuple(b[name].shape)]
    if shapes:
        name = shapes[0]
        return f"{len(shapes)} tensors differ in shape (e.g. {name}: {tuple(a[name].shape)} vs {tuple(b[name].shape)})"
    return ""


def choose_average(
    trainer: Any, average: WeightAverage, dataset: Any, score: Any, greater_is_better: bool
) -> tuple[Any, dict[str, Any]]:
    """Evaluates the raw weights and the average on ``dataset`` (validation) and leaves the better in the model (the
    raw weights on a tie: the average must earn its place).

    Args:
        trainer: the run's Trainer (its ``predict``).
        average: the trained average.
        dataset: the validation split.
        score: the metric a prediction output is judged by (``output -> float``).
        greater_is_better: the metric's direction.

    Returns:
        The kept weights' prediction output on ``dataset``, and the record: decay, warmup, updates, the averaged
        parameter count, each one's score and which was kept (``ema`` or ``raw``).
    """
    raw = trainer.predict(dataset, metric_key_prefix="eval")
    average.swap_in()
    ema = trainer.predict(dataset, metric_key_prefix="eval")
    raw_score, ema_score = float(score(raw)), float(score(ema))
    better = ema_score > raw_score if greater_is_better else ema_score < raw_score
    if not better:
        average.restore()
    record = {
        "method": "ema",
        "decay": average.decay,
        "warmup": average.warmup,
        "updates": average.updates,
        "averaged_params": average.tracked_params,
        "score_raw": raw_score,
        "score_ema": ema_score,
        "kept": "ema" if better else "raw",
    }
    average.release()
    return (ema if better else raw), record


def batchnorm_layers_that_differ(model: nn.Module, states: Sequence[dict[str, torch.Tensor]]) -> list[str]:
    """The BatchNorm layers of ``model`` whose running statistics differ between the averaged ``states``: averaged
    weights give their layers other activations than any one model's, so the averaged statistics fit none (a
    soup of two EfficientNet-Lite0 fine-tunes scored 10 % on digits with them, 99.2 % with them recomputed). Layers
    whose statistics every model shares (frozen, or never trained) are left alone."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            key = f"{name}.running_mean" if name else "running_mean"
            if key in states[0] and any(not torch.equal(states[0][key], state[key]) for state in states[1:]):
                names.append(name)
    return names


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, layers: Sequence[str], batches: Any, max_batches: int = 200) -> int:
    """Recomputes the running statistics of the named BatchNorm layers from ``batches`` (dicts of model inputs, the
    training data), as SWA's ``update_bn`` does: reset, then a cumulative average over up to ``max_batches``
    forward passes in train mode; every other layer and the model's mode are left as they were.

    Returns:
        The number of batches seen.
    """
    modules = dict(model.named_modules())
    chosen = [modules[name] for name in layers]
    momenta = [m.momentum for m in chosen]
    for module in chosen:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average over the batches
    was_training = model.training
    model.eval()
    for module in chosen:
        module.train()
    device = next(model.parameters()).device
    seen = 0
    for batch in batches:
        if seen >= max_batches:
            break
        inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
        model(**inputs)
        seen += 1
    for module, momentum in zip(chosen, momenta, strict=True):
        module.momentum = momentum
    model.train(was_training)
    return seen


def weight_average(
    plan: Any, model: nn.Module, decay: float | None, warmup: bool, resume: str | None, untrained: bool
) -> WeightAverage | None:
    """A run's weight average (``--ema_decay``), or ``None``: not asked for, or nothing trains step by step (a solved
    head, ``--evaluate_only``; then the run says so and records it in ``plan``, its :class:`~warmstart.plan.RunPlan`).
    """
    if decay is None:
        return None
    if untrained:
        reason = "nothing trains step by step (the head is solved, or --evaluate_only)"
        logger.warning("--ema_decay %g is not used: %s", decay, reason)
        plan.decide("weight_average", {"method": "ema", "used": False, "reason": reason})
        return None
    return WeightAverage(model, decay, warmup=warmup, resume_from=resume)


def shards_weights(trainer: Any) -> bool:
    """Whether the Trainer's launch shards the weights across processes (FSDP, DeepSpeed ZeRO-3): an average of
    whole weights cannot be kept there."""
    deepspeed = getattr(trainer.args, "hf_deepspeed_config", None)
    return bool(trainer.is_fsdp_enabled or (deepspeed is not None and deepspeed.is_zero3()))


def average_markdown(record: dict[str, Any]) -> str:
    """The card's line on an exponential moving average: its settings, both scores, which weights were saved."""
    kept = "the averaged weights" if record["kept"] == "ema" else "the raw weights (the average was not better)"
    return (
        f"An exponential moving average of the trained weights (decay {record['decay']:g}"
        f"{', warmed up' if record['warmup'] else ''}, {record['updates']} updates) was evaluated beside the raw "
        f"weights on validation: {record['metric']} {record['score_ema']:.4g} averaged vs {record['score_raw']:.4g} "
        f"raw; saved: {kept}."
    )
