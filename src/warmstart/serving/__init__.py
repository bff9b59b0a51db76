"""Shipping a fine-tuned model: ONNX export checked against PyTorch on real inputs, int8 quantization for CPU serving,
and the ONNX Runtime session ``recipes/predict.py --backend onnx`` predicts with.

    report = export_onnx("outputs/bert-probe", quantize_to="int8")   # writes outputs/bert-probe/onnx/
    predictor = load_predictor("outputs/bert-probe", backend="onnx", precision="int8", device="cpu")
"""

from warmstart.serving.arguments import ExportArguments
from warmstart.serving.export import DEFAULT_OPSET, MIN_OPSET, export_onnx
from warmstart.serving.quantize import QuantizationPlan, quantization_plan
from warmstart.serving.runtime import MODEL_FILES, ONNX_DIR, REPORT_NAME, OnnxSession, read_export, weights_digest

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "MODEL_FILES",
    "ONNX_DIR",
    "REPORT_NAME",
    "ExportArguments",
    "OnnxSession",
    "QuantizationPlan",
    "export_onnx",
    "quantization_plan",
    "read_export",
    "weights_digest",
]
