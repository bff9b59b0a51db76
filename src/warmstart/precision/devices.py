"""Device settings timed on the model, applied once it exists and before the ``Trainer`` is built: a precision
choice left pending is made by timing training steps in fp32 and under bf16 autocast, and what suits the device is
added: TF32 on an Ampere-or-newer GPU, ``channels_last`` for CNNs (timed the same way on a CPU), data loader workers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from warmstart.distributed import broadcast_from_main, is_main_process
from warmstart.plan import change_training
from warmstart.precision.choice import PENDING, PrecisionChoice
from warmstart.precision.hardware import NATIVE_BF16_FLAGS, cpu_flags
from warmstart.step_timing import DEFAULT_SEQUENCE_LENGTH, StepSetup, example_inputs, time_training_steps

# bf16 must win a timed training step by this much. The fastest of a few steps of one variant still varies between
# timings on a shared machine (fp32 against itself, resnet18 at 64 px on 2 busy cores: 0.88x-1.22x), while the gains
# worth having are larger (a resnet18 step on an EPYC with AVX512-BF16: 1.55x); and bf16 is not free (a run's numbers
# move a little), so a gain that noise alone could show is not taken.
BF16_MIN_SPEEDUP = 1.25
# A memory layout costs nothing in accuracy: below this gain in a timed training step a CNN stays contiguous.
CHANNELS_LAST_MIN_SPEEDUP = 1.1
# A timed CPU step takes at most this many samples: a batch this size already keeps a CPU's cores busy, so bf16's
# ratio holds for larger ones, and a step of 256 images at 224 px would make the timing cost a minute.
MAX_TIMED_CPU_BATCH = 32
# timm's "attention" modules that are convolutional gates (ResNeSt, CBAM), not attention over tokens.
CONV_ATTENTION_MODULES = ("SplitAttn", "ChannelAttn", "SpatialAttn", "LightChannelAttn", "LightSpatialAttn")
# Image decoding and augmentation rarely need more per GPU; more workers only hold memory.
MAX_LOADER_WORKERS = 8


@dataclass(frozen=True)
class DeviceFacts:
    """What the device settings depend on; :func:`device_facts` reads them from the machine.

    Attributes:
        device: the torch device type training runs on: ``cuda``, ``cpu``, ...
        cpus: CPUs this process may run on.
        local_processes: training processes on this machine, each with its own data loaders.
        tf32: the GPU can run fp32 matmuls in TF32 (Ampere or newer).
        native_bf16_flags: the CPU's flags of :data:`NATIVE_BF16_FLAGS`, named in the evidence of a timed choice.
    """

    device: str
    cpus: int
    local_processes: int = 1
    tf32: bool = False
    native_bf16_flags: tuple[str, ...] = ()


def device_facts(training_args: Any) -> DeviceFacts:
    """The :class:`DeviceFacts` of this machine, for the device that ``training_args`` trains on."""
    device = training_args.device.type
    tf32 = device == "cuda" and torch.cuda.get_device_capability(training_args.device)[0] >= 8
    return DeviceFacts(
        device=device,
        cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        local_processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        tf32=tf32,
        native_bf16_flags=tuple(flag for flag in NATIVE_BF16_FLAGS if flag in cpu_flags()),
    )


def is_cnn(model: nn.Module) -> bool:
    """Whether a model is a convolutional network, the kind ``channels_last`` speeds up.

    A CNN here has more than one ``Conv2d`` (a ViT, Swin or MLP-Mixer has just its patch-embedding stem) and no
    attention over tokens: no ``nn.MultiheadAttention`` and no class named ``*Attention*`` or ``*Attn``, other than
    the convolutional gates of :data:`CONV_ATTENTION_MODULES`. So hybrids (CoAtNet, MaxViT, MobileViT, EdgeNeXt) are
    left alone, while ResNets, EfficientNets (squeeze-excitation), ConvNeXt (``Linear`` MLPs between depthwise
    convolutions), RegNets and FastViT's RepMixer variants count.
    """
    convs = 0
    for module in model.modules():
        name = type(module).__name__
        attends = "Attention" in name or name.endswith("Attn") or isinstance(module, nn.MultiheadAttention)
        if attends and name not in CONV_ATTENTION_MODULES:
            return False
        convs += isinstance(module, nn.Conv2d)
    return convs > 1


def time_memory_formats(
    model: nn.Module, input_shape: Sequence[int], *, bf16: bool = False, repeats: int = 3
) -> dict[str, float]:
    """Seconds per training step of ``model`` in the contiguous and the ``channels_last`` layout.

    The steps (forward, backward, optimizer step, under bf16 autocast when ``bf16``, on random images) run on copies
    of the model (:func:`warmstart.step_timing.time_training_steps`), so the model comes back as it was: contiguous
    if it was, with its weights, BatchNorm statistics, modes and torch's random state unchanged.

    Args:
        model: an image model taking a ``(batch, channels, height, width)`` tensor (a transformers model: as its
            ``main_input_name``).
        input_shape: the shape of the timed batch.
        bf16: time under bf16 autocast, as training will run.
        repeats: timed steps per layout at most.

    Returns:
        ``{"contiguous": seconds, "channels_last": seconds}``.
    """
    autocast = torch.bfloat16 if bf16 else None
    setups = {
        "contiguous": StepSetup(autocast=autocast),
        "channels_last": StepSetup(autocast=autocast, channels_last=True),
    }
    return time_training_steps(model, example_inputs(model, "image", input_shape), setups, repeats=repeats)


def time_precisions(
    model: nn.Module, inputs: Any, *, device: torch.device | str | None = None, repeats: int = 3
) -> dict[str, float]:
    """Seconds per training step of ``model`` on ``inputs`` in fp32 and under bf16 autocast, the model left as it was
    (:func:`warmstart.step_timing.time_training_steps`).

    Returns:
        ``{"fp32": seconds, "bf16": seconds}``.
    """
    setups = {"fp32": StepSetup(), "bf16": StepSetup(autocast=torch.bfloat16)}
    return time_training_steps(model, inputs, setups, device=device, repeats=repeats)


def _timed_shape(
    model: nn.Module,
    training_args: Any,
    facts: DeviceFacts,
    modality: str,
    input_size: Sequence[int] | None,
    sequence_length: int | None,
) -> tuple[int, ...]:
    """The batch shape the automatic choices time: the training batch (at most ``MAX_TIMED_CPU_BATCH`` samples on a
    CPU), of the training images' size or of ``sequence_length`` tokens (default ``DEFAULT_SEQUENCE_LENGTH``, within
    the model's position limit and 512, as the recipes cap it)."""
    batch = training_args.per_device_train_batch_size
    if facts.device != "cuda":
        batch = min(batch, MAX_TIMED_CPU_BATCH)
    if modality == "text":
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        limit = min(limit, 512) if isinstance(limit, int) and limit > 0 else 512
        return (batch, min(sequence_length or DEFAULT_SEQUENCE_LENGTH, limit))
    return (batch, *(tuple(input_size) if input_size else _model_input_size(model)))


