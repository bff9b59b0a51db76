"""The one error type warmstart raises for bad input, the command-line boundary that reports it, and the one line
for something of the Hub that could not be had."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence


class WarmstartError(ValueError):
    """Bad input: the message says what is wrong and how to fix it, on one line.

    Recipes turn it into ``error: <message>`` on stderr and exit status 2, with no traceback.
    """


def hub_offline() -> bool:
    """Whether the Hugging Face Hub is switched off: ``HF_HUB_OFFLINE`` set now, or ``huggingface_hub`` having read it
    when it was imported (its ``constants.HF_HUB_OFFLINE``, which ``TRANSFORMERS_OFFLINE`` sets too)."""
    from huggingface_hub import constants  # here, not above: a bare ``import warmstart.errors`` stays light

    return (
        constants.HF_HUB_OFFLINE
        or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in constants.ENV_VARS_TRUE_VALUES
    )


def hub_unavailable(what: str, err: BaseException) -> str:
    """The one line for a hub id (a model, a dataset, a metric) that could not be loaded, saying which of the two
    happened: the Hub is switched off and it is not in the Hugging Face cache, or the download failed. Hub ids are
    downloaded from the Hub as the HF examples do, and read from the cache alone with ``HF_HUB_OFFLINE=1``.

    Args:
        what: what could not be loaded, as the line names it (``dataset 'imdb'``).
        err: the loader's error; its type is named when the download failed.

    Returns:
        ``cannot load <what>: ...``, without a trailing period, for a :class:`WarmstartError` (callers may add
        alternatives after a semicolon).

    Example:
        ``raise WarmstartError(hub_unavailable("dataset 'imdb'", err) + "; or give local files") from None`` says,
        with ``HF_HUB_OFFLINE`` unset: ``cannot load dataset 'imdb': it could not be downloaded from the Hub
        (ConnectionError): check the name and the network, or set HF_HUB_OFFLINE=1 to use the cache; or give local
        files``.
    """
    if hub_offline():
        return (
            f"cannot load {what}: offline (HF_HUB_OFFLINE=1) and not in the Hugging Face cache: run once online or "
            "unset HF_HUB_OFFLINE"
        )
    return (
        f"cannot load {what}: it could not be downloaded from the Hub ({type(err).__name__}): check the name and the "
        "network, or set HF_HUB_OFFLINE=1 to use the cache"
    )


Explainer = Callable[[BaseException], "tuple[str, int] | None"]
_explainers: list[Explainer] = []


def explain_failures_with(explainer: Explainer) -> None:
    """Lets a module that can tell why an unexpected error happened turn it into one line and an exit status at the
    command-line boundary (:func:`run_cli`), without this module importing it.

    Args:
        explainer: takes the error; returns ``(line, status)`` (``line`` empty: end silently, another process says
            it) or ``None`` when the error is none of its business (a traceback follows, as for any bug).
    """
    if explainer not in _explainers:
        _explainers.append(explainer)


def _explain(err: BaseException) -> tuple[str, int] | None:
    for explainer in _explainers:
        explained = explainer(err)
        if explained is not None:
            return explained
    return None


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Runs a recipe's ``main`` and reports bad input as one line instead of a traceback.

    Args:
        main: the recipe entry point; it takes the command-line arguments (``None``: ``sys.argv[1:]``).
        argv: arguments to pass on.

    Raises:
        SystemExit: with status 2 when ``main`` raised :class:`WarmstartError` (a preempted run: its
            ``--preempt_exit_code``, 75 by default). When an explainer (:func:`explain_failures_with`) knows the
            cause of another error, the process prints its line and ends at once with its status: another process of
            a multi-process run failed, status 76 (:mod:`warmstart.peers`: one line naming it and the last complete
            checkpoint, from the lowest rank left).
    """
    try:
        main(argv)
    except WarmstartError as err:
        _close_progress_bars()
        message = " ".join(own_message(err).split())
        # a preempted run's line and status are its own (warmstart.preemption.Preempted)
        print(f"{getattr(err, 'label', 'error')}: {message}", file=sys.stderr)
        raise SystemExit(getattr(err, "exit_code", 2)) from None
    except Exception as err:
        explained = _explain(err)
        if explained is None:
            raise
        line, status = explained
        _close_progress_bars()
        if line:
            print(line, file=sys.stderr)
        # now, not through the interpreter's shutdown: it puts the default signal handlers back, and the launcher's
        # SIGTERM to the ranks left would end this one by a signal instead of its status; and the group's teardown
        # may wait on the dead peer
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)
    finally:
        _leave_process_group()


def own_message(err: WarmstartError) -> str:
    """The error's own message: a DataLoader worker's error reaches the main process re-raised with the worker's
    traceback as its message ("Caught WarmstartError in DataLoader worker process 0. Original Traceback ..."), which
    ends with the line raised."""
    text = str(err)
    marker = f"{type(err).__name__}: "
    if text.startswith("Caught ") and "Original Traceback" in text and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text


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
