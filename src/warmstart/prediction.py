"""Batch prediction with a saved classifier: one row per input (its id, the predicted label and one probability per
class), preprocessed exactly as the model was evaluated in training, from what its directory holds.

An image model's preprocessing is timm's evaluation transform for the data config saved in its ``config.json``
(``pretrained_cfg``: resolution, crop, interpolation, mean and std); a text model's is its saved tokenizer, with the
truncation length and text columns the run recorded in ``warmstart_config.yaml``. Nothing is re-specified, so a
prediction cannot quietly preprocess otherwise than the model was validated with.

    predictor = load_predictor("outputs/resnet18-top2", device="auto")
    data = read_prediction_input("photos/", predictor)
    probs = predict(predictor, data, batch_size=64)
    write_predictions("predictions.csv", data.ids, predictor.labels, probs)

Under a multi-process launch (``torchrun --nproc_per_node N`` or ``accelerate launch``) the work is split: each
process predicts every N-th row from its rank on, on its own device (the GPU of its local rank, or the CPU), and
every process gathers the whole table in input order; the main process alone writes the file. Decisions are taken
once for all processes, so that a refusal is one ``error:`` line and no process waits on another that stopped:

    start_prediction_processes(device="auto")
    check_output_path_once("predictions.csv")
    with stop_together():  # a bad model or input in any process stops them all, reported once
        predictor = load_predictor("outputs/resnet18-top2", device="auto")
        data = read_prediction_input("photos/", predictor)
    probs, rows_here = predict_in_processes(predictor, data, batch_size=64)
    write_predictions_once("predictions.csv", data.ids, predictor.labels, probs)

In one process each of these is the single-process step it wraps.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import datasets
import torch
import torch.distributed as dist
import yaml
from datasets import ClassLabel, DatasetDict
from PIL import UnidentifiedImageError
from torch import nn
from tqdm.auto import tqdm

from warmstart.data import (
    TextCollator,
    check_text_cells,
    resolve_image_column,
    resolve_text_columns,
)
from warmstart.distributed import (
    active,
    ensure_process_group,
    gather_rows,
    is_main_process,
    launched_processes,
    rank,
    shard_rows,
)
from warmstart.errors import WarmstartError
from warmstart.export import CONFIG_NAME
from warmstart.images import load_image
from warmstart.models import (
    _load_checked,
    is_image_model_config,
    load_text_tokenizer,
    load_timm_backbone,
    max_sequence_length,
    read_model_config,
)
from warmstart.precision import check_precision
from warmstart.sources import (
    LOAD_ERRORS,
    check_encoding,
    datasets_errors_not_logged,
    image_files,
    read_table,
    root_cause,
)

logger = logging.getLogger(__name__)

ID_COLUMN = "id"
PREDICTION_COLUMN = "predicted_label"
PROBABILITY_PREFIX = "prob_"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_IMAGE_FOLDER_COLUMN = "image"


@dataclass
class PredictionArguments:
    """The arguments of ``recipes/predict.py``."""

    model_name_or_path: str = field(
        default=None,
        metadata={"help": "A warmstart output directory (or another hub-format classifier, or a cached hub id)."},
    )
    input: str = field(
        default=None,
        metadata={
            "help": "An image folder (sub-folders allowed), a csv / tsv / json / jsonl / parquet file, or a hub "
            "dataset split in the local cache as name[:config]:split (e.g. imdb:test)."
        },
    )
    output: str = field(default="predictions.csv", metadata={"help": "The CSV to write (a .tsv name: tab-separated)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing --output."})
    batch_size: int = field(default=64, metadata={"help": "Inputs per forward pass."})
    device: Literal["auto", "cpu", "cuda"] = field(
        default="auto", metadata={"help": "Where the model runs (auto: cuda when available)."}
    )
    precision: Literal["fp32", "bf16", "fp16"] = field(
        default="fp32", metadata={"help": "Autocast precision of the forward pass (fp16 needs a GPU)."}
    )
    id_column: str | None = field(
        default=None, metadata={"help": "Tables: the column that identifies each row (default: the row number)."}
    )
    image_column_name: str | None = field(
        default=None, metadata={"help": "Tables: the column of images or image paths (default: guessed)."}
    )
    text_column_names: str | None = field(
        default=None,
        metadata={
            "help": "Tables: the text column, or two comma-separated for pairs (default: the ones the model was "
            "trained on, else guessed)."
        },
    )
    label_column_name: str = field(
        default="label",
        metadata={"help": "A column of true labels: when the input has it, accuracy is reported too."},
    )
    encoding: str | None = field(
        default=None,
        metadata={"help": "Tables: the text encoding, e.g. cp1252 (default: UTF-8, or what a byte-order mark says)."},
    )
    num_workers: int = field(default=0, metadata={"help": "Images: processes decoding and transforming them."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar."})

    def __post_init__(self) -> None:
        if not self.model_name_or_path:
            raise WarmstartError("--model_name_or_path is required: a warmstart output directory")
        if not self.input:
            raise WarmstartError("--input is required: an image folder, a data file or a cached dataset split")
        check_encoding(self.encoding)
        if self.batch_size < 1:
            raise WarmstartError(f"--batch_size must be a positive integer, got {self.batch_size}")
        if self.num_workers < 0:
            raise WarmstartError(f"--num_workers must be 0 or more, got {self.num_workers}")


@dataclass
class Predictor:
    """A classifier ready to predict, with the preprocessing it was evaluated with.

    Attributes:
        model: the network, in eval mode on ``device``: a timm model (images) or a transformers sequence classifier.
        modality: ``image`` or ``text``.
        labels: class names, in id order (the probability columns follow it).
        device: where the model runs.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast).
        preprocess: images: the timm evaluation transform (PIL image -> tensor); text: a function of one column of
            texts (or two, for pairs) -> token ids, truncated and not padded.
        model_dir: the directory the model came from.
        data_config: images: timm's data config (``input_size``, ``crop_pct``, ``mean``...).
        tokenizer: text: the saved tokenizer.
        max_length: text: the truncation length (the run's ``max_seq_length``, else the model's limit).
        text_columns: text: the columns the run trained on, when it recorded them.
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

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's logits for a preprocessed batch already on ``device``, under the chosen autocast."""
        dtype = PRECISIONS[self.precision]
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            if self.modality == "image":
                return self.model(batch["pixel_values"])
            return self.model(**batch).logits


