"""Loading timm backbones (a local hub-format directory; a hub id, or a timm architecture name with pretrained weights,
downloaded from the Hub as timm does, or read from the Hugging Face cache with ``HF_HUB_OFFLINE=1``), and putting one
inside transformers' ``TimmWrapperForImageClassification`` with a head for a label set, so that the Trainer,
pipelines and the Hub see a normal transformers model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import get_model_args
from torch import nn
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

from warmstart.errors import WarmstartError, hub_unavailable
from warmstart.models.configs import is_image_model_config, keeps_head, load_checked, read_model_config
from warmstart.problems import SINGLE_LABEL


def _label_names_of(timm_model: nn.Module) -> list[str] | None:
    names = timm_model.pretrained_cfg.get("label_names")
    return [str(n) for n in names] if names else None


def _create_timm(model_name_or_path: str, *, pretrained: bool, purpose: str = "fine-tune", **kwargs: Any) -> nn.Module:
    """timm.create_model with one-line errors (a model the Hub cannot give says why: offline and not cached, or the
    download failed; ``purpose``: what the caller does with the model, for the recipe a text model is sent to)."""
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
        timm_model = load_checked(
            lambda _: timm.create_model(
                architecture, pretrained=pretrained, pretrained_cfg=pretrained_cfg, **{**model_args, **kwargs}
            ),
            model_name_or_path,
        )
        timm_model.warmstart_problem_type = local.get("problem_type")  # what its head was trained for
        return timm_model
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
            hub_unavailable(repr(model_name_or_path), err) + "; or pass a local directory, or use --random_init"
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
    wrapper = load_checked(TimmWrapperForImageClassification.from_pretrained, path)
    timm_model = wrapper.timm_model
    timm_model.pretrained_cfg = dict(timm_model.pretrained_cfg, label_names=list(config.id2label.values()))
    timm_model.warmstart_problem_type = config.problem_type
    return timm_model


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
    problem_type: str = SINGLE_LABEL,
) -> TimmWrapperForImageClassification:
    """Loads a timm backbone as a transformers image classifier with a head for ``labels``.

    The pretrained head is kept when the checkpoint's label names equal ``labels`` (continuing a warmstart run on
    the same task) and ``reset_head`` is off; otherwise it is replaced by a new one sized to ``labels``.

    Args:
        model_name_or_path: a local hub-format directory, a hub id (``timm/resnet18.a1_in1k``) or a timm
            architecture name (``resnet18``); pretrained weights are downloaded from the Hub, or read from the
            Hugging Face cache with ``HF_HUB_OFFLINE=1``.
        labels: class names, in id order.
        random_init: build the architecture only, with no pretrained weights.
        image_size: input resolution; models with a fixed input size (ViTs) are rebuilt for it.
        reset_head: start a new head even for the same labels.
        problem_type: the label shape (see :func:`wrap_timm_model`).

    Returns:
        A ``TimmWrapperForImageClassification`` whose ``config`` carries ``id2label`` / ``label2id``.

    Raises:
        WarmstartError: the model cannot be found or loaded.
    """
    timm_model = load_timm_backbone(model_name_or_path, random_init=random_init, image_size=image_size)
    return wrap_timm_model(timm_model, labels, reset_head=reset_head, problem_type=problem_type)


def wrap_timm_model(
    timm_model: nn.Module, labels: list[str], *, reset_head: bool = False, problem_type: str = SINGLE_LABEL
) -> TimmWrapperForImageClassification:
    """Puts a timm model inside a transformers ``TimmWrapperForImageClassification`` for ``labels``.

    The classifier is kept when the model's label names (``pretrained_cfg["label_names"]``) and label shape
    (``pretrained_cfg["problem_type"]``) equal the data's (and not ``reset_head``), and replaced by a new one sized
    to ``labels`` otherwise (the model's ``warmstart_head_kept`` says which). ``problem_type`` is saved in the config,
    where ``pipeline()`` reads whether to apply softmax, sigmoid or nothing.
    """
    # what a warmstart output was trained for (its config.json's problem_type; timm's pretrained_cfg has no such key)
    old_problem = getattr(timm_model, "warmstart_problem_type", None)
    keep = keeps_head(
        _label_names_of(timm_model), labels, reset_head=reset_head, old_problem=old_problem, problem=problem_type
    )
    if not keep or timm_model.num_classes != len(labels):
        timm_model.reset_classifier(len(labels))
    kept = keep and timm_model.num_classes == len(labels)
    timm_model.pretrained_cfg = dict(timm_model.pretrained_cfg, num_classes=len(labels), label_names=list(labels))

    model_args = {k: v for k, v in get_model_args(timm_model).items() if k != "num_classes"}
    config = TimmWrapperConfig(
        architecture=timm_model.pretrained_cfg.get("architecture") or type(timm_model).__name__.lower(),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        model_args=model_args or None,
    )
    config.problem_type = problem_type
    # The wrapper would build a second, random copy of the network; build it on the meta device and put ours in.
    with torch.device("meta"):
        model = TimmWrapperForImageClassification(config)
    model.timm_model = timm_model
    model.warmstart_head_kept = kept
    return model
