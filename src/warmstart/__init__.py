"""warmstart: fine-tune pretrained timm and BERT-family backbones with a chosen freezing strategy."""

__version__ = "0.1.0"

from warmstart.arguments import (
    DataArguments,
    FreezeArguments,
    ModelArguments,
    PerformanceArguments,
    RegularizationArguments,
    parse_args,
)
from warmstart.data import (
    TextCollator,
    attach_image_transforms,
    check_images,
    encode_labels,
    image_collate,
    image_transforms,
    load_labeled_splits,
    load_raw_splits,
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
    describe_blocks,
)
from warmstart.metrics import classification_metrics, compute_metrics, roc_auc
from warmstart.models import load_image_model, load_text_model
from warmstart.precision import check_precision, cpu_has_native_bf16
from warmstart.training import (
    RecipeArguments,
    Run,
    feature_cache_settings,
    push_output_dir,
    start_recipe,
    start_run,
    train_evaluate_save,
)

__all__ = [
    "STRATEGIES",
    "TEXT_LAYOUTS",
    "TextCollator",
    "BlockLayout",
    "DataArguments",
    "FineTuning",
    "FreezeArguments",
    "FreezePolicy",
    "FreezeReport",
    "CacheSettings",
    "CachedRun",
    "FeatureTable",
    "ModelArguments",
    "PerformanceArguments",
    "RecipeArguments",
    "RegularizationArguments",
    "Run",
    "UnfreezeSchedule",
    "WarmstartError",
    "apply_freeze_policy",
    "attach_image_transforms",
    "build_param_groups",
    "check_images",
    "check_output_dir",
    "check_precision",
    "classification_metrics",
    "compute_metrics",
    "cpu_has_native_bf16",
    "describe_blocks",
    "encode_labels",
    "image_collate",
    "image_transforms",
    "load_image_model",
    "load_labeled_splits",
    "load_raw_splits",
    "load_text_model",
    "make_validation_split",
    "backbone_features",
    "cache_features",
    "feature_cache_settings",
    "head_model",
    "parse_args",
    "prepare_fine_tuning",
    "push_output_dir",
    "resolve_image_column",
    "resolve_text_columns",
    "roc_auc",
    "run_cli",
    "save_image_model",
    "save_text_model",
    "start_recipe",
    "start_run",
    "tokenize_splits",
    "train_evaluate_save",
    "write_model_card",
]
