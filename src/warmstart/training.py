"""The part of a run both recipes share: set-up before any data is read, then train, evaluate, save, push."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from datasets import DatasetDict
from torch import nn
from transformers import EvalPrediction, Trainer, TrainerCallback, TrainingArguments, default_data_collator

import warmstart
from warmstart.arguments import (
    CONFIG_FILE_SUFFIXES,
    DataArguments,
    FreezeArguments,
    ModelArguments,
    PerformanceArguments,
    RegularizationArguments,
    UnlabeledDataArguments,
    parse_args,
    read_config_file,
    to_plain,
    underscored,
)
from warmstart.distributed import broadcast_from_main, is_main_process
from warmstart.errors import WarmstartError
from warmstart.export import (
    check_output_dir,
    hub_upload_operations,
    refuse_foreign_model,
    write_model_card,
    write_resolved_config,
)
from warmstart.feature_cache import (
    CacheDeclined,
    CachedFeatureCollator,
    CachedRun,
    CacheSettings,
    ProbeThenFull,
    WithCachedFeatures,
    cache_features,
    default_cache_dir,
    head_inputs,
)
from warmstart.fine_tuning import FineTuning, UnfreezeSchedule
from warmstart.freezing import PROBING, FreezePolicy, default_learning_rate
from warmstart.lineage import finish_lineage, start_lineage
from warmstart.metrics import compute_metrics
from warmstart.models import newly_initialised
from warmstart.precision import apply_device_settings
from warmstart.probe import ProbeFit, ProbeUnsolvable, solve_head
from warmstart.regularization import check_regularization
from warmstart.report import write_evaluation_report
from warmstart.run_folder import checkpoints
from warmstart.search import SearchArguments, run_search

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


@dataclass
class Run:
    """One recipe run: its arguments as plain data, and what the Trainer must not see."""

    output_dir: Path
    config: dict[str, Any]
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = field(default=None, repr=False)
    hub_private_repo: bool | None = None


def start_run(
    sections: dict[str, Any],
    training_args: TrainingArguments,
    overwrite_output_dir: bool,
    task: str = "classification",
) -> Run:
    """Sets up logging and the seed, checks the output directory, and takes Hub pushing out of the Trainer's hands.

    The Trainer would otherwise create the Hub repo when it is built, push its own model card, and pickle the
    token into every checkpoint's ``training_args.bin``; warmstart pushes once, at the end, and never writes it.
    The run's lineage starts from the base model's (``sections["model"]``), when that is a warmstart output.

    Args:
        sections: the run's argument dataclasses by name (``model``, ``data``, ``freeze``).
        training_args: the Trainer's arguments; its hub settings are moved into the returned :class:`Run`.
        overwrite_output_dir: replace a different model in the output directory.
        task: what the run does, for its lineage entry (``image classification``, ``masked-LM pretraining``).

    Raises:
        WarmstartError: the output directory holds another model or cannot be written.
    """
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    level = training_args.get_process_log_level()
    for name in ("warmstart", "transformers", "datasets"):
        logging.getLogger(name).setLevel(level)
    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.set_seed(training_args.seed)  # the new head is initialised before the Trainer seeds anything

    run = Run(
        output_dir=Path(training_args.output_dir),
        config={
            "warmstart_version": warmstart.__version__,
            "task": task,
            **{k: to_plain(v) for k, v in sections.items()},
        },
        push_to_hub=training_args.push_to_hub,
        hub_model_id=training_args.hub_model_id,
        hub_token=training_args.hub_token,
        hub_private_repo=training_args.hub_private_repo,
    )
    training_args.push_to_hub = False
    training_args.hub_token = None
    run.config["environment"] = run_environment()
    run.config["training"] = to_plain(training_args)
    run.config["training"]["push_to_hub"] = run.push_to_hub
    run.config["precision"] = training_args.mixed_precision
    data = sections.get("data")
    if hasattr(data, "describe"):
        run.config["data_description"] = data.describe()
    model = sections.get("model")
    if model is not None:
        run.config["lineage"] = start_lineage(model.model_name_or_path, model.random_init)
    if training_args.should_save:
        check_output_dir(run.output_dir, run.config, overwrite_output_dir)
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


@dataclass
class RecipeArguments:
    """A classification recipe's parsed arguments and its :class:`Run`."""

    model: ModelArguments
    data: DataArguments
    freeze: FreezeArguments
    regularization: RegularizationArguments
    performance: PerformanceArguments
    training: TrainingArguments
    run: Run
    search: SearchArguments = field(default_factory=SearchArguments)


