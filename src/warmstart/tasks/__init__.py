"""Executing a run: :func:`run` takes a :class:`~warmstart.config.RunConfig` and runs its task, an entry of
:data:`EXECUTIONS` (one module each: :mod:`~warmstart.tasks.image_classification`,
:mod:`~warmstart.tasks.text_classification`, :mod:`~warmstart.tasks.masked_lm`,
:mod:`~warmstart.tasks.image_autoencoder`; the classification tasks share :mod:`~warmstart.tasks.classification`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from transformers import TrainerCallback

from warmstart.config import TASKS, RunConfig
from warmstart.distributed import is_main_process
from warmstart.folder_lock import locked_folder
from warmstart.peers import watched_peers
from warmstart.preemption import preemptible
from warmstart.tasks import image_autoencoder, image_classification, masked_lm, text_classification

# each task of the table (warmstart.config.tasks.TASKS) and the function that executes it
EXECUTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "image_classification": image_classification.execute,
    "text_classification": text_classification.execute,
    "masked_lm": masked_lm.execute,
    "image_autoencoder": image_autoencoder.execute,
}
assert set(EXECUTIONS) == set(TASKS), "every task of the table has an execution"


def run(
    config: RunConfig,
    *,
    callbacks: Sequence[TrainerCallback] = (),
    feature_store: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Runs one configured run: loads its data and model, applies its policy, trains, evaluates and saves the model
    in hub format with its card, results and resolved config into ``config.training.output_dir``.

    Args:
        config: from :func:`~warmstart.config.parse_config`, or a variant of one
            (:meth:`~warmstart.config.RunConfig.with_values`); left as it is (the run works on a copy).
        callbacks: more Trainer callbacks (a search's pruning).
        feature_store: backbone features shared with other runs of the same model on the same data (a comparison's
            frozen-backbone runs), computed once.

    Returns:
        All metrics, as in ``all_results.json``.

    Raises:
        WarmstartError: bad data, a model that cannot be used, an output folder that holds another model or that
            another run is writing into (:mod:`warmstart.folder_lock`), a run that diverges; each with one line
            saying what to change.
        Preempted: SIGTERM or SIGUSR1 stopped it; a checkpoint was written where training had started.
    """
    output_dir, writes = config.training.output_dir, is_main_process()
    # one run per folder: a second run into it refuses while this one works (the main process writes; it locks);
    # SIGTERM / SIGUSR1 stop it after a step, with a checkpoint (warmstart.preemption)
    # a rank that dies stops the others with one line, never a hang (warmstart.peers)
    with (
        locked_folder(output_dir, enabled=writes),
        preemptible(output_dir, config.performance.preempt_exit_code, writes=writes) as preemption,
        watched_peers(output_dir, config.performance.peer_timeout) as peers,
    ):
        run_callbacks = [*callbacks, preemption, peers]
        return EXECUTIONS[config.task](config.copy(), callbacks=run_callbacks, feature_store=feature_store)
