"""The table of tasks a run can do: what each one parses (its configuration's sections), which recipe runs it, and
what it is called in lineage. Adding a task is adding an entry here and its execution in :mod:`warmstart.tasks`."""

from __future__ import annotations

from dataclasses import dataclass

from warmstart.config.evaluation import EvaluationArguments
from warmstart.config.objectives import AutoencoderArguments, MlmArguments
from warmstart.config.sections import (
    DataArguments,
    ModelArguments,
    PerformanceArguments,
    RegularizationArguments,
    SearchArguments,
    UnlabeledDataArguments,
)
from warmstart.errors import WarmstartError


@dataclass(frozen=True)
class Task:
    """One kind of run.

    Attributes:
        name: the task (``image_classification``).
        recipe: the recipe that runs it from the command line (``recipes/<recipe>.py``), and its name in a chain.
        modality: ``image`` or ``text``.
        description: what the run does, for its lineage and logs (``image classification``).
        objective: the dataclass of a pretraining objective's settings (``None``: a classifier, whose
            configuration has a freezing policy, regularization and a search instead).
    """

    name: str
    recipe: str
    modality: str
    description: str
    objective: type | None = None

    @property
    def classifies(self) -> bool:
        """Whether the task trains a classifier (a policy, regularization, a search, labels)."""
        return self.objective is None

    def section_types(self) -> dict[str, type]:
        """The argument dataclasses of the configuration's sections, by section name (without the policy and the
        ``TrainingArguments``, which every classification task or every task has)."""
        if self.classifies:
            return {
                "model": ModelArguments,
                "data": DataArguments,
                "regularization": RegularizationArguments,
                "performance": PerformanceArguments,
                "search": SearchArguments,
                "evaluation": EvaluationArguments,
            }
        return {
            "model": ModelArguments,
            "data": UnlabeledDataArguments,
            "objective": self.objective,
            "performance": PerformanceArguments,
        }


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("image_classification", "image_classification", "image", "image classification"),
        Task("text_classification", "text_classification", "text", "text classification"),
        Task("masked_lm", "pretrain_mlm", "text", "masked-LM pretraining", MlmArguments),
        Task("image_autoencoder", "pretrain_autoencoder", "image", "autoencoder pretraining", AutoencoderArguments),
    )
}


def task_named(name: str) -> Task:
    """The task of a name or of its recipe's name (``masked_lm`` or ``pretrain_mlm``).

    Raises:
        WarmstartError: no such task.
    """
    for task in TASKS.values():
        if name in (task.name, task.recipe):
            return task
    raise WarmstartError(f"unknown task {name!r}: use one of {', '.join(t.recipe for t in TASKS.values())}")