def start_recipe(argv: Sequence[str] | None, modality: str) -> RecipeArguments:
    """A classification recipe's first step: parse its arguments (command line or config file), refuse settings
    that do not fit the modality, and :func:`start_run`.

    Args:
        argv: the command line (``None``: ``sys.argv[1:]``).
        modality: ``image`` or ``text``.
    """
    sections = (
        ModelArguments,
        DataArguments,
        FreezeArguments,
        RegularizationArguments,
        PerformanceArguments,
        SearchArguments,
    )
    model_args, data_args, freeze_args, reg_args, perf_args, search_args, training_args = parse_args(
        (*sections, TrainingArguments), argv
    )
    check_regularization(reg_args, modality, "single_label_classification", training_args)
    _check_schedule_fits(freeze_args.policy(), training_args)
    learning_rate_source = "--learning_rate"
    if not _learning_rate_given(argv):
        # the Trainer's 5e-5 suits full fine-tuning of BERT only: each strategy starts from its own rate
        training_args.learning_rate = default_learning_rate(freeze_args.freeze_strategy, modality)
        learning_rate_source = f"the default for {freeze_args.freeze_strategy} on {modality} data"
    named = {
        "model": model_args,
        "data": data_args,
        "freeze": freeze_args,
        "regularization": reg_args,
        "performance": perf_args,
        "search": search_args,
    }
    searching = search_args.hparam_search != "none"
    if searching:
        refuse_foreign_model(Path(training_args.output_dir), "search.db", "a search", model_args.overwrite_output_dir)
    run = start_run(
        named,
        training_args,
        overwrite_output_dir=model_args.overwrite_output_dir or searching,  # trials go to their own folders
        task=f"{modality} classification",
    )
    run.config["learning_rate"] = {"value": training_args.learning_rate, "source": learning_rate_source}
    logger.info("learning rate %g (%s)", training_args.learning_rate, learning_rate_source)
    return RecipeArguments(model_args, data_args, freeze_args, reg_args, perf_args, training_args, run, search_args)


def _learning_rate_given(argv: Sequence[str] | None) -> bool:
    """Whether the command line (or the config file it starts with) sets the learning rate."""
    argv = underscored(sys.argv[1:] if argv is None else argv)
    config_file = argv and argv[0].endswith(CONFIG_FILE_SUFFIXES) and not argv[0].startswith("-")
    if config_file and "learning_rate" in read_config_file(argv[0]):
        return True
    return any(token.split("=", 1)[0] == "--learning_rate" for token in argv)


def search_or_none(args: RecipeArguments, argv: Sequence[str] | None, main: Callable) -> dict[str, Any] | None:
    """With ``--hparam_search optuna``: runs the search (:func:`warmstart.search.run_search`, each trial a run of
    ``main``) and returns its results; otherwise ``None`` (the recipe trains once)."""
    if args.search.hparam_search == "none":
        return None
    metric = args.training.metric_for_best_model or "accuracy"
    return run_search(
        args.search,
        sys.argv[1:] if argv is None else argv,
        main,
        args.run.output_dir,
        metric=metric,
        seed=args.training.seed,
    )


def apply_devices(
    args: RecipeArguments, model: nn.Module, modality: str, input_size: Sequence[int] | None = None
) -> None:
    """Fits the run to the machine (precision, timed on the model where parsing left it pending; TF32, channels_last,
    loader workers): see :func:`warmstart.precision.apply_device_settings` (``input_size``: the training images'
    ``(C, H, W)``; text is timed at ``--max_seq_length`` tokens when given). Each decision is logged and recorded in
    the run's config: ``device_settings``, and ``precision``, the mixed precision the Trainer will run."""
    lines = apply_device_settings(
        model,
        args.training,
        args.performance,
        modality,
        input_size=input_size,
        sequence_length=getattr(args.data, "max_seq_length", None),
    )
    for line in lines:
        logger.info("%s", line)
    args.run.config["device_settings"] = lines
    # ``performance`` keeps what parsing resolved (``auto`` where the model was to be timed), so that a rerun of the
    # same command is recognised whichever way its timing goes; what the timing chose is the run's precision
    args.run.config["precision"] = args.training.mixed_precision


