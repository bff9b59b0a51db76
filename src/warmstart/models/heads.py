"""What the loaders do to a classifier's last layer beyond sizing it: a regression head's target scale, folded in or
out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from warmstart.errors import WarmstartError


def output_layer(model: nn.Module, outputs: int) -> nn.Linear:
    """The model's last linear layer with ``outputs`` outputs: the one that gives its logits.

    Raises:
        WarmstartError: there is none.
    """
    found = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == outputs]
    if not found:
        raise WarmstartError(f"{type(model).__name__} has no linear output layer with {outputs} outputs")
    return found[-1]


@torch.no_grad()
def fold_target_scale(model: nn.Module, mean: Sequence[float], std: Sequence[float], *, inverse: bool = False) -> None:
    """Folds a regression's target scale into the model's output layer, so that it outputs ``output * std + mean``
    (the targets' units) where it output standardised values; ``inverse`` undoes it (a saved regression head trained
    on again with standardised targets).

    Raises:
        WarmstartError: the model has no linear output layer of one output per target.
    """
    layer = output_layer(model, len(mean))
    scale = torch.as_tensor(std, dtype=layer.weight.dtype, device=layer.weight.device)
    shift = torch.as_tensor(mean, dtype=layer.weight.dtype, device=layer.weight.device)
    if layer.bias is None:
        raise WarmstartError(f"the output layer of {type(model).__name__} has no bias to hold the targets' mean")
    if inverse:
        layer.weight.div_(scale[:, None])
        layer.bias.sub_(shift).div_(scale)
    else:
        layer.weight.mul_(scale[:, None])
        layer.bias.mul_(scale).add_(shift)
