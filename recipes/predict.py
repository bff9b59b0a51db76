#!/usr/bin/env python
"""Predict with a fine-tuned model: one CSV row per input with its id, the predicted label and the probability of
every class, preprocessed as the model was evaluated (read from its directory, never re-specified).

    python recipes/predict.py --model_name_or_path outputs/resnet18-top2 --input photos/ --output predictions.csv
    python recipes/predict.py --model_name_or_path outputs/bert-probe --input test.csv --id_column review_id
    python recipes/predict.py --model_name_or_path outputs/imdb-full --input imdb:test --device cuda --precision bf16

``--input`` is an image folder (sub-folders allowed; ids are the paths relative to it), a csv / tsv / json / jsonl
/ parquet file (ids: ``--id_column``, else the row number; images from an image or image-path column), or a split
of a dataset in the local Hugging Face cache, ``name[:config]:split``. When the input has true labels (the
``--label_column_name`` column, or an image folder's class sub-folders) the accuracy is printed too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from warmstart import parse_args, run_cli
from warmstart.prediction import (
    PredictionArguments,
    check_output_path,
    load_predictor,
    predict,
    prediction_accuracy,
    read_prediction_input,
    write_predictions,
)


def main(argv: Sequence[str] | None = None) -> dict:
    (args,) = parse_args([PredictionArguments], argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("warmstart").setLevel(logging.INFO)
    # before the model loads: a run must not end, after all its work, on an output it may not replace
    check_output_path(args.output, args.overwrite)

    predictor = load_predictor(args.model_name_or_path, device=args.device, precision=args.precision)
    data = read_prediction_input(
        args.input,
        predictor,
        id_column=args.id_column,
        image_column=args.image_column_name,
        text_columns=args.text_column_names,
        label_column=args.label_column_name,
    )
    probs = predict(predictor, data, args.batch_size, progress=not args.disable_tqdm, num_workers=args.num_workers)
    path = write_predictions(args.output, data.ids, predictor.labels, probs, overwrite=args.overwrite)

    results = {"output": str(path), "rows": len(data.ids), "labels": predictor.labels}
    accuracy = prediction_accuracy(probs, data.true_labels)
    message = f"{len(data.ids)} predictions written to {path}"
    if accuracy is not None:
        results["accuracy"] = accuracy
        message += f"; accuracy {accuracy:.4f} against the input's labels"
    print(message)
    return results


if __name__ == "__main__":
    run_cli(main)
