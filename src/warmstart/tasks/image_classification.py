"""The ``image_classification`` task: a timm backbone (or a warmstart image output) fine-tuned on labelled images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datasets import DatasetDict
from transformers import TrainerCallback

from warmstart.config import RunConfig
from warmstart.data import (
    attach_image_transforms,
    image_collate,
    image_transforms,
    load_checked_splits,
    resolve_image_column,
)
from warmstart.export import save_image_model
from warmstart.models import load_image_model
from warmstart.plan import change_training
from warmstart.tasks.classification import (
    apply_devices,
    bad_examples_of,
    feature_cache_settings,
    resolve_labels,
    start_classification,
    train_loaded_classifier,
)


def execute(
    config: RunConfig, *, callbacks: Sequence[TrainerCallback] = (), feature_store: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Runs the task (see :func:`warmstart.run`)."""
    run = start_classification(config)
    data_args, reg_args, training_args = config.data, config.regularization, config.training
    # the image column is decoded by our transform, so the Trainer must not drop it as "unused"
    change_training(training_args, "the image column is decoded by our transform", remove_unused_columns=False)

    run.bad_examples = bad_examples = bad_examples_of(config)
    # every image is decoded once here (the leakage check): one that does not is refused or skipped
    splits, labels, data_checks = load_checked_splits(
        data_args, seed=training_args.seed, modality="image", bad_examples=bad_examples, keep_row_numbers=True
    )
    run.plan.decide("data_checks", data_checks)
    resolve_labels(config, run, labels)
    image_column = resolve_image_column(splits, data_args.image_column_name)

    def load(model_name_or_path: str, random_init: bool = False):
        return load_image_model(
            model_name_or_path,
            labels.names,
            random_init=random_init,
            image_size=data_args.image_size,
            reset_head=config.model.reset_head,
            problem_type=labels.problem_type,
        )

    model = load(config.model.model_name_or_path, config.model.random_init)
    data_config, train_transform, eval_transform = image_transforms(
        model,
        data_args.image_size,
        0.5 if data_args.hflip is None else data_args.hflip,
        data_args.random_crop_scale,
        auto_augment=reg_args.auto_augment,
        random_erasing=reg_args.random_erasing,
    )
    apply_devices(config, run, model, input_size=data_config["input_size"])
    feature_cache = feature_cache_settings(config, run, image_collate, feature_store)  # in the precision chosen
    # every split as evaluation sees it, train too: what cached features and recomputed BatchNorm statistics are of
    plain = attach_image_transforms(
        DatasetDict(splits), image_column, eval_transform, eval_transform, bad_examples=bad_examples
    )
    if feature_cache:  # features are computed once, so from the evaluation transform: one augmented view would stick
        feature_cache.source_splits = plain
    splits = attach_image_transforms(
        splits,
        image_column,
        train_transform,
        eval_transform,
        mark_train=reg_args.mixes_labels,
        bad_examples=bad_examples,
    )
    run.config.update(labels=labels.names, image_data_config=dict(data_config))
    return train_loaded_classifier(
        config,
        run,
        model=model,
        splits=splits,
        collate=image_collate,
        labels=labels,
        feature_cache=feature_cache,
        load_model=load,
        plain_train=plain["train"],
        callbacks=callbacks,
        save_model=lambda merged, output_dir: save_image_model(merged, output_dir, data_config),
        card={"data": data_args.describe(), "labels": labels.names},
    )
