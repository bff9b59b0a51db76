#!/usr/bin/env python
"""Serving throughput on the CPU: the HF ``pipeline()`` on warmstart's output (what a user reaches for) against
``recipes/predict.py``'s prediction with ``--backend torch``, ``--backend onnx`` (fp32) and ``--backend onnx
--precision int8``, for MiniLM-L6 (text) and EfficientNet-Lite0 (images), with the accuracy of each on the same
validation data.

Models (trained here first, nothing downloaded): MiniLM-L6 fine-tuned (``full``, 1 epoch) on 2,000 generated review
sentences (``_common.generated_sentences``: log-normal lengths, median 25 tokens), validated on 1,000; ImageNet
EfficientNet-Lite0 fine-tuned (``full``, 3 epochs, learning rate 1e-3, the quick-start's settings) on scikit-learn's
digits at 64 px, validated on 360. Each is exported by ``recipes/export.py --quantize int8`` (text: dynamic int8;
CNN: static int8 calibrated on 300 training images).

Each side is one child process (its own peak RSS): it loads the model, predicts one warm-up batch, then times
prediction of the first 200 validation rows one at a time (batch 1) and of every validation row in batches of 32
(examples/s from raw inputs, preprocessing included: texts tokenized, image files decoded and transformed), and scores
the batch-32 predictions against the labels. ``predict.py``'s sides call what the recipe calls
(:func:`warmstart.prediction.load_predictor`, :func:`~warmstart.prediction.read_prediction_input`,
:func:`~warmstart.prediction.predict`), the CSV writing left out; the pipeline gets the texts or the image files, and
``batch_size``.

    python benchmarks/serving.py [--pairs 3] [--only text|image] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    RECIPES,
    add_common_arguments,
    as_flags,
    child_environment,
    difference_line,
    function_side,
    minilm_path,
    print_header,
    print_ratios,
    print_table,
    ratio_line,
    run_pairs,
    spread,
    write_digit_folders,
    write_text_csvs,
)

IMAGE_SIZE = 64
BATCH_1_ROWS = 200
BACKENDS = {
    "pipeline()": ("pipeline", "fp32"),
    "predict torch": ("torch", "fp32"),
    "predict onnx fp32": ("onnx", "fp32"),
    "predict onnx int8": ("onnx", "int8"),
}


def measure(modality: str, model_dir: str, validation: str, backend: str, precision: str, folder: str) -> dict:
    """One side, in its own process: examples/s at batch 1 and 32, and the batch-32 accuracy."""
    import torch

    rows = _validation_rows(modality, validation)
    truth = [label for _, label in rows]
    started = time.perf_counter()
    if backend == "pipeline":
        run = _pipeline_runner(modality, model_dir, [value for value, _ in rows])
    else:
        run = _predict_runner(modality, model_dir, validation, backend, precision)
    figures: dict[str, Any] = {"load_s": time.perf_counter() - started, "threads": torch.get_num_threads()}
    run(list(range(32)), 32)  # warm-up: first-call allocations and kernel choices
    few = list(range(min(BATCH_1_ROWS, len(rows))))
    started = time.perf_counter()
    run(few, 1)
    figures["batch1_per_s"] = len(few) / (time.perf_counter() - started)
    everything = list(range(len(rows)))
    started = time.perf_counter()
    predicted = run(everything, 32)
    figures["batch32_per_s"] = len(everything) / (time.perf_counter() - started)
    figures["accuracy"] = sum(p == t for p, t in zip(predicted, truth)) / len(truth)
    figures["peak_rss_self_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return figures


def _validation_rows(modality: str, validation: str) -> list[tuple[str, str]]:
    """``(text or image path, label name)`` of each validation row, in the order predict.py reads them."""
    if modality == "text":
        with open(validation, newline="") as f:
            return [(row["text"], row["label"]) for row in csv.DictReader(f)]
    files = sorted(p for p in Path(validation).rglob("*.png"))  # predict.py's order: sorted paths
    return [(str(p), p.parent.name) for p in files]


def _pipeline_runner(modality: str, model_dir: str, inputs: list[str]):
    from transformers import pipeline

    classify = pipeline(f"{modality}-classification", model=model_dir, device="cpu")

    def run(indices: list[int], batch_size: int) -> list[str]:
        outputs = classify([inputs[i] for i in indices], batch_size=batch_size, top_k=1)
        return [str((out[0] if isinstance(out, list) else out)["label"]) for out in outputs]

    return run


def _predict_runner(modality: str, model_dir: str, validation: str, backend: str, precision: str):
    from warmstart.prediction import load_predictor, predict, read_prediction_input

    predictor = load_predictor(model_dir, device="cpu", precision=precision, backend=backend)
    data = read_prediction_input(validation, predictor, label_column=None)

    def run(indices: list[int], batch_size: int) -> list[str]:
        probs = predict(predictor, data, batch_size, progress=False, rows=indices)
        return [predictor.labels[i] for i in probs.argmax(-1).tolist()]

    return run


def _train_and_export(root: Path, modality: str, quick: bool) -> tuple[str, str]:
    """Fine-tunes the model, exports it (fp32 and int8); returns the model directory and the validation data."""
    output = root / f"{modality}-model"
    if modality == "text":
        train, validation = write_text_csvs(root / "text", 64 if quick else 2000, 48 if quick else 1000)
        args = as_flags(
            model_name_or_path=minilm_path(),
            train_file=train,
            validation_file=validation,
            freeze_strategy="full",
            num_train_epochs=1,
            max_seq_length=128,
        )
        recipe = "text_classification.py"
    else:
        from warmstart.quickstart import write_efficientnet_lite0_imagenet

        train, validation = write_digit_folders(
            root / "digits", IMAGE_SIZE, 64 if quick else None, 48 if quick else None
        )
        backbone = write_efficientnet_lite0_imagenet(root / "efficientnet_lite0_imagenet")
        args = as_flags(
            model_name_or_path=backbone,
            train_dir=train,
            validation_dir=validation,
            image_size=IMAGE_SIZE,
            freeze_strategy="full",
            num_train_epochs=1 if quick else 3,
            learning_rate=1e-3,
            hflip=0,
        )
        args += ["--random_crop_scale", "0.8", "1.0"]
    args += as_flags(
        output_dir=output,
        per_device_train_batch_size=32,
        seed=42,
        use_cpu=True,
        precision="fp32",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    env = child_environment(root)
    recipe = "text_classification.py" if modality == "text" else "image_classification.py"
    for command in (
        [sys.executable, str(RECIPES / recipe), *args],
        [sys.executable, str(RECIPES / "export.py"), "--model_name_or_path", str(output), "--quantize", "int8"]
        + (["--min_int8_agreement", "0.5"] if quick else []),  # a model of 64 examples has no margins to keep
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:2])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        if "export.py" in command[1]:
            print(done.stdout.strip(), flush=True)
    return str(output), str(validation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--only", choices=("text", "image"), help="one of the two models")
    cli = parser.parse_args()
    if cli.quick:
        cli.pairs = 1
    modalities = [m for m in ("text", "image") if cli.only in (None, m)]
    with tempfile.TemporaryDirectory(prefix="warmstart-serving-") as root:
        root = Path(root)
        sides = []
        for modality in modalities:
            model_dir, validation = _train_and_export(root, modality, cli.quick)
            for name, (backend, precision) in BACKENDS.items():
                sides.append(
                    function_side(
                        f"{modality}: {name}",
                        "serving:measure",
                        modality=modality,
                        model_dir=model_dir,
                        validation=validation,
                        backend=backend,
                        precision=precision,
                    )
                )
        pairs = list(run_pairs(sides, cli.pairs))

    print_header(
        "serving: examples/s on the CPU, pipeline() against predict.py's torch and ONNX Runtime backends",
        [
            "text: MiniLM-L6 fine-tuned on 2,000 generated reviews, 1,000 validation rows (median 25 tokens)",
            f"image: EfficientNet-Lite0 fine-tuned on digits at {IMAGE_SIZE} px, 360 validation images",
            f"batch 1: the first {BATCH_1_ROWS} validation rows one at a time; batch 32: every validation row; "
            "accuracy: the batch-32 predictions",
        ],
        cli.quick,
    )
    rows, lines = [], []
    for side in sides:
        runs = [pair[side.name] for pair in pairs]
        rows.append(
            [
                side.name,
                spread([r["batch1_per_s"] for r in runs], "{:.0f}"),
                spread([r["batch32_per_s"] for r in runs], "{:.0f}"),
                spread([100 * r["accuracy"] for r in runs], "{:.2f}"),
                spread([r.peak_rss_mib for r in runs], "{:,.0f}"),
                spread([r["load_s"] for r in runs], "{:.1f}"),
            ]
        )
    for modality in modalities:
        base = f"{modality}: pipeline()"
        for name in list(BACKENDS)[1:]:
            side = f"{modality}: {name}"
            target = None
            if modality == "text" and name == "predict onnx int8":
                target = 2.5
            elif modality == "text" and name == "predict onnx fp32":
                target = 1.3
            for batch in ("batch32", "batch1"):
                values = [p[side][f"{batch}_per_s"] / p[base][f"{batch}_per_s"] for p in pairs]
                lines.append(
                    ratio_line(
                        f"{batch.replace('batch', 'batch ')} examples/s, {side} / {base}",
                        values,
                        target=target if batch == "batch32" else None,
                    )
                )
            gap = [100 * (p[side]["accuracy"] - p[base]["accuracy"]) for p in pairs]
            within = 0.5 if modality == "text" and name.startswith("predict onnx") else None
            lines.append(difference_line(f"accuracy, {side} - {base}", gap, within=within))
    print_table(["side", "batch 1 ex/s", "batch 32 ex/s", "accuracy %", "peak RSS MiB", "load s"], rows)
    print_ratios(lines, len(pairs), cli.quick)


if __name__ == "__main__":
    main()
