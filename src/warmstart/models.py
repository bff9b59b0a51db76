"""Loading backbones as classifiers sized to a label set: timm models (inside transformers' TimmWrapper, so the
Trainer, pipelines and the Hub see a normal transformers model) and BERT-family sequence classifiers.

Sources, everything offline: a local hub-format directory (a warmstart output, timm's ``save_for_hf``, or a
TimmWrapper ``save_pretrained``), a hub id already in the Hugging Face cache, or a timm architecture name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from timm.models import get_model_args
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
)

from warmstart.errors import WarmstartError

logger = logging.getLogger(__name__)

# What a model trained or exported by transformers / timm calls itself in config.json.
_TIMM_WRAPPER_TYPE = "timm_wrapper"


def read_model_config(path: str | Path) -> dict[str, Any] | None:
    """The ``config.json`` of a local model directory, ``None`` if ``path`` is not a directory.

    Raises:
        WarmstartError: ``path`` is a directory but holds no readable ``config.json``.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    config_file = path / "config.json"
    if not config_file.is_file():
        raise WarmstartError(
            f"{path} is a directory but not a model (no config.json): point --model_name_or_path "
            "at a hub-format model directory, a hub id or a timm model name"
        )
    try:
        return json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WarmstartError(f"{config_file} cannot be read as JSON ({err}): the model directory is damaged") from None


def is_image_model_config(config: dict[str, Any]) -> bool:
    """Whether a ``config.json`` describes a timm (image) model."""
    return "architecture" in config or config.get("model_type") == _TIMM_WRAPPER_TYPE


def _label_names_of(timm_model: nn.Module) -> list[str] | None:
    names = timm_model.pretrained_cfg.get("label_names")
    return [str(n) for n in names] if names else None


