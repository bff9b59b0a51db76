"""Planning a comparison: which runs it makes, one per strategy and learning rate, from ``--strategies`` /
``--learning_rates`` and the configuration the runs share.

Parameter-efficient methods need 10-100x the rate of full fine-tuning, so one rate for all would compare most of
them untrained. Without ``--learning_rates`` each strategy sweeps its own grid, its default rate
(:func:`warmstart.freezing.default_learning_rate`) times :data:`~warmstart.freezing.DEFAULT_LR_SWEEP` (a decade
around it), and is compared at its best; ``--learning_rates`` crosses the rates given with every strategy;
``--learning_rate`` alone is one rate shared by all. A ``head_only`` whose head is solved (L-BFGS logistic
regression on the cached backbone features: see :func:`probe_is_solved`) uses no rate: it runs once, as
``head_only-lbfgs``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from warmstart.config import RunConfig
from warmstart.errors import WarmstartError
from warmstart.policy import DEFAULT_LR_SWEEP, STRATEGIES, default_learning_rate
from warmstart.problems import SINGLE_LABEL
from warmstart.tasks.classification import feature_cache_refusal

PREFERENCES = ("best", "cheaper_if_tied")
SOUPS = ("greedy", "none")


@dataclass
class ComparisonArguments:
    strategies: list[str] | None = field(
        default=None,
        metadata={
            "help": "Strategies to compare, e.g. head_only top_k:2 full lp_ft bitfit lora (top_k:K trains the top K "
            "blocks; default: those six, lora only when peft is installed)."
        },
    )
    learning_rates: list[float] | None = field(
        default=None,
        metadata={
            "help": "Learning rates to cross with every strategy (default: each strategy sweeps 0.3x, 1x and 3x its "
            "own default rate; --learning_rate alone: that one rate for all)."
        },
    )
    prefer: str = field(
        default="best",
        metadata={
            "help": "best: keep the best run by the metric; cheaper_if_tied: keep the cheapest run (fewest trainable "
            "parameters, then train time) the best is not significantly better than (at 1 - --confidence_level)."
        },
    )

    soup: str = field(
        default="greedy",
        metadata={
            "help": "greedy: average the weights of the runs that share an architecture and trainable set (a strategy "
            "at several learning rates), best first, each kept when the average is at least as good on validation (a "
            "greedy model soup); evaluated as a row of its own, kept when best. none: no soup."
        },
    )

    def __post_init__(self) -> None:
        if self.soup not in SOUPS:
            raise WarmstartError(f"--soup must be one of {', '.join(SOUPS)}, got {self.soup!r}")
        if self.prefer not in PREFERENCES:
            raise WarmstartError(f"--prefer must be one of {', '.join(PREFERENCES)}, got {self.prefer!r}")
        for spec in self.strategies or ():
            parse_strategy(spec)
        for lr in self.learning_rates or ():
            if lr <= 0:
                raise WarmstartError(f"--learning_rates must be positive, got {lr:g}")


def parse_strategy(spec: str) -> tuple[str, int | None]:
    """``top_k:3`` -> ``("top_k", 3)``; ``full`` -> ``("full", None)``; ``top_k`` alone means k = 2.

    Raises:
        WarmstartError: an unknown strategy, or a k that is not a positive integer.
    """
    name, _, k = spec.partition(":")
    if name not in STRATEGIES:
        raise WarmstartError(f"unknown strategy {name!r} in --strategies: use {', '.join(STRATEGIES)}")
    if k and name != "top_k":
        raise WarmstartError(f"--strategies {spec}: only top_k takes a number (top_k:K)")
    if name != "top_k":
        return name, None
    if not k:
        return name, 2
    if not k.isdigit() or int(k) < 1:
        raise WarmstartError(f"--strategies {spec}: K in top_k:K must be a positive integer")
    return name, int(k)


def default_strategies() -> list[str]:
    """head_only, top_k:2, full, lp_ft, bitfit, and lora when peft is installed."""
    found = ["head_only", "top_k:2", "full", "lp_ft", "bitfit"]
    return [*found, "lora"] if importlib.util.find_spec("peft") is not None else found


@dataclass
class PlannedRun:
    """One strategy at one learning rate: its name (its folder under ``runs/``) and the arguments it changes in the
    comparison's configuration, by flag name. ``learning_rate`` is ``None`` for a run that uses none (``head_only``
    with the solved probe)."""

    name: str
    strategy: str
    learning_rate: float | None
    values: dict[str, Any]


def plan_runs(
    strategies: Sequence[str],
    learning_rates: Sequence[float] | None = None,
    *,
    modality: str | None = None,
    solved_head: bool = False,
    lp_ft_probe_epochs: float | None = None,
) -> list[PlannedRun]:
    """The runs of a comparison, strategy by strategy.

    Args:
        strategies: e.g. ``["head_only", "top_k:3", "lora"]`` (see :func:`parse_strategy`).
        learning_rates: crossed with every strategy; ``None``: each strategy sweeps its own default rate times
            :data:`~warmstart.freezing.DEFAULT_LR_SWEEP` (rounded to 3 significant digits).
        modality: ``image`` or ``text``, whose default rates a sweep uses (needed without ``learning_rates``).
        solved_head: ``head_only`` fits its head without a learning rate (see :func:`probe_is_solved`): it runs once,
            as ``head_only-lbfgs``, with no learning rate.
        lp_ft_probe_epochs: the lp_ft runs' ``probe_epochs``.

    Returns:
        The runs, named ``<strategy>-lr<rate>`` (``top_k3-lr0.001``).

    Raises:
        WarmstartError: an unknown strategy, the same run named twice, or no modality for the default rates.

    Example:
        >>> [run.name for run in plan_runs(["head_only", "bitfit"], modality="text", solved_head=True)]
        ['head_only-lbfgs', 'bitfit-lr0.0003', 'bitfit-lr0.001', 'bitfit-lr0.003']
    """
    if learning_rates is None and modality is None:
        raise WarmstartError("plan_runs: give learning_rates, or the modality whose default rates to sweep")
    runs = []
    for spec in strategies:
        name, k = parse_strategy(spec)
        label = f"{name}{k}" if k else name
        extra: dict[str, Any] = {"unfreeze_top_k": k} if k else {}
        if name == "lp_ft" and lp_ft_probe_epochs is not None:
            extra["probe_epochs"] = float(lp_ft_probe_epochs)
        if name == "head_only" and solved_head:
            runs.append(PlannedRun(f"{label}-lbfgs", spec, None, {"freeze_strategy": name, **extra}))
            continue
        if learning_rates is None:
            default = default_learning_rate(name, modality)
            # rounded: 5e-5 * 0.3 is 1.5000000000000002e-05 in floats, a flag nobody would type
            rates = [float(f"{default * factor:.3g}") for factor in DEFAULT_LR_SWEEP]
        else:
            rates = [float(lr) for lr in learning_rates]
        for lr in rates:
            runs.append(
                PlannedRun(f"{label}-lr{lr:g}", spec, lr, {"freeze_strategy": name, "learning_rate": lr, **extra})
            )
    if len({run.name for run in runs}) != len(runs):
        raise WarmstartError("--strategies / --learning_rates name the same run twice: give each once")
    return runs


def probe_is_solved(config: RunConfig) -> bool:
    """Whether the head of ``head_only`` runs and the probe of ``lp_ft`` runs made from ``config`` will be solved
    (L-BFGS logistic regression on the cached backbone features, no learning rate or epochs) rather than trained by
    the Trainer: the features are cached (:func:`warmstart.tasks.classification.feature_cache_refusal`, the rule the
    runs themselves follow) and ``--probe_solver trainer`` is not given.

    Example:
        >>> probe_is_solved(parse_config([*flags, "--hflip", "0.5"], "image_classification"))
        False
    """
    if config.policy.probe_solver == "trainer" or config.data.problem_type not in (None, SINGLE_LABEL):
        return False  # the solver fits single-label heads only
    return feature_cache_refusal(config.with_values(freeze_strategy="head_only", probe_train_rest=False)) is None


def plan_comparison(
    strategies: Sequence[str], learning_rates: Sequence[float] | None, config: RunConfig
) -> list[PlannedRun]:
    """The runs of a comparison, from ``--strategies`` / ``--learning_rates`` and the configuration all runs share.

    - Rates: ``learning_rates`` crossed with every strategy; without them, a ``--learning_rate`` given in
      ``config`` is one rate shared by all (what it meant before strategies had rates of their own); without
      either, each strategy sweeps its own grid (:func:`plan_runs`).
    - ``head_only`` with the solved probe (:func:`probe_is_solved`; not with ``--probe_train_rest``, which trains the
      head on after solving it) runs once, without a rate: every rate would give the same head.
    - ``lp_ft`` whose probe the Trainer trains probes for half the epochs where no ``--probe_epochs`` is given;
      the solved probe needs none (the whole run is its fine-tuning phase).

    Raises:
        WarmstartError: lp_ft with the Trainer's probe, ``--max_steps`` and no ``--probe_epochs`` (half of a step
            budget is not a number of epochs), or what :func:`plan_runs` refuses.
    """
    training, policy = config.training, config.policy
    solved = probe_is_solved(config)
    rates = learning_rates or ([training.learning_rate] if "learning_rate" in config.given else None)
    probe_epochs = None
    if not solved and policy.probe_epochs is None and any(parse_strategy(s)[0] == "lp_ft" for s in strategies):
        if training.max_steps > 0:
            raise WarmstartError(
                "--strategies lp_ft with --max_steps needs --probe_epochs (the length of the probe the Trainer "
                "trains here)"
            )
        probe_epochs = training.num_train_epochs / 2  # probe for half the budget unless told
    solved_head = solved and not policy.probe_train_rest
    return plan_runs(
        strategies, rates, modality=config.modality, solved_head=solved_head, lp_ft_probe_epochs=probe_epochs
    )
