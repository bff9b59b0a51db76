#!/usr/bin/env python
"""Fine-tune a timm backbone on an image classification dataset with a fine-tuning policy.

    accelerate launch recipes/image_classification.py \
        --model_name_or_path timm/resnet18.a1_in1k --train_dir data/train --validation_dir data/val \
        --freeze_strategy gradual --unfreeze_every 1 --layer_lr_decay 0.7 --output_dir outputs/resnet18-gradual \
        --num_train_epochs 5 --learning_rate 3e-4 --per_device_train_batch_size 64 --eval_strategy epoch

Or with every argument in one file, the command line overriding it:

    accelerate launch recipes/image_classification.py config.yaml --learning_rate 1e-4
"""

from __future__ import annotations

from collections.abc import Sequence

from datasets import DatasetDict

from warmstart import (
    ProbeOptions,
    apply_devices,
    attach_image_transforms,
    check_images,
    feature_cache_settings,
    image_collate,
    image_transforms,
    load_image_model,
    load_labeled_splits,
    prepare_fine_tuning,
    probe_policy,
    resolve_image_column,
    run_cli,
    save_image_model,
    search_or_none,
    start_recipe,
    train_evaluate_save,
)
from warmstart.regularization import prepare_regularization


def main(argv: Sequence[str] | None = None, feature_store: dict | None = None, callbacks: Sequence = ()) -> dict:
    """Runs the recipe (``feature_store``: backbone features shared with other runs, as a comparison does;
    ``callbacks``: more Trainer callbacks, as a search's pruning)."""
    args = start_recipe(argv, "image")
    searched = search_or_none(args, argv, main)
    if searched is not None:
        return searched
    data_args, reg_args, training_args = args.data, args.regularization, args.training
    # the image column is decoded by our transform, so the Trainer must not drop it as "unused"
    training_args.remove_unused_columns = False

    splits, labels = load_labeled_splits(data_args, seed=training_args.seed, modality="image")
    image_column = resolve_image_column(splits, data_args.image_column_name)
    check_images(splits, image_column)

    model = load_image_model(
        args.model.model_name_or_path,
        labels,
        random_init=args.model.random_init,
        image_size=data_args.image_size,
        reset_head=args.model.reset_head,
    )
    data_config, train_transform, eval_transform = image_transforms(
        model,
        data_args.image_size,
        0.5 if data_args.hflip is None else data_args.hflip,
        data_args.random_crop_scale,
        auto_augment=reg_args.auto_augment,
        random_erasing=reg_args.random_erasing,
    )
    apply_devices(args, model, "image", input_size=data_config["input_size"])
    feature_cache = feature_cache_settings(args, "image", image_collate, feature_store)  # in the precision chosen
    if feature_cache:  # features are computed once, so from the evaluation transform: one augmented view would stick
        raw = DatasetDict(splits)
        feature_cache.source_splits = attach_image_transforms(raw, image_column, eval_transform, eval_transform)
    splits = attach_image_transforms(
        splits, image_column, train_transform, eval_transform, mark_train=reg_args.mixes_labels
    )
    args.run.config.update(labels=labels, image_data_config=dict(data_config))

    policy = probe_policy(args, feature_cache)
    tuning = prepare_fine_tuning(model, policy, training_args)
    regularization = prepare_regularization(reg_args, "image", model.config, splits["train"], training_args)
    return train_evaluate_save(
        args.run,
        tuning=tuning,
        policy=policy,
        training_args=training_args,
        splits=splits,
        data_collator=regularization.collator(image_collate),
        compute_loss_func=regularization.loss_function,
        callbacks=[*regularization.callbacks, *callbacks],
        save_adapter=args.freeze.save_adapter,
        feature_cache=feature_cache,
        probe=ProbeOptions(regularization.class_weights, reg_args.label_smoothing),
        save_model=lambda merged, output_dir: save_image_model(merged, output_dir, data_config),
        card={
            "modality": "image",
            "name": str(args.run.output_dir),
            "base_model": args.model.model_name_or_path + (" (random init)" if args.model.random_init else ""),
            "data": data_args.describe(),
            "labels": labels,
        },
    )


if __name__ == "__main__":
    run_cli(main)
