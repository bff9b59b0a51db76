"""What the classification tasks share once their data and model have loaded: the learning rate a strategy starts
from, the run fitted to the machine, the feature cache and probe decided, the policy applied, and the loop run."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import DatasetDict
from torch import nn
from transformers import TrainerCallback

from warmstart.averaging import (
    architecture_difference,
    average_state_dicts,
    batchnorm_layers_that_differ,
    recompute_batchnorm,
)
from warmstart.calibration import fold_temperature
from warmstart.config import RunConfig
from warmstart.data.bad_examples import BadExamples
from warmstart.distributed import broadcast_from_main
from warmstart.errors import WarmstartError
from warmstart.feature_cache import CacheSettings, default_cache_dir
from warmstart.fine_tuning import prepare_fine_tuning
from warmstart.lineage import model_display_name
from warmstart.models import fold_target_scale
from warmstart.plan import change_training
from warmstart.policy import FreezePolicy, default_learning_rate
from warmstart.precision import apply_device_settings
from warmstart.problems import REGRESSION, SINGLE_LABEL, LabelSpace, greater_is_better
from warmstart.regularization import check_regularization, prepare_regularization
from warmstart.run_folder import read_run_config
from warmstart.training import ProbeOptions, Run, start_run, train_classifier

logger = logging.getLogger("warmstart")


def learning_rate(config: RunConfig) -> tuple[float, str]:
    """The run's learning rate and where it comes from: ``--learning_rate`` when given, else the default of the
    strategy on the task's modality (the Trainer's 5e-5 suits full fine-tuning of BERT only)."""
    if "learning_rate" in config.given:
        return config.training.learning_rate, "--learning_rate"
    strategy = config.policy.strategy
    return default_learning_rate(strategy, config.modality), f"the default for {strategy} on {config.modality} data"


def start_classification(config: RunConfig) -> Run:
    """A classification run's first step: its learning rate resolved, and :func:`~warmstart.training.start_run`.

    ``config`` is the run's own copy: its training arguments take the resolved rate."""
    rate, source = learning_rate(config)
    change_training(config.training, source, learning_rate=rate)
    run = start_run(config)
    run.plan.decide("learning_rate", {"value": rate, "source": source})
    logger.info("learning rate %g (%s)", rate, source)
    return run


def bad_examples_of(config: RunConfig) -> BadExamples:
    """The run's policy for examples that cannot be used (``--on_bad_example``), recording into its output folder;
    record files a previous run's processes left there are removed (by the main process)."""
    bad_examples = BadExamples.for_run(config.data, config.training.output_dir)
    if config.training.process_index == 0:
        bad_examples.clear_stale()
    return bad_examples


def resolve_labels(config: RunConfig, run: Run, labels: LabelSpace) -> None:
    """What the run's label shape decides before anything trains, once its data has told it (``--problem_type``
    may have left it to the data): the metric it is judged by checked against what the shape reports, and its
    direction planned (the Trainer's own guess, "higher is better unless it ends in loss", is wrong for rmse, mse
    and mae); ``--threshold`` refused where there are no thresholds. Recorded as ``targets``.

    Raises:
        WarmstartError: a metric the shape does not report, ``--threshold`` on a shape without thresholds, or
            regularization the shape cannot use.
    """
    problem = labels.problem
    check_regularization(config.regularization, config.modality, problem.name, config.training)
    metric = config.training.metric_for_best_model
    if metric:
        name = problem.check_metric(metric)
        if "greater_is_better" not in config.given:
            change_training(
                config.training, f"--metric_for_best_model {metric}", greater_is_better=greater_is_better(name)
            )
    if config.evaluation.threshold is not None and not problem.thresholds:
        raise WarmstartError(
            f"--threshold sets multi-label decision thresholds, and this run is {problem.description}: drop it"
        )
    run.plan.decide("targets", labels.to_dict())


