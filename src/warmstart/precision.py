"""Precision and device settings that fit the hardware.

CPUs differ, and these machines are of both kinds: without native bf16 (AVX2 only) a bf16 matmul ran 140x+ slower
than fp32; with AVX512-BF16 (AMD EPYC, Zen 4) it ran 2.1x faster, with AMX (Intel Xeon) 6.6x faster. So
``--precision auto`` takes bf16 autocast on a CPU only where the CPU says it has native bf16 and a short matmul
measurement agrees, on a GPU where it supports bf16, and fp32 elsewhere; an explicit bf16 on a CPU without native bf16
and fp16 without a GPU are refused. :func:`apply_device_settings` adds what suits the device once the model exists:
TF32, ``channels_last`` for CNNs, data loader workers.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from warmstart.distributed import launched_processes
from warmstart.errors import WarmstartError

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# Autocast casts every weight each step and leaves the rest of the step in fp32, so a step gains less than a matmul
# does (resnet18 on this EPYC: matmul 2.1x, training step 1.55x); a matmul gain below this would not show.
BF16_MIN_SPEEDUP = 1.25
# A short forward timing on a shared machine varies by several percent; below this gain the layout stays as it is.
CHANNELS_LAST_MIN_SPEEDUP = 1.1
# timm's "attention" modules that are convolutional gates (ResNeSt, CBAM), not attention over tokens.
CONV_ATTENTION_MODULES = ("SplitAttn", "ChannelAttn", "SpatialAttn", "LightChannelAttn", "LightSpatialAttn")
# Image decoding and augmentation rarely need more per GPU; more workers only hold memory.
MAX_LOADER_WORKERS = 8


# ------------------------------------------------------------------------------------------------------- CPU facts


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (or the given text); empty where they cannot be read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AMX or AVX512-BF16)."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


@dataclass(frozen=True)
class MatmulSpeed:
    """Measured matmul throughput of one square size, in GFLOP/s."""

    size: int
    fp32_gflops: float
    bf16_gflops: float

    @property
    def bf16_speedup(self) -> float:
        return self.bf16_gflops / self.fp32_gflops


def measure_matmul_speed(size: int = 512, repeats: int = 5) -> MatmulSpeed:
    """Times ``size`` x ``size`` matmuls in fp32 and bf16 on the CPU, with torch's current thread count.

    Each dtype runs once untimed (oneDNN builds its kernels on the first call), then ``repeats`` times interleaved
    with the other; the fastest run counts, since anything else sharing the cores only ever makes a run slower.
    At 512 the whole measurement takes well under 0.1 s where bf16 is native, about 0.5 s where it is not.

    Returns:
        Both throughputs.
    """
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, size, size, generator=generator)
    operands = {dtype: (a.to(dtype), b.to(dtype)) for dtype in (torch.float32, torch.bfloat16)}
    for x, y in operands.values():
        torch.mm(x, y)
    best = dict.fromkeys(operands, float("inf"))
    for _ in range(repeats):
        for dtype, (x, y) in operands.items():
            start = time.perf_counter()
            torch.mm(x, y)
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    flops = 2 * size**3 / 1e9
    return MatmulSpeed(size, flops / best[torch.float32], flops / best[torch.bfloat16])


@functools.cache
def cpu_matmul_speed() -> MatmulSpeed:
    """:func:`measure_matmul_speed` once per process: every later call returns the first answer."""
    return measure_matmul_speed()


def gpu_has_native_bf16() -> bool:
    """Whether the current CUDA device computes bf16 natively (Ampere or newer), not by emulation."""
    if not torch.cuda.is_available():
        return False
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.3 has no emulation to exclude
        return torch.cuda.is_bf16_supported()


def training_on_cpu(use_cpu: bool) -> bool:
    """Whether the Trainer will run on the CPU: ``--use_cpu``, an accelerate config's ``use_cpu: true``
    (``ACCELERATE_USE_CPU``), or no CUDA device."""
    from_launcher = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
    return use_cpu or from_launcher or not torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------------- precision


def requested_precision(fp16: bool, bf16: bool) -> str:
    """``fp16`` / ``bf16`` / ``no``, from the flags or, failing them, an ``accelerate launch`` config."""
    if fp16:
        return "fp16"
    if bf16:
        return "bf16"
    return os.environ.get("ACCELERATE_MIXED_PRECISION", "no")


def _request_source(precision: str, fp16: bool, bf16: bool) -> str:
    """How a mixed precision was asked for, as the user wrote it."""
    if fp16 or bf16:
        return f"--{precision}"
    return f"the accelerate config's mixed_precision: {precision}"


def check_precision(precision: str, *, on_cpu: bool, flags: set[str] | None = None, source: str | None = None) -> None:
    """Refuses a precision the hardware cannot run well.

    Args:
        precision: ``no``, ``fp16`` or ``bf16``.
        on_cpu: training runs on the CPU (no CUDA device, or ``--use_cpu``).
        flags: CPU flags; read from the machine when ``None``.
        source: how the precision was asked for (``--bf16``, ``--precision bf16``), named in the message.

    Raises:
        WarmstartError: fp16 without a GPU, or bf16 on a CPU without native bf16.
    """
    if precision == "fp16" and on_cpu:
        drop = source or "--fp16 (or the accelerate config's mixed_precision: fp16)"
        raise WarmstartError(f"fp16 mixed precision needs a CUDA GPU and none is in use: drop {drop}, or run on a GPU")
    if precision == "bf16" and on_cpu and not cpu_has_native_bf16(flags):
        drop = source or "--bf16 (or the accelerate config's mixed_precision: bf16)"
        raise WarmstartError(
            "bf16 was asked for on a CPU without native bf16 (no amx_bf16 / avx512_bf16 flag), where it runs 100x+ "
            f"slower than fp32: drop {drop}"
        )


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run trains in, and why.

    Attributes:
        precision: ``fp32``, ``bf16`` or ``fp16`` (or an accelerate config's other mixed precision, passed on).
        evidence: one line: what was asked, the CPU's native bf16 flags, the measured GFLOP/s, the reason.
        on_cpu: the run trains on the CPU.
    """

    precision: str
    evidence: str
    on_cpu: bool


