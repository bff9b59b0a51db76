"""Nothing lost: a run's output is written aside and moved into place only once complete, so a failure while saving
leaves the previous model whole; a run whose loss turns non-finite stops with one line naming the step."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import kill_at_checkpoint, text_data_flags, trainer_flags
from transformers import AutoModelForSequenceClassification, TrainerControl, TrainerState, TrainingArguments

import warmstart.tasks.text_classification as text_task
from warmstart import WarmstartError
from warmstart.run_folder import checkpoints
from warmstart.training import STAGING_DIR, StopOnNonFiniteLoss, resume_point

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

    monkeypatch.setattr(text_task, "save_text_model", lambda m, t, d: half_written(m, d))
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


def test_resume_skips_a_checkpoint_killed_while_its_state_was_written(tmp_path):
    """A checkpoint whose trainer_state.json is missing, empty or cut short (the process died writing it: seen in
    the kill test under load) is not resumed from; the latest whole one is."""
    for step, state in ((2, '{"global_step": 2}'), (4, '{"global_step": 4}'), (6, ""), (8, '{"global_st'), (10, None)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    assert len(checkpoints(tmp_path, complete=False)) == 5
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", resume_from_checkpoint="auto")
    assert resume_point(args) == str(tmp_path / "checkpoint-4")


@pytest.mark.parametrize(
    "strategy",
    [
        ["full"],
        ["head_only", "--probe_solver", "trainer"],
        ["lp_ft", "--probe_epochs", "4", "--probe_solver", "trainer"],
        ["lp_ft"],
        ["gradual", "--unfreeze_every", "2"],
        ["full", "--ema_decay", "0.95"],
    ],
    ids=["full", "head_only", "lp_ft", "lp_ft_solved", "gradual", "full_ema"],
)
def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(strategy, tiny_bert, text_files, tmp_path):
    """SIGKILL once a checkpoint is written, then --resume_from_checkpoint auto: the same final weights and
    metrics as a run that was never stopped (fp32 on the CPU: identical), for full fine-tuning, a head trained on
    cached features, LP-FT (killed in the probe on cached features at step 40 of 120, its fine-tuning phase from
    step 48 after the resume), LP-FT from the solved probe (solved again on the resume, then the checkpoint's weights
    replace it), gradual unfreezing (a block every 24 steps: killed between stages) and full fine-tuning with a weight
    average (the average resumed from the checkpoint's ema.safetensors equals the uninterrupted run's)."""
    import json
    import os
    import signal

    from safetensors.torch import load_file

    flags = [
        *text_data_flags(tiny_bert, text_files),
        *trainer_flags(tmp_path / "unused", "--max_steps", "120", "--save_strategy", "steps", "--save_steps", "20"),
        "--per_device_train_batch_size",
        "4",
        "--precision",
        "fp32",
        "--freeze_strategy",
        *strategy,
        "--logging_steps",
        "10",
        "--disable_tqdm",
        "true",
        # the length-grouped sampler (the text default) draws each epoch's grouping from the global generator at the
        # epoch's start, which a resume mid-epoch cannot replay: exact resumes need the seeded random sampler
        "--group_by_length",
        "false",
    ]
    flags = flags[: flags.index("--output_dir")] + flags[flags.index("--output_dir") + 2 :]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    text_classification.main([*flags, "--output_dir", str(straight)])

    script = Path(__file__).resolve().parents[1] / "recipes" / "text_classification.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    status = kill_at_checkpoint([sys.executable, str(script), *flags, "--output_dir", str(killed)], killed, 40, env)
    assert status == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "model.safetensors").exists()

    results = text_classification.main([*flags, "--output_dir", str(killed), "--resume_from_checkpoint", "auto"])
    expected, resumed = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name, value in expected.items():
        assert torch.equal(value, resumed[name]), name
    if "--ema_decay" in strategy:  # the average carried through the checkpoint: the same at the last step
        expected, resumed = (load_file(d / "checkpoint-120" / "ema.safetensors") for d in (straight, killed))
        assert expected.keys() == resumed.keys()
        for name, value in expected.items():
            assert torch.equal(value, resumed[name]), name
    reference = json.loads((straight / "eval_results.json").read_text())
    assert results["eval_loss"] == pytest.approx(reference["eval_loss"], abs=0)
    assert results["eval_accuracy"] == reference["eval_accuracy"]


def test_resume_auto_without_a_checkpoint_starts_afresh(tiny_bert, text_files, tmp_path, caplog):
    out = tmp_path / "out"
    text_classification.main(
        [*text_data_flags(tiny_bert, text_files), *trainer_flags(out), "--resume_from_checkpoint", "auto"]
    )
    assert (out / "model.safetensors").is_file()
    assert "training from the start" in caplog.text


def _recipe_runs(name: str, tiny_bert: Path, text_files: dict, image_dirs: dict, tmp_path: Path):
    """(recipe main, its arguments but --output_dir) for a tiny run of each training recipe."""
    import image_classification
    import pretrain_autoencoder
    import pretrain_mlm
    from conftest import image_data_flags

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the movie was good and the plot {i % 7} was fine" for i in range(60)) + "\n")
    unlabeled = ["--model_name_or_path", "test_resnet", "--random_init", "--train_dir", str(image_dirs["train"])]
    return {
        "text_classification": (text_classification.main, text_data_flags(tiny_bert, text_files)),
        "image_classification": (image_classification.main, image_data_flags(image_dirs)),
        "pretrain_mlm": (
            pretrain_mlm.main,
            ["--model_name_or_path", str(tiny_bert), "--train_file", str(corpus), "--max_seq_length", "16"],
        ),
        "pretrain_autoencoder": (pretrain_autoencoder.main, [*unlabeled, "--image_size", "32", "--mask_ratio", "0.5"]),
    }[name]


@pytest.mark.parametrize(
    "recipe", ["text_classification", "image_classification", "pretrain_mlm", "pretrain_autoencoder"]
)
def test_the_same_seed_gives_the_same_metrics(recipe, tiny_bert, text_files, image_dirs, tmp_path):
    main, flags = _recipe_runs(recipe, tiny_bert, text_files, image_dirs, tmp_path)
    runs = []
    for name in ("a", "b"):
        results = main(
            [
                *flags,
                *trainer_flags(tmp_path / name, "--max_steps", "4"),
                "--precision",
                "fp32",
                "--channels_last",
                "false",
            ]  # fmt: skip
            + ["--full_determinism", "true"]
        )
        runs.append(
            {
                k: v
                for k, v in results.items()
                if k.startswith(("eval_", "train_loss")) and "runtime" not in k and "per_second" not in k
            }
        )
    # with --seed and --full_determinism in fp32 the runs agree; not always to the bit on this CPU: the same test
    # measured differences up to 5e-5 (relative) in a loss now and then, from multithreaded float reductions
    assert runs[0].keys() == runs[1].keys() and "eval_loss" in runs[0]
    for key, value in runs[0].items():
        assert runs[1][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