def apply_devices(config: RunConfig, run: Run, model: nn.Module, input_size: Sequence[int] | None = None) -> None:
    """Fits the run to the machine (precision, timed on the model where parsing left it pending; TF32, channels_last,
    loader workers): see :func:`warmstart.precision.apply_device_settings` (``input_size``: the training images'
    ``(C, H, W)``; text is timed at ``--max_seq_length`` tokens when given). Each decision is logged and recorded in
    the run's config: ``device_settings``, and ``precision``, the mixed precision the Trainer will run."""
    lines = apply_device_settings(
        model,
        config.training,
        config.performance,
        config.modality,
        input_size=input_size,
        sequence_length=getattr(config.data, "max_seq_length", None),
    )
    for line in lines:
        logger.info("%s", line)
    run.plan.decide("device_settings", lines)
    # ``performance`` keeps what parsing resolved (``auto`` where the model was to be timed), so that a rerun of the
    # same command is recognised whichever way its timing goes; what the timing chose is the run's precision
    run.plan.decide("precision", config.training.mixed_precision)


def feature_cache_refusal(config: RunConfig) -> str | None:
    """Why a run's backbone features are not cached, or ``None``: they are.

    The cache is on by default wherever it gives the same model: the whole backbone is frozen (``head_only``, and
    the probe of ``lp_ft``) and, for images, no augmentation was asked for (features of augmented images differ
    every epoch; the default flip is dropped from what the head sees instead). ``--cache_features false`` turns it
    off."""
    policy, data, reg = config.policy, config.data, config.regularization
    if config.evaluation.evaluate_only:
        return "nothing trains (--evaluate_only)"
    if not config.performance.cache_features:
        return "--cache_features false"
    if not policy.spec.probes:
        return f"--freeze_strategy {policy.strategy} trains more than the head"
    if config.modality == "image":
        asked = {
            "--hflip": (data.hflip or 0) > 0,
            "--random_crop_scale": data.random_crop_scale is not None,
            "--auto_augment": bool(reg.auto_augment) and reg.auto_augment.lower() != "none",
            "--random_erasing": reg.random_erasing > 0,
            "--mixup_alpha / --cutmix_alpha": reg.mixes_labels,
        }
        if any(asked.values()):
            return f"augmentation was asked for ({', '.join(k for k, v in asked.items() if v)})"
    return None


def feature_cache_settings(
    config: RunConfig, run: Run, collate: Callable, store: dict[str, Any] | None = None
) -> CacheSettings | None:
    """Whether a run trains its head on cached backbone features, and how (``None``: it does not; see
    :func:`feature_cache_refusal`). The decision is logged and recorded. ``store``: features shared with other runs
    of the same base model on the same data (a strategy comparison), computed once."""
    reason = feature_cache_refusal(config)
    run.plan.decide("feature_cache", {"used": reason is None, "reason": reason or "the backbone is frozen"})
    if reason is not None:
        if config.policy.spec.probes:
            logger.info("backbone features are not cached: %s; the frozen backbone runs every step", reason)
        return None
    training, performance = config.training, config.performance
    autocast = torch.bfloat16 if training.bf16 else torch.float16 if training.fp16 else None
    depends_on = [run.config.get("model"), run.config.get("data"), performance.resolved_precision]
    return CacheSettings(
        collate=collate,
        memory_budget_mb=performance.feature_cache_memory_mb,
        cache_dir=default_cache_dir(run.output_dir, training.process_index),
        autocast_dtype=autocast,
        store=store,
        store_key=json.dumps(depends_on, sort_keys=True, default=str),
    )


