"""Preemption: a spot instance or a SLURM job gets SIGTERM (and SIGUSR1 ahead of its time limit) with seconds to spare.
On either, a run finishes the optimizer step it is in, writes a complete checkpoint, records why it stopped
(``stopped.json``) and exits with a status of its own (:data:`DEFAULT_EXIT_CODE`, ``--preempt_exit_code``), so that a
scheduler can requeue it; rerun with ``--resume_from_checkpoint auto``, it ends with the weights of a run never
stopped. Under several processes every rank stops at the same step (they agree after each step). A second signal
while the checkpoint is written is noted and ignored.

Before training starts (data loading, feature caching) there is no step to finish: the run stops at once with the
same status. After training has ended the run finishes its evaluation and output, which are short, and exits normally.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from warmstart.errors import WarmstartError

logger = logging.getLogger("warmstart")

PREEMPT_SIGNALS = ("SIGTERM", "SIGUSR1")
# EX_TEMPFAIL (sysexits.h): "a temporary failure; the user is invited to retry" -- the requeue case
DEFAULT_EXIT_CODE = 75
STOPPED_FILE = "stopped.json"


class Preempted(WarmstartError):
    """The run stopped on a preemption signal (the message says where its checkpoint is); ``exit_code`` is the
    status :func:`warmstart.run_cli` exits with, and ``label`` how its line starts."""

    label = "preempted"

    def __init__(self, message: str, exit_code: int = DEFAULT_EXIT_CODE):
        super().__init__(message)
        self.exit_code = exit_code


def check_exit_code(code: int) -> None:
    """Raises:
    WarmstartError: a status a shell cannot tell from success or from the usual failures (0, 1, 2) or out of
    range."""
    if not 3 <= code <= 125:
        raise WarmstartError(
            f"--preempt_exit_code must be in 3..125 (0 is success, 1 and 2 are failures, above 125 the shell's), got "
            f"{code}"
        )


class Preemption(TrainerCallback):
    """Turns SIGTERM / SIGUSR1 into a clean stop (see the module). Install it for the run (:meth:`installed`) and give
    it to the Trainer as a callback.

    Args:
        output_dir: the run's output folder (its checkpoints, and ``stopped.json``).
        exit_code: the status the run exits with when preempted.
        writes: this process writes the run's files (the main process).
    """

    def __init__(self, output_dir: str | Path, exit_code: int = DEFAULT_EXIT_CODE, *, writes: bool = True):
        self.output_dir, self.exit_code, self.writes = Path(output_dir), exit_code, writes
        self.received: str | None = None
        self.phase = "before"  # before / training / after the training loop
        self.stopped_at: int | None = None
        self._previous: dict[int, Any] = {}
        self._held = False

    # -- the signal handlers ---------------------------------------------------------------------------------------
    def install(self) -> None:
        """Handles the preemption signals from now on (the main thread only: elsewhere Python cannot)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for name in PREEMPT_SIGNALS:
            number = getattr(signal, name, None)
            if number is not None:
                self._previous[number] = signal.signal(number, self._handle)

    def uninstall(self) -> None:
        """Puts the handlers that were there back (unless :meth:`hold` asked to keep the signals off)."""
        if self._held:
            return
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def hold(self) -> None:
        """From now on the preemption signals are noted and ignored, to the end of the process."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._held = True
        for name in PREEMPT_SIGNALS:
            signal.signal(getattr(signal, name), _noted)

    def _handle(self, number: int, frame: Any) -> None:
        name = signal.Signals(number).name
        if self.received is not None:
            logger.warning("%s received again: ignored, the checkpoint is being made", name)
            return
        self.received = name
        if self.phase == "before":  # nothing has trained: nothing to finish
            raise Preempted(
                f"{name} received before training started: nothing to save; rerun the same command", self.exit_code
            )
        if self.phase == "training":
            logger.warning("%s received: the run stops after this optimizer step, with a checkpoint", name)
        else:
            logger.warning("%s received after training: the evaluation and the output are finished first", name)

    # -- the Trainer's hooks ---------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self.phase = "training"

    def on_step_end(self, args, state, control, **kwargs):
        if _agreed(self.received is not None):
            control.should_save = True  # whatever --save_strategy says: this step's checkpoint is the way back
            control.should_training_stop = True
            self.stopped_at = state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        self.phase = "after"
        if self.stopped_at is None:
            return
        checkpoint = self.output_dir / f"checkpoint-{self.stopped_at}"
        signal_name = self.received or "a preemption signal on another process"
        if self.writes:
            record = {
                "reason": signal_name,
                "step": self.stopped_at,
                "checkpoint": checkpoint.name,
                "exit_code": self.exit_code,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (self.output_dir / STOPPED_FILE).write_text(json.dumps(record, indent=2))
        raise Preempted(
            f"{signal_name} at step {self.stopped_at}: {checkpoint} is complete; rerun the same command with "
            "--resume_from_checkpoint auto to go on",
            self.exit_code,
        )


def _noted(number: int, frame: Any) -> None:
    logger.info("%s received while the run ends with an error: ignored", signal.Signals(number).name)


def _agreed(stop: bool) -> bool:
    """Whether any process of the run was told to stop (every process calls this after the same steps)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return stop
    import torch

    flag = torch.tensor([1.0 if stop else 0.0])
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


@contextmanager
def preemptible(
    output_dir: str | Path, exit_code: int = DEFAULT_EXIT_CODE, *, writes: bool = True
) -> Iterator[Preemption]:
    """Handles the preemption signals inside the block (see :class:`Preemption`; give it to the Trainer); a run that
    ends without being stopped removes the record of an earlier stop."""
    preemption = Preemption(output_dir, exit_code, writes=writes)
    preemption.install()
    try:
        yield preemption
        if writes and preemption.stopped_at is None:
            (Path(output_dir) / STOPPED_FILE).unlink(missing_ok=True)
    except WarmstartError:  # a refusal, or this preemption: a driver may go on (a search's next trial)
        raise
    except BaseException:
        from warmstart.distributed import launched_processes

        if launched_processes() > 1:
            # on its way out with an error, maybe because another rank died: the launcher's SIGTERM to the others
            # must not cut short the line that says so (warmstart.peers)
            preemption.hold()
        raise
    finally:
        preemption.uninstall()
