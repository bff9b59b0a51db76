"""Running the Trainer for a task: the set-up before data is read (:mod:`~warmstart.training.setup`), the callbacks
every run adds (:mod:`~warmstart.training.callbacks`), the classification and self-supervised loops
(:mod:`~warmstart.training.classifier`, :mod:`~warmstart.training.pretraining`) and the output
(:mod:`~warmstart.training.output`)."""

from warmstart.training.callbacks import LogBeforeEvaluationAndAtTheEnd, StopOnNonFiniteLoss, exact_loss_metrics
from warmstart.training.classifier import ProbeOptions, train_classifier
from warmstart.training.output import STAGING_DIR, push_output_dir, staged_output
from warmstart.training.pretraining import train_self_supervised
from warmstart.training.setup import Run, resume_point, run_environment, start_run

__all__ = [
    "STAGING_DIR",
    "LogBeforeEvaluationAndAtTheEnd",
    "ProbeOptions",
    "Run",
    "StopOnNonFiniteLoss",
    "exact_loss_metrics",
    "push_output_dir",
    "resume_point",
    "run_environment",
    "staged_output",
    "start_run",
    "train_classifier",
    "train_self_supervised",
]
