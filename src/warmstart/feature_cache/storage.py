"""Where cached features live: a split's :class:`FeatureTable`, its rows in memory while the memory budget lasts
and in a read-only memory-mapped file under :func:`default_cache_dir` beyond it (:func:`allocate`), and, with
several processes, the whole table gathered from each process's shard (:func:`whole_table`)."""

from __future__ import annotations

import logging
import math
import os
import socket
from pathlib import Path

import numpy as np
import torch

from warmstart.disk_space import free_bytes, is_out_of_space, out_of_space
from warmstart.distributed import active as distributed_active
from warmstart.distributed import gathered_blocks
from warmstart.errors import WarmstartError

logger = logging.getLogger(__name__)

# under the output directory while a run trains; removed at its end, never pushed
CACHE_DIR_NAME = ".feature_cache"


class FeatureTable(torch.utils.data.Dataset):
    """One split as cached features: ``{key: features[i], "labels": labels[i]}`` per example.

    ``features`` is a tensor in memory or a read-only ``np.memmap`` on disk (for features over the memory budget).
    """

    def __init__(self, key: str, features: torch.Tensor | np.ndarray, labels: torch.Tensor):
        self.key, self.features, self.labels = key, features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.features[index]
        if isinstance(row, np.ndarray):  # a memory-mapped row: copied out, the file stays read-only
            row = torch.from_numpy(np.array(row))
        return {self.key: row, "labels": self.labels[index]}

    @property
    def on_disk(self) -> bool:
        return isinstance(self.features, np.memmap)


def whole_table(
    name: str,
    order: list[int],
    shard: torch.Tensor | np.ndarray,
    labels: torch.Tensor,
    budget: list[float],
    cache_dir: Path | None,
    device: torch.device,
) -> tuple[torch.Tensor | np.ndarray, torch.Tensor]:
    """A split's features and labels in dataset order, from this process's shard (all of it in one process) and,
    with several processes, the others' (gathered a block at a time, into memory or onto disk)."""
    if not distributed_active():  # one process: the shard is the table, written in dataset order
        return _read_only(shard), labels
    store = allocate(name, len(order), shard.shape[1:], budget, cache_dir)
    index = torch.tensor(order)
    for start, stop, rows in gathered_blocks(shard, len(order), device):
        where = index[start:stop]
        if isinstance(store, np.ndarray):
            store[where.numpy()] = rows.numpy()
        else:
            store[where] = rows
    all_labels = torch.empty((len(order), *labels.shape[1:]), dtype=labels.dtype)
    for start, stop, rows in gathered_blocks(labels, len(order), device):
        all_labels[index[start:stop]] = rows
    if isinstance(shard, torch.Tensor):
        budget[0] += shard.numel() * 4 / 2**20  # the shard's memory is free again
    _drop(shard)
    return _read_only(store), all_labels


def _drop(array: torch.Tensor | np.ndarray) -> None:
    """Deletes the file behind a memory-mapped array (a shard, once gathered)."""
    if isinstance(array, np.memmap) and array.filename:
        path = Path(array.filename)
        del array
        path.unlink(missing_ok=True)


def _read_only(store: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    if isinstance(store, np.memmap):
        store.flush()
        return np.load(store.filename, mmap_mode="r")
    return store


def allocate(
    split: str, rows: int, shape: tuple[int, ...], budget: list[float], cache_dir: Path | None
) -> torch.Tensor | np.ndarray:
    """Room for a split's features: in memory while the budget (``budget[0]`` MiB, lowered by what is taken) lasts,
    else a memory-mapped file in ``cache_dir``."""
    size_mb = rows * math.prod(shape) * 4 / 2**20
    if size_mb <= budget[0]:
        budget[0] -= size_mb
        return torch.empty((rows, *shape), dtype=torch.float32)
    if cache_dir is None:
        raise WarmstartError(
            f"the {split} features take {size_mb:.0f} MiB, over the {max(budget[0], 0):.0f} MiB left of the feature "
            "cache's memory budget, and no cache directory was given"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{split}.npy"
    logger.info("the %s features take %.0f MiB: memory-mapped at %s", split, size_mb, path)
    try:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, *shape))
        # the file's blocks reserved now: a memory map that runs out of space mid-write kills the process (SIGBUS)
        with path.open("r+b") as f:
            os.posix_fallocate(f.fileno(), 0, path.stat().st_size)
    except OSError as err:
        if not is_out_of_space(err):
            raise
        free = free_bytes(cache_dir)
        path.unlink(missing_ok=True)
        raise out_of_space(
            cache_dir, f"the {split} features", int(size_mb * 2**20),
            "the partial file was removed: free space, raise --feature_cache_memory_mb to keep them in memory, or "
            "--cache_features false",
            free,
        ) from None  # fmt: skip
    return array


def default_cache_dir(output_dir: Path, rank: int = 0) -> Path:
    """Where a process of a run spills features: under the output directory, one folder per machine and rank (the
    processes compute a shard each, then every process holds the whole table)."""
    return output_dir / CACHE_DIR_NAME / f"{socket.gethostname()}-rank{rank}"