@dataclass
class PredictionInput:
    """What to predict on.

    Attributes:
        ids: one id per row, as written to the output (image path relative to the folder, the ``--id_column``
            value, or the row number).
        dataset: the rows; images (undecoded) in ``columns[0]``, or text in ``columns``.
        columns: the image column, or the text column(s).
        true_labels: the true label id of each row, when the input has labels the model knows; else ``None``.
        source: the input as given, for messages.
    """

    ids: list[str]
    dataset: datasets.Dataset
    columns: list[str]
    true_labels: list[int] | None = None
    source: str = ""


# ---------------------------------------------------------------------------------------------------------- model


def load_predictor(model_name_or_path: str | Path, device: str = "auto", precision: str = "fp32") -> Predictor:
    """Loads a saved classifier with the preprocessing recorded next to it.

    Image models (a ``config.json`` in timm's layout, or ``model_type: timm_wrapper``) are loaded with timm and get
    timm's evaluation transform for their saved data config; one probe forward pass checks that the model takes
    the input size that transform makes. Text models must be ``...ForSequenceClassification`` checkpoints; they get
    their saved tokenizer, truncating to the ``max_seq_length`` of the run's ``warmstart_config.yaml`` (else the
    model's limit).

    Args:
        model_name_or_path: a model directory, or a hub id whose files are in the Hugging Face cache.
        device: ``auto`` (cuda when available), ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast.

    Returns:
        The :class:`Predictor`.

    Raises:
        WarmstartError: not a model directory, not a classifier (a bare encoder, a model with no classes), an input
            size the model cannot take, no CUDA device for ``cuda``, or a precision the device cannot run.
    """
    model_dir = _model_directory(str(model_name_or_path))
    run_device = _resolve_device(device)
    if precision not in PRECISIONS:
        raise WarmstartError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "fp32":
        check_precision(precision, on_cpu=run_device.type == "cpu", source=f"--precision {precision}")
    config = read_model_config(model_dir)
    if is_image_model_config(config):
        predictor = _image_predictor(model_dir, config, run_device, precision)
    else:
        predictor = _text_predictor(model_dir, config, run_device, precision)
    logger.info(
        "loaded the %s classifier for %d labels in %s, on %s (%s)",
        predictor.modality,
        len(predictor.labels),
        model_dir,
        run_device,
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

        try:
            return Path(snapshot_download(model_name_or_path, local_files_only=True))
        except (OSError, ValueError):  # not in the cache (a FileNotFoundError), or not a valid repo id
            pass
    raise WarmstartError(
        f"--model_name_or_path {model_name_or_path} is neither a model directory nor a hub model in the local "
        "cache: point it at the output directory of a warmstart run"
    )


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise WarmstartError("--device cuda was asked for but no CUDA GPU is available: use --device cpu or auto")
    elif device not in ("cpu", "cuda"):
        raise WarmstartError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and launched_processes() > 1:
        # each process of a launch on its own GPU, the one of its local rank, as the Trainer (Accelerate) places it
        _check_a_gpu_per_process()
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


def _check_a_gpu_per_process() -> None:
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
    model, info = _load_checked(
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

    def encode(*texts: list[Any]) -> dict[str, list]:
        # as the recipe tokenized (warmstart.data.tokenize_splits): a missing text reads as ""
        cleaned = [["" if t is None else str(t) for t in column] for column in texts]
        return tokenizer(*cleaned, truncation=True, max_length=max_length)

    return Predictor(
        model=model.eval().to(device),
        modality="text",
        labels=[str(model.config.id2label[i]) for i in range(model.config.num_labels)],
        device=device,
        precision=precision,
        preprocess=encode,
        model_dir=model_dir,
        tokenizer=tokenizer,
        max_length=int(max_length),
        text_columns=list(text_columns) if text_columns else None,
    )


def _recorded_run_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        recorded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        logger.warning("%s cannot be read (%s): the model's own limits are used", path, str(err).splitlines()[0])
        return {}
    return recorded if isinstance(recorded, dict) else {}


# ---------------------------------------------------------------------------------------------------------- input


def parse_dataset_spec(spec: str) -> tuple[str, str | None, str]:
    """Splits a dataset split given as ``name[:config]:split`` (a split may carry a slice: ``imdb:test[:100]``).

    Returns:
        ``(name, config or None, split)``.

    Raises:
        WarmstartError: not of that form.

    Example:
        >>> parse_dataset_spec("glue:sst2:validation")
        ('glue', 'sst2', 'validation')
    """
    head, bracket, tail = spec.partition("[")
    parts = head.split(":")
    if len(parts) not in (2, 3) or not all(p.strip() for p in parts):
        raise WarmstartError(
            f"--input {spec} does not exist: give an image folder, a csv / tsv / json / jsonl / parquet file, or a "
            "cached dataset split as name[:config]:split (e.g. imdb:test)"
        )
    name, *config, split = (p.strip() for p in parts)
    return name, (config[0] if config else None), split + bracket + tail


def read_prediction_input(
    source: str | Path,
    predictor: Predictor,
    *,
    id_column: str | None = None,
    image_column: str | None = None,
    text_columns: str | Sequence[str] | None = None,
    label_column: str | None = "label",
    encoding: str | None = None,
) -> PredictionInput:
    """Reads the inputs to predict on.

    ``source`` is an image folder (every image PIL reads, sub-folders included, sorted by path; the id is the path
    relative to the folder), a csv / tsv / json / jsonl / parquet file, or a dataset split from the local Hugging
    Face cache given as ``name[:config]:split`` (whatever ``datasets.load_dataset(name, config, split=split)``
    reads offline, a local dataset folder included). A table's id is ``id_column``'s value, else the row number.

    Images in a table come from ``image_column`` (an ``Image`` feature or image paths, relative ones read from the
    table's folder first), else the first ``Image`` column, else ``image`` / ``img``. Text comes from
    ``text_columns``, else the columns the model was trained on, else a common name (``text``, ``sentence``,
    ``premise,hypothesis``...).

    True labels, for accuracy: ``label_column`` when the input has it and all its values are the model's label
    names (or ids); for an image folder, the first-level sub-folder of each image (deeper folders are storage, as
    in training) when every one is named after a label.

    Args:
        source: the input (see above).
        predictor: the model it is for (its modality, labels and recorded text columns).
        id_column: tables: the column of ids.
        image_column: tables: the image column.
        text_columns: tables: one text column or a pair (``"a,b"`` or ``["a", "b"]``).
        label_column: the column of true labels, used only when present.
        encoding: a table's text encoding (``None``: UTF-8, or what its byte-order mark says).

    Returns:
        The :class:`PredictionInput`.

    Raises:
        WarmstartError: a missing input, an unreadable file, no rows, or a missing id / image / text column.
    """
    source = str(source)
    path = Path(source)
    if path.is_dir():
        if predictor.modality == "image":
            return _read_image_folder(path, predictor)
        raise WarmstartError(
            f"--input {path} is a folder but the model is a text classifier: give a csv / tsv / json / jsonl / "
            "parquet file or a cached dataset split (name[:config]:split)"
        )
    data = read_table(path, "--input", encoding=encoding, empty="nothing to predict") if path.is_file() else None
    data = data if data is not None else _read_dataset_split(source)
    if len(data) == 0:
        raise WarmstartError(f"--input {source} has no rows: nothing to predict")
    ids = _row_ids(data, id_column)
    if predictor.modality == "image":
        base_dir = path.resolve().parent if path.is_file() else None
        data, column = _image_column(data, image_column, base_dir, f"--input {source}")
        columns = [column]
        data = data.cast_column(column, datasets.Image(decode=False))
    else:
        columns = _text_columns(data, predictor, text_columns, label_column)
        check_text_cells(DatasetDict({"input": data}), columns, where={"input": f"--input {source}"})
    true_labels = _true_labels(data, label_column, predictor.labels) if label_column else None
    return PredictionInput(ids=ids, dataset=data, columns=columns, true_labels=true_labels, source=source)


def _read_image_folder(folder: Path, predictor: Predictor) -> PredictionInput:
    files = image_files(folder)  # at any depth, any case of extension, hidden files left out, sorted
    if not files:
        raise WarmstartError(f"--input {folder} holds no image files: nothing to predict")
    relative = [f.relative_to(folder) for f in files]
    data = datasets.Dataset.from_dict({_IMAGE_FOLDER_COLUMN: [{"path": str(f), "bytes": None} for f in files]})
    data = data.cast_column(_IMAGE_FOLDER_COLUMN, datasets.Image(decode=False))
    label_ids = {label: i for i, label in enumerate(predictor.labels)}
    folders = [r.parts[0] if len(r.parts) >= 2 else None for r in relative]  # as training: the first-level folder
    true_labels = [label_ids[f] for f in folders] if all(f in label_ids for f in folders) else None
    return PredictionInput(
        ids=[r.as_posix() for r in relative],
        dataset=data,
        columns=[_IMAGE_FOLDER_COLUMN],
        true_labels=true_labels,
        source=str(folder),
    )


def _read_dataset_split(spec: str) -> datasets.Dataset:
    name, config, split = parse_dataset_spec(spec)
    try:
        with datasets_errors_not_logged():
            data = datasets.load_dataset(name, config, split=split)
    except LOAD_ERRORS as err:  # ConnectionError and the hub's offline errors are OSErrors
        raise WarmstartError(
            f"cannot load split {split!r} of dataset {name!r}{f' ({config})' if config else ''}: {root_cause(err)} "
            "(warmstart runs offline: the dataset must be in the Hugging Face cache)"
        ) from None
    if not isinstance(data, datasets.Dataset):
        raise WarmstartError(f"--input {spec} is not one split of a dataset: name the split as name[:config]:split")
    return data


def _require_input_column(data: datasets.Dataset, column: str, flag: str) -> None:
    if column not in data.column_names:
        raise WarmstartError(
            f"the input has no column {column!r} (columns: {', '.join(data.column_names)}): set {flag} to one of them"
        )


def _row_ids(data: datasets.Dataset, id_column: str | None) -> list[str]:
    if id_column is None:
        return [str(i) for i in range(len(data))]
    _require_input_column(data, id_column, "--id_column")
    return [str(v) for v in data[id_column]]


def _image_column(
    data: datasets.Dataset, image_column: str | None, base_dir: Path | None, where: str
) -> tuple[datasets.Dataset, str]:
    if image_column is not None:
        _require_input_column(data, image_column, "--image_column_name")
    # guessed and checked as in training (an Image feature or a column of paths, read relative to the table first)
    splits = DatasetDict({"input": data})
    column = resolve_image_column(splits, image_column, "prediction", {"input": base_dir}, where={"input": where})
    return splits["input"], column


def _text_columns(
    data: datasets.Dataset, predictor: Predictor, given: str | Sequence[str] | None, label_column: str | None
) -> list[str]:
    if isinstance(given, str):
        given = [c.strip() for c in given.split(",") if c.strip()]
    names = list(given) if given else predictor.text_columns
    if names:
        if predictor.text_columns and len(names) != len(predictor.text_columns):
            trained = ", ".join(predictor.text_columns)
            raise WarmstartError(
                f"the model was trained on {len(predictor.text_columns)} text column(s) ({trained}), "
                f"--text_column_names gives {len(names)}: give {len(predictor.text_columns)}"
            )
        for name in names:
            _require_input_column(data, name, "--text_column_names")
    splits = DatasetDict({"train": data})
    return resolve_text_columns(splits, ",".join(names) if names else None, label_column or "")


def _true_labels(data: datasets.Dataset, label_column: str, labels: Sequence[str]) -> list[int] | None:
    """The true label ids of the rows, when ``label_column`` holds the model's label names or ids throughout."""
    if label_column not in data.column_names:
        return None
    feature = data.features[label_column]
    values = data[label_column]
    by_name = {label: i for i, label in enumerate(labels)}
    if isinstance(feature, ClassLabel):
        if not all(name in by_name for name in feature.names) or any(v is None or v < 0 for v in values):
            return None
        return [by_name[feature.names[v]] for v in values]
    if all(v is not None and str(v) in by_name for v in values):
        return [by_name[str(v)] for v in values]
    if all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(labels) for v in values):
        return list(values)
    logger.info("column %r does not hold the model's labels: no accuracy is reported", label_column)
    return None


# ---------------------------------------------------------------------------------------------------------- predict


class _ImageRows(torch.utils.data.Dataset):
    """Decodes and transforms the images of a :class:`PredictionInput` one row at a time (a table's image bytes stay
    on disk until needed). A row that cannot be read gives its error message instead of pixels: raised in a
    DataLoader worker, the error would reach the user wrapped in the worker's traceback."""

    def __init__(self, data: PredictionInput, transform: Callable):
        self.dataset = data.dataset
        self.column = data.columns[0]
        self.transform = transform
        self.source = data.source

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, row: int) -> tuple[int, torch.Tensor | None, str | None]:
        value = self.dataset[row][self.column]
        if value is None or not (value.get("bytes") or value.get("path")):
            return row, None, f"row {row} of {self.source} has no image: fill or drop it"
        name = value.get("path") or f"row {row} of {self.source}"
        try:
            image = load_image(value)  # upright, first frame, RGB, as in training: warmstart.images
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            return row, None, f"image {name} cannot be read ({err}): remove or replace the file"
        return row, self.transform(image), None


