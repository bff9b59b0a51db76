"""Whether a process of this host is still there: for the lock of a folder, the record files of bad examples and the
watch over a run's other ranks, which each ask it of a process id they were told."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running: it exists (or exists under another user) and is not a zombie
    (ended, not yet reaped by its parent, as a launcher's killed worker is for a moment)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):  # no /proc (not Linux): existing is alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True
