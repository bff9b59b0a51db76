"""A run's output folder as later runs read it back: the resolved configuration (``warmstart_config.yaml``) and the
Trainer's ``checkpoint-<step>`` folders. Recipes, drivers, lineage and prediction read them through here, one way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

CONFIG_NAME = "warmstart_config.yaml"


def read_run_config(path: str | Path) -> dict[str, Any] | None:
    """A ``warmstart_config.yaml`` (or the folder holding one) as a mapping; ``None`` when there is none or it holds
    something else than a mapping.

    Raises:
        OSError, yaml.YAMLError: the file is there and cannot be read or parsed (callers say what that means to them).
    """
    path = Path(path)
    path = path / CONFIG_NAME if path.is_dir() else path
    if not path.is_file():
        return None
    config = yaml.safe_load(path.read_text())
    return config if isinstance(config, dict) else None


def checkpoints(output_dir: str | Path, *, complete: bool = True) -> list[Path]:
    """The Trainer's ``checkpoint-<step>`` folders in ``output_dir``, oldest first; with ``complete``, only those
    written to the end: their ``trainer_state.json``, saved last, is there and whole (a process killed while writing
    it leaves it empty or cut short)."""
    numbered = [p for p in Path(output_dir).glob("checkpoint-*") if p.name.rsplit("-", 1)[-1].isdigit()]
    kept = [p for p in numbered if not complete or is_complete_checkpoint(p)]
    return sorted(kept, key=checkpoint_step)


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a ``checkpoint-<step>`` folder was saved at."""
    return int(checkpoint.name.rsplit("-", 1)[-1])


def is_complete_checkpoint(checkpoint: Path) -> bool:
    """Whether a checkpoint was written to the end: its ``trainer_state.json``, saved last, is there and whole."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True
