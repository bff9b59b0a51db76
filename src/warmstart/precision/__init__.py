"""Precision and device settings that fit the hardware.

CPUs differ, and these machines are of both kinds: without native bf16 (AVX2 only) a bf16 matmul ran 140x+ slower
than fp32, so bf16 is refused there outright. With native bf16 a matmul says little about training: on an AMD EPYC
with AVX512-BF16 a 512x512 matmul ran 2x faster in bf16 while an EfficientNet-Lite0 training step at 64 px ran 1.9x
slower in it (depthwise convolutions). So ``--precision auto`` is resolved in two steps: while parsing, from the
flags (fp32 on a CPU without native bf16 and on a GPU without it, an explicit request as asked, refusals); where bf16
could pay (a CPU with AMX / AVX512-BF16, a GPU with native bf16) the choice is left pending, and
:func:`apply_device_settings` makes it once the model exists, by timing a few training steps of the model at the
training batch shape in fp32 and in bf16 autocast (:mod:`warmstart.step_timing`). It also adds what suits the device:
TF32, ``channels_last`` for CNNs (timed the same way on a CPU), data loader workers.

- :mod:`~warmstart.precision.hardware`: what the CPU and the GPU compute natively, and whether training runs on
  the CPU;
- :mod:`~warmstart.precision.choice`: ``--precision`` resolved while parsing, as far as the flags decide it;
- :mod:`~warmstart.precision.devices`: the settings timed on the model (a pending precision, ``channels_last``) and
  the rest that suits the device (TF32, data loader workers).
"""

from warmstart.precision.choice import (
    PENDING,
    PrecisionChoice,
    check_precision,
    choose_precision,
    requested_precision,
)
from warmstart.precision.devices import (
    BF16_MIN_SPEEDUP,
    CHANNELS_LAST_MIN_SPEEDUP,
    CONV_ATTENTION_MODULES,
    MAX_LOADER_WORKERS,
    MAX_TIMED_CPU_BATCH,
    DeviceFacts,
    apply_device_settings,
    device_facts,
    is_cnn,
    time_memory_formats,
    time_precisions,
)
from warmstart.precision.hardware import (
    NATIVE_BF16_FLAGS,
    cpu_flags,
    cpu_has_native_bf16,
    gpu_has_native_bf16,
    training_on_cpu,
)

__all__ = [
    "BF16_MIN_SPEEDUP",
    "CHANNELS_LAST_MIN_SPEEDUP",
    "CONV_ATTENTION_MODULES",
    "MAX_LOADER_WORKERS",
    "MAX_TIMED_CPU_BATCH",
    "NATIVE_BF16_FLAGS",
    "PENDING",
    "DeviceFacts",
    "PrecisionChoice",
    "apply_device_settings",
    "check_precision",
    "choose_precision",
    "cpu_flags",
    "cpu_has_native_bf16",
    "device_facts",
    "gpu_has_native_bf16",
    "is_cnn",
    "requested_precision",
    "time_memory_formats",
    "time_precisions",
    "training_on_cpu",
]