def feature_cache_settings(
    args: RecipeArguments, modality: str, collate: Callable, store: dict[str, Any] | None = None
) -> CacheSettings | None:
    """Whether a recipe run trains its head on cached backbone features, and how (``None``: it does not).

    The cache is on by default wherever it gives the same model: the whole backbone is frozen (``head_only``, and
    the probe of ``lp_ft``) and, for images, no augmentation was asked for (features of augmented images differ
    every epoch; the default flip is dropped from what the head sees instead). ``--cache_features false`` turns it
    off. The decision is logged and recorded. ``store``: features shared with other runs of the same base model on
    the same data (a strategy comparison), computed once.
    """
    policy, performance, data, reg = args.freeze.policy(), args.performance, args.data, args.regularization
    reason = None
    if not performance.cache_features:
        reason = "--cache_features false"
    elif policy.strategy not in ("head_only", "lp_ft"):
        reason = f"--freeze_strategy {policy.strategy} trains more than the head"
    elif modality == "image":
        asked = {
            "--hflip": (data.hflip or 0) > 0,
            "--random_crop_scale": data.random_crop_scale is not None,
            "--auto_augment": bool(reg.auto_augment) and reg.auto_augment.lower() != "none",
            "--random_erasing": reg.random_erasing > 0,
            "--mixup_alpha / --cutmix_alpha": reg.mixes_labels,
        }
        if any(asked.values()):
            reason = f"augmentation was asked for ({', '.join(k for k, v in asked.items() if v)})"
    args.run.config["feature_cache"] = {"used": reason is None, "reason": reason or "the backbone is frozen"}
    if reason is not None:
        if policy.strategy in ("head_only", "lp_ft"):
            logger.info("backbone features are not cached: %s; the frozen backbone runs every step", reason)
        return None
    training = args.training
    autocast = torch.bfloat16 if training.bf16 else torch.float16 if training.fp16 else None
    depends_on = [args.run.config.get("model"), args.run.config.get("data"), performance.resolved_precision]
    return CacheSettings(
        collate=collate,
        memory_budget_mb=performance.feature_cache_memory_mb,
        cache_dir=default_cache_dir(args.run.output_dir, training.process_index),
        autocast_dtype=autocast,
        store=store,
        store_key=json.dumps(depends_on, sort_keys=True, default=str),
    )


def probe_policy(args: RecipeArguments, feature_cache: CacheSettings | None) -> FreezePolicy:
    """The run's policy, its probe solver decided: ``lbfgs`` (the head solved on the cached features) wherever the
    features are cached and the Trainer's probe was not asked for (``--probe_solver trainer``, or lp_ft's
    ``--probe_epochs``), else ``trainer``. Logged and recorded
    (``probe`` in the run's config).

    Raises:
        WarmstartError: ``--probe_solver lbfgs`` where the features are not cached, or an lp_ft probe left to the
            Trainer without ``--probe_epochs``.
    """
    policy = args.freeze.policy()
    if policy.strategy not in PROBING:
        return policy
    asked = policy.probe_solver
    if feature_cache is None:
        reason = args.run.config.get("feature_cache", {}).get("reason", "the features are not cached")
        if asked == "lbfgs":
            raise WarmstartError(
                f"--probe_solver lbfgs solves the head on cached backbone features, and they are not cached here "
                f"({reason}): use --probe_solver trainer, or drop what turns the cache off"
            )
        solver, why = "trainer", asked and "--probe_solver trainer" or f"the features are not cached ({reason})"
    elif asked is None and policy.strategy == "lp_ft" and policy.probe_epochs is not None:
        # epochs of probing asked for: the Trainer's probe, as every such command ran before the solver existed
        solver, why = "trainer", f"--probe_epochs {policy.probe_epochs:g}"
    else:
        solver, why = asked or "lbfgs", f"--probe_solver {asked}" if asked else "the default where features are cached"
    if solver == "trainer" and policy.strategy == "lp_ft" and policy.probe_epochs is None:
        raise WarmstartError(
            f"--freeze_strategy lp_ft trains its probe with the Trainer here ({why}): give --probe_epochs N"
        )
    if solver == "lbfgs" and policy.strategy == "lp_ft":
        why += "; the whole run then fine-tunes everything" + (
            f" (--probe_epochs {policy.probe_epochs:g} is not used)" if policy.probe_epochs else ""
        )
    logger.info("probe: %s (%s)", solver, why)
    args.run.config["probe"] = {"solver": solver, "reason": why, "asked": asked}
    return dataclasses.replace(policy, probe_solver=solver)


@dataclass
class ProbeOptions:
    """What the solved probe takes from the run's regularization: the loss it minimises is the training loss."""

    class_weights: Sequence[float] | None = None
    label_smoothing: float = 0.0


