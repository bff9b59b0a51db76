"""Recipe arguments: dataclasses parsed by ``HfArgumentParser`` with ``TrainingArguments``, from the command line or
one YAML / JSON file given first (``recipe.py config.yaml --learning_rate 1e-4``: the command line wins)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from warmstart.data.sources import check_encoding
from warmstart.distributed import launched_processes
from warmstart.errors import WarmstartError
from warmstart.freezing import FreezePolicy
from warmstart.precision import (
    PrecisionChoice,
    check_precision,
    choose_precision,
    requested_precision,
    training_on_cpu,
)

CONFIG_FILE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=None,
        metadata={"help": "Local hub-format directory, hub id in the HF cache, or timm architecture name (required)."},
    )
    random_init: bool = field(
        default=False, metadata={"help": "Build the architecture only, without pretrained weights (a baseline)."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow model code from the model directory or hub repo to run."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a different model already saved in --output_dir."}
    )
    reset_head: bool = field(
        default=False,
        metadata={
            "help": "Start a new classification head even when the base model (an earlier run) has one for the same "
            "labels; a head for other labels is always replaced."
        },
    )

    def __post_init__(self) -> None:
        if not self.model_name_or_path:
            raise WarmstartError("--model_name_or_path is required: a model directory, hub id or timm name")


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id (from the local cache)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of --dataset_name."})
    train_file: str | None = field(default=None, metadata={"help": "csv / tsv / json / jsonl / parquet file."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation file (same format)."})
    test_file: str | None = field(default=None, metadata={"help": "Test file (same format)."})
    train_dir: str | None = field(default=None, metadata={"help": "Image folder: one sub-folder per class."})
    validation_dir: str | None = field(default=None, metadata={"help": "Validation image folder."})
    test_dir: str | None = field(default=None, metadata={"help": "Test image folder."})
    text_column_names: str | None = field(
        default=None, metadata={"help": "Text column, or two comma-separated for pairs (default: guessed)."}
    )
    image_column_name: str | None = field(default=None, metadata={"help": "Image column (default: guessed)."})
    label_column_name: str = field(default="label", metadata={"help": "Label column."})
    encoding: str | None = field(
        default=None,
        metadata={"help": "Tables: the text encoding, e.g. cp1252 (default: UTF-8, or what a byte-order mark says)."},
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Longest tokenized input; longer ones are truncated (default: model's, <=512)."},
    )
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of train held out as validation when there is no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use a seeded subset of train."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use seeded subsets of validation / test."})
    image_size: int | None = field(
        default=None, metadata={"help": "Input resolution in pixels (default: the model's pretrained config)."}
    )
    hflip: float | None = field(
        default=None,
        metadata={
            "help": "Probability of a horizontal flip in training (images); default 0.5, or none when the features of "
            "a frozen backbone are cached (augmentation asked for explicitly turns the cache off)."
        },
    )
    group_by_length: bool = field(
        default=True,
        metadata={"help": "Text: batch training examples of similar length together (less padding, same data)."},
    )
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "Text: pad each batch to a multiple of this (8 suits GPU tensor cores)."}
    )
    random_crop_scale: list[float] | None = field(
        default=None,
        metadata={
            "help": "Area range of the random-resized crop in training, e.g. 0.5 1.0 (default: timm's 0.08 1.0)."
        },
    )

    def __post_init__(self) -> None:
        check_data_values(self, ("max_train_samples", "max_eval_samples", "max_seq_length", "image_size"))
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise WarmstartError(f"--pad_to_multiple_of must be a positive integer, got {self.pad_to_multiple_of}")
        if self.dataset_name and (self.train_file or self.train_dir):
            raise WarmstartError("give one data source: --dataset_name, or --train_file, or --train_dir")
        if self.train_file and self.train_dir:
            raise WarmstartError("give one data source: --train_file (tables) or --train_dir (image folders)")
        if (self.validation_file or self.test_file) and not self.train_file:
            raise WarmstartError("--validation_file / --test_file need --train_file")
        if (self.validation_dir or self.test_dir) and not self.train_dir:
            raise WarmstartError("--validation_dir / --test_dir need --train_dir")

    def describe(self) -> str:
        """Where the data came from, for the model card (file names only: local paths stay private)."""
        return describe_sources(self)

    def data_files(self) -> dict[str, str]:
        files = {"train": self.train_file, "validation": self.validation_file, "test": self.test_file}
        return {split: f for split, f in files.items() if f}

    def data_dirs(self) -> dict[str, str]:
        dirs = {"train": self.train_dir, "validation": self.validation_dir, "test": self.test_dir}
        return {split: d for split, d in dirs.items() if d}


def check_data_values(data_args: Any, positive: Sequence[str]) -> None:
    """The range checks both data dataclasses share: the validation fraction, the augmentation values and the
    fields in ``positive`` (positive integers when given).

    Raises:
        WarmstartError: a value out of range.
    """
    check_encoding(getattr(data_args, "encoding", None))
    if not 0.0 < data_args.train_val_split < 1.0:
        raise WarmstartError(f"--train_val_split must be between 0 and 1, got {data_args.train_val_split}")
    crop = data_args.random_crop_scale
    if crop is not None and not (len(crop) == 2 and 0.0 < crop[0] <= crop[1] <= 1.0):
        shown = " ".join(map(str, crop))
        raise WarmstartError(f"--random_crop_scale takes two numbers 0 < min <= max <= 1, got {shown}")
    if data_args.hflip is not None and not 0.0 <= data_args.hflip <= 1.0:
        raise WarmstartError(f"--hflip is a probability in [0, 1], got {data_args.hflip}")
    for name in positive:
        value = getattr(data_args, name)
        if value is not None and value < 1:
            raise WarmstartError(f"--{name} must be a positive integer, got {value}")


def describe_sources(data_args: Any) -> str:
    """A data source for a model card: the hub id, or the file and folder names (local paths stay private)."""
    if data_args.dataset_name:
        config = data_args.dataset_config_name
        return f"`{data_args.dataset_name}`" + (f" ({config})" if config else "")
    sources = {**data_args.data_files(), **data_args.data_dirs()}
    return ", ".join(f"{split}: `{Path(p).name}`" for split, p in sources.items())


@dataclass
class UnlabeledDataArguments:
    """Data for the pretraining recipes: text or images, without labels (a label column is ignored)."""

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id (from the local cache)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of --dataset_name."})
    train_file: str | None = field(
        default=None,
        metadata={"help": "csv / tsv / json / jsonl / parquet file, or (text) a .txt file with one text per line."},
    )
    validation_file: str | None = field(default=None, metadata={"help": "Validation file (same format)."})
    train_dir: str | None = field(
        default=None, metadata={"help": "A folder of images (sub-folders allowed) or (text) of .txt files."}
    )
    validation_dir: str | None = field(default=None, metadata={"help": "Validation folder (same kind)."})
    text_column_name: str | None = field(
        default=None, metadata={"help": "Text: the column of texts (default: `text`, or the only text column)."}
    )
    image_column_name: str | None = field(default=None, metadata={"help": "Images: the image column (guessed)."})
    encoding: str | None = field(
        default=None,
        metadata={"help": "Tables and .txt files: the text encoding, e.g. cp1252 (default: UTF-8, or a BOM's)."},
    )
    train_val_split: float = field(
        default=0.05, metadata={"help": "Fraction of train held out as validation when there is no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use a seeded subset of train."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use a seeded subset of validation."})
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Text: tokens per training sequence (packed block or truncation length; default <= 512)."},
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Images: input resolution in pixels (default: the model's pretrained config)."}
    )
    hflip: float = field(default=0.0, metadata={"help": "Images: probability of a horizontal flip in training."})
    random_crop_scale: list[float] | None = field(
        default=None,
        metadata={"help": "Images: area range of a random-resized crop in training, e.g. 0.8 1.0 (default: none)."},
    )

    def __post_init__(self) -> None:
        check_data_values(self, ("max_train_samples", "max_eval_samples", "max_seq_length", "image_size"))
        if sum(bool(s) for s in (self.dataset_name, self.train_file, self.train_dir)) > 1:
            raise WarmstartError("give one data source: --dataset_name, --train_file or --train_dir")
        if self.validation_file and not self.train_file:
            raise WarmstartError("--validation_file needs --train_file")
        if self.validation_dir and not self.train_dir:
            raise WarmstartError("--validation_dir needs --train_dir")

    def describe(self) -> str:
        """Where the data came from, for the model card (file names only)."""
        return describe_sources(self)

    def data_files(self) -> dict[str, str]:
        files = {"train": self.train_file, "validation": self.validation_file}
        return {split: f for split, f in files.items() if f}

    def data_dirs(self) -> dict[str, str]:
        dirs = {"train": self.train_dir, "validation": self.validation_dir}
        return {split: d for split, d in dirs.items() if d}


@dataclass
class FreezeArguments:
    freeze_strategy: Literal["full", "head_only", "top_k", "gradual", "lp_ft", "bitfit", "lora"] = field(
        default="full",
        metadata={
            "help": "What trains: everything; the new head; the head + top k blocks; gradual unfreezing (ULMFiT); "
            "linear probe then full fine-tuning; biases + head (BitFit); LoRA adapters + head."
        },
    )
    probe_train_rest: bool = field(
        default=False,
        metadata={
            "help": "head_only with the solved probe: then train the whole head (layers before the classifier too) "
            "with the Trainer on the cached features, from the solved values."
        },
    )
    freeze_batchnorm_stats: bool | None = field(
        default=None,
        metadata={
            "help": "Keep every BatchNorm layer's running statistics as loaded, in training too (default: on for "
            "lp_ft, whose probe was fitted on the features they give; off otherwise)."
        },
    )
    unfreeze_top_k: int | None = field(
        default=None, metadata={"help": "top_k: blocks that train; gradual: blocks to unfreeze at most (default all)."}
    )
    unfreeze_every: float | None = field(
        default=None, metadata={"help": "gradual: unfreeze one more block group every this many epochs (or steps)."}
    )
    unfreeze_unit: Literal["epochs", "steps"] = field(
        default="epochs", metadata={"help": "gradual: whether --unfreeze_every counts epochs or optimizer steps."}
    )
    probe_epochs: float | None = field(
        default=None,
        metadata={
            "help": "lp_ft: epochs of head-only training with the Trainer before everything trains (without it, and "
            "with the features cached, the probe is solved)."
        },
    )
    probe_solver: Literal["lbfgs", "trainer"] | None = field(
        default=None,
        metadata={
            "help": "head_only / lp_ft: lbfgs solves the linear head on the cached backbone features (logistic "
            "regression, L2 strength by cross-validation on train; no learning rate or epochs needed); trainer trains "
            "it with the Trainer (AdamW epochs). Default: lbfgs wherever the features are cached, else trainer."
        },
    )
    finetune_lr_multiplier: float = field(
        default=1.0, metadata={"help": "lp_ft: learning-rate factor for the fine-tuning phase (e.g. 0.1)."}
    )
    head_lr_multiplier: float = field(
        default=1.0, metadata={"help": "Discriminative LR: the head trains at learning_rate times this."}
    )
    layer_lr_decay: float = field(
        default=1.0,
        metadata={"help": "Layer-wise LR decay d in (0, 1]: block i of n trains at lr * d**(n - i), the stem lowest."},
    )
    lora_r: int = field(default=8, metadata={"help": "lora: rank of the adapters."})
    lora_alpha: float = field(default=16.0, metadata={"help": "lora: scaling alpha (the update is alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "lora: dropout on the adapter input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "lora: module names or name suffixes to adapt; one value with regex characters is a regex "
            "(default: per architecture family)."
        },
    )
    save_adapter: bool = field(
        default=False, metadata={"help": "lora: also save the adapter alone, in output_dir/adapter."}
    )

    def __post_init__(self) -> None:
        # an inf / nan multiplier passes every range check below and turns the weights to nan in the first step
        _refuse_non_finite(self, ("head_lr_multiplier", "finetune_lr_multiplier", "layer_lr_decay", "lora_alpha"))
        self.policy()  # fail at parse time, not after the model has loaded

    def policy(self) -> FreezePolicy:
        return FreezePolicy(
            strategy=self.freeze_strategy,
            top_k=self.unfreeze_top_k,
            unfreeze_every=self.unfreeze_every,
            unfreeze_unit=self.unfreeze_unit,
            probe_epochs=self.probe_epochs,
            finetune_lr_multiplier=self.finetune_lr_multiplier,
            head_lr_multiplier=self.head_lr_multiplier,
            layer_lr_decay=self.layer_lr_decay,
            lora_r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            lora_target_modules=self.lora_target_modules,
            probe_solver=self.probe_solver,
            probe_train_rest=self.probe_train_rest,
            freeze_batchnorm_stats=self.freeze_batchnorm_stats,
        )


@dataclass
class RegularizationArguments:
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing epsilon in [0, 1)."})
    mixup_alpha: float = field(default=0.0, metadata={"help": "Images: mixup alpha (0 = off), timm's Mixup."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "Images: cutmix alpha (0 = off), timm's Mixup."})
    auto_augment: str | None = field(
        default=None, metadata={"help": "Images: timm auto-augment policy, e.g. rand-m9-mstd0.5 (RandAugment)."}
    )
    random_erasing: float = field(default=0.0, metadata={"help": "Images: random-erasing probability (timm)."})
    class_weights: Literal["none", "auto"] = field(
        default="none", metadata={"help": "auto: weight the loss by inverse class frequency of the train labels."}
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many evaluations without improvement of metric_for_best_model."},
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise WarmstartError(f"--label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for name in ("mixup_alpha", "cutmix_alpha", "random_erasing"):
            if getattr(self, name) < 0:
                raise WarmstartError(f"--{name} must not be negative, got {getattr(self, name)}")
        if self.random_erasing > 1:
            raise WarmstartError(f"--random_erasing is a probability in [0, 1], got {self.random_erasing}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise WarmstartError(f"--early_stopping_patience must be at least 1, got {self.early_stopping_patience}")

    @property
    def mixes_labels(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


@dataclass
class PerformanceArguments:
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(
        default="auto",
        metadata={
            "help": "auto: fp32 where the hardware has no native bf16; on a GPU with bf16 or a CPU with AMX / "
            "AVX512-BF16, bf16 autocast where a few timed training steps of the model at the training batch shape "
            "run 1.25x faster in it than in fp32; fp32 / bf16 / fp16 force one. --bf16 / --fp16 and an accelerate "
            "config's mixed_precision count as a request."
        },
    )
    cache_features: bool = field(
        default=True,
        metadata={
            "help": "When the whole backbone is frozen (head_only, the probe of lp_ft), compute its features once per "
            "split and train the head on them; false: run the backbone every step."
        },
    )
    feature_cache_memory_mb: float = field(
        default=2048.0,
        metadata={"help": "Cached features larger than this many MiB are written to a memory-mapped file instead."},
    )
    channels_last: Literal["auto", "true", "false"] = field(
        default="auto",
        metadata={"help": "CNNs in channels_last memory format; auto: on a GPU, and on a CPU where it runs faster."},
    )
    # Set by parse_args from --precision, the other precision flags and the hardware's flags, and where that leaves
    # the choice pending (auto) by apply_device_settings, which times the model; recorded in the run's config.
    resolved_precision: str | None = field(
        default=None, init=False, metadata={"help": "fp32, bf16 or fp16; auto while the model is still to be timed."}
    )
    precision_evidence: str | None = field(
        default=None, init=False, metadata={"help": "What was asked, the CPU flags, the timed training steps, why."}
    )

    def __post_init__(self) -> None:
        if self.feature_cache_memory_mb < 0:
            raise WarmstartError(f"--feature_cache_memory_mb must not be negative, got {self.feature_cache_memory_mb}")


class CliParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are one-line :class:`WarmstartError` s (argparse would print its usage
    first and exit), for the scripts that parse a few flags of their own."""

    def error(self, message: str) -> None:
        raise WarmstartError(f"{message} (see --help)")


