#!/usr/bin/env python
"""Fine-tune a BERT-family model on a text (or text-pair) classification dataset with a fine-tuning policy.

    accelerate launch recipes/text_classification.py \
        --model_name_or_path bert-base-uncased --train_file train.csv --validation_file dev.csv \
        --text_column_names text --label_column_name label --freeze_strategy lp_ft --probe_epochs 1 \
        --output_dir outputs/bert-lpft --num_train_epochs 3 --learning_rate 5e-5 --eval_strategy epoch

Or with every argument in one file, the command line overriding it:

    accelerate launch recipes/text_classification.py config.yaml --learning_rate 3e-5
"""

from __future__ import annotations

from collections.abc import Sequence

from warmstart import (
    ProbeOptions,
    TextCollator,
    apply_devices,
    feature_cache_settings,
    load_labeled_splits,
    load_text_model,
    prepare_fine_tuning,
    probe_policy,
    resolve_text_columns,
    run_cli,
    save_text_model,
    search_or_none,
    start_recipe,
    tokenize_splits,
    train_evaluate_save,
)
from warmstart.models import max_sequence_length
from warmstart.regularization import prepare_regularization


def main(argv: Sequence[str] | None = None, feature_store: dict | None = None, callbacks: Sequence = ()) -> dict:
    """Runs the recipe (``feature_store``: backbone features shared with other runs, as a comparison does;
    ``callbacks``: more Trainer callbacks, as a search's pruning)."""
    args = start_recipe(argv, "text")
    searched = search_or_none(args, argv, main)
    if searched is not None:
        return searched
    data_args, training_args = args.data, args.training

    splits, labels = load_labeled_splits(data_args, seed=training_args.seed)
    text_columns = resolve_text_columns(splits, data_args.text_column_names, data_args.label_column_name)

    model, tokenizer = load_text_model(
        args.model.model_name_or_path,
        labels,
        random_init=args.model.random_init,
        trust_remote_code=args.model.trust_remote_code,
        reset_head=args.model.reset_head,
    )
    apply_devices(args, model, "text")
    max_length = max_sequence_length(model, tokenizer, data_args.max_seq_length)
    with training_args.main_process_first(desc="tokenizing"):
        splits = tokenize_splits(splits, tokenizer, text_columns, max_length)
    # the token counts made at tokenization drive length-grouped batches; the collator drops them before the model
    training_args.remove_unused_columns = False
    if data_args.group_by_length and training_args.train_sampling_strategy == "random":
        training_args.train_sampling_strategy = "group_by_length"
    args.run.config.update(labels=labels, text_columns=text_columns, max_seq_length=max_length)

    # pad each batch to its longest sequence, not every text to max_seq_length
    collator = TextCollator(tokenizer, data_args.pad_to_multiple_of)
    feature_cache = feature_cache_settings(args, "text", collator, feature_store)
    policy = probe_policy(args, feature_cache)
    tuning = prepare_fine_tuning(model, policy, training_args)
    regularization = prepare_regularization(args.regularization, "text", model.config, splits["train"], training_args)
    return train_evaluate_save(
        args.run,
        tuning=tuning,
        policy=policy,
        training_args=training_args,
        splits=splits,
        data_collator=collator,
        processing_class=tokenizer,
        compute_loss_func=regularization.loss_function,
        callbacks=[*regularization.callbacks, *callbacks],
        save_adapter=args.freeze.save_adapter,
        feature_cache=feature_cache,
        probe=ProbeOptions(regularization.class_weights, args.regularization.label_smoothing),
        save_model=lambda merged, output_dir: save_text_model(merged, tokenizer, output_dir),
        card={
            "modality": "text",
            "name": str(args.run.output_dir),
            "base_model": args.model.model_name_or_path + (" (random init)" if args.model.random_init else ""),
            "data": data_args.describe() + f"; text: {', '.join(text_columns)}; max length {max_length} tokens",
            "labels": labels,
        },
    )


if __name__ == "__main__":
    run_cli(main)
