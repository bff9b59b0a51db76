#!/usr/bin/env python
"""Continued (domain-adaptive) masked-language-model pretraining of a BERT-family model on unlabeled text.

    accelerate launch recipes/pretrain_mlm.py \
        --model_name_or_path bert-base-uncased --train_file corpus.txt --max_seq_length 128 \
        --output_dir outputs/bert-domain --num_train_epochs 3 --learning_rate 5e-5 --eval_strategy epoch

The output is a hub-format masked-LM model (with its tokenizer) that the classification recipe fine-tunes:

    accelerate launch recipes/text_classification.py --model_name_or_path outputs/bert-domain ...

Text comes from a .txt file (one text per line), a folder of .txt files (--train_dir), a csv / json / parquet
column (--text_column_name) or a cached hub dataset; perplexity on the validation split is reported.
"""

from __future__ import annotations

from collections.abc import Sequence

from warmstart import load_unlabeled_splits, run_cli
from warmstart.mlm import MlmArguments, MlmCollator, load_mlm_model, perplexity, save_mlm_model, tokenize_corpus
from warmstart.models import max_sequence_length
from warmstart.training import apply_devices, pretrain_evaluate_save, start_pretraining


def main(argv: Sequence[str] | None = None) -> dict:
    args = start_pretraining(argv, MlmArguments, task="masked-LM pretraining")
    mlm, training_args = args.objective, args.training

    model, tokenizer, carried = load_mlm_model(
        args.model.model_name_or_path,
        random_init=args.model.random_init,
        trust_remote_code=args.model.trust_remote_code,
    )
    splits, text_column = load_unlabeled_splits(args.data, "text", seed=training_args.seed)
    apply_devices(args, model, "text")
    max_length = max_sequence_length(model, tokenizer, args.data.max_seq_length)
    with training_args.main_process_first(desc="tokenizing"):
        splits = tokenize_corpus(
            splits, tokenizer, text_column, max_length, packing=mlm.packing, mlm=mlm, seed=training_args.seed
        )
    # the collator reads the special-tokens mask (never masked) and drops the length bookkeeping
    training_args.remove_unused_columns = False
    if not mlm.packing and training_args.train_sampling_strategy == "random":
        training_args.train_sampling_strategy = "group_by_length"  # texts of similar length: little padding
    args.run.config.update(text_column=text_column, max_seq_length=max_length, objective_description=mlm.describe())

    return pretrain_evaluate_save(
        args.run,
        model=model,
        training_args=training_args,
        splits=splits,
        data_collator=MlmCollator(tokenizer, mlm, seed=training_args.seed + training_args.process_index),
        processing_class=tokenizer,
        derived_metrics=perplexity,
        save_model=lambda trained, output_dir: save_mlm_model(trained, tokenizer, output_dir, carried),
        card={
            "modality": "text",
            "name": str(args.run.output_dir),
            "base_model": args.model.model_name_or_path + (" (random init)" if args.model.random_init else ""),
            "data": args.data.describe() + f"; text column `{text_column}`; blocks of {max_length} tokens",
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


if __name__ == "__main__":
    run_cli(main)
