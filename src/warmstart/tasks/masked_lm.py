"""The ``masked_lm`` task: continued (domain-adaptive) masked-language-model pretraining of a BERT-family model on
unlabelled text; its output is what the text classification task fine-tunes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import TrainerCallback

from warmstart.config import RunConfig
from warmstart.data import load_unlabeled_splits
from warmstart.mlm import MlmCollator, load_mlm_model, perplexity, save_mlm_model, tokenize_corpus
from warmstart.models import max_sequence_length
from warmstart.plan import change_training
from warmstart.tasks.classification import apply_devices
from warmstart.training import start_run, train_self_supervised


def execute(
    config: RunConfig, *, callbacks: Sequence[TrainerCallback] = (), feature_store: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Runs the task (see :func:`warmstart.run`; ``feature_store`` has no use here)."""
    run = start_run(config)
    mlm, training_args, data_args = config.objective, config.training, config.data

    model, tokenizer, carried = load_mlm_model(
        config.model.model_name_or_path,
        random_init=config.model.random_init,
        trust_remote_code=config.model.trust_remote_code,
    )
    splits, text_column = load_unlabeled_splits(data_args, "text", seed=training_args.seed)
    apply_devices(config, run, model)
    max_length = max_sequence_length(model, tokenizer, data_args.max_seq_length)
    with training_args.main_process_first(desc="tokenizing"):
        splits = tokenize_corpus(
            splits, tokenizer, text_column, max_length, packing=mlm.packing, mlm=mlm, seed=training_args.seed
        )
    # the collator reads the special-tokens mask (never masked) and drops the length bookkeeping
    change_training(training_args, "the collator reads the special-tokens mask", remove_unused_columns=False)
    if not mlm.packing and training_args.train_sampling_strategy == "random":
        # texts of similar length: little padding
        change_training(training_args, "unpacked texts", train_sampling_strategy="group_by_length")
    run.config.update(text_column=text_column, max_seq_length=max_length, objective_description=mlm.describe())

    return train_self_supervised(
        run,
        model=model,
        training_args=training_args,
        splits=splits,
        data_collator=MlmCollator(tokenizer, mlm, seed=training_args.seed + training_args.process_index),
        processing_class=tokenizer,
        derived_metrics=perplexity,
        callbacks=callbacks,
        save_model=lambda trained, output_dir: save_mlm_model(trained, tokenizer, output_dir, carried),
        card={
            "modality": "text",
            "name": str(run.output_dir),
            "base_model": config.model.describe(),
            "data": data_args.describe() + f"; text column `{text_column}`; blocks of {max_length} tokens",
            "objective": mlm.describe() + ". Perplexity is exp of the validation loss, on masks drawn once (seeded).",
            "pipeline_tag": "fill-mask",
            "load": (
                "Fine-tune it for classification:\n\n```bash\naccelerate launch recipes/text_classification.py "
                "--model_name_or_path <this directory> --train_file train.csv ...\n```\n\nor fill masks:\n\n"
                '```python\nfrom transformers import pipeline\nfill = pipeline("fill-mask", model="<this directory>")'
                "\n```"
            ),
        },
    )
