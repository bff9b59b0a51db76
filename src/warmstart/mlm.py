"""Continued (domain-adaptive) masked-language-model pretraining of BERT-family models: the model and its masked-LM
head, the corpus tokenized and packed into blocks (or one text per example, dynamically padded), masks drawn per
batch in training and once, seeded, for validation, and a save that keeps every backbone weight of the base
(the pooler too, which a masked-LM model does not have) so that classification starts from all of them."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from datasets import DatasetDict
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling, PreTrainedModel

from warmstart.config.objectives import MlmArguments
from warmstart.data import LENGTH_COLUMN
from warmstart.errors import WarmstartError
from warmstart.models import (
    load_checked,
    load_text_config,
    load_text_tokenizer,
    loss_is_a_batch_mean,
    without_load_report,
)

logger = logging.getLogger(__name__)

_IGNORE_INDEX = -100  # positions the masked-LM loss skips


def _has_masked_lm_head(config: Any) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    remote = (getattr(config, "auto_map", None) or {}).get("AutoModelForMaskedLM")
    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES or bool(remote)


def load_mlm_model(
    model_name_or_path: str, *, random_init: bool = False, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, Any, dict[str, torch.Tensor]]:
    """Loads a text model with its masked-LM head, and its tokenizer, for continued pretraining.

    Any checkpoint of a model type with a masked-LM head works: a masked-LM model, a bare encoder (the head then
    starts from random values, tied to the word embeddings where the model ties them: a warning says so), or a
    warmstart classifier (its classifier is left behind).

    Returns:
        The model, the tokenizer, and the base's backbone weights the masked-LM model has no place for (BERT's
        pooler): :func:`save_mlm_model` keeps them, so that a classifier fine-tuned from the output gets them too.

    Raises:
        WarmstartError: an image model, a model type without a masked-LM head, a tokenizer without a mask token, or
            a checkpoint that cannot be loaded.
    """
    config = load_text_config(model_name_or_path, trust_remote_code=trust_remote_code, purpose="pretrain")
    if not _has_masked_lm_head(config):
        raise WarmstartError(
            f"{model_name_or_path!r} is a {config.model_type!r} model, which has no masked-language-model head in "
            "transformers: MLM pretraining needs an encoder such as BERT, RoBERTa, DeBERTa, ELECTRA or ModernBERT"
        )
    tokenizer = load_text_tokenizer(model_name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.mask_token is None:
        raise WarmstartError(
            f"the tokenizer of {model_name_or_path!r} has no mask token: masked-LM pretraining replaces tokens with "
            "one (BERT's [MASK]); use the tokenizer the model was pretrained with"
        )
    if random_init:
        model = AutoModelForMaskedLM.from_config(config, trust_remote_code=trust_remote_code)
        loss_is_a_batch_mean(model)
        return model, tokenizer, {}
    # a bare encoder has no head to tie: transformers calls that a corrupted checkpoint; the warning below says why
    with without_load_report("seem corrupted"):
        model, info = load_checked(
            AutoModelForMaskedLM.from_pretrained,
            model_name_or_path,
            config=config,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
    prefix = model.base_model_prefix + "."
    new_head = [k for k in info.get("missing_keys", ()) if not k.startswith(prefix)]
    if new_head:
        logger.warning(
            "the checkpoint has no masked-LM head: %d of its weights start from random values (e.g. %s), as for an "
            "encoder saved without its pretraining head; the first steps train them",
            len(new_head),
            ", ".join(sorted(new_head)[:2]),
        )
    loss_is_a_batch_mean(model)
    return model, tokenizer, _backbone_weights_left_out(model, model_name_or_path)


def _checkpoint_files(model_name_or_path: str) -> list[Path]:
    """The weight files of a local or cached checkpoint: one safetensors file, its shards, or a pytorch_model.bin."""
    from transformers.utils import cached_file

    def find(name: str) -> Path | None:
        local = Path(model_name_or_path) / name
        if Path(model_name_or_path).exists():
            return local if local.is_file() else None
        found = cached_file(
            model_name_or_path, name, local_files_only=True, _raise_exceptions_for_missing_entries=False
        )
        return Path(found) if found else None

    for single in ("model.safetensors", "pytorch_model.bin"):
        if (path := find(single)) is not None:
            return [path]
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (index := find(index_name)) is not None:
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            return [p for p in (find(shard) for shard in shards) if p is not None]
    return []


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        with safe_open(str(file), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    return torch.load(file, map_location="cpu", weights_only=True, mmap=True)


def _backbone_weights_left_out(model: PreTrainedModel, model_name_or_path: str) -> dict[str, torch.Tensor]:
    prefix = model.base_model_prefix + "."
    own = set(model.state_dict())
    files = _checkpoint_files(model_name_or_path)
    try:
        weights = {k: v for file in files for k, v in _read_weights(file).items()}
    except (OSError, RuntimeError, SafetensorError) as err:
        weights = {}
        logger.warning("cannot read %s (%s)", files, err)
    if not weights:
        logger.warning(
            "the base's weight files could not be read: backbone weights the masked-LM model has no place for (a "
            "pooler) are not carried to the output"
        )
        return {}
    bare = not any(k.startswith(prefix) for k in weights)  # a bare encoder's names lack the prefix
    named = {(prefix + k if bare else k): v for k, v in weights.items()}
    return {k: v for k, v in named.items() if k.startswith(prefix) and k not in own}


def save_mlm_model(
    model: PreTrainedModel, tokenizer: Any, output_dir: str | Path, carried: dict[str, torch.Tensor] | None = None
) -> None:
    """Saves the masked-LM model and its tokenizer (safetensors), with ``carried`` backbone weights of its base
    added to the weights file: a sequence classifier loaded from the directory finds them (BERT's pooler); the
    masked-LM model ignores them."""
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    if not carried:
        return
    carried = {k: v.detach().contiguous().cpu() for k, v in carried.items()}
    single = output_dir / "model.safetensors"
    if single.is_file():
        save_file({**load_file(single), **carried}, single, metadata={"format": "pt"})
        return
    index_file = output_dir / "model.safetensors.index.json"
    shard = "model-carried.safetensors"
    save_file(carried, output_dir / shard, metadata={"format": "pt"})
    index = json.loads(index_file.read_text())
    index["weight_map"].update(dict.fromkeys(carried, shard))
    index_file.write_text(json.dumps(index, indent=2))


def tokenize_corpus(
    splits: DatasetDict,
    tokenizer: Any,
    text_column: str,
    max_length: int,
    *,
    packing: bool,
    mlm: MlmArguments,
    seed: int,
) -> DatasetDict:
    """Tokenizes the texts for masked-LM training.

    With ``packing``, each split's tokens (every text with its own [CLS] / [SEP]) are concatenated, 1,000 texts at
    a time, and cut into blocks of ``max_length`` (the shorter last block of each 1,000 kept): no text is cut off.
    Without, each text is one example, truncated to ``max_length``, with its token count in ``length`` for
    length-grouped batches.

    The validation split is masked here, once, with ``seed``: every evaluation scores the same masks, so its losses
    and perplexities compare across evaluations and runs. Training masks are drawn per batch by the collator.
    """

    def tokenize(batch: dict[str, list]) -> dict[str, Any]:
        encoded = tokenizer(
            batch[text_column],
            truncation=not packing,
            max_length=None if packing else max_length,
            return_special_tokens_mask=True,
            verbose=False,  # packed texts may be longer than the model takes; the blocks are not
        )
        if not packing:
            encoded[LENGTH_COLUMN] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    def pack(batch: dict[str, list]) -> dict[str, list]:
        out = {}
        for key, rows in batch.items():
            flat = [token for row in rows for token in row]
            out[key] = [flat[i : i + max_length] for i in range(0, len(flat), max_length)]
        return out

    out = DatasetDict()
    for split, data in splits.items():
        tokens = data.map(tokenize, batched=True, remove_columns=data.column_names, desc=f"tokenizing {split}")
        if packing:
            tokens = tokens.map(pack, batched=True, batch_size=1000, desc=f"packing {split} into {max_length}-blocks")
        out[split] = tokens
    out["validation"] = _mask_once(out["validation"], tokenizer, mlm, seed)
    return out


def _mask_once(data: Any, tokenizer: Any, mlm: MlmArguments, seed: int) -> Any:
    masker = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm.mlm_probability, seed=seed)

    def mask(batch: dict[str, list]) -> dict[str, list]:
        rows = [{k: batch[k][i] for k in batch if k != LENGTH_COLUMN} for i in range(len(batch["input_ids"]))]
        masked = masker(rows)
        out: dict[str, list] = {k: [] for k in masked}
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            for key, values in masked.items():
                out[key].append(values[i][:n].tolist())
        return out

    keep = [c for c in data.column_names if c in ("special_tokens_mask", LENGTH_COLUMN)]
    return data.map(mask, batched=True, remove_columns=keep, desc="masking validation once")


class MlmCollator:
    """Batches for masked-LM training: training rows are masked here, per batch (fresh masks every epoch);
    validation rows, masked once by :func:`tokenize_corpus`, are only padded (their labels with -100).

    ``seed`` seeds the training masks; give each process its own (``seed + process_index``): the Trainer seeds
    every process alike, and blocks of one length would otherwise get the same masks on every process.
    """

    def __init__(self, tokenizer: Any, mlm: MlmArguments, seed: int | None = None):
        self._mask = DataCollatorForLanguageModeling(
            tokenizer, mlm_probability=mlm.mlm_probability, pad_to_multiple_of=mlm.pad_to_multiple_of, seed=seed
        )
        self._tokenizer = tokenizer
        self._multiple = mlm.pad_to_multiple_of

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        examples = [{k: v for k, v in e.items() if k != LENGTH_COLUMN} for e in examples]
        if "labels" not in examples[0]:
            return self._mask(examples)
        labels = [e["labels"] for e in examples]
        batch = self._tokenizer.pad(
            [{k: v for k, v in e.items() if k != "labels"} for e in examples],
            pad_to_multiple_of=self._multiple,
            return_tensors="pt",
        )
        width = batch["input_ids"].shape[1]
        batch["labels"] = torch.tensor([row + [_IGNORE_INDEX] * (width - len(row)) for row in labels])
        return batch


def perplexity(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """``<prefix>_perplexity``: exp of the masked-LM loss (the cross-entropy on masked tokens, averaged per batch)."""
    loss = metrics.get(f"{prefix}_loss")
    if loss is None:
        return {}
    return {f"{prefix}_perplexity": math.exp(loss) if loss < 700 else float("inf")}
