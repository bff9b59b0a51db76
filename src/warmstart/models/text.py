"""Loading BERT-family text models (a local directory, or a hub id downloaded from the Hub as transformers does, or
read from the Hugging Face cache with ``HF_HUB_OFFLINE=1``): the configuration (refusing a timm image model with the
recipe to use instead), the tokenizer (refused without a vocabulary), a sequence classifier with a head for a label
set (new unless the checkpoint's labels are the same), the load report kept to what is worth a warning, and the
truncation length a model takes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from warmstart.errors import WarmstartError, hub_unavailable
from warmstart.models.configs import is_image_model_config, keeps_head, load_checked, read_model_config
from warmstart.problems import SINGLE_LABEL

logger = logging.getLogger(__name__)


def load_text_tokenizer(model_name_or_path: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a text model, refused when it is missing or has no vocabulary.

    Raises:
        WarmstartError: no tokenizer files, or a tokenizer of special tokens only.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        _refuse_custom_code(model_name_or_path, err)
        raise WarmstartError(
            f"cannot load a tokenizer from {model_name_or_path!r} ({type(err).__name__}): the "
            "directory needs tokenizer files next to config.json"
        ) from None
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        # transformers 5 builds a tokenizer of special tokens only when the files are missing: every word is [UNK]
        raise WarmstartError(
            f"the tokenizer of {model_name_or_path!r} has no vocabulary (only special tokens): the directory needs "
            "its tokenizer files (tokenizer.json, or vocab.txt / vocab.json ...) next to config.json"
        )
    return tokenizer


def _refuse_custom_code(model_name_or_path: str, err: Exception) -> None:
    """transformers refuses a model whose only code is its own (``auto_map`` in its config) unless
    ``trust_remote_code``: say so, and how to opt in, instead of a generic loading error."""
    if "trust_remote_code" in str(err):
        raise WarmstartError(
            f"{model_name_or_path!r} needs its own Python code to load (auto_map in its config), which is not run "
            "unless you pass --trust_remote_code true: read that code first, and trust it"
        ) from None


def load_text_config(model_name_or_path: str, *, trust_remote_code: bool = False, purpose: str = "fine-tune") -> Any:
    """The transformers config of a text model, refusing a timm image model with the recipe to use instead.

    Raises:
        WarmstartError: an image model, a local directory without a readable configuration, or a hub id that cannot
            be downloaded (offline: that is not in the Hugging Face cache).
    """
    local = read_model_config(model_name_or_path)
    if local is not None and is_image_model_config(local):
        other = "pretrain_autoencoder.py" if purpose == "pretrain" else "image_classification.py"
        raise WarmstartError(f"{model_name_or_path} is a timm image model: {purpose} it with recipes/{other}")
    try:
        return AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        _refuse_custom_code(model_name_or_path, err)
        if Path(model_name_or_path).exists():  # a local directory: the Hub has nothing to do with it
            raise WarmstartError(
                f"cannot load the configuration of {model_name_or_path!r} ({type(err).__name__}): the directory needs "
                "the config.json of a transformers model"
            ) from None
        raise WarmstartError(
            hub_unavailable(f"the configuration of {model_name_or_path!r}", err) + "; or give a local model directory"
        ) from None


def load_text_model(
    model_name_or_path: str,
    labels: list[str],
    *,
    random_init: bool = False,
    trust_remote_code: bool = False,
    reset_head: bool = False,
    problem_type: str = SINGLE_LABEL,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads a BERT-family model with a sequence classification head for ``labels``, and its tokenizer.

    The checkpoint's classifier is kept only when its label names and ``problem_type`` equal the data's and
    ``reset_head`` is off (the model's ``warmstart_head_kept`` says which); a masked-LM or bare encoder checkpoint (a
    pretraining run) gets a new head. ``problem_type`` (one output per class, label or regression target) is saved
    in the config, where ``pipeline()`` reads whether to apply softmax, sigmoid or nothing.

    Raises:
        WarmstartError: the model or its tokenizer cannot be found or loaded, or it is an image model.
    """
    config = load_text_config(model_name_or_path, trust_remote_code=trust_remote_code)
    old_labels = [config.id2label[i] for i in sorted(config.id2label)] if config.id2label else []
    had_classifier = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    keep_head = keeps_head(
        old_labels if had_classifier else None,
        labels,
        reset_head=reset_head,
        old_problem=config.problem_type,
        problem=problem_type,
    )
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.problem_type = problem_type
    tokenizer = load_text_tokenizer(model_name_or_path, trust_remote_code=trust_remote_code)
    if random_init:
        model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
        loss_is_a_batch_mean(model)
        return model, tokenizer
    with without_load_report():
        model, loading_info = load_checked(
            AutoModelForSequenceClassification.from_pretrained,
            model_name_or_path,
            config=config,
            ignore_mismatched_sizes=True,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
    _warn_about_backbone_keys(model, loading_info)
    mismatched = [k[0] if isinstance(k, tuple) else k for k in loading_info.get("mismatched_keys", ())]
    fresh = {*loading_info.get("missing_keys", ()), *mismatched}
    if had_classifier and not keep_head:
        # same shape, other classes: the old classifier would load silently, so start it afresh
        _reinitialise_head(model)
        in_base = {id(p) for p in model.base_model.parameters()}
        fresh |= {name for name, p in model.named_parameters() if id(p) not in in_base}
    loss_is_a_batch_mean(model)
    model.warmstart_new_weights = frozenset(fresh)
    model.warmstart_head_kept = keep_head and not mismatched
    return model, tokenizer


def loss_is_a_batch_mean(model: PreTrainedModel) -> None:
    """Tells the Trainer that the model's loss is a plain mean over the batch, not one to rescale."""
    # The classifier's forward takes **kwargs, so the Trainer assumes its loss is normalised by the global token
    # count and multiplies it by the number of processes: under DDP the loss and its gradients came out doubled
    # (eval_loss 1.3866 against 0.6933 on one process). Its loss is a plain mean over the batch.
    model.accepts_loss_kwargs = False


def _reinitialise_head(model: PreTrainedModel) -> None:
    """Starts the task head (everything outside the base model) afresh, as transformers initialises a new one."""
    std = getattr(model.config, "initializer_range", 0.02)
    in_base = {id(m) for m in model.base_model.modules()}
    with torch.no_grad():
        for module in model.modules():
            if module is model or id(module) in in_base:
                continue
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif hasattr(module, "reset_parameters") and not list(module.children()):
                module.reset_parameters()


class _DropLoadReport(logging.Filter):
    def __init__(self, phrases: Sequence[str]):
        super().__init__()
        self._phrases = phrases

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(phrase in str(record.msg) for phrase in self._phrases)


@contextmanager
def without_load_report(*also: str):
    """transformers reports the new classification head as MISSING weights on every fine-tune, in a multi-line
    table on stderr: expected here, so dropped; :func:`_warn_about_backbone_keys` keeps what is worth a warning.
    ``also``: more messages (by a phrase in them) the caller reports better itself."""
    report_logger = logging.getLogger("transformers.modeling_utils")
    drop = _DropLoadReport(("LOAD REPORT", *also))
    report_logger.addFilter(drop)
    try:
        yield
    finally:
        report_logger.removeFilter(drop)


def _warn_about_backbone_keys(model: PreTrainedModel, loading_info: dict[str, Any]) -> None:
    """Warns (one line) about backbone weights the checkpoint lacked or had in another shape; the head is new."""
    prefix = model.base_model_prefix + "."
    missing = [k for k in loading_info.get("missing_keys", ()) if k.startswith(prefix)]
    mismatched = [k[0] if isinstance(k, tuple) else k for k in loading_info.get("mismatched_keys", ())]
    mismatched = [k for k in mismatched if k.startswith(prefix)]
    if missing or mismatched:
        logger.warning(
            "the checkpoint lacks %d backbone weights (e.g. %s) and has %d of another shape (e.g. %s): they start "
            "from random values",
            len(missing),
            missing[:3],
            len(mismatched),
            mismatched[:3],
        )


def max_sequence_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requested: int | None) -> int:
    """The truncation length: ``requested``, else the tokenizer's limit, capped at 512 and at what the model takes.

    Raises:
        WarmstartError: ``requested`` is longer than the model's position embeddings.
    """
    model_limit = getattr(model.config, "max_position_embeddings", None) or 512
    if requested is not None:
        if requested > model_limit:
            raise WarmstartError(
                f"--max_seq_length {requested} is longer than the model takes ({model_limit}): "
                f"use at most {model_limit}"
            )
        return requested
    tokenizer_limit = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else 512
    return min(tokenizer_limit, model_limit, 512)
