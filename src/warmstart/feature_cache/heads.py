"""Where the cut sits: :func:`head_model` makes a model's head alone, run by the model's own ``forward`` on cached
features (a timm model's dropout and classifier, or a BERT-family model with its base model replaced by a
pass-through of the features), :func:`backbone_features` computes those features for a batch, :func:`head_inputs`
hands them to the head, and :class:`CacheDeclined` says when the head on features would not be the model's head."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from warmstart.errors import WarmstartError


class CacheDeclined(WarmstartError):
    """The head on cached features would not be the model's head (the message says why): train without the cache."""


class _CachedEncoder(nn.Module):
    """Stands in for a BERT-family base model: returns the cached features (given as ``inputs_embeds``) in the
    places the model class's head reads them: ``outputs[0][:, 0]`` and, where present, ``outputs[1]``."""

    def forward(self, *args: Any, inputs_embeds: torch.Tensor, **kwargs: Any) -> BaseModelOutputWithPooling:
        pooled = inputs_embeds[:, 1] if inputs_embeds.shape[1] > 1 else None
        return BaseModelOutputWithPooling(last_hidden_state=inputs_embeds[:, :1], pooler_output=pooled)


class _TimmHead(nn.Module):
    """A timm model's classification head alone, on pooled features: dropout (timm's ``drop_rate``), classifier."""

    def __init__(self, timm_model: nn.Module):
        super().__init__()
        classifier = timm_model.get_classifier()
        if not isinstance(classifier, nn.Module):  # e.g. DeiT's distilled pair of heads, averaged in forward_head
            raise CacheDeclined(f"{type(timm_model).__name__} has more than one classifier")
        self.classifier = classifier
        # the dropout timm applies right before the classifier: a module (ViT's head_drop) or a rate in forward_head
        head_drop = getattr(timm_model, "head_drop", None)
        rate = head_drop.p if isinstance(head_drop, nn.Dropout) else getattr(timm_model, "drop_rate", 0.0)
        self.drop_rate = float(rate or 0.0)

    def forward(self, features: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.classifier(F.dropout(features, self.drop_rate, self.training))


def _with_module(model: nn.Module, name: str, replacement: nn.Module) -> nn.Module:
    # A shallow copy runs the model class's own forward (head code, loss, output type) with one child replaced; the
    # other children (the head) are the same objects, so training the copy trains the model's head.
    shell = copy.copy(model)
    shell.__dict__["_modules"] = {**model._modules, name: replacement}
    return shell


def head_model(model: nn.Module) -> tuple[nn.Module, str]:
    """The model's head alone, run by the model's own ``forward`` on cached features.

    Args:
        model: a transformers ``TimmWrapperForImageClassification`` or a BERT-family ``...ForSequenceClassification``.

    Returns:
        The head model (sharing the head's parameters with ``model``) and the input key its features go under
        (``pixel_values`` or ``inputs_embeds``).
    """
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None:
        return _with_module(model, "timm_model", _TimmHead(timm_model)), "pixel_values"
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or not isinstance(getattr(model, prefix, None), nn.Module):
        raise CacheDeclined(f"{type(model).__name__} has no base model to cache features of")
    return _with_module(model, prefix, _CachedEncoder()), "inputs_embeds"


def backbone_features(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The input of the trainable head for one batch, as :func:`head_model` takes it (call in eval mode).

    Returns:
        ``(batch, dim)`` pooled features for timm models; ``(batch, 1 or 2, hidden)`` for text models (the
        first-token or masked-mean hidden state, then the pooler output where the base model has a pooler).
    """
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None:
        return timm_model.forward_head(timm_model.forward_features(batch["pixel_values"]), pre_logits=True)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = getattr(model, model.base_model_prefix)(**inputs)
    hidden = out.last_hidden_state
    if getattr(model.config, "classifier_pooling", "cls") == "mean":  # ModernBERT's mean pooling
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        first = (hidden * mask).sum(1) / mask.sum(1)
    else:
        first = hidden[:, 0]
    pooled = getattr(out, "pooler_output", None)
    return torch.stack([first, pooled], 1) if pooled is not None else first.unsqueeze(1)


def head_inputs(key: str, features: torch.Tensor) -> dict[str, torch.Tensor]:
    """The keyword arguments of the head model for a batch of features."""
    inputs = {key: features}
    if key == "inputs_embeds":  # one position per example: a mask of ones makes mean pooling an identity
        inputs["attention_mask"] = torch.ones(features.shape[:2], dtype=torch.long, device=features.device)
    return inputs
