"""warmstart: fine-tune pretrained timm and BERT-family backbones with a chosen freezing strategy.

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
    "arguments": (
        "DataArguments",
        "FreezeArguments",
        "ModelArguments",
        "PerformanceArguments",
        "RegularizationArguments",
        "UnlabeledDataArguments",
        "parse_args",
    ),
    "autoencoder": (
        "AutoencoderArguments",
        "ImageAutoencoder",
        "build_image_autoencoder",
        "save_image_encoder",
        "save_reconstruction_grid",
        "spatial_features",
    ),
    "chain": (
        "Chain",
        "load_chain",
        "run_chain",
    ),
    "comparison": (
        "ComparisonArguments",
        "best_row",
        "plan_runs",
        "run_comparison",
        "write_comparison",
    ),
    "data": (
        "TextCollator",
        "attach_image_transforms",
        "check_images",
        "encode_labels",
        "image_collate",
        "image_transforms",
        "load_labeled_splits",
        "load_raw_splits",
        "load_unlabeled_splits",
        "make_validation_split",
        "resolve_image_column",
        "resolve_text_columns",
        "tokenize_splits",
    ),
    "errors": (
        "WarmstartError",
        "run_cli",
    ),
    "export": (
        "check_output_dir",
        "save_image_model",
        "save_text_model",
        "write_model_card",
    ),
    "feature_cache": (
        "CachedRun",
        "CacheSettings",
        "FeatureTable",
        "backbone_features",
        "cache_features",
        "head_model",
    ),
    "fine_tuning": (
        "FineTuning",
        "UnfreezeSchedule",
        "build_param_groups",
        "prepare_fine_tuning",
    ),
    "freezing": (
        "STRATEGIES",
        "TEXT_LAYOUTS",
        "BlockLayout",
        "FreezePolicy",
        "FreezeReport",
        "apply_freeze_policy",
        "default_learning_rate",
        "describe_blocks",
    ),
    "lineage": (
        "finish_lineage",
        "lineage_markdown",
        "start_lineage",
    ),
    "metrics": (
        "classification_metrics",
        "compute_metrics",
        "roc_auc",
    ),
    "mlm": (
        "MlmArguments",
        "load_mlm_model",
        "save_mlm_model",
    ),
    "models": (
        "keeps_head",
        "load_image_model",
        "load_text_model",
        "load_timm_backbone",
    ),
    "precision": (
        "DeviceFacts",
        "PrecisionChoice",
        "apply_device_settings",
        "check_precision",
        "choose_precision",
        "cpu_has_native_bf16",
    ),
    "prediction": (
        "PredictionArguments",
        "PredictionInput",
        "Predictor",
        "load_predictor",
        "predict",
        "predict_batches",
        "read_prediction_input",
        "write_predictions",
    ),
    "probe": (
        "ProbeFit",
        "ProbeUnsolvable",
        "fit_logistic_regression",
        "solve_head",
    ),
    "report": (
        "EvaluationReport",
        "write_comparison_plot",
        "write_evaluation_report",
    ),
    "training": (
        "PretrainingArguments",
        "ProbeOptions",
        "RecipeArguments",
        "Run",
        "apply_devices",
        "feature_cache_settings",
        "pretrain_evaluate_save",
        "probe_policy",
        "push_output_dir",
        "search_or_none",
        "start_pretraining",
        "start_recipe",
        "start_run",
        "train_evaluate_save",
    ),
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
    from warmstart.arguments import (
        DataArguments,
        FreezeArguments,
        ModelArguments,
        PerformanceArguments,
        RegularizationArguments,
        UnlabeledDataArguments,
        parse_args,
    )
    from warmstart.autoencoder import (
        AutoencoderArguments,
        ImageAutoencoder,
        build_image_autoencoder,
        save_image_encoder,
        save_reconstruction_grid,
        spatial_features,
    )
    from warmstart.chain import Chain, load_chain, run_chain
    from warmstart.comparison import ComparisonArguments, best_row, plan_runs, run_comparison, write_comparison
    from warmstart.data import (
        TextCollator,
        attach_image_transforms,
        check_images,
        encode_labels,
        image_collate,
        image_transforms,
        load_labeled_splits,
        load_raw_splits,
        load_unlabeled_splits,
        make_validation_split,
        resolve_image_column,
        resolve_text_columns,
        tokenize_splits,
    )
    from warmstart.errors import WarmstartError, run_cli
    from warmstart.export import check_output_dir, save_image_model, save_text_model, write_model_card
    from warmstart.feature_cache import (
        CachedRun,
        CacheSettings,
        FeatureTable,
        backbone_features,
        cache_features,
        head_model,
    )
    from warmstart.fine_tuning import FineTuning, UnfreezeSchedule, build_param_groups, prepare_fine_tuning
    from warmstart.freezing import (
        STRATEGIES,
        TEXT_LAYOUTS,
        BlockLayout,
        FreezePolicy,
        FreezeReport,
        apply_freeze_policy,
        default_learning_rate,
        describe_blocks,
    )
    from warmstart.lineage import finish_lineage, lineage_markdown, start_lineage
    from warmstart.metrics import classification_metrics, compute_metrics, roc_auc
    from warmstart.mlm import MlmArguments, load_mlm_model, save_mlm_model
    from warmstart.models import keeps_head, load_image_model, load_text_model, load_timm_backbone
    from warmstart.precision import (
        DeviceFacts,
        PrecisionChoice,
        apply_device_settings,
        check_precision,
        choose_precision,
        cpu_has_native_bf16,
    )
    from warmstart.prediction import (
        PredictionArguments,
        PredictionInput,
        Predictor,
        load_predictor,
        predict,
        predict_batches,
        read_prediction_input,
        write_predictions,
    )
    from warmstart.probe import ProbeFit, ProbeUnsolvable, fit_logistic_regression, solve_head
    from warmstart.report import EvaluationReport, write_comparison_plot, write_evaluation_report
    from warmstart.training import (
        PretrainingArguments,
        ProbeOptions,
        RecipeArguments,
        Run,
        apply_devices,
        feature_cache_settings,
        pretrain_evaluate_save,
        probe_policy,
        push_output_dir,
        search_or_none,
        start_pretraining,
        start_recipe,
        start_run,
        train_evaluate_save,
    )
