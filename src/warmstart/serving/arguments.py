"""The arguments of ``recipes/export.py``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from warmstart.errors import WarmstartError
from warmstart.serving.export import (
    DEFAULT_CALIBRATION_ROWS,
    DEFAULT_CHECK_ROWS,
    DEFAULT_MIN_INT8_AGREEMENT,
    DEFAULT_OPSET,
)


@dataclass
class ExportArguments:
    """Which model to export, to what, and what to check it on."""

    model_name_or_path: str = field(default=None, metadata={"help": "A warmstart output directory."})
    format: Literal["onnx"] = field(default="onnx", metadata={"help": "The export format (ONNX)."})
    quantize: Literal["int8"] | None = field(
        default=None,
        metadata={
            "help": "int8: also write model.int8.onnx (dynamic quantization for text and image transformers, static "
            "calibrated on training images for CNNs)."
        },
    )
    opset: int = field(default=DEFAULT_OPSET, metadata={"help": "The ONNX opset (18 or more)."})
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where to write (default: <model>/onnx, where predict.py --backend onnx looks)."},
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an earlier export in the output directory."})
    sample_input: str | None = field(
        default=None,
        metadata={
            "help": "Real inputs to check (and calibrate) the export on, as predict.py --input takes them (default: "
            "the validation, else train, data the run recorded)."
        },
    )
    check_rows: int = field(default=DEFAULT_CHECK_ROWS, metadata={"help": "Rows the export is checked on."})
    calibration_rows: int = field(
        default=DEFAULT_CALIBRATION_ROWS, metadata={"help": "Static int8 (CNNs): training rows calibrated on."}
    )
    min_int8_agreement: float = field(
        default=DEFAULT_MIN_INT8_AGREEMENT,
        metadata={"help": "The share of predictions the int8 graph must agree on with PyTorch to be written."},
    )

    def __post_init__(self) -> None:
        if not self.model_name_or_path:
            raise WarmstartError("--model_name_or_path is required: the output directory of a warmstart run")
