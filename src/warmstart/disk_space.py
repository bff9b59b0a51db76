"""A full disk, said plainly: when a checkpoint, the feature cache's spill files or a run's output cannot be written
for lack of space, the partial files go, what was there before stays whole, and the run stops with one line saying
how much space was needed and where (the libraries' own errors say "unexpected pos 64 vs 0" or "os error 28")."""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path
from typing import Any

from warmstart.errors import WarmstartError
from warmstart.run_folder import checkpoints

logger = logging.getLogger("warmstart")

_MESSAGES = ("No space left on device", "os error 28")
# torch.save to a path hides errno: a small object fails in the C++ stream ("basic_ios::clear: iostream error"), a
# larger one in the zip writer ("unexpected pos 704 vs 598", "PytorchStreamWriter failed writing file")
_TORCH_WRITE_FAILURES = ("unexpected pos", "basic_ios::clear", "PytorchStreamWriter failed", "file write failed")
_NEARLY_FULL = 2**20


def is_out_of_space(err: BaseException, where: str | Path | None = None) -> bool:
    """Whether ``err`` is a write that ran out of space: an ``OSError`` with ``ENOSPC`` / ``EDQUOT``, a library's
    error that says so, or torch's write failures that do not say why, when ``where``'s device is indeed nearly full
    (under 1 MiB free to this user)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    if any(message in text for message in _MESSAGES):
        return True
    return any(m in text for m in _TORCH_WRITE_FAILURES) and where is not None and free_bytes(where) < _NEARLY_FULL


def free_bytes(where: str | Path) -> int:
    """The free space of the device holding ``where`` (or its nearest existing parent)."""
    path = Path(where).absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    return shutil.disk_usage(existing).free


def folder_bytes(folder: str | Path) -> int:
    """The size of the files under ``folder`` (0 if there is none)."""
    folder = Path(folder)
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


def out_of_space(
    where: str | Path, what: str, needed: int | None, then: str, free: int | None = None
) -> WarmstartError:
    """The one-line error: what could not be written where, the space it needs and the space free (``free``: as
    measured when the write failed, before its partial files were removed; else now), what is whole, and what to
    do."""
    need = f"it needs about {_mib(needed)}, " if needed else ""
    free = free_bytes(where) if free is None else free
    return WarmstartError(
        f"no space left on the device of {where} while writing {what}: {need}{_mib(free)} were free; {then}"
    )


def checkpoint_bytes(model: Any) -> int:
    """About what a checkpoint of ``model`` takes: its weights, and two optimizer states (Adam's) per trained one."""
    params = list(model.parameters())
    trained = sum(p.numel() * 4 for p in params if p.requires_grad)
    return sum(p.numel() * p.element_size() for p in params) + 2 * trained


def guard_checkpoints(trainer: Any, model_bytes: int) -> None:
    """Makes the Trainer's checkpoint saving fail cleanly on a full disk: the checkpoint being written is removed
    (it was incomplete: its ``trainer_state.json`` is written last) and the run stops with one line naming the space
    needed (the last complete checkpoint's size, else ``model_bytes``) and the last complete checkpoint, which is
    left whole. (The Trainer has no hook around its save; its method is wrapped on this instance.)"""
    save = trainer._save_checkpoint

    def guarded(model: Any, trial: Any) -> None:
        output_dir = Path(trainer.args.output_dir)
        folder = output_dir / f"checkpoint-{trainer.state.global_step}"
        existed = folder.exists()
        earlier = checkpoints(output_dir)
        try:
            save(model, trial)
        except Exception as err:
            if not is_out_of_space(err, output_dir):
                raise
            free = free_bytes(output_dir)  # with the partial checkpoint still there: what the write met
            if not existed:
                shutil.rmtree(folder, ignore_errors=True)
            last = f"{earlier[-1]} is complete and whole" if earlier else "no earlier checkpoint was complete"
            needed = folder_bytes(earlier[-1]) if earlier else model_bytes
            raise out_of_space(
                output_dir, folder.name, needed,
                f"the partial {folder.name} was removed, {last}: free space (or give another --output_dir, or a "
                "larger --save_steps) and rerun with --resume_from_checkpoint auto",
                free,
            ) from None  # fmt: skip

    trainer._save_checkpoint = guarded
