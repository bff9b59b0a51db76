"""Reading a run's arguments: the command line, or a YAML / JSON file given first (``recipe.py config.yaml
--learning_rate 1e-4``: the command line wins), or a mapping, parsed by ``HfArgumentParser`` into the sections'
dataclasses and ``TrainingArguments``, with one-line errors."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from warmstart.config.sections import PerformanceArguments
from warmstart.distributed import launched_processes
from warmstart.errors import WarmstartError
from warmstart.precision import (
    PrecisionChoice,
    check_precision,
    choose_precision,
    requested_precision,
    training_on_cpu,
)

CONFIG_FILE_SUFFIXES = (".yaml", ".yml", ".json")


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


def starts_with_config_file(argv: Sequence[str]) -> bool:
    """Whether a command line starts with a config file (``config.yaml --learning_rate 1e-4``)."""
    return bool(argv) and str(argv[0]).endswith(CONFIG_FILE_SUFFIXES) and not str(argv[0]).startswith("-")


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
        dataclass_types: the argument dataclasses, e.g. ``(ModelArguments, DataArguments, PolicyArguments,
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
    if starts_with_config_file(argv):
        argv = _config_to_argv(Path(argv.pop(0)), known) + argv
    namespace, remaining = parser.parse_known_args(argv)
    if remaining:
        raise WarmstartError(f"unrecognized arguments: {' '.join(remaining)} (see --help)")
    values = vars(namespace)
    choice = None
    if TrainingArguments in dataclass_types:
        check_training_values(values)
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


def check_training_values(values: dict[str, Any]) -> None:
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


def argv_as_mapping(argv: Sequence[str]) -> dict[str, Any]:
    """A command line (after an optional config file) as the mapping a config file holds: ``--a 1 --b x y`` ->
    ``{"a": "1", "b": ["x", "y"]}``."""
    argv = list(argv)
    values: dict[str, Any] = {}
    if starts_with_config_file(argv):
        values.update({str(k).replace("-", "_"): v for k, v in read_config_file(argv.pop(0)).items()})
    key = None
    for token in underscored(argv):
        if token.startswith("--"):
            key, _, inline = token[2:].partition("=")
            values[key] = inline if inline else True
        elif key is not None:
            current = values[key]
            values[key] = (
                token if current is True else [*current, token] if isinstance(current, list) else [current, token]
            )
    return values
