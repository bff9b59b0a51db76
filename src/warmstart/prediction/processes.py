"""Prediction split between the processes of a launch (``torchrun``, ``accelerate launch``): the set-up, agreeing
on failures, gathering the rows."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import NoReturn

import datasets
import torch
import torch.distributed as dist

from warmstart.distributed import (
    active,
    ensure_process_group,
    gather_rows,
    is_main_process,
    launched_processes,
    rank,
    shard_rows,
)
from warmstart.errors import WarmstartError
from warmstart.prediction.batches import predict
from warmstart.prediction.inputs import PredictionInput
from warmstart.prediction.predictor import Predictor, check_a_gpu_per_process

logger = logging.getLogger(__name__)


def start_prediction_processes(device: str = "auto") -> None:
    """Sets up the process group of a multi-process launch (``torchrun``, ``accelerate launch``) before the model
    loads: gloo when the processes predict on the CPU, nccl when each has a CUDA GPU. Processes other than the main
    one show no progress bars. Nothing in one process.

    Args:
        device: the ``--device`` asked for (``auto``, ``cpu`` or ``cuda``).

    Raises:
        WarmstartError: a GPU run launched with more processes on a machine than it has GPUs (raised in the main
            process; the others exit with status 2).
    """
    if launched_processes() <= 1:
        return
    on_gpu = device != "cpu" and torch.cuda.is_available()
    if on_gpu:
        try:
            check_a_gpu_per_process()
        except WarmstartError as err:
            # setting the group up would fail in the processes without a GPU, with a CUDA traceback; every process
            # sees the same launch, so all stop here, without a group to agree in
            _stop_all_processes(str(err))
    ensure_process_group(use_cpu=not on_gpu)
    if not is_main_process():
        # the main process's bars (reading the input, loading the weights) stand for all: a copy from every process,
        # interleaved on one terminal, would garble them
        from transformers.utils import logging as transformers_logging

        datasets.disable_progress_bars()
        transformers_logging.disable_progress_bar()


def _stop_all_processes(message: str) -> NoReturn:
    """Stops on a problem that every process of the launch stops on: the main process raises it (``run_cli`` prints
    it), the others exit with the same status in silence, so that the terminal shows it once, not once a process."""
    if launched_processes() > 1 and not is_main_process():
        raise SystemExit(2)
    raise WarmstartError(message)


@contextlib.contextmanager
def stop_together() -> Iterator[None]:
    """Runs a step that bad input can fail in some processes only (an unreadable image in one's share) or in all
    (a missing input); at the step's end the processes agree, and a failure in any stops every one of them with a
    single message, the main process's own when it has one. Without it, a process that stops leaves the others
    waiting for it in the next collective until the launcher kills them, and a failure of all is printed by each.

    Every process must run the block: its end is a collective, a barrier too. In one process, the block alone.

    Raises:
        WarmstartError: the step's, in the main process (the others exit with status 2).
    """
    if not active():
        yield
        return
    problem = None
    try:
        yield
    except WarmstartError as err:
        problem = str(err)
    problems: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    first = next((p for p in problems if p is not None), None)  # in rank order: the main process's first
    if first is not None:
        _stop_all_processes(first)


def predict_in_processes(
    predictor: Predictor,
    data: PredictionInput,
    batch_size: int = 64,
    *,
    progress: bool = True,
    num_workers: int = 0,
) -> tuple[torch.Tensor, int]:
    """:func:`predict` with the rows split between the processes of a launch: each predicts its share on its own
    device (every world-th row from its rank on, :func:`~warmstart.distributed.shard_rows`: an input sorted by
    length still gives each a similar share of the work), and every process gathers the whole table, in input
    order. In one process, :func:`predict`.

    Args:
        predictor: the model, loaded by every process (:func:`load_predictor`).
        data: the input, read by every process (:func:`read_prediction_input`).
        batch_size: inputs per forward pass.
        progress: show a progress bar (on the main process only, for its share).
        num_workers: images: DataLoader worker processes of each process.

    Returns:
        ``(probabilities, rows_predicted_here)``: the ``(rows, num_labels)`` float32 probabilities of every input
        row, in input order, the same in every process; and how many of them this process computed.

    Raises:
        WarmstartError: as :func:`predict`, in any process (raised in the main one; the others exit with status 2).
    """
    if not active():
        probs = predict(predictor, data, batch_size, progress=progress, num_workers=num_workers)
        return probs, len(data.ids)
    count = len(data.ids)
    mine = shard_rows(count)
    with stop_together():
        probs = predict(
            predictor, data, batch_size, progress=progress and is_main_process(), num_workers=num_workers, rows=mine
        )
    logger.info("process %d of %d predicted %d of the %d rows", rank(), dist.get_world_size(), len(mine), count)
    return gather_rows(probs, count, _collective_device()), len(mine)


def _collective_device() -> torch.device:
    """Where the group's collectives run: nccl moves CUDA tensors only, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