def probe_policy(
    config: RunConfig, run: Run, feature_cache: CacheSettings | None, problem_type: str = SINGLE_LABEL
) -> FreezePolicy:
    """The run's policy, its probe solver decided: ``lbfgs`` (the head solved on the cached features) wherever the
    features are cached and the Trainer's probe was not asked for (``--probe_solver trainer``, or lp_ft's
    ``--probe_epochs``), else ``trainer``. Logged and recorded (``probe`` in the run's config).

    The solver fits single-label heads; another label shape's probe is trained by the Trainer (lp_ft's for half the
    epochs unless ``--probe_epochs`` says otherwise).

    Raises:
        WarmstartError: ``--probe_solver lbfgs`` where the features are not cached or the labels are not
            single-label, or an lp_ft probe left to the Trainer without ``--probe_epochs``.
    """
    policy = config.policy
    if not policy.spec.probes:
        return policy
    asked = policy.probe_solver
    lp_ft = policy.spec.trains_backbone
    if problem_type != SINGLE_LABEL:
        if asked == "lbfgs":
            raise WarmstartError(
                f"--probe_solver lbfgs solves single-label heads (softmax regression); this run is {problem_type}: "
                "use --probe_solver trainer"
            )
        solver, why = "trainer", f"the solver fits single-label heads; a {problem_type} head trains with the Trainer"
        training = config.training
        if lp_ft and policy.probe_epochs is None and training.max_steps <= 0:
            # as a comparison plans the Trainer's probe: half the epochs, unless told
            policy = dataclasses.replace(policy, probe_epochs=training.num_train_epochs / 2)
            why += f"; it probes for half the epochs ({policy.probe_epochs:g}: --probe_epochs sets it)"
    elif feature_cache is None:
        reason = run.plan.decisions.get("feature_cache", {}).get("reason", "the features are not cached")
        if asked == "lbfgs":
            raise WarmstartError(
                f"--probe_solver lbfgs solves the head on cached backbone features, and they are not cached here "
                f"({reason}): use --probe_solver trainer, or drop what turns the cache off"
            )
        solver, why = "trainer", asked and "--probe_solver trainer" or f"the features are not cached ({reason})"
    elif asked is None and lp_ft and policy.probe_epochs is not None:
        # epochs of probing asked for: the Trainer's probe, as every such command ran before the solver existed
        solver, why = "trainer", f"--probe_epochs {policy.probe_epochs:g}"
    else:
        solver, why = asked or "lbfgs", f"--probe_solver {asked}" if asked else "the default where features are cached"
    if solver == "trainer" and lp_ft and policy.probe_epochs is None:
        raise WarmstartError(
            f"--freeze_strategy lp_ft trains its probe with the Trainer here ({why}): give --probe_epochs N"
        )
    if solver == "lbfgs" and lp_ft:
        why += "; the whole run then fine-tunes everything" + (
            f" (--probe_epochs {policy.probe_epochs:g} is not used)" if policy.probe_epochs else ""
        )
    logger.info("probe: %s (%s)", solver, why)
    run.plan.decide("probe", {"solver": solver, "reason": why, "asked": asked})
    return dataclasses.replace(policy, probe_solver=solver)


def average_in(
    config: RunConfig,
    run: Run,
    model: nn.Module,
    load_model: Callable[[str], nn.Module],
    outputs: int,
    train_batches: Callable[[], Iterable[dict[str, Any]]],
) -> str:
    """``--average_with``: sets the model's weights to the uniform average of its own and each listed warmstart
    output's (a model soup), every one loaded as the run loads its model, for the same labels, and each one's fitted
    temperature taken out of its head first (the average is of the weights as trained). BatchNorm layers whose
    statistics differ between the models get theirs recomputed on the training data (``train_batches``), as SWA
    does: averaged statistics fit no averaged weights. Recorded as ``weight_average``; returns the card's line (""
    without ``--average_with``).

    Raises:
        WarmstartError: a model without a head for the run's labels, or of another architecture.
    """
    paths = list(config.model.average_with or ())
    if not paths:
        return ""
    main = config.model.model_name_or_path
    members = [(main, model), *((path, load_model(path)) for path in paths)]
    states = []
    for path, member in members:
        if not getattr(member, "warmstart_head_kept", False):
            raise WarmstartError(
                f"--average_with: {path} has no trained head for this run's labels: a soup averages runs trained on "
                "the same labels"
            )
        temperature = ((read_run_config(path) or {}).get("calibration") or {}).get("temperature")
        if temperature:
            fold_temperature(member, 1.0 / float(temperature), outputs)
        states.append(member.state_dict())
    for (path, _), state in zip(members[1:], states[1:], strict=True):
        differ = architecture_difference(states[0], state)
        if differ:
            raise WarmstartError(
                f"--average_with {path}: another architecture than {main} ({differ}): a soup averages runs of one "
                "architecture"
            )
    model.load_state_dict(average_state_dicts(states))
    names = [model_display_name(path) for path, _ in members]
    record: dict[str, Any] = {"method": "uniform", "models": names}
    line = f"The weights are the uniform average of {len(members)} models (a model soup): {', '.join(names)}."
    layers = batchnorm_layers_that_differ(model, states)
    if layers:
        model.to(config.training.device)
        seen = recompute_batchnorm(model, layers, train_batches())
        recomputed = {k: v.cpu() for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] in set(layers)}
        model.load_state_dict(broadcast_from_main(recomputed), strict=False)  # the main process's, everywhere
        record["batchnorm_recomputed"] = {"layers": len(layers), "batches": seen}
        line += f" The statistics of its {len(layers)} BatchNorm layers were recomputed on {seen} training batches."
        logger.info("BatchNorm statistics of %d layers recomputed on %d training batches", len(layers), seen)
    run.plan.decide("weight_average", record)
    logger.info("weights: the uniform average of %d models (%s)", len(members), ", ".join(names))
    return line


