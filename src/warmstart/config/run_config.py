"""A run as a value: :class:`RunConfig`, every section a run is configured by, parsed once by :func:`parse_config`
from a command line, a YAML / JSON file or a mapping; drivers (a comparison, a search, a chain) make variants of it
with :meth:`RunConfig.with_values`, and :func:`warmstart.run` executes it."""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from warmstart.config.evaluation import EvaluationArguments
from warmstart.config.parsing import (
    argv_as_mapping,
    check_training_values,
    mapping_to_argv,
    parse_args,
    to_plain,
)
from warmstart.config.sections import (
    ModelArguments,
    PerformanceArguments,
    RegularizationArguments,
    SearchArguments,
)
from warmstart.config.tasks import Task, task_named
from warmstart.errors import WarmstartError
from warmstart.policy import FreezePolicy, policy_flags
from warmstart.precision import choose_precision
from warmstart.problems import MULTI_LABEL, problem_named
from warmstart.regularization import check_regularization

# what the run records as the policy's section (its flags), as warmstart_config.yaml has always named it
POLICY_SECTION = "freeze"
_SAVE_ADAPTER_HELP = "lora: also save the adapter alone, in output_dir/adapter."


def _policy_arguments() -> type:
    """The policy's flags as a dataclass for the parser: :class:`FreezePolicy`'s fields under their flag names
    (``--freeze_strategy``, ``--unfreeze_top_k``), with their help, plus ``--save_adapter``; made from the policy,
    so that a field added to it is a flag."""
    hints = typing.get_type_hints(FreezePolicy)
    specs = [
        (f.metadata["flag"], hints[f.name], field(default=f.default, metadata={"help": f.metadata["help"]}))
        for f in fields(FreezePolicy)
    ]
    specs.append(("save_adapter", bool, field(default=False, metadata={"help": _SAVE_ADAPTER_HELP})))

    def post_init(self: Any) -> None:
        self.policy = to_policy(self)  # refused at parse time, not after the model has loaded

    return dataclasses.make_dataclass("PolicyArguments", specs, namespace={"__post_init__": post_init})


def to_policy(arguments: Any) -> FreezePolicy:
    """The :class:`FreezePolicy` of parsed policy flags (any object with the flags as attributes)."""
    return FreezePolicy(**{name: getattr(arguments, flag) for name, flag in policy_flags().items()})


PolicyArguments = _policy_arguments()


@dataclass
class RunConfig:
    """Everything one run is configured by, as parsed (a derived decision, such as the precision a timing picks or
    the learning rate a strategy starts from, is resolved when the run starts and recorded in its output).

    Attributes:
        task: the task's name (:data:`warmstart.config.tasks.TASKS`).
        model: which model, and how to treat the output folder.
        data: the data (:class:`~warmstart.config.sections.DataArguments`, or ``UnlabeledDataArguments`` for
            pretraining).
        performance: precision, feature cache, memory format.
        training: the Trainer's arguments, as given.
        policy: the freezing policy (classification).
        save_adapter: keep a LoRA run's adapter alone too (classification).
        regularization: label smoothing, augmentation, class weights, early stopping (classification).
        search: the hyperparameter search, if any (classification).
        evaluation: multi-label thresholds and ``evaluate`` metrics (classification).
        objective: the pretraining objective's settings (pretraining).
        given: the arguments set explicitly, by flag name, as given (a config file's values, then the command
            line's): what a rerun or a variant repeats.
    """

    task: str
    model: ModelArguments
    data: Any
    performance: PerformanceArguments
    training: TrainingArguments
    policy: FreezePolicy | None = None
    save_adapter: bool = False
    regularization: RegularizationArguments | None = None
    search: SearchArguments | None = None
    evaluation: EvaluationArguments | None = None
    objective: Any = None
    given: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> Task:
        """The task's entry in the task table."""
        return task_named(self.task)

    @property
    def modality(self) -> str:
        return self.spec.modality

    @property
    def searching(self) -> bool:
        """Whether this configuration asks for a hyperparameter search rather than one run."""
        return self.search is not None and self.search.hparam_search != "none"

    def sections(self) -> dict[str, Any]:
        """The configuration as plain data, by section, as the run's ``warmstart_config.yaml`` records it (the
        policy under its flags, in ``freeze``)."""
        out: dict[str, Any] = {"model": to_plain(self.model), "data": to_plain(self.data)}
        if self.policy is not None:
            flags = policy_flags()
            out[POLICY_SECTION] = {flags[k]: v for k, v in to_plain(self.policy).items()}
            out[POLICY_SECTION]["save_adapter"] = self.save_adapter
        for name in ("regularization", "objective", "performance", "search", "evaluation"):
            value = getattr(self, name)
            if value is not None:
                out[name] = to_plain(value)
        return out

    def with_values(self, **values: Any) -> RunConfig:
        """A variant of this configuration with some arguments changed, by flag name, each section checked as
        parsing checks it (``config.with_values(freeze_strategy="lora", learning_rate=5e-4, output_dir="runs/a")``).

        Raises:
            WarmstartError: an argument this task does not take, or a value its section refuses.
        """
        index = self._flag_index()
        changes: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            if name not in index:
                raise WarmstartError(f"unknown argument {name!r} for a {self.task} run: check it against --help")
            section, attribute = index[name]
            changes.setdefault(section, {})[attribute] = value
        replaced: dict[str, Any] = {}
        for section, fields_changed in changes.items():
            if section == "save_adapter":
                replaced["save_adapter"] = fields_changed["save_adapter"]
                continue
            if section == "training":
                check_training_values({**to_plain(self.training), **fields_changed})
            replaced[section] = _replace(getattr(self, section), fields_changed)
        return dataclasses.replace(self, **replaced, given={**self.given, **values})

    def copy(self) -> RunConfig:
        """An independent copy (a run changes its own sections' values as it resolves them: the caller's stay)."""
        sections = {f.name: _replace(getattr(self, f.name), {}) for f in fields(self) if _is_section(self, f.name)}
        return dataclasses.replace(self, **sections, given=dict(self.given))

    def _flag_index(self) -> dict[str, tuple[str, str]]:
        """Each flag this configuration takes: its section and the field it sets there."""
        index: dict[str, tuple[str, str]] = {}
        sections = ("model", "data", "regularization", "performance", "search", "evaluation", "objective", "training")
        for section in sections:
            value = getattr(self, section)
            if value is not None:
                index.update({f.name: (section, f.name) for f in fields(value) if f.init})
        if self.policy is not None:
            index.update({flag: ("policy", name) for name, flag in policy_flags().items()})
            index["save_adapter"] = ("save_adapter", "save_adapter")
        return index


