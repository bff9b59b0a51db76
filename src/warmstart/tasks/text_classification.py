"""The ``text_classification`` task: a BERT-family encoder (or a warmstart text output) fine-tuned on labelled
texts or text pairs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import TrainerCallback

from warmstart.config import RunConfig
from warmstart.data import TextCollator, load_checked_splits, resolve_text_columns, tokenize_splits
from warmstart.export import save_text_model
from warmstart.models import load_text_model, max_sequence_length
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
    data_args, training_args = config.data, config.training

    run.bad_examples = bad_examples = bad_examples_of(config)
    splits, labels, data_checks = load_checked_splits(
        data_args, seed=training_args.seed, bad_examples=bad_examples, keep_row_numbers=True
    )
    run.plan.decide("data_checks", data_checks)
    resolve_labels(config, run, labels)
    text_columns = resolve_text_columns(splits, data_args.text_column_names, data_args.label_column_name)

    def load(model_name_or_path: str, random_init: bool = False):
        return load_text_model(
            model_name_or_path,
            labels.names,
            random_init=random_init,
            trust_remote_code=config.model.trust_remote_code,
            reset_head=config.model.reset_head,
            problem_type=labels.problem_type,
        )

    model, tokenizer = load(config.model.model_name_or_path, config.model.random_init)
    apply_devices(config, run, model)
    max_length = max_sequence_length(model, tokenizer, data_args.max_seq_length)
    with training_args.main_process_first(desc="tokenizing"):
        splits = tokenize_splits(splits, tokenizer, text_columns, max_length, bad_examples)
    # the token counts made at tokenization drive length-grouped batches; the collator drops them before the model
    change_training(training_args, "the collator drops the token counts", remove_unused_columns=False)
    if data_args.group_by_length and training_args.train_sampling_strategy == "random":
        change_training(training_args, "--group_by_length", train_sampling_strategy="group_by_length")
    run.config.update(labels=labels.names, text_columns=text_columns, max_seq_length=max_length)

    # pad each batch to its longest sequence, not every text to max_seq_length
    collator = TextCollator(tokenizer, data_args.pad_to_multiple_of)
    return train_loaded_classifier(
        config,
        run,
        model=model,
        splits=splits,
        collate=collator,
        labels=labels,
        processing_class=tokenizer,
        feature_cache=feature_cache_settings(config, run, collator, feature_store),
        load_model=lambda path: load(path)[0],
        callbacks=callbacks,
        save_model=lambda merged, output_dir: save_text_model(merged, tokenizer, output_dir),
        card={
            "data": data_args.describe() + f"; text: {', '.join(text_columns)}; max length {max_length} tokens",
            "labels": labels.names,
        },
    )
