"""A dead rank never hangs the job: when one process of a multi-process run dies (killed, out of memory, an exception),
the others stop within a bounded time with one line naming the rank that failed and the last complete checkpoint,
instead of waiting in a collective.

How a loss is noticed:

* A collective with a dead peer fails at once on gloo ("Connection reset by peer"): the run's error is turned into
  the line by :func:`warmstart.run_cli` (through :func:`peer_failure_line`, registered with
  :func:`warmstart.errors.explain_failures_with`), which names the peer that is gone.
* A watcher thread (:class:`PeerWatch`) checks every second that the processes of the other ranks on this host are
  alive, and that every other rank still beats (a counter each rank's watcher adds to in the launch's rendezvous store
  every second). A peer whose process is gone, or whose beat has not moved for ``--peer_timeout`` seconds (on another
  host, dead; anywhere, frozen or stuck holding the interpreter), is lost.
  If this process has not ended by itself :data:`GRACE_S` seconds later (it is stuck in a collective that will not
  fail: NCCL waits for its own timeout), the watcher prints the line and ends the process.

The bound, then: a rank that dies on the same host is noticed within a second, one on another host (or one that
stops beating) within ``--peer_timeout`` (default :data:`DEFAULT_PEER_TIMEOUT_S`), and the survivors exit at most
:data:`GRACE_S` later, with status :data:`PEER_LOST_EXIT_CODE`. Under ``torchrun`` / ``accelerate launch`` the
launcher stops the survivors too (SIGTERM, then SIGKILL 30 s later) and exits non-zero; a rank that is alive and
beating but stuck in a collective is a matter for the collective's own timeout (the Trainer's ``--ddp_timeout``,
1800 s by default).

The line is printed by the lowest-numbered rank still alive; the others exit with the same status, silently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from warmstart.errors import WarmstartError, explain_failures_with
from warmstart.processes import process_alive

logger = logging.getLogger("warmstart")

DEFAULT_PEER_TIMEOUT_S = 60.0
GRACE_S = 5.0  # after a loss is noticed, how long this process may take to end by itself
PEER_LOST_EXIT_CODE = 76  # EX_PROTOCOL: a remote error; distinct from bad input (2) and preemption (75)
_INTERVAL_S = 1.0
_BEAT_KEY = "warmstart/beat/{}"


def check_peer_timeout(seconds: float) -> None:
    """Raises:
    WarmstartError: a timeout under two beats (a peer would be declared lost between two of its beats)."""
    if not seconds >= 2 * _INTERVAL_S:
        raise WarmstartError(
            f"--peer_timeout is the seconds a rank may go without a sign of life before the run stops, at least "
            f"{2 * _INTERVAL_S:g}; got {seconds}"
        )


@dataclass(frozen=True)
class Peer:
    rank: int
    host: str
    pid: int


@dataclass(frozen=True)
class Lost:
    """A peer found gone: which, and how it was noticed."""

    peer: Peer
    how: str


class PeerWatch(TrainerCallback):
    """Watches the other ranks of the launch (see the module). :func:`watched_peers` makes and starts it; as a
    Trainer callback it starts at the training's start if the process group came up only with the Trainer.

    Args:
        output_dir: the run's output folder, whose last complete checkpoint the line names.
        timeout: seconds a rank on another host may go without a beat.
    """

    def __init__(self, output_dir: str | Path, timeout: float = DEFAULT_PEER_TIMEOUT_S) -> None:
        self.output_dir, self.timeout = Path(output_dir), timeout
        self.peers: list[Peer] = []
        self.rank = 0
        self.lost: Lost | None = None
        self._store: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beats: dict[int, tuple[int, float]] = {}

    # -- starting and stopping -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Learns every rank's host and process (a collective: every rank calls it at the same point) and starts
        the watcher thread; a no-op in a single process or once started."""
        import torch.distributed as dist

        if self._thread is not None or not (dist.is_available() and dist.is_initialized()):
            return
        if dist.get_world_size() < 2:
            return
        me = Peer(dist.get_rank(), socket.gethostname(), os.getpid())
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, me)
        self.peers, self.rank = list(everyone), me.rank
        with contextlib.suppress(Exception):  # a private API: without it, other hosts are watched by the collectives
            self._store = dist.distributed_c10d._get_default_store()
        self._thread = threading.Thread(target=self._watch, name="warmstart-peer-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * _INTERVAL_S)
            self._thread = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start()

    # -- the watcher -----------------------------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.wait(_INTERVAL_S):
            lost = self.check()
            if lost is None:
                continue
            # give the main thread the chance to end by itself (a failed gloo collective), with its own line
            if self._stop.wait(GRACE_S):
                return
            if self.prints():
                _write_line(self.line())
            os._exit(PEER_LOST_EXIT_CODE)

    def check(self) -> Lost | None:
        """Looks once for a lost peer (and remembers the first found)."""
        if self.lost is not None:
            return self.lost
        host, now = socket.gethostname(), time.monotonic()
        if self._store is not None:
            try:
                self._store.add(_BEAT_KEY.format(self.rank), 1)
            except Exception as err:  # noqa: BLE001 - the store's server is rank 0's: it is gone
                rank0 = next((p for p in self.peers if p.rank == 0), None)
                if rank0 is not None and rank0.rank != self.rank:
                    self.lost = Lost(rank0, f"the rendezvous store it serves stopped answering ({type(err).__name__})")
                    return self.lost
                self._store = None
        for peer in self.peers:
            if peer.rank == self.rank:
                continue
            if peer.host == host and not process_alive(peer.pid):
                self.lost = Lost(peer, "its process is gone")
                return self.lost
            if self._store is None:
                continue
            try:
                beat = int(self._store.add(_BEAT_KEY.format(peer.rank), 0))
            except Exception:  # noqa: BLE001 - noticed above, at this process's own beat, next time round
                continue
            last, since = self._beats.get(peer.rank, (beat, now))
            if beat != last or peer.rank not in self._beats:
                self._beats[peer.rank] = (beat, now)
            elif now - since > self.timeout:
                self.lost = Lost(peer, f"no sign of life for {now - since:.0f} s (--peer_timeout {self.timeout:g})")
                return self.lost
        return None

    # -- the line --------------------------------------------------------------------------------------------------
    def line(self, cause: str | None = None) -> str:
        """The one line for the loss (``cause``: the error this process met, when the loss is not known)."""
        from warmstart.run_folder import checkpoints

        done = checkpoints(self.output_dir)
        resume = (
            f"the last complete checkpoint is {done[-1]}: rerun the launch with --resume_from_checkpoint auto"
            if done
            else f"no checkpoint is complete in {self.output_dir}: rerun the launch"
        )
        world = len(self.peers)
        if self.lost is not None:
            peer = self.lost.peer
            what = f"rank {peer.rank} of {world} (pid {peer.pid} on {peer.host}) failed: {self.lost.how}"
        else:
            what = f"a process of this {world}-process run failed ({cause})"
        return f"error: {what}; rank {self.rank} stops too; {resume}"

    def prints(self) -> bool:
        """Whether this process prints the line: the lowest-numbered rank not lost."""
        gone = {self.lost.peer.rank} if self.lost is not None else set()
        alive = [p.rank for p in self.peers if p.rank not in gone]
        return not alive or self.rank == min(alive)


_current: PeerWatch | None = None


@contextlib.contextmanager
def watched_peers(output_dir: str | Path, timeout: float = DEFAULT_PEER_TIMEOUT_S) -> Iterator[PeerWatch]:
    """Watches the other ranks inside the block (started now if the process group is up; else give the watch to the
    Trainer as a callback). Nested blocks (a comparison's runs) share the outer watch."""
    global _current
    if _current is not None:
        yield _current
        return
    watch = PeerWatch(output_dir, timeout)
    _current = watch
    try:
        watch.start()
        yield watch
    finally:
        watch.stop()
        _current = None
        _last[0] = watch


_last: list[PeerWatch | None] = [None]  # the watch of the block that ended last, for run_cli's line


def peer_failure_line(err: BaseException) -> str | None:
    """The line for an error met because a peer failed (``None``: no peer is known to have failed and the error is no
    collective's); looks once more for a lost peer first, as the error may come before the watcher's next look."""
    watch = _current or _last[0]
    if watch is None or not watch.peers:
        return None
    lost = watch.check()
    if lost is None:
        time.sleep(_INTERVAL_S)  # a peer killed a moment ago may still be exiting
        lost = watch.check()
    if lost is None and not _is_collective_error(err):
        return None
    cause = " ".join(str(err).split())[:160]
    return watch.line(cause) if watch.prints() else ""


def _explain(err: BaseException) -> tuple[str, int] | None:
    line = peer_failure_line(err)
    return None if line is None else (line, PEER_LOST_EXIT_CODE)


explain_failures_with(_explain)  # run_cli turns a peer's failure, echoed here as an error, into the line and status 76


def _is_collective_error(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err}"
    return any(
        marker in text
        for marker in ("gloo", "NCCL", "DistBackendError", "DistNetworkError", "Connection reset", "Connection closed")
    )


def _write_line(line: str) -> None:
    with contextlib.suppress(Exception):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
