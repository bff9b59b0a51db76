"""A run's set-up before any data is read: logging, the seed, the output folder checked, the record of what the run
is (:class:`Run`), and the checkpoint it resumes from."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import transformers
from transformers import TrainingArguments

import warmstart
from warmstart.config import RunConfig, to_plain
from warmstart.data.bad_examples import BadExamples
from warmstart.export import check_output_dir
from warmstart.lineage import start_lineage
from warmstart.plan import RunPlan, change_training
from warmstart.run_folder import checkpoints

logger = logging.getLogger("warmstart")


@dataclass
class Run:
    """One run: its record (``config``, what ``warmstart_config.yaml`` will hold), its plan (the decisions it makes
    before its Trainer is built), and what the Trainer must not see."""

    output_dir: Path
    config: dict[str, Any]
    plan: RunPlan
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = field(default=None, repr=False)
    hub_private_repo: bool | None = None
    bad_examples: BadExamples | None = None  # examples that could not be used (--on_bad_example), written at the end


def start_run(config: RunConfig, *, overwrite_output_dir: bool | None = None) -> Run:
    """Sets up logging and the seed, checks the output directory, and takes Hub pushing out of the Trainer's hands.

    The Trainer would otherwise create the Hub repo when it is built, push its own model card, and pickle the
    token into every checkpoint's ``training_args.bin``; warmstart pushes once, at the end, and never writes it.
    The run's lineage starts from the base model's, when that is a warmstart output.

    Args:
        config: the run's configuration (a copy the run owns: its ``training`` loses its hub settings here).
        overwrite_output_dir: replace a different model in the output directory (default: ``--overwrite_output_dir``).

    Raises:
        WarmstartError: the output directory holds another model or cannot be written.
    """
    training_args = config.training
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    level = training_args.get_process_log_level()
    for name in ("warmstart", "transformers", "datasets"):
        logging.getLogger(name).setLevel(level)
    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.set_seed(training_args.seed)  # the new head is initialised before the Trainer seeds anything

    run = Run(
        output_dir=Path(training_args.output_dir),
        config={"warmstart_version": warmstart.__version__, "task": config.spec.description, **config.sections()},
        plan=RunPlan(training_args),
        push_to_hub=training_args.push_to_hub,
        hub_model_id=training_args.hub_model_id,
        hub_token=training_args.hub_token,
        hub_private_repo=training_args.hub_private_repo,
    )
    change_training(training_args, "warmstart pushes once, at the end", push_to_hub=False, hub_token=None)
    run.config["environment"] = run_environment()
    run.config["training"] = to_plain(training_args)
    run.config["training"]["push_to_hub"] = run.push_to_hub
    # from here the run plans its changes, applied when its Trainer is built; its own config reads the arguments
    # through the plan
    config.training = run.plan.training
    run.plan.decide("precision", training_args.mixed_precision)
    run.config["data_description"] = config.data.describe()
    run.config["lineage"] = start_lineage(config.model.model_name_or_path, config.model.random_init)
    if training_args.should_save:
        overwrite = config.model.overwrite_output_dir if overwrite_output_dir is None else overwrite_output_dir
        check_output_dir(run.output_dir, run.config, overwrite)
    return run


def run_environment() -> dict[str, Any]:
    """What reproducing a run needs besides its arguments: Python, the versions of the libraries that train it,
    and the git commit (and whether the tree had changes) of the warmstart checkout, if it is one."""
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("torch", "transformers", "timm", "datasets", "accelerate", "peft", "warmstart"):
        try:
            env[package] = version(package)
        except PackageNotFoundError:
            continue
    source = Path(warmstart.__file__).resolve().parents[2]
    if not (source / "src" / "warmstart").is_dir():
        return env  # an installed package, not warmstart's own checkout (whatever repository holds the venv)
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        env["git_commit"] = commit + (" (with uncommitted changes)" if status.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass  # an installed package, not a checkout: the versions above say it
    return env


def resume_point(training_args: TrainingArguments) -> str | None:
    """The checkpoint a run resumes from: ``--resume_from_checkpoint <path>``, or with ``auto`` the latest complete
    one in the output directory (a checkpoint a killed process left half-written, without its
    ``trainer_state.json``, is skipped), or none: the run starts afresh, and says so."""
    asked = training_args.resume_from_checkpoint
    if asked != "auto":
        return asked
    complete = checkpoints(training_args.output_dir)
    if not complete:
        logger.warning(
            "--resume_from_checkpoint auto: no checkpoint in %s, training from the start", training_args.output_dir
        )
        return None
    logger.warning("resuming from %s", complete[-1])
    return str(complete[-1])