def choose_precision(
    asked: str,
    *,
    fp16: bool = False,
    bf16: bool = False,
    use_cpu: bool = False,
    on_cpu: bool | None = None,
    flags: set[str] | None = None,
    gpu_bf16: bool | None = None,
    measure: Callable[[], MatmulSpeed] | None = None,
) -> PrecisionChoice:
    """Resolves ``--precision`` against ``--fp16`` / ``--bf16``, an accelerate config and the hardware.

    ``auto`` with no other request: on a GPU, bf16 where the GPU supports it natively, else fp32; on a CPU, bf16
    where the CPU has native bf16 and a matmul measurement (once per process) shows bf16 at least
    ``BF16_MIN_SPEEDUP`` times faster, else fp32. An explicit precision is taken as asked, but fp16 without a GPU and
    bf16 on a CPU without native bf16 are refused.

    Args:
        asked: ``--precision``: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        fp16: ``--fp16`` was given.
        bf16: ``--bf16`` was given.
        use_cpu: ``--use_cpu`` was given.
        on_cpu: training runs on the CPU; from ``use_cpu``, the launcher and the machine when ``None``.
        flags: CPU feature flags; read from ``/proc/cpuinfo`` when ``None``.
        gpu_bf16: the GPU supports bf16 natively; asked of torch when ``None``.
        measure: returns the CPU's :class:`MatmulSpeed`; :func:`cpu_matmul_speed` when ``None``.

    Returns:
        The choice, with its evidence.

    Raises:
        WarmstartError: ``--precision`` contradicts ``--fp16`` / ``--bf16`` / the accelerate config, or the
            precision asked for cannot run well here.
    """
    on_cpu = training_on_cpu(use_cpu) if on_cpu is None else on_cpu
    requested = requested_precision(fp16, bf16)
    source = _request_source(requested, fp16, bf16) if requested != "no" else None
    if asked != "auto" and requested != "no" and requested != asked:
        raise WarmstartError(
            f"--precision {asked} contradicts {source}: give one of them (--precision alone is enough)"
        )
    device = "CPU" if on_cpu else "GPU"
    if asked != "auto" or requested != "no":
        precision = asked if asked != "auto" else requested
        source = f"--precision {asked}" if asked != "auto" else source
        if precision in ("fp16", "bf16"):
            check_precision(precision, on_cpu=on_cpu, flags=flags, source=source)
        if precision == "no":
            precision = "fp32"
        return PrecisionChoice(precision, f"asked: {source} on the {device}{_flags_note(on_cpu, flags)}", on_cpu)

    if not on_cpu:
        native = gpu_has_native_bf16() if gpu_bf16 is None else gpu_bf16
        precision = "bf16" if native else "fp32"
        why = "the GPU supports bf16 natively" if native else "the GPU has no native bf16"
        return PrecisionChoice(precision, f"auto on the GPU: {why}", on_cpu)

    flags = cpu_flags() if flags is None else flags
    if not cpu_has_native_bf16(flags):
        return PrecisionChoice(
            "fp32", f"auto on the CPU{_flags_note(True, flags)}: no native bf16, so fp32 (not measured)", on_cpu
        )
    if measure is None and launched_processes() > 1:
        # ranks timing at once on shared cores could land on both sides of the threshold, and DDP ranks in
        # different precisions disagree: several processes go by the flags alone
        why = f"auto on the CPU{_flags_note(True, flags)}: native bf16 ({launched_processes()} processes: not timed)"
        return PrecisionChoice("bf16", why, on_cpu)
    speed = (measure or cpu_matmul_speed)()
    precision = "bf16" if speed.bf16_speedup >= BF16_MIN_SPEEDUP else "fp32"
    compared = ">=" if precision == "bf16" else "<"
    evidence = (
        f"auto on the CPU{_flags_note(True, flags)}: matmul {speed.size}x{speed.size} fp32 "
        f"{_gflops(speed.fp32_gflops)} GFLOP/s, bf16 {_gflops(speed.bf16_gflops)} GFLOP/s "
        f"({speed.bf16_speedup:.2f}x {compared} {BF16_MIN_SPEEDUP}x, so {precision})"
    )
    return PrecisionChoice(precision, evidence, on_cpu)


