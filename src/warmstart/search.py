"""Hyperparameter search with optuna over whole recipe runs: each trial is one run of the recipe with sampled
learning rate, batch size, ``unfreeze_top_k``, ``layer_lr_decay`` and weight decay (within the ranges of
``--hparam_space``), pruned early on its intermediate evaluations; the best run is kept, and its configuration
written as a YAML file the recipe takes.

Why not ``Trainer.hyperparameter_search``: it rebuilds the model through ``model_init`` and refuses an optimizer
given to the Trainer, while warmstart's policies give one (parameter groups for discriminative learning rates and
layer-wise decay, blocks an unfreezing schedule adds later), and ``unfreeze_top_k`` changes which parameters
train at all. A trial here is a whole run, so every policy, the feature cache and the report work as in any run;
pruning reports each evaluation to optuna as the Trainer's integration does.

The study is stored in ``<output_dir>/search.db`` (SQLite): a rerun after a crash goes on with the trials left.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from transformers import TrainerCallback

from warmstart.arguments import CONFIG_FILE_SUFFIXES, mapping_to_argv, read_config_file, underscored
from warmstart.errors import WarmstartError

logger = logging.getLogger(__name__)

SEARCHABLE = ("learning_rate", "per_device_train_batch_size", "unfreeze_top_k", "layer_lr_decay", "weight_decay")
_INTEGERS = ("per_device_train_batch_size", "unfreeze_top_k")
DEFAULT_SPACE = {
    "learning_rate": {"low": 1e-5, "high": 1e-2, "log": True},
    "weight_decay": {"low": 0.0, "high": 0.1},
}
BEST_CONFIG = "best_config.yaml"


@dataclass
class SearchArguments:
    hparam_search: Literal["none", "optuna"] = field(
        default="none", metadata={"help": "optuna: search hyperparameters over --n_trials runs, keep the best."}
    )
    n_trials: int = field(default=10, metadata={"help": "Runs of the search (at least 1)."})
    hparam_space: str | None = field(
        default=None,
        metadata={
            "help": "Ranges to search, as JSON / a mapping in the config file: a name of learning_rate, "
            "per_device_train_batch_size, unfreeze_top_k, layer_lr_decay, weight_decay, to {low, high[, log]} or a "
            'list of choices, e.g. {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": true}, '
            '"per_device_train_batch_size": [16, 32]} (default: learning rate 1e-5..1e-2 log, weight decay 0..0.1).'
        },
    )

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise WarmstartError(f"--n_trials must be at least 1, got {self.n_trials}")
        check_space(self.space())

    def space(self) -> dict[str, Any]:
        """The ranges to search: ``--hparam_space`` (JSON, or a mapping in the config file), or the default."""
        if not self.hparam_space:
            return dict(DEFAULT_SPACE)
        try:
            return json.loads(self.hparam_space)
        except json.JSONDecodeError as err:
            raise WarmstartError(f"--hparam_space is not JSON ({err.msg}): give a mapping of ranges") from None


def check_space(space: Any) -> None:
    """Refuses a search space with an unknown name, a range with min > max, a log range through zero, or an
    empty list of choices.

    Raises:
        WarmstartError: what is wrong, and with which name.
    """
    if not isinstance(space, dict) or not space:
        raise WarmstartError("--hparam_space must map hyperparameter names to ranges or lists of choices")
    for name, spec in space.items():
        if name not in SEARCHABLE:
            raise WarmstartError(f"--hparam_space: {name!r} cannot be searched; use {', '.join(SEARCHABLE)}")
        if isinstance(spec, list):
            if not spec:
                raise WarmstartError(f"--hparam_space {name}: the list of choices is empty")
            continue
        if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "log"}:
            raise WarmstartError(f"--hparam_space {name}: give {{low, high}} (and log: true), or a list of choices")
        low, high = spec["low"], spec["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            raise WarmstartError(f"--hparam_space {name}: low and high must be numbers, got {low!r} and {high!r}")
        if low > high:
            raise WarmstartError(f"--hparam_space {name}: min {low:g} is above max {high:g}")
        if spec.get("log") and low <= 0:
            raise WarmstartError(f"--hparam_space {name}: a log range needs low > 0, got {low:g}")
        if name in _INTEGERS and not (float(low).is_integer() and float(high).is_integer()):
            raise WarmstartError(f"--hparam_space {name}: an integer range, got {low:g}..{high:g}")


def sample(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """One trial's values from the space (optuna's ``suggest_*``)."""
    values = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            values[name] = trial.suggest_categorical(name, spec)
        elif name in _INTEGERS:
            values[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        else:
            values[name] = trial.suggest_float(
                name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log"))
            )
    return values


class PruneOnEvaluation(TrainerCallback):
    """Reports each evaluation's metric to an optuna trial and stops the run when the pruner says so."""

    def __init__(self, trial: Any, metric_key: str):
        self.trial, self.metric_key, self.pruned = trial, metric_key, False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.metric_key)
        if value is None:
            return
        # the evaluation's number, not the optimizer step: trials with other batch sizes take other step counts,
        # and the pruner compares trials at the same step
        self.evaluations = getattr(self, "evaluations", 0) + 1
        self.trial.report(float(value), step=self.evaluations)
        if self.trial.should_prune():
            self.pruned = True
            control.should_training_stop = True