def _check_schedule_fits(policy: FreezePolicy, training_args: TrainingArguments) -> None:
    """A probe that never ends is a linear probe, not LP-FT: refuse it while nothing has loaded."""
    epochs = training_args.num_train_epochs
    probe = policy.probe_epochs
    solved = policy.probe_solver == "lbfgs"  # the solved probe takes no epochs: --probe_epochs is unused
    if policy.strategy == "lp_ft" and training_args.max_steps <= 0 and not solved and probe and probe >= epochs:
        raise WarmstartError(
            f"--probe_epochs {policy.probe_epochs:g} is not below --num_train_epochs {epochs:g}: the fine-tuning "
            "phase would never start (use fewer probe epochs, more epochs, or --freeze_strategy head_only)"
        )


def train_evaluate_save(
    run: Run,
    *,
    tuning: FineTuning,
    policy: FreezePolicy,
    training_args: TrainingArguments,
    splits: DatasetDict,
    data_collator: Callable | None,
    save_model: Callable[[nn.Module, Path], None],
    card: dict[str, Any],
    processing_class: Any = None,
    compute_loss_func: Callable | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    save_adapter: bool = False,
    feature_cache: CacheSettings | None = None,
    probe: ProbeOptions | None = None,
) -> dict[str, Any]:
    """Trains with the HF Trainer, evaluates on validation (and test), and saves in hub format with a model card.

    Output layout (as the HF examples): ``all_results.json``, ``train_results.json``, ``eval_results.json``,
    (``test_results.json``), ``trainer_state.json``, the model files, ``README.md`` and ``warmstart_config.yaml``.
    A LoRA model is saved merged (it loads without peft), and with ``save_adapter`` its adapter alone too.

    Args:
        run: from :func:`start_run`.
        tuning: from :func:`warmstart.fine_tuning.prepare_fine_tuning`: model, optimizer, schedule callbacks.
        policy: the policy.
        training_args: the Trainer's arguments.
        splits: ``train``, ``validation`` and optionally ``test``.
        data_collator: batches examples.
        save_model: writes a (plain, merged) model's files into a directory.
        card: model-card fields (see :func:`warmstart.export.write_model_card`) without metrics and policy.
        processing_class: the tokenizer, for text.
        compute_loss_func: a loss in place of the model's own (label smoothing, class weights, mixed labels).
        callbacks: more Trainer callbacks (early stopping).
        save_adapter: also save a LoRA adapter alone, in ``output_dir/adapter``.
        feature_cache: train the head on the frozen backbone's features, computed once per split (see
            :func:`feature_cache_settings`); the splits must then hold what the model takes after ``data_collator``.
        probe: the loss options the solved probe minimises (``policy.probe_solver == "lbfgs"``, see
            :func:`probe_policy`): the head is solved on the cached training features before the Trainer runs;
            ``head_only`` then trains nothing more (unless ``probe_train_rest``), ``lp_ft`` fine-tunes everything.

    Returns:
        All metrics, as in ``all_results.json``.
    """
    report = tuning.report
    logger.info("policy %s; %s", policy.describe(), report.summary())
    if training_args.should_save:
        run.output_dir.mkdir(parents=True, exist_ok=True)
    _warn_of_per_process_batchnorm(tuning.model, policy, training_args)
    kept = _avoid_single_sample_batches(tuning.model, policy, training_args, len(splits["train"]))
    if kept is not None:
        splits = {**splits, "train": splits["train"].select(kept)}
        if feature_cache is not None and feature_cache.source_splits is not None:
            source = feature_cache.source_splits
            feature_cache.source_splits = {**source, "train": source["train"].select(kept)}
    trained = tuning.model
    cached = _cache_backbone_features(run, tuning.model, splits, feature_cache, training_args)
    fit = None
    if policy.probe_solver == "lbfgs":
        fit = _solved_probe(run, tuning.model, cached, policy, probe or ProbeOptions(), training_args.seed)
        if fit is None:  # head_only by default, on a head the solver cannot take: the Trainer trains it
            policy = dataclasses.replace(policy, probe_solver="trainer")
    solved_only = fit is not None and policy.strategy == "head_only" and not policy.probe_train_rest
    if fit is not None and policy.strategy == "lp_ft":
        pass  # the probe is solved: the full model fine-tunes on the inputs from the first step
    elif cached is not None and policy.strategy == "lp_ft":
        # the probe trains the head on the features, then the schedule unfreezes the backbone and the full model
        # trains on the inputs, in one Trainer run (one schedule, one optimizer, one set of checkpoints)
        trained = ProbeThenFull(tuning.model, cached)
        splits = {name: WithCachedFeatures(splits[name], table) for name, table in cached.splits.items()}
        data_collator = CachedFeatureCollator(data_collator or default_data_collator)
        training_args.remove_unused_columns = False  # the wrapper's signature does not name the model's inputs
    elif cached is not None:
        trained, splits, data_collator = cached.head, cached.splits, default_data_collator
        # features have one size: nothing to group by length, and nothing for a collator to pad; a row is a slice
        # of a tensor, with nothing for loader workers to decode; and the head has no activations worth
        # checkpointing (the head model has no layers to checkpoint)
        if training_args.train_sampling_strategy == "group_by_length":
            training_args.train_sampling_strategy = "random"
        training_args.dataloader_num_workers = 0
        training_args.activation_checkpointing = False
    training_args.logging_nan_inf_filter = False  # a NaN loss must show in the log, where the run stops on it
    trainer = Trainer(
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=data_collator,
        processing_class=processing_class,
        compute_metrics=compute_metrics if training_args.world_size <= 1 else exact_loss_metrics(compute_loss_func),
        compute_loss_func=compute_loss_func,
        **{
            **tuning.trainer_kwargs(),
            "model": trained,
            "callbacks": [*tuning.callbacks, *callbacks, StopOnNonFiniteLoss(), LogBeforeEvaluationAndAtTheEnd()],
        },
    )
    run.config["param_groups"] = tuning.groups_as_dicts()
    try:
        if solved_only:  # nothing left to train: the solve was the training
            results: dict[str, Any] = {
                "train_runtime": fit.seconds,
                "train_samples_per_second": round(fit.examples / max(fit.seconds, 1e-9), 3),
                "train_loss": fit.train_loss,
            }
        else:
            results = dict(trainer.train(resume_from_checkpoint=resume_point(training_args)).metrics)
        if fit is not None:
            results.update(probe_c=fit.c, probe_seconds=fit.seconds)
        results.update(
            train_samples=len(splits["train"]),
            trainable_params=report.trainable_params,
            total_params=report.total_params,
        )
        if cached is not None:  # before the Trainer's clock (train_runtime) started
            results["feature_cache_seconds"] = round(cached.seconds, 3)
        trainer.log_metrics("train", results)
        files = {"train": dict(results)}  # written with the model, when it is saved

        predicted = {}
        for split in ("validation", "test"):
            if split not in splits:
                continue
            prefix = "eval" if split == "validation" else "test"
            # predict, not evaluate: the same metrics, and the predictions for the report's plots
            output = trainer.predict(splits[split], metric_key_prefix=prefix)
            metrics = dict(output.metrics)
            metrics[f"{prefix}_samples"] = len(splits[split])
            trainer.log_metrics(prefix, metrics)
            files[prefix] = metrics
            results.update(metrics)
            predicted[split] = output
    finally:
        if cached is not None:  # also after a failure: spilled features can take gigabytes
            cached.close()

    if trainer.is_world_process_zero():
        run.config["freeze_report"] = report.to_dict()
        schedule = next((c for c in tuning.callbacks if isinstance(c, UnfreezeSchedule)), None)
        if schedule is not None:
            run.config["schedule"] = [
                {"step": step, "stage": stage, "training": groups} for step, stage, groups in schedule.history
            ]
        # what warmstart changed in the training arguments (early stopping's strategies, DDP settings), beside
        # what was asked for, which stays as given so that a rerun of the same command is recognised
        effective = to_plain(training_args)
        run.config["training_adjusted"] = {
            k: v for k, v in effective.items() if k in run.config["training"] and run.config["training"][k] != v
        }
        files["all"] = {**results, "freeze_policy": policy.to_dict(), **report.to_dict()}
        with staged_output(run.output_dir) as staging:
            model = tuning.model
            if policy.strategy == "lora":
                from warmstart.lora import merge_lora, save_lora_adapter

                if save_adapter:
                    save_lora_adapter(model, staging / "adapter")
                model = merge_lora(model)
            reports = [
                write_evaluation_report(
                    staging,
                    card["labels"],
                    output.label_ids,
                    output.predictions,
                    trainer.state.log_history,
                    metric_for_best_model=training_args.metric_for_best_model,
                    split=split,
                )
                for split, output in predicted.items()
            ]
            card = {
                **card,
                **({"probe": fit.markdown()} if fit is not None else {}),
                "policy": policy.to_dict(),
                "policy_description": policy.describe(),
                "freeze_report": report.to_dict(),
                "per_class": "\n\n".join(r.markdown for r in reports),
                "images": [image for r in reports for image in r.images],
            }
            _write_output(run, staging, model, save_model, card, results, files, trainer)
        _finish_output(run)
    return results


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


