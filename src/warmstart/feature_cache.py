"""The frozen-backbone fast path: compute the backbone's features once per split, then train only the head on them.

With ``head_only`` the backbone computes the same function every epoch, so re-running it is pure waste (measured
here: 19x to 82x over ten epochs). :func:`cache_features` runs it once per split, in eval and inference mode, in
length-sorted batches for text, and returns a :class:`CachedRun`: the splits as feature tables and a *head model*
that the HF Trainer trains in place of the full model, so logging, schedulers, early stopping, checkpoints and
``accelerate launch`` work as usual. The head model shares the head's parameters with the full model: after
training, the full model (backbone + trained head) is saved as always.

The cut sits at the input of the trainable head, where every model in warmstart's tables computes
``head(features(x))``:

- timm (wrapped in transformers' ``TimmWrapperForImageClassification``): ``forward_head(forward_features(x),
  pre_logits=True)``, the pooled features; the head is timm's dropout (``drop_rate``) and the classifier.
- BERT-family ``...ForSequenceClassification``: the base model's first-token (or, for ModernBERT's mean pooling,
  masked-mean) hidden state and its pooler output where it has one; the head is the model class's own code after
  the base model (dropout, pooler / dense layers, classifier, loss), run by the model's own ``forward`` with the
  base model replaced by a pass-through of the cached features.

Before any training, one batch checks that the head on cached features reproduces the full model's logits; where
it does not (an architecture whose head reads more than the cut keeps), the run trains without the cache and says
why.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import DatasetDict
from torch import nn
from torch.utils.data import DataLoader
from transformers.modeling_outputs import BaseModelOutputWithPooling

from warmstart.distributed import active as distributed_active
from warmstart.distributed import any_process, gathered_blocks, shard_rows
from warmstart.errors import WarmstartError
from warmstart.export import contiguous_state

logger = logging.getLogger(__name__)

# under the output directory while a run trains; removed at its end, never pushed
CACHE_DIR_NAME = ".feature_cache"
# batches of this many examples at least: inference keeps no activations, and sorted lengths keep padding small
_MIN_EXTRACTION_BATCH = 32
# relative tolerance of the head-on-features check (the same arithmetic in another order; bf16 rounds more)
_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}


class CacheDeclined(WarmstartError):
    """The head on cached features would not be the model's head (the message says why): train without the cache."""


class FeatureTable(torch.utils.data.Dataset):
    """One split as cached features: ``{key: features[i], "labels": labels[i]}`` per example.

    ``features`` is a tensor in memory or a read-only ``np.memmap`` on disk (for features over the memory budget).
    """

    def __init__(self, key: str, features: torch.Tensor | np.ndarray, labels: torch.Tensor):
        self.key, self.features, self.labels = key, features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.features[index]
        if isinstance(row, np.ndarray):  # a memory-mapped row: copied out, the file stays read-only
            row = torch.from_numpy(np.array(row))
        return {self.key: row, "labels": self.labels[index]}

    @property
    def on_disk(self) -> bool:
        return isinstance(self.features, np.memmap)


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
            labels = torch.empty(len(mine), dtype=torch.long)
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
                    shard = _allocate(split, len(mine), features.shape[1:], budget, settings.cache_dir)
                # one process writes rows in dataset order; several write their shard in order, gathered below
                rows = mine[done : done + len(features)] if alone else slice(done, done + len(features))
                shard[rows] = features.cpu().numpy() if isinstance(shard, np.ndarray) else features.cpu()
                labels[rows] = batch["labels"].cpu().long()
                done += len(features)
            if not checked and name == next(iter(splits)):  # no example here: the others still agree on the cut
                _agree_on_the_cut(None, device)
                checked = True
            shape = _agreed_shape(None if shard is None else tuple(shard.shape[1:]), device)
            if shape is None:
                raise WarmstartError(f"the {name} split is empty: nothing to cache")
            if shard is None:  # this process had no example of the split
                shard = torch.empty((0, *shape))
            store, all_labels = _whole_table(name, order, shard, labels, budget, settings.cache_dir, device)
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


def _whole_table(
    name: str,
    order: list[int],
    shard: torch.Tensor | np.ndarray,
    labels: torch.Tensor,
    budget: list[float],
    cache_dir: Path | None,
    device: torch.device,
) -> tuple[torch.Tensor | np.ndarray, torch.Tensor]:
    """A split's features and labels in dataset order, from this process's shard (all of it in one process) and,
    with several processes, the others' (gathered a block at a time, into memory or onto disk)."""
    if not distributed_active():  # one process: the shard is the table, written in dataset order
        return _read_only(shard), labels
    store = _allocate(name, len(order), shard.shape[1:], budget, cache_dir)
    index = torch.tensor(order)
    for start, stop, rows in gathered_blocks(shard, len(order), device):
        where = index[start:stop]
        if isinstance(store, np.ndarray):
            store[where.numpy()] = rows.numpy()
        else:
            store[where] = rows
    all_labels = torch.empty(len(order), dtype=torch.long)
    for start, stop, rows in gathered_blocks(labels, len(order), device):
        all_labels[index[start:stop]] = rows
    if isinstance(shard, torch.Tensor):
        budget[0] += shard.numel() * 4 / 2**20  # the shard's memory is free again
    _drop(shard)
    return _read_only(store), all_labels


def _drop(array: torch.Tensor | np.ndarray) -> None:
    """Deletes the file behind a memory-mapped array (a shard, once gathered)."""
    if isinstance(array, np.memmap) and array.filename:
        path = Path(array.filename)
        del array
        path.unlink(missing_ok=True)


def _read_only(store: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    if isinstance(store, np.memmap):
        store.flush()
        return np.load(store.filename, mmap_mode="r")
    return store


def _allocate(
    split: str, rows: int, shape: tuple[int, ...], budget: list[float], cache_dir: Path | None
) -> torch.Tensor | np.ndarray:
    """Room for a split's features: in memory while the budget (``budget[0]`` MiB, lowered by what is taken) lasts,
    else a memory-mapped file in ``cache_dir``."""
    size_mb = rows * math.prod(shape) * 4 / 2**20
    if size_mb <= budget[0]:
        budget[0] -= size_mb
        return torch.empty((rows, *shape), dtype=torch.float32)
    if cache_dir is None:
        raise WarmstartError(
            f"the {split} features take {size_mb:.0f} MiB, over the {max(budget[0], 0):.0f} MiB left of the feature "
            "cache's memory budget, and no cache directory was given"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{split}.npy"
    logger.info("the %s features take %.0f MiB: memory-mapped at %s", split, size_mb, path)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, *shape))


def default_cache_dir(output_dir: Path, rank: int = 0) -> Path:
    """Where a process of a run spills features: under the output directory, one folder per machine and rank (the
    processes compute a shard each, then every process holds the whole table)."""
    return output_dir / CACHE_DIR_NAME / f"{socket.gethostname()}-rank{rank}"


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
