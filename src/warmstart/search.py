"""Hyperparameter search with optuna over whole recipe runs: each trial is one run of the recipe with sampled
learning rate, batch size, ``unfreeze_top_k``, ``layer_lr_decay`` and weight decay (within the ranges of
``--hparam_space``), pruned early on its intermediate evaluations; the best run is kept, and its configuration
written as a YAML file the recipe takes.

Why not ``Trainer.hyperparameter_search``: it rebuilds the model through ``model_init`` and refuses an optimizer
given to the Trainer, while warmstart's policies give one (parameter groups for discriminative learning rates and
layer-wise decay, blocks an unfreezing schedule adds later), and ``unfreeze_top_k`` changes which parameters
train at all. A trial here is a whole run, so every policy, the feature cache and the report work as in any run;
pruning reports each evaluation to optuna as the Trainer's integration does.

The study is stored in ``<output_dir>/search.db`` (SQLite): a rerun after a crash goes on with the trials left. A
trial the crash interrupted (left running in the study) is recorded as failed; with ``--resume_from_checkpoint auto``
it runs again, with the same values, from the latest complete checkpoint it saved.

Under a multi-process launch (``torchrun``) every process runs each trial (a DDP run of the recipe), while the main
process alone asks optuna for the trials, tells it their outcomes and writes the search's files: it broadcasts each
trial's values, and each pruning decision, to the others.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from warmstart.config import RunConfig
from warmstart.config.sections import INTEGER_HYPERPARAMETERS
from warmstart.distributed import (
    barrier,
    broadcast_from_main,
    ensure_process_group,
    is_main_process,
    on_main_process,
)
from warmstart.errors import WarmstartError
from warmstart.export import copy_run_output, markdown_table, refuse_foreign_model
from warmstart.folder_lock import locked_folder
from warmstart.peers import watched_peers
from warmstart.preemption import Preempted, preemptible
from warmstart.problems import GREATER_IS_BETTER as GREATER
from warmstart.problems import SINGLE_LABEL, greater_is_better, problem_named
from warmstart.run_folder import checkpoint_step, checkpoints, is_complete_checkpoint
from warmstart.tasks import run

logger = logging.getLogger(__name__)

BEST_CONFIG = "best_config.yaml"
# flags the search sets per trial, or that say how this run of the search goes: not part of the search's settings
_SEARCH_FLAGS = ("hparam_search", "n_trials", "hparam_space", "resume_from_checkpoint")


def sample(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """One trial's values from the space (optuna's ``suggest_*``)."""
    values = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            values[name] = trial.suggest_categorical(name, spec)
        elif name in INTEGER_HYPERPARAMETERS:
            values[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        else:
            values[name] = trial.suggest_float(
                name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log"))
            )
    return values


class PruneOnEvaluation(TrainerCallback):
    """Reports each evaluation's metric to an optuna trial and stops the run when the pruner says so.

    Under a multi-process launch only the main process holds the trial (``trial`` is ``None`` in the others): it
    decides, and the decision is broadcast, so that every process stops at the same step (they all evaluate at the
    same points, on the same gathered predictions).
    """

    def __init__(self, trial: Any | None, metric_key: str):
        self.trial, self.metric_key, self.pruned = trial, metric_key, False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.metric_key)
        if value is None:
            return
        # the evaluation's number, not the optimizer step: trials with other batch sizes take other step counts,
        # and the pruner compares trials at the same step. Counted in the log history, which holds this evaluation
        # already and which a run resumed from a checkpoint restores, where a counter would start again at 1
        number = evaluations(state.log_history, self.metric_key)
        prune = False
        if self.trial is not None:
            self.trial.report(float(value), step=number)
            prune = self.trial.should_prune()
        if broadcast_from_main(prune):
            self.pruned = True
            control.should_training_stop = True


def evaluations(log_history: Sequence[dict[str, Any]], metric_key: str) -> int:
    """How many evaluations a Trainer's ``log_history`` holds: its entries with ``metric_key``."""
    return sum(metric_key in entry for entry in log_history)


