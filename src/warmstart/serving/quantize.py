"""int8 quantization of an exported classifier with ONNX Runtime, chosen by what the model is made of:

- **text** (BERT-family encoders) and **image transformers** (ViT, DeiT, Swin...): *dynamic* quantization of the
  ``MatMul`` / ``Gemm`` weights, per output channel (activations quantized per batch at run time; a ViT's
  patch-embedding convolution stays fp32), as Optimum quantizes transformers for CPUs. Per channel, a MiniLM-L6
  fine-tuned on generated reviews kept its validation accuracy within 0.2 point (90.1 % against 90.3 %) where
  per-tensor weights lost 1.3 points, at the same speed;
- **CNNs** (no attention): *static* quantization, weights per output channel and activations with ranges
  calibrated on a few hundred training images, in ONNX Runtime's operator format (``QLinearConv``...), which ran
  EfficientNet-Lite0 1.5x faster than fp32 on this project's CPUs where the QDQ format ran slower than fp32, and
  kept its digits accuracy within 0.6 point where per-tensor weights lost 42 points;
- **hybrids** (attention with linear layers holding less than three quarters of the weights: MobileViT, CoAtNet,
  EfficientFormer): refused, since neither recipe covers them (dynamic quantization would leave their
  convolutions in fp32, static quantization of attention is not measured here).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from warmstart.errors import WarmstartError

logger = logging.getLogger(__name__)

DYNAMIC = "dynamic"
STATIC = "static"
# a transformer: attention, and linear layers holding at least this share of the weights
_TRANSFORMER_LINEAR_SHARE = 0.75


@dataclass(frozen=True)
class QuantizationPlan:
    """How a model is quantized.

    Attributes:
        method: ``dynamic`` or ``static``.
        family: what the model is, as the report and the card name it (``text transformer``, ``image
            transformer``, ``CNN``).
        description: one line for the report and the card.
    """

    method: str
    family: str
    description: str


def quantization_plan(model: nn.Module, modality: str, name: str) -> QuantizationPlan:
    """The int8 recipe for a model, from its modules.

    Args:
        model: the PyTorch classifier.
        modality: ``image`` or ``text``.
        name: the architecture, as the refusal names it.

    Raises:
        WarmstartError: a hybrid of convolutions and attention, which warmstart does not quantize.
    """
    if modality == "text":
        return QuantizationPlan(
            DYNAMIC, "text transformer", "dynamic int8 (MatMul / Gemm weights per channel, activations per batch)"
        )
    weights = {nn.Conv2d: 0, nn.Linear: 0}
    for module in model.modules():
        kind = next((k for k in weights if isinstance(module, k)), None)
        if kind is not None:
            weights[kind] += sum(p.numel() for p in module.parameters(recurse=False))
    total = max(sum(p.numel() for p in model.parameters()), 1)
    attention = any(
        "attention" in type(m).__name__.lower() or "attn" in type(m).__name__.lower() for m in model.modules()
    )
    linear, conv = weights[nn.Linear] / total, weights[nn.Conv2d] / total
    if not attention:
        return QuantizationPlan(
            STATIC, "CNN", "static int8 (QOperator, weights per channel, activations calibrated on training images)"
        )
    if linear >= _TRANSFORMER_LINEAR_SHARE:
        return QuantizationPlan(
            DYNAMIC,
            "image transformer",
            "dynamic int8 (MatMul / Gemm weights per channel, activations per batch; patch embedding in fp32)",
        )
    raise WarmstartError(
        f"--quantize int8 does not support {name}: it mixes attention with convolutions ({100 * conv:.0f}% of its "
        f"weights in convolutions, {100 * linear:.0f}% in linear layers), and warmstart quantizes CNNs (static) and "
        "transformers (dynamic) only; export it in fp32 (drop --quantize)"
    )


def quantize(
    plan: QuantizationPlan, source: Path, target: Path, calibration: Iterator[dict[str, np.ndarray]] | None = None
) -> None:
    """Writes the int8 graph of ``source`` to ``target`` as ``plan`` says.

    Args:
        calibration: static: the graph's inputs, batch by batch (training examples, preprocessed as in evaluation).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # the quantizer prints its progress and warns about what it leaves in float: kept out of the user's console
    with contextlib.redirect_stdout(io.StringIO()), _quiet("root"):
        if plan.method == DYNAMIC:
            quantize_dynamic(
                source, target, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"]
            )
            return

        class Batches(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter(calibration or ())

            def get_next(self) -> dict[str, Any] | None:
                return next(self.batches, None)

        prepared = target.with_name(target.stem + ".prepared.onnx")
        try:
            quant_pre_process(str(source), str(prepared))  # shape inference and fused ops, as ORT advises
            quantize_static(
                prepared,
                target,
                Batches(),
                quant_format=QuantFormat.QOperator,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                calibrate_method=CalibrationMethod.MinMax,
            )
        finally:
            prepared.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
