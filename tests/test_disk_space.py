"""A full disk (a write raising ``OSError(ENOSPC)``) while writing a checkpoint, the feature cache's spill file or the
final output: the partial files go, what was written before stays byte-identical, and the run stops with one line
saying how much space was needed and where."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import pytest
import torch
from conftest import tiny_text_argv
from transformers import TrainerCallback

import warmstart.disk_space
import warmstart.training.output
from warmstart import run
from warmstart.config import parse_config
from warmstart.disk_space import is_out_of_space
from warmstart.errors import WarmstartError
from warmstart.training import STAGING_DIR


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in folder.rglob("*")
        if f.is_file()
    }


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


class _Snapshot(TrainerCallback):
    """The files of each checkpoint right after it was saved."""

    def __init__(self):
        self.saved: dict[str, dict[str, str]] = {}

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.saved[folder.name] = _hashes(folder)


def test_a_full_disk_at_a_checkpoint_removes_it_and_keeps_the_one_before(tmp_path, monkeypatch):
    argv = tiny_text_argv(tmp_path, 32, 8, 6, "--save_strategy", "steps", "--save_steps", "2")
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        if "checkpoint-4" in str(path):
            _full()
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    snapshot = _Snapshot()
    with pytest.raises(WarmstartError) as stopped:
        run(parse_config(argv, "text_classification"), callbacks=[snapshot])
    out = tmp_path / "out"
    message = str(stopped.value)
    assert message.startswith(f"no space left on the device of {out} while writing checkpoint-4: it needs about ")
    assert "MiB were free" in message and f"{out / 'checkpoint-2'} is complete and whole" in message
    assert "the partial checkpoint-4 was removed" in message and "--resume_from_checkpoint auto" in message
    assert not (out / "checkpoint-4").exists()
    assert _hashes(out / "checkpoint-2") == snapshot.saved["checkpoint-2"]


def test_a_full_disk_at_the_feature_cache_removes_its_file_and_keeps_the_model(tmp_path, monkeypatch):
    argv = tiny_text_argv(tmp_path, 32, 8, 2, "--freeze_strategy", "head_only")
    run(parse_config(argv, "text_classification"))
    out = tmp_path / "out"
    before = _hashes(out)
    monkeypatch.setattr("os.posix_fallocate", _full)
    spilled = [*argv, "--feature_cache_memory_mb", "0", "--overwrite_output_dir", "true", "--seed", "7"]
    with pytest.raises(WarmstartError) as stopped:
        run(parse_config(spilled, "text_classification"))
    message = str(stopped.value)
    assert "no space left on the device of" in message and "while writing the train features" in message
    assert "--feature_cache_memory_mb" in message
    assert not list((out / ".feature_cache").rglob("*.npy")) if (out / ".feature_cache").exists() else True
    assert _hashes(out) == before


def test_a_full_disk_at_the_final_save_keeps_the_previous_model_whole(tmp_path, monkeypatch):
    argv = tiny_text_argv(tmp_path, 32, 8, 2)
    run(parse_config(argv, "text_classification"))
    out = tmp_path / "out"
    before = _hashes(out)
    monkeypatch.setattr(warmstart.training.output, "write_resolved_config", _full)
    with pytest.raises(WarmstartError) as stopped:
        run(parse_config([*argv, "--overwrite_output_dir", "true", "--seed", "7"], "text_classification"))
    message = str(stopped.value)
    assert message.startswith(f"no space left on the device of {out} while writing the run's output: it needs about")
    assert "nothing in" in message and "was replaced" in message
    assert not (out / STAGING_DIR).exists()
    assert _hashes(out) == before


@pytest.mark.parametrize("size", [10, 10**6])  # a small object fails in torch's C++ stream, a larger in its zip writer
def test_torch_s_own_write_errors_count_as_a_full_disk_only_when_the_disk_is_full(tmp_path, monkeypatch, size):
    with pytest.raises(RuntimeError) as failed:
        torch.save({"weights": torch.zeros(size)}, "/dev/full")  # every write: ENOSPC, which torch.save does not say
    assert "No space left" not in str(failed.value)  # the case: errno is lost
    monkeypatch.setattr(warmstart.disk_space, "free_bytes", lambda where: 4096)
    assert is_out_of_space(failed.value, tmp_path)
    monkeypatch.setattr(warmstart.disk_space, "free_bytes", lambda where: 2**30)
    assert not is_out_of_space(failed.value, tmp_path)  # the same error with space free is some other failure
    assert not is_out_of_space(RuntimeError("CUDA out of memory"), tmp_path)
    assert is_out_of_space(OSError(errno.ENOSPC, "No space left on device"))
