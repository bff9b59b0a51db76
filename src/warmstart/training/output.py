"""Writing a run's output: everything into a staging folder first, then renamed into place (a failure leaves the
previous model whole), the results, the resolved config, the card, and the push to the Hub."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn
from transformers import Trainer

from warmstart.config import to_plain
from warmstart.disk_space import folder_bytes, is_out_of_space, out_of_space
from warmstart.export import hub_upload_operations, write_resolved_config
from warmstart.lineage import finish_lineage
from warmstart.model_card import write_model_card
from warmstart.training.setup import Run

logger = logging.getLogger("warmstart")
# The Hub upload leaves these behind: checkpoints are for resuming here, not part of the model.
_NOT_PUSHED = [
    "checkpoint-*",
    "checkpoint-*/**",
    "runs/**",
    ".warmstart_write_test",
    ".feature_cache/**",
    ".warmstart_saving/**",
]


STAGING_DIR = ".warmstart_saving"


@contextmanager
def staged_output(output_dir: Path, model: nn.Module | None = None) -> Iterator[Path]:
    """A folder inside ``output_dir`` to write a run's output into; when the block ends without an error, every
    file in it replaces its namesake in ``output_dir`` (one rename each, after everything is written), and the
    folder goes. A failure while writing leaves ``output_dir`` as it was: an earlier model stays whole and
    loadable, and nothing half-written is left behind. Out of space, the run stops with one line saying how much
    the output needs (what was written, or the weights of ``model`` if more) and where."""
    staging = output_dir / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)  # left by a process killed mid-save
    staging.mkdir(parents=True)
    try:
        yield staging
        for item in sorted(staging.iterdir()):
            target = output_dir / item.name
            if item.is_dir() and target.exists():
                shutil.rmtree(target)
            os.replace(item, target)
    except Exception as err:
        if not is_out_of_space(err, output_dir):
            raise
        weights = sum(p.numel() * p.element_size() for p in model.parameters()) if model is not None else 0
        raise out_of_space(
            output_dir, "the run's output", max(folder_bytes(staging), weights),
            f"nothing in {output_dir} was replaced (an earlier model there is whole) and the checkpoints are kept: "
            "free space and rerun with --resume_from_checkpoint auto",
        ) from None  # fmt: skip
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_output(
    run: Run,
    staging: Path,
    model: nn.Module,
    save_model: Callable[[nn.Module, Path], None],
    card: dict[str, Any],
    results: dict[str, Any],
    files: dict[str, dict[str, Any]],
    trainer: Trainer,
) -> None:
    """Everything a run leaves, into ``staging``: the model files, the results (``<split>_results.json``,
    ``all_results.json``) and ``trainer_state.json``, the resolved config with the run's lineage, and the card."""
    bad = run.bad_examples
    if bad is not None and bad.skips:  # the counts in the record, every example in bad_examples.json
        run.plan.decide("bad_examples", bad.summary())
        skipped = bad.write(staging)
        if skipped:
            logger.warning("%d example(s) could not be used and were skipped: listed in bad_examples.json", skipped)
    # the plan's decisions, and what it changed in the training arguments beside what was asked for (which stays as
    # given, so that a rerun of the same command is recognised)
    run.config.update(run.plan.record())
    asked, resolved = run.config["training"], to_plain(trainer.args)
    run.config["training_adjusted"] = {k: v for k, v in resolved.items() if k in asked and asked[k] != v}
    lineage = finish_lineage(run.config, results)
    save_model(model, staging)
    for name, values in files.items():
        (staging / f"{name}_results.json").write_text(json.dumps(values, indent=4, sort_keys=True, default=str))
    trainer.state.save_to_json(str(staging / "trainer_state.json"))
    write_resolved_config(staging, run.config)
    training = {k: run.config["training"].get(k) for k in CARD_TRAINING_KEYS}
    training["precision"] = run.config["precision"]
    data_source = run.config.get("data") or {}  # the hub dataset id or the files: the card's datasets and model-index
    write_model_card(
        staging, {**card, "lineage": lineage, "metrics": results, "training": training, "data_source": data_source}
    )


def finish_output(run: Run) -> None:
    logger.info("model saved to %s", run.output_dir.resolve())
    if run.bad_examples is not None:  # its record files are merged into the output now
        run.bad_examples.close()
    if run.push_to_hub:
        push_output_dir(run)


CARD_TRAINING_KEYS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "lr_scheduler_type",
    "warmup_steps",
    "seed",
)


def push_output_dir(run: Run) -> str:
    """Uploads the model directory (not its checkpoints) to the Hub; the token is used, never shown or written.

    Returns:
        The repo id.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=run.hub_token)
    repo_id = run.hub_model_id or run.output_dir.resolve().name
    repo_id = api.create_repo(repo_id, private=run.hub_private_repo, exist_ok=True).repo_id
    api.create_commit(
        repo_id=repo_id,
        operations=hub_upload_operations(run.output_dir, _NOT_PUSHED),  # the config's local paths stay here
        commit_message="Upload model trained with warmstart",
    )
    logger.info("pushed to the Hub as %s", repo_id)
    return repo_id
