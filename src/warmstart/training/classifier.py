"""The training loop of the classification tasks: the head solved or trained on cached backbone features where the
backbone is frozen, the Trainer otherwise, then evaluation on validation (and test), the report, and the output."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import DatasetDict
from torch import nn
from transformers import EvalPrediction, Trainer, TrainerCallback, TrainingArguments, default_data_collator

from warmstart.averaging import average_markdown, choose_average, shards_weights, weight_average
from warmstart.calibration import check_calibration
from warmstart.disk_space import checkpoint_bytes, guard_checkpoints
from warmstart.distributed import broadcast_from_main, is_main_process
from warmstart.errors import WarmstartError
from warmstart.feature_cache import (
    CacheDeclined,
    CachedFeatureCollator,
    CachedRun,
    CacheSettings,
    ProbeThenFull,
    WithCachedFeatures,
    cache_features,
    head_inputs,
)
from warmstart.fine_tuning import FineTuning, UnfreezeSchedule
from warmstart.lora import merge_lora, save_lora_adapter
from warmstart.metrics import load_extra_metrics, logits_of, tune_thresholds
from warmstart.models import fold_target_scale, newly_initialised
from warmstart.plan import change_training
from warmstart.policy import FreezePolicy
from warmstart.probe import ProbeFit, ProbeUnsolvable, solve_head
from warmstart.problems import SINGLE_LABEL, LabelSpace, greater_is_better
from warmstart.training.batchnorm import avoid_single_sample_batches, warn_of_per_process_batchnorm
from warmstart.training.callbacks import LogBeforeEvaluationAndAtTheEnd, StopOnNonFiniteLoss
from warmstart.training.output import finish_output, staged_output, write_output
from warmstart.training.scoring import (
    apply_calibration,
    calibrate,
    calibration_metrics,
    decide_thresholds,
    interval_metrics,
    metrics_for,
    report_split,
)
from warmstart.training.setup import Run, resume_point
from warmstart.uncertainty import DEFAULT_LEVEL

logger = logging.getLogger("warmstart")


@dataclass
class ProbeOptions:
    """What the solved probe takes from the run's regularization: the loss it minimises is the training loss."""

    class_weights: Sequence[float] | None = None
    label_smoothing: float = 0.0


