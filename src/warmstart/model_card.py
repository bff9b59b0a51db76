"""The model card, ``README.md``: the Hub's metadata (``model-index`` from the card's own metrics, built with
``huggingface_hub``'s ``ModelCardData`` / ``EvalResult`` so that it is the Hub's schema; base model, library, pipeline
tag, tags, license, datasets) above what the model is, where it came from, how it was trained, how well it does and how
to load it; the section that lists exported files; and the check that a card's metadata is what the Hub reads."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

import warmstart
from warmstart.data.sources import CORPUS_BUILDERS
from warmstart.errors import WarmstartError
from warmstart.lineage import lineage_markdown

CARD_NAME = "README.md"
EXPORTED_FILES_HEADING = "## Exported files"

_CARD_METRIC_PREFIXES = ("eval_", "test_", "train_loss", "train_runtime", "train_samples", "epoch")
# warmstart's metric -> the Hub's metric type (evaluate's name where it has one) and the name a reader sees, in the
# order model-index lists them; what the table does not know (timings, sample counts, --extra_metrics) stays out
_HUB_METRICS = {
    "accuracy": ("accuracy", "Accuracy"),
    "f1_micro": ("f1", "F1 (micro)"),  # the multi-label headline first
    "f1_macro": ("f1", "F1 (macro)"),
    "roc_auc": ("roc_auc", "ROC AUC"),
    "mean_average_precision": ("mean_average_precision", "Mean average precision"),
    "subset_accuracy": ("exact_match", "Subset accuracy"),
    "hamming_loss": ("hamming_loss", "Hamming loss"),
    "rmse": ("rmse", "RMSE"),
    "mse": ("mse", "MSE"),
    "mae": ("mae", "MAE"),
    "r2": ("r_squared", "R2"),
    "pearson": ("pearsonr", "Pearson r"),
    "spearman": ("spearmanr", "Spearman rho"),
    "perplexity": ("perplexity", "Perplexity"),
    "loss": ("loss", "Loss"),
}
# the metrics' prefix -> the split they were measured on
_METRIC_SPLITS = {"eval_": "validation", "test_": "test"}
_TASK_NAMES = {
    "text-classification": "Text Classification",
    "image-classification": "Image Classification",
    "fill-mask": "Masked Language Modeling",
    "image-feature-extraction": "Masked Image Modeling",
}
_SHAPE_NAMES = {"multi_label_classification": " (multi-label)", "regression": " (regression)"}
# how ModelArguments.describe and the lineage mark a model built without its pretrained weights
_RANDOM_INIT = " (random init)"


def write_model_card(output_dir: str | Path, card: dict[str, Any]) -> Path:
    """Writes ``README.md``: the Hub's metadata, then what the model is, where it came from, how it was trained, how
    well it does, and how to load it.

    Args:
        output_dir: the model directory (its ``config.json``, when already written, may give the license).
        card: ``modality`` (``image`` / ``text``), ``base_model``, ``data`` (a description), ``metrics``,
            ``training`` (selected training arguments), optionally ``data_source`` (the ``data`` section of the
            resolved config: the hub dataset id or the file names, for ``datasets`` and ``model-index``),
            ``license`` (a Hub license id; else the base model's, where its ``config.json`` records one, as timm's
            ``pretrained_cfg`` does; else none), ``lineage`` (see :mod:`warmstart.lineage`), ``images``
            (``(caption, file name)`` pairs of PNGs in the directory), ``per_class`` (a markdown table) and
            ``exported_files`` (``(relative path, description)`` pairs, see :func:`add_exported_files`). A
            classifier's card has ``labels``, ``policy`` (a :class:`FreezePolicy` dict), ``policy_description`` and
            ``freeze_report``; a pretrained encoder's has ``objective`` (a paragraph), ``pipeline_tag`` and ``load``
            (a code block).

    Returns:
        The path of ``README.md``.
    """
    image = card["modality"] == "image"
    classifier = "policy" in card
    base = card["base_model"]
    if Path(base).exists():  # a local directory: its name only, the card may be published
        base = f"{Path(base).resolve().name} (a local model)"
    title = Path(card.get("name") or "warmstart model").name
    metadata = _card_metadata(Path(output_dir), card, title)
    sections = [f"Trained with warmstart {warmstart.__version__} from **{base}**."]
    lineage = card.get("lineage") or {}
    if len(lineage.get("runs") or []) > 1:
        sections.append("## Lineage\n" + lineage_markdown(lineage))
    data = card["data"]
    if classifier:
        labels = card["labels"]
        shown = ", ".join(f"`{label}`" for label in labels[:50]) + (" ..." if len(labels) > 50 else "")
        problem = card.get("problem_type") or "single_label_classification"
        kind = {"multi_label_classification": "labels (multi-label)", "regression": "regression targets"}
        data += f"\n\n{len(labels)} {kind.get(problem, 'classes')}: {shown}"
        if card.get("thresholds"):
            data += (
                "\n\nA label is predicted where its probability (the sigmoid of its logit) reaches its threshold, "
                "tuned on validation (`warmstart_config.yaml`, `targets`): "
                + ", ".join(f"`{k}` {v:.3f}" for k, v in list(card["thresholds"].items())[:50])
            )
        if problem == "regression":
            data += (
                "\n\nThe model outputs values in the targets' own units (the training scale is folded into its head)."
            )
    sections.append(f"## Data\n{data}")
    if classifier:
        report = card["freeze_report"]
        sections.append(
            f"""## Freezing policy
{card["policy_description"]}: {report["trainable_params"]:,} of {report["total_params"]:,} parameters trained
({100.0 * report["trainable_params"] / max(report["total_params"], 1):.2f}%).

