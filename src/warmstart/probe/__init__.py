"""The solved linear probe: a frozen backbone's head fitted to the optimum on its cached features.

With the backbone frozen, training the head is a convex problem on a fixed table of features: multinomial logistic
regression. SGD epochs (the Trainer, timm, fastai, Lightning) only approach its optimum, at a speed that hangs on the
learning rate: MiniLM-L6 on a real sentiment set ended at the majority class (60 %) after 2 epochs at 1e-3 and at
68.6 % after 20 at 1e-2, where the solved problem gives 70.0 % in seconds. So, as the LP-FT paper (Kumar et al. 2022)
and CLIP's linear-probe protocol do, warmstart solves it: full batch, L-BFGS, an L2 strength chosen by k-fold
cross-validation on the *training* features (the validation split is what the run reports, so it never chooses),
then one fit on all training features. C is the one of lowest held-out cross-entropy (a proper score, smooth in C,
where held-out accuracy on small folds moves by single examples).

The problem, on features centred with the training set's means and scaled by one number (the root-mean-square of
their standard deviations, :func:`feature_scale`, so one grid of strengths fits every backbone's feature scale; the
centring and scaling are folded back into the weights, so the model computes the same logits on the raw features)::

    minimise  (1 / N) * sum_i w_i * CE(W z_i + b, t_i)  +  ||W||^2 / (2 C N)

with ``w_i`` the class weight of example ``i`` (``--class_weights auto``; 1 otherwise), ``t_i`` its one-hot target,
smoothed as ``--label_smoothing`` asks, and the bias unpenalised. This is scikit-learn's
``LogisticRegression(C=C)`` (multinomial, lbfgs) on the same centred and scaled features; for two classes the
softmax pair equals scikit-learn's binary model at ``2 C``.

What is fitted: the head's last linear layer (the one that outputs the logits), in the model's own layout, saved and
loaded as any head. Layers between the cut and that classifier stay as they are when they are pretrained (BERT's
pooler, timm's pre-logits layers, ModernBERT's prediction head: they belong to the cached features, or come from the
checkpoint); a *newly initialised* layer there (RoBERTa's, ELECTRA's and MPNet's ``classifier.dense``, DistilBERT's
``pre_classifier``, DeBERTa's ``pooler``) is set to pass the features through (:data:`PASS_THROUGH`) so that the
probe is linear in the backbone's representation and no random projection sits frozen in front of the classifier.
``--probe_train_rest`` then trains every trainable part of the head with the Trainer on the cached features, from
the solved values.
"""

from warmstart.probe.fit import ProbeFit, ProbeUnsolvable
from warmstart.probe.head import FLOAT64_BUDGET_BYTES, classifier_of, feature_scale, solve_head
from warmstart.probe.logistic import (
    CV_GRADIENT_TOLERANCE,
    CV_MAX_ITERATIONS,
    DEFAULT_C_GRID,
    DEFAULT_FOLDS,
    GRADIENT_TOLERANCE,
    MAX_ITERATIONS,
    choose_c,
    fit_logistic_regression,
)
from warmstart.probe.pass_through import PASS_THROUGH

__all__ = [
    "CV_GRADIENT_TOLERANCE",
    "CV_MAX_ITERATIONS",
    "DEFAULT_C_GRID",
    "DEFAULT_FOLDS",
    "FLOAT64_BUDGET_BYTES",
    "GRADIENT_TOLERANCE",
    "MAX_ITERATIONS",
    "PASS_THROUGH",
    "ProbeFit",
    "ProbeUnsolvable",
    "choose_c",
    "classifier_of",
    "feature_scale",
    "fit_logistic_regression",
    "solve_head",
]
