"""How a classification run is scored beyond its built-in metrics: multi-label decision thresholds, metrics loaded
with ``evaluate``, and the level of the confidence intervals its results carry."""

from __future__ import annotations

from dataclasses import dataclass, field

from warmstart.calibration import check_calibration
from warmstart.errors import WarmstartError
from warmstart.uncertainty import DEFAULT_LEVEL, check_level


@dataclass
class EvaluationArguments:
    threshold: float | None = field(
        default=None,
        metadata={
            "help": "Multi-label: one probability threshold for every label, in (0, 1) (default: each label's "
            "threshold tuned for F1 on validation)."
        },
    )
    extra_metrics: list[str] | None = field(
        default=None,
        metadata={
            "help": "evaluate metrics added to the evaluation: Hub names (downloaded, or from the cache with "
            "HF_HUB_OFFLINE=1) or local metric scripts, e.g. matthews_correlation ./my_metric.py."
        },
    )
    confidence_level: float = field(
        default=DEFAULT_LEVEL,
        metadata={
            "help": "The level of the confidence intervals of the headline metrics (<metric>_ci_low / _ci_high), and "
            "of the significance a comparison tests at (1 - level)."
        },
    )

    calibration: str = field(
        default="none",
        metadata={
            "help": "temperature: fit a temperature to the validation logits (lowest NLL), report the expected "
            "calibration error before and after (eval_ece), and fold it into the saved head so that every loader "
            "gives calibrated probabilities; none: leave the probabilities as trained (eval_ece is reported)."
        },
    )

    evaluate_only: bool = field(
        default=False,
        metadata={
            "help": "Train nothing: evaluate --model_name_or_path (a warmstart output for these labels, or the "
            "average of --average_with) on validation and test, and save it with its results, intervals, reports "
            "and card."
        },
    )

    def __post_init__(self) -> None:
        check_level(self.confidence_level)
        check_calibration(self.calibration)
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise WarmstartError(f"--threshold is a probability in (0, 1), got {self.threshold:g}")
