"""The one error type warmstart raises for bad input, and the command-line boundary that reports it."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence


class WarmstartError(ValueError):
    """Bad input: the message says what is wrong and how to fix it, on one line.

    Recipes turn it into ``error: <message>`` on stderr and exit status 2, with no traceback.
    """


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Runs a recipe's ``main`` and reports bad input as one line instead of a traceback.

    Args:
        main: the recipe entry point; it takes the command-line arguments (``None``: ``sys.argv[1:]``).
        argv: arguments to pass on.

    Raises:
        SystemExit: with status 2 when ``main`` raised :class:`WarmstartError`.
    """
    try:
        main(argv)
    except WarmstartError as err:
        _close_progress_bars()
        message = " ".join(str(err).split())
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Tears down a torchrun / accelerate process group before the interpreter exits: left to interpreter
    teardown, gloo's threads were destroyed still running now and then ("terminate called without an active
    exception"), and a rank that had finished its work exited with SIGABRT."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        with contextlib.suppress(Exception):  # a peer already gone must not turn a finished run into a failure
            distributed.destroy_process_group()


def _close_progress_bars() -> None:
    """Ends the progress bars a failed run left open (a Trainer's, mid-epoch): a bar's line has no newline until
    it closes, and the error would otherwise be glued to its end."""
    tqdm_module = sys.modules.get("tqdm")
    bars = getattr(getattr(tqdm_module, "tqdm", None), "_instances", None)
    for bar in list(bars or ()):
        with contextlib.suppress(Exception):  # a bar that cannot close must not hide the error
            bar.close()
