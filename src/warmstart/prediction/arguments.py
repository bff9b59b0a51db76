"""The arguments of ``recipes/predict.py``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from warmstart.data.sources import (
    check_encoding,
)
from warmstart.errors import WarmstartError


@dataclass
class PredictionArguments:
    """The arguments of ``recipes/predict.py``."""

    model_name_or_path: str = field(
        default=None,
        metadata={
            "help": "A warmstart output directory (or another hub-format classifier, or a hub id: downloaded, or "
            "read from the cache with HF_HUB_OFFLINE=1)."
        },
    )
    input: str = field(
        default=None,
        metadata={
            "help": "An image folder (sub-folders allowed), a csv / tsv / json / jsonl / parquet file, or a hub "
            "dataset split as name[:config]:split (e.g. imdb:test; downloaded, or from the cache with "
            "HF_HUB_OFFLINE=1)."
        },
    )
    output: str = field(default="predictions.csv", metadata={"help": "The CSV to write (a .tsv name: tab-separated)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing --output."})
    batch_size: int = field(default=64, metadata={"help": "Inputs per forward pass."})
    device: Literal["auto", "cpu", "cuda"] = field(
        default="auto", metadata={"help": "Where the model runs (auto: cuda when available)."}
    )
    backend: Literal["torch", "onnx"] = field(
        default="torch",
        metadata={
            "help": "torch, or onnx: ONNX Runtime over the model's export (recipes/export.py; the CPU, or CUDA with "
            "onnxruntime-gpu)."
        },
    )
    precision: Literal["fp32", "bf16", "fp16", "int8"] = field(
        default="fp32",
        metadata={
            "help": "torch: autocast precision of the forward pass (fp16 needs a GPU); onnx: fp32 or int8 (the "
            "export's model.onnx or model.int8.onnx)."
        },
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
        metadata={
            "help": "A column of true labels (regression: the target's column; several, comma-separated): when the "
            "input has it, the headline metric is reported too."
        },
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
            raise WarmstartError(
                "--input is required: an image folder, a data file or a dataset split (name[:config]:split)"
            )
        check_encoding(self.encoding)
        if self.batch_size < 1:
            raise WarmstartError(f"--batch_size must be a positive integer, got {self.batch_size}")
        if self.num_workers < 0:
            raise WarmstartError(f"--num_workers must be 0 or more, got {self.num_workers}")
