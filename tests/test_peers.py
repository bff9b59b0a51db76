"""A dead rank never hangs the job (:mod:`warmstart.peers`): SIGKILL one process of a 2-process torchrun run and the
other exits at once with one line naming the rank that failed and the last complete checkpoint, status 76; the rerun
with ``--resume_from_checkpoint auto`` goes on from that checkpoint. And the watcher's own pieces: a peer whose
process is gone, one whose beats stop, the line, who prints it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import _sentences, _write_bert, text_data_flags, torchrun_command, trainer_flags, write_text_csv

from warmstart.errors import WarmstartError
from warmstart.peers import GRACE_S, PEER_LOST_EXIT_CODE, Lost, Peer, PeerWatch, check_peer_timeout, peer_failure_line
from warmstart.run_folder import checkpoints, is_complete_checkpoint

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _workers(launcher: subprocess.Popen) -> dict[str, int]:
    """torchrun's worker processes by rank."""
    found = {}
    for pid in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split():
        try:
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        rank = next((v[5:].decode() for v in environment if v.startswith(b"RANK=")), None)
        if rank is not None:
            found[rank] = int(pid)
    return found


def _text_run(tmp_path: Path, steps: int, *extra: str) -> tuple[list[str], Path]:
    bert = _write_bert(tmp_path / "bert", dropout=0.0)
    files = {"train": write_text_csv(tmp_path / "t.csv", _sentences(64, 0)),
             "validation": write_text_csv(tmp_path / "v.csv", _sentences(16, 1))}  # fmt: skip
    out = tmp_path / "out"
    flags = [
        *text_data_flags(bert, files),
        *trainer_flags(out, "--max_steps", str(steps), "--save_strategy", "steps", "--save_steps", "20"),
        *("--per_device_train_batch_size", "4", "--precision", "fp32", "--disable_tqdm", "true", *extra),
    ]
    return flags, out


