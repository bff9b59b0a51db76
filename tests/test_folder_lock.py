"""One run per folder: a run, a comparison or a search holds a lock on its output folder; a second one into the same
folder refuses with one line naming the first while it runs and succeeds once it has exited; the lock of a process
that died is taken over with a note."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_text_argv

from warmstart import run_cli
from warmstart.folder_lock import LOCK_FILE, FolderInUse, FolderLock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes"))
import compare_strategies  # noqa: E402
import text_classification  # noqa: E402

HOLD = """
import sys, time
from warmstart.folder_lock import FolderLock
lock = FolderLock(sys.argv[1], "a test holder").acquire()
print("held", flush=True)
if sys.argv[2] == "exit-without-release":
    import os
    os._exit(0)
time.sleep(float(sys.argv[2]))
"""


def _holder(folder: Path, how: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), how], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_held_folder_is_refused_naming_the_holder_and_free_once_released(tmp_path):
    holder = _holder(tmp_path, "60")
    try:
        with pytest.raises(FolderInUse) as refused:
            FolderLock(tmp_path).acquire()
        message = str(refused.value)
        assert f"process {holder.pid} on {socket.gethostname()}" in message and "a test holder" in message
        assert "wait for it to finish, or give another --output_dir" in message
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead holder's flock: the lock is stale, taken over with a note naming it
    with FolderLock(tmp_path) as lock:
        assert f"process {holder.pid}" in lock.note and "no longer running" in lock.note
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_left_by_a_process_that_exited_without_releasing_is_taken_over(tmp_path):
    holder = _holder(tmp_path, "exit-without-release")
    holder.wait()
    assert (tmp_path / LOCK_FILE).exists()
    lock = FolderLock(tmp_path).acquire()
    assert f"process {holder.pid}" in lock.note
    lock.release()


def test_a_refused_or_released_lock_leaves_a_new_folder_as_it_found_it(tmp_path):
    folder = tmp_path / "new"
    with FolderLock(folder):
        assert folder.is_dir()
    assert not folder.exists()  # made for the lock, left empty: removed
    (tmp_path / "file").write_text("x")
    with pytest.raises(Exception, match="is a file: give a directory"):
        FolderLock(tmp_path / "file").acquire()


@pytest.mark.parametrize("holder, refused", [("dead", False), ("alive", True), ("other_host", True)])
def test_without_flock_the_recorded_holder_decides(tmp_path, monkeypatch, holder, refused):
    import fcntl

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = {"dead": int(dead.stdout), "alive": os.getppid(), "other_host": 1}[holder]
    host = "elsewhere.example" if holder == "other_host" else socket.gethostname()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host, "started": "then"}))
    if refused:
        with pytest.raises(FolderInUse) as err:
            FolderLock(tmp_path).acquire()
        assert f"process {pid} on {host}" in str(err.value)
        if holder == "other_host":
            assert f"delete {tmp_path / LOCK_FILE}" in str(err.value)
    else:
        with FolderLock(tmp_path) as lock:
            assert f"process {pid}" in lock.note


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_second_run_into_a_running_runs_folder_refuses_then_succeeds_after_it(tmp_path, capfd):
    """The first run (a subprocess, slowed by many steps) holds the folder; the second, started into it, exits with
    status 2 and one line naming the first's process, and leaves its files alone; after the first has finished the
    same command trains."""
    argv = tiny_text_argv(tmp_path, 48, 16, 4000, "--save_strategy", "no")
    first = subprocess.Popen(
        [sys.executable, "recipes/text_classification.py", *argv],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(tmp_path / "out" / LOCK_FILE, first)
        second = [*argv[: argv.index("--max_steps")], "--max_steps", "2", *argv[argv.index("--max_steps") + 2 :]]
        capfd.readouterr()
        with pytest.raises(SystemExit) as exited:
            run_cli(text_classification.main, second)
        assert exited.value.code == 2
        (line,) = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
        assert line.startswith("error: ") and f"process {first.pid}" in line and "is in use by another run" in line
        assert first.poll() is None  # the first goes on
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=120)
    results = text_classification.main(second)  # the first is gone: its lock is stale and taken over
    assert results["train_samples"] == 48 and not (tmp_path / "out" / LOCK_FILE).exists()


def test_a_comparison_holds_its_folder(tmp_path, capfd):
    argv = tiny_text_argv(tmp_path, 16, 8, 1, "--strategies", "full")
    holder = _holder(tmp_path / "out", "60")
    try:
        capfd.readouterr()
        with pytest.raises(SystemExit):
            run_cli(compare_strategies.main, argv)
        assert f"process {holder.pid}" in capfd.readouterr().err
        assert not (tmp_path / "out" / "runs").exists()
    finally:
        holder.kill()
        holder.wait()