def run_search(config: RunConfig, *, runner: Callable[..., dict[str, Any]] = run) -> dict[str, Any]:
    """Runs the search ``config.search`` asks for: ``n_trials`` variants of ``config`` (the sampled values
    changed), each run by ``runner`` into ``<output_dir>/trials``; keeps the best in ``--output_dir`` and writes
    ``search_results.csv``, ``search_results.md`` and ``best_config.yaml``.

    A rerun goes on with the trials left. A trial an earlier run left unfinished (killed) is recorded as failed;
    with ``--resume_from_checkpoint auto`` it runs again with the same values, from the latest complete checkpoint in
    its folder. Under a multi-process launch every process runs every trial and returns the results, and the main
    process alone keeps the study and writes the files.

    Args:
        config: the configuration the trials vary (its ``metric_for_best_model`` is maximised, a loss minimised;
            its seed seeds optuna's sampler).
        runner: runs one trial's configuration, ``runner(config, callbacks=...)`` (:func:`warmstart.run`).

    Returns:
        The best trial's results, with ``best_trial`` and ``best_params``.

    Raises:
        WarmstartError: optuna is not installed, ``--resume_from_checkpoint`` names one checkpoint, the output
            directory holds another model or a search with other settings or another run is writing into it, or no
            trial finished.
    """
    output_dir, writes = config.training.output_dir, is_main_process()
    # between its runs a signal stops it at once (a run stops after its step, with a checkpoint)
    with (
        locked_folder(output_dir, "a search", enabled=writes),
        preemptible(output_dir, config.performance.preempt_exit_code, writes=writes),
        watched_peers(output_dir, config.performance.peer_timeout),
    ):
        return _search(config, runner)


