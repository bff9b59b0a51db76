"""A run's configuration: its sections (:mod:`~warmstart.config.sections`, :mod:`~warmstart.config.objectives`,
:mod:`~warmstart.config.evaluation`),
how they are read (:mod:`~warmstart.config.parsing`), the task table (:mod:`~warmstart.config.tasks`) and the
configuration as one value (:class:`~warmstart.config.run_config.RunConfig`, :func:`parse_config`)."""

from warmstart.config.evaluation import EvaluationArguments
from warmstart.config.objectives import AutoencoderArguments, MlmArguments
from warmstart.config.parsing import (
    CONFIG_FILE_SUFFIXES,
    CliParser,
    argv_as_mapping,
    mapping_to_argv,
    parse_args,
    read_config_file,
    starts_with_config_file,
    to_plain,
    underscored,
)
from warmstart.config.run_config import PolicyArguments, RunConfig, parse_config, to_policy
from warmstart.config.sections import (
    DataArguments,
    ModelArguments,
    PerformanceArguments,
    RegularizationArguments,
    SearchArguments,
    UnlabeledDataArguments,
)
from warmstart.config.tasks import TASKS, Task, task_named

__all__ = [
    "CONFIG_FILE_SUFFIXES",
    "TASKS",
    "AutoencoderArguments",
    "CliParser",
    "DataArguments",
    "EvaluationArguments",
    "MlmArguments",
    "ModelArguments",
    "PerformanceArguments",
    "PolicyArguments",
    "RegularizationArguments",
    "RunConfig",
    "SearchArguments",
    "Task",
    "UnlabeledDataArguments",
    "argv_as_mapping",
    "mapping_to_argv",
    "parse_args",
    "parse_config",
    "read_config_file",
    "starts_with_config_file",
    "task_named",
    "to_plain",
    "to_policy",
    "underscored",
]