def _is_section(config: RunConfig, name: str) -> bool:
    return dataclasses.is_dataclass(getattr(config, name)) and not isinstance(getattr(config, name), type)


def _replace(section: Any, changes: dict[str, Any]) -> Any:
    """``dataclasses.replace`` that keeps the values set after construction (``init=False`` fields) and turns a
    refused value into a one-line error."""
    try:
        new = dataclasses.replace(section, **changes)
    except WarmstartError:
        raise
    except (ValueError, TypeError) as err:
        raise WarmstartError(" ".join(str(err).split())) from None
    for f in fields(section):
        if not f.init and hasattr(section, f.name):
            setattr(new, f.name, getattr(section, f.name))
    return new


def parse_config(
    source: Sequence[str] | Mapping[str, Any] | str | Path | None = None,
    task: str = "text_classification",
    *,
    precision_choice: Any = choose_precision,
) -> RunConfig:
    """Parses a run's configuration, once, with every check that needs no data or model.

    Args:
        source: a command line (``None``: ``sys.argv[1:]``), whose first argument may be a YAML / JSON file the rest
            overrides; a path to such a file; or a mapping of flag names to values (a chain link's ``args``).
        task: the task, or its recipe's name (:data:`~warmstart.config.tasks.TASKS`).
        precision_choice: resolves ``--precision`` (see :func:`warmstart.precision.choose_precision`).

    Returns:
        The configuration.

    Raises:
        WarmstartError: an unknown task or argument, a bad value, or settings that cannot go together.
    """
    spec = task_named(task)
    if source is None:
        argv = list(sys.argv[1:])
    elif isinstance(source, Mapping):
        argv = mapping_to_argv(dict(source))
    elif isinstance(source, (str, Path)):
        argv = [str(source)]
    else:
        argv = list(source)
    types = spec.section_types()
    if spec.classifies:
        types = {**types, "policy": PolicyArguments}
    parsed = parse_args((*types.values(), TrainingArguments), argv, precision_choice=precision_choice)
    values = dict(zip([*types, "training"], parsed, strict=True))
    save_adapter = False
    if "policy" in values:
        save_adapter = values["policy"].save_adapter
        values["policy"] = values["policy"].policy
    config = RunConfig(task=spec.name, save_adapter=save_adapter, given=argv_as_mapping(argv), **values)
    check_config(config)
    return config


def check_config(config: RunConfig) -> None:
    """The checks across sections, before anything loads.

    Raises:
        WarmstartError: regularization the modality cannot use, a probe longer than the run, or a fine-tuning flag
            given to pretraining.
    """
    if not config.spec.classifies:
        if config.model.reset_head:
            raise WarmstartError(
                "--reset_head is for the fine-tuning recipes: pretraining trains no classification head"
            )
        if config.model.average_with:
            raise WarmstartError("--average_with averages classifiers: it is for the fine-tuning recipes")
        return
    if config.model.average_with and config.model.reset_head:
        raise WarmstartError("--average_with averages trained heads, and --reset_head replaces them: drop one")
    asked = config.data.problem_type  # else inferred from the data, and checked again once it is loaded
    check_regularization(config.regularization, config.modality, asked, config.training)
    if asked and config.training.metric_for_best_model:
        problem_named(asked).check_metric(config.training.metric_for_best_model)
    if config.evaluation.threshold is not None and asked and asked != MULTI_LABEL:
        raise WarmstartError(f"--threshold sets multi-label decision thresholds, but the run is {asked}: drop it")
    policy, training = config.policy, config.training
    epochs, probe = training.num_train_epochs, policy.probe_epochs
    solved = policy.probe_solver == "lbfgs"  # the solved probe takes no epochs: --probe_epochs is unused
    if policy.strategy == "lp_ft" and training.max_steps <= 0 and not solved and probe and probe >= epochs:
        # a probe that never ends is a linear probe, not LP-FT
        raise WarmstartError(
            f"--probe_epochs {probe:g} is not below --num_train_epochs {epochs:g}: the fine-tuning phase would never "
            "start (use fewer probe epochs, more epochs, or --freeze_strategy head_only)"
        )