def _start_until_checkpoint(flags: list[str], out: Path) -> tuple[subprocess.Popen, dict[str, int]]:
    command = torchrun_command(REPO / "recipes" / "text_classification.py", *flags)
    launcher = subprocess.Popen(
        command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while launcher.poll() is None and time.monotonic() < deadline:
        if is_complete_checkpoint(out / "checkpoint-20"):
            break
        time.sleep(0.02)
    workers = _workers(launcher)
    assert {"0", "1"} <= set(workers), f"workers: {workers}"
    return launcher, workers


def _the_line(stderr: str, out: Path, pid: int, how: str) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    last = checkpoints(out)[-1]
    assert re.fullmatch(
        rf"error: rank 1 of 2 \(pid {pid} on \S+\) failed: {how}; rank 0 stops too; the last complete checkpoint "
        rf"is {re.escape(str(last))}: rerun the launch with --resume_from_checkpoint auto",
        lines[0],
    ), lines[0]
    assert f"exitcode  : {PEER_LOST_EXIT_CODE}" in stderr, stderr[-1500:]  # torchrun's report of rank 0
    assert "[rank0]: Traceback" not in stderr  # the line, not rank 0's traceback of the broken collective


def test_a_killed_rank_stops_the_other_with_one_line_and_the_run_resumes(tmp_path):
    flags, out = _text_run(tmp_path, 600)
    launcher, workers = _start_until_checkpoint(flags, out)
    killed = time.monotonic()
    os.kill(workers["1"], signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=120)
    seconds = time.monotonic() - killed

    assert launcher.returncode != 0
    # the bound the module documents: a rank on this host is checked every second, the others end within GRACE_S
    assert seconds < 1 + GRACE_S + 10, f"{seconds:.1f} s"  # + torchrun's own teardown
    _the_line(stderr, out, workers["1"], "its process is gone")

    resumed = subprocess.run(
        torchrun_command(
            REPO / "recipes" / "text_classification.py",
            *[f if f != "600" else "60" for f in flags],
            "--resume_from_checkpoint",
            "auto",
        ),
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "model.safetensors").is_file()
    assert checkpoints(out)[-1].name == "checkpoint-60"


def test_a_frozen_rank_is_given_up_on_after_the_peer_timeout(tmp_path):
    """SIGSTOP: the process is alive, so neither torchrun nor the collective notices; rank 0's collective would wait
    for --ddp_timeout (30 minutes). Its watcher sees the beats stop and ends it after --peer_timeout + GRACE_S."""
    flags, out = _text_run(tmp_path, 600, "--peer_timeout", "3")
    launcher, workers = _start_until_checkpoint(flags, out)
    frozen = time.monotonic()
    os.kill(workers["1"], signal.SIGSTOP)
    try:
        while _running(workers["0"]) and time.monotonic() - frozen < 60:
            time.sleep(0.1)
        seconds = time.monotonic() - frozen
    finally:
        os.kill(workers["1"], signal.SIGKILL)  # torchrun would wait 30 s for a stopped process to take its SIGTERM
    _, stderr = launcher.communicate(timeout=120)
    assert 3 <= seconds < 3 + 1 + GRACE_S + 5, f"{seconds:.1f} s"
    _the_line(stderr, out, workers["1"], r"no sign of life for \d+ s \(--peer_timeout 3\)")


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


# ------------------------------------------------------------------------------------------------------- pieces


def _watch(tmp_path: Path, peers: list[Peer], rank: int = 0, timeout: float = 3.0) -> PeerWatch:
    watch = PeerWatch(tmp_path, timeout)
    watch.peers, watch.rank = peers, rank
    return watch


def test_a_peer_on_this_host_is_lost_when_its_process_is_gone(tmp_path):
    import socket

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    me = Peer(0, socket.gethostname(), os.getpid())
    watch = _watch(tmp_path, [me, Peer(1, socket.gethostname(), child.pid)])
    assert watch.check() is None
    child.kill()  # left unreaped: a zombie counts as gone
    time.sleep(0.2)
    lost = watch.check()
    child.wait()
    assert lost == Lost(Peer(1, socket.gethostname(), child.pid), "its process is gone")
    assert watch.line() == (
        f"error: rank 1 of 2 (pid {child.pid} on {socket.gethostname()}) failed: its process is gone; rank 0 stops "
        f"too; no checkpoint is complete in {tmp_path}: rerun the launch"
    )


class _Store:
    """A rendezvous store's ``add``, as torch's TCPStore answers it."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def add(self, key: str, amount: int) -> int:
        self.values[key] = self.values.get(key, 0) + amount
        return self.values[key]


def test_a_peer_on_another_host_is_lost_when_its_beats_stop_for_the_timeout(tmp_path, monkeypatch):
    import warmstart.peers as peers

    clock = [100.0]
    monkeypatch.setattr(peers.time, "monotonic", lambda: clock[0])
    watch = _watch(tmp_path, [Peer(0, "here", os.getpid()), Peer(1, "elsewhere", 1)], timeout=3.0)
    monkeypatch.setattr(peers.socket, "gethostname", lambda: "here")
    watch._store = store = _Store()
    for _ in range(5):  # rank 1 beats each second: never lost
        store.add("warmstart/beat/1", 1)
        clock[0] += 1.0
        assert watch.check() is None
    clock[0] += 2.5  # silent for 2.5 s: under the timeout
    assert watch.check() is None
    clock[0] += 1.0  # 3.5 s
    lost = watch.check()
    assert lost is not None and lost.peer.rank == 1 and "no sign of life for 4 s (--peer_timeout 3)" in lost.how
    assert store.values["warmstart/beat/0"] == 7  # this rank beat at every look


def test_the_lowest_rank_left_prints_and_the_others_stay_silent(tmp_path):
    peers = [Peer(r, "h", 100 + r) for r in range(3)]
    zero, one = _watch(tmp_path, peers, 0), _watch(tmp_path, peers, 1)
    zero.lost = one.lost = Lost(peers[2], "its process is gone")
    assert zero.prints() and not one.prints()
    one.lost = Lost(peers[0], "its process is gone")  # rank 0 died: rank 1 speaks
    assert one.prints()
    for step in (20, 40):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-60").mkdir()  # not complete
    assert f"the last complete checkpoint is {tmp_path / 'checkpoint-40'}:" in zero.line()


def test_an_error_that_is_not_a_peers_is_left_alone(tmp_path, monkeypatch):
    import warmstart.peers as peers

    assert peer_failure_line(ValueError("x")) is None  # no watch: a single process
    watch = _watch(tmp_path, [Peer(0, "h", os.getpid()), Peer(1, "h", os.getpid())])
    monkeypatch.setattr(peers, "_last", [watch])
    monkeypatch.setattr(peers, "_INTERVAL_S", 0.0)
    assert peer_failure_line(ValueError("a bug")) is None  # every peer alive, not a collective's error: a traceback
    line = peer_failure_line(RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer"))
    assert line.startswith("error: a process of this 2-process run failed (") and "Connection reset" in line


def test_the_timeout_is_checked():
    check_peer_timeout(60)
    with pytest.raises(WarmstartError, match="--peer_timeout .* at least 2; got 0.5"):
        check_peer_timeout(0.5)
