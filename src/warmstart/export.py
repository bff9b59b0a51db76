"""Hub-format output: weights as safetensors, a config.json that both timm and transformers load, the tokenizer or
image-processor files, the resolved run configuration and a model card (written by :mod:`warmstart.model_card`, whose
``write_model_card``, ``add_exported_files`` and ``validate_model_card`` are importable from here too)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import transformers
import yaml
from safetensors.torch import save_file
from timm.models._hub import save_config_for_hf
from transformers import PreTrainedModel

from warmstart.errors import WarmstartError
from warmstart.model_card import add_exported_files as add_exported_files
from warmstart.model_card import validate_model_card as validate_model_card
from warmstart.model_card import write_model_card as write_model_card
from warmstart.run_folder import CONFIG_NAME, read_run_config

logger = logging.getLogger(__name__)

_MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")
# Keys of the resolved config that may change between two runs of the same model without changing the model.
_VOLATILE_KEYS = (
    "logging_dir",
    "output_dir",
    "overwrite_output_dir",
    "resume_from_checkpoint",
    "push_to_hub",
    "hub_model_id",
    "hub_token",
    "report_to",
    "run_name",
    "feature_cache_memory_mb",  # where cached features live, not what they are
    "precision_evidence",  # the measurement behind an automatic precision choice
    "preempt_exit_code",  # how a stop is reported, not what is trained
    "max_bad_fraction",
    "peer_timeout",  # when a lost rank is given up on  # when a run with bad examples stops, not what it trains on
)


_COMPARED_SECTIONS = ("model", "data", "freeze", "objective", "regularization", "performance", "training")


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a resolved config that decide which model a run makes."""
    return {
        section: {k: v for k, v in (config.get(section) or {}).items() if k not in _VOLATILE_KEYS}
        for section in _COMPARED_SECTIONS
    }


def check_output_dir(output_dir: str | Path, resolved_config: dict[str, Any], overwrite: bool) -> None:
    """Refuses to write into a directory that holds a different model, unless ``overwrite``.

    A directory holding the output of the same configuration (a rerun) is accepted.

    Raises:
        WarmstartError: the directory holds another model, or it cannot be written.
    """
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise WarmstartError(f"--output_dir {path} is a file: give a directory")
    if path.is_dir() and not overwrite and any((path / name).exists() for name in _MODEL_FILES):
        try:
            previous = read_run_config(path / CONFIG_NAME)
        except (OSError, yaml.YAMLError):
            previous = None
        same = previous is not None and comparable_config(previous) == comparable_config(resolved_config)
        if not same:
            raise WarmstartError(
                f"--output_dir {path} already holds a different model: choose another --output_dir or pass "
                "--overwrite_output_dir to replace it"
            )
    # probe the directory, or the folder it will be made in, without making it: a run that fails on its data or
    # model leaves nothing behind (train_evaluate_save makes it)
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise WarmstartError(
            f"--output_dir {path} cannot be written ({existing} is not a writable folder): choose another"
        )


def contiguous_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with its tensors made contiguous, in place (the state dict keeps its metadata). The Trainer saves a
    model that is not a ``PreTrainedModel`` (the LP-FT wrapper, the autoencoder) with safetensors' ``save_file``,
    which refuses the strided tensors of a channels_last CNN; ``save_pretrained`` makes them contiguous itself."""
    import torch

    for key, value in state.items():
        if isinstance(value, torch.Tensor) and not value.is_contiguous():
            state[key] = value.contiguous()
    return state


def refuse_foreign_model(output_dir: Path, marker: str, owner: str, overwrite: bool) -> None:
    """Refuses an ``output_dir`` that holds a model ``owner`` (a comparison, a search) did not put there: one
    without ``marker``, the file ``owner`` leaves beside the model it keeps.

    Raises:
        WarmstartError: it holds another model and ``overwrite`` is off.
    """
    if (output_dir / "config.json").is_file() and not (output_dir / marker).is_file() and not overwrite:
        raise WarmstartError(
            f"--output_dir {output_dir} already holds a model that is not {owner}'s: choose another --output_dir or "
            "pass --overwrite_output_dir true"
        )


def markdown_cell(value: Any) -> str:
    """A table cell: thousands separators for integers, 4 significant digits for floats, empty for ``None``."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], best: Any = None) -> str:
    """A markdown table of ``rows`` with ``columns`` as ``(key, title)``; the row that is ``best`` is marked in its
    first cell."""
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = [markdown_cell(row.get(key)) for key, _ in columns]
        if best is not None and row is best:
            cells[0] = f"**{cells[0]}** (best)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_resolved_config(output_dir: str | Path, resolved_config: dict[str, Any]) -> Path:
    """Writes the run's resolved configuration as ``warmstart_config.yaml`` (tokens already redacted)."""
    path = Path(output_dir) / CONFIG_NAME
    path.write_text(yaml.safe_dump(resolved_config, sort_keys=False, allow_unicode=True))
    return path


def public_config(config: Any) -> Any:
    """The resolved configuration as it may be published (pushed to the Hub with the model): every local path, absolute
    or relative to the working directory, is replaced by its last part (``/home/alice/acme/train.csv`` becomes
    ``train.csv``), as the model card names data; hub ids, timm names and every other value stay as they are. The
    local ``warmstart_config.yaml`` keeps the paths, to rerun and reproduce the run here.

    Args:
        config: the resolved configuration (nested dicts and lists of plain values).

    Returns:
        A copy with local paths replaced; ``config`` is left as it was.

    Example:
        >>> public_config({"data": {"train_file": "/srv/acme/train.csv", "dataset_name": "imdb"}})
        {'data': {'train_file': 'train.csv', 'dataset_name': 'imdb'}}
    """
    if isinstance(config, dict):
        return {key: public_config(value) for key, value in config.items()}
    if isinstance(config, (list, tuple)):
        return [public_config(value) for value in config]
    if isinstance(config, str):
        return _public_value(config)
    return config