def argv_as_mapping(argv: Sequence[str]) -> dict[str, Any]:
    """A command line (after an optional config file) as the mapping a config file holds: ``--a 1 --b x y`` ->
    ``{"a": "1", "b": ["x", "y"]}``."""
    argv = list(argv)
    values: dict[str, Any] = {}
    if argv and argv[0].endswith(CONFIG_FILE_SUFFIXES) and not argv[0].startswith("-"):
        values.update({str(k).replace("-", "_"): v for k, v in read_config_file(argv.pop(0)).items()})
    key = None
    for token in underscored(argv):
        if token.startswith("--"):
            key, _, inline = token[2:].partition("=")
            values[key] = inline if inline else True
        elif key is not None:
            current = values[key]
            values[key] = (
                token if current is True else [*current, token] if isinstance(current, list) else [current, token]
            )
    return values


def run_search(
    search: SearchArguments,
    argv: Sequence[str],
    recipe: Callable[..., dict[str, Any]],
    output_dir: Path,
    *,
    metric: str,
    seed: int,
) -> dict[str, Any]:
    """Runs the search: ``search.n_trials`` runs of ``recipe`` (its ``main``) into ``output_dir/trials``, keeps
    the best in ``output_dir`` and writes ``search_results.csv``, ``search_results.md`` and ``best_config.yaml``.

    Args:
        search: the search arguments.
        argv: the recipe's command line, as given (the search flags are replaced per trial).
        recipe: ``main(argv, callbacks=...)`` of the recipe.
        output_dir: the search's directory.
        metric: ``metric_for_best_model`` (``eval_`` prefix optional); a loss is minimised.
        seed: seeds optuna's sampler.

    Returns:
        The best trial's results, with ``best_trial`` and ``best_params``.

    Raises:
        WarmstartError: optuna is not installed, or no trial finished.
    """
    try:
        import optuna
    except ImportError:
        raise WarmstartError("--hparam_search optuna needs optuna: pip install 'warmstart[hpo]'") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the progress lines below say what happens
    key = f"eval_{metric.removeprefix('eval_')}"
    base = {k: v for k, v in argv_as_mapping(argv).items() if k not in ("hparam_search", "n_trials", "hparam_space")}
    space = search.space()
    direction = "minimize" if "loss" in key else "maximize"
    output_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name="warmstart",
        storage=f"sqlite:///{(output_dir / 'search.db').resolve()}",
        load_if_exists=True,
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
    )
    # a rerun goes on with the same search only: other data, budget, space or metric would mix incomparable trials
    settings = json.dumps(
        {"argv": {k: v for k, v in base.items() if k != "output_dir"}, "space": space, "metric": key},
        sort_keys=True,
        default=str,
    )
    recorded = study.user_attrs.get("settings")
    if recorded is None:
        study.set_user_attr("settings", settings)
    elif recorded != settings:
        raise WarmstartError(
            f"--output_dir {output_dir} holds a search with other settings (arguments, --hparam_space or metric): "
            "choose another --output_dir to start a new search"
        )
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = [t for t in study.trials if t.state in counted]
    left = search.n_trials - len(finished)
    if finished:
        print(f"search: {len(finished)} of {search.n_trials} trials finished earlier; {max(left, 0)} to go")

    def objective(trial: Any) -> float:
        values = sample(trial, space)
        run_dir = output_dir / "trials" / f"trial-{trial.number:03d}"
        pruning = PruneOnEvaluation(trial, key)
        # hparam_search none last: a trial trains once, whatever spelling the search was asked with
        args = {**base, **values, "output_dir": str(run_dir), "overwrite_output_dir": True, "hparam_search": "none"}
        trial.set_user_attr("output_dir", str(run_dir))
        shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        try:
            results = recipe(mapping_to_argv(args), callbacks=[pruning])
        except WarmstartError as err:  # these values do not work here (e.g. more blocks than the model has)
            print(f"[trial {trial.number}] {shown}: failed: {err}")
            return float("nan")  # optuna records a failed trial and goes on
        if pruning.pruned:
            print(f"[trial {trial.number}] {shown}: pruned at {key} {results.get(key, float('nan')):.4f}")
            raise optuna.TrialPruned()
        if key not in results:
            raise WarmstartError(f"--metric_for_best_model: the run reports no {key}")
        print(f"[trial {trial.number}] {shown}: {key} {results[key]:.4f}")
        return float(results[key])

    while left > 0:
        study.optimize(objective, n_trials=1, catch=())
        left = search.n_trials - sum(t.state in counted for t in study.trials)
        if sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials) >= 2 * search.n_trials:
            break  # the space keeps producing runs that cannot train: stop rather than loop
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise WarmstartError("no trial of the search finished (all pruned or failed): widen --hparam_space")
    best = study.best_trial
    rows = [
        {"trial": t.number, "state": t.state.name.lower(), key: t.value, **t.params}
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
    from warmstart.export import markdown_table

    marked = next((row for row in rows if row["trial"] == best), None)
    return markdown_table(rows, [(c, c) for c in columns], best=marked)


def _keep_best(source: Path, output_dir: Path, rows: list[dict[str, Any]], key: str, best: int) -> None:
    from warmstart.export import copy_run_output

    copy_run_output(source, output_dir)
    card = output_dir / "README.md"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    card.write_text(
        card.read_text().rstrip()
        + f"\n\n## Hyperparameter search\nThe best of {len(rows)} trials by `{key}` (optuna, TPE sampler, median "
        f"pruning): trial {best}.\n\n{search_table(rows, columns, best)}\n"
    )
