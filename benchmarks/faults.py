"""What warmstart does when a cluster fault hits a run: measured through the recipes' command line only, so that the
same script runs against any checkout (an old revision without the newer flags, or the current one).

Every scenario starts the recipes in child processes of its own (``python recipes/text_classification.py ...``,
``python recipes/image_classification.py ...``, ``python -m torch.distributed.run --nproc_per_node 2 ...``), with
``HF_HUB_OFFLINE=1``, the checkout's ``src/`` first on ``PYTHONPATH``, a tiny BERT (hidden size 32, 2 layers) or timm's
``test_resnet`` (random init, 32 px) and generated data, in a temporary folder of its own. Nothing is downloaded.

Scenarios (``--only NAME``):

- ``sigterm``: SIGTERM to a run once ``checkpoint-50`` is complete; then ``--resume_from_checkpoint auto`` in the same
  folder, whose final weights are compared with an uninterrupted run's (``torch.equal`` per tensor).
- ``sigusr1``: the same with SIGUSR1 (SLURM's warning before the end of a job's time), without the resume.
- ``dead_rank``: a 2-process torchrun; rank 1's worker is SIGKILLed once ``checkpoint-50`` is complete. How long
  until torchrun exits (capped at 240 s: "hung"), and whether rank 0 went by itself or was stopped by torchrun.
- ``frozen_rank``: the same with SIGSTOP (a rank alive but frozen: neither torchrun nor gloo notices), with
  ``--peer_timeout 3`` where the recipe offers it; capped at 120 s. Rank 1 is SIGKILLed once rank 0 is gone (else
  torchrun waits 30 s for it to take its SIGTERM).
- ``enospc``: a disk that fills up, on a 6 MiB tmpfs (needs root and ``mount``; else "not measurable here"), over a
  folder that already holds a finished model, rerun with ``--overwrite_output_dir``: (a) checkpoints every 5 steps
  fill the disk; (b) 128 KiB are left free and the rerun's model is 5x larger, so its final save fails.
- ``two_runs_one_folder``: a second identical run started into the folder a first one is writing.
- ``truncated_image``: an image folder with one truncated PNG (its first 40 % of bytes); separately, with one PNG
  whose chunks are valid but whose pixel data is garbage; with one JPEG cut at 70 % (its header whole, so Pillow's
  ``verify`` passes it); and, where the recipe offers ``--on_bad_example``, that JPEG with ``skip``.
- ``memory_over_epochs``: the resident set (``VmRSS``, ``VmHWM`` from ``/proc/<pid>/status``, every 0.2 s) of a text
  run of 20 epochs of 1,024 rows, and of a ``head_only`` run on cached features (``--probe_solver trainer``): after
  epoch 2 against after epoch 19 (after the last come the final evaluation, the output and the report).

How to read the table: "exit" is the child's exit status (``SIGTERM`` etc. when a signal ended it: nothing caught the
signal); "s" is seconds from the fault (the signal, the kill, the start for the others) until the process exited;
"left on disk" says which checkpoints are complete (have ``trainer_state.json``), what else appeared, and whether the
previous model survived byte for byte; "error / notes" is the last line the process wrote to stderr (progress bars
left out), or the figures. Timings depend on how busy the machine is: compare them between revisions only when run
on the same machine at the same time.

    python benchmarks/faults.py [--only sigterm dead_rank ...] [--json faults.json] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
RECIPES = REPO / "recipes"
TEXT_RECIPE = RECIPES / "text_classification.py"
IMAGE_RECIPE = RECIPES / "image_classification.py"

# tests/conftest.py makes the tiny models and data (it exists, with these names, at older revisions too)
sys.path.insert(0, str(REPO / "tests"))
sys.dont_write_bytecode = True  # nothing written into the checkout's tests/
from conftest import (  # noqa: E402
    _sentences,
    _write_bert,
    torchrun_command,
    trainer_flags,
    write_image_folder,
    write_text_csv,
)

SIGNAL_WAIT_S = 120  # a signalled run that has not exited by then is reported as hung
DEAD_RANK_WAIT_S = 240
MEMORY_TRAIN_ROWS = 1024
FROZEN_RANK_WAIT_S = 120  # the collective alone waits --ddp_timeout, 1800 s
PROGRESS_BAR = re.compile(r"\d+%\||(it|examples)/s\]|^Writing model shards")


# ------------------------------------------------------------------------------------------------------- processes


def _stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (field 3 onwards), or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _identity(pid: int) -> tuple[int, str] | None:
    """The pid with its start time: a pid the kernel hands to a new process later is not the same process."""
    fields = _stat(pid)
    return None if fields is None else (pid, fields[19])


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (torchrun starts its workers in sessions of their own: a process group kill
    misses them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def environment_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


# processes this script started (directly or below them), by identity: killed at the end if still there
_STARTED: set[tuple[int, str]] = set()
_MOUNTS: list[Path] = []


def kill_tree(pid: int) -> None:
    """SIGKILLs ``pid``, everything below it and its process group (it was started in a session of its own)."""
    for identity in filter(None, (_identity(p) for p in [pid, *descendants(pid)])):
        _STARTED.add(identity)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    _kill_started()


def _kill_started() -> None:
    for pid, start in list(_STARTED):
        if _identity(pid) == (pid, start) and _alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Child:
    """A recipe running in a child process, its stdout and stderr going to files in ``folder``."""

    process: subprocess.Popen
    started: float
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self, timeout: float) -> bool:
        """Waits for the exit; False (and the whole tree killed) when it has not exited within ``timeout``."""
        try:
            self.process.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            kill_tree(self.pid)
            self.process.wait(timeout=30)
            return False

    def text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in (self.stdout, self.stderr) if p.is_file())

    def last_line(self) -> str:
        """The last line written to stderr (or, when it has none, to stdout), progress bars left out."""
        for stream, tag in ((self.stderr, ""), (self.stdout, "(stdout) ")):
            lines = stream.read_text(errors="replace").replace("\r", "\n").splitlines() if stream.is_file() else []
            lines = [line.strip() for line in lines if line.strip() and not PROGRESS_BAR.search(line)]
            if lines:
                return tag + lines[-1][:300]
        return "(no output)"


def child_environment(work: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["HF_DATASETS_CACHE"] = str(work / "hf_datasets")
    # this checkout's library, whatever is installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def start(command: Sequence[str], work: Path, name: str, **env: str) -> Child:
    work.mkdir(parents=True, exist_ok=True)
    stdout, stderr = work / f"{name}.stdout", work / f"{name}.stderr"
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(
            list(command),
            cwd=REPO,
            env=child_environment(work, **env),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    if (identity := _identity(process.pid)) is not None:
        _STARTED.add(identity)
    return Child(process, time.monotonic(), stdout, stderr)


def wait_for(condition: Callable[[], bool], child: Child, timeout: float) -> bool:
    """Polls ``condition`` every 20 ms while ``child`` runs; False if it exited or ``timeout`` passed first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.process.poll() is None:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def run(command: Sequence[str], work: Path, name: str, timeout: float = 300, **env: str) -> Child:
    child = start(command, work, name, **env)
    child.wait(timeout)
    return child


