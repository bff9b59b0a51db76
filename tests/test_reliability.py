"""Nothing lost: a run's output is written aside and moved into place only once complete, so a failure while saving
leaves the previous model whole; a run whose loss turns non-finite stops with one line naming the step."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from conftest import text_data_flags, trainer_flags
from transformers import AutoModelForSequenceClassification, TrainerControl, TrainerState, TrainingArguments

from warmstart import WarmstartError
from warmstart.training import STAGING_DIR, StopOnNonFiniteLoss

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import text_classification  # noqa: E402


def test_a_failure_while_saving_leaves_the_previous_model_whole(tiny_bert, text_files, tmp_path, monkeypatch):
    out = tmp_path / "out"
    text_classification.main([*text_data_flags(tiny_bert, text_files), *trainer_flags(out)])
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"model.safetensors", "config.json", "README.md", "all_results.json", "trainer_state.json"} <= set(before)

    def half_written(model, output_dir):  # dies after writing part of the new model
        (Path(output_dir) / "model.safetensors").write_bytes(b"\0" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(text_classification, "save_text_model", lambda m, t, d: half_written(m, d))
    with pytest.raises(OSError, match="disk full"):
        text_classification.main(
            [*text_data_flags(tiny_bert, text_files), *trainer_flags(out, "--learning_rate", "0.5")]
            + ["--overwrite_output_dir", "true"]
        )
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # every file as it was: model, config, card, results
    assert not (out / STAGING_DIR).exists()
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 2


def test_a_rerun_replaces_the_output_only_once_it_is_complete(tiny_bert, text_files, tmp_path):
    out = tmp_path / "out"
    text_classification.main([*text_data_flags(tiny_bert, text_files), *trainer_flags(out)])
    first = (out / "model.safetensors").read_bytes()
    text_classification.main(
        [*text_data_flags(tiny_bert, text_files), *trainer_flags(out, "--learning_rate", "0.5")]
        + ["--overwrite_output_dir", "true"]
    )
    assert (out / "model.safetensors").read_bytes() != first
    assert not (out / STAGING_DIR).exists()
    assert (out / "confusion_matrix.png").is_file() and (out / "eval_results.json").is_file()


def test_a_non_finite_loss_stops_the_run_naming_the_step(tiny_bert, text_files, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(WarmstartError, match=r"the training loss became nan at step \d+: lower --learning_rate"):
        text_classification.main(
            [*text_data_flags(tiny_bert, text_files), *trainer_flags(out, "--max_steps", "20")]
            + ["--learning_rate", "1e12", "--precision", "fp32", "--max_grad_norm", "0", "--logging_steps", "1"]
        )
    assert not (out / "model.safetensors").exists()  # nothing saved from a diverged run


def test_the_stop_names_the_last_checkpoint(tmp_path):
    for step in (2, 10, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    state = TrainerState()
    state.global_step = 12
    stop = StopOnNonFiniteLoss()
    stop.on_log(args, state, TrainerControl(), logs={"loss": 0.5, "grad_norm": 1.0})  # finite: nothing happens
    with pytest.raises(WarmstartError, match=r"grad_norm became inf at step 12: .*/checkpoint-10$"):
        stop.on_log(args, state, TrainerControl(), logs={"loss": 0.5, "grad_norm": math.inf})
    with pytest.raises(WarmstartError, match="loss became nan"):
        stop.on_log(args, state, TrainerControl(), logs={"loss": float("nan")})