class StopOnNonFiniteLoss(TrainerCallback):
    """Stops a run whose logged training loss (or gradient norm) is NaN or infinite, with one line naming the step
    and the last checkpoint saved before it (a checkpoint is saved after the log of its step, so none with the
    non-finite value is made at that step)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                saved = checkpoints(args.output_dir, complete=False)
                kept = f"the last good checkpoint is {saved[-1]}" if saved else "no checkpoint was saved"
                raise WarmstartError(
                    f"the training {key} became {value} at step {state.global_step}: lower --learning_rate (or train "
                    f"in fp32, or clip with --max_grad_norm); {kept}"
                )


class LogBeforeEvaluationAndAtTheEnd(TrainerCallback):
    """Logs the training loss at the last step and before each evaluation, besides every ``logging_steps``.

    The Trainer averages the loss over processes only when it logs; the steps after the last log entered
    ``train_loss`` with the main process's loss alone, so a multi-process run reported another ``train_loss`` than
    one process on the same global batches. Logged at the end, every step is averaged over the processes. Logged
    before an evaluation, the training curve has a training loss beside each evaluation (and early stopping, which
    ends a run at an evaluation, ends it on a logged step)."""

    def on_step_end(self, args, state, control, **kwargs):
        if args.logging_strategy != "no" and (state.global_step >= state.max_steps or control.should_evaluate):
            control.should_log = True


def exact_loss_metrics(loss_function: Callable | None) -> Callable[[EvalPrediction], dict[str, float]]:
    """:func:`~warmstart.metrics.compute_metrics` plus the loss over the evaluated examples, for a multi-process run.

    Several processes evaluate a split in batches made even by repeating examples; the Trainer drops the repeats
    from the predictions but averages batch losses that include them, so ``eval_loss`` differed from a single
    process's (2 % on a 33-example split, measured). Computed here from the gathered predictions, with the training
    loss (``loss_function``, else cross-entropy), the loss covers each example once; returned as ``loss``, it takes
    the place of the Trainer's ``eval_loss``.
    """

    def metrics(prediction: EvalPrediction) -> dict[str, float]:
        values = compute_metrics(prediction)
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        logits, labels = torch.as_tensor(np.asarray(logits)).float(), torch.as_tensor(np.asarray(prediction.label_ids))
        if loss_function is not None:
            loss = loss_function({"logits": logits}, labels)
        else:
            loss = torch.nn.functional.cross_entropy(logits, labels.long(), ignore_index=-100)
        return {**values, "loss": float(loss)}

    return metrics


STAGING_DIR = ".warmstart_saving"


@contextmanager
def staged_output(output_dir: Path) -> Iterator[Path]:
    """A folder inside ``output_dir`` to write a run's output into; when the block ends without an error, every
    file in it replaces its namesake in ``output_dir`` (one rename each, after everything is written), and the
    folder goes. A failure while writing leaves ``output_dir`` as it was: an earlier model stays whole and
    loadable, and nothing half-written is left behind."""
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
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_output(
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
    lineage = finish_lineage(run.config, results)
    save_model(model, staging)
    for name, values in files.items():
        (staging / f"{name}_results.json").write_text(json.dumps(values, indent=4, sort_keys=True, default=str))
    trainer.state.save_to_json(str(staging / "trainer_state.json"))
    write_resolved_config(staging, run.config)
    training = {k: run.config["training"].get(k) for k in _CARD_TRAINING_KEYS}
    training["precision"] = run.config["precision"]
    write_model_card(staging, {**card, "lineage": lineage, "metrics": results, "training": training})


def _finish_output(run: Run) -> None:
    logger.info("model saved to %s", run.output_dir.resolve())
    if run.push_to_hub:
        push_output_dir(run)


@dataclass
class PretrainingArguments:
    """A pretraining recipe's parsed arguments (``objective``: its own dataclass, e.g. the masking) and its
    :class:`Run`."""

    model: ModelArguments
    data: UnlabeledDataArguments
    objective: Any
    performance: PerformanceArguments
    training: TrainingArguments
    run: Run


def start_pretraining(argv: Sequence[str] | None, objective_type: type, task: str) -> PretrainingArguments:
    """A pretraining recipe's first step: parse its arguments (command line or config file) and :func:`start_run`.

    Args:
        argv: the command line (``None``: ``sys.argv[1:]``).
        objective_type: the dataclass of the objective's arguments (``MlmArguments``, ``AutoencoderArguments``).
        task: the run's task for its lineage (``masked-LM pretraining``).

    Raises:
        WarmstartError: a bad argument, or one that only fine-tuning takes.
    """
    sections = (ModelArguments, UnlabeledDataArguments, objective_type, PerformanceArguments)
    model_args, data_args, objective, perf_args, training_args = parse_args((*sections, TrainingArguments), argv)
    if model_args.reset_head:
        raise WarmstartError("--reset_head is for the fine-tuning recipes: pretraining trains no classification head")
    named = {"model": model_args, "data": data_args, "objective": objective, "performance": perf_args}
    run = start_run(named, training_args, overwrite_output_dir=model_args.overwrite_output_dir, task=task)
    return PretrainingArguments(model_args, data_args, objective, perf_args, training_args, run)


def pretrain_evaluate_save(
    run: Run,
    *,
    model: nn.Module,
    training_args: TrainingArguments,
    splits: DatasetDict,
    data_collator: Callable | None,
    save_model: Callable[[nn.Module, Path], None],
    card: dict[str, Any],
    processing_class: Any = None,
    derived_metrics: Callable[[dict[str, float], str], dict[str, float]] | None = None,
    after_training: Callable[[nn.Module, Path], list[tuple[str, str]]] | None = None,
) -> dict[str, Any]:
    """Trains a self-supervised objective with the HF Trainer (the model returns its own loss), evaluates the loss
    on validation, and saves what the next run fine-tunes, with a model card and the run's lineage.

    Args:
        run: from :func:`start_pretraining`.
        model: the model being pretrained; its forward returns the loss.
        training_args: the Trainer's arguments.
        splits: ``train`` and ``validation``.
        data_collator: batches examples (for masked-LM: draws the masks).
        save_model: writes the part worth keeping (the encoder, the masked-LM model) into a directory.
        card: model-card fields (see :func:`warmstart.export.write_model_card`) without metrics.
        processing_class: the tokenizer, for text.
        derived_metrics: metrics computed from the Trainer's (perplexity from the loss), given the metrics and their
            prefix (``eval``).
        after_training: writes more files into the output directory on the main process (a reconstruction grid),
            given the trained model and the directory; returns ``(caption, file name)`` of PNGs for the card.

    Returns:
        All metrics, as in ``all_results.json``.
    """
    if training_args.should_save:
        run.output_dir.mkdir(parents=True, exist_ok=True)
    training_args.prediction_loss_only = True  # nothing to score but the loss: keep outputs out of memory
    training_args.logging_nan_inf_filter = False
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=data_collator,
        processing_class=processing_class,
        callbacks=[StopOnNonFiniteLoss(), LogBeforeEvaluationAndAtTheEnd()],
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    train_result = trainer.train(resume_from_checkpoint=resume_point(training_args))
    results: dict[str, Any] = dict(train_result.metrics)
    results.update(
        train_samples=len(splits["train"]),
        trainable_params=trainable,
        total_params=sum(p.numel() for p in model.parameters()),
    )
    trainer.log_metrics("train", results)
    files = {"train": dict(results)}
    metrics = trainer.evaluate(metric_key_prefix="eval")
    metrics["eval_samples"] = len(splits["validation"])
    if derived_metrics is not None:
        metrics.update(derived_metrics(metrics, "eval"))
    trainer.log_metrics("eval", metrics)
    files["eval"] = metrics
    results.update(metrics)
    files["all"] = dict(results)
    if trainer.is_world_process_zero():
        with staged_output(run.output_dir) as staging:
            images = after_training(model, staging) if after_training is not None else []
            _write_output(run, staging, model, save_model, {**card, "images": images}, results, files, trainer)
        _finish_output(run)
    return results


_CARD_TRAINING_KEYS = (
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


def _cache_backbone_features(
    run: Run, model: nn.Module, splits: DatasetDict, settings: CacheSettings | None, training_args: TrainingArguments
) -> CachedRun | None:
    if settings is None:
        return None
    try:
        cached = cache_features(
            model,
            settings.source_splits or splits,
            settings,
            batch_size=training_args.per_device_eval_batch_size,
            device=training_args.device,
            num_workers=training_args.dataloader_num_workers,
        )
    except CacheDeclined as declined:
        logger.warning("backbone features are not cached: %s; the frozen backbone runs every step", declined)
        run.config["feature_cache"] = {"used": False, "reason": str(declined)}
        return None
    record = run.config.setdefault("feature_cache", {"used": True})
    record.update(seconds=round(cached.seconds, 2), splits=cached.stats)
    on_disk = [name for name, table in cached.splits.items() if table.on_disk]
    logger.info(
        "backbone features cached once in %.1f s (%s); the head trains on them%s",
        cached.seconds,
        ", ".join(f"{name}: {len(table)}" for name, table in cached.splits.items()),
        f" (memory-mapped: {', '.join(on_disk)})" if on_disk else "",
    )
    return cached


def _solved_probe(
    run: Run, model: nn.Module, cached: CachedRun | None, policy: FreezePolicy, probe: ProbeOptions, seed: int
) -> ProbeFit | None:
    """Solves the head on the cached training features (:func:`warmstart.probe.solve_head`) on the main process,
    and gives every process the solved weights. Returns the fit, or ``None`` where ``head_only``'s default solver
    cannot take the head (the Trainer then trains it, and the run says why).

    Raises:
        WarmstartError: the features could not be cached or the head solved, where the solve was asked for (or
            ``lp_ft`` relies on it).
    """
    explicit = run.config.get("probe", {}).get("asked") is not None  # --probe_solver given
    if cached is None:
        problem = run.config.get("feature_cache", {}).get("reason", "the features are not cached")
    elif is_main_process():
        table = cached.splits["train"]
        features = torch.as_tensor(np.asarray(table.features))
        try:
            fit = solve_head(
                model,
                cached.head,
                lambda batch: head_inputs(cached.key, batch),
                features,
                table.labels,
                new_weights=newly_initialised(model),
                class_weights=probe.class_weights,
                label_smoothing=probe.label_smoothing,
                seed=seed,
            )
            names = {*fit.fitted, *fit.pass_through}
            shared: Any = (fit, {n: p.detach().cpu() for n, p in model.named_parameters() if n in names})
        except ProbeUnsolvable as err:
            shared = str(err)
        problem = None
    shared = broadcast_from_main(shared if cached is not None and is_main_process() else None)
    if cached is not None:
        problem = shared if isinstance(shared, str) else None
    if problem is not None:
        if explicit or policy.strategy == "lp_ft":
            raise WarmstartError(
                f"the probe cannot be solved: {problem}: use --probe_solver trainer"
                + (" --probe_epochs N" if policy.strategy == "lp_ft" else "")
            )
        logger.warning("the probe is not solved (%s): the Trainer trains the head", problem)
        run.config["probe"] = {"solver": "trainer", "reason": f"not solvable: {problem}"}
        return None
    fit, state = shared
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state:
                param.copy_(state[name].to(param.device))
    logger.info("%s", fit.summary())
    run.config["probe"].update(fit.to_dict())
    return fit


def _trains_batchnorm(model: nn.Module, policy: FreezePolicy) -> bool:
    """Whether BatchNorm layers normalise with batch statistics in this run (now, or once a schedule unfreezes
    them)."""
    if policy.holds_batchnorm_stats:
        return False
    batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return any(p.requires_grad for m in batchnorms for p in m.parameters()) or (
        bool(batchnorms) and policy.strategy in ("gradual", "lp_ft")
    )


def _warn_of_per_process_batchnorm(model: nn.Module, policy: FreezePolicy, training_args: TrainingArguments) -> None:
    """Says, under several processes, that BatchNorm normalises each process's share of a batch: the one thing that
    keeps such a run from computing what one process computes on the same global batch (measured: a full fine-tune
    of a ResNet on 24 images, 2 processes of 6 against 1 of 12, ended at train loss 0.42 against 0.17). PyTorch's
    SyncBatchNorm, which would normalise over the global batch, runs on GPUs only."""
    if training_args.world_size > 1 and _trains_batchnorm(model, policy):
        logger.warning(
            "BatchNorm trains here and each of the %d processes normalises its own %d examples per step: results "
            "differ from one process with the same global batch (a frozen backbone, or a model without BatchNorm, "
            "does not have this difference)",
            training_args.world_size,
            training_args.per_device_train_batch_size,
        )


def _avoid_single_sample_batches(
    model: nn.Module, policy: FreezePolicy, training_args: TrainingArguments, train_size: int
) -> list[int] | None:
    """A trainable BatchNorm cannot normalise a batch of one sample at 1x1 resolution, and a last batch of one is
    an accident of the data size: one training example (chosen with the seed) is left out rather than crash at the
    end of an epoch. (``dataloader_drop_last`` would do it, but the Trainer applies it to evaluation too, where it
    silently dropped whole validation batches.) Returns the training rows to keep, or ``None``: all."""
    batch = training_args.per_device_train_batch_size * max(training_args.world_size, 1)
    if train_size % batch != 1 or training_args.dataloader_drop_last or train_size == 1:
        return None
    if not _trains_batchnorm(model, policy):
        return None
    left_out = random.Random(training_args.seed).randrange(train_size)
    logger.warning(
        "the last training batch would hold one sample, which BatchNorm cannot train on: training example %d of %d "
        "is left out",
        left_out,
        train_size,
    )
    return [i for i in range(train_size) if i != left_out]


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