def _create_timm(model_name_or_path: str, *, pretrained: bool, purpose: str = "fine-tune", **kwargs: Any) -> nn.Module:
    """timm.create_model with offline-friendly, one-line errors (``purpose``: what the caller does with the model,
    for the recipe a text model is sent to)."""
    local = read_model_config(model_name_or_path)
    if local is not None:
        if not is_image_model_config(local):
            other = "pretrain_mlm.py" if purpose == "pretrain" else "text_classification.py"
            raise WarmstartError(
                f"{model_name_or_path} holds a {local.get('model_type', 'non-timm')!r} model, not a timm image model: "
                f"{purpose} it with recipes/{other}"
            )
        architecture = local.get("architecture")
        if architecture is not None and not timm.is_model(architecture):
            raise WarmstartError(
                f"{model_name_or_path} holds a {architecture!r} model, an architecture timm {timm.__version__} does "
                "not know: check config.json, or upgrade timm"
            )
        if "pretrained_cfg" not in local:
            return _timm_from_wrapper_dir(model_name_or_path, pretrained=pretrained)
        # num_classes in model_args would clash with the one create_model is given; drop it, the head is sized later
        model_args = {k: v for k, v in (local.get("model_args") or {}).items() if k != "num_classes"}
        pretrained_cfg = dict(local["pretrained_cfg"], file=str(_weights_file(Path(model_name_or_path))))
        pretrained_cfg["num_classes"] = local.get("num_classes", pretrained_cfg.get("num_classes"))
        if local.get("label_names"):
            pretrained_cfg["label_names"] = local["label_names"]
        return _load_checked(
            lambda _: timm.create_model(
                architecture, pretrained=pretrained, pretrained_cfg=pretrained_cfg, **{**model_args, **kwargs}
            ),
            model_name_or_path,
        )
    name = model_name_or_path.removeprefix("hf-hub:")
    is_hub_id = "/" in name
    if not is_hub_id and not timm.is_model(name):
        raise WarmstartError(
            f"unknown model {model_name_or_path!r}: not a local directory, not a hub id (org/name) and not a timm "
            "architecture (see timm.list_models())"
        )
    try:
        return timm.create_model(f"hf-hub:{name}" if is_hub_id else name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        if isinstance(err, RuntimeError) and "Unknown model" not in str(err) and "offline" not in str(err).lower():
            raise
        raise WarmstartError(
            f"cannot load {model_name_or_path!r} offline: it is not in the Hugging Face cache ({type(err).__name__}); "
            "download it once with network access, pass a local directory, or use --random_init"
        ) from None


def _weights_file(path: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    raise WarmstartError(f"{path} has a config.json but no model.safetensors: the model directory is incomplete")


def _timm_from_wrapper_dir(path: str, *, pretrained: bool) -> nn.Module:
    """A directory written by transformers' TimmWrapper save_pretrained (no timm pretrained_cfg)."""
    config = TimmWrapperConfig.from_pretrained(path)
    if not pretrained:
        return timm.create_model(config.architecture, pretrained=False, **(config.model_args or {}))
    wrapper = _load_checked(TimmWrapperForImageClassification.from_pretrained, path)
    timm_model = wrapper.timm_model
    timm_model.pretrained_cfg = dict(timm_model.pretrained_cfg, label_names=list(config.id2label.values()))
    return timm_model


def _load_checked(load, path: str, **kwargs: Any):
    try:
        return load(path, **kwargs)
    # torch raises OSError / RuntimeError on foreign files; safetensors a SafetensorError (an Exception) on truncated
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WarmstartError(f"cannot load the model in {path}: {first_line[:200]}") from None


def load_timm_backbone(
    model_name_or_path: str, *, random_init: bool = False, image_size: int | None = None, purpose: str = "fine-tune"
) -> nn.Module:
    """Loads a timm model as it was saved (its own head, if any), rebuilt for ``image_size`` where the model has a
    fixed input size (ViTs: timm resamples the position embeddings when it builds the model).

    Raises:
        WarmstartError: the model cannot be found or loaded, or it is not a timm model.
    """
    timm_model = _create_timm(model_name_or_path, pretrained=not random_init, purpose=purpose)
    fixed_size = timm_model.pretrained_cfg.get("fixed_input_size")
    if image_size and fixed_size and tuple(timm_model.pretrained_cfg["input_size"][1:]) != (image_size, image_size):
        timm_model = _create_timm(model_name_or_path, pretrained=not random_init, purpose=purpose, img_size=image_size)
    return timm_model


def load_image_model(
    model_name_or_path: str,
    labels: list[str],
    *,
    random_init: bool = False,
    image_size: int | None = None,
    reset_head: bool = False,
) -> TimmWrapperForImageClassification:
    """Loads a timm backbone as a transformers image classifier with a head for ``labels``.

    The pretrained head is kept when the checkpoint's label names equal ``labels`` (continuing a warmstart run on
    the same task) and ``reset_head`` is off; otherwise it is replaced by a new one sized to ``labels``.

    Args:
        model_name_or_path: a local hub-format directory, a hub id in the HF cache (``timm/resnet18.a1_in1k``)
            or a timm architecture name (``resnet18``; with pretrained weights only if they are cached).
        labels: class names, in id order.
        random_init: build the architecture only, with no pretrained weights.
        image_size: input resolution; models with a fixed input size (ViTs) are rebuilt for it.
        reset_head: start a new head even for the same labels.

    Returns:
        A ``TimmWrapperForImageClassification`` whose ``config`` carries ``id2label`` / ``label2id``.

    Raises:
        WarmstartError: the model cannot be found or loaded.
    """
    timm_model = load_timm_backbone(model_name_or_path, random_init=random_init, image_size=image_size)
    return wrap_timm_model(timm_model, labels, reset_head=reset_head)


def keeps_head(old_labels: Sequence[str] | None, labels: Sequence[str], *, reset_head: bool = False) -> bool:
    """Whether a checkpoint's classifier is kept for ``labels`` (logged either way): only for the same label names,
    in the same order, and without ``reset_head``."""
    old = list(old_labels or [])
    if not old:
        return False  # no classifier, or one for nameless ImageNet-style classes: a new head, nothing to say
    if old == list(labels) and not reset_head:
        logger.info("the base model's head for the same %d labels is kept (--reset_head starts a new one)", len(old))
        return True
    reason = "--reset_head" if old == list(labels) else f"its {len(old)} labels differ from the data's {len(labels)}"
    logger.info("the base model's head is replaced by a new one for %d labels (%s)", len(labels), reason)
    return False


def wrap_timm_model(
    timm_model: nn.Module, labels: list[str], *, reset_head: bool = False
) -> TimmWrapperForImageClassification:
    """Puts a timm model inside a transformers ``TimmWrapperForImageClassification`` for ``labels``.

    The classifier is kept when the model's label names (``pretrained_cfg["label_names"]``) equal ``labels`` (and
    not ``reset_head``), and replaced by a new one sized to ``labels`` otherwise.
    """
    keep = keeps_head(_label_names_of(timm_model), labels, reset_head=reset_head)
    if not keep or timm_model.num_classes != len(labels):
        timm_model.reset_classifier(len(labels))
    timm_model.pretrained_cfg = dict(timm_model.pretrained_cfg, num_classes=len(labels), label_names=list(labels))

    model_args = {k: v for k, v in get_model_args(timm_model).items() if k != "num_classes"}
    config = TimmWrapperConfig(
        architecture=timm_model.pretrained_cfg.get("architecture") or type(timm_model).__name__.lower(),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        model_args=model_args or None,
    )
    config.problem_type = "single_label_classification"
    # The wrapper would build a second, random copy of the network; build it on the meta device and put ours in.
    with torch.device("meta"):
        model = TimmWrapperForImageClassification(config)
    model.timm_model = timm_model
    return model


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
        WarmstartError: an image model, or a configuration that cannot be found offline.
    """
    local = read_model_config(model_name_or_path)
    if local is not None and is_image_model_config(local):
        other = "pretrain_autoencoder.py" if purpose == "pretrain" else "image_classification.py"
        raise WarmstartError(f"{model_name_or_path} is a timm image model: {purpose} it with recipes/{other}")
    try:
        return AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        _refuse_custom_code(model_name_or_path, err)
        raise WarmstartError(
            f"cannot load the configuration of {model_name_or_path!r} ({type(err).__name__}): give a local model "
            "directory or a hub id already in the Hugging Face cache (warmstart runs offline)"
        ) from None


def load_text_model(
    model_name_or_path: str,
    labels: list[str],
    *,
    random_init: bool = False,
    trust_remote_code: bool = False,
    reset_head: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads a BERT-family model with a sequence classification head for ``labels``, and its tokenizer.

    The checkpoint's classifier is kept only when its label names equal ``labels`` and ``reset_head`` is off; a
    masked-LM or bare encoder checkpoint (a pretraining run) gets a new head.

    Raises:
        WarmstartError: the model or its tokenizer cannot be found or loaded, or it is an image model.
    """
    config = load_text_config(model_name_or_path, trust_remote_code=trust_remote_code)
    old_labels = [config.id2label[i] for i in sorted(config.id2label)] if config.id2label else []
    had_classifier = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    keep_head = keeps_head(old_labels if had_classifier else None, labels, reset_head=reset_head)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.problem_type = "single_label_classification"
    tokenizer = load_text_tokenizer(model_name_or_path, trust_remote_code=trust_remote_code)
    if random_init:
        model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
        _loss_is_a_batch_mean(model)
        return model, tokenizer
    with _without_load_report():
        model, loading_info = _load_checked(
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
    _loss_is_a_batch_mean(model)
    model.warmstart_new_weights = frozenset(fresh)
    return model, tokenizer


def newly_initialised(model: nn.Module) -> frozenset[str]:
    """The parameter names of a model from :func:`load_text_model` that loading initialised afresh (a new head, or
    weights the checkpoint lacked), not from the checkpoint; empty for other models (a timm model's new classifier
    is its only new part)."""
    return getattr(model, "warmstart_new_weights", frozenset())


def _loss_is_a_batch_mean(model: PreTrainedModel) -> None:
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
def _without_load_report(*also: str):
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
