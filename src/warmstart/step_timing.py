"""Timing a few real training steps of a model, for the automatic speed choices (precision, memory layout).

A proxy can point the wrong way: on an AMD EPYC with AVX512-BF16 a 512x512 matmul ran 2x faster in bf16 while an
EfficientNet-Lite0 training step at 64 px ran 1.9x slower in it (depthwise convolutions), and a resnet18 forward pass
in ``channels_last`` gained 1.35x at 224 px where its training step gained 1.13x-1.19x. So these choices time the
thing itself: forward, backward and an optimizer step of this model at the training batch shape, in each variant.

The timing runs on a copy of the model with a throwaway optimizer, inside :func:`torch.random.fork_rng`: the model's
weights, buffers (BatchNorm statistics), train / eval modes and ``requires_grad`` flags, and torch's random states,
are exactly as they were, so a seeded run stays bit-reproducible.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# A text batch's length when none is given: the common fine-tuning length and masked-LM block size. Classification
# batches are padded to their longest text, often shorter; bf16 gains a little more on longer sequences.
DEFAULT_SEQUENCE_LENGTH = 128
# One slow step (a large batch on a CPU) must not make the measurement cost minutes: after the warm-up and one timed
# round, no further round starts once this many seconds have passed.
TIMING_BUDGET_S = 5.0
# The throwaway optimizer's step size: small, so that the copy's weights stay in range over a few steps (a weight
# drifting into denormals would slow a variant down for a reason training never meets).
_TIMING_LR = 1e-6


@dataclass(frozen=True)
class StepSetup:
    """How one timed variant runs a training step.

    Attributes:
        autocast: the autocast dtype (``torch.bfloat16``), or ``None`` for plain fp32 (TF32 where it is on).
        channels_last: the model and the image batch in ``channels_last`` memory format.
    """

    autocast: torch.dtype | None = None
    channels_last: bool = False


def example_inputs(
    model: nn.Module, modality: str, shape: Sequence[int], *, vocab_size: int | None = None
) -> dict[str, torch.Tensor] | torch.Tensor:
    """A random batch of the kind ``model`` trains on, seeded, without touching torch's global generator.

    Args:
        model: a transformers model (called with keywords: its ``main_input_name``) or a plain module (called with
            the image tensor).
        modality: ``image`` or ``text``.
        shape: ``(batch, channels, height, width)`` for images, ``(batch, tokens)`` for text.
        vocab_size: text: token ids are drawn below this (default: the model config's ``vocab_size``).

    Returns:
        The keyword arguments of the forward, or the image tensor for a plain module.
    """
    generator = torch.Generator().manual_seed(0)
    if modality == "text":
        vocab = vocab_size or getattr(getattr(model, "config", None), "vocab_size", None) or 100
        ids = torch.randint(0, vocab, tuple(shape), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    pixels = torch.randn(*shape, generator=generator)
    name = getattr(model, "main_input_name", None)
    return {name: pixels} if name else pixels


def time_training_steps(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor] | torch.Tensor,
    setups: Mapping[str, StepSetup],
    *,
    device: torch.device | str | None = None,
    repeats: int = 3,
    budget_s: float = TIMING_BUDGET_S,
) -> dict[str, float]:
    """Seconds per training step of ``model`` on ``inputs`` in each of ``setups``, the model left as it was.

    A copy of the model, in train mode as the Trainer runs it, takes the steps with a throwaway AdamW over the
    parameters that require grad (all of them if none do): forward under the setup's autocast, a loss (the model's
    own, else the mean of its first output), backward, optimizer step. Each setup runs one untimed step first (kernel
    selection, allocator warm-up), then up to ``repeats`` timed steps interleaved with the others, in alternating
    order; the fastest counts, since anything else sharing the machine only ever makes a step slower. No round starts
    after ``budget_s``.

    Args:
        model: the model to time; not modified.
        inputs: from :func:`example_inputs`.
        setups: the variants to compare, by name.
        device: where the steps run (default: where the model's parameters are).
        repeats: timed rounds at most.
        budget_s: seconds after which no further round starts (the first always runs).

    Returns:
        ``{name: seconds of the fastest step}`` for each setup.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    best = dict.fromkeys(setups, float("inf"))
    # fork_rng: dropout masks and random ops of the steps draw from torch's generators, which the run's seed owns
    with torch.random.fork_rng(devices=cuda), torch.enable_grad():
        layouts = {setup.channels_last for setup in setups.values()}
        copies = {layout: _trainable_copy(model, device, layout) for layout in layouts}
        batches = {layout: _to_device(inputs, device, layout) for layout in layouts}

        def step(setup: StepSetup) -> float:
            replica, optimizer = copies[setup.channels_last]
            return _timed_step(replica, optimizer, batches[setup.channels_last], setup, device)

        began = time.perf_counter()
        for setup in setups.values():
            step(setup)
        order = list(setups.items())
        for round_ in range(repeats):
            if round_ and time.perf_counter() - began > budget_s:
                break
            # every other round in reverse: a step that runs right after another (warm caches, a busy allocator)
            # must not favour one variant each time
            for name, setup in order if round_ % 2 == 0 else reversed(order):
                best[name] = min(best[name], step(setup))
        copies.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the copies' memory goes back before the Trainer places the model
    return best


def _timed_step(model: nn.Module, optimizer: Any, inputs: Any, setup: StepSetup, device: torch.device) -> float:
    """Seconds of one training step as the Trainer takes it: forward and loss under autocast, backward and the
    optimizer step outside it."""
    start = time.perf_counter()
    autocast = torch.autocast(device.type, dtype=setup.autocast) if setup.autocast else contextlib.nullcontext()
    with autocast:
        loss = _loss(_call(model, inputs))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _trainable_copy(model: nn.Module, device: torch.device, channels_last: bool) -> tuple[nn.Module, Any]:
    replica = copy.deepcopy(model).to(device)
    if channels_last:
        replica.to(memory_format=torch.channels_last)
    replica.train()
    params = [p for p in replica.parameters() if p.requires_grad]
    if not params:  # a model frozen whole still trains something once its policy is applied: time all of it
        params = list(replica.parameters())
        for p in params:
            p.requires_grad_(True)
    return replica, torch.optim.AdamW(params, lr=_TIMING_LR)


def _to_device(inputs: Mapping[str, torch.Tensor] | torch.Tensor, device: torch.device, channels_last: bool) -> Any:
    def move(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(device)
        if channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    if isinstance(inputs, torch.Tensor):
        return move(inputs)
    return {name: move(value) for name, value in inputs.items()}


def _call(model: nn.Module, inputs: Mapping[str, torch.Tensor] | torch.Tensor) -> Any:
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def _loss(outputs: Any) -> torch.Tensor:
    """The model's own loss, else the mean of its first output: the backward runs through the same graph either way
    (a classification loss costs next to nothing beside it)."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
    if loss is not None:
        return loss
    if isinstance(outputs, Mapping):
        outputs = list(outputs.values())
    if isinstance(outputs, (tuple, list)):
        outputs = next(o for o in outputs if isinstance(o, torch.Tensor) and o.is_floating_point())
    return outputs.float().mean()
