"""A saved classifier loaded to predict, with the preprocessing it was evaluated with: :func:`load_predictor`."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from warmstart.distributed import (
    launched_processes,
)
from warmstart.errors import WarmstartError, hub_unavailable
from warmstart.models import (
    is_image_model_config,
    load_checked,
    load_text_tokenizer,
    load_timm_backbone,
    max_sequence_length,
    read_model_config,
)
from warmstart.precision import check_precision
from warmstart.problems import MULTI_LABEL, PROBLEM_TYPES, REGRESSION, SINGLE_LABEL, problem_named
from warmstart.run_folder import CONFIG_NAME, read_run_config

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
BACKENDS = ("torch", "onnx")
# the graphs an ONNX export holds (warmstart.serving)
ONNX_PRECISIONS = ("fp32", "int8")


@dataclass
class Predictor:
    """A classifier ready to predict, with the preprocessing it was evaluated with.

    Attributes:
        model: the network, in eval mode on ``device``: a timm model (images) or a transformers sequence classifier;
            with the ``onnx`` backend, an ONNX Runtime session over the model's export
            (:class:`warmstart.serving.OnnxSession`).
        modality: ``image`` or ``text``.
        labels: class names, in id order (the probability columns follow it).
        device: where the model runs.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast); ``onnx``: ``fp32`` or ``int8`` (which graph).
        preprocess: images: the timm evaluation transform (PIL image -> tensor); text: a function of one column of
            texts (or two, for pairs) -> token ids, truncated and not padded.
        model_dir: the directory the model came from.
        data_config: images: timm's data config (``input_size``, ``crop_pct``, ``mean``...).
        tokenizer: text: the saved tokenizer.
        max_length: text: the truncation length (the run's ``max_seq_length``, else the model's limit).
        text_columns: text: the columns the run trained on, when it recorded them.
        problem_type: the label shape (config.json's ``problem_type``): what :meth:`scores` makes of the logits.
        thresholds: multi-label: each label's decision threshold, as the run decided them (its
            ``warmstart_config.yaml``, ``targets``); 0.5 each where none were recorded.
    """

    model: nn.Module
    modality: str
    labels: list[str]
    device: torch.device
    precision: str
    preprocess: Callable[..., Any]
    model_dir: Path
    data_config: dict[str, Any] | None = None
    tokenizer: Any = None
    max_length: int | None = None
    text_columns: list[str] | None = None
    problem_type: str = SINGLE_LABEL
    thresholds: list[float] | None = None
    backend: str = "torch"

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """What a row's outputs mean, in float32: class probabilities (softmax), label probabilities (sigmoid) or the
        regression's values (as they are: the saved head outputs the targets' units)."""
        logits = logits.float()
        if self.problem_type == MULTI_LABEL:
            return torch.sigmoid(logits)
        if self.problem_type == REGRESSION:
            return logits
        return torch.softmax(logits, dim=-1)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's logits for a preprocessed batch already on ``device``, under the chosen autocast."""
        if self.backend == "onnx":
            return self.model(batch)
        dtype = PRECISIONS[self.precision]
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            if self.modality == "image":
                return self.model(batch["pixel_values"])
            return self.model(**batch).logits


