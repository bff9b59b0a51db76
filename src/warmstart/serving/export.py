"""ONNX export of a warmstart classifier: the graph (text: dynamic batch and sequence axes; images: dynamic batch at
the trained resolution), optionally its int8 version, the preprocessing files beside them, and a report of the check
each graph passed against the PyTorch model on real inputs before anything was written.

The exporter is torch's own (``torch.onnx.export(..., dynamo=True)``, built on ``torch.export``, opset 18 and up):
it exported every family warmstart trains (BERT-family encoders, timm CNNs, timm ViTs) to within 1e-4 of PyTorch's
logits here, it is the one torch keeps (the TorchScript exporter is deprecated since torch 2.9), and it needs no
package that pins transformers below the 5.x warmstart runs on, as optimum's exporter does.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

import warmstart
from warmstart.errors import WarmstartError
from warmstart.model_card import CARD_NAME, add_exported_files
from warmstart.prediction.batches import input_batches
from warmstart.prediction.inputs import PredictionInput, read_prediction_input
from warmstart.prediction.predictor import Predictor, load_predictor
from warmstart.problems import MULTI_LABEL, REGRESSION
from warmstart.run_folder import CONFIG_NAME, read_run_config
from warmstart.serving.quantize import STATIC, QuantizationPlan, quantization_plan, quantize
from warmstart.serving.runtime import (
    MODEL_FILES,
    ONNX_DIR,
    ONNX_EXTRA,
    REPORT_NAME,
    OnnxSession,
    require_onnx_runtime,
    weights_digest,
)

logger = logging.getLogger(__name__)

MIN_OPSET = 18  # torch.export's ONNX exporter writes opset 18 and up (it stamps 18 on a graph asked for less)
DEFAULT_OPSET = 18
QUANTIZATIONS = ("int8",)
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# an fp32 graph passes when its largest logit difference is within this share of the largest logit (at least 1)
FP32_RELATIVE_TOLERANCE = 1e-3
DEFAULT_CHECK_ROWS = 256
DEFAULT_CALIBRATION_ROWS = 300
DEFAULT_MIN_INT8_AGREEMENT = 0.97
# regression's int8 graph passes when its RMS difference is within this share of the outputs' standard deviation
REGRESSION_INT8_TOLERANCE = 0.1


@dataclass
class _Sample:
    data: PredictionInput
    rows: list[int]
    described: str


def export_onnx(
    model_dir: str | Path,
    *,
    output_dir: str | Path | None = None,
    quantize_to: str | None = None,
    opset: int = DEFAULT_OPSET,
    sample_input: str | None = None,
    check_rows: int = DEFAULT_CHECK_ROWS,
    calibration_rows: int = DEFAULT_CALIBRATION_ROWS,
    min_int8_agreement: float = DEFAULT_MIN_INT8_AGREEMENT,
    batch_size: int = 32,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Exports a saved classifier to ONNX, checks it against PyTorch, and writes it with its report.

    The check runs both on ``check_rows`` rows of real input (``sample_input``, else the validation split the run
    recorded in ``warmstart_config.yaml``, else its train split): the fp32 graph must reproduce the logits to within
    ``1e-3 x max(1, largest logit)``; the int8 graph must agree with PyTorch's predictions on ``min_int8_agreement``
    of the rows (multi-label: of the row-label decisions at the run's thresholds; regression: its RMS difference within
    a tenth of the outputs' standard deviation). A graph that fails is not written. Static quantization (CNNs) is
    calibrated on ``calibration_rows`` rows of the train split (else the sample).

    Args:
        model_dir: a warmstart output directory (or another hub-format classifier, with ``sample_input``).
        output_dir: where to write; default ``<model_dir>/onnx``, where ``recipes/predict.py --backend onnx`` looks.
        quantize_to: ``int8`` to write ``model.int8.onnx`` too.
        opset: the ONNX opset, 18 or more.
        sample_input: what to check (and calibrate) on, as ``recipes/predict.py --input`` takes it.
        overwrite: replace an earlier export in ``output_dir``.

    Returns:
        The report written to ``export_report.json``: the files, each with its check, the weights' digests (a later
        change of the weights makes the export stale), the preprocessing, labels and versions.

    Raises:
        WarmstartError: not a warmstart model, an unsupported opset or quantization, a family that is not quantized,
            an existing export without ``overwrite``, ONNX tooling missing, or a check that fails; nothing is written.
    """
    model_dir = Path(model_dir)
    _require_tooling()
    _check_options(opset, quantize_to, check_rows, calibration_rows, min_int8_agreement)
    run_config = _warmstart_run(model_dir, sample_input)
    target = Path(output_dir) if output_dir else model_dir / ONNX_DIR
    _check_target(target, overwrite)
    predictor = load_predictor(model_dir, device="cpu")
    name = _architecture(model_dir)
    plan = quantization_plan(predictor.model, predictor.modality, name) if quantize_to else None
    check = _sample(predictor, model_dir, run_config, sample_input, check_rows, ("validation", "train"))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-export-", dir=target.parent))
    try:
        started = time.perf_counter()
        input_names = _export_graph(predictor, check, staging / MODEL_FILES["fp32"], opset)
        logger.info("exported %s to ONNX opset %d in %.1f s", name, opset, time.perf_counter() - started)
        reference = _torch_logits(predictor, check, batch_size)
        files = {
            MODEL_FILES["fp32"]: _check_graph(predictor, staging / "model.onnx", check, reference, None, batch_size)
        }
        if plan is not None:
            files[MODEL_FILES["int8"]] = _quantized(
                predictor,
                plan,
                staging,
                model_dir,
                run_config,
                sample_input,
                check,
                reference,
                calibration_rows,
                min_int8_agreement,
                batch_size,
            )
        _write_preprocessing(predictor, model_dir, staging)
        report = _report(predictor, model_dir, name, opset, input_names, files, check)
        (staging / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    _list_in_card(model_dir, target, report)
    return report


def _require_tooling() -> None:
    require_onnx_runtime("ONNX export")
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise WarmstartError(f"ONNX export needs {module}, which is not installed: {ONNX_EXTRA}") from None


def _check_options(
    opset: int, quantize_to: str | None, check_rows: int, calibration_rows: int, min_int8_agreement: float
) -> None:
    import onnx

    highest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= highest:
        raise WarmstartError(
            f"--opset {opset} is not supported: torch's ONNX exporter writes opsets {MIN_OPSET} to {highest} "
            f"(the installed onnx's newest); default {DEFAULT_OPSET}"
        )
    if quantize_to is not None and quantize_to not in QUANTIZATIONS:
        raise WarmstartError(f"--quantize must be {' or '.join(QUANTIZATIONS)}, got {quantize_to!r}")
    if check_rows < 1 or calibration_rows < 1:
        raise WarmstartError("--check_rows and --calibration_rows must be positive integers")
    if not 0.0 < min_int8_agreement <= 1.0:
        raise WarmstartError(f"--min_int8_agreement must be in (0, 1], got {min_int8_agreement}")


def _warmstart_run(model_dir: Path, sample_input: str | None) -> dict[str, Any]:
    """The run configuration the model was trained with; a directory without one needs ``sample_input``."""
    if not model_dir.is_dir() or not (model_dir / "config.json").is_file():
        raise WarmstartError(
            f"{model_dir} is not a warmstart model (no directory with a config.json): export the output directory "
            "of a warmstart run"
        )
    try:
        config = read_run_config(model_dir / CONFIG_NAME)
    except (OSError, yaml.YAMLError) as err:
        raise WarmstartError(f"{model_dir / CONFIG_NAME} cannot be read ({type(err).__name__})") from None
    if config is None and sample_input is None:
        raise WarmstartError(
            f"{model_dir} is not a warmstart model (no {CONFIG_NAME}): export the output directory of a warmstart "
            "run, or give --sample_input to check the export of another classifier on"
        )
    return config or {}


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise WarmstartError(f"{target} is a file: give --output_dir a directory")
    if target.is_dir() and any(target.iterdir()):
        if not (target / REPORT_NAME).is_file():
            raise WarmstartError(
                f"{target} holds files that are not a warmstart export: give another --output_dir (nothing replaced)"
            )
        if not overwrite:
            raise WarmstartError(f"{target} already holds an ONNX export: pass --overwrite to replace it")


def _architecture(model_dir: Path) -> str:
    config = json.loads((model_dir / "config.json").read_text())
    return str(config.get("architecture") or ",".join(config.get("architectures") or []) or config.get("model_type"))


def _recorded_source(path: str, model_dir: Path) -> Path | None:
    """A data path the run recorded, as given (relative to the directory the run started in) where it exists
    from here, else relative to each folder above the model directory."""
    candidates = [Path(path)] + ([] if Path(path).is_absolute() else [p / path for p in model_dir.resolve().parents])
    return next((c for c in candidates if c.exists()), None)


def _sample(
    predictor: Predictor,
    model_dir: Path,
    run_config: dict[str, Any],
    sample_input: str | None,
    count: int,
    splits: tuple[str, ...],
) -> _Sample:
    """``count`` rows (at most; a seeded choice) of ``sample_input``, else of the first of ``splits`` the run recorded
    that can be read."""
    data_section = run_config.get("data") or {}
    read = {
        "image_column": data_section.get("image_column_name") if predictor.modality == "image" else None,
        "label_column": None,
    }
    if sample_input is not None:
        data, described = read_prediction_input(sample_input, predictor, **read), f"--sample_input {sample_input}"
    else:
        data, described = _recorded_split(predictor, model_dir, data_section, splits, read)
    if len(data.ids) == 0:
        raise WarmstartError(f"{described} has no rows: give --sample_input with real inputs")
    rng = np.random.default_rng(0)
    rows = sorted(rng.choice(len(data.ids), size=min(count, len(data.ids)), replace=False).tolist())
    return _Sample(data, rows, described)


def _recorded_split(
    predictor: Predictor, model_dir: Path, data_section: dict[str, Any], splits: tuple[str, ...], read: dict[str, Any]
) -> tuple[PredictionInput, str]:
    tried = []
    for split in splits:
        if data_section.get("dataset_name"):
            config = data_section.get("dataset_config_name")
            spec = f"{data_section['dataset_name']}{f':{config}' if config else ''}:{split}"
            try:
                return read_prediction_input(spec, predictor, **read), f"the run's {split} split ({spec})"
            except WarmstartError as err:
                tried.append(f"{spec}: {err}")
                continue
        recorded = data_section.get(f"{split}_file") or data_section.get(f"{split}_dir")
        if not recorded:
            continue
        path = _recorded_source(str(recorded), model_dir)
        if path is None:
            tried.append(f"{recorded}: not found")
            continue
        return read_prediction_input(str(path), predictor, **read), f"the run's {split} split ({path.name})"
    reason = f" ({'; '.join(tried)[:300]})" if tried else ""
    raise WarmstartError(
        f"cannot read the data {model_dir / CONFIG_NAME} records to check the export on{reason}: give --sample_input "
        "(a file, folder or dataset split of real inputs)"
    )


class _Logits(nn.Module):
    """The classifier as a function of named tensors to logits: what the ONNX graph computes."""

    def __init__(self, predictor: Predictor):
        super().__init__()
        self.model = predictor.model
        self.image = predictor.modality == "image"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.image:  # the first input is the pixels
            return self.model(input_ids)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def _export_graph(predictor: Predictor, sample: _Sample, path: Path, opset: int) -> list[str]:
    """Traces the classifier on two sample rows and writes its graph; returns the graph's input names."""
    rows = sample.rows[:2] if len(sample.rows) >= 2 else sample.rows * 2  # a batch of 1 would be traced as fixed
    _, batch = next(input_batches(predictor, sample.data, len(rows), rows=rows))
    if predictor.modality == "image":
        names, args = ["pixel_values"], (batch["pixel_values"],)
        shapes: tuple[dict[int, Any], ...] = ({0: torch.export.Dim("batch")},)
    else:
        names = [n for n in TEXT_INPUTS if n in batch]
        if names[0] != "input_ids" or names != list(TEXT_INPUTS[: len(names)]):
            raise WarmstartError(
                f"the tokenizer makes {', '.join(batch)}: ONNX export takes input_ids, attention_mask and "
                "token_type_ids, in that order"
            )
        args = tuple(batch[n] for n in names)
        batch_dim, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
        shapes = tuple({0: batch_dim, 1: sequence} for _ in names)
    module = _Logits(predictor).eval()
    # the exporter prints its stages and warns about what torch.export specialises: kept off the user's console
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=names,
                output_names=["logits"],
                dynamic_shapes=shapes,
                opset_version=opset,
                dynamo=True,
                external_data=_weights_bytes(predictor.model) > 1_800_000_000,  # protobuf's 2 GB limit
            )
        except Exception as err:  # torch.export and the ONNX translation raise many types for what they cannot take
            reason = " ".join(str(err).split())[:240]
            raise WarmstartError(
                f"torch's ONNX exporter cannot export this {predictor.modality} model ({type(err).__name__}: {reason})"
            ) from None
    return names


