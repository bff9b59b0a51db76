"""LP-FT on cached features: :class:`ProbeThenFull` runs the head on the cached features while the backbone is
frozen and the full model once it is not, on examples that carry their features (:class:`WithCachedFeatures`,
batched by :class:`CachedFeatureCollator`, under :data:`FEATURES_KEY`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from warmstart.export import contiguous_state
from warmstart.feature_cache.caching import CachedRun
from warmstart.feature_cache.heads import head_inputs, head_model
from warmstart.feature_cache.storage import FeatureTable

FEATURES_KEY = "cached_features"


class WithCachedFeatures(torch.utils.data.Dataset):
    """A split's examples, each with its cached features under :data:`FEATURES_KEY` (for :class:`ProbeThenFull`)."""

    def __init__(self, dataset: Any, table: FeatureTable):
        if len(dataset) != len(table):
            raise ValueError(f"{len(dataset)} examples but {len(table)} cached features")
        self.dataset, self.table = dataset, table

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], FEATURES_KEY: self.table[index][self.table.key]}


@dataclass
class CachedFeatureCollator:
    """Batches examples of :class:`WithCachedFeatures`: the base collator for the examples, the features stacked."""

    base: Callable[[list[dict[str, Any]]], dict[str, Any]]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        features = torch.stack([example.pop(FEATURES_KEY) for example in examples])
        return {**self.base(examples), FEATURES_KEY: features}


class ProbeThenFull(nn.Module):
    """LP-FT with cached features: while the backbone is frozen (the linear probe), the head runs on the cached
    features; once the schedule unfreezes the backbone, the full model runs on the raw inputs.

    The full model is the only registered child (checkpoints hold its weights under ``model.``); the head model
    shares its head's modules.
    """

    def __init__(self, model: nn.Module, cached: CachedRun):
        super().__init__()
        self.model = model
        head_params = {id(p) for p in cached.head.parameters()}
        # a plain list, not registered: the backbone's parameters are the model's own
        object.__setattr__(self, "_backbone", [p for p in model.parameters() if id(p) not in head_params])
        self.config = getattr(model, "config", None)
        self.accepts_loss_kwargs = False  # the Trainer normalises the loss, as for the model alone

    def probing(self) -> bool:
        """Whether the backbone is frozen now, so that its cached features are its output."""
        return not any(p.requires_grad for p in self._backbone)

    def forward(self, cached_features: torch.Tensor | None = None, labels: torch.Tensor | None = None, **inputs: Any):
        if cached_features is not None and self.probing():
            # made per call from self.model (a shallow copy, cheap): a DataParallel replica gets its own modules
            head, key = head_model(self.model)
            head.train(self.training)
            return head(**head_inputs(key, cached_features), labels=labels)
        return self.model(**inputs, labels=labels)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return contiguous_state(super().state_dict(*args, **kwargs))

    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        """Checkpoints the full model's activations (the fine-tuning phase; the probe has none to save)."""
        self.model.activation_checkpointing_enable(**kwargs)

    @property
    def is_activation_checkpointing(self) -> bool:
        return bool(getattr(self.model, "is_activation_checkpointing", False))
