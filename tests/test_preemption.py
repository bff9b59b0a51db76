"""Preemption with real signals: SIGTERM or SIGUSR1 mid-epoch ends a run after its step with a complete checkpoint,
a record of why (``stopped.json``) and exit status 75 (``--preempt_exit_code``); the rerun with
``--resume_from_checkpoint auto`` ends with the weights of a run never stopped; under two processes a signal to one
rank stops both at the same step."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import _sentences, _write_bert, text_data_flags, torchrun_command, trainer_flags, write_text_csv
from safetensors.torch import load_file

from warmstart.errors import WarmstartError
from warmstart.preemption import DEFAULT_EXIT_CODE, STOPPED_FILE, Preempted, Preemption
from warmstart.run_folder import checkpoints, is_complete_checkpoint

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes"))
import text_classification  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def signal_at_checkpoint(
    command: list[str], output_dir: Path, step: int, signals: tuple[int, ...], gap: float = 0.0, pid_of=None
) -> subprocess.CompletedProcess:
    """Starts ``command``, sends ``signals`` (``gap`` seconds apart) once ``checkpoint-<step>`` is complete, and
    returns the finished process (its status and stderr). ``pid_of``: which process gets them (default: the one
    started)."""
    process = subprocess.Popen(
        command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if is_complete_checkpoint(output_dir / f"checkpoint-{step}"):
            target = pid_of(process) if pid_of else process.pid
            for number in signals:
                os.kill(target, number)
                time.sleep(gap)
            break
        time.sleep(0.01)
    _, stderr = process.communicate(timeout=240)
    return subprocess.CompletedProcess(command, process.returncode, "", stderr)


def _flags(tiny_bert: Path, text_files: dict[str, Path], *strategy: str) -> list[str]:
    flags = [
        *text_data_flags(tiny_bert, text_files),
        *trainer_flags(tmp := Path("unused"), "--max_steps", "400", "--save_strategy", "steps", "--save_steps", "20"),
        *("--per_device_train_batch_size", "4", "--precision", "fp32", "--logging_steps", "10"),
        *("--disable_tqdm", "true", "--group_by_length", "false", *strategy),
    ]
    at = flags.index("--output_dir")
    assert flags[at + 1] == str(tmp)
    return flags[:at] + flags[at + 2 :]


@pytest.mark.parametrize(
    "strategy, signals",
    [
        (["--freeze_strategy", "full"], (signal.SIGTERM,)),
        (["--freeze_strategy", "head_only", "--probe_solver", "trainer"], (signal.SIGUSR1,)),
        (["--freeze_strategy", "full", "--ema_decay", "0.9"], (signal.SIGTERM, signal.SIGTERM)),
    ],
    ids=["full-sigterm", "cached-head_only-sigusr1", "full-ema-sigterm-twice"],
)
def test_a_preempted_run_checkpoints_exits_75_and_resumes_to_the_uninterrupted_weights(
    strategy, signals, tiny_bert, text_files, tmp_path
):
    """The signal comes once checkpoint-20 is written, mid-epoch (12 steps an epoch): the run finishes the step it is
    in, saves checkpoint-<that step> whatever --save_strategy says, and exits 75 with one line; a second signal
    during the save changes nothing. The rerun resumes from that checkpoint and ends as a run never stopped."""
    flags = _flags(tiny_bert, text_files, *strategy)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    text_classification.main([*flags, "--output_dir", str(straight)])

    script = [sys.executable, "recipes/text_classification.py", *flags, "--output_dir", str(stopped)]
    done = signal_at_checkpoint(script, stopped, 20, signals, gap=0.01)
    assert done.returncode == DEFAULT_EXIT_CODE, done.stderr[-2000:]
    (line,) = [line for line in done.stderr.splitlines() if line.startswith(("preempted:", "error:"))]
    record = json.loads((stopped / STOPPED_FILE).read_text())
    name = signal.Signals(signals[0]).name
    assert record["reason"] == name and record["exit_code"] == DEFAULT_EXIT_CODE
    assert line == (
        f"preempted: {name} at step {record['step']}: {stopped / record['checkpoint']} is complete; rerun the same "
        "command with --resume_from_checkpoint auto to go on"
    )
    assert 20 < record["step"] < 400 and record["step"] % 20  # stopped between the scheduled checkpoints
    assert checkpoints(stopped)[-1].name == record["checkpoint"] == f"checkpoint-{record['step']}"
    assert not (stopped / "model.safetensors").exists()

    text_classification.main([*flags, "--output_dir", str(stopped), "--resume_from_checkpoint", "auto"])
    expected, resumed = load_file(straight / "model.safetensors"), load_file(stopped / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for tensor, value in expected.items():
        assert torch.equal(value, resumed[tensor]), tensor
    assert not (stopped / STOPPED_FILE).exists()  # finished: the record of the stop goes


def test_under_two_processes_a_signal_to_one_rank_stops_both_at_the_same_step(tmp_path):
    """SIGTERM to rank 1 alone (as a scheduler signalling one task): the ranks agree after each step, both stop at
    the same one, rank 0 writes the checkpoint and the record, and the launch fails with the preemption status."""
    bert = _write_bert(tmp_path / "bert", dropout=0.0)
    files = {"train": write_text_csv(tmp_path / "t.csv", _sentences(64, 0)),
             "validation": write_text_csv(tmp_path / "v.csv", _sentences(16, 1))}  # fmt: skip
    out = tmp_path / "out"
    flags = [*_flags(bert, files, "--freeze_strategy", "full"), "--output_dir", str(out)]

    def rank_one(launcher: subprocess.Popen) -> int:
        for pid in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split():
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if b"RANK=1" in environment:
                return int(pid)
        raise AssertionError("no rank 1 worker")

    command = torchrun_command(REPO / "recipes" / "text_classification.py", *flags)
    done = signal_at_checkpoint(command, out, 20, (signal.SIGTERM,), pid_of=rank_one)
    assert done.returncode != 0
    assert done.stderr.count("preempted: SIGTERM at step") == 1  # rank 1, which got it
    assert "preempted: a preemption signal on another process at step" in done.stderr  # rank 0, which agreed
    record = json.loads((out / STOPPED_FILE).read_text())
    assert record["reason"] == "a preemption signal on another process"  # written by rank 0
    assert checkpoints(out)[-1].name == f"checkpoint-{record['step']}" and record["step"] > 20


def test_the_handler_outside_and_inside_training(tmp_path, caplog):
    preemption = Preemption(tmp_path, 99)
    with pytest.raises(Preempted) as stopped:  # before training: nothing to finish, it stops at once
        preemption._handle(signal.SIGTERM, None)
    assert stopped.value.exit_code == 99 and "before training started" in str(stopped.value)

    preemption = Preemption(tmp_path, 99)
    preemption.phase = "training"
    with caplog.at_level(logging.WARNING, logger="warmstart"):
        preemption._handle(signal.SIGUSR1, None)
        preemption._handle(signal.SIGTERM, None)  # a second one: noted, ignored
    assert preemption.received == "SIGUSR1" and "ignored" in caplog.text
    assert issubclass(Preempted, WarmstartError)


@pytest.mark.parametrize("code", ["0", "2", "200"])
def test_a_preempt_exit_code_a_shell_cannot_tell_apart_is_refused(code, tmp_path):
    done = subprocess.run(
        [sys.executable, "recipes/text_classification.py", "--model_name_or_path", "x", "--train_file", "t.csv",
         "--output_dir", str(tmp_path / "o"), "--preempt_exit_code", code],
        cwd=REPO, env=ENV, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: --preempt_exit_code must be in 3..125")
