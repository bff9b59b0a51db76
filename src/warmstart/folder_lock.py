"""One run per folder: a run, a comparison or a search holds a lock on its output folder while it works, so that a
second one started into the same folder refuses instead of interleaving checkpoints and overwriting the first's
model.

The lock is ``<folder>/.warmstart.lock``, held with ``flock`` on an open descriptor: the kernel releases it when the
holder exits, however it exits (SIGKILL, out of memory), so a lock left by a dead process is recognised as stale and
taken over, with a note naming it. The file records the holder (host, process id, start time, command) for the
refusal to name. Where ``flock`` is not supported (some network file systems) a lock of a process that no longer
exists on this host is stale, and one of another host is refused with the file to delete once that run is gone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from warmstart.errors import WarmstartError
from warmstart.processes import process_alive

logger = logging.getLogger("warmstart")

LOCK_FILE = ".warmstart.lock"


class FolderInUse(WarmstartError):
    """Another live run holds the folder's lock (the message names it)."""


def _holder(what: str) -> dict[str, Any]:
    return {
        "what": what,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])[:500],
    }


def _describe(holder: dict[str, Any]) -> str:
    where = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
    command = f": {holder['command']}" if holder.get("command") else ""
    return f"{holder.get('what', 'a warmstart run')}, {where}{command}"


class FolderLock:
    """The lock of one folder (see the module). :meth:`acquire` takes it or raises :class:`FolderInUse`;
    :meth:`release` gives it back and removes the file (and the folder, when acquiring made it and it is still
    empty)."""

    def __init__(self, folder: str | Path, what: str = "a warmstart run"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None
        self._made_folder = False
        self.note: str | None = None

    def acquire(self) -> FolderLock:
        """Takes the lock.

        Returns:
            The lock; its ``note`` says which stale lock it took over, if any.

        Raises:
            FolderInUse: a live process holds it.
        """
        if self.folder.exists() and not self.folder.is_dir():
            raise WarmstartError(f"--output_dir {self.folder} is a file: give a directory")
        self._made_folder = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise WarmstartError(
                f"--output_dir {self.folder} cannot be written ({err.strerror}): choose another"
            ) from None
        os.close(fd)
        for _ in range(5):  # the file may be removed by its holder between our open and our lock: try again
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                held = self._lock(fd)
            except BaseException:
                os.close(fd)
                raise
            if not held:
                os.close(fd)
                self._refuse(self._read(), live=True)
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                break
            os.close(fd)
        else:
            raise FolderInUse(f"{self.folder} is being locked and unlocked by other runs: try again")
        earlier = self._read()
        if earlier:
            self.note = f"took over the lock of {_describe(earlier)}, which is no longer running"
            logger.warning("%s: %s", self.folder, self.note)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(_holder(self.what)).encode(), 0)
        os.fsync(self._fd)
        return self

    def _lock(self, fd: int) -> bool:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        # no flock here: the recorded holder decides
        holder = self._read()
        if not holder:
            return True
        if holder.get("host") == socket.gethostname():
            return not process_alive(int(holder.get("pid", -1)))
        self._refuse(holder, live=False)
        return False  # not reached

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text()
            holder = json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _refuse(self, holder: dict[str, Any], *, live: bool) -> None:
        if live:
            raise FolderInUse(
                f"{self.folder} is in use by another run ({_describe(holder)}): wait for it to finish, or give "
                "another --output_dir"
            )
        raise FolderInUse(
            f"{self.folder} is locked by {_describe(holder)}, which this host cannot check: if that run is gone, "
            f"delete {self.path}; else give another --output_dir"
        )

    def release(self) -> None:
        """Gives the lock back (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None
        if self._made_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only when empty: a run refused before it wrote anything leaves no folder

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def locked_folder(
    folder: str | Path, what: str = "a warmstart run", *, enabled: bool = True
) -> Iterator[FolderLock | None]:
    """Holds ``folder``'s lock inside the block (``enabled=False``: nothing, e.g. on the processes that do not write).

    Raises:
        FolderInUse: another live run holds it.
    """
    if not enabled:
        yield None
        return
    with FolderLock(folder, what) as lock:
        yield lock