def _gflops(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _flags_note(on_cpu: bool, flags: set[str] | None) -> str:
    if not on_cpu:
        return ""
    flags = cpu_flags() if flags is None else flags
    native = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    return f" (native bf16 flags: {', '.join(native) or 'none'})"


# --------------------------------------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class DeviceFacts:
    """What the device settings depend on; :func:`device_facts` reads them from the machine.

    Attributes:
        device: the torch device type training runs on: ``cuda``, ``cpu``, ...
        cpus: CPUs this process may run on.
        local_processes: training processes on this machine, each with its own data loaders.
        tf32: the GPU can run fp32 matmuls in TF32 (Ampere or newer).
    """

    device: str
    cpus: int
    local_processes: int = 1
    tf32: bool = False


def device_facts(training_args: Any) -> DeviceFacts:
    """The :class:`DeviceFacts` of this machine, for the device that ``training_args`` trains on."""
    device = training_args.device.type
    tf32 = device == "cuda" and torch.cuda.get_device_capability(training_args.device)[0] >= 8
    return DeviceFacts(
        device=device,
        cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        local_processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        tf32=tf32,
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
    """Seconds per forward pass of ``model`` in the contiguous and the ``channels_last`` layout.

    The forward runs in eval and inference mode (no BatchNorm statistics change, no graph is kept), under bf16
    autocast when ``bf16``, on random input; each layout runs once untimed, then ``repeats`` times interleaved, the
    fastest run counting. The model comes back contiguous, with every module's train / eval mode as it was.

    Args:
        model: an image model taking a ``(batch, channels, height, width)`` tensor as its first argument.
        input_shape: the shape of the timed batch.
        bf16: time under CPU bf16 autocast, as training will run.
        repeats: timed runs per layout.

    Returns:
        ``{"contiguous": seconds, "channels_last": seconds}``.
    """
    modes = {module: module.training for module in model.modules()}
    device = next(model.parameters()).device
    batch = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    best = dict.fromkeys(layouts, float("inf"))
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for layout in layouts.values():
                model.to(memory_format=layout)
                model(batch.contiguous(memory_format=layout))
            for _ in range(repeats):
                for name, layout in layouts.items():
                    model.to(memory_format=layout)
                    x = batch.contiguous(memory_format=layout)
                    start = time.perf_counter()
                    model(x)
                    best[name] = min(best[name], time.perf_counter() - start)
    finally:
        model.to(memory_format=torch.contiguous_format)
        for module, training in modes.items():
            module.training = training
    return best


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
    facts: DeviceFacts | None = None,
    time_formats: Callable[..., dict[str, float]] = time_memory_formats,
) -> list[str]:
    """Applies the device settings that suit this machine and this model; call it after the model is built and
    before the ``Trainer`` is.

    - Precision was resolved while parsing: its choice and evidence lead the returned lines.
    - GPU: TF32 matmuls on an Ampere-or-newer GPU unless ``--tf32`` was given; ``channels_last`` for CNNs
      (:func:`is_cnn`) under ``--channels_last auto``; for image data left at ``--dataloader_num_workers 0``, one
      worker per spare CPU of this process's share (at most ``MAX_LOADER_WORKERS``); pinned memory as given (on by
      default).
    - CPU: ``channels_last`` under ``auto`` only where a timed forward pass of this model (:func:`time_memory_formats`)
      is ``CHANNELS_LAST_MIN_SPEEDUP`` times faster in it (resnet18 on a 2-core EPYC: 0.9x at 64 px, where a
      training step gained nothing, 1.35x at 224 px, where a step gained 1.13x-1.19x); data loader workers as given,
      0 by default: on 2 cores one worker made the image recipe 17% slower, its decoding taking a core from the step.
    - ``--channels_last true`` converts any model with ``Conv2d`` layers, ``false`` none.

    Args:
        model: the model to train (converted in place).
        training_args: its ``TrainingArguments``; worker and TF32 settings are changed in place.
        performance_args: the ``PerformanceArguments`` (``channels_last``, ``resolved_precision``, ...).
        modality: ``image`` or ``text``.
        input_size: ``(channels, height, width)`` of the training images, for the CPU timing (default: the model's
            pretrained config, else 3 x 224 x 224).
        facts: the device; read from the machine when ``None``.
        time_formats: times a model's forward in each memory format (see :func:`time_memory_formats`).

    Returns:
        One human-readable line per setting, to log and record.
    """
    facts = device_facts(training_args) if facts is None else facts
    lines = []
    resolved = getattr(performance_args, "resolved_precision", None)
    if resolved:
        lines.append(f"precision: {resolved} ({performance_args.precision_evidence})")
    on_gpu = facts.device == "cuda"
    if on_gpu:
        lines.append(_apply_tf32(training_args, facts))
    if modality == "image" or performance_args.channels_last != "auto":
        lines.append(_apply_channels_last(model, training_args, performance_args, facts, input_size, time_formats))
    if on_gpu:
        lines.append(_apply_loader_workers(training_args, modality, facts))
        pinned = "on" if training_args.dataloader_pin_memory else "off (as given)"
        lines.append(f"data loader: pinned memory {pinned}")
    elif training_args.dataloader_num_workers:
        lines.append(f"data loader: {training_args.dataloader_num_workers} workers (as given)")
    if training_args.torch_compile:
        lines.append(f"torch.compile: on (backend {training_args.torch_compile_backend}), by the Trainer")
    return lines


def _apply_tf32(training_args: Any, facts: DeviceFacts) -> str:
    if training_args.tf32 is not None:
        return f"TF32 matmuls: {'on' if training_args.tf32 else 'off'} (as given)"
    if not facts.tf32:
        return "TF32 matmuls: off (the GPU has no TF32)"
    _enable_cuda_tf32()
    training_args.tf32 = True
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
    training_args: Any,
    performance_args: Any,
    facts: DeviceFacts,
    input_size: Sequence[int] | None,
    time_formats: Callable[..., dict[str, float]],
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
    if training_args.world_size > 1:  # ranks must agree (DDP compares parameter strides): not timed per rank
        return f"channels_last: off ({training_args.world_size} processes: not timed; --channels_last true forces it)"
    size = tuple(input_size) if input_size else _model_input_size(model)
    shape = (min(training_args.per_device_train_batch_size, 16), *size)
    bf16 = getattr(performance_args, "resolved_precision", None) == "bf16"
    seconds = time_formats(model, shape, bf16=bf16)
    speedup = seconds["contiguous"] / seconds["channels_last"]
    timing = (
        f"forward of {'x'.join(map(str, shape))} in {'bf16' if bf16 else 'fp32'}: contiguous "
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
    training_args.dataloader_num_workers = workers
    return f"data loader: {workers} workers ({facts.cpus} CPUs for {facts.local_processes} processes)"