def train_classifier(
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
    labels: LabelSpace | None = None,
    threshold: float | None = None,
    extra_metrics: Sequence[str] = (),
    confidence_level: float = DEFAULT_LEVEL,
    calibration: str = "none",
    evaluate_only: bool = False,
    ema_decay: float | None = None,
    ema_warmup: bool = True,
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
        labels: the label space (``None``: single-label, the classes of ``card["labels"]``): what the metrics and
            the report are, and, for multi-label, the decision thresholds, tuned on validation after training
            (unless ``threshold`` fixes them), used for the validation and test metrics and recorded; for
            regression, the target scale, folded into the saved head so that it outputs the targets' units.
        threshold: one multi-label threshold for every label (``None``: tuned).
        extra_metrics: ``evaluate`` metrics to add (names or script paths), loaded before anything trains.
        confidence_level: the level of the intervals given to each split's headline metrics
            (``<split>_<metric>_ci_low`` / ``_ci_high``, :mod:`warmstart.uncertainty`).
        calibration: ``temperature``: fit a temperature on validation and fold it into the saved head
            (:mod:`warmstart.calibration`); ``none``. Every classification split reports its ``ece``.
        evaluate_only: train nothing: the model as given is evaluated and saved.
        ema_decay: keep an exponential moving average of the trained weights (:class:`warmstart.averaging.
            WeightAverage`), evaluated on validation beside the raw weights after training; the better is kept and
            saved (``ema_kept`` and both scores in the results, ``weight_average`` in the config).
        ema_warmup: warm the average's decay up (:func:`warmstart.averaging.ema_decay_at`).

    Returns:
        All metrics, as in ``all_results.json``.
    """
    report = tuning.report
    labels = labels or LabelSpace(SINGLE_LABEL, list(card.get("labels") or []))
    problem = labels.problem
    extra = load_extra_metrics(extra_metrics)  # before anything trains: a metric that cannot load stops the run now
    check_calibration(calibration, labels.problem_type)
    temperature = raw_validation = None

    def scoring(thresholds: Sequence[float] | None = None) -> Callable:
        return metrics_for(
            labels, extra, thresholds=thresholds, world_size=training_args.world_size, loss_function=compute_loss_func
        )

    # what the raw weights and their average are judged by on validation: the metric the run keeps its best by
    judged_metric = (training_args.metric_for_best_model or problem.headline).removeprefix("eval_")

    def judge(output: Any) -> float:
        metrics = dict(output.metrics)
        if problem.thresholds:  # each at its own tuned thresholds, as the kept one will be scored
            chosen = [threshold] * labels.num_outputs if threshold is not None else None
            chosen = chosen or tune_thresholds(logits_of(output), output.label_ids)
            rescored = scoring(chosen)(EvalPrediction(output.predictions, output.label_ids))
            metrics.update({f"eval_{k}": v for k, v in rescored.items() if k != "loss"})
        return metrics[f"eval_{judged_metric}"]

    logger.info("policy %s; %s", policy.describe(), report.summary())
    if training_args.should_save:
        run.output_dir.mkdir(parents=True, exist_ok=True)
    warn_of_per_process_batchnorm(tuning.model, policy, training_args)
    kept = avoid_single_sample_batches(tuning.model, policy, training_args, len(splits["train"]))
    if kept is not None:
        splits = {**splits, "train": splits["train"].select(kept)}
        if feature_cache is not None and feature_cache.source_splits is not None:
            source = feature_cache.source_splits
            feature_cache.source_splits = {**source, "train": source["train"].select(kept)}
    trained = tuning.model
    cached = _cache_backbone_features(run, tuning.model, splits, feature_cache, training_args)
    fit = None
    if policy.probe_solver == "lbfgs" and not evaluate_only:
        fit = _solved_probe(run, tuning.model, cached, policy, probe or ProbeOptions(), training_args.seed)
        if fit is None:  # head_only by default, on a head the solver cannot take: the Trainer trains it
            policy = dataclasses.replace(policy, probe_solver="trainer")
    solved_only = fit is not None and not policy.spec.trains_backbone and not policy.probe_train_rest
    if fit is not None and policy.spec.trains_backbone:
        pass  # the probe is solved: the full model fine-tunes on the inputs from the first step
    elif cached is not None and policy.spec.trains_backbone:
        # the probe trains the head on the features, then the schedule unfreezes the backbone and the full model
        # trains on the inputs, in one Trainer run (one schedule, one optimizer, one set of checkpoints)
        trained = ProbeThenFull(tuning.model, cached)
        splits = {name: WithCachedFeatures(splits[name], table) for name, table in cached.splits.items()}
        data_collator = CachedFeatureCollator(data_collator or default_data_collator)
        # the wrapper's signature does not name the model's inputs
        change_training(training_args, "the LP-FT wrapper", remove_unused_columns=False)
    elif cached is not None:
        trained, splits, data_collator = cached.head, cached.splits, default_data_collator
        # features have one size: nothing to group by length, and nothing for a collator to pad; a row is a slice
        # of a tensor, with nothing for loader workers to decode; and the head has no activations worth
        # checkpointing (the head model has no layers to checkpoint)
        sampling = "random" if training_args.train_sampling_strategy == "group_by_length" else None
        change_training(
            training_args,
            "the head trains on cached features",
            train_sampling_strategy=sampling or training_args.train_sampling_strategy,
            dataloader_num_workers=0,
            activation_checkpointing=False,
        )
    # a NaN loss must show in the log, where the run stops on it
    change_training(training_args, "non-finite losses are shown", logging_nan_inf_filter=False)
    training_args = run.plan.resolve()  # every decision is made: the Trainer's arguments, built once
    resume = None if evaluate_only or solved_only else resume_point(training_args)
    average = weight_average(run.plan, tuning.model, ema_decay, ema_warmup, resume, evaluate_only or solved_only)
    trainer = Trainer(
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=data_collator,
        processing_class=processing_class,
        compute_metrics=scoring(),
        compute_loss_func=compute_loss_func,
        **{
            **tuning.trainer_kwargs(),
            "model": trained,
            "callbacks": [
                *tuning.callbacks,
                *callbacks,
                StopOnNonFiniteLoss(),
                LogBeforeEvaluationAndAtTheEnd(),
                *([average] if average is not None else []),
            ],
        },
    )
    guard_checkpoints(trainer, checkpoint_bytes(tuning.model))
    if average is not None and shards_weights(trainer):
        raise WarmstartError(
            "--ema_decay averages whole weights, and this launch shards them across processes (FSDP / ZeRO-3): "
            "drop --ema_decay, or launch without sharding"
        )
    run.plan.decide("param_groups", tuning.groups_as_dicts())
    try:
        if evaluate_only:
            results: dict[str, Any] = {"evaluate_only": True}
        elif solved_only:  # nothing left to train: the solve was the training
            results = {
                "train_runtime": fit.seconds,
                "train_samples_per_second": round(fit.examples / max(fit.seconds, 1e-9), 3),
                "train_loss": fit.train_loss,
            }
        else:
            results = dict(trainer.train(resume_from_checkpoint=resume).metrics)
        if fit is not None:
            results.update(probe_c=fit.c, probe_seconds=fit.seconds)
        if not evaluate_only:
            results["train_samples"] = len(splits["train"])
        results.update(trainable_params=report.trainable_params, total_params=report.total_params)
        if cached is not None:  # before the Trainer's clock (train_runtime) started
            results["feature_cache_seconds"] = round(cached.seconds, 3)
        files = {}
        if not evaluate_only:
            trainer.log_metrics("train", results)
            files["train"] = dict(results)  # written with the model, when it is saved

        predicted, chosen = {}, None
        if average is not None:
            chosen, record = choose_average(
                trainer, average, splits["validation"], judge, greater_is_better(judged_metric)
            )
            record["metric"] = f"eval_{judged_metric}"
            souped = run.plan.decisions.get("weight_average")  # --average_with, trained on: both are recorded
            run.plan.decide("weight_average", {**record, "started_from": souped} if souped else record)
            results.update(
                ema_kept=record["kept"] == "ema",
                **{f"{kind}_eval_{judged_metric}": record[f"score_{kind}"] for kind in ("raw", "ema")},
            )
            card = {**card, "weights": " ".join(filter(None, [card.get("weights"), average_markdown(record)]))}
            logger.info(
                "weight average (EMA, decay %g, %d updates): eval_%s %.4g vs %.4g raw: the %s weights are kept",
                record["decay"], record["updates"], judged_metric, record["score_ema"], record["score_raw"],
                "averaged" if record["kept"] == "ema" else "raw",
            )  # fmt: skip
        for split in ("validation", "test"):
            if split not in splits:
                continue
            prefix = "eval" if split == "validation" else "test"
            # predict, not evaluate: the same metrics, and the predictions for the report's plots
            if split == "validation" and chosen is not None:
                output = chosen  # predicted while the average was judged
            else:
                output = trainer.predict(splits[split], metric_key_prefix=prefix)
            metrics = dict(output.metrics)
            if problem.thresholds and split == "validation":
                # decided on validation's predictions, then every split is scored at them (validation's F1 is then
                # the tuned one; test's is not tuned on)
                labels.thresholds = decide_thresholds(output, labels, threshold)
                trainer.compute_metrics = scoring(labels.thresholds)
                rescored = trainer.compute_metrics(EvalPrediction(output.predictions, output.label_ids))
                metrics.update({f"{prefix}_{k}": v for k, v in rescored.items() if k != "loss"})
                run.plan.decide("targets", labels.to_dict())
            if calibration == "temperature" and split == "validation":
                temperature, raw_validation = calibrate(run, labels, output), output
            metrics.update(calibration_metrics(output, labels, temperature, prefix))
            if temperature is not None:  # the saved model's logits (at the moved thresholds): intervals, reports
                output = output._replace(predictions=logits_of(output) / temperature)
            metrics.update(interval_metrics(output, labels, confidence_level, prefix))
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
        files["all"] = {**results, "freeze_policy": policy.to_dict(), **report.to_dict()}
        with staged_output(run.output_dir, tuning.model) as staging:
            model = tuning.model
            if policy.spec.wraps_model:
                if save_adapter:
                    save_lora_adapter(model, staging / "adapter")
                model = merge_lora(model)
            reports = [
                report_split(
                    staging, labels, output, trainer.state.log_history, training_args.metric_for_best_model, split
                )
                for split, output in predicted.items()
            ]
            if labels.scale is not None:  # the saved head outputs the targets' units: pipeline() needs no scale
                fold_target_scale(model, *labels.scale)
            calibrated = apply_calibration(staging, model, labels, temperature, raw_validation)
            card = {
                **card,
                **({"probe": fit.markdown()} if fit is not None else {}),
                **({"thresholds": dict(zip(labels.names, labels.thresholds))} if labels.thresholds else {}),
                "policy": policy.to_dict(),
                "policy_description": policy.describe(),
                "freeze_report": report.to_dict(),
                "per_class": "\n\n".join(markdown for _, markdown in reports),
                "images": [image for images, _ in reports for image in images] + calibrated,
            }
            write_output(run, staging, model, save_model, card, results, files, trainer)
        finish_output(run)
    return results


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
        run.plan.decide("feature_cache", {"used": False, "reason": str(declined)})
        return None
    record = run.plan.decisions.setdefault("feature_cache", {"used": True})
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
    explicit = run.plan.decisions.get("probe", {}).get("asked") is not None  # --probe_solver given
    if cached is None:
        problem = run.plan.decisions.get("feature_cache", {}).get("reason", "the features are not cached")
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
        if explicit or policy.spec.trains_backbone:
            raise WarmstartError(
                f"the probe cannot be solved: {problem}: use --probe_solver trainer"
                + (" --probe_epochs N" if policy.spec.trains_backbone else "")
            )
        logger.warning("the probe is not solved (%s): the Trainer trains the head", problem)
        run.plan.decide("probe", {"solver": "trainer", "reason": f"not solvable: {problem}"})
        return None
    fit, state = shared
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state:
                param.copy_(state[name].to(param.device))
    logger.info("%s", fit.summary())
    run.plan.decisions["probe"].update(fit.to_dict())
    return fit