def train_loaded_classifier(
    config: RunConfig,
    run: Run,
    *,
    model: nn.Module,
    splits: DatasetDict,
    collate: Callable,
    labels: LabelSpace,
    save_model: Callable[[nn.Module, Path], None],
    card: dict[str, Any],
    feature_cache: CacheSettings | None,
    load_model: Callable[[str], nn.Module],
    processing_class: Any = None,
    callbacks: Sequence[TrainerCallback] = (),
    plain_train: Any = None,
) -> dict[str, Any]:
    """The rest of a classification run once its model and splits are loaded: the models of ``--average_with``
    averaged in (:func:`average_in`; ``load_model`` loads one as the run loaded its own; BatchNorm statistics
    recomputed on ``plain_train``, the training examples without augmentation, else on ``splits["train"]``), the
    probe decided, the
    policy applied (:func:`~warmstart.fine_tuning.prepare_fine_tuning`), the regularization built, and
    :func:`~warmstart.training.train_classifier` run.

    Raises:
        WarmstartError: ``--evaluate_only`` of a model without a trained head for the run's labels, or what
            :func:`average_in` refuses.
    """
    evaluate_only = config.evaluation.evaluate_only

    def train_batches() -> Iterable[dict[str, Any]]:
        # batches of at least 64: the statistics average per-batch variances, which small batches underestimate
        size = max(config.training.per_device_eval_batch_size, config.training.per_device_train_batch_size, 64)
        examples = plain_train if plain_train is not None else splits["train"]
        return torch.utils.data.DataLoader(examples, batch_size=size, collate_fn=collate)

    weights = average_in(config, run, model, load_model, labels.num_outputs, train_batches)
    if evaluate_only and not getattr(model, "warmstart_head_kept", False):
        raise WarmstartError(
            f"--evaluate_only: {config.model.model_name_or_path} has no trained head for these labels "
            f"({', '.join(map(str, labels.names[:5]))}{' ...' * (len(labels.names) > 5)}): give a warmstart output "
            "trained on them, or drop --evaluate_only to train one"
        )
    if evaluate_only:
        weights = " ".join([weights, "Nothing was trained in this run (--evaluate_only)."]).strip()
    policy = config.policy if evaluate_only else probe_policy(config, run, feature_cache, labels.problem_type)
    if labels.problem_type == REGRESSION and getattr(model, "warmstart_head_kept", False):
        # a saved regression head outputs the targets' units; it trains on standardised ones
        fold_target_scale(model, *labels.scale, inverse=True)
    tuning = prepare_fine_tuning(model, policy, config.training)
    reg_args = config.regularization
    regularization = prepare_regularization(
        reg_args, config.modality, model.config, splits["train"], config.training, labels
    )
    return train_classifier(
        run,
        tuning=tuning,
        policy=policy,
        training_args=config.training,
        splits=splits,
        data_collator=regularization.collator(collate),
        processing_class=processing_class,
        compute_loss_func=regularization.loss_function,
        callbacks=[*regularization.callbacks, *callbacks],
        save_adapter=config.save_adapter,
        feature_cache=feature_cache,
        probe=ProbeOptions(regularization.class_weights, reg_args.label_smoothing),
        labels=labels,
        threshold=config.evaluation.threshold,
        extra_metrics=config.evaluation.extra_metrics or (),
        confidence_level=config.evaluation.confidence_level,
        calibration=config.evaluation.calibration,
        evaluate_only=evaluate_only,
        ema_decay=reg_args.ema_decay,
        ema_warmup=reg_args.ema_warmup,
        save_model=save_model,
        card={
            "weights": weights,
            "modality": config.modality,
            "name": str(run.output_dir),
            "base_model": config.model.describe(),
            "problem_type": labels.problem_type,
            **card,
        },
    )