class _Parser(HfArgumentParser):
    error = CliParser.error  # the usage of 200+ options would bury the one line that matters


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of argument names to values in a YAML / JSON config file.

    Raises:
        WarmstartError: the file cannot be read or parsed, or holds no mapping.
    """
    path = Path(path)
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as err:
        raise WarmstartError(f"cannot read the config file {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise WarmstartError(f"the config file {path} must hold a mapping of argument names to values")
    return values


def _config_to_argv(path: Path, known: set[str]) -> list[str]:
    values = read_config_file(path)
    unknown = sorted(set(values) - known)
    if unknown:
        raise WarmstartError(f"unknown key {unknown[0]!r} in {path}: check the spelling against --help")
    return mapping_to_argv(values)


def underscored(argv: Sequence[str]) -> list[str]:
    """A command line with each flag's dashes made underscores (``--learning-rate`` -> ``--learning_rate``), the
    spelling the parser also accepts, so that code reading flags sees one name."""
    out = []
    for token in argv:
        if token.startswith("--"):
            name, sep, value = token[2:].partition("=")
            token = "--" + name.replace("-", "_") + sep + value
        out.append(token)
    return out


def mapping_to_argv(values: dict[str, Any]) -> list[str]:
    """Argument values by name as a command line (``{"learning_rate": 1e-4, "random_init": True}`` ->
    ``--learning_rate 0.0001 --random_init true``); ``None`` values are left out."""
    argv: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            argv += [f"--{key}", str(value).lower()]
        elif isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def parse_args(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    *,
    precision_choice: Callable[..., PrecisionChoice] = choose_precision,
) -> tuple[Any, ...]:
    """Parses the command line (optionally after a YAML / JSON config file) into the given dataclasses.

    ``TrainingArguments``, if among them, is checked for precision the hardware cannot run (fp16 without a GPU,
    bf16 on a CPU without native bf16) before it is built. With ``PerformanceArguments`` too, ``--precision`` is
    resolved against ``--fp16`` / ``--bf16``, an accelerate config and the hardware's flags (:func:`choose_precision`):
    the result sets ``TrainingArguments``' ``bf16`` / ``fp16`` (and ``use_cpu`` for CPU bf16), and is recorded as
    ``resolved_precision`` and ``precision_evidence`` on the ``PerformanceArguments``. Where ``auto`` needs the model
    timed (a CPU with native bf16, a GPU with it), ``resolved_precision`` is ``auto`` and training is set to fp32 until
    :func:`~warmstart.precision.apply_device_settings` times the model and sets both.

    Args:
        dataclass_types: the argument dataclasses, e.g. ``(ModelArguments, DataArguments, FreezeArguments,
            TrainingArguments)``.
        argv: the arguments (default: ``sys.argv[1:]``); a first argument ending in .yaml / .yml / .json is a
            config file whose values the rest of the command line overrides.
        precision_choice: resolves the precision (:func:`choose_precision`, or a stand-in with given hardware).

    Returns:
        One instance per dataclass, in order.

    Raises:
        WarmstartError: an unknown or malformed argument, a bad value, or an impossible precision.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # no abbreviations: --learning_rate must never be read as a prefix of another flag (or the reverse)
    parser = _Parser(dataclass_types, allow_abbrev=False)
    known = {f.name for dtype in dataclass_types for f in fields(dtype) if f.init}
    if argv and argv[0].endswith(CONFIG_FILE_SUFFIXES) and not argv[0].startswith("-"):
        argv = _config_to_argv(Path(argv.pop(0)), known) + argv
    namespace, remaining = parser.parse_known_args(argv)
    if remaining:
        raise WarmstartError(f"unrecognized arguments: {' '.join(remaining)} (see --help)")
    values = vars(namespace)
    choice = None
    if TrainingArguments in dataclass_types:
        _check_training_values(values)
        fp16, bf16, use_cpu = values.get("fp16", False), values.get("bf16", False), values.get("use_cpu", False)
        if PerformanceArguments in dataclass_types:
            choice = precision_choice(values["precision"], fp16=fp16, bf16=bf16, use_cpu=use_cpu)
            values["fp16"], values["bf16"] = choice.precision == "fp16", choice.precision == "bf16"
            precision, on_cpu = choice.precision, choice.on_cpu
        else:
            precision, on_cpu = requested_precision(fp16, bf16), training_on_cpu(use_cpu)
            check_precision(precision, on_cpu=on_cpu)
        if precision == "bf16" and on_cpu:
            values["use_cpu"] = True  # TrainingArguments accepts CPU bf16 only when told it is on the CPU
        if launched_processes() > 1 and not torch.cuda.is_available():
            # several processes with no GPU: without use_cpu, TrainingArguments sets no process group up, and each
            # process trains alone on all the data and writes the output as if it were the only one
            values["use_cpu"] = True
    outputs = []
    for dtype in dataclass_types:
        kwargs = {f.name: values.pop(f.name) for f in fields(dtype) if f.init and f.name in values}
        try:
            outputs.append(dtype(**kwargs))
        except WarmstartError:
            raise
        except (ValueError, TypeError) as err:
            raise WarmstartError(" ".join(str(err).split())) from None
        if choice is not None and dtype is PerformanceArguments:
            outputs[-1].resolved_precision, outputs[-1].precision_evidence = choice.precision, choice.evidence
    return tuple(outputs)


