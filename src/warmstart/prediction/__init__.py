"""Batch prediction with a saved classifier: one row per input (its id, the predicted label and one probability per
class), preprocessed exactly as the model was evaluated in training, from what its directory holds.

An image model's preprocessing is timm's evaluation transform for the data config saved in its ``config.json``
(``pretrained_cfg``: resolution, crop, interpolation, mean and std); a text model's is its saved tokenizer, with the
truncation length and text columns the run recorded in ``warmstart_config.yaml``. Nothing is re-specified, so a
prediction cannot quietly preprocess otherwise than the model was validated with.

    predictor = load_predictor("outputs/resnet18-top2", device="auto")
    data = read_prediction_input("photos/", predictor)
    probs = predict(predictor, data, batch_size=64)
    write_predictions("predictions.csv", data.ids, predictor.labels, probs)

Under a multi-process launch (``torchrun --nproc_per_node N`` or ``accelerate launch``) the work is split: each
process predicts every N-th row from its rank on, on its own device (the GPU of its local rank, or the CPU), and
every process gathers the whole table in input order; the main process alone writes the file. Decisions are taken
once for all processes, so that a refusal is one ``error:`` line and no process waits on another that stopped:

    start_prediction_processes(device="auto")
    check_output_path_once("predictions.csv")
    with stop_together():  # a bad model or input in any process stops them all, reported once
        predictor = load_predictor("outputs/resnet18-top2", device="auto")
        data = read_prediction_input("photos/", predictor)
    probs, rows_here = predict_in_processes(predictor, data, batch_size=64)
    write_predictions_once("predictions.csv", data.ids, predictor.labels, probs)

In one process each of these is the single-process step it wraps.
"""

from warmstart.prediction.arguments import PredictionArguments
from warmstart.prediction.batches import (
    ImageRows,
    input_batches,
    predict,
    predict_batches,
    prediction_accuracy,
    prediction_metric,
)
from warmstart.prediction.inputs import PredictionInput, parse_dataset_spec, read_prediction_input
from warmstart.prediction.output import (
    ID_COLUMN,
    PREDICTED_LABELS_COLUMN,
    PREDICTION_COLUMN,
    PROBABILITY_PREFIX,
    VALUE_PREFIX,
    check_output_path,
    check_output_path_once,
    write_predictions,
    write_predictions_once,
)
from warmstart.prediction.predictor import PRECISIONS, Predictor, load_predictor, resolve_device
from warmstart.prediction.processes import predict_in_processes, start_prediction_processes, stop_together

__all__ = [
    "ID_COLUMN",
    "PRECISIONS",
    "PREDICTED_LABELS_COLUMN",
    "PREDICTION_COLUMN",
    "PROBABILITY_PREFIX",
    "VALUE_PREFIX",
    "ImageRows",
    "PredictionArguments",
    "PredictionInput",
    "Predictor",
    "check_output_path",
    "check_output_path_once",
    "input_batches",
    "load_predictor",
    "parse_dataset_spec",
    "predict",
    "predict_batches",
    "predict_in_processes",
    "prediction_accuracy",
    "prediction_metric",
    "read_prediction_input",
    "resolve_device",
    "start_prediction_processes",
    "stop_together",
    "write_predictions",
    "write_predictions_once",
]
