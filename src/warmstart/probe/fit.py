"""What a solved probe is and why a head cannot be one: :class:`ProbeFit`, the solver's record (cross-validation
curve, convergence, what was fitted, passed through and kept) as the run's configuration and model card show it, and
:class:`ProbeUnsolvable`, raised where the head is not a linear classifier on the cached features."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from warmstart.errors import WarmstartError


class ProbeUnsolvable(WarmstartError):
    """The head cannot be solved as a linear probe (the message says why): train it with the Trainer instead."""


@dataclass
class ProbeFit:
    """What the solver did, recorded in ``warmstart_config.yaml`` (``probe``) and the model card.

    Attributes:
        c_grid: the C values cross-validated (scikit-learn's C: inverse L2 strength on the centred, scaled features).
        cv_accuracy: mean held-out accuracy over the folds, per C (class-weighted when class weights are on).
        cv_loss: mean held-out cross-entropy, per C: the lowest chooses C.
        c: the C chosen, then fitted on all training features.
        folds: the number of folds (0: too few examples to cross-validate; C = 1).
        converged: whether the final fit met the gradient tolerance within its iterations (else the best iterate
            is kept, and this says so).
        iterations: L-BFGS iterations of the final fit.
        gradient_norm: the largest gradient entry at the end of the final fit.
        train_loss: the regularised objective's cross-entropy part on all training features.
        train_accuracy: accuracy on the training features.
        examples: training examples; features: their dimension; classes: the head's outputs.
        seconds: time of the whole solve (cross-validation included).
        fitted: the parameters the solver wrote.
        pass_through: newly initialised layers set to pass the features through.
        kept: other head parameters, kept at their (pretrained) values.
        dtype: ``float64`` or ``float32`` (features too large for float64).
    """

    c_grid: list[float]
    cv_accuracy: list[float]
    cv_loss: list[float]
    c: float
    folds: int
    converged: bool
    iterations: int
    gradient_norm: float
    train_loss: float
    train_accuracy: float
    examples: int
    features: int
    classes: int
    seconds: float
    fitted: list[str] = field(default_factory=list)
    pass_through: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    dtype: str = "float64"

    def to_dict(self) -> dict[str, Any]:
        return {"solver": "lbfgs", **asdict(self)}

    def summary(self) -> str:
        """One line for the log."""
        converged = "converged" if self.converged else f"NOT converged (gradient {self.gradient_norm:.2g}; best kept)"
        cv = f"C = {self.c:g} by {self.folds}-fold cross-validation on train" if self.folds else "C = 1 (no CV)"
        return (
            f"probe solved by L-BFGS logistic regression on {self.examples:,} x {self.features} features: {cv}, "
            f"{converged} in {self.iterations} iterations, train accuracy {self.train_accuracy:.4f}, "
            f"{self.seconds:.1f} s"
        )

    def markdown(self) -> str:
        """The model card's paragraph: the solver, what it fitted and kept, and the cross-validation curve."""
        lines = [
            "The head was solved, not trained: multinomial logistic regression (L-BFGS, full batch) on the frozen "
            f"backbone's features of the {self.examples:,} training examples, centred and scaled by one number; "
            "the L2 strength "
            + (
                f"chosen by {self.folds}-fold cross-validation on the training set (never on validation): "
                f"C = {self.c:g}."
                if self.folds
                else "fixed at C = 1 (too few examples to cross-validate)."
            ),
            f"Final fit: {'converged' if self.converged else 'not converged (best iterate kept)'} in "
            f"{self.iterations} iterations; train accuracy {self.train_accuracy:.4f}.",
            f"Fitted: {', '.join(f'`{n}`' for n in self.fitted)}."
            + (f" Set to pass the features through: {', '.join(f'`{n}`' for n in self.pass_through)}." if
               self.pass_through else "")
            + (f" Kept at their values: {', '.join(f'`{n}`' for n in self.kept)}." if self.kept else ""),
        ]  # fmt: skip
        if self.folds:
            lines += ["", "| C | CV accuracy | CV loss |", "| --- | --- | --- |"]
            for c, accuracy, loss in sorted(zip(self.c_grid, self.cv_accuracy, self.cv_loss)):
                mark = "**" if c == self.c else ""
                lines.append(f"| {mark}{c:g}{mark} | {accuracy:.4f} | {loss:.4f} |")
        return "\n".join(lines)