def _weights_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _torch_logits(predictor: Predictor, sample: _Sample, batch_size: int) -> np.ndarray:
    outputs = []
    for _, batch in input_batches(predictor, sample.data, batch_size, rows=sample.rows):
        outputs.append(predictor.logits(batch).float().numpy())
    return np.concatenate(outputs)


def _check_graph(
    predictor: Predictor,
    path: Path,
    sample: _Sample,
    reference: np.ndarray,
    min_agreement: float | None,
    batch_size: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Runs the graph on the sample and compares with PyTorch; refuses a graph that fails (``min_agreement`` None:
    the fp32 tolerance on logits)."""
    onnxruntime = require_onnx_runtime("ONNX export")
    session = OnnxSession(path, torch.device("cpu"), onnxruntime)
    outputs = []
    for _, batch in input_batches(predictor, sample.data, batch_size, rows=sample.rows):
        outputs.append(session(batch).numpy())
    got = np.concatenate(outputs)
    difference = float(np.abs(got - reference).max())
    check: dict[str, Any] = {
        "precision": "fp32" if min_agreement is None else "int8",
        **(extra or {}),
        "rows": len(sample.rows),
        "checked_on": sample.described,
        "max_abs_logit_diff": difference,
    }
    agreement = _agreement(predictor, got, reference)
    if agreement is not None:
        check["label_agreement"] = agreement
    what = f"the {check['precision']} ONNX graph"
    if min_agreement is None:
        tolerance = FP32_RELATIVE_TOLERANCE * max(1.0, float(np.abs(reference).max()))
        check["tolerance"] = tolerance
        if not difference <= tolerance:
            raise WarmstartError(
                f"{what} differs from PyTorch by {difference:.3g} in the logits on {len(sample.rows)} rows of "
                f"{sample.described} (tolerance {tolerance:.3g}): not written; report the model's architecture"
            )
        return check
    if predictor.problem_type == REGRESSION:
        spread = float(reference.std()) or 1.0
        rms = float(np.sqrt(np.mean((got - reference) ** 2)))
        check["rms_diff_over_std"] = rms / spread
        if rms > REGRESSION_INT8_TOLERANCE * spread:
            raise WarmstartError(
                f"{what} is off by {rms / spread:.1%} of the outputs' spread (RMS, {len(sample.rows)} rows of "
                f"{sample.described}; at most {REGRESSION_INT8_TOLERANCE:.0%}): not written; export fp32 (drop "
                "--quantize)"
            )
        return check
    check["min_agreement"] = min_agreement
    if agreement < min_agreement:
        raise WarmstartError(
            f"{what} agrees with PyTorch on {agreement:.1%} of {len(sample.rows)} rows of {sample.described} (at "
            f"least {min_agreement:.1%} asked): not written; export fp32 (drop --quantize), or lower "
            "--min_int8_agreement"
        )
    return check


def _agreement(predictor: Predictor, got: np.ndarray, reference: np.ndarray) -> float | None:
    """The share of predictions the two agree on: the class (single-label), each row-label decision at the run's
    thresholds (multi-label); ``None`` for regression."""
    if predictor.problem_type == REGRESSION:
        return None
    if predictor.problem_type == MULTI_LABEL:
        thresholds = np.asarray(predictor.thresholds or 0.5)
        decide = lambda logits: 1.0 / (1.0 + np.exp(-logits)) >= thresholds  # noqa: E731
        return float((decide(got) == decide(reference)).mean())
    return float((got.argmax(-1) == reference.argmax(-1)).mean())


def _quantized(
    predictor: Predictor,
    plan: QuantizationPlan,
    staging: Path,
    model_dir: Path,
    run_config: dict[str, Any],
    sample_input: str | None,
    check: _Sample,
    reference: np.ndarray,
    calibration_rows: int,
    min_agreement: float,
    batch_size: int,
) -> dict[str, Any]:
    started = time.perf_counter()
    extra: dict[str, Any] = {"quantization": plan.description, "family": plan.family}
    calibration = None
    if plan.method == STATIC:
        sample = _sample(predictor, model_dir, run_config, sample_input, calibration_rows, ("train", "validation"))
        calibration = _numpy_batches(predictor, sample, batch_size)
        extra["calibrated_on"] = f"{len(sample.rows)} rows of {sample.described}"
    target = staging / MODEL_FILES["int8"]
    try:
        quantize(plan, staging / MODEL_FILES["fp32"], target, calibration)
    except WarmstartError:
        raise
    except Exception as err:  # the quantizer's own errors, of many types
        reason = " ".join(str(err).split())[:240]
        raise WarmstartError(
            f"ONNX Runtime cannot quantize this {plan.family} ({type(err).__name__}: {reason}): export fp32 (drop "
            "--quantize)"
        ) from None
    logger.info("quantized to int8 (%s) in %.1f s", plan.method, time.perf_counter() - started)
    return _check_graph(predictor, target, check, reference, min_agreement, batch_size, extra)


def _numpy_batches(predictor: Predictor, sample: _Sample, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    for _, batch in input_batches(predictor, sample.data, batch_size, rows=sample.rows):
        yield {name: tensor.numpy() for name, tensor in batch.items()}


def _write_preprocessing(predictor: Predictor, model_dir: Path, staging: Path) -> None:
    """What a runtime needs beside the graph: the model's config.json (labels; timm's pretrained_cfg with the image
    preprocessing) and, for text, the tokenizer."""
    shutil.copy2(model_dir / "config.json", staging / "config.json")
    if predictor.modality == "text":
        predictor.tokenizer.save_pretrained(staging)


def _report(
    predictor: Predictor,
    model_dir: Path,
    name: str,
    opset: int,
    input_names: list[str],
    files: dict[str, dict[str, Any]],
    check: _Sample,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "format": "onnx",
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "architecture": name,
        "modality": predictor.modality,
        "problem_type": predictor.problem_type,
        "labels": list(predictor.labels),
        "opset": opset,
        "exporter": f"torch.onnx.export (dynamo) {torch.__version__}",
        "warmstart_version": warmstart.__version__,
        "inputs": input_names,
        "dynamic_axes": {n: ["batch", "sequence"] if predictor.modality == "text" else ["batch"] for n in input_names},
        "output": "logits",
        "files": files,
        "weights": weights_digest(model_dir),
    }
    if predictor.modality == "image":
        report["data_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in predictor.data_config.items()}
    else:
        report["max_length"] = predictor.max_length
        report["text_columns"] = predictor.text_columns
    return report


def _list_in_card(model_dir: Path, target: Path, report: dict[str, Any]) -> None:
    """Lists the export in the model's card, when the export is inside the model directory and the card exists."""
    if not (model_dir / CARD_NAME).is_file():
        return
    try:
        folder = target.resolve().relative_to(model_dir.resolve())
    except ValueError:
        return
    listed = []
    for file_name, check in report["files"].items():
        agreement = f", predicted label agreement {check['label_agreement']:.1%}" if "label_agreement" in check else ""
        how = f"{check['quantization']}, " if "quantization" in check else ""
        listed.append(
            (
                (folder / file_name).as_posix(),
                f"ONNX graph, {check['precision']}, opset {report['opset']} ({how}inputs {', '.join(report['inputs'])}"
                f"): checked against PyTorch on {check['rows']} rows of {check['checked_on']}, max logit difference "
                f"{check['max_abs_logit_diff']:.2g}{agreement}",
            )
        )
    listed.append(((folder / REPORT_NAME).as_posix(), "the export's checks, preprocessing, labels and weight digests"))
    add_exported_files(model_dir, listed)
