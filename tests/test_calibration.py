"""Temperature scaling (warmstart.calibration): the fitted temperature is the one that made the logits
over-confident, the ECE is the textbook one, thresholds keep their decisions, and a run with --calibration
temperature lowers the ECE of a deliberately over-confident tiny model and saves a head that gives the calibrated
probabilities everywhere."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import _sentences, _write_bert, trainer_flags, write_text_csv

from warmstart.calibration import (
    calibrated_thresholds,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    probabilities,
)
from warmstart.config import parse_config
from warmstart.errors import WarmstartError
from warmstart.metrics import sigmoid, softmax
from warmstart.prediction import input_batches, load_predictor, read_prediction_input

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import text_classification  # noqa: E402

SINGLE, MULTI = "single_label_classification", "multi_label_classification"


def _calibrated_sample(rng: np.random.Generator, n: int, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from their softmax: calibrated by construction."""
    logits = rng.normal(0, 1.5, (n, classes))
    cumulative = softmax(logits).cumsum(axis=1)
    labels = (rng.random((n, 1)) > cumulative).sum(axis=1)
    return logits, labels


@pytest.mark.parametrize("factor", [0.5, 3.0])
def test_the_fitted_temperature_undoes_a_known_over_or_under_confidence(factor):
    logits, labels = _calibrated_sample(np.random.default_rng(0), 20_000)
    fitted = fit_temperature(logits * factor, labels, SINGLE)
    assert fitted == pytest.approx(factor, rel=0.05)
    scaled = logits * factor
    assert expected_calibration_error(scaled, labels, SINGLE, fitted) < expected_calibration_error(
        scaled, labels, SINGLE
    )
    assert negative_log_likelihood(scaled, labels, SINGLE, fitted) <= negative_log_likelihood(
        scaled, labels, SINGLE, 1
    )


def test_multi_label_temperature_and_its_thresholds():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (20_000, 3))
    labels = (rng.random(logits.shape) < sigmoid(logits)).astype(float)
    assert fit_temperature(logits * 2.5, labels, MULTI) == pytest.approx(2.5, rel=0.05)
    thresholds, temperature = [0.2, 0.5, 0.9], 2.5
    moved = calibrated_thresholds(thresholds, temperature)
    before = probabilities(logits, MULTI) >= np.asarray(thresholds)
    after = probabilities(logits, MULTI, temperature) >= np.asarray(moved)
    assert (before == after).all() and moved[1] == pytest.approx(0.5)


def test_the_ece_is_the_textbook_binned_gap():
    # 4 predictions: confidences 0.95, 0.95 (one right), 0.55, 0.55 (both right), in 15 bins
    logits = np.log(np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]]))
    labels = np.array([0, 1, 0, 0])
    expected = (2 * abs(0.95 - 0.5) + 2 * abs(0.55 - 1.0)) / 4
    assert expected_calibration_error(logits, labels, SINGLE) == pytest.approx(expected)


def _noisy_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Sentiment sentences with a quarter of the labels flipped: a model that fits them is over-confident."""
    rows = _sentences(n, seed)
    rng = random.Random(seed)
    return [(text, ("neg" if label == "pos" else "pos") if rng.random() < 0.25 else label) for text, label in rows]


def test_a_run_calibrates_an_over_confident_model_and_saves_the_calibrated_head(tmp_path):
    out = tmp_path / "out"
    bert = _write_bert(tmp_path / "bert")
    results = text_classification.main(
        [
            "--model_name_or_path",
            str(bert),
            "--train_file",
            str(write_text_csv(tmp_path / "train.csv", _noisy_rows(64, 0))),
            "--validation_file",
            str(write_text_csv(tmp_path / "validation.csv", _noisy_rows(160, 1))),
            "--calibration",
            "temperature",
            "--precision",
            "fp32",  # auto may evaluate in bf16 on this CPU: predict (fp32) is compared with the scored logits
            "--cache_features",
            "false",  # scored by the whole model, as predict runs it (not the head on cached features)
            *trainer_flags(out, "--max_steps", "150", "--learning_rate", "1e-2", "--disable_tqdm", "true"),
        ]
    )
    assert results["eval_ece"] < results["eval_ece_uncalibrated"]
    recorded = yaml.safe_load((out / "warmstart_config.yaml").read_text())["calibration"]
    temperature = recorded["temperature"]
    assert temperature > 1.0  # over-confident: probabilities are softened
    assert recorded["fitted_on"] == "validation" and recorded["ece_after"] == pytest.approx(results["eval_ece"])
    assert (out / "reliability.png").is_file() and "reliability.png" in (out / "README.md").read_text()

    # the saved head gives the calibrated logits: predict's (the saved model's) on validation are the ones scored
    with np.load(out / "eval_predictions.npz") as saved:
        calibrated, truth = saved["outputs"], saved["labels"]
    assert expected_calibration_error(calibrated, truth, SINGLE) == pytest.approx(results["eval_ece"], abs=1e-6)
    predictor = load_predictor(out, device="cpu")
    data = read_prediction_input(tmp_path / "validation.csv", predictor)
    got = np.concatenate([predictor.logits(batch).float().numpy() for _, batch in input_batches(predictor, data, 16)])
    # the evaluated split is sorted by length (texts), predict's batches too, each its own way: compare as sets
    in_order = lambda logits: logits[np.lexsort(logits.T[::-1])]  # noqa: E731
    np.testing.assert_allclose(in_order(got), in_order(calibrated), atol=1e-5)


def test_calibration_refusals_are_one_line(tmp_path):
    base = ["--model_name_or_path", "m", "--train_file", "t.csv", "--output_dir", str(tmp_path)]
    with pytest.raises(WarmstartError, match="--calibration must be one of none, temperature, got 'platt'"):
        parse_config([*base, "--calibration", "platt"], "text_classification")
    rows = [(text, str(i % 5 + 0.25)) for i, (text, _) in enumerate(_sentences(24, 0))]
    with pytest.raises(WarmstartError, match="--calibration temperature scales class probabilities, and a regression"):
        text_classification.main(
            [
                "--model_name_or_path",
                str(_write_bert(tmp_path / "bert")),
                "--train_file",
                str(write_text_csv(tmp_path / "r.csv", rows)),
                "--calibration",
                "temperature",
                *trainer_flags(tmp_path / "out"),
            ]
        )
    assert not (tmp_path / "out" / "config.json").exists()