def _image_batch(items: list[tuple[int, torch.Tensor | None, str | None]]) -> tuple[list[int], dict[str, Any]]:
    errors = [error for _, _, error in items if error]
    if errors:
        return [], {"error": errors[0]}
    return [row for row, _, _ in items], {"pixel_values": torch.stack([pixels for _, pixels, _ in items])}


def predict_batches(
    predictor: Predictor,
    data: PredictionInput,
    batch_size: int = 64,
    *,
    progress: bool = True,
    num_workers: int = 0,
    rows: Sequence[int] | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Runs the model over the input in batches.

    Images are decoded and transformed (``num_workers`` processes) in input order; texts are tokenized once and
    batched longest first, each batch padded to its own longest text, as the recipe evaluates.

    Args:
        predictor: the model (:func:`load_predictor`).
        data: the input (:func:`read_prediction_input`).
        batch_size: inputs per forward pass.
        progress: show a tqdm progress bar (rows).
        num_workers: images: DataLoader worker processes.
        rows: the row numbers of ``data`` to predict (a process's share of a multi-process run); ``None``: all.

    Yields:
        ``(rows, probabilities)``: the batch's row numbers in ``data`` and a ``(len(rows), num_labels)`` float32 CPU
        tensor, the softmax of the logits computed in float32.

    Raises:
        WarmstartError: ``batch_size`` < 1, or an image that cannot be read (named).
    """
    if batch_size < 1:
        raise WarmstartError(f"--batch_size must be a positive integer, got {batch_size}")
    if predictor.modality == "image":
        batches = torch.utils.data.DataLoader(
            _ImageRows(data, predictor.preprocess),
            batch_size=batch_size,
            sampler=rows,
            num_workers=num_workers,
            collate_fn=_image_batch,
            pin_memory=predictor.device.type == "cuda",
        )
    else:
        batches = _text_batches(predictor, data, batch_size, rows)
    total = len(data.ids) if rows is None else len(rows)
    with tqdm(total=total, unit="row", desc="predicting", disable=not progress) as bar:
        for batch_rows, batch in batches:
            if "error" in batch:
                raise WarmstartError(batch["error"])
            batch = {k: v.to(predictor.device, non_blocking=True) for k, v in batch.items()}
            logits = predictor.logits(batch)
            yield batch_rows, torch.softmax(logits.float(), dim=-1).cpu()
            bar.update(len(batch_rows))


def _text_batches(
    predictor: Predictor, data: PredictionInput, batch_size: int, rows: Sequence[int] | None = None
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    # only the rows asked for are read and tokenized: a process of a multi-process run does its share alone
    dataset = data.dataset if rows is None else data.dataset.select(rows)
    if len(dataset) == 0:
        return
    numbers = range(len(dataset)) if rows is None else list(rows)
    encoded = predictor.preprocess(*(dataset[c] for c in data.columns))
    features = [dict(zip(encoded.keys(), values)) for values in zip(*encoded.values())]
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]), reverse=True)
    collate = TextCollator(predictor.tokenizer)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        yield [numbers[i] for i in batch], collate([features[i] for i in batch])


def predict(
    predictor: Predictor,
    data: PredictionInput,
    batch_size: int = 64,
    *,
    progress: bool = True,
    num_workers: int = 0,
    rows: Sequence[int] | None = None,
) -> torch.Tensor:
    """The class probabilities of every input row, in input order: :func:`predict_batches` gathered.

    Args:
        rows: the row numbers of ``data`` to predict, the others being left out; ``None``: all.

    Returns:
        A ``(rows, num_labels)`` float32 tensor: a row per input row, or per entry of ``rows`` in its order.
    """
    count = len(data.ids) if rows is None else len(rows)
    probs = torch.empty(count, len(predictor.labels), dtype=torch.float32)
    # the batches name rows of the input; with a subset, each goes to its place in ``rows``
    place = None if rows is None else {row: i for i, row in enumerate(rows)}
    batches = predict_batches(predictor, data, batch_size, progress=progress, num_workers=num_workers, rows=rows)
    for batch_rows, batch_probs in batches:
        probs[batch_rows if place is None else [place[row] for row in batch_rows]] = batch_probs
    return probs


def prediction_accuracy(probs: torch.Tensor, true_labels: Sequence[int] | None) -> float | None:
    """The share of rows whose most probable class is the true one; ``None`` without true labels."""
    if true_labels is None or len(true_labels) == 0:
        return None
    return (probs.argmax(dim=-1) == torch.as_tensor(list(true_labels))).float().mean().item()


# ------------------------------------------------------------------------------------------------------ processes


def start_prediction_processes(device: str = "auto") -> None:
    """Sets up the process group of a multi-process launch (``torchrun``, ``accelerate launch``) before the model
    loads: gloo when the processes predict on the CPU, nccl when each has a CUDA GPU. Processes other than the main
    one show no progress bars. Nothing in one process.

    Args:
        device: the ``--device`` asked for (``auto``, ``cpu`` or ``cuda``).

    Raises:
        WarmstartError: a GPU run launched with more processes on a machine than it has GPUs (raised in the main
            process; the others exit with status 2).
    """
    if launched_processes() <= 1:
        return
    on_gpu = device != "cpu" and torch.cuda.is_available()
    if on_gpu:
        try:
            _check_a_gpu_per_process()
        except WarmstartError as err:
            # setting the group up would fail in the processes without a GPU, with a CUDA traceback; every process
            # sees the same launch, so all stop here, without a group to agree in
            _stop_all_processes(str(err))
    ensure_process_group(use_cpu=not on_gpu)
    if not is_main_process():
        # the main process's bars (reading the input, loading the weights) stand for all: a copy from every process,
        # interleaved on one terminal, would garble them
        from transformers.utils import logging as transformers_logging

        datasets.disable_progress_bars()
        transformers_logging.disable_progress_bar()


def _stop_all_processes(message: str) -> NoReturn:
    """Stops on a problem that every process of the launch stops on: the main process raises it (``run_cli`` prints
    it), the others exit with the same status in silence, so that the terminal shows it once, not once a process."""
    if launched_processes() > 1 and not is_main_process():
        raise SystemExit(2)
    raise WarmstartError(message)


@contextlib.contextmanager
def stop_together() -> Iterator[None]:
    """Runs a step that bad input can fail in some processes only (an unreadable image in one's share) or in all
    (a missing input); at the step's end the processes agree, and a failure in any stops every one of them with a
    single message, the main process's own when it has one. Without it, a process that stops leaves the others
    waiting for it in the next collective until the launcher kills them, and a failure of all is printed by each.

    Every process must run the block: its end is a collective, a barrier too. In one process, the block alone.

    Raises:
        WarmstartError: the step's, in the main process (the others exit with status 2).
    """
    if not active():
        yield
        return
    problem = None
    try:
        yield
    except WarmstartError as err:
        problem = str(err)
    problems: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    first = next((p for p in problems if p is not None), None)  # in rank order: the main process's first
    if first is not None:
        _stop_all_processes(first)


def predict_in_processes(
    predictor: Predictor,
    data: PredictionInput,
    batch_size: int = 64,
    *,
    progress: bool = True,
    num_workers: int = 0,
) -> tuple[torch.Tensor, int]:
    """:func:`predict` with the rows split between the processes of a launch: each predicts its share on its own
    device (every world-th row from its rank on, :func:`~warmstart.distributed.shard_rows`: an input sorted by
    length still gives each a similar share of the work), and every process gathers the whole table, in input
    order. In one process, :func:`predict`.

    Args:
        predictor: the model, loaded by every process (:func:`load_predictor`).
        data: the input, read by every process (:func:`read_prediction_input`).
        batch_size: inputs per forward pass.
        progress: show a progress bar (on the main process only, for its share).
        num_workers: images: DataLoader worker processes of each process.

    Returns:
        ``(probabilities, rows_predicted_here)``: the ``(rows, num_labels)`` float32 probabilities of every input
        row, in input order, the same in every process; and how many of them this process computed.

    Raises:
        WarmstartError: as :func:`predict`, in any process (raised in the main one; the others exit with status 2).
    """
    if not active():
        probs = predict(predictor, data, batch_size, progress=progress, num_workers=num_workers)
        return probs, len(data.ids)
    count = len(data.ids)
    mine = shard_rows(count)
    with stop_together():
        probs = predict(
            predictor, data, batch_size, progress=progress and is_main_process(), num_workers=num_workers, rows=mine
        )
    logger.info("process %d of %d predicted %d of the %d rows", rank(), dist.get_world_size(), len(mine), count)
    return gather_rows(probs, count, _collective_device()), len(mine)


def _collective_device() -> torch.device:
    """Where the group's collectives run: nccl moves CUDA tensors only, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------------------- output


def check_output_path(path: str | Path, overwrite: bool = False) -> Path:
    """Refuses an output that exists (unless ``overwrite``), is a folder, or cannot be written; checked before any
    prediction runs.

    Raises:
        WarmstartError: as above.
    """
    path = Path(path)
    if path.is_dir():
        raise WarmstartError(f"--output {path} is a folder: give a file name, e.g. {path / 'predictions.csv'}")
    if path.exists() and not overwrite:
        raise WarmstartError(f"--output {path} already exists: choose another file or pass --overwrite true")
    existing = next(p for p in (path.absolute().parent, *path.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise WarmstartError(f"--output {path} cannot be written ({existing} is not a writable folder)")
    return path


def check_output_path_once(path: str | Path, overwrite: bool = False) -> Path:
    """:func:`check_output_path`, decided by the main process (the one that writes) and agreed by all the processes
    of a launch: a refusal stops every one of them at once, with one message, rather than leaving the others to
    load the model and wait for a process that stopped. In one process, :func:`check_output_path`.

    Raises:
        WarmstartError: as :func:`check_output_path` (raised in the main process; the others exit with status 2).
    """
    if not active():
        return check_output_path(path, overwrite)
    with stop_together():
        if is_main_process():
            check_output_path(path, overwrite)
    return Path(path)


def write_predictions_once(
    path: str | Path,
    ids: Sequence[str],
    labels: Sequence[str],
    probs: torch.Tensor,
    *,
    overwrite: bool = False,
) -> Path:
    """:func:`write_predictions` by the main process alone, the others waiting until it is written (or failed, which
    stops them all): no process returns, and so the launch does not end, before the file is in place. In one
    process, :func:`write_predictions`.

    Raises:
        WarmstartError: as :func:`write_predictions` (raised in the main process; the others exit with status 2).
    """
    with stop_together():  # its closing collective is the barrier
        if not active() or is_main_process():
            write_predictions(path, ids, labels, probs, overwrite=overwrite)
    return Path(path)


def write_predictions(
    path: str | Path,
    ids: Sequence[str],
    labels: Sequence[str],
    probs: torch.Tensor,
    *,
    overwrite: bool = False,
) -> Path:
    """Writes one row per input: ``id``, ``predicted_label`` and ``prob_<label>`` per class (9 significant digits,
    a float32 exactly), comma-separated (tab for a ``.tsv`` name).

    The file is written next to its final place and moved there in one step (``os.replace``): a crash leaves
    neither half a file nor a damaged older one.

    Raises:
        WarmstartError: the output exists and ``overwrite`` is off, or it cannot be written.
    """
    path = check_output_path(path, overwrite)
    if probs.shape != (len(ids), len(labels)):
        raise ValueError(f"probabilities of shape {tuple(probs.shape)} for {len(ids)} ids and {len(labels)} labels")
    path.parent.mkdir(parents=True, exist_ok=True)
    predicted = probs.argmax(dim=-1).tolist()
    values = probs.tolist()
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            writer.writerow([ID_COLUMN, PREDICTION_COLUMN, *(f"{PROBABILITY_PREFIX}{label}" for label in labels)])
            for row_id, best, row in zip(ids, predicted, values):
                writer.writerow([row_id, labels[best], *(format(p, ".9g") for p in row)])
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