def _model_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The ``(channels, height, width)`` a timm model (or a transformers wrapper of one) was configured for."""
    for holder in (model, getattr(model, "timm_model", None), getattr(model, "config", None)):
        cfg = getattr(holder, "pretrained_cfg", None)
        if isinstance(cfg, dict) and cfg.get("input_size"):
            return tuple(cfg["input_size"])
    return (3, 224, 224)


def apply_device_settings(
    model: nn.Module,
    training_args: Any,
    performance_args: Any,
    modality: str,
    *,
    input_size: Sequence[int] | None = None,
    sequence_length: int | None = None,
    facts: DeviceFacts | None = None,
    time_formats: Callable[..., dict[str, float]] = time_memory_formats,
    time_steps: Callable[..., dict[str, float]] = time_precisions,
    broadcast: Callable[[Any], Any] = broadcast_from_main,
) -> list[str]:
    """Applies the device settings that suit this machine and this model; call it after the model is built and
    before the ``Trainer`` is.

    - Precision: what parsing resolved leads the returned lines. A choice parsing left pending (``--precision auto``
      on a CPU with native bf16 or a GPU with it) is made here: a few training steps of the model at the training
      batch shape are timed in fp32 and under bf16 autocast (``time_steps``, on the main process only, the outcome
      shared with the others through ``broadcast`` so that every process trains alike), and bf16 is taken where its
      step is ``BF16_MIN_SPEEDUP`` times faster; ``training_args`` (``bf16``, ``mixed_precision``, and ``use_cpu`` on
      a CPU) and ``performance_args`` (``resolved_precision``, ``precision_evidence``) are set to the outcome.
    - GPU: TF32 matmuls on an Ampere-or-newer GPU unless ``--tf32`` was given; ``channels_last`` for CNNs
      (:func:`is_cnn`) under ``--channels_last auto``; for image data left at ``--dataloader_num_workers 0``, one
      worker per spare CPU of this process's share (at most ``MAX_LOADER_WORKERS``); pinned memory as given (on by
      default).
    - CPU: ``channels_last`` under ``auto`` only where a timed training step of this model (``time_formats``) is
      ``CHANNELS_LAST_MIN_SPEEDUP`` times faster in it (resnet18 on a 2-core EPYC: a step gained nothing at 64 px and
      1.13x-1.19x at 224 px); data loader workers as given, 0 by default: on 2 cores one worker made the image recipe
      17% slower, its decoding taking a core from the step.
    - ``--channels_last true`` converts any model with ``Conv2d`` layers, ``false`` none.

    Args:
        model: the model to train (converted in place; the timings run on copies and leave it as it was).
        training_args: its ``TrainingArguments``; precision, worker and TF32 settings are changed in place.
        performance_args: the ``PerformanceArguments`` (``channels_last``, ``resolved_precision``, ...).
        modality: ``image`` or ``text``.
        input_size: ``(channels, height, width)`` of the training images, for the timings (default: the model's
            pretrained config, else 3 x 224 x 224).
        sequence_length: tokens per timed text example (default ``DEFAULT_SEQUENCE_LENGTH``, within the model's
            position limit).
        facts: the device; read from the machine when ``None``.
        time_formats: times a training step in each memory format (see :func:`time_memory_formats`).
        time_steps: times a training step in fp32 and bf16 (see :func:`time_precisions`).
        broadcast: the main process's value in every process (see
            :func:`warmstart.distributed.broadcast_from_main`).

    Returns:
        One human-readable line per setting, to log and record.
    """
    facts = device_facts(training_args) if facts is None else facts
    on_gpu = facts.device == "cuda"
    shape = _timed_shape(model, training_args, facts, modality, input_size, sequence_length)
    lines = []
    if on_gpu:  # before the precision is timed: fp32 is timed as it will train, in TF32
        lines.append(_apply_tf32(training_args, facts))
    layout = modality == "image" or performance_args.channels_last != "auto"
    # a layout that is not timed is set first, so that the precision is timed in it; one timed on the CPU is timed
    # in the precision training will use, so after it
    layout_timed = facts.device == "cpu" and performance_args.channels_last == "auto"
    if layout and not layout_timed:
        lines.append(_apply_channels_last(model, performance_args, facts, shape, time_formats, broadcast))
    if getattr(performance_args, "resolved_precision", None) == PENDING:
        choice = _on_main_shared(
            lambda: _time_precision(model, training_args, facts, modality, shape, time_steps), broadcast
        )
        _set_precision(choice, training_args, performance_args)
    if getattr(performance_args, "resolved_precision", None):
        lines.insert(0, f"precision: {performance_args.resolved_precision} ({performance_args.precision_evidence})")
    if layout and layout_timed:
        lines.append(_apply_channels_last(model, performance_args, facts, shape, time_formats, broadcast))
    if on_gpu:
        lines.append(_apply_loader_workers(training_args, modality, facts))
        pinned = "on" if training_args.dataloader_pin_memory else "off (as given)"
        lines.append(f"data loader: pinned memory {pinned}")
    elif training_args.dataloader_num_workers:
        lines.append(f"data loader: {training_args.dataloader_num_workers} workers (as given)")
    if training_args.torch_compile:
        lines.append(f"torch.compile: on (backend {training_args.torch_compile_backend}), by the Trainer")
    return lines


def _time_precision(
    model: nn.Module,
    training_args: Any,
    facts: DeviceFacts,
    modality: str,
    shape: tuple[int, ...],
    time_steps: Callable[..., dict[str, float]],
) -> PrecisionChoice:
    """Times fp32 against bf16 on the model and decides; a timing that fails leaves fp32, the precision that always
    runs (the run itself will meet any real fault of the model)."""
    on_cpu = facts.device != "cuda"
    native = ", ".join(facts.native_bf16_flags) or "none"
    where = f"auto on the CPU (native bf16 flags: {native})" if on_cpu else "auto on the GPU (native bf16)"
    started = time.perf_counter()
    try:
        seconds = time_steps(model, example_inputs(model, modality, shape), device=training_args.device)
    except Exception as err:  # a speed choice must not end the run (nor leave the other processes waiting)
        return PrecisionChoice("fp32", f"{where}: timing a training step failed ({_one_line(err)}), so fp32", on_cpu)
    measured = time.perf_counter() - started
    speedup = seconds["fp32"] / seconds["bf16"]
    precision = "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"
    compared = ">=" if precision == "bf16" else "<"
    fp32 = "fp32 (TF32)" if not on_cpu and training_args.tf32 else "fp32"
    batch = "x".join(map(str, shape)) + (" tokens" if modality == "text" else "")
    evidence = (
        f"{where}: training step of {batch}: {fp32} {_ms(seconds['fp32'])}, bf16 {_ms(seconds['bf16'])} "
        f"({speedup:.2f}x {compared} {BF16_MIN_SPEEDUP}x), so {precision}; measured in {measured:.1f} s"
    )
    return PrecisionChoice(precision, evidence, on_cpu)


def _set_precision(choice: PrecisionChoice, training_args: Any, performance_args: Any) -> None:
    """Puts a measured choice where the Trainer reads it: its Accelerator takes ``mixed_precision``, which
    ``TrainingArguments`` derived from ``bf16`` when it was built, so both are set."""
    bf16 = choice.precision == "bf16"
    changes: dict[str, Any] = {"bf16": bf16, "mixed_precision": "bf16" if bf16 else "no"}
    if bf16 and choice.on_cpu:
        changes["use_cpu"] = True  # as parsing sets it for CPU bf16, so that the arguments rebuild as they are
    change_training(training_args, f"the timed precision: {choice.precision}", **changes)
    performance_args.resolved_precision, performance_args.precision_evidence = choice.precision, choice.evidence


def _on_main_shared(work: Callable[[], Any], broadcast: Callable[[Any], Any]) -> Any:
    """``work()`` done by the main process and its result given to every process, so that all of them decide
    alike; a process with no process group to take the result from (``broadcast`` gives it ``None``) does its own."""
    result = broadcast(work() if is_main_process() else None)
    return work() if result is None else result


def _one_line(err: Exception) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:200]


def _ms(seconds: float) -> str:
    milliseconds = seconds * 1e3
    return f"{milliseconds:.0f} ms" if milliseconds >= 100 else f"{milliseconds:.1f} ms"


def _apply_tf32(training_args: Any, facts: DeviceFacts) -> str:
    if training_args.tf32 is not None:
        return f"TF32 matmuls: {'on' if training_args.tf32 else 'off'} (as given)"
    if not facts.tf32:
        return "TF32 matmuls: off (the GPU has no TF32)"
    _enable_cuda_tf32()
    change_training(training_args, "an Ampere or newer GPU", tf32=True)
    return "TF32 matmuls: on (Ampere or newer GPU)"


def _enable_cuda_tf32() -> None:
    """TF32 for CUDA matmuls and convolutions only; the global ``torch.backends.fp32_precision`` would reach the CPU
    backend too."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _apply_channels_last(
    model: nn.Module,
    performance_args: Any,
    facts: DeviceFacts,
    shape: tuple[int, ...],
    time_formats: Callable[..., dict[str, float]],
    broadcast: Callable[[Any], Any],
) -> str:
    wanted = performance_args.channels_last
    has_conv = any(isinstance(module, nn.Conv2d) for module in model.modules())
    if wanted == "false":
        return "channels_last: off (as given)"
    if wanted == "true":
        if not has_conv:
            return "channels_last: asked for, but the model has no Conv2d layer: nothing to convert"
        model.to(memory_format=torch.channels_last)
        return "channels_last: on (as given)"
    if not is_cnn(model):
        return "channels_last: off (not a CNN)"
    if facts.device == "cuda":
        model.to(memory_format=torch.channels_last)
        return "channels_last: on (a CNN on a GPU)"
    if facts.device != "cpu":
        return f"channels_last: off (a CNN on {facts.device}, not measured)"
    bf16 = getattr(performance_args, "resolved_precision", None) == "bf16"

    def timed() -> dict[str, float] | str:
        try:
            return time_formats(model, shape, bf16=bf16)
        except Exception as err:  # a speed choice must not end the run (nor leave the other processes waiting)
            return _one_line(err)

    # processes must agree (DDP compares parameter strides): the main process times, the others take its result
    seconds = _on_main_shared(timed, broadcast)
    if isinstance(seconds, str):
        return f"channels_last: off (timing a training step failed: {seconds})"
    speedup = seconds["contiguous"] / seconds["channels_last"]
    timing = (
        f"training step of {'x'.join(map(str, shape))} in {'bf16' if bf16 else 'fp32'}: contiguous "
        f"{seconds['contiguous'] * 1e3:.1f} ms, channels_last {seconds['channels_last'] * 1e3:.1f} ms"
    )
    if speedup >= CHANNELS_LAST_MIN_SPEEDUP:
        model.to(memory_format=torch.channels_last)
        return f"channels_last: on ({timing}, {speedup:.2f}x)"
    return f"channels_last: off ({timing}, {speedup:.2f}x < {CHANNELS_LAST_MIN_SPEEDUP}x)"


def _apply_loader_workers(training_args: Any, modality: str, facts: DeviceFacts) -> str:
    if training_args.dataloader_num_workers:
        return f"data loader: {training_args.dataloader_num_workers} workers (as given)"
    if modality != "image":
        return "data loader: no workers (tokenized text needs no decoding)"
    # each process on this machine runs its own loaders; one CPU of its share stays with the training loop
    share = facts.cpus // max(facts.local_processes, 1)
    workers = max(0, min(share - 1, MAX_LOADER_WORKERS))
    if not workers:
        return f"data loader: no workers ({facts.cpus} CPUs for {facts.local_processes} processes)"
    change_training(training_args, "the CPUs this process has", dataloader_num_workers=workers)
    return f"data loader: {workers} workers ({facts.cpus} CPUs for {facts.local_processes} processes)"
