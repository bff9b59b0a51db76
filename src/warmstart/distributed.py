"""What the multi-process launch of a run needs beyond the Trainer: which process writes, agreeing on decisions,
waiting for each other, and sharing tensors computed in shards.

warmstart starts no processes of its own: ``torchrun --nproc_per_node N`` or ``accelerate launch`` does, and the
Trainer (through Accelerate) sets the process group up. The drivers that run several recipe runs in one launch (a
strategy comparison, a hyperparameter search, a chain) need the group before their first run, to agree on what to
run; :func:`ensure_process_group` sets it up the way the Trainer would and the Trainer then reuses it.

Every function here is a no-op (or the identity) in a single process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from warmstart.errors import WarmstartError

T = TypeVar("T")


def launched_processes() -> int:
    """The processes of this launch, as ``torchrun`` / ``accelerate launch`` set ``WORLD_SIZE`` (1 if unset)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def active() -> bool:
    """Whether this process is one of several in an initialized process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 in a single process)."""
    if active():
        return dist.get_rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_main_process() -> bool:
    """Whether this process writes the outputs (global rank 0)."""
    return rank() == 0


def ensure_process_group(use_cpu: bool | None = None) -> None:
    """Sets up the launch's process group now if it was launched with several processes and has none yet, as the
    Trainer would (Accelerate's ``PartialState``: gloo on the CPU, nccl on CUDA GPUs); the Trainer then reuses it.

    Args:
        use_cpu: the processes train on the CPU (``None``: when no CUDA device is visible).
    """
    if launched_processes() <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available() if use_cpu is None else use_cpu)


def broadcast_from_main(value: T) -> T:
    """The main process's ``value`` in every process (any picklable object); ``value`` itself in one process."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main_process(work: Callable[[], T]) -> T | None:
    """``work()`` in the main process (``None`` in the others), for a step only the main process may do (open a
    study, write files); a :class:`~warmstart.errors.WarmstartError` it raises is raised in every process, where the
    others would otherwise wait for the main process forever. In one process, ``work()``."""
    value, error = None, None
    if is_main_process():
        try:
            value = work()
        except WarmstartError as err:
            error = err
    message = broadcast_from_main(None if error is None else str(error))
    if error is not None:
        raise error
    if message is not None:
        raise WarmstartError(message)
    return value


def barrier() -> None:
    """Waits until every process gets here (nothing to wait for in one process)."""
    if active():
        dist.barrier()


def any_process(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether ``flag`` is true in at least one process."""
    if not active():
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def shard_rows(count: int) -> range:
    """The rows ``0..count-1`` this process handles when work is split between processes: every ``world``-th row
    from its rank on, so that sorted rows (text by length) give every process a similar share of the work."""
    if not active():
        return range(count)
    return range(dist.get_rank(), count, dist.get_world_size())


def gathered_blocks(
    shard: torch.Tensor | np.ndarray, count: int, device: torch.device | str = "cpu", block_rows: int = 4096
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The whole table from the per-process shards of :func:`shard_rows`, in every process, a block at a time
    (``block_rows`` rows of each process per collective, so a table larger than memory can be written to disk as it
    arrives).

    Args:
        shard: this process's rows (``len(shard_rows(count))`` of them), in order: a tensor or a (memory-mapped)
            array.
        count: rows of the whole table.
        device: where the collective runs (the process group's device: CPU for gloo, the GPU for nccl).
        block_rows: rows per process in one collective.

    Yields:
        ``(start, stop, rows)``: rows ``start..stop-1`` of the whole table, on the CPU.
    """
    if not active():
        yield 0, count, torch.as_tensor(np.asarray(shard)) if isinstance(shard, np.ndarray) else shard
        return
    world = dist.get_world_size()
    per_process = -(-count // world)  # the first processes hold one row more when count is not a multiple
    shape, dtype = tuple(shard.shape[1:]), shard.dtype
    dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype if isinstance(shard, np.ndarray) else dtype
    for first in range(0, max(per_process, 1), block_rows):
        last = min(first + block_rows, per_process)
        padded = torch.zeros((last - first, *shape), dtype=dtype, device=device)
        mine = shard[first:last]
        if len(mine):
            padded[: len(mine)] = torch.as_tensor(np.asarray(mine)).to(device)
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        # position j of process r's shard is row j * world + r of the table
        block = torch.stack(parts, dim=1).reshape((last - first) * world, *shape)
        start, stop = first * world, min(last * world, count)
        if stop > start:
            yield start, stop, block[: stop - start].cpu()


def gather_rows(shard: torch.Tensor, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The whole table (``count`` rows, on the CPU) from the per-process shards of :func:`shard_rows`, in every
    process (see :func:`gathered_blocks`)."""
    blocks = list(gathered_blocks(shard, count, device))
    return torch.cat([rows for _, _, rows in blocks]) if blocks else shard[:0].cpu()
