"""warmstart: fine-tune pretrained timm and BERT-family backbones with a chosen freezing strategy.

A run is a value: :func:`parse_config` reads one (a command line, a YAML file or a mapping) into a :class:`RunConfig`,
:func:`run` executes it, and the drivers (:func:`compare_strategies`, :func:`run_search`, :func:`run_chain`) run
variants of it. The policy (:class:`FreezePolicy`) applies to any supported model on its own
(:func:`apply_freeze_policy`, :func:`prepare_fine_tuning` for a ``Trainer`` of your own).

Names are resolved lazily (PEP 562): ``import warmstart`` imports no deep-learning library, and ``from warmstart
import FreezePolicy`` imports only the module that defines it (and what that module needs). Type checkers and IDEs
read the imports under ``TYPE_CHECKING`` below; ``py.typed`` ships with the package.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("warmstart")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# module -> the names it exports here; the TYPE_CHECKING imports below list the same (a test checks they agree)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "chain": (
        "load_chain",
        "run_chain",
    ),
    "comparison": (
        "compare_strategies",
        "parse_comparison",
        "plan_comparison",
        "run_comparison",
    ),
    "config": (
        "DataArguments",
        "EvaluationArguments",
        "ModelArguments",
        "PerformanceArguments",
        "RegularizationArguments",
        "RunConfig",
        "parse_config",
    ),
    "data": (
        "load_image",
        "load_labeled_splits",
        "load_unlabeled_splits",
    ),
    "errors": (
        "WarmstartError",
        "hub_unavailable",
        "run_cli",
    ),
    "export": (
        "save_image_model",
        "save_text_model",
    ),
    "feature_cache": (
        "backbone_features",
        "cache_features",
    ),
    "fine_tuning": (
        "FineTuning",
        "prepare_fine_tuning",
    ),
    "freezing": (
        "BlockLayout",
        "FreezeReport",
        "apply_freeze_policy",
        "describe_blocks",
    ),
    "metrics": (
        "classification_metrics",
        "compute_metrics",
        "multi_label_metrics",
        "regression_metrics",
    ),
    "model_card": (
        "add_exported_files",
        "validate_model_card",
        "write_model_card",
    ),
    "models": (
        "load_image_model",
        "load_text_model",
        "load_timm_backbone",
    ),
    "policy": (
        "STRATEGIES",
        "STRATEGY_SPECS",
        "FreezePolicy",
        "StrategySpec",
        "default_learning_rate",
    ),
    "prediction": (
        "Predictor",
        "load_predictor",
        "predict",
    ),
    "probe": ("solve_head",),
    "problems": (
        "PROBLEM_TYPES",
        "LabelSpace",
    ),
    "search": ("run_search",),
    "serving": ("export_onnx",),
    "tasks": ("run",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    """Imports the module that defines ``name`` on first use, and keeps the name here."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'warmstart' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"warmstart.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from warmstart.chain import load_chain, run_chain
    from warmstart.comparison import compare_strategies, parse_comparison, plan_comparison, run_comparison
    from warmstart.config import (
        DataArguments,
        EvaluationArguments,
        ModelArguments,
        PerformanceArguments,
        RegularizationArguments,
        RunConfig,
        parse_config,
    )
    from warmstart.data import load_image, load_labeled_splits, load_unlabeled_splits
    from warmstart.errors import WarmstartError, hub_unavailable, run_cli
    from warmstart.export import save_image_model, save_text_model
    from warmstart.feature_cache import backbone_features, cache_features
    from warmstart.fine_tuning import FineTuning, prepare_fine_tuning
    from warmstart.freezing import BlockLayout, FreezeReport, apply_freeze_policy, describe_blocks
    from warmstart.metrics import classification_metrics, compute_metrics, multi_label_metrics, regression_metrics
    from warmstart.model_card import add_exported_files, validate_model_card, write_model_card
    from warmstart.models import load_image_model, load_text_model, load_timm_backbone
    from warmstart.policy import STRATEGIES, STRATEGY_SPECS, FreezePolicy, StrategySpec, default_learning_rate
    from warmstart.prediction import Predictor, load_predictor, predict
    from warmstart.probe import solve_head
    from warmstart.problems import PROBLEM_TYPES, LabelSpace
    from warmstart.search import run_search
    from warmstart.serving import export_onnx
    from warmstart.tasks import run
