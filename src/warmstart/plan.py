"""A run's plan: what it decides once its data and model are loaded, resolved before its Trainer is built.

A run's ``TrainingArguments`` are what the user asked for, parsed once. The run then fits them to what it finds
(the precision a timing chose, the loader workers a device suits, the columns its own collator needs, early
stopping's strategies, a feature cache that leaves nothing to group by length) and decides what its record says
(the learning rate's source, the device settings, whether the features are cached, how the probe is fitted).
Those decisions are a value, :class:`RunPlan`: each change to the Trainer's arguments is planned with its reason
(:func:`change_training`, the one way to make one), read back through the plan's view of the arguments
(:attr:`RunPlan.training`) while the run is still deciding, and applied once, by :meth:`RunPlan.resolve`, to build
the arguments the Trainer gets. Nothing changes them after that. The run records the plan in its
``warmstart_config.yaml``: what was asked (``training``), what the plan changed (``training_adjusted``, and under
``plan`` each change with its reason) and every decision by name.

Used on plain ``TrainingArguments`` outside a run (a downstream project calling
:func:`~warmstart.fine_tuning.prepare_fine_tuning` on its own arguments), :func:`change_training` sets the values
directly, as those functions always have.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any

logger = logging.getLogger("warmstart")


class PlannedTraining:
    """A read-only view of a run's ``TrainingArguments`` with its plan's changes over them: what the Trainer will
    be given, as far as the run has decided. Reading a field gives the planned value (else the parsed one);
    methods and properties are the arguments' own. Fields are changed with :func:`change_training` only."""

    __slots__ = ("_plan",)

    def __init__(self, plan: RunPlan) -> None:
        object.__setattr__(self, "_plan", plan)

    def __getattr__(self, name: str) -> Any:
        plan = object.__getattribute__(self, "_plan")
        if name in plan.changes:
            return plan.changes[name][0]
        return getattr(plan.asked, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"a run's training arguments are planned, not set: change_training(training_args, reason, {name}=...)"
        )

    def to_dict(self) -> dict[str, Any]:
        """The arguments as ``TrainingArguments.to_dict`` gives them, with the planned values."""
        plan = object.__getattribute__(self, "_plan")
        values = plan.asked.to_dict()
        values.update({name: _plain_value(value) for name, (value, _) in plan.changes.items()})
        return values

    def __repr__(self) -> str:
        plan = object.__getattribute__(self, "_plan")
        return f"PlannedTraining({', '.join(f'{k}={v!r}' for k, (v, _) in plan.changes.items())})"


class RunPlan:
    """What one run decided: its changes to the Trainer's arguments (each with its reason) and its named decisions
    (``learning_rate``, ``precision``, ``device_settings``, ``feature_cache``, ``probe``), resolved once into the
    arguments the Trainer is built with.

    Args:
        asked: the run's own ``TrainingArguments`` (a copy it owns: :meth:`resolve` applies the plan to them).
    """

    def __init__(self, asked: Any) -> None:
        self.asked = asked
        self.changes: dict[str, tuple[Any, str]] = {}
        self.decisions: dict[str, Any] = {}
        self.training = PlannedTraining(self)
        self._resolved = False

    def change(self, reason: str, **values: Any) -> dict[str, Any]:
        """Plans ``values`` for the Trainer's arguments (see :func:`change_training`)."""
        if self._resolved:
            raise RuntimeError(
                f"the run's plan was resolved when its Trainer was built; {', '.join(values)} ({reason}) came after"
            )
        changed = {}
        for name, value in values.items():
            if not hasattr(self.asked, name):
                raise AttributeError(f"{type(self.asked).__name__} has no field {name!r}")
            before = getattr(self.training, name)
            if before != value:
                self.changes[name] = (value, reason)
                changed[name] = value
                logger.debug("training argument %s: %r -> %r (%s)", name, before, value, reason)
        return changed

    def decide(self, name: str, record: Any) -> Any:
        """Records a decision (plain data, as the run's config records it) under ``name``; returns it."""
        self.decisions[name] = record
        return record

    def resolve(self) -> Any:
        """The arguments the Trainer is built with: the asked ones with every planned change applied, once. The plan
        takes no change after this."""
        if not self._resolved:
            for name, (value, _) in self.changes.items():
                setattr(self.asked, name, value)  # the one place a run's TrainingArguments change after parsing
            self._resolved = True
        return self.asked

    def record(self) -> dict[str, Any]:
        """The plan as the run's config records it: each decision by name, and ``plan``: every change to the Trainer's
        arguments with its value and reason."""
        changes = {name: {"value": _plain_value(v), "reason": reason} for name, (v, reason) in self.changes.items()}
        return {**self.decisions, "plan": changes}


def change_training(training_args: Any, reason: str, **values: Any) -> dict[str, Any]:
    """Changes a run's Trainer arguments: on a run's :class:`PlannedTraining` the change is planned (applied when the
    Trainer is built); on plain ``TrainingArguments`` the values are set. Each change is logged at debug level with
    ``reason``.

    Args:
        training_args: a run's planned arguments (``run.plan.training``), or ``TrainingArguments``.
        reason: why, for the log and the run's record (``"the head trains on cached features"``).
        **values: the new values, by field name.

    Returns:
        The values that differed from what the arguments held (the others are left as they were).

    Raises:
        AttributeError: a name that is not a field of the arguments (a typo would otherwise set nothing the Trainer
            reads).
        RuntimeError: a change planned after the run's Trainer was built.
    """
    if isinstance(training_args, PlannedTraining):
        return object.__getattribute__(training_args, "_plan").change(reason, **values)
    changed = {}
    for name, value in values.items():
        if not hasattr(training_args, name):
            raise AttributeError(f"{type(training_args).__name__} has no field {name!r}")
        before = getattr(training_args, name)
        if before != value:
            setattr(training_args, name, value)
            changed[name] = value
            logger.debug("training argument %s: %r -> %r (%s)", name, before, value, reason)
    return changed


def _plain_value(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value