def load_predictor(
    model_name_or_path: str | Path, device: str = "auto", precision: str = "fp32", backend: str = "torch"
) -> Predictor:
    """Loads a saved classifier with the preprocessing recorded next to it.

    Image models (a ``config.json`` in timm's layout, or ``model_type: timm_wrapper``) are loaded with timm and get
    timm's evaluation transform for their saved data config; one probe forward pass checks that the model takes
    the input size that transform makes. Text models must be ``...ForSequenceClassification`` checkpoints; they get
    their saved tokenizer, truncating to the ``max_seq_length`` of the run's ``warmstart_config.yaml`` (else the
    model's limit).

    Args:
        model_name_or_path: a model directory, or a hub id (downloaded, or read from the Hugging Face cache with
            ``HF_HUB_OFFLINE=1``).
        device: ``auto`` (cuda when available), ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast; with ``backend="onnx"``, ``fp32`` or ``int8``: the export's
            ``model.onnx`` or ``model.int8.onnx``.
        backend: ``torch``, or ``onnx``: ONNX Runtime over the export ``recipes/export.py`` wrote into the model's
            ``onnx/`` folder (the CPU, or CUDA where ``onnxruntime-gpu`` is installed), with the preprocessing and
            labels recorded with it; the weights are not loaded into torch.

    Returns:
        The :class:`Predictor`.

    Raises:
        WarmstartError: not a model directory, not a classifier (a bare encoder, a model with no classes), an input
            size the model cannot take, no CUDA device for ``cuda``, or a precision the device cannot run; ``onnx``:
            no export, or a stale one, or ONNX Runtime not installed.
    """
    model_dir = _model_directory(str(model_name_or_path))
    if backend not in BACKENDS:
        raise WarmstartError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    run_device = resolve_device(device)
    if backend == "onnx" and precision not in ONNX_PRECISIONS:
        raise WarmstartError(
            f"--backend onnx runs the export's {' or '.join(ONNX_PRECISIONS)} graph, not {precision!r}: give "
            "--precision fp32 or int8, or --backend torch for autocast"
        )
    if backend == "torch" and precision == "int8":
        raise WarmstartError(
            "--precision int8 is the quantized ONNX export: give --backend onnx (after recipes/export.py --quantize "
            "int8)"
        )
    if backend == "torch" and precision not in PRECISIONS:
        raise WarmstartError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend == "torch" and precision != "fp32":
        check_precision(precision, on_cpu=run_device.type == "cpu", source=f"--precision {precision}")
    config = read_model_config(model_dir)
    if backend == "onnx":
        predictor = _onnx_predictor(model_dir, run_device, precision, device)
        run_device = predictor.device
    elif is_image_model_config(config):
        predictor = _image_predictor(model_dir, config, run_device, precision)
    else:
        predictor = _text_predictor(model_dir, config, run_device, precision)
    predictor.problem_type = config.get("problem_type") or SINGLE_LABEL
    if predictor.problem_type not in PROBLEM_TYPES:
        raise WarmstartError(
            f"{model_dir}/config.json has problem_type {predictor.problem_type!r}, which warmstart does not predict "
            f"(it predicts {', '.join(PROBLEM_TYPES)})"
        )
    if predictor.problem_type == MULTI_LABEL:
        recorded = (_recorded_run_config(model_dir).get("targets") or {}).get("thresholds")
        predictor.thresholds = [float(t) for t in recorded] if recorded else [0.5] * len(predictor.labels)
        if len(predictor.thresholds) != len(predictor.labels):
            raise WarmstartError(
                f"{model_dir}/warmstart_config.yaml records {len(predictor.thresholds)} thresholds for "
                f"{len(predictor.labels)} labels: the model directory is inconsistent"
            )
    logger.info(
        "loaded the %s %s model for %d outputs in %s, on %s (%s, %s)",
        predictor.modality,
        problem_named(predictor.problem_type).description,
        len(predictor.labels),
        model_dir,
        run_device,
        backend,
        precision,
    )
    return predictor


