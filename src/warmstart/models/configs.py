"""What a model directory says about itself and what both loaders share: its ``config.json`` (and whether it is a timm
image model), a checkpoint loaded with one-line errors, whether a checkpoint's classifier is kept for a label set,
and which weights loading initialised afresh.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from torch import nn

from warmstart.errors import WarmstartError
from warmstart.problems import SINGLE_LABEL

logger = logging.getLogger(__name__)

# What a model trained or exported by transformers / timm calls itself in config.json.
_TIMM_WRAPPER_TYPE = "timm_wrapper"


def read_model_config(path: str | Path) -> dict[str, Any] | None:
    """The ``config.json`` of a local model directory, ``None`` if ``path`` is not a directory.

    Raises:
        WarmstartError: ``path`` is a directory but holds no readable ``config.json``.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    config_file = path / "config.json"
    if not config_file.is_file():
        raise WarmstartError(
            f"{path} is a directory but not a model (no config.json): point --model_name_or_path "
            "at a hub-format model directory, a hub id or a timm model name"
        )
    try:
        return json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WarmstartError(f"{config_file} cannot be read as JSON ({err}): the model directory is damaged") from None


def is_image_model_config(config: dict[str, Any]) -> bool:
    """Whether a ``config.json`` describes a timm (image) model."""
    return "architecture" in config or config.get("model_type") == _TIMM_WRAPPER_TYPE


def load_checked(load, path: str, **kwargs: Any):
    """``load(path, **kwargs)``, a checkpoint that cannot be read (a foreign, truncated or damaged file) turned into
    a one-line :class:`WarmstartError` naming ``path``."""
    try:
        return load(path, **kwargs)
    # torch raises OSError / RuntimeError on foreign files; safetensors a SafetensorError (an Exception) on truncated
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WarmstartError(f"cannot load the model in {path}: {first_line[:200]}") from None


def keeps_head(
    old_labels: Sequence[str] | None,
    labels: Sequence[str],
    *,
    reset_head: bool = False,
    old_problem: str | None = None,
    problem: str | None = None,
) -> bool:
    """Whether a checkpoint's classifier is kept for ``labels`` (logged either way): only for the same label names,
    in the same order, of the same label shape (``problem_type``; ``None``: single-label), and without
    ``reset_head``."""
    old = list(old_labels or [])
    if not old:
        return False  # no classifier, or one for nameless ImageNet-style classes: a new head, nothing to say
    old_problem, problem = old_problem or SINGLE_LABEL, problem or SINGLE_LABEL
    same = old == list(labels) and old_problem == problem
    if same and not reset_head:
        logger.info("the base model's head for the same %d labels is kept (--reset_head starts a new one)", len(old))
        return True
    if same:
        reason = "--reset_head"
    elif old_problem != problem:
        reason = f"it was trained for {old_problem}, the data is {problem}"
    else:
        reason = f"its {len(old)} labels differ from the data's {len(labels)}"
    logger.info("the base model's head is replaced by a new one for %d labels (%s)", len(labels), reason)
    return False


def newly_initialised(model: nn.Module) -> frozenset[str]:
    """The parameter names of a model from :func:`load_text_model` that loading initialised afresh (a new head, or
    weights the checkpoint lacked), not from the checkpoint; empty for other models (a timm model's new classifier
    is its only new part)."""
    return getattr(model, "warmstart_new_weights", frozenset())