def _check_training_values(values: dict[str, Any]) -> None:
    """Refuses training values that TrainingArguments lets through but that fail (or train nothing) only once the
    Trainer runs, after the data and the model have loaded."""
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        value = values.get(name)
        if value is not None and value < 1:
            raise WarmstartError(f"--{name} must be at least 1, got {value}")
    for name in ("learning_rate", "weight_decay", "num_train_epochs"):
        value = values.get(name)
        if isinstance(value, float) and not math.isfinite(value):
            raise WarmstartError(f"--{name} must be a finite number, got {value}")
    if values.get("learning_rate") is not None and values["learning_rate"] < 0:
        raise WarmstartError(f"--learning_rate must not be negative, got {values['learning_rate']}")
    max_steps, epochs = values.get("max_steps"), values.get("num_train_epochs")
    if max_steps is not None and max_steps <= 0 and epochs is not None and epochs <= 0:
        raise WarmstartError(
            f"--num_train_epochs {epochs:g} with no positive --max_steps trains nothing: give either a positive value"
        )
    checkpoint = values.get("resume_from_checkpoint")
    if checkpoint and checkpoint != "auto" and not (Path(checkpoint) / "trainer_state.json").is_file():
        raise WarmstartError(
            f"--resume_from_checkpoint {checkpoint} is not a Trainer checkpoint (no trainer_state.json): give a "
            "checkpoint-<step> directory of an earlier run"
        )


def _refuse_non_finite(section: Any, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(section, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise WarmstartError(f"--{name} must be a finite number, got {value}")


def to_plain(value: Any) -> Any:
    """A dataclass's dict (or any value) as plain YAML-safe data; token values are replaced, never written."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    elif hasattr(value, "__dataclass_fields__"):
        value = {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): ("<redacted>" if str(k).endswith("_token") and v else to_plain(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