def _model_directory(model_name_or_path: str) -> Path:
    path = Path(model_name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise WarmstartError(
                f"{path} is not a model directory (no config.json): point --model_name_or_path at the output "
                "directory of a warmstart run"
            )
        return path
    if path.exists():
        raise WarmstartError(f"--model_name_or_path {path} is a file: give the model's directory")
    if model_name_or_path.count("/") == 1 and not model_name_or_path.startswith((".", "/")):
        from huggingface_hub import snapshot_download

        try:  # downloaded from the Hub as pipeline() does; from the cache alone with HF_HUB_OFFLINE=1
            return Path(snapshot_download(model_name_or_path))
        except (OSError, ValueError) as err:  # not reachable or not cached (OSErrors), or not a valid repo id
            raise WarmstartError(
                hub_unavailable(f"--model_name_or_path {model_name_or_path!r} (no such directory, so a hub id)", err)
                + "; or point it at the output directory of a warmstart run"
            ) from None
    raise WarmstartError(
        f"--model_name_or_path {model_name_or_path} is neither a model directory nor a hub model id: point it at the "
        "output directory of a warmstart run"
    )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise WarmstartError("--device cuda was asked for but no CUDA GPU is available: use --device cpu or auto")
    elif device not in ("cpu", "cuda"):
        raise WarmstartError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and launched_processes() > 1:
        # each process of a launch on its own GPU, the one of its local rank, as the Trainer (Accelerate) places it
        check_a_gpu_per_process()
        return torch.device("cuda", _local_rank())
    return torch.device(device)


def _local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def _local_processes() -> int:
    """The processes of the launch on this machine (``LOCAL_WORLD_SIZE``, set by ``torchrun``)."""
    try:
        return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        return 1


def check_a_gpu_per_process() -> None:
    gpus, processes = torch.cuda.device_count(), max(_local_processes(), _local_rank() + 1)
    if processes > gpus:
        raise WarmstartError(
            f"{processes} processes were launched on this machine but it has {gpus} CUDA GPU(s): launch at most "
            f"{gpus} per machine (--nproc_per_node), or predict on the CPU with --device cpu"
        )


def _image_predictor(model_dir: Path, config: dict[str, Any], device: torch.device, precision: str) -> Predictor:
    from timm.data import create_transform, resolve_data_config

    timm_model = load_timm_backbone(str(model_dir))
    if not getattr(timm_model, "num_classes", 0):
        raise WarmstartError(
            f"{model_dir} holds a timm model without a classifier (0 classes): predict with a fine-tuned model"
        )
    labels = _image_labels(timm_model, config)
    # the data config timm resolves from the saved pretrained_cfg is the one the recipe evaluated with
    data_config = resolve_data_config({}, model=timm_model)
    data_config["input_size"] = tuple(data_config["input_size"])  # a list when read from config.json
    timm_model.eval().to(device)
    predictor = Predictor(
        model=timm_model,
        modality="image",
        labels=labels,
        device=device,
        precision=precision,
        preprocess=create_transform(**data_config),
        model_dir=model_dir,
        data_config=data_config,
    )
    _check_input_size(predictor)
    return predictor


def _image_labels(timm_model: nn.Module, config: dict[str, Any]) -> list[str]:
    names = timm_model.pretrained_cfg.get("label_names") or config.get("label_names")
    if not names and config.get("id2label"):
        names = [config["id2label"][k] for k in sorted(config["id2label"], key=int)]
    names = [str(n) for n in names] if names else [str(i) for i in range(timm_model.num_classes)]
    if len(names) != timm_model.num_classes:
        raise WarmstartError(
            f"{config.get('architecture', 'the model')} has {timm_model.num_classes} classes but its config.json "
            f"names {len(names)}: the model directory is inconsistent"
        )
    return names


def _check_input_size(predictor: Predictor) -> None:
    """One forward pass on a blank image of the size the transform makes: a model built for another resolution (a
    ViT whose saved ``pretrained_cfg.input_size`` was changed) fails here, named, rather than on the first batch."""
    size = tuple(predictor.data_config["input_size"])
    blank = torch.zeros(1, *size, device=predictor.device)
    try:
        out = predictor.logits({"pixel_values": blank})
    except (RuntimeError, AssertionError, ValueError, TypeError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise WarmstartError(
            f"the model in {predictor.model_dir} cannot take the {'x'.join(map(str, size))} input its saved "
            f"preprocessing makes (config.json pretrained_cfg.input_size; {reason}): the directory is inconsistent, "
            "re-export the model"
        ) from None
    if tuple(out.shape) != (1, len(predictor.labels)):
        raise WarmstartError(
            f"the model in {predictor.model_dir} returns {tuple(out.shape)} per image, not {len(predictor.labels)} "
            "class scores: predict with a fine-tuned classifier"
        )


def _text_predictor(model_dir: Path, config: dict[str, Any], device: torch.device, precision: str) -> Predictor:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    architectures = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        shown = ", ".join(architectures) or config.get("model_type") or "no architecture"
        raise WarmstartError(
            f"{model_dir} holds a {shown} model, not an image classifier or a sequence classifier: predict with the "
            "output of recipes/image_classification.py or recipes/text_classification.py"
        )
    try:
        hf_config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError, KeyError) as err:
        raise WarmstartError(f"cannot read the configuration in {model_dir} ({type(err).__name__})") from None
    if hf_config.num_labels < 1 or not hf_config.id2label:
        raise WarmstartError(f"{model_dir} holds a classifier with no classes (num_labels 0): it has no head to use")
    model, info = load_checked(
        AutoModelForSequenceClassification.from_pretrained, str(model_dir), output_loading_info=True
    )
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise WarmstartError(
            f"{model_dir} lacks {len(missing)} weights of the classifier (e.g. {missing[0]}): its predictions would "
            "be random; the directory is incomplete"
        )
    tokenizer = load_text_tokenizer(str(model_dir))
    recorded = _recorded_run_config(model_dir)
    max_length = recorded.get("max_seq_length") or max_sequence_length(model, tokenizer, None)
    text_columns = recorded.get("text_columns") or None
    return Predictor(
        model=model.eval().to(device),
        modality="text",
        labels=[str(model.config.id2label[i]) for i in range(model.config.num_labels)],
        device=device,
        precision=precision,
        preprocess=_text_encoder(tokenizer, int(max_length)),
        model_dir=model_dir,
        tokenizer=tokenizer,
        max_length=int(max_length),
        text_columns=list(text_columns) if text_columns else None,
    )


def _text_encoder(tokenizer: Any, max_length: int) -> Callable[..., dict[str, list]]:
    def encode(*texts: list[Any]) -> dict[str, list]:
        # as the recipe tokenized (warmstart.data.tokenize_splits): a missing text reads as ""
        cleaned = [["" if t is None else str(t) for t in column] for column in texts]
        return tokenizer(*cleaned, truncation=True, max_length=max_length)

    return encode


def _onnx_predictor(model_dir: Path, device: torch.device, precision: str, asked: str) -> Predictor:
    """A predictor over the model's ONNX export: the preprocessing, labels and truncation recorded in its
    ``export_report.json`` at export (what the torch predictor resolved then), the tokenizer saved beside it."""
    from warmstart.serving.runtime import OnnxSession, onnx_device, read_export, require_onnx_runtime

    onnxruntime = require_onnx_runtime()
    report, path = read_export(model_dir, precision)
    device = onnx_device(device, precision, onnxruntime, asked)
    common = {
        "model": OnnxSession(path, device, onnxruntime),
        "labels": [str(label) for label in report["labels"]],
        "device": device,
        "precision": precision,
        "model_dir": model_dir,
        "backend": "onnx",
    }
    if report["modality"] == "image":
        from timm.data import create_transform

        data_config = {**report["data_config"], "input_size": tuple(report["data_config"]["input_size"])}
        return Predictor(
            modality="image", preprocess=create_transform(**data_config), data_config=data_config, **common
        )
    tokenizer = load_text_tokenizer(str(path.parent))
    return Predictor(
        modality="text",
        preprocess=_text_encoder(tokenizer, int(report["max_length"])),
        tokenizer=tokenizer,
        max_length=int(report["max_length"]),
        text_columns=report.get("text_columns") or None,
        **common,
    )


def _recorded_run_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / CONFIG_NAME
    try:
        return read_run_config(path) or {}
    except (OSError, yaml.YAMLError) as err:
        logger.warning("%s cannot be read (%s): the model's own limits are used", path, str(err).splitlines()[0])
        return {}
