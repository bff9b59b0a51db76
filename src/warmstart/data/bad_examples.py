"""Examples that cannot be read: an image that does not decode (truncated, not an image, gone), a text cell that is
empty or fails to tokenize. ``--on_bad_example`` says what a run does with them:

* ``fail`` (the default): the run stops with one line naming the file (or split and row) and what went wrong, before
  training when the checks find it, or at the batch that meets it.
* ``skip``: the example is left out and recorded. Found before training (every image is decoded once by the data
  checks; every text is tokenized once), it is dropped from its split. Met during training (a file that changed or
  went away since), its place in the batch goes to the next readable example of the split, as timm's
  ``ImageDataset`` does, so every batch keeps its size and the processes of a multi-process run stay in step. Either
  way it is counted per split, and the run stops, with one line, once more than ``--max_bad_fraction`` of a split
  (rows as read) is bad: a folder of broken files is a data problem, not noise to train past.

What a skipping run met is in its output as ``bad_examples.json`` (every example: split, row, file, error, when)
and under ``bad_examples`` in ``warmstart_config.yaml`` (the counts). Examples met during training are appended, a
JSON line each, to a file per process (DataLoader workers and ranks included) under
``<output_dir>/.warmstart_bad_examples``, which every process reads at each check and the main one merges at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict

from warmstart.errors import WarmstartError
from warmstart.processes import process_alive

logger = logging.getLogger(__name__)

ON_BAD_EXAMPLE = ("fail", "skip")
BAD_EXAMPLES_FILE = "bad_examples.json"
REGISTRY_DIR = ".warmstart_bad_examples"  # in the output folder: one JSON-lines file per process
RETRIES = 50  # readable examples looked for after a bad one (timm's ImageDataset: 50)
SHOWN = 3  # examples named in a line


@dataclass(frozen=True)
class BadExample:
    """One example that could not be used.

    Attributes:
        split: the split it is in (``train``, ``validation``, ``test``).
        row: its row in the data as read, counted from 1 (a held-out validation example: its row of ``rows_of``).
        error: what went wrong, in a few words.
        file: the image's file, where it has one.
        column: the text column, for text (a pair's: both, comma-separated).
        rows_of: the split whose file ``row`` counts in, where that is another (``train`` for a held-out validation).
        when: ``before training`` (the data checks, tokenization) or ``during training`` (a batch).
    """

    split: str
    row: int
    error: str
    file: str | None = None
    column: str | None = None
    rows_of: str | None = None
    when: str = "before training"

    @property
    def key(self) -> tuple[str, int]:
        return self.split, self.row

    def where(self) -> str:
        if self.row < 1:  # the split carried no row numbers
            place = f"the {self.split} split"
        elif self.rows_of:
            place = f"{self.rows_of} row {self.row} (held out as {self.split})"
        else:
            place = f"{self.split} row {self.row}"
        if self.file:
            return f"image {self.file} ({place})"
        if not self.column:
            return place
        names = self.column.split(", ")  # a text pair's two columns
        return place + f", column{'s' * (len(names) > 1)} " + " and ".join(map(repr, names))

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class BadExamples:
    """A run's policy for bad examples and the ones it met (see the module docstring).

    Attributes:
        policy: ``fail`` or ``skip``.
        max_fraction: the share of a split that may be bad before a skipping run stops.
        registry: the folder of the per-process record files (``<output_dir>/.warmstart_bad_examples``); ``None``:
            examples met during training are counted in this process only.
        sizes: each split's rows as read (those dropped before training included), for the fraction.
        held_out: splits whose rows are another split's (``{"validation": "train"}``), for messages.
        found: the examples met so far, in this process, by split and row.
    """

    policy: str = "fail"
    max_fraction: float = 0.01
    registry: Path | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    held_out: dict[str, str] = field(default_factory=dict)
    found: dict[tuple[str, int], BadExample] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_bad_example_options(self.policy, self.max_fraction)
        self.registry = Path(self.registry) if self.registry is not None else None

    @classmethod
    def for_run(cls, data_args: Any, output_dir: str | Path | None) -> BadExamples:
        """The policy a run's :class:`~warmstart.config.DataArguments` ask for, recording into ``output_dir``."""
        return cls(
            policy=getattr(data_args, "on_bad_example", "fail"),
            max_fraction=getattr(data_args, "max_bad_fraction", 0.01),
            registry=Path(output_dir) / REGISTRY_DIR if output_dir is not None else None,
        )

    @property
    def skips(self) -> bool:
        return self.policy == "skip"

    # ------------------------------------------------------------------------------------------ before training

    def drop(self, splits: DatasetDict, bad: Iterable[BadExample], row_column: str) -> DatasetDict:
        """Acts on the bad examples the checks found before training: ``fail`` stops at the first; ``skip`` drops
        them from their splits (found by ``row_column``, each example's row as read, from 0), records them and
        stops when too many of a split are bad.

        Raises:
            WarmstartError: ``fail`` and a bad example; ``skip`` and more than ``max_fraction`` of a split bad, or
                a split left empty.
        """
        bad = list(bad)
        self.refuse(bad)
        out = DatasetDict()
        for name, data in splits.items():
            rows = [b.row - 1 for b in bad if b.split == name]
            if rows:
                present = np.asarray(data.with_format("numpy")[row_column])
                data = _keep(data, np.flatnonzero(~np.isin(present, rows)), bad, name)
            out[name] = data
        return self._skipped(out, bad)

    def drop_positions(self, split: str, data: Dataset, positions: list[int], bad: list[BadExample]) -> Dataset:
        """:meth:`drop` for one split, the bad examples at ``positions`` in ``data`` (``bad``: the same examples, named
        by their rows as read)."""
        self.refuse(bad)
        kept = _keep(data, np.setdiff1d(np.arange(len(data)), positions), bad, split)
        return self._skipped(DatasetDict({split: kept}), bad)[split]

    def refuse(self, bad: list[BadExample]) -> None:
        """With ``fail``, stops the run at the first of ``bad``.

        Raises:
            WarmstartError: ``fail`` and a bad example, in one line naming it.
        """
        if bad and not self.skips:
            first = bad[0]
            more = f"{len(bad)} examples cannot be used; the first: " if len(bad) > 1 else ""
            raise WarmstartError(
                f"{more}{first.where()} {_cannot(first)} ({first.error}): {_fix(first)}, or pass "
                "--on_bad_example skip to train without it"
            )

    def _skipped(self, out: DatasetDict, bad: list[BadExample]) -> DatasetDict:
        for example in bad:
            self.found[example.key] = example
        for name, data in out.items():
            # the split as read: what is left and what was dropped from it so far
            self.sizes[name] = len(data) + sum(1 for key in self.found if key[0] == name)
        for name in dict.fromkeys(b.split for b in bad):
            logger.warning(
                "skipped %d %s example(s) that cannot be used (%s; --on_bad_example skip)",
                sum(1 for b in bad if b.split == name),
                name,
                _examples(bad, name),
            )
            self._check_fraction(name, self.count(name))
        return out

    # ------------------------------------------------------------------------------------------ during training

    def meet(self, example: BadExample) -> None:
        """An example a batch could not use: ``fail`` stops the run; ``skip`` records it (once) and stops the run
        when too many of its split are bad.

        Raises:
            WarmstartError: as :meth:`drop`.
        """
        if not self.skips:
            raise WarmstartError(
                f"{example.where()} {_cannot(example)} during training ({example.error}): {_fix(example)} and "
                "rerun with --resume_from_checkpoint auto, or pass --on_bad_example skip to train past such examples"
            )
        if example.key in self.found:
            return
        self.found[example.key] = example
        if self.registry is not None:
            self.registry.mkdir(parents=True, exist_ok=True)
            line = json.dumps(example.to_dict()) + "\n"
            # one write of one short line in append mode: lines of several processes never interleave
            with open(self.registry / f"{socket.gethostname()}-{os.getpid()}.jsonl", "a") as file:
                file.write(line)
        logger.warning(
            "skipped %s: %s (--on_bad_example skip; a readable example takes its place)",
            example.where(),
            example.error,
        )
        self._check_fraction(example.split, self.count(example.split))

    def count(self, split: str) -> int:
        """Bad examples of ``split`` met by any process of the run so far."""
        return sum(1 for key in self.merged() if key[0] == split)

    def merged(self) -> dict[tuple[str, int], BadExample]:
        """Every bad example met so far: this process's and those every other process recorded."""
        merged = dict(self.found)
        for example in self._recorded():
            merged.setdefault(example.key, example)
        return merged

    def _recorded(self) -> list[BadExample]:
        if self.registry is None or not self.registry.is_dir():
            return []
        out = []
        for path in sorted(self.registry.glob("*.jsonl")):
            with contextlib.suppress(OSError):
                for line in path.read_text().splitlines():
                    with contextlib.suppress(ValueError, TypeError):
                        out.append(BadExample(**json.loads(line)))
        return out

    def _check_fraction(self, split: str, count: int) -> None:
        size = self.sizes.get(split)
        if not size or count <= self.max_fraction * size:
            return
        bad = [b for b in self.merged().values() if b.split == split]
        raise WarmstartError(
            f"{count} of {size} {split} examples ({count / size:.1%}) cannot be used, more than --max_bad_fraction "
            f"{self.max_fraction:g} allows ({_examples(bad, split)}): fix or remove them (each is in the log), or "
            "raise --max_bad_fraction"
        )

    # ------------------------------------------------------------------------------------------------ the end

    def clear_stale(self) -> None:
        """Removes record files of this host's processes that are gone (a previous run's): called by the main
        process before training."""
        if self.registry is None or not self.registry.is_dir():
            return
        host = socket.gethostname()
        for path in self.registry.glob("*.jsonl"):
            name, _, pid = path.stem.rpartition("-")
            if name == host and pid.isdigit() and not process_alive(int(pid)):
                path.unlink(missing_ok=True)

    def summary(self) -> dict[str, Any]:
        """What the run records as ``bad_examples``: the policy and each split's count."""
        merged = self.merged()
        counts = {
            split: {"bad": sum(1 for k in merged if k[0] == split), "of": size} for split, size in self.sizes.items()
        }
        return {
            "on_bad_example": self.policy,
            "max_bad_fraction": self.max_fraction,
            "splits": {k: v for k, v in counts.items() if v["bad"]},
        }

    def write(self, folder: Path) -> int:
        """Writes ``bad_examples.json`` (the summary and every example, by split and row) into ``folder`` when the
        run met any; returns how many."""
        merged = sorted(self.merged().values(), key=lambda b: (b.split, b.row))
        if merged:
            record = {**self.summary(), "examples": [b.to_dict() for b in merged]}
            (folder / BAD_EXAMPLES_FILE).write_text(json.dumps(record, indent=2))
        return len(merged)

    def close(self) -> None:
        """Removes the record files once their examples are in the output (the main process, at the end)."""
        if self.registry is not None and self.registry.is_dir():
            for path in self.registry.glob("*.jsonl"):
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.registry.rmdir()


def check_bad_example_options(policy: str, max_fraction: float) -> None:
    """Raises:
    WarmstartError: a policy other than ``fail`` / ``skip``, or a fraction outside [0, 1]."""
    if policy not in ON_BAD_EXAMPLE:
        raise WarmstartError(f"--on_bad_example {policy!r} is not one of {', '.join(ON_BAD_EXAMPLE)}: pick one")
    if not 0.0 <= max_fraction <= 1.0:
        raise WarmstartError(f"--max_bad_fraction is a share of a split in [0, 1] (0.01: 1 %), got {max_fraction}")


def _cannot(example: BadExample) -> str:
    if example.file or example.column is None:
        return "cannot be read"
    return "cannot be used"


def _fix(example: BadExample) -> str:
    return "remove or replace the file" if example.file else "fix or drop the row"


def _examples(bad: Iterable[BadExample], split: str) -> str:
    chosen = [b for b in bad if b.split == split][:SHOWN]
    return "e.g. " + "; ".join(f"{b.where()}: {b.error}" for b in chosen)


def _keep(data: Dataset, keep: np.ndarray, bad: list[BadExample], split: str) -> Dataset:
    if not len(keep):
        raise WarmstartError(f"no example of the {split} split can be used ({_examples(bad, split)})")
    return data.select(keep)
