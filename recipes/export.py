#!/usr/bin/env python
"""Export a fine-tuned model for serving: an ONNX graph checked against PyTorch on real inputs before it is written,
optionally its int8 version, the preprocessing files beside them and an ``export_report.json`` of the checks; the
model card lists them.

    python recipes/export.py --model_name_or_path outputs/bert-probe --format onnx
    python recipes/export.py --model_name_or_path outputs/digits-full --format onnx --quantize int8
    python recipes/predict.py --model_name_or_path outputs/digits-full --input photos/ --backend onnx --precision int8

The graph goes to ``<model>/onnx/`` (``model.onnx``, ``model.int8.onnx``): text models with dynamic batch and sequence
axes, image models with a dynamic batch at the trained resolution. It is checked on rows of the validation data the
run recorded (``--sample_input`` to give others); a graph whose logits or predictions differ from PyTorch's beyond the
tolerances is refused with one line and nothing is written. ``--quantize int8``: dynamic quantization for text and
image transformers, static quantization calibrated on training images for CNNs (hybrids of both are refused).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from warmstart import run_cli
from warmstart.config import parse_args
from warmstart.serving import ExportArguments, export_onnx


def main(argv: Sequence[str] | None = None) -> dict:
    (args,) = parse_args([ExportArguments], argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("warmstart").setLevel(logging.INFO)
    report = export_onnx(
        args.model_name_or_path,
        output_dir=args.output_dir,
        quantize_to=args.quantize,
        opset=args.opset,
        sample_input=args.sample_input,
        check_rows=args.check_rows,
        calibration_rows=args.calibration_rows,
        min_int8_agreement=args.min_int8_agreement,
        overwrite=args.overwrite,
    )
    where = args.output_dir or f"{args.model_name_or_path}/onnx"
    for name, check in report["files"].items():
        agreement = f", label agreement {check['label_agreement']:.1%}" if "label_agreement" in check else ""
        print(
            f"{where}/{name}: {check['precision']}, max logit difference {check['max_abs_logit_diff']:.2g} from "
            f"PyTorch on {check['rows']} rows{agreement}"
        )
    return report


if __name__ == "__main__":
    run_cli(main)
