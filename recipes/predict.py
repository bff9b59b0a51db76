#!/usr/bin/env python
"""Predict with a fine-tuned model: one CSV row per input with its id, the predicted label and the probability of
every class (multi-label: the predicted labels, at the thresholds the run decided, and each label's probability;
regression: the value of each target, in its units), preprocessed as the model was evaluated (read from its
directory, never re-specified).

    python recipes/predict.py --model_name_or_path outputs/resnet18-top2 --input photos/ --output predictions.csv
    python recipes/predict.py --model_name_or_path outputs/bert-probe --input test.csv --id_column review_id
    python recipes/predict.py --model_name_or_path outputs/imdb-full --input imdb:test --device cuda --precision bf16
    python recipes/predict.py --model_name_or_path outputs/bert-probe --input test.csv --backend onnx --precision int8

``--backend onnx`` runs the model's ONNX export (``recipes/export.py``) with ONNX Runtime: the same CSV, from
``onnx/model.onnx`` (or ``model.int8.onnx`` with ``--precision int8``), refused where the export is missing or older
than the weights.

``--input`` is an image folder (sub-folders allowed; ids are the paths relative to it), a csv / tsv / json / jsonl
/ parquet file (ids: ``--id_column``, else the row number; images from an image or image-path column), or a split
of a hub dataset, ``name[:config]:split`` (downloaded, or from the cache with ``HF_HUB_OFFLINE=1``). When the
input has true labels (the ``--label_column_name`` column, or an image folder's class sub-folders) the task's headline
metric is printed too: accuracy, micro F1 (multi-label) or RMSE (regression).

Several processes split the rows between them:

    torchrun --nproc_per_node 4 recipes/predict.py --model_name_or_path outputs/imdb-full --input imdb:test
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/predict.py --input photos/ ...

Each process predicts every N-th row from its rank on, on its own GPU (``cuda:<LOCAL_RANK>``; at most one process
per GPU) or on the CPU (``--device cpu``, or no GPU: a gloo group); the probabilities are gathered in input order
and the main process alone writes the file (the same file, row for row, as one process writes) and prints. Bad
input, a refused ``--output`` included, stops every process with one ``error:`` line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from warmstart import run_cli
from warmstart.config import parse_args
from warmstart.distributed import is_main_process
from warmstart.prediction import (
    PredictionArguments,
    check_output_path_once,
    load_predictor,
    predict_in_processes,
    prediction_metric,
    read_prediction_input,
    start_prediction_processes,
    stop_together,
    write_predictions_once,
)


def main(argv: Sequence[str] | None = None) -> dict:
    (args,) = parse_args([PredictionArguments], argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("warmstart").setLevel(logging.INFO)
    start_prediction_processes(args.device)  # several processes: the group first, each on its own device
    # before the model loads: a run must not end, after all its work, on an output it may not replace
    check_output_path_once(args.output, args.overwrite)

    with stop_together():  # a bad model or input stops every process, reported once
        predictor = load_predictor(
            args.model_name_or_path, device=args.device, precision=args.precision, backend=args.backend
        )
        data = read_prediction_input(
            args.input,
            predictor,
            id_column=args.id_column,
            image_column=args.image_column_name,
            text_columns=args.text_column_names,
            label_column=args.label_column_name,
            encoding=args.encoding,
        )
    probs, rows_here = predict_in_processes(
        predictor, data, args.batch_size, progress=not args.disable_tqdm, num_workers=args.num_workers
    )
    path = write_predictions_once(
        args.output,
        data.ids,
        predictor.labels,
        probs,
        overwrite=args.overwrite,
        problem_type=predictor.problem_type,
        thresholds=predictor.thresholds,
    )

    results = {
        "output": str(path),
        "rows": len(data.ids),
        "labels": predictor.labels,
        "rows_predicted_here": rows_here,
    }
    scored = prediction_metric(predictor, probs, data.true_labels)
    message = f"{len(data.ids)} predictions written to {path}"
    if scored is not None:
        results[scored[0]] = scored[1]
        message += f"; {scored[0]} {scored[1]:.4f} against the input's labels"
    if is_main_process():
        print(message)
    return results


if __name__ == "__main__":
    run_cli(main)
