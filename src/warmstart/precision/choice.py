"""The precision a run trains in, as far as the hardware's flags decide it: ``--precision`` resolved against
``--fp16`` / ``--bf16`` and an ``accelerate launch`` config while parsing, refusing what cannot run well here (fp16
without a GPU, bf16 on a CPU without native bf16). Where bf16 could pay, the choice is left pending (:data:`PENDING`)
for :func:`warmstart.precision.devices.apply_device_settings` to time on the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from warmstart.errors import WarmstartError
from warmstart.precision.hardware import (
    NATIVE_BF16_FLAGS,
    cpu_flags,
    cpu_has_native_bf16,
    gpu_has_native_bf16,
    training_on_cpu,
)

# ``resolved_precision`` while ``--precision auto`` waits for the model to be timed (apply_device_settings).
PENDING = "auto"


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
        precision: ``fp32``, ``bf16`` or ``fp16`` (or an accelerate config's other mixed precision, passed on);
            ``auto`` (:data:`PENDING`) while bf16 waits to be timed against fp32 on the model.
        evidence: one line: what was asked, the CPU's native bf16 flags, the measured step times, the reason.
        on_cpu: the run trains on the CPU.
    """

    precision: str
    evidence: str
    on_cpu: bool

    @property
    def pending(self) -> bool:
        return self.precision == PENDING


def choose_precision(
    asked: str,
    *,
    fp16: bool = False,
    bf16: bool = False,
    use_cpu: bool = False,
    on_cpu: bool | None = None,
    flags: set[str] | None = None,
    gpu_bf16: bool | None = None,
) -> PrecisionChoice:
    """Resolves ``--precision`` against ``--fp16`` / ``--bf16``, an accelerate config and the hardware, as far as
    the hardware's flags decide it.

    An explicit precision is taken as asked, but fp16 without a GPU and bf16 on a CPU without native bf16 are
    refused. ``auto`` with no other request: fp32 on a CPU without native bf16 and on a GPU without it (nothing is
    measured); on a CPU with AMX / AVX512-BF16 or a GPU with native bf16, pending (``auto``): bf16 may or may not be
    faster for this model, which :func:`apply_device_settings` times once the model exists.

    Args:
        asked: ``--precision``: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        fp16: ``--fp16`` was given.
        bf16: ``--bf16`` was given.
        use_cpu: ``--use_cpu`` was given.
        on_cpu: training runs on the CPU; from ``use_cpu``, the launcher and the machine when ``None``.
        flags: CPU feature flags; read from ``/proc/cpuinfo`` when ``None``.
        gpu_bf16: the GPU supports bf16 natively; asked of torch when ``None``.

    Returns:
        The choice, with its evidence; ``pending`` where it waits for the model.

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
        if not (gpu_has_native_bf16() if gpu_bf16 is None else gpu_bf16):
            return PrecisionChoice("fp32", "auto on the GPU: no native bf16, so fp32 (not measured)", False)
        return PrecisionChoice(PENDING, "auto on the GPU (native bf16): to be timed on the model", False)

    flags = cpu_flags() if flags is None else flags
    if not cpu_has_native_bf16(flags):
        return PrecisionChoice(
            "fp32", f"auto on the CPU{_flags_note(True, flags)}: no native bf16, so fp32 (not measured)", on_cpu
        )
    return PrecisionChoice(PENDING, f"auto on the CPU{_flags_note(True, flags)}: to be timed on the model", on_cpu)


def _flags_note(on_cpu: bool, flags: set[str] | None) -> str:
    if not on_cpu:
        return ""
    flags = cpu_flags() if flags is None else flags
    native = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    return f" (native bf16 flags: {', '.join(native) or 'none'})"
