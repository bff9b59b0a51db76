"""The sections of a run's configuration a user sets: the model, the data (labelled or not), the regularization, the
performance settings and the hyperparameter search, each a dataclass whose fields are the recipes' flags (the policy
is :class:`warmstart.policy.FreezePolicy`, the training loop transformers' ``TrainingArguments``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from warmstart.averaging import check_ema_decay
from warmstart.data.bad_examples import check_bad_example_options
from warmstart.data.leakage import ON_LEAKAGE
from warmstart.data.sources import check_encoding
from warmstart.errors import WarmstartError
from warmstart.peers import DEFAULT_PEER_TIMEOUT_S, check_peer_timeout
from warmstart.preemption import DEFAULT_EXIT_CODE, check_exit_code

_DATASET_NAME_HELP = "Hub dataset id (downloaded, or from the Hugging Face cache with HF_HUB_OFFLINE=1)."


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=None,
        metadata={
            "help": "Local hub-format directory, hub id (downloaded, or from the Hugging Face cache with "
            "HF_HUB_OFFLINE=1), or timm architecture name (required)."
        },
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
    average_with: list[str] | None = field(
        default=None,
        metadata={
            "help": "Classification: warmstart outputs of the same architecture and labels whose weights are averaged "
            "uniformly with --model_name_or_path's before the run (a model soup; each one's fitted temperature is "
            "taken out first). With --evaluate_only the average is evaluated and saved as it is."
        },
    )

    def __post_init__(self) -> None:
        if not self.model_name_or_path:
            raise WarmstartError("--model_name_or_path is required: a model directory, hub id or timm name")
        if self.average_with is not None and self.random_init:
            raise WarmstartError("--average_with averages trained models; --random_init trains from none: drop one")

    def describe(self) -> str:
        """The base model as given, for the model card (``resnet18 (random init)`` for an architecture alone)."""
        return self.model_name_or_path + (" (random init)" if self.random_init else "")


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": _DATASET_NAME_HELP})
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
    label_column_names: str | None = field(
        default=None,
        metadata={
            "help": "Several label columns, comma-separated: 0/1 flags (one per label, multi-label) or numbers "
            "(several regression targets)."
        },
    )
    label_separator: str | None = field(
        default=None,
        metadata={"help": "Multi-label: the separator of the labels in a text cell, e.g. '|' (default: JSON lists)."},
    )
    problem_type: Literal["single_label_classification", "multi_label_classification", "regression"] | None = field(
        default=None,
        metadata={
            "help": "The label shape (default: inferred from the label column: lists -> multi-label, fractional "
            "numbers -> regression, else single-label)."
        },
    )
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
    on_leakage: str = field(
        default="warn",
        metadata={
            "help": "Validation / test examples that are also in train (exact or near duplicates): warn (log the "
            "count), drop (remove them from validation / test, never from train) or refuse (stop before training)."
        },
    )
    on_bad_example: str = field(
        default="fail",
        metadata={
            "help": "An example that cannot be read or used (an image that does not decode, an empty text, text that "
            "fails to tokenize): fail (stop with one line naming it) or skip (drop it, count it per split, list it "
            "in bad_examples.json; during training a readable example takes its place in the batch)."
        },
    )
    max_bad_fraction: float = field(
        default=0.01,
        metadata={
            "help": "With --on_bad_example skip: stop once more than this share of a split is bad (0.01: one "
            "example in 100)."
        },
    )

    def __post_init__(self) -> None:
        check_data_values(self, ("max_train_samples", "max_eval_samples", "max_seq_length", "image_size"))
        if self.on_leakage not in ON_LEAKAGE:
            raise WarmstartError(f"--on_leakage {self.on_leakage!r} is not one of {', '.join(ON_LEAKAGE)}: pick one")
        check_bad_example_options(self.on_bad_example, self.max_bad_fraction)
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
        if self.label_separator == "":
            raise WarmstartError("--label_separator is empty: give the character between labels, e.g. '|'")
        if self.label_column_names is not None and not [c for c in self.label_column_names.split(",") if c.strip()]:
            raise WarmstartError("--label_column_names names no column: give them comma-separated, e.g. spam,urgent")

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

    dataset_name: str | None = field(default=None, metadata={"help": _DATASET_NAME_HELP})
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
class RegularizationArguments:
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing epsilon in [0, 1)."})
    mixup_alpha: float = field(default=0.0, metadata={"help": "Images: mixup alpha (0 = off), timm's Mixup."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "Images: cutmix alpha (0 = off), timm's Mixup."})
    auto_augment: str | None = field(
        default=None, metadata={"help": "Images: timm auto-augment policy, e.g. rand-m9-mstd0.5 (RandAugment)."}
    )
    random_erasing: float = field(default=0.0, metadata={"help": "Images: random-erasing probability (timm)."})
    class_weights: Literal["none", "auto"] = field(
        default="none",
        metadata={
            "help": "auto: weight the loss by inverse class frequency of the train labels (multi-label: each label's "
            "positives by negatives / positives)."
        },
    )
    regression_loss: Literal["mse", "huber"] = field(
        default="mse", metadata={"help": "Regression: squared error, or huber (robust to outliers)."}
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many evaluations without improvement of metric_for_best_model."},
    )
    ema_decay: float | None = field(
        default=None,
        metadata={
            "help": "Keep an exponential moving average of the trained weights with this decay, in (0, 1), e.g. 0.999 "
            "(timm's --model-ema); after training it is evaluated on validation beside the raw weights, and the "
            "better one is kept and saved (default: off)."
        },
    )
    ema_warmup: bool = field(
        default=True,
        metadata={
            "help": "Warm the average's decay up as timm's --model-ema-warmup does (1 - (1 + step) ** -2/3, capped at "
            "--ema_decay), so that a run of a few hundred steps averages its recent weights, not its first ones."
        },
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
        check_ema_decay(self.ema_decay)

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
    preempt_exit_code: int = field(
        default=DEFAULT_EXIT_CODE,
        metadata={
            "help": "The exit status of a run stopped by SIGTERM or SIGUSR1 (a preemption: it finishes its step and "
            "writes a checkpoint first), for a scheduler to requeue it on; 75 is EX_TEMPFAIL."
        },
    )
    peer_timeout: float = field(
        default=DEFAULT_PEER_TIMEOUT_S,
        metadata={
            "help": "Seconds a rank may go without a sign of life (its watcher's beat) before the other ranks stop "
            "with one line naming it and the last complete checkpoint; a rank on the same host whose process is "
            "gone is noticed within a second."
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
        check_exit_code(self.preempt_exit_code)
        check_peer_timeout(self.peer_timeout)


SEARCHABLE = ("learning_rate", "per_device_train_batch_size", "unfreeze_top_k", "layer_lr_decay", "weight_decay")
INTEGER_HYPERPARAMETERS = ("per_device_train_batch_size", "unfreeze_top_k")
DEFAULT_SPACE = {
    "learning_rate": {"low": 1e-5, "high": 1e-2, "log": True},
    "weight_decay": {"low": 0.0, "high": 0.1},
}


@dataclass
class SearchArguments:
    hparam_search: Literal["none", "optuna"] = field(
        default="none", metadata={"help": "optuna: search hyperparameters over --n_trials runs, keep the best."}
    )
    n_trials: int = field(default=10, metadata={"help": "Runs of the search (at least 1)."})
    hparam_space: str | None = field(
        default=None,
        metadata={
            "help": "Ranges to search, as JSON / a mapping in the config file: a name of learning_rate, "
            "per_device_train_batch_size, unfreeze_top_k, layer_lr_decay, weight_decay, to {low, high[, log]} or a "
            'list of choices, e.g. {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": true}, '
            '"per_device_train_batch_size": [16, 32]} (default: learning rate 1e-5..1e-2 log, weight decay 0..0.1).'
        },
    )

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise WarmstartError(f"--n_trials must be at least 1, got {self.n_trials}")
        check_space(self.space())

    def space(self) -> dict[str, Any]:
        """The ranges to search: ``--hparam_space`` (JSON, or a mapping in the config file), or the default."""
        if not self.hparam_space:
            return dict(DEFAULT_SPACE)
        try:
            return json.loads(self.hparam_space)
        except json.JSONDecodeError as err:
            raise WarmstartError(f"--hparam_space is not JSON ({err.msg}): give a mapping of ranges") from None


def check_space(space: Any) -> None:
    """Refuses a search space with an unknown name, a range with min > max, a log range through zero, or an
    empty list of choices.

    Raises:
        WarmstartError: what is wrong, and with which name.
    """
    if not isinstance(space, dict) or not space:
        raise WarmstartError("--hparam_space must map hyperparameter names to ranges or lists of choices")
    for name, spec in space.items():
        if name not in SEARCHABLE:
            raise WarmstartError(f"--hparam_space: {name!r} cannot be searched; use {', '.join(SEARCHABLE)}")
        if isinstance(spec, list):
            if not spec:
                raise WarmstartError(f"--hparam_space {name}: the list of choices is empty")
            continue
        if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "log"}:
            raise WarmstartError(f"--hparam_space {name}: give {{low, high}} (and log: true), or a list of choices")
        low, high = spec["low"], spec["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            raise WarmstartError(f"--hparam_space {name}: low and high must be numbers, got {low!r} and {high!r}")
        if low > high:
            raise WarmstartError(f"--hparam_space {name}: min {low:g} is above max {high:g}")
        if spec.get("log") and low <= 0:
            raise WarmstartError(f"--hparam_space {name}: a log range needs low > 0, got {low:g}")
        if name in INTEGER_HYPERPARAMETERS and not (float(low).is_integer() and float(high).is_integer()):
            raise WarmstartError(f"--hparam_space {name}: an integer range, got {low:g}..{high:g}")
