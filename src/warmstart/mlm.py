"""Continued (domain-adaptive) masked-language-model pretraining of BERT-family models: the model and its masked-LM
head, the corpus tokenized and packed into blocks (or one text per example, dynamically padded), masks drawn per
batch in training and once, seeded, for validation, and a save that keeps every backbone weight of the base
(the pooler too, which a masked-LM model does not have) so that classification starts from all of them."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import DatasetDict
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling, PreTrainedModel

from warmstart.data import LENGTH_COLUMN
from warmstart.errors import WarmstartError
from warmstart.models import _load_checked, _without_load_report, load_text_config, load_text_tokenizer

logger = logging.getLogger(__name__)

_IGNORE_INDEX = -100  # positions the masked-LM loss skips


@dataclass
class MlmArguments:
    mlm_probability: float = field(
        default=0.15, metadata={"help": "Fraction of tokens masked for prediction (BERT: 0.15; 80/10/10 replaced)."}
    )
    packing: bool = field(
        default=True,
        metadata={
            "help": "Concatenate the tokenized texts and cut them into blocks of --max_seq_length (no padding); "
            "false: one text per example, truncated, padded per batch and batched by length."
        },
    )
    whole_word_mask: bool = field(
        default=False, metadata={"help": "Mask all the sub-word tokens of a word together (needs a fast tokenizer)."}
    )
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "Pad each batch to a multiple of this (8 suits GPU tensor cores)."}
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.mlm_probability < 1.0:
            raise WarmstartError(f"--mlm_probability must be between 0 and 1, got {self.mlm_probability}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise WarmstartError(f"--pad_to_multiple_of must be a positive integer, got {self.pad_to_multiple_of}")

    def describe(self) -> str:
        """The objective for the model card and lineage."""
        words = "whole words" if self.whole_word_mask else "tokens"
        batches = "texts packed into full blocks" if self.packing else "one text per example, padded per batch"
        return f"masked-LM, {self.mlm_probability:.0%} of {words} masked; {batches}"


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
        return AutoModelForMaskedLM.from_config(config, trust_remote_code=trust_remote_code), tokenizer, {}
    # a bare encoder has no head to tie: transformers calls that a corrupted checkpoint; the warning below says why
    with _without_load_report("seem corrupted"):
        model, info = _load_checked(
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
    return model, tokenizer, _backbone_weights_left_out(model, model_name_or_path)


def _checkpoint_file(model_name_or_path: str) -> Path | None:
    """The single safetensors file of a local or cached checkpoint, if it has one."""
    local = Path(model_name_or_path) / "model.safetensors"
    if local.is_file():
        return local
    if Path(model_name_or_path).exists():
        return None
    from transformers.utils import cached_file

    found = cached_file(
        model_name_or_path, "model.safetensors", local_files_only=True, _raise_exceptions_for_missing_entries=False
    )
    return Path(found) if found else None


def _backbone_weights_left_out(model: PreTrainedModel, model_name_or_path: str) -> dict[str, torch.Tensor]:
    file = _checkpoint_file(model_name_or_path)
    if file is None:
        return {}
    prefix = model.base_model_prefix + "."
    own = set(model.state_dict())
    try:
        with safe_open(str(file), "pt") as f:
            keys = list(f.keys())
            bare = not any(k.startswith(prefix) for k in keys)  # a bare encoder's names lack the prefix
            named = {(prefix + k if bare else k): k for k in keys}
            return {full: f.get_tensor(k) for full, k in named.items() if full.startswith(prefix) and full not in own}
    except (OSError, SafetensorError) as err:
        logger.warning("cannot read the backbone weights of %s to keep (%s)", file, err)
        return {}


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

    With ``packing``, each split's tokens (every text with its own [CLS] / [SEP]) are concatenated and cut into
    blocks of ``max_length`` (the last, shorter block kept): no padding, no text cut off. Without, each text is one
    example, truncated to ``max_length``, with its token count in ``length`` for length-grouped batches.

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
    masker = DataCollatorForLanguageModeling(
        tokenizer, mlm_probability=mlm.mlm_probability, whole_word_mask=mlm.whole_word_mask, seed=seed
    )

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
    validation rows, masked once by :func:`tokenize_corpus`, are only padded (their labels with -100)."""

    def __init__(self, tokenizer: Any, mlm: MlmArguments):
        self._mask = DataCollatorForLanguageModeling(
            tokenizer,
            mlm_probability=mlm.mlm_probability,
            whole_word_mask=mlm.whole_word_mask,
            pad_to_multiple_of=mlm.pad_to_multiple_of,
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
    """``<prefix>_perplexity``: exp of the masked-LM loss (the mean cross-entropy over masked tokens)."""
    loss = metrics.get(f"{prefix}_loss")
    if loss is None:
        return {}
    return {f"{prefix}_perplexity": math.exp(loss) if loss < 700 else float("inf")}
