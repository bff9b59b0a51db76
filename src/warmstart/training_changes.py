"""The one place a run changes its Trainer arguments after parsing.

A run's ``TrainingArguments`` are what the user asked for, parsed once; the run then fits them to what it found (the
precision a timing chose, the loader workers a device suits, the columns its own collator needs, early stopping's
strategies, a feature cache that leaves nothing to group by length). Every such change goes through
:func:`change_training`, which logs it with its reason; the run records what was asked (``training``) and what it
changed (``training_adjusted``) in its ``warmstart_config.yaml``.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("warmstart")


def change_training(training_args: Any, reason: str, **values: Any) -> dict[str, Any]:
    """Sets ``values`` on a run's ``TrainingArguments`` (in place: the Trainer reads the object it is given), each
    logged at debug level with ``reason``.

    Args:
        training_args: the run's ``TrainingArguments``.
        reason: why, for the log (``"the feature cache: features have one size"``).
        **values: the new values, by field name.

    Returns:
        The values that differed from what the arguments held (the others are left as they were).

    Raises:
        AttributeError: a name that is not a field of the arguments (a typo would otherwise set nothing the Trainer
            reads).
    """
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