def _search(config: RunConfig, runner: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    output_dir = Path(config.training.output_dir)
    refuse_foreign_model(output_dir, "search.db", "a search", config.model.overwrite_output_dir)
    search, seed = config.search, config.training.seed
    # default: the headline metric of the label shape asked for (the search needs it before any data is read)
    metric = config.training.metric_for_best_model or problem_named(config.data.problem_type or SINGLE_LABEL).headline
    try:
        import optuna
    except ImportError:
        raise WarmstartError("--hparam_search optuna needs optuna: pip install 'warmstart[hpo]'") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the progress lines below say what happens
    key = f"eval_{metric.removeprefix('eval_')}"
    given = config.given
    resume = given.get("resume_from_checkpoint") == "auto"
    if given.get("resume_from_checkpoint") not in (None, "auto"):
        # one checkpoint cannot start runs of other batch sizes and learning rates
        raise WarmstartError(
            f"--resume_from_checkpoint {given['resume_from_checkpoint']} with --hparam_search: give auto, which "
            "resumes the trials an interrupted search left from their own checkpoints"
        )
    base = {k: v for k, v in given.items() if k not in _SEARCH_FLAGS}
    space = search.space()
    # a rerun goes on with the same search only: other data, budget, space or metric would mix incomparable trials
    settings = json.dumps(
        {"argv": {k: v for k, v in base.items() if k != "output_dir"}, "space": space, "metric": key},
        sort_keys=True,
        default=str,
    )
    ensure_process_group()  # the processes agree on the first trial before any Trainer sets the group up
    study, storage = on_main_process(lambda: _open_study(optuna, output_dir, settings, key, seed)) or (None, None)
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

    def left() -> int:
        return search.n_trials - sum(t.state in counted for t in study.trials)

    if is_main_process():
        _settle_interrupted(optuna, study, storage, output_dir, key, resume=resume)
        finished = search.n_trials - left()
        if finished:
            print(f"search: {finished} of {search.n_trials} trials finished earlier; {max(left(), 0)} to go")

    stop = False
    while True:
        trial, plan = None, None
        if is_main_process() and not stop and left() > 0:
            trial = study.ask()  # a trial waiting to run again first, with its values
            plan = _plan_trial(trial, space, output_dir, resume=resume)
        plan = broadcast_from_main(plan)
        if plan is None:
            break
        _run_trial(optuna, study, trial, plan, config, runner, key)
        if is_main_process():
            failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
            # the space keeps producing runs that cannot train: stop rather than loop (an interrupted trial is no sign)
            stop = sum(not t.user_attrs.get("interrupted") for t in failed) >= 2 * search.n_trials
    results = broadcast_from_main(on_main_process(lambda: _keep_results(optuna, study, base, key, output_dir)))
    barrier()  # the outputs are written when any process returns
    return results


def _open_study(optuna: Any, output_dir: Path, settings: str, key: str, seed: int) -> tuple[Any, Any]:
    """The search's study in ``output_dir/search.db`` (new, or the one of this same search) and its storage.

    Raises:
        WarmstartError: ``output_dir`` holds a search with other settings.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(output_dir / 'search.db').resolve()}")
    study = optuna.create_study(
        study_name="warmstart",
        storage=storage,
        load_if_exists=True,
        direction="maximize" if greater_is_better(key) else "minimize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
    )
    # a rerun's sampler seeded as the first run's would draw the first run's values again, for trials already run
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    recorded = study.user_attrs.get("settings")
    if recorded is None:
        study.set_user_attr("settings", settings)
    elif recorded != settings:
        raise WarmstartError(
            f"--output_dir {output_dir} holds a search with other settings (arguments, --hparam_space or metric): "
            "choose another --output_dir to start a new search"
        )
    return study, storage


def _trial_dir(output_dir: Path, number: int) -> Path:
    return output_dir / "trials" / f"trial-{number:03d}"


def _settle_interrupted(optuna: Any, study: Any, storage: Any, output_dir: Path, key: str, *, resume: bool) -> None:
    """Records the trials an earlier run left running (its process was killed: a study serves one search at a time)
    as failed, with the user attribute ``interrupted``; with ``resume``, queues each to run again with the same
    values, from its latest complete checkpoint (user attribute ``resume_from``) or from the start."""
    study_id = storage.get_study_id_from_name(study.study_name)
    for old in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, old.number)
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        study.tell(old.number, state=optuna.trial.TrialState.FAIL)
        if not resume:
            print(
                f"search: trial {old.number} was interrupted: recorded as failed (with --resume_from_checkpoint "
                "auto it would run again)"
            )
            continue
        checkpoint = _latest_checkpoint(old, output_dir)
        attrs: dict[str, Any] = {"resumes_trial": old.number}
        done = 0
        if checkpoint is not None:
            attrs["resume_from"] = str(checkpoint)
            done = evaluations(json.loads((checkpoint / "trainer_state.json").read_text())["log_history"], key)
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING,
                params=old.params,
                distributions=old.distributions,
                user_attrs=attrs,
                # the evaluations the checkpoint holds: the pruner sees the whole curve, and the resumed run reports
                # the evaluations after it, under the same numbers
                intermediate_values={step: v for step, v in old.intermediate_values.items() if step <= done},
            )
        )
        where = f"from {checkpoint}" if checkpoint is not None else "from the start (it saved no checkpoint)"
        print(f"search: trial {old.number} was interrupted: it runs again with the same values, {where}")


def _latest_checkpoint(trial: Any, output_dir: Path) -> Path | None:
    """The latest complete checkpoint of an interrupted trial: in its folder, or the one it resumed from itself."""
    found = checkpoints(_trial_dir(output_dir, trial.number))
    earlier = trial.user_attrs.get("resume_from")
    if earlier and is_complete_checkpoint(Path(earlier)):
        found.append(Path(earlier))
    return max(found, key=checkpoint_step, default=None)


def _plan_trial(trial: Any, space: dict[str, Any], output_dir: Path, *, resume: bool) -> dict[str, Any]:
    """What every process needs to run ``trial``: its number, values, folder and the checkpoint it resumes from."""
    values = sample(trial, space)
    run_dir = _trial_dir(output_dir, trial.number)
    trial.set_user_attr("output_dir", str(run_dir))
    # a folder of this number left by an earlier search (its search.db deleted): its checkpoints would be taken for
    # this trial's if it were interrupted
    for stale in checkpoints(run_dir, complete=False):
        shutil.rmtree(stale)
    resume_from = trial.user_attrs.get("resume_from") if resume else None
    if resume_from is not None:
        interrupted = trial.user_attrs["resumes_trial"]
        print(f"[trial {trial.number}] {_shown(values)}: resumes interrupted trial {interrupted} from {resume_from}")
    return {"number": trial.number, "values": values, "output_dir": str(run_dir), "resume_from": resume_from}


def _shown(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


def _run_trial(
    optuna: Any,
    study: Any,
    trial: Any | None,
    plan: dict[str, Any],
    config: RunConfig,
    runner: Callable[..., dict[str, Any]],
    key: str,
) -> None:
    """Runs one trial of the plan, in every process; the main process (holding ``trial``) tells optuna how it went.

    A trial that raises anything but a :class:`WarmstartError` is recorded as failed and the error raised, as
    optuna's ``optimize`` does; one interrupted (Ctrl-C) stays running, for the next run to resume or record.
    """
    number, values = plan["number"], plan["values"]
    pruning = PruneOnEvaluation(trial, key)
    # a fresh trial starts from the start, whatever --resume_from_checkpoint the search was given; hparam_search none
    # last: a trial trains once, whatever spelling the search was asked with
    changes = {
        **values,
        "output_dir": plan["output_dir"],
        "overwrite_output_dir": True,
        "resume_from_checkpoint": plan["resume_from"],
        "hparam_search": "none",
    }
    failed = optuna.trial.TrialState.FAIL
    try:
        results = runner(config.with_values(**changes), callbacks=[pruning])
    except Preempted:  # the trial stays running, for the next run to resume (--resume_from_checkpoint auto)
        raise
    except WarmstartError as err:  # these values do not work here (e.g. more blocks than the model has)
        if trial is not None:
            print(f"[trial {number}] {_shown(values)}: failed: {err}")
            study.tell(trial, state=failed)  # and the search goes on
        return
    except Exception:
        if trial is not None:
            study.tell(trial, state=failed)
        raise
    if not pruning.pruned and key not in results:
        if trial is not None:
            study.tell(trial, state=failed)
        reported = ", ".join(k.removeprefix("eval_") for k in results if k.startswith("eval_") and k[5:] in GREATER)
        raise WarmstartError(
            f"the search is judged by {key}, which the run does not report: give --metric_for_best_model, one of "
            f"{reported} (or --problem_type, whose headline metric is the default)"
        )
    if trial is None:
        return
    if pruning.pruned:
        print(f"[trial {number}] {_shown(values)}: pruned at {key} {results.get(key, float('nan')):.4f}")
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        print(f"[trial {number}] {_shown(values)}: {key} {results[key]:.4f}")
        study.tell(trial, float(results[key]))


def _keep_results(optuna: Any, study: Any, base: dict[str, Any], key: str, output_dir: Path) -> dict[str, Any]:
    """Writes the search's results and keeps its best run in ``output_dir``; returns the best run's results.

    Raises:
        WarmstartError: no trial finished.
    """
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise WarmstartError("no trial of the search finished (all pruned or failed): widen --hparam_space")
    best = study.best_trial
    rows = [
        {
            "trial": t.number,
            "state": "interrupted" if t.user_attrs.get("interrupted") else t.state.name.lower(),
            key: t.value,
            **t.params,
        }
        for t in study.trials
        if t.state.is_finished()
    ]
    _write_results(rows, key, best.number, output_dir)
    best_config = {**base, **best.params, "output_dir": f"{output_dir}-best"}
    (output_dir / BEST_CONFIG).write_text(
        "# the best configuration of the search in " + str(output_dir) + f" ({key} {best.value:.4f}); run it with\n"
        "#   <recipe>.py " + BEST_CONFIG + " [--output_dir ...]\n" + yaml.safe_dump(best_config, sort_keys=False)
    )
    _keep_best(Path(best.user_attrs["output_dir"]), output_dir, rows, key, best.number)
    results = json.loads((output_dir / "all_results.json").read_text())
    return {**results, "best_trial": best.number, "best_params": best.params}


def _write_results(rows: list[dict[str, Any]], key: str, best: int, output_dir: Path) -> None:
    import csv

    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (output_dir / "search_results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (output_dir / "search_results.md").write_text(search_table(rows, columns, best) + "\n")


def search_table(rows: list[dict[str, Any]], columns: list[str], best: int) -> str:
    """The trials as a markdown table, the best in bold."""
    marked = next((row for row in rows if row["trial"] == best), None)
    return markdown_table(rows, [(c, c) for c in columns], best=marked)


def _keep_best(source: Path, output_dir: Path, rows: list[dict[str, Any]], key: str, best: int) -> None:
    copy_run_output(source, output_dir)
    card = output_dir / "README.md"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    card.write_text(
        card.read_text().rstrip()
        + f"\n\n## Hyperparameter search\nThe best of {len(rows)} trials by `{key}` (optuna, TPE sampler, median "
        f"pruning): trial {best}.\n\n{search_table(rows, columns, best)}\n"
    )
