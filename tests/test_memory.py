"""No slow leak: over 20 short epochs (evaluation every epoch, a log line every step) a run's memory stays where it
was after its second epoch: the peak resident memory from the end of epoch 2 to the end of epoch 20 is within a few
MiB of the memory at the end of epoch 2, for full fine-tuning and for a head trained on cached features."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_text_argv
from transformers import TrainerCallback

from warmstart import run
from warmstart.config import parse_config

MARGIN_MIB = 8.0  # measured here: full fine-tuning grew 0.4 MiB over the 18 epochs, the cached head 0


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/self/status")


class _Memory(TrainerCallback):
    """The resident memory at the end of epoch 2, and the peak from there to the end of the last epoch (the
    process's high-water mark, reset at epoch 2 through /proc/self/clear_refs)."""

    def __init__(self):
        self.after_second = self.peak_after = None
        self.epochs = 0

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epochs += 1
        if self.epochs == 2:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident memory
            self.after_second = _status("VmRSS")
        elif self.epochs > 2:
            self.peak_after = _status("VmHWM")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.parametrize(
    "strategy",
    [["--freeze_strategy", "full"], ["--freeze_strategy", "head_only", "--probe_solver", "trainer"]],
    ids=["full", "cached-head_only"],
)
def test_memory_stays_flat_over_twenty_epochs(strategy, tmp_path):
    argv = tiny_text_argv(tmp_path, 64, 16, 0, *strategy)
    while "--max_steps" in argv:
        at = argv.index("--max_steps")
        del argv[at : at + 2]
    argv += ["--num_train_epochs", "20", "--eval_strategy", "epoch", "--logging_steps", "1"]
    memory = _Memory()
    run(parse_config(argv, "text_classification"), callbacks=[memory])
    assert memory.epochs == 20
    growth = memory.peak_after - memory.after_second
    assert growth < MARGIN_MIB, f"peak {memory.peak_after:.1f} MiB after epoch 2's {memory.after_second:.1f} MiB"
