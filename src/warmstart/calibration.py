"""Calibrated probabilities: temperature scaling (Guo et al. 2017) fitted on the validation split, the expected
calibration error before and after, a reliability diagram, and the temperature folded into the saved head.

One scalar ``T`` divides the logits; it is the ``T`` that minimises the validation negative log-likelihood
(softmax for single-label, each label's sigmoid for multi-label). It changes no predicted class (the argmax of
``z / T`` is the argmax of ``z``) and no multi-label decision (each threshold is moved to the same logit), only how
confident the probabilities are. Folded into the output layer (its weight and bias divided by ``T``), the saved
model gives the calibrated probabilities wherever it is loaded: ``pipeline()``, ``predict.py``, an ONNX export.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import optimize
from torch import nn

from warmstart.errors import WarmstartError

CALIBRATIONS = ("none", "temperature")
ECE_BINS = 15
_LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))


def check_calibration(calibration: str, problem_type: str | None = None) -> None:
    """Refuses an unknown ``--calibration``, and temperature scaling of a regression (it has no probabilities)."""
    if calibration not in CALIBRATIONS:
        raise WarmstartError(f"--calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}")
    if calibration == "temperature" and problem_type == "regression":
        raise WarmstartError(
            "--calibration temperature scales class probabilities, and a regression has none: drop --calibration"
        )


def probabilities(logits: np.ndarray, problem_type: str, temperature: float = 1.0) -> np.ndarray:
    """Softmax (single-label) or per-label sigmoid (multi-label) of ``logits / temperature``."""
    from warmstart.metrics import sigmoid, softmax  # here: the config imports this module, and --help stays light

    scaled = np.asarray(logits, dtype=np.float64) / temperature
    return sigmoid(scaled) if problem_type == "multi_label_classification" else softmax(scaled)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, problem_type: str, temperature: float) -> float:
    """The mean NLL of the labels under ``logits / temperature`` (multi-label: mean binary cross-entropy)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    if problem_type == "multi_label_classification":
        truth = np.asarray(labels, dtype=np.float64) >= 0.5
        # -log sigmoid(z) = logaddexp(0, -z); -log(1 - sigmoid(z)) = logaddexp(0, z)
        return float(np.where(truth, np.logaddexp(0.0, -scaled), np.logaddexp(0.0, scaled)).mean())
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return float((log_norm - shifted[np.arange(len(shifted)), np.asarray(labels, dtype=np.int64)]).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, problem_type: str) -> float:
    """The temperature in [0.05, 20] that minimises the NLL of ``labels`` (bounded scalar search over log T)."""
    result = optimize.minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, problem_type, math.exp(log_t)),
        bounds=_LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(result.x))


def reliability(
    logits: np.ndarray, labels: np.ndarray, problem_type: str, temperature: float = 1.0, bins: int = ECE_BINS
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """The expected calibration error and its bins: equal-width bins of confidence (single-label: the top class's
    probability against whether it is right; multi-label: each label's probability against whether it is present),
    the ECE the count-weighted mean gap between confidence and accuracy.

    Returns:
        ``(ece, confidence, accuracy, count)`` per bin (``nan`` for an empty bin's means).
    """
    probs = probabilities(logits, problem_type, temperature)
    if problem_type == "multi_label_classification":
        confidence = probs.reshape(-1)
        correct = (np.asarray(labels, dtype=np.float64) >= 0.5).reshape(-1).astype(np.float64)
    else:
        confidence = probs.max(axis=1)
        correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, confidence, bins) / count
        mean_accuracy = np.bincount(which, correct, bins) / count
    gaps = np.abs(np.nan_to_num(mean_confidence) - np.nan_to_num(mean_accuracy)) * count
    return float(gaps.sum() / max(len(confidence), 1)), mean_confidence, mean_accuracy, count


def expected_calibration_error(
    logits: np.ndarray, labels: np.ndarray, problem_type: str, temperature: float = 1.0
) -> float:
    """The ECE of the probabilities of ``logits / temperature`` (:func:`reliability`)."""
    return reliability(logits, labels, problem_type, temperature)[0]


def calibrated_thresholds(thresholds: Sequence[float], temperature: float) -> list[float]:
    """Multi-label thresholds on the calibrated probabilities that take the decisions the old ones took:
    ``sigmoid(logit(p) / T)``."""
    result = []
    for p in thresholds:
        p = min(max(float(p), 1e-12), 1 - 1e-12)
        result.append(float(1.0 / (1.0 + math.exp(-math.log(p / (1 - p)) / temperature))))
    return result


@torch.no_grad()
def fold_temperature(model: nn.Module, temperature: float, outputs: int) -> None:
    """Divides the model's output layer (weight and bias) by ``temperature``: the model then outputs calibrated
    logits.

    Raises:
        WarmstartError: the model has no linear output layer of ``outputs`` outputs.
    """
    from warmstart.models.heads import output_layer

    layer = output_layer(model, outputs)
    layer.weight.div_(temperature)
    if layer.bias is not None:
        layer.bias.div_(temperature)


def write_reliability_diagram(
    path: Path, logits: np.ndarray, labels: np.ndarray, problem_type: str, temperature: float, split: str
) -> Path:
    """A reliability diagram of the split before and after temperature scaling: accuracy against confidence per
    bin, the diagonal being perfect calibration; the ECE of each in the legend."""
    from warmstart.report.figures import new_figure, save_figure

    fig = new_figure((6.4, 5.6))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="dimgray", linestyle="--", linewidth=1, label="perfect calibration")
    for t, name, color in ((1.0, "before", "tab:red"), (temperature, f"after (T = {temperature:.3g})", "tab:blue")):
        ece, confidence, accuracy, count = reliability(logits, labels, problem_type, t)
        seen = count > 0
        ax.plot(confidence[seen], accuracy[seen], marker="o", color=color, label=f"{name}: ECE {ece:.4f}")
    ax.set_xlabel("confidence (mean predicted probability in the bin)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    fig.suptitle(f"Reliability on {split}, {ECE_BINS} bins")
    save_figure(fig, path)
    return path
