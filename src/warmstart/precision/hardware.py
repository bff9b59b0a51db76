"""What the hardware computes natively: the CPU's feature flags (read from ``/proc/cpuinfo``), whether the CPU or the
GPU runs bf16 without emulation, and whether training runs on the CPU at all (``--use_cpu``, an accelerate config, or
no CUDA device). The precision choice (:mod:`warmstart.precision.choice`) and the device settings
(:mod:`warmstart.precision.devices`) decide from these facts.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


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