def hub_upload_operations(output_dir: str | Path, ignore_patterns: Sequence[str] = ()) -> list[Any]:
    """What pushing ``output_dir`` to the Hub uploads, as one commit's operations: every file ``upload_folder``
    would send (the same patterns left out), with ``warmstart_config.yaml`` replaced by its :func:`public_config`
    (the local one keeps its paths). Pass them to ``HfApi.create_commit``.

    Args:
        output_dir: the model directory.
        ignore_patterns: ``fnmatch`` patterns of paths (relative to ``output_dir``) not to upload (checkpoints).

    Returns:
        ``huggingface_hub.CommitOperationAdd`` operations, in path order.
    """
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
    from huggingface_hub.utils import filter_repo_objects

    root = Path(output_dir)
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    operations = []
    for name in filter_repo_objects(names, ignore_patterns=[*DEFAULT_IGNORE_PATTERNS, *ignore_patterns]):
        content: str | bytes = str(root / name)
        if name == CONFIG_NAME:
            published = public_config(read_run_config(root / name))
            content = yaml.safe_dump(published, sort_keys=False, allow_unicode=True).encode()
        operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=content))
    return operations


def _public_value(value: str) -> str:
    prefix = "local-dir:" if value.startswith("local-dir:") else ""  # timm's name for a local model directory
    path = os.path.expanduser(value.removeprefix(prefix))
    if not path or "\n" in path:
        return value
    local = os.path.isabs(path) or bool(prefix)
    if not local:
        try:
            local = Path(path).exists()
        except (OSError, ValueError):  # a value too long or odd for a file name is no path
            local = False
    return prefix + (Path(path).name or path) if local else value


def save_image_model(model: PreTrainedModel, output_dir: str | Path, data_config: dict[str, Any]) -> None:
    """Saves a TimmWrapper image classifier so that both libraries load it.

    ``timm.create_model("local-dir:...")`` needs timm's config layout (``architecture``, ``pretrained_cfg``) and
    unprefixed weight names; ``AutoModelForImageClassification`` needs ``model_type: timm_wrapper`` and chokes on
    ``num_classes`` inside ``model_args``. The file written here is timm's layout plus the transformers keys, with
    ``num_classes`` only at the top level, where both read it.

    Args:
        model: a ``TimmWrapperForImageClassification``.
        output_dir: the directory.
        data_config: the preprocessing the model was trained with (timm's ``resolve_data_config`` output); it
            becomes the ``pretrained_cfg`` that timm transforms, the transformers image processor and pipelines use.
    """
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    save_timm_for_hub(
        model.timm_model,
        output_dir,
        data_config,
        architectures=["TimmWrapperForImageClassification"],
        model_config={"label_names": labels},
        extra={"problem_type": model.config.problem_type or "single_label_classification"},
    )


def save_timm_for_hub(
    timm_model: Any,
    output_dir: str | Path,
    data_config: dict[str, Any],
    *,
    architectures: list[str],
    model_config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Writes a timm model's weights (safetensors, timm's names) and a ``config.json`` that timm and transformers
    both load: timm's ``save_config_for_hf`` layout, ``num_classes`` at the top level only, plus
    ``model_type: timm_wrapper`` and ``architectures`` (``TimmWrapperForImageClassification``, or
    ``TimmWrapperModel`` for an encoder without a classifier).

    Raises:
        WarmstartError: ``data_config`` does not fit the model (a fixed-size ViT given another image size).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir / "config.json"
    try:
        save_config_for_hf(timm_model, str(config_path), model_config=model_config, data_config=data_config)
    except ValueError as err:  # timm: "Requested image size (224, 224), but the model requires (32, 32)."
        raise WarmstartError(
            f"cannot save the model with this data config ({err}): pass the data config of the training images"
        ) from None
    state = {k: v.detach().contiguous().cpu() for k, v in timm_model.state_dict().items()}
    save_file(state, output_dir / "model.safetensors", metadata={"format": "pt"})
    config = json.loads(config_path.read_text())
    config.get("model_args", {}).pop("num_classes", None)
    config.update(
        model_type="timm_wrapper",
        architectures=architectures,
        do_pooling=True,
        transformers_version=transformers.__version__,
        **(extra or {}),
    )
    config_path.write_text(json.dumps(config, indent=2))


_COPIED = ".warmstart_copied.json"


def copy_run_output(source: Path, output_dir: Path, skip: Sequence[str] = ()) -> None:
    """Copies a run's output files (and its ``adapter/``; not its checkpoints) into ``output_dir``, first removing
    what an earlier copy put there (listed in a manifest), so that no file of an earlier best stays behind."""
    import shutil

    manifest = output_dir / _COPIED
    if manifest.is_file():
        for name in json.loads(manifest.read_text()):
            target = output_dir / name
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists():
                target.unlink()
    copied = []
    for item in sorted(source.iterdir()):
        if item.name in skip:
            continue
        if item.is_file():
            shutil.copy2(item, output_dir / item.name)
            copied.append(item.name)
        elif item.is_dir() and item.name == "adapter":
            shutil.copytree(item, output_dir / item.name, dirs_exist_ok=True)
            copied.append(item.name)
    manifest.write_text(json.dumps(copied))


def save_text_model(model: PreTrainedModel, tokenizer: Any, output_dir: str | Path) -> None:
    """Saves a transformers text classifier and its tokenizer (safetensors weights)."""
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
