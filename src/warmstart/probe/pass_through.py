"""Newly initialised layers between the cached features and the classifier, set to pass the features through:
:data:`PASS_THROUGH` names them per model type, :func:`set_pass_through` makes one an identity (plus a constant the
classifier's bias absorbs) on the training inputs, so the probe stays linear in the backbone's representation."""

from __future__ import annotations

import torch
from torch import nn

from warmstart.probe.fit import ProbeUnsolvable

# Newly initialised layers between the cached features and the classifier, by config.model_type: the Linear's
# module name and its activation (a name, or ``config:<attribute>`` naming the config field that holds it).
PASS_THROUGH: dict[str, tuple[str, str]] = {
    "roberta": ("classifier.dense", "tanh"),
    "xlm-roberta": ("classifier.dense", "tanh"),
    "camembert": ("classifier.dense", "tanh"),
    "mpnet": ("classifier.dense", "tanh"),
    "electra": ("classifier.dense", "config:hidden_act"),
    "distilbert": ("pre_classifier", "relu"),
    "deberta": ("pooler.dense", "config:pooler_hidden_act"),
    "deberta-v2": ("pooler.dense", "config:pooler_hidden_act"),
}
# gelu(z) = z * Phi(z) is z within 0.14 % for z >= 3: a shift that puts every training feature there makes it a
# pass-through (the classifier's bias absorbs the shift)
_GELU_SHIFT = 3.0
# tanh(z) is z within 8 % for |z| <= 0.5, far closer for most features: the scale that keeps them there
_TANH_RANGE = 0.5


def activation_of(model: nn.Module, spec: str) -> str:
    """The activation a :data:`PASS_THROUGH` ``spec`` names, read from the model's config where it says so."""
    if spec.startswith("config:"):
        spec = str(getattr(model.config, spec.removeprefix("config:"), "gelu"))
    return spec.lower()


def set_pass_through(layer: nn.Linear, activation: str, inputs: torch.Tensor) -> None:
    """Makes ``activation(layer(x))`` (nearly) ``x`` plus a constant on the training inputs ``inputs``: the
    identity matrix, with a shift into the linear part of a ReLU or GELU, or a scale into that of tanh."""
    if layer.in_features != layer.out_features:
        raise ProbeUnsolvable(f"a {layer.in_features} -> {layer.out_features} layer cannot pass its input through")
    eye = torch.eye(layer.in_features, dtype=torch.float64)
    x = inputs.to(torch.float64)
    with torch.no_grad():
        if activation == "tanh":
            scale = _TANH_RANGE / x.abs().amax(0).clamp_min(1e-6)
            layer.weight.copy_(torch.diag(scale))
            layer.bias.zero_()
        elif activation == "relu":
            layer.weight.copy_(eye)
            layer.bias.copy_((-x.amin(0)).clamp_min(0.0))
        elif activation.startswith("gelu"):
            layer.weight.copy_(eye)
            layer.bias.copy_(_GELU_SHIFT - x.amin(0))
        else:
            raise ProbeUnsolvable(f"a layer with activation {activation!r} has no pass-through set-up")