- trainable groups: {", ".join(report["trainable_groups"]) or "none"}
- frozen groups: {", ".join(report["frozen_groups"]) or "none"}
- policy: `{json.dumps(card["policy"])}`"""
        )
        if card.get("probe"):
            sections.append(f"### Solved probe\n{card['probe']}")
        if card.get("weights"):
            sections.append(f"### Weights\n{card['weights']}")
    else:
        sections.append(f"## Objective\n{card['objective']}")
    sections.append(f"## Results\n{_metrics_table(card['metrics'])}")
    if card.get("per_class"):
        heading = {"multi_label_classification": "Per label", "regression": "Per target"}
        sections.append(f"### {heading.get(card.get('problem_type'), 'Per class')}\n{card['per_class']}")
    for caption, file_name in card.get("images") or ():
        sections.append(f"![{caption}]({file_name})")
    sections.append("## Training\n" + "\n".join(f"- {k}: `{v}`" for k, v in card["training"].items()))
    if card.get("exported_files"):
        sections.append(_exported_files_section(card["exported_files"]))
    sections.append(f"## How to load\n{card.get('load') or _load_snippet(image)}")
    text = f"---\n{metadata.to_yaml()}\n---\n\n# {title}\n\n" + "\n\n".join(sections)
    path = Path(output_dir) / CARD_NAME
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _card_metadata(output_dir: Path, card: dict[str, Any], model_name: str) -> ModelCardData:
    """The card's Hub metadata: ``base_model`` (a hub id only), ``datasets`` (a hub dataset id only),
    ``library_name``, ``license`` (given, or the base model's; never guessed), ``pipeline_tag``, ``tags`` and
    ``model-index`` (one result per split, its metrics taken from ``card["metrics"]``; none without a dataset to
    name or a metric the Hub knows).

    Args:
        output_dir: the model directory.
        card: the card fields (see :func:`write_model_card`).
        model_name: the model's name in ``model-index``.
    """
    image = card["modality"] == "image"
    classifier = "policy" in card
    base = str(card["base_model"]).removeprefix("hf-hub:")  # timm's prefix is no part of the hub id
    pipeline_tag = card.get("pipeline_tag") or ("image-classification" if image else "text-classification")
    source = card.get("data_source") or {}
    hub_dataset = source.get("dataset_name") if _is_hub_id(source.get("dataset_name")) else None
    results = _eval_results(card, pipeline_tag, source)
    return ModelCardData(
        base_model=base if _is_hub_id(base) else None,
        datasets=[hub_dataset] if hub_dataset else None,
        library_name="timm" if image else "transformers",
        license=card.get("license") or _base_license(output_dir, card),
        pipeline_tag=pipeline_tag,
        tags=["warmstart", "fine-tuned" if classifier else "pretrained", card.get("tag") or _strategy(card)],
        eval_results=results or None,
        model_name=model_name if results else None,
    )


def add_exported_files(model_dir: str | Path, files: Sequence[tuple[str, str]]) -> Path:
    """Adds to a model's card the ``## Exported files`` section listing ``files``, or replaces the one it has: the
    metadata and every other section stay as they are, and running it twice with the same files changes nothing.
    The section goes before ``## How to load`` (at the end of a card without one); no files remove it.

    Args:
        model_dir: the model directory, holding ``README.md`` and the files.
        files: ``(path relative to model_dir, description)`` pairs, e.g. ``("onnx/model.onnx", "ONNX graph")``.

    Returns:
        The path of ``README.md``.

    Raises:
        WarmstartError: no card in ``model_dir``, or a path that is absolute, leaves ``model_dir`` or is not there.

    Example:
        >>> add_exported_files("outputs/bert-probe", [("onnx/model.onnx", "ONNX graph, opset 17")])  # doctest: +SKIP
    """
    root = Path(model_dir)
    path = root / CARD_NAME
    if not path.is_file():
        raise WarmstartError(f"{root} has no {CARD_NAME}: write the model card before listing exported files")
    for name, _ in files:
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts or not (root / relative).exists():
            raise WarmstartError(
                f"exported file {name!r} is not a path inside {root}: give paths relative to the model directory, of "
                "files already written"
            )
    text = path.read_text(encoding="utf-8")
    match = re.match(r"\s*---\r?\n.*?\r?\n---[ \t]*(?:\r?\n|$)", text, flags=re.DOTALL)
    front, body = (text[: match.end()], text[match.end() :]) if match else ("", text)
    section = _exported_files_section(files) + "\n\n" if files else ""
    existing = re.search(rf"^{re.escape(EXPORTED_FILES_HEADING)}[ \t]*(?:\n|\Z).*?(?=^## |\Z)", body, re.M | re.S)
    load = re.search(r"^## How to load[ \t]*$", body, re.M)
    if existing:
        body = body[: existing.start()] + section + body[existing.end() :]
    elif load:
        body = body[: load.start()] + section + body[load.start() :]
    elif section:
        body = body.rstrip("\n") + "\n\n" + section
    path.write_text(front + body.rstrip("\n") + "\n", encoding="utf-8")
    return path


def validate_model_card(path: str | Path) -> None:
    """Checks that a model card's metadata is what the Hub reads: ``huggingface_hub.ModelCard.load`` parses it (from
    the local file, nothing downloaded), its ``model-index`` becomes ``card.data.eval_results``, and each result names
    its task, dataset and metrics.

    Args:
        path: a ``README.md``, or the model directory holding it.

    Raises:
        WarmstartError: no card, no metadata block, or metadata the Hub cannot read, in one line.
    """
    file = Path(path) / CARD_NAME if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise WarmstartError(f"{file} does not exist: no model card to check")
    try:
        card = ModelCard.load(file)
    except (ValueError, yaml.YAMLError) as err:
        # huggingface_hub reports a model-index it cannot parse as a ValueError raised while handling the real error
        in_index = isinstance(err.__context__, (KeyError, TypeError)) or "eval_results" in str(err)
        cause = err.__context__ if isinstance(err.__context__, (KeyError, TypeError)) else err
        first = (str(cause).strip().splitlines() or [""])[0][:200]
        hint = (
            "model-index needs results of task.type, dataset.type / dataset.name and metrics of type and value"
            if in_index
            else "the metadata is a YAML mapping between two --- lines at the top"
        )
        raise WarmstartError(
            f"the model card {file} has metadata the Hub cannot read ({type(cause).__name__}: {first}): {hint}"
        ) from None
    if not card.data.to_dict():
        raise WarmstartError(f"the model card {file} has no metadata block (--- YAML --- at its top)")
    for result in card.data.eval_results or []:
        named = (result.task_type, result.dataset_type, result.dataset_name, result.metric_type)
        if not all(isinstance(value, str) and value.strip() for value in named) or result.metric_value is None:
            raise WarmstartError(
                f"the model card {file} has a model-index result the Hub cannot read (task {result.task_type!r}, "
                f"dataset {result.dataset_type!r} / {result.dataset_name!r}, metric {result.metric_type!r} = "
                f"{result.metric_value!r}): each needs a task type, dataset type and name, metric type and value"
            )


def _eval_results(card: dict[str, Any], task_type: str, source: dict[str, Any]) -> list[EvalResult]:
    """One ``EvalResult`` per metric the Hub knows, per split measured, values as the run recorded them."""
    metrics = card.get("metrics") or {}
    task_name = _TASK_NAMES.get(task_type, task_type.replace("-", " ").title()) + _SHAPE_NAMES.get(
        card.get("problem_type") or "", ""
    )
    results = []
    for prefix, split in _METRIC_SPLITS.items():
        dataset = _dataset(source, split, card["modality"])
        if dataset is None:
            continue
        for key, (metric_type, metric_name) in _HUB_METRICS.items():
            value = metrics.get(prefix + key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            results.append(
                EvalResult(
                    task_type=task_type,
                    task_name=task_name,
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_value=float(value),
                    **dataset,
                )
            )
    return results


def _dataset(source: dict[str, Any], split: str, modality: str) -> dict[str, Any] | None:
    """The ``dataset_*`` fields of a result on ``split``: a hub dataset by its id; local data by its file or folder
    names (never their paths: the card may be published), typed by the ``datasets`` builder that reads them. The split
    is named where the data had it: a validation split held out of train has none."""
    name = source.get("dataset_name")
    if name:
        local = Path(name).exists()
        return {
            "dataset_name": Path(name).name if local else name,
            "dataset_type": Path(name).name if local else name,
            "dataset_config": source.get("dataset_config_name"),
            "dataset_split": split if split == "test" else None,
        }
    files = {s: source.get(f"{s}_file") for s in ("train", "validation", "test") if source.get(f"{s}_file")}
    dirs = {s: source.get(f"{s}_dir") for s in ("train", "validation", "test") if source.get(f"{s}_dir")}
    sources = files or dirs
    if "train" not in sources or (split == "test" and "test" not in sources):
        return None
    if files:
        kind = CORPUS_BUILDERS.get(Path(files["train"]).suffix.lower(), Path(files["train"]).suffix.lstrip("."))
    else:
        kind = "imagefolder" if modality == "image" else "text"
    return {
        "dataset_name": ", ".join(Path(p).name for p in sources.values()),
        "dataset_type": kind,
        "dataset_split": split if split in sources else None,
    }


def _base_license(output_dir: Path, card: dict[str, Any]) -> str | None:
    """The license the base model's weights carry, where its config records one (timm's ``pretrained_cfg``, kept in
    the saved ``config.json``); none for a chain that started from random weights."""
    root = (card.get("lineage") or {}).get("base_model") or card["base_model"]
    if str(root).endswith(_RANDOM_INIT) or str(card["base_model"]).endswith(_RANDOM_INIT):
        return None
    try:
        config = json.loads((output_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    found = (config.get("pretrained_cfg") or {}).get("license") if isinstance(config, dict) else None
    return found if isinstance(found, str) and found.strip() else None


def _is_hub_id(name: Any) -> bool:
    return isinstance(name, str) and "/" in name and " " not in name and not Path(name).exists()


def _exported_files_section(files: Sequence[tuple[str, str]]) -> str:
    lines = [f"- `{Path(name).as_posix()}`: {' '.join(str(description).split())}" for name, description in files]
    return "\n".join([EXPORTED_FILES_HEADING, *lines])


def _metrics_table(metrics: dict[str, Any]) -> str:
    shown = {k: v for k, v in metrics.items() if k.startswith(_CARD_METRIC_PREFIXES) and not k.endswith("_per_second")}
    rows = [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in shown.items()]
    return "\n".join(["| metric | value |", "| --- | --- |", *rows]) if rows else "_no metrics recorded_"


def _strategy(card: dict[str, Any]) -> str:
    return card["policy"]["strategy"] if "policy" in card else "pretraining"


def _load_snippet(image: bool) -> str:
    if image:
        return (
            '```python\nimport timm\nmodel = timm.create_model("local-dir:<this directory>", pretrained=True)\n\n'
            'from transformers import pipeline\nclassify = pipeline("image-classification", '
            'model="<this directory>")\n```'
        )
    return (
        '```python\nfrom transformers import pipeline\nclassify = pipeline("text-classification", '
        'model="<this directory>")\n\nfrom transformers import AutoModelForSequenceClassification\n'
        'model = AutoModelForSequenceClassification.from_pretrained("<this directory>")\n```'
    )
