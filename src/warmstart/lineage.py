"""Lineage: where a model came from. Every warmstart output records the base model at the root of its chain and
one entry per run since (its task, data, strategy or objective, metrics), itself last; a run started from a
warmstart output copies that list and appends its own entry. The model card shows it as a chain.

``warmstart_config.yaml`` holds it under ``lineage``::

    lineage:
      base_model: resnet10t (random init)
      runs:
      - {name: pretrain, task: autoencoder pretraining, data: "train: `unlabeled.parquet`", ...}
      - {name: head_only, task: image classification, strategy: head_only, labels: 10, metrics: {...}}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from warmstart.run_folder import CONFIG_NAME, read_run_config

logger = logging.getLogger(__name__)

# The metrics an entry keeps: what a reader of the chain compares, not the Trainer's timings.
_LINEAGE_METRICS = (
    "eval_accuracy",
    "eval_f1_macro",
    "eval_f1_micro",
    "eval_rmse",
    "eval_r2",
    "eval_loss",
    "eval_perplexity",
    "test_accuracy",
    "train_loss",
)


def model_display_name(model_name_or_path: str, random_init: bool = False) -> str:
    """A model's name for cards and lineage: a hub id or timm name as given, a local directory by its name only
    (the card may be published; local paths stay private)."""
    name = f"{Path(model_name_or_path).resolve().name} (a local model)" if Path(model_name_or_path).exists() else None
    return (name or model_name_or_path) + (" (random init)" if random_init else "")


def _read_earlier_config(model_name_or_path: str) -> tuple[dict[str, Any], Path] | None:
    """The ``warmstart_config.yaml`` of a base model that is a warmstart output (a local directory, or a hub repo
    in the local cache) and the folder it is in, else ``None``."""
    path = Path(model_name_or_path) / CONFIG_NAME
    if not Path(model_name_or_path).exists() and "/" in model_name_or_path:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_name_or_path.removeprefix("hf-hub:"), CONFIG_NAME)
        path = Path(cached) if isinstance(cached, str) else path
    try:
        config = read_run_config(path)
    except (OSError, yaml.YAMLError) as err:
        logger.warning("the base model's %s cannot be read (%s): its lineage is not carried on", CONFIG_NAME, err)
        return None
    return (config, path.parent) if config is not None else None


def start_lineage(model_name_or_path: str, random_init: bool = False) -> dict[str, Any]:
    """The lineage a run starts from: the base's own when it is a warmstart output, else the base alone.

    A run from a warmstart output made before lineage was recorded gets that run's entry rebuilt from its config.
    With ``random_init`` nothing of an earlier run's weights is used, so the chain starts afresh.
    """
    found = None if random_init else _read_earlier_config(model_name_or_path)
    if found is None:
        return {"base_model": model_display_name(model_name_or_path, random_init), "runs": []}
    earlier, folder = found
    recorded = earlier.get("lineage")
    if isinstance(recorded, dict) and isinstance(recorded.get("runs"), list):
        return {"base_model": recorded.get("base_model"), "runs": list(recorded["runs"])}
    model = earlier.get("model") or {}
    base = model_display_name(str(model.get("model_name_or_path", "unknown")), bool(model.get("random_init")))
    name = Path(model_name_or_path).resolve().name if Path(model_name_or_path).exists() else model_name_or_path
    return {"base_model": base, "runs": [run_entry(earlier, _read_results(folder), name=name)]}


def _read_results(output_dir: Path) -> dict[str, Any]:
    import json

    path = output_dir / "all_results.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def run_entry(config: dict[str, Any], results: dict[str, Any], *, name: str | None = None) -> dict[str, Any]:
    """One run's entry in a lineage, from its resolved config and its metrics."""
    training = config.get("training") or {}
    entry: dict[str, Any] = {
        "name": name or Path(str(training.get("output_dir", "run"))).name,
        "task": config.get("task", "classification"),
    }
    data = config.get("data_description")
    if data:
        entry["data"] = data
    freeze = config.get("freeze") or {}
    if freeze.get("freeze_strategy"):
        entry["strategy"] = freeze["freeze_strategy"]
    if config.get("objective_description"):
        entry["objective"] = config["objective_description"]
    if config.get("labels"):
        entry["labels"] = len(config["labels"])
    metrics = {k: round(float(results[k]), 4) for k in _LINEAGE_METRICS if isinstance(results.get(k), (int, float))}
    if metrics:
        entry["metrics"] = metrics
    if config.get("warmstart_version"):
        entry["warmstart_version"] = config["warmstart_version"]
    return entry


def finish_lineage(config: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """Appends this run's entry to the lineage in ``config`` (set by :func:`start_lineage`) and returns it."""
    lineage = config.setdefault("lineage", {"base_model": None, "runs": []})
    lineage["runs"] = [*lineage["runs"], run_entry(config, results)]
    return lineage


def lineage_markdown(lineage: dict[str, Any]) -> str:
    """The chain as a numbered list for the model card: the base, then each run, this one last."""
    lines = [f"0. base model: **{lineage.get('base_model')}**"]
    runs = lineage.get("runs") or []
    for i, entry in enumerate(runs, start=1):
        what = entry.get("task", "run")
        how = entry.get("strategy") or entry.get("objective")
        parts = [f"{what}" + (f" ({how})" if how else "")]
        if entry.get("data"):
            parts.append(f"data {entry['data']}")
        if entry.get("labels"):
            parts.append(f"{entry['labels']} labels")
        if entry.get("metrics"):
            parts.append(", ".join(f"{k} {v:g}" for k, v in entry["metrics"].items()))
        this = " ← this model" if i == len(runs) else ""
        lines.append(f"{i}. `{entry.get('name')}`: " + "; ".join(parts) + this)
    return "\n".join(lines)