def exit_status(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"{signal.Signals(-code).name} ({code})"
    return str(code)


# ------------------------------------------------------------------------------------------------------ the data


@dataclass
class TextData:
    bert: Path
    train: Path
    validation: Path


def make_text_data(folder: Path, train_rows: int = 64) -> TextData:
    return TextData(
        _write_bert(folder / "bert"),
        write_text_csv(folder / "train.csv", _sentences(train_rows, 0)),
        write_text_csv(folder / "validation.csv", _sentences(16, 1)),
    )


def text_command(data: TextData, output_dir: Path, *extra: str) -> list[str]:
    """The text recipe on the tiny BERT, fp32, on the CPU; ``extra`` overrides (the last of a repeated flag wins)."""
    return [
        sys.executable,
        str(TEXT_RECIPE),
        *text_args(data, output_dir, *extra),
    ]


def text_args(data: TextData, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        str(data.bert),
        "--train_file",
        str(data.train),
        "--validation_file",
        str(data.validation),
        *trainer_flags(output_dir, "--disable_tqdm", "true", "--precision", "fp32", "--group_by_length", "false"),
        *extra,
    ]


CHECKPOINTED = ("--save_strategy", "steps", "--save_steps", "50", "--per_device_train_batch_size", "4")


# -------------------------------------------------------------------------------------------------- what is left


def checkpoints(folder: Path) -> tuple[list[int], list[int]]:
    """The steps of the complete checkpoints (with ``trainer_state.json``, saved last) and of the incomplete ones."""
    complete, partial = [], []
    for path in folder.glob("checkpoint-*"):
        if path.name.split("-")[-1].isdigit():
            step = int(path.name.split("-")[-1])
            (complete if (path / "trainer_state.json").is_file() else partial).append(step)
    return sorted(complete), sorted(partial)


def newest_step(folder: Path) -> int | None:
    """The highest ``global_step`` in any checkpoint's ``trainer_state.json``."""
    steps = []
    for state in folder.glob("checkpoint-*/trainer_state.json"):
        with contextlib.suppress(OSError, ValueError):
            steps.append(json.loads(state.read_text())["global_step"])
    return max(steps, default=None)


def describe_checkpoints(folder: Path) -> str:
    complete, partial = checkpoints(folder)
    shown = ", ".join(str(s) for s in complete[-4:]) if complete else "none"
    more = f"{len(complete)} complete (last: {shown})" if len(complete) > 4 else f"complete: {shown}"
    return more + (f"; incomplete: {', '.join(map(str, partial))}" if partial else "")


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def load_weights(path: Path) -> dict[str, Any] | str:
    """The tensors of a safetensors file, or why they cannot be read."""
    from safetensors.torch import load_file

    if not path.is_file():
        return "missing"
    try:
        return load_file(path)
    except Exception as error:  # a truncated or garbled file: what it says is the finding
        return f"unreadable ({type(error).__name__}: {str(error)[:80]})"


def same_weights(a: Path, b: Path) -> str:
    import torch

    left, right = load_weights(a), load_weights(b)
    if isinstance(left, str) or isinstance(right, str):
        return f"cannot compare ({left if isinstance(left, str) else right})"
    if left.keys() != right.keys():
        return "no (different tensors)"
    differing = [name for name in left if not torch.equal(left[name], right[name])]
    return "yes" if not differing else f"no ({len(differing)}/{len(left)} tensors differ)"


def leftovers(folder: Path) -> list[str]:
    """Files that look half-written: empty files, temporary names, incomplete checkpoints."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and (path.stat().st_size == 0 or re.search(r"\.tmp|tmp[-_.]|~$|\.part", path.name)):
            found.append(str(path.relative_to(folder)))
    found += [f"checkpoint-{s}/ (incomplete)" for s in checkpoints(folder)[1]]
    return found


# ----------------------------------------------------------------------------------------------------- scenarios


@functools.cache
def new_help_flags() -> tuple[str, ...]:
    """The fault-handling flags this checkout's text recipe offers (from its ``--help``, read once)."""
    with tempfile.TemporaryDirectory() as folder:
        child = run([sys.executable, str(TEXT_RECIPE), "--help"], Path(folder), "help", timeout=120)
        text = child.text()
    return tuple(flag for flag in ("--preempt_exit_code", "--peer_timeout", "--on_bad_example") if flag in text)


def _signal_scenario(name: str, work: Path, data: TextData, sent: signal.Signals, resume: bool) -> dict[str, Any]:
    out = work / "interrupted"
    command = text_command(data, out, "--max_steps", "400", *CHECKPOINTED)
    child = start(command, work, "interrupted")
    ready = wait_for(lambda: (out / "checkpoint-50" / "trainer_state.json").is_file(), child, timeout=180)
    if not ready:
        child.wait(5)
        return row(
            name,
            child.process.returncode,
            None,
            describe_checkpoints(out),
            child.last_line(),
            note="checkpoint-50 never appeared; no signal sent",
        )
    before, step_at_signal = listing(out), newest_step(out)
    signalled = time.monotonic()
    child.process.send_signal(sent)
    exited = child.wait(SIGNAL_WAIT_S)
    seconds = time.monotonic() - signalled
    new_files = sorted(listing(out) - before)
    details: dict[str, Any] = {
        "step_at_signal": step_at_signal,
        "highest_step_saved": newest_step(out),
        "complete_checkpoints": checkpoints(out)[0],
        "incomplete_checkpoints": checkpoints(out)[1],
        "new_files_after_signal": new_files,
        "final_model_written": (out / "model.safetensors").is_file(),
    }
    disk = (
        f"{describe_checkpoints(out)}; newest step saved {details['highest_step_saved']} vs {step_at_signal} at the "
        f"signal; new after the signal: {', '.join(new_files) or 'nothing'}"
    )
    notes = [] if exited else [f"hung > {SIGNAL_WAIT_S} s, killed"]
    if resume:
        straight = run(text_command(data, work / "straight", "--max_steps", "400", *CHECKPOINTED), work, "straight")
        resumed = run([*command, "--resume_from_checkpoint", "auto"], work, "resumed")
        equal = same_weights(out / "model.safetensors", work / "straight" / "model.safetensors")
        details.update(
            uninterrupted_exit=straight.process.returncode,
            resumed_exit=resumed.process.returncode,
            resume_equals_uninterrupted=equal,
        )
        notes.append(f"resume (exit {exit_status(resumed.process.returncode)}) equals uninterrupted: {equal}")
    return row(name, child.process.returncode, seconds, disk, child.last_line(), note="; ".join(notes), **details)


def scenario_sigterm(work: Path, data: TextData) -> dict[str, Any]:
    result = _signal_scenario("sigterm", work, data, signal.SIGTERM, resume=True)
    flags = new_help_flags()
    result["details"]["fault_flags_offered"] = flags
    if flags:
        result["note"] += f"; the recipe offers {', '.join(flags)} (not passed: the default is measured)"
    return result


def scenario_sigusr1(work: Path, data: TextData) -> dict[str, Any]:
    return _signal_scenario("sigusr1", work, data, signal.SIGUSR1, resume=False)


def scenario_dead_rank(work: Path, data: TextData) -> dict[str, Any]:
    return _rank_fault("dead_rank", work, data, signal.SIGKILL, (), DEAD_RANK_WAIT_S)


def scenario_frozen_rank(work: Path, data: TextData) -> dict[str, Any]:
    extra = ("--peer_timeout", "3") if "--peer_timeout" in new_help_flags() else ()
    return _rank_fault("frozen_rank", work, data, signal.SIGSTOP, extra, FROZEN_RANK_WAIT_S)


def _rank_fault(
    name: str, work: Path, data: TextData, sent: signal.Signals, extra: Sequence[str], wait_s: float
) -> dict[str, Any]:
    out = work / "out"
    command = torchrun_command(TEXT_RECIPE, *text_args(data, out, "--max_steps", "2000", *CHECKPOINTED, *extra))
    child = start(command, work, "torchrun", OMP_NUM_THREADS="1")
    ready = wait_for(lambda: (out / "checkpoint-50" / "trainer_state.json").is_file(), child, timeout=240)
    workers = {environment_of(p).get("RANK"): p for p in descendants(child.pid) if "RANK" in environment_of(p)}
    for pid in workers.values():
        if (identity := _identity(pid)) is not None:
            _STARTED.add(identity)
    if not ready or "1" not in workers or "0" not in workers:
        kill_tree(child.pid)
        child.wait(30)
        return row(
            name,
            child.process.returncode,
            None,
            describe_checkpoints(out),
            child.last_line(),
            note=f"checkpoint-50 or the workers never appeared (workers: {workers})",
        )
    rank0, rank1 = workers["0"], workers["1"]
    killed = time.monotonic()
    os.kill(rank1, sent)
    rank0_gone = None
    deadline = killed + wait_s
    while time.monotonic() < deadline:
        if rank0_gone is None and not _alive(rank0):
            rank0_gone = time.monotonic() - killed
            if sent == signal.SIGSTOP:  # torchrun would wait 30 s for the stopped rank to take its SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rank1, signal.SIGKILL)
        if child.process.poll() is not None:
            break
        time.sleep(0.05)
    hung = child.process.poll() is None
    seconds = time.monotonic() - killed
    if rank0_gone is None and not _alive(rank0):
        rank0_gone = seconds
    if hung:
        kill_tree(child.pid)
        child.wait(30)
    stderr = child.stderr.read_text(errors="replace").splitlines()
    # torchrun's own lines, without the logger's prefix ("W1206 05:45:28.517000 9020 .../api.py:1028] ")
    failure = [
        re.sub(r"^[WEI]\d{4} [\d:.]+ \d+ \S+\] ", "", line.strip())
        for line in stderr
        if re.search(r"closing signal|exitcode|timed out|Error:|FAILED", line)
    ]
    stopped_by_torchrun = any(str(rank0) in line and "signal" in line.lower() for line in stderr)
    if hung:
        rank0_note = f"rank 0 still running after {wait_s:g} s"
    elif stopped_by_torchrun:
        rank0_note = f"rank 0 stopped by torchrun (a closing signal to its pid), gone after {rank0_gone:.1f} s"
    else:
        rank0_note = f"rank 0 exited on its own after {rank0_gone:.1f} s" if rank0_gone is not None else "rank 0 ?"
    disk = f"{describe_checkpoints(out)}; final model: {'yes' if (out / 'model.safetensors').is_file() else 'no'}"
    return row(
        name,
        "hung" if hung else child.process.returncode,
        None if hung else seconds,
        disk,
        " / ".join(failure[-3:])[-400:],
        note=(f"hung > {wait_s:g} s; " if hung else "") + rank0_note + (f" ({' '.join(extra)})" if extra else ""),
        hung=hung,
        rank0_gone_s=rank0_gone,
        rank0_stopped_by_torchrun=stopped_by_torchrun,
        failure_lines=failure[-6:],
    )


def _mount_tmpfs(folder: Path, size: str) -> str | None:
    """Mounts a tmpfs of ``size`` at ``folder``; why not, or None."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return "no mount command"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        return f"mount -t tmpfs failed: {done.stderr.strip()[:120]}"
    _MOUNTS.append(folder)
    return None


def _unmount(folder: Path) -> None:
    if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "--lazy", str(folder)], capture_output=True)
    if folder in _MOUNTS:
        _MOUNTS.remove(folder)


def model_state(path: Path) -> str:
    """``missing``, ``loadable (<n> tensors)`` or why the safetensors file cannot be read; nothing stays mapped (a
    mapped file keeps its filesystem busy)."""
    weights = load_weights(path)
    return weights if isinstance(weights, str) else f"loadable ({len(weights)} tensors)"


def write_wide_bert(path: Path) -> Path:
    """The tiny BERT's tokenizer with a wider, deeper encoder (hidden size 64, 3 layers): a model file about 5x the
    tiny one's (400 KB against 76 KB)."""
    import torch
    from transformers import BertConfig, BertModel

    _write_bert(path)
    config = BertConfig.from_pretrained(path)
    config.hidden_size, config.intermediate_size, config.num_hidden_layers = 64, 96, 3
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(config).save_pretrained(path)
    return path


def _disk_full_case(
    label: str, work: Path, finished: Path, command: list[str], free_kib: int | None
) -> dict[str, Any]:
    """Copies the finished model onto a fresh 6 MiB tmpfs (with ``free_kib``: then takes all but that much of it)
    and runs ``command`` with ``--output_dir`` there and ``--overwrite_output_dir true``."""
    disk = work / f"tmpfs_{label}"
    why = _mount_tmpfs(disk, "6m")
    if why is not None:
        return {"case": label, "measurable": False, "why": why}
    try:
        out = disk / "out"
        shutil.copytree(finished, out)
        before = {p.name: sha256(p) for p in out.iterdir() if p.is_file()}
        if free_kib is not None:
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            with contextlib.suppress(OSError), (disk / "filler").open("wb") as f:
                f.write(b"\0" * max(0, free - free_kib * 1024))
        child = run([*command, "--output_dir", str(out), "--overwrite_output_dir", "true"], work, f"enospc_{label}")
        return {
            "case": label,
            "measurable": True,
            "exit": child.process.returncode,
            "seconds": time.monotonic() - child.started,
            "error": child.last_line(),
            "previous_model_identical": before["model.safetensors"] == sha256(out / "model.safetensors"),
            "files_rewritten": sorted(n for n, digest in before.items() if sha256(out / n) != digest),
            "model_now": model_state(out / "model.safetensors"),
            "checkpoints": describe_checkpoints(out),
            "leftovers": leftovers(out),
        }
    finally:
        _unmount(disk)


def scenario_enospc(work: Path, data: TextData) -> dict[str, Any]:
    finished = work / "finished"
    first = run(text_command(data, finished, "--max_steps", "20"), work, "finished")
    if first.process.returncode != 0:
        return row("enospc", first.process.returncode, None, "", first.last_line(), note="the first training failed")
    # another seed: a rerun that saved its model over the previous one would leave different bytes
    reseeded = ("--seed", "1", "--per_device_train_batch_size", "4")
    checkpointing = text_command(data, finished, "--max_steps", "400", *CHECKPOINTED, "--save_steps", "5", *reseeded)
    wide = TextData(write_wide_bert(work / "wide_bert"), data.train, data.validation)
    cases = [
        _disk_full_case("a", work, finished, checkpointing, free_kib=None),
        _disk_full_case(
            "b", work, finished, text_command(wide, finished, "--max_steps", "20", *reseeded), free_kib=128
        ),
    ]
    if not cases[0]["measurable"]:
        return row("enospc", None, None, "", "", note=f"not measurable here: {cases[0]['why']}", cases=cases)

    def cell(key: str, show: Callable[[Any], str] = str) -> str:
        return " / ".join(f"{c['case']}: {show(c[key])}" for c in cases if c["measurable"])

    disk = " / ".join(
        f"{c['case']}: previous model byte-identical: {'yes' if c['previous_model_identical'] else 'no'}, "
        f"model.safetensors now {c['model_now']}; rewritten: {', '.join(c['files_rewritten']) or 'nothing'}; "
        f"{c['checkpoints']}; partial files: "
        f"{', '.join(c['leftovers'][:4]) or 'none'}{' ...' if len(c['leftovers']) > 4 else ''}"
        for c in cases
        if c["measurable"]
    )
    return row(
        "enospc (6 MiB tmpfs over a finished model, rerun with --overwrite_output_dir; a: a checkpoint every 5 steps "
        "fills it; b: 128 KiB free, the rerun's model 5x larger)",
        cell("exit", exit_status),
        cell("seconds", lambda s: f"{s:.1f}"),
        disk,
        cell("error"),
        cases=cases,
    )


def scenario_two_runs_one_folder(work: Path, data: TextData) -> dict[str, Any]:
    out = work / "out"
    # long enough that the second (its imports take seconds) reaches the folder while the first still trains
    command = text_command(data, out, "--max_steps", "1500", *CHECKPOINTED)
    # one thread each: two runs of torch's default threads on the same cores spend their time spinning
    first = start(command, work, "first", OMP_NUM_THREADS="1")
    wait_for(lambda: (out / "checkpoint-50" / "trainer_state.json").is_file(), first, timeout=180)
    written, step = sorted(listing(out)), newest_step(out)
    second = start(command, work, "second", OMP_NUM_THREADS="1")
    lag = second.started - first.started
    ended: dict[str, float] = {}
    deadline = time.monotonic() + 300
    while len(ended) < 2 and time.monotonic() < deadline:
        for name, child in (("first", first), ("second", second)):
            if name not in ended and child.process.poll() is not None:
                ended[name] = time.monotonic() - child.started
        time.sleep(0.05)
    for child in (first, second):
        child.wait(1)
    codes = f"first {exit_status(first.process.returncode)}, second {exit_status(second.process.returncode)}"
    return row(
        "two_runs_one_folder",
        codes,
        ", ".join(f"{name} {seconds:.1f}" for name, seconds in ended.items()) or "hung",
        f"final model.safetensors: {model_state(out / 'model.safetensors')}; {describe_checkpoints(out)}; partial "
        f"files: {', '.join(leftovers(out)) or 'none'}",
        f"second: {second.last_line()}",
        note=f"second started {lag:.1f} s after the first, when the folder held {', '.join(written)} (newest "
        f"checkpoint step {step}); first's last line: {first.last_line()}",
        second_started_after_s=lag,
        folder_when_second_started=written,
    )


def png_with_bad_pixels(width: int = 24, height: int = 24) -> bytes:
    """A PNG whose chunks and CRCs are all valid but whose compressed pixel data is garbage (as tests/
    test_bad_inputs.py makes it): ``verify()`` passes, decoding fails."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"\x78\x9c" + bytes(range(7, 250)))
        + (chunk(b"IEND", b""))
    )


def _cut_jpeg(_: bytes) -> bytes:
    """A JPEG of noise cut at 70 %: the header is whole (Pillow's ``verify`` passes it), the pixel data is not."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    return data[: int(len(data) * 0.7)]


def scenario_truncated_image(work: Path, data: TextData) -> dict[str, Any]:
    validation = write_image_folder(work / "validation", 3, 1)
    cases = []
    skip = "--on_bad_example" in new_help_flags()
    for label, broken, make, extra in (
        ("truncated", "red/3.png", lambda png: png[: int(len(png) * 0.4)], ()),
        ("bad pixels", "green/2.png", lambda png: png_with_bad_pixels(), ()),
        ("cut jpeg", "blue/cut.jpg", _cut_jpeg, ()),
        # 1 bad of 25 is 4 %: allowed at 5 %
        *(
            [("cut jpeg, skip", "blue/cut.jpg", _cut_jpeg, ("--on_bad_example", "skip", "--max_bad_fraction", "0.05"))]
            if skip
            else []
        ),
    ):
        folder = work / re.sub(r"\W+", "_", label)
        train = write_image_folder(folder / "train", 8, 0)
        target = train / broken
        target.write_bytes(make(target.read_bytes() if target.exists() else b""))
        out = folder / "out"
        command = [
            sys.executable,
            str(IMAGE_RECIPE),
            *("--model_name_or_path", "test_resnet", "--random_init", "--image_size", "32"),
            *("--train_dir", str(train), "--validation_dir", str(validation)),
            *trainer_flags(out, "--disable_tqdm", "true", "--precision", "fp32", "--max_steps", "-1"),
            *("--num_train_epochs", "2", "--logging_steps", "1", *extra),
        ]
        child = run(command, work, re.sub(r"\W+", "_", label))
        last = child.last_line()
        trained = bool(checkpoints(out)[0]) or bool(re.search(r"'loss'|\"loss\"", child.text()))
        listed = out / "bad_examples.json"
        cases.append(
            {
                "case": label,
                "file": broken,
                "exit": child.process.returncode,
                "seconds": time.monotonic() - child.started,
                "error": last if child.process.returncode else "",
                "names_the_file": Path(broken).name in last,
                "training_started": trained,
                "model_saved": (out / "model.safetensors").is_file(),
                "bad_examples_listed": json.loads(listed.read_text())["splits"] if listed.is_file() else None,
            }
        )

    def outcome(c: dict[str, Any]) -> str:
        if c["exit"] == 0:
            return f"{c['case']}: model saved, skipped {c['bad_examples_listed']}"
        return f"{c['case']}: {c['error']}"

    return row(
        "bad_image (a: first 40 % of a PNG, b: valid chunks, garbage pixels, c: a JPEG cut at 70 %, d: c with skip)",
        " / ".join(f"{c['case']}: {exit_status(c['exit'])}" for c in cases),
        " / ".join(f"{c['case']}: {c['seconds']:.1f}" for c in cases),
        " / ".join(
            f"{c['case']}: training started before failing: {'yes' if c['training_started'] else 'no'}"
            for c in cases
            if c["exit"]
        ),
        " / ".join(outcome(c) for c in cases),
        note=" / ".join(
            f"{c['case']}: last line names {c['file']}: {'yes' if c['names_the_file'] else 'no'}"
            for c in cases
            if c["exit"]
        ),
        cases=cases,
    )


EPOCH_LOGGED = re.compile(r"'epoch': '?([\d.]+)")


def _memory_run(label: str, work: Path, command: list[str]) -> dict[str, Any]:
    """Samples the child's ``VmRSS`` / ``VmHWM`` every 0.2 s, each with the last epoch its (unbuffered) Trainer
    log had reported by then."""
    child = start(command, work, label, PYTHONUNBUFFERED="1")
    samples: list[tuple[float, int, int, float]] = []  # (seconds, VmRSS KiB, VmHWM KiB, epochs logged)
    while child.process.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            status = dict(
                line.split(":", 1)
                for line in Path(f"/proc/{child.pid}/status").read_text().splitlines()
                if ":" in line
            )
            logged = [float(e) for e in EPOCH_LOGGED.findall(child.stdout.read_text(errors="replace"))]
            if "VmRSS" in status:
                rss, hwm = (int(status[k].split()[0]) for k in ("VmRSS", "VmHWM"))
                samples.append((time.monotonic() - child.started, rss, hwm, max(logged, default=0.0)))
        time.sleep(0.2)
    child.wait(5)
    result: dict[str, Any] = {
        "case": label,
        "exit": child.process.returncode,
        "seconds": time.monotonic() - child.started,
        "samples": len(samples),
        "error": "" if child.process.returncode == 0 else child.last_line(),
    }
    if len(samples) < 10:
        return result

    def at(fraction: float) -> float:
        moment = fraction * samples[-1][0]
        return min(samples, key=lambda s: abs(s[0] - moment))[1] / 1024

    def mean(part: list[tuple[float, int, int, float]]) -> float:
        return sum(s[1] for s in part) / len(part) / 1024

    def after_epoch(epoch: float) -> float | None:
        return next((s[1] / 1024 for s in samples if s[3] >= epoch), None)

    tenth = len(samples) // 10
    last_epoch = max(s[3] for s in samples)
    return {
        **result,
        "rss_10pct_mib": at(0.1),
        "rss_50pct_mib": at(0.5),
        "rss_100pct_mib": at(1.0),
        "peak_mib": max(s[2] for s in samples) / 1024,
        "growth_2nd_to_last_tenth_mib": mean(samples[-tenth:]) - mean(samples[tenth : 2 * tenth]),
        "rss_after_epoch_2_mib": after_epoch(2),
        "last_epoch_logged": last_epoch,
        # the epoch before the last: after the last one come the final evaluation, the output and the report
        "rss_after_last_epoch_mib": after_epoch(last_epoch - 1) if last_epoch >= 3 else None,
    }


def scenario_memory_over_epochs(work: Path, data: TextData) -> dict[str, Any]:
    data = make_text_data(work / "data", MEMORY_TRAIN_ROWS)  # epochs long enough for samples 0.2 s apart to see
    epochs = ("--max_steps", "-1", "--num_train_epochs", "20", "--logging_strategy", "epoch")
    cases = [
        _memory_run("full", work, text_command(data, work / "full", *epochs, "--eval_strategy", "epoch")),
        _memory_run(
            "head_only cached",
            work,
            text_command(data, work / "head", *epochs, "--freeze_strategy", "head_only", "--probe_solver", "trainer"),
        ),
    ]

    def figures(c: dict[str, Any]) -> str:
        if "peak_mib" not in c:
            return f"{c['case']}: {c['samples']} samples only"
        epochs = ""
        if c["rss_after_last_epoch_mib"] is not None:
            epochs = (
                f", after epoch 2 {c['rss_after_epoch_2_mib']:.0f} -> after epoch {c['last_epoch_logged'] - 1:g} "
                f"{c['rss_after_last_epoch_mib']:.0f} MiB"
            )
        return (
            f"{c['case']}: RSS {c['rss_10pct_mib']:.0f} / {c['rss_50pct_mib']:.0f} / {c['rss_100pct_mib']:.0f} MiB at "
            f"10/50/100 % of the run, peak {c['peak_mib']:.0f} MiB, "
            f"2nd->last tenth {c['growth_2nd_to_last_tenth_mib']:+.0f} MiB{epochs}"
        )

    return row(
        f"memory_over_epochs (20 epochs of {MEMORY_TRAIN_ROWS} rows; full with eval each epoch, and head_only on "
        "cached features)",
        " / ".join(f"{c['case']}: {exit_status(c['exit'])}" for c in cases),
        " / ".join(f"{c['case']}: {c['seconds']:.1f}" for c in cases),
        "",
        " / ".join(c["error"] for c in cases if c.get("error")),
        note="; ".join(figures(c) for c in cases),
        cases=cases,
    )


def row(fault: str, code: Any, seconds: Any, disk: str, error: str, note: str = "", **details: Any) -> dict[str, Any]:
    return {
        "fault": fault,
        "exit": exit_status(code) if isinstance(code, int) else code or "",
        "seconds": f"{seconds:.1f}" if isinstance(seconds, float) else seconds or "",
        "disk": disk,
        "error": error,
        "note": note,
        "details": details,
    }


SCENARIOS: dict[str, Callable[[Path, TextData], dict[str, Any]]] = {
    "sigterm": scenario_sigterm,
    "sigusr1": scenario_sigusr1,
    "dead_rank": scenario_dead_rank,
    "frozen_rank": scenario_frozen_rank,
    "enospc": scenario_enospc,
    "two_runs_one_folder": scenario_two_runs_one_folder,
    "truncated_image": scenario_truncated_image,
    "memory_over_epochs": scenario_memory_over_epochs,
}


# ------------------------------------------------------------------------------------------------------ the report


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| fault | exit | s | left on disk | error (last stderr line) / notes |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        error = "; ".join(part for part in (r["error"] and f"`{r['error']}`", r["note"]) if part)
        lines.append(
            "| " + " | ".join(_cell(c) for c in (r["fault"], r["exit"], r["seconds"], r["disk"], error)) + " |"
        )
    return "\n".join(lines)


def revision() -> str:
    try:
        done = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
        return done.stdout.strip()[:100]
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), help="run these scenarios only")
    parser.add_argument("--json", type=Path, help="also write the rows, with every figure measured, here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (their path is printed)")
    cli = parser.parse_args()

    names = cli.only or list(SCENARIOS)
    for sent in (signal.SIGTERM, signal.SIGHUP):  # stopping this script still cleans up after it
        signal.signal(sent, lambda number, frame: sys.exit(128 + number))
    root = Path(tempfile.mkdtemp(prefix="warmstart-faults-"))
    header = [
        f"checkout: {REPO} at {revision()}",
        f"children import warmstart from {REPO / 'src'} (first on their PYTHONPATH)",
        f"{len(os.sched_getaffinity(0))} cores visible, load average at start {os.getloadavg()[0]:.1f}",
    ]
    print("\n".join(header), flush=True)
    rows = []
    started = time.monotonic()
    try:
        data = make_text_data(root / "data")
        for name in names:
            work = root / name
            tick = time.monotonic()
            print(f"{name} ...", flush=True)
            try:
                rows.append(SCENARIOS[name](work, data))
            except Exception as error:  # one scenario failing to run says nothing about the others
                rows.append(row(name, None, None, "", f"the scenario itself failed: {type(error).__name__}: {error}"))
            finally:
                _kill_started()
            print(f"{name}: {time.monotonic() - tick:.0f} s", flush=True)
    finally:
        _kill_started()
        for folder in list(_MOUNTS):
            _unmount(folder)
        if cli.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    header.append(f"total {time.monotonic() - started:.0f} s; load average at the end {os.getloadavg()[0]:.1f}")
    print("\n" + header[-1] + "\n")
    table = markdown(rows).replace(str(root), "$TMP")
    print(table)
    if cli.json:
        cli.json.write_text(json.dumps({"header": header, "table": table, "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
