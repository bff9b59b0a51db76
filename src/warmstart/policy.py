"""The fine-tuning policy as a value: :class:`FreezePolicy` (what trains, when, how fast), the table of what each
strategy means (:data:`STRATEGY_SPECS`) and the learning rate each starts from. Imports no deep-learning library:
applying a policy to a model is :mod:`warmstart.freezing` and :mod:`warmstart.fine_tuning`.

Example:
    >>> FreezePolicy("top_k", top_k=2).describe()
    'top_k (head + top 2 blocks)'
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from warmstart.errors import WarmstartError


@dataclass(frozen=True)
class StrategySpec:
    """What a strategy means to a run, in one place (code asks these, never the strategy's name).

    Attributes:
        name: the strategy (``--freeze_strategy``).
        scheduled: the set of training parameters changes during the run (an unfreezing schedule:
            :mod:`warmstart.schedules`).
        probes: a linear probe on the frozen backbone, the whole run (``head_only``) or first (``lp_ft``): its
            backbone features can be cached, and its head solved.
        trains_backbone: some backbone parameters train at some point of the run.
        wraps_model: the model is wrapped for training (LoRA adapters) and merged back before it is saved.
    """

    name: str
    scheduled: bool = False
    probes: bool = False
    trains_backbone: bool = True
    wraps_model: bool = False


STRATEGY_SPECS: dict[str, StrategySpec] = {
    spec.name: spec
    for spec in (
        StrategySpec("full"),
        StrategySpec("head_only", probes=True, trains_backbone=False),
        StrategySpec("top_k"),
        StrategySpec("gradual", scheduled=True),
        StrategySpec("lp_ft", scheduled=True, probes=True),
        StrategySpec("bitfit"),
        StrategySpec("lora", wraps_model=True),
    )
}
STRATEGIES = tuple(STRATEGY_SPECS)
# Strategies whose set of training parameters changes during the run (see warmstart.schedules).
SCHEDULED = tuple(name for name, spec in STRATEGY_SPECS.items() if spec.scheduled)
# Strategies with a linear-probe phase on the frozen backbone: the head alone (head_only), or first (lp_ft).
PROBING = tuple(name for name, spec in STRATEGY_SPECS.items() if spec.probes)
# How a probe is fitted: solved (L-BFGS logistic regression on the cached features) or trained by the Trainer.
PROBE_SOLVERS = ("lbfgs", "trainer")

# The learning rate each strategy starts from when none is given (AdamW, the Trainer's default optimizer).
# Full fine-tuning of BERT-family models: 2e-5 to 5e-5 (Devlin et al. 2019; the HF examples' 5e-5). Parameter-
# efficient methods train few parameters and need 10-100x that: BitFit 1e-4 to 1e-3 (Ben Zaken et al. 2022), LoRA
# 4e-4 to 5e-4 on RoBERTa (Hu et al. 2022). CNNs and ViTs fine-tune at higher rates than BERT (timm's fine-tuning
# recipes: 1e-4 to 1e-3 for AdamW at batch 32-128; on the quickstart's digits EfficientNet-Lite0 full fine-tuning
# was best at 1e-2 of {1e-3, 1e-2}). lp_ft's rate is its fine-tuning phase's, gradual and top_k train pretrained blocks
# as full does. head_only's rate is for the Trainer's SGD probe (--probe_solver trainer, or augmented images); the
# solved probe uses none. A comparison sweeps three rates around each (DEFAULT_LR_SWEEP).
DEFAULT_LEARNING_RATES: dict[str, dict[str, float]] = {
    "text": {
        "full": 5e-5,
        "top_k": 5e-5,
        "gradual": 5e-5,
        "lp_ft": 5e-5,
        "bitfit": 1e-3,
        "lora": 5e-4,
        "head_only": 1e-2,
    },
    "image": {
        "full": 1e-3,
        "top_k": 1e-3,
        "gradual": 1e-3,
        # fine-tuning from a fitted head at the rate that trains a new one collapses a BatchNorm CNN (digits through
        # EfficientNet-Lite0, 2 epochs: 10 % at 1e-3, 73.3 % at 3e-4, 90.3 % at 1e-4), as LP-FT's smaller FT rate
        "lp_ft": 1e-4,
        "bitfit": 1e-2,
        "lora": 1e-3,
        "head_only": 1e-2,
    },
}
# A comparison without --learning_rates runs each strategy at its default times these (a decade, 0.3x to 3x).
DEFAULT_LR_SWEEP = (0.3, 1.0, 3.0)


def default_learning_rate(strategy: str, modality: str) -> float:
    """The learning rate a strategy starts from when none is given (see :data:`DEFAULT_LEARNING_RATES`).

    Args:
        strategy: one of :data:`STRATEGIES`.
        modality: ``image`` or ``text``.

    Raises:
        WarmstartError: an unknown strategy or modality.
    """
    table = DEFAULT_LEARNING_RATES.get(modality)
    if table is None or strategy not in table:
        raise WarmstartError(f"no default learning rate for {strategy!r} on {modality!r} data: give --learning_rate")
    return table[strategy]


def _flag(default: Any, flag: str, help: str) -> Any:
    """A policy field and its command-line flag (``strategy`` is ``--freeze_strategy``), with the flag's help."""
    return field(default=default, metadata={"flag": flag, "help": help})


@dataclass
class FreezePolicy:
    """How a pretrained model is fine-tuned, as one small serialisable value: what trains, when, and how fast.

    Saved with the weights (``warmstart_config.yaml``) and summarised in the model card; apply it to any supported
    model with :func:`apply_freeze_policy` (what trains) and :func:`warmstart.fine_tuning.prepare_fine_tuning`
    (optimizer groups and schedules, for a ``Trainer``).

    Attributes:
        strategy: ``full`` (everything); ``head_only`` (the new head; the backbone and its BatchNorm statistics are
            frozen); ``top_k`` (the head, the neck and the last ``top_k`` blocks); ``gradual`` (ULMFiT: the head
            first, then one more block group, top down, every ``unfreeze_every`` epochs or steps, up to ``top_k``
            blocks or all); ``lp_ft`` (a linear probe, solved or trained for ``probe_epochs``, then everything,
            at ``finetune_lr_multiplier`` times the learning rate); ``bitfit`` (biases and the head); ``lora``
            (low-rank adapters on ``lora_target_modules`` and the head, via peft).
        top_k: blocks that train (``top_k``), or the most blocks ``gradual`` unfreezes (``None``: all).
        unfreeze_every: ``gradual``: epochs (or steps) between two unfreezings.
        unfreeze_unit: ``epochs`` or ``steps``.
        probe_epochs: ``lp_ft`` with the ``trainer`` probe: length of the linear-probe phase, in epochs.
        finetune_lr_multiplier: ``lp_ft``: factor on every learning rate once the whole model trains.
        head_lr_multiplier: discriminative learning rate: the head's rate is the base rate times this.
        layer_lr_decay: block ``i`` of ``n`` (1-based, bottom up) trains at ``lr * d ** (n - i)``; the stem at
            ``lr * d ** n``; neck and head at ``lr``.
        lora_r, lora_alpha, lora_dropout, lora_target_modules: LoRA settings (peft's names); target ``None``
            picks a default for the architecture family.
        probe_solver: how the probe of ``head_only`` / ``lp_ft`` is fitted: ``lbfgs`` (multinomial logistic
            regression solved on the cached backbone features, L2 strength by cross-validation on train: see
            :mod:`warmstart.probe`), ``trainer`` (the Trainer's epochs of AdamW), ``None``: ``lbfgs`` wherever the
            features are cached, else ``trainer`` (a run records which it used).
        probe_train_rest: ``head_only`` with the solved probe: then train every trainable part of the head (the
            layers in front of the classifier too) with the Trainer on the cached features, from the solved values.
        freeze_batchnorm_stats: keep every BatchNorm layer's running statistics as the checkpoint has them (the
            layers normalise with them in training too; their affine weights still train where the policy trains
            them). ``None``: on for ``lp_ft``, whose probe was fitted on the features those statistics give (left
            to move, they change every feature at the first step: on digits through EfficientNet-Lite0, LP-FT at a
            learning rate of 1e-12 fell from the probe's 93.6 % to 7 %); off otherwise. Frozen layers' statistics
            never move.
    """

    strategy: Literal["full", "head_only", "top_k", "gradual", "lp_ft", "bitfit", "lora"] = _flag(
        "full",
        "freeze_strategy",
        "What trains: everything; the new head; the head + top k blocks; gradual unfreezing (ULMFiT); linear probe "
        "then full fine-tuning; biases + head (BitFit); LoRA adapters + head.",
    )
    top_k: int | None = _flag(
        None, "unfreeze_top_k", "top_k: blocks that train; gradual: blocks to unfreeze at most (default all)."
    )
    unfreeze_every: float | None = _flag(
        None, "unfreeze_every", "gradual: unfreeze one more block group every this many epochs (or steps)."
    )
    unfreeze_unit: Literal["epochs", "steps"] = _flag(
        "epochs", "unfreeze_unit", "gradual: whether --unfreeze_every counts epochs or optimizer steps."
    )
    probe_epochs: float | None = _flag(
        None,
        "probe_epochs",
        "lp_ft: epochs of head-only training with the Trainer before everything trains (without it, and with the "
        "features cached, the probe is solved).",
    )
    finetune_lr_multiplier: float = _flag(
        1.0, "finetune_lr_multiplier", "lp_ft: learning-rate factor for the fine-tuning phase (e.g. 0.1)."
    )
    head_lr_multiplier: float = _flag(
        1.0, "head_lr_multiplier", "Discriminative LR: the head trains at learning_rate times this."
    )
    layer_lr_decay: float = _flag(
        1.0,
        "layer_lr_decay",
        "Layer-wise LR decay d in (0, 1]: block i of n trains at lr * d**(n - i), the stem lowest.",
    )
    lora_r: int = _flag(8, "lora_r", "lora: rank of the adapters.")
    lora_alpha: float = _flag(16.0, "lora_alpha", "lora: scaling alpha (the update is alpha / r).")
    lora_dropout: float = _flag(0.0, "lora_dropout", "lora: dropout on the adapter input.")
    lora_target_modules: list[str] | None = _flag(
        None,
        "lora_target_modules",
        "lora: module names or name suffixes to adapt; one value with regex characters is a regex (default: per "
        "architecture family).",
    )
    probe_solver: Literal["lbfgs", "trainer"] | None = _flag(
        None,
        "probe_solver",
        "head_only / lp_ft: lbfgs solves the linear head on the cached backbone features (logistic regression, L2 "
        "strength by cross-validation on train; no learning rate or epochs needed); trainer trains it with the "
        "Trainer (AdamW epochs). Default: lbfgs wherever the features are cached, else trainer.",
    )
    probe_train_rest: bool = _flag(
        False,
        "probe_train_rest",
        "head_only with the solved probe: then train the whole head (layers before the classifier too) with the "
        "Trainer on the cached features, from the solved values.",
    )
    freeze_batchnorm_stats: bool | None = _flag(
        None,
        "freeze_batchnorm_stats",
        "Keep every BatchNorm layer's running statistics as loaded, in training too (default: on for lp_ft, whose "
        "probe was fitted on the features they give; off otherwise).",
    )

    @property
    def holds_batchnorm_stats(self) -> bool:
        """Whether every BatchNorm layer's statistics stay as loaded (see ``freeze_batchnorm_stats``)."""
        if self.freeze_batchnorm_stats is None:
            return self.strategy == "lp_ft"
        return self.freeze_batchnorm_stats

    def __post_init__(self) -> None:
        # an inf / nan multiplier passes every range check below and turns the weights to nan in the first step
        for name in ("head_lr_multiplier", "finetune_lr_multiplier", "layer_lr_decay", "lora_alpha"):
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise WarmstartError(f"--{policy_flags()[name]} must be a finite number, got {value}")
        if self.strategy not in STRATEGIES:
            raise WarmstartError(
                f"unknown freeze strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)} (--freeze_strategy)"
            )
        if self.strategy == "top_k" and self.top_k is None:
            raise WarmstartError("--freeze_strategy top_k needs --unfreeze_top_k N (the number of top blocks)")
        if self.top_k is not None and self.top_k < 1:
            raise WarmstartError(f"--unfreeze_top_k must be at least 1, got {self.top_k}")
        if self.strategy == "gradual":
            if self.unfreeze_every is None:
                raise WarmstartError("--freeze_strategy gradual needs --unfreeze_every N (epochs, or steps)")
            if self.unfreeze_every < 1:
                raise WarmstartError(f"--unfreeze_every must be at least 1, got {self.unfreeze_every:g}")
        if self.unfreeze_unit not in ("epochs", "steps"):
            raise WarmstartError(f"--unfreeze_unit is epochs or steps, got {self.unfreeze_unit!r}")
        if self.probe_solver is not None and self.probe_solver not in PROBE_SOLVERS:
            raise WarmstartError(f"--probe_solver is lbfgs or trainer, got {self.probe_solver!r}")
        if self.probe_epochs is not None and self.probe_epochs <= 0:
            raise WarmstartError(f"--probe_epochs must be > 0 (epochs of linear probing), got {self.probe_epochs:g}")
        if self.probe_train_rest and (self.strategy != "head_only" or self.probe_solver == "trainer"):
            raise WarmstartError("--probe_train_rest is for --freeze_strategy head_only with the solved probe")
        if self.strategy == "lp_ft" and self.probe_solver == "trainer" and self.probe_epochs is None:
            raise WarmstartError(
                "--freeze_strategy lp_ft --probe_solver trainer needs --probe_epochs N (epochs of linear probing)"
            )
        if not 0.0 < self.layer_lr_decay <= 1.0:
            raise WarmstartError(f"--layer_lr_decay must be in (0, 1], got {self.layer_lr_decay:g}")
        if self.head_lr_multiplier <= 0:
            raise WarmstartError(f"--head_lr_multiplier must be > 0, got {self.head_lr_multiplier:g}")
        if self.finetune_lr_multiplier <= 0:
            raise WarmstartError(f"--finetune_lr_multiplier must be > 0, got {self.finetune_lr_multiplier:g}")
        if self.lora_r < 1:
            raise WarmstartError(f"--lora_r must be at least 1, got {self.lora_r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise WarmstartError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout:g}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FreezePolicy:
        return cls(**data)

    def describe(self) -> str:
        """One line for logs and the model card."""
        parts = {
            "top_k": f"top_k (head + top {self.top_k} blocks)",
            "gradual": f"gradual (one more block every {self.unfreeze_every:g} {self.unfreeze_unit}"
            + (f", up to {self.top_k} blocks)" if self.top_k else ")")
            if self.unfreeze_every
            else "gradual",
            "lp_ft": f"lp_ft (head solved by L-BFGS, then all at {self.finetune_lr_multiplier:g}x lr)"
            if self.probe_solver == "lbfgs"
            else f"lp_ft (head only for {self.probe_epochs:g} epochs, then all at {self.finetune_lr_multiplier:g}x lr)"
            if self.probe_epochs
            else "lp_ft",
            "head_only": "head_only (solved by L-BFGS logistic regression"
            + (", then the head trained on the features)" if self.probe_train_rest else ")")
            if self.probe_solver == "lbfgs"
            else "head_only",
            "lora": f"lora (r={self.lora_r}, alpha={self.lora_alpha:g}, dropout={self.lora_dropout:g})",
            "bitfit": "bitfit (biases + head)",
        }
        text = parts.get(self.strategy, self.strategy)
        if self.freeze_batchnorm_stats:
            text += ", BatchNorm statistics frozen"
        if self.layer_lr_decay != 1.0:
            text += f", layer LR decay {self.layer_lr_decay:g}"
        if self.head_lr_multiplier != 1.0:
            text += f", head LR x{self.head_lr_multiplier:g}"
        return text

    @property
    def spec(self) -> StrategySpec:
        """What the strategy means to a run (:data:`STRATEGY_SPECS`)."""
        return STRATEGY_SPECS[self.strategy]


def policy_flags() -> dict[str, str]:
    """Each :class:`FreezePolicy` field's command-line flag (``{"strategy": "freeze_strategy", ...}``)."""
    return {f.name: f.metadata["flag"] for f in fields(FreezePolicy)}
