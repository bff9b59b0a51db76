"""Computing the frozen backbone's features once per split: :func:`cache_features` runs the backbone in eval and
inference mode (text in length-sorted batches, several processes a shard each), checks on the first batch that the
head on the features reproduces the model's logits, and returns a :class:`CachedRun` (the head model and the splits
as feature tables); :class:`CacheSettings` says how it reads the splits and where the features go."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import DatasetDict
from torch import nn
from torch.utils.data import DataLoader

from warmstart.distributed import active as distributed_active
from warmstart.distributed import any_process, shard_rows
from warmstart.errors import WarmstartError
from warmstart.feature_cache.heads import CacheDeclined, backbone_features, head_inputs, head_model
from warmstart.feature_cache.storage import CACHE_DIR_NAME, FeatureTable, allocate, whole_table

# batches of this many examples at least: inference keeps no activations, and sorted lengths keep padding small
_MIN_EXTRACTION_BATCH = 32
# relative tolerance of the head-on-features check (the same arithmetic in another order; bf16 rounds more)
_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}


@dataclass
class CacheSettings:
    """How :func:`cache_features` reads the splits.

    Attributes:
        collate: batches examples of the splits as the model takes them (``image_collate``, a ``TextCollator``).
        memory_budget_mb: features over this size go to a memory-mapped file under ``cache_dir``.
        cache_dir: where such files go (a run's ``output_dir/.feature_cache``); removed by :meth:`CachedRun.close`.
        autocast_dtype: compute the features under autocast to this dtype (``None``: the model's own dtype), as
            the training precision would.
        source_splits: the splits to compute features from where they differ from the training splits (images:
            the evaluation transform on train too, when the full model later trains on augmented images).
        store: features shared between runs (a strategy comparison): computed by the first run that asks with
            ``store_key``, reused by the next ones; whoever made the store closes what it holds at the end.
        store_key: what the features depend on (the base model, the data, the precision).
    """

    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]
    memory_budget_mb: float = 2048.0
    cache_dir: Path | None = None
    autocast_dtype: torch.dtype | None = None
    source_splits: Mapping[str, Any] | None = None
    store: dict[str, CachedRun] | None = None
    store_key: str | None = None


@dataclass
class CachedRun:
    """What :func:`cache_features` returns: the head model to train and the splits as :class:`FeatureTable`."""

    head: nn.Module
    key: str
    splits: dict[str, FeatureTable]
    seconds: float
    cache_dir: Path | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        """Drops the feature files on disk (if any)."""
        if self.cache_dir is not None:
            shutil.rmtree(self.cache_dir, ignore_errors=True)
            if self.cache_dir.parent.name == CACHE_DIR_NAME:
                with contextlib.suppress(OSError):  # other processes' folders are still in use
                    self.cache_dir.parent.rmdir()


def _extraction_order(dataset: Any) -> list[int]:
    # text: longest first, so each batch pads to nearly its own length (and the largest batch comes first)
    if hasattr(dataset, "column_names") and "length" in dataset.column_names:
        lengths = list(dataset["length"])  # one read of the column, not one per row
        return sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return list(range(len(dataset)))


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _check_head(model: nn.Module, head: nn.Module, key: str, batch: dict, features: torch.Tensor, dtype) -> str | None:
    """Why the head on ``features`` does not reproduce the model's logits on ``batch`` (``None``: it does)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    full = model(**inputs).logits.float()
    cut = head(**head_inputs(key, features)).logits.float()
    if full.shape != cut.shape:
        return f"the head gives logits of shape {tuple(cut.shape)}, the model {tuple(full.shape)}"
    scale = full.abs().max().clamp_min(1.0)
    error = ((full - cut).abs().max() / scale).item()
    tolerance = _CHECK_TOLERANCE.get(dtype or torch.float32, 1e-2)
    if not error <= tolerance:
        return f"the head on cached features is off by {error:.2g} (relative) from the full model's logits"
    return None


def cache_features(
    model: nn.Module,
    splits: DatasetDict | Mapping[str, Any],
    settings: CacheSettings,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> CachedRun | None:
    """Computes the frozen backbone's features once for every split.

    Args:
        model: the full model, its backbone frozen (its head may train).
        splits: examples as the model takes them after ``settings.collate`` (images already transformed by the
            evaluation transform for every split, tokenized text with a ``length`` column).
        settings: collate function, memory budget, cache directory, autocast dtype.
        batch_size: extraction batch size (at least 32).
        device: where the backbone runs.
        num_workers: data loader workers for reading the splits.

    Returns:
        A :class:`CachedRun`.

    Raises:
        CacheDeclined: the head on cached features would not reproduce the model's logits (train the full model
            instead).
    """
    start = time.perf_counter()
    head, key = head_model(model)
    head.eval()  # a head module made here (timm's) is not reached by model.eval()
    shared = settings.store.get(settings.store_key) if settings.store is not None else None
    if (
        shared is not None
        and shared.key == key
        and {n: len(d) for n, d in splits.items()} == {n: len(t) for n, t in shared.splits.items()}
    ):
        # an earlier run of the same base model on the same rows made them (a run that left a training row out
        # for BatchNorm computes its own); it checked the cut, and the store owns the files (cache_dir None:
        # closing this run deletes nothing)
        stats = {name: {**values, "shared": True} for name, values in shared.stats.items()}
        return CachedRun(head, key, shared.splits, time.perf_counter() - start, None, stats)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    model.to(device)
    batch_size = max(batch_size, _MIN_EXTRACTION_BATCH)
    autocast = torch.autocast(device.type, dtype=settings.autocast_dtype, enabled=settings.autocast_dtype is not None)
    tables: dict[str, FeatureTable] = {}
    stats: dict[str, Any] = {}
    budget = [settings.memory_budget_mb]  # for all splits together
    checked = False
    completed = False
    try:
        for name, dataset in splits.items():
            order = _extraction_order(dataset)
            # several processes: each computes every world-th example (of the length order: similar work), then
            # all gather the whole table; one process: all of them
            alone = not distributed_active()
            mine = order if alone else [order[i] for i in shard_rows(len(order))]
            loader = DataLoader(
                dataset, batch_size=batch_size, sampler=mine, collate_fn=settings.collate, num_workers=num_workers
            )
            # the stores are made outside inference mode: the head trains on them, and autograd refuses tensors made
            # inside it
            shard: torch.Tensor | np.ndarray | None = None
            labels = _label_store(dataset, len(mine))
            done = 0
            for batch in loader:
                batch = _to_device(batch, device)
                with torch.inference_mode(), autocast:
                    features = backbone_features(model, batch).float()
                    if not checked:  # the first batch of all: does the cut reproduce the model?
                        problem = _check_head(model, head, key, batch, features, settings.autocast_dtype)
                        _agree_on_the_cut(problem, device)
                        checked = True
                if shard is None:
                    split = name if alone else f"{name}-shard"
                    shard = allocate(split, len(mine), features.shape[1:], budget, settings.cache_dir)
                # one process writes rows in dataset order; several write their shard in order, gathered below
                rows = mine[done : done + len(features)] if alone else slice(done, done + len(features))
                shard[rows] = features.cpu().numpy() if isinstance(shard, np.ndarray) else features.cpu()
                labels[rows] = batch["labels"].cpu().to(labels.dtype)
                done += len(features)
            if not checked and name == next(iter(splits)):  # no example here: the others still agree on the cut
                _agree_on_the_cut(None, device)
                checked = True
            shape = _agreed_shape(None if shard is None else tuple(shard.shape[1:]), device)
            if shape is None:
                raise WarmstartError(f"the {name} split is empty: nothing to cache")
            if shard is None:  # this process had no example of the split
                shard = torch.empty((0, *shape))
            store, all_labels = whole_table(name, order, shard, labels, budget, settings.cache_dir, device)
            tables[name] = FeatureTable(key, store, all_labels)
            on_disk = tables[name].on_disk
            stats[name] = {
                "examples": len(order),
                "feature_shape": list(store.shape[1:]),
                "on_disk": on_disk,
                "computed_by_this_process": len(mine),
            }
        completed = True
    finally:
        model.train(was_training)
        if not completed and settings.cache_dir is not None:
            CachedRun(head, key, {}, 0.0, settings.cache_dir).close()  # nothing half-written stays behind
    seconds = time.perf_counter() - start
    if settings.store is not None and settings.store_key is not None and settings.store_key not in settings.store:
        settings.store[settings.store_key] = CachedRun(head, key, tables, seconds, settings.cache_dir, stats)
        return CachedRun(head, key, tables, seconds, None, stats)  # the store closes the files, not this run
    return CachedRun(head, key, tables, seconds, settings.cache_dir, stats)


def _agree_on_the_cut(problem: str | None, device: torch.device) -> None:
    """Declines the cache in every process when the head on features failed the check in any (each checks its
    own first batch)."""
    if any_process(problem is not None, device):
        raise CacheDeclined(problem or "the head on cached features failed the check in another process")


def _agreed_shape(shape: tuple[int, ...] | None, device: torch.device) -> tuple[int, ...] | None:
    """The features' shape, from a process that computed some (a process can have no example of a small split)."""
    if not distributed_active():
        return shape
    shapes: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(shapes, shape)
    return next((s for s in shapes if s is not None), None)


def _label_store(dataset: Any, rows: int) -> torch.Tensor:
    """An empty tensor for ``rows`` labels of the dataset's kind: class ids (int64), or float32 targets of the first
    example's shape (a multi-label vector, regression targets)."""
    first = torch.as_tensor(dataset[0]["labels"]) if len(dataset) else torch.tensor(0)
    dtype = torch.float32 if first.is_floating_point() else torch.long
    return torch.empty((rows, *first.shape), dtype=dtype)
