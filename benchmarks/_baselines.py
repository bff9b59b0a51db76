"""The baselines warmstart is measured against, each a plain function that :func:`_common.function_side` runs in a
child process of its own. They are written as a user of the HF examples or of a PyTorch tutorial would write them,
with nothing from warmstart, and return the same figures the recipes write to ``all_results.json``
(``train_runtime``, ``train_samples_per_second``, ``eval_accuracy``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


def _accuracy(prediction: Any) -> dict[str, float]:
    # the HF example loads this metric with `evaluate`, which fetches it from the Hub; the same arithmetic
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}


def hf_text_trainer(
    *,
    model_dir: str,
    train_file: str,
    validation_file: str,
    pad_to_max_length: bool,
    freeze_base_model: bool,
    epochs: float,
    batch_size: int,
    eval_batch_size: int,
    learning_rate: float,
    seed: int,
    folder: str,
    max_seq_length: int = 128,
    group_by_length: bool = False,
) -> dict[str, Any]:
    """The HF text-classification example (``run_glue.py``) on local CSV files: its defaults pad every text to
    ``max_seq_length`` (128) at tokenization and batch with ``default_data_collator``; with ``pad_to_max_length``
    false it pads each batch to its longest text (``DataCollatorWithPadding``); ``group_by_length`` is the
    Trainer's length-grouped sampler (lengths computed by the Trainer at start-up, as a user gets it).

    ``freeze_base_model``: the usual way to freeze a transformers encoder, ``requires_grad_(False)`` on the base
    model (the pooler too): the Trainer still puts the whole model in train mode (dropout on) and runs the
    encoder every step.
    """
    from datasets import load_dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    set_seed(seed)
    raw = load_dataset("csv", data_files={"train": train_file, "validation": validation_file})
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    if freeze_base_model:
        model.base_model.requires_grad_(False)
    padding = "max_length" if pad_to_max_length else False

    def preprocess(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(batch["text"], padding=padding, max_length=max_seq_length, truncation=True)

    data = raw.map(preprocess, batched=True, remove_columns=["text"])
    args = TrainingArguments(
        output_dir=str(Path(folder) / "output"),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size,
        learning_rate=learning_rate,
        seed=seed,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=default_data_collator if pad_to_max_length else DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=_accuracy,
    )
    figures = dict(trainer.train().metrics)
    figures.update(trainer.evaluate())
    trainer.save_model()
    trainer.save_metrics("all", figures)
    return figures


def textbook_timm_loop(
    *,
    architecture: str,
    train_dir: str,
    validation_dir: str,
    image_size: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    num_workers: int,
    seed: int,
    folder: str,
) -> dict[str, Any]:
    """The PyTorch-tutorial training loop with timm's own preprocessing: ``create_transform`` from the model's data
    config (random-resized crop and flip for training; resize and center crop for evaluation), torchvision's
    ``ImageFolder``, a ``DataLoader``, AdamW at a constant learning rate, ``model.train()`` and
    ``zero_grad / backward / step``; random weights (``pretrained=False``). The training time runs from the first
    batch's loading to the last optimizer step, as the Trainer's ``train_runtime`` does."""
    import timm
    import torch
    from timm.data import create_transform, resolve_data_config
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    torch.manual_seed(seed)
    train_set = ImageFolder(train_dir)
    model = timm.create_model(architecture, pretrained=False, num_classes=len(train_set.classes))
    config = resolve_data_config({"input_size": (3, image_size, image_size)}, model=model)
    train_set.transform = create_transform(**config, is_training=True)
    validation_set = ImageFolder(validation_dir, transform=create_transform(**config))
    pin_memory = torch.cuda.is_available()
    train_loader = DataLoader(
        train_set, batch_size=batch_size, shuffle=True, num_workers=num_workers, pin_memory=pin_memory
    )
    validation_loader = DataLoader(validation_set, batch_size=batch_size, num_workers=num_workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    criterion = nn.CrossEntropyLoss()

    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
    train_runtime = time.perf_counter() - start

    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in validation_loader:
            correct += (model(images).argmax(dim=-1) == labels).sum().item()
    return {
        "train_runtime": train_runtime,
        "train_samples_per_second": epochs * len(train_set) / train_runtime,
        "eval_accuracy": correct / len(validation_set),
        "num_workers": num_workers,
    }


def _shape_metrics(problem_type: str, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """What a user scores a multi-label model (micro F1 at the usual 0.5 on the sigmoid) or a regressor (RMSE, R2)
    by, with scikit-learn."""
    from sklearn.metrics import f1_score, mean_squared_error, r2_score

    if problem_type == "multi_label_classification":
        predicted = 1 / (1 + np.exp(-outputs)) >= 0.5
        return {"f1_micro": float(f1_score(targets >= 0.5, predicted, average="micro", zero_division=0))}
    outputs, targets = outputs.reshape(len(outputs), -1), targets.reshape(len(targets), -1)
    return {"rmse": float(np.sqrt(mean_squared_error(targets, outputs))), "r2": float(r2_score(targets, outputs))}


def hf_text_trainer_for_shape(
    *,
    model_dir: str,
    train_file: str,
    test_file: str,
    label_column: str,
    problem_type: str,
    epochs: float,
    batch_size: int,
    learning_rate: float,
    seed: int,
    folder: str,
    max_seq_length: int = 128,
) -> dict[str, Any]:
    """The HF text-classification example (``run_classification.py``) for a multi-label or regression column:
    ``problem_type`` set on the model (its own loss: ``BCEWithLogitsLoss`` on multi-hot targets, ``MSELoss`` on the
    raw targets), labels encoded as the example encodes them (a multi-hot vector of the train labels, or the float),
    texts padded to 128, scored on the test file."""
    import json as json_module

    from datasets import load_dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    set_seed(seed)
    raw = load_dataset("csv", data_files={"train": train_file, "test": test_file})
    if problem_type == "multi_label_classification":
        names = sorted({tag for cell in raw["train"][label_column] for tag in json_module.loads(cell)})

        def targets(cells: list) -> list:
            return [[1.0 if n in json_module.loads(c) else 0.0 for n in names] for c in cells]
    else:
        names = [label_column]

        def targets(cells: list) -> list:
            return [float(c) for c in cells]

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(names), problem_type=problem_type
    )

    def preprocess(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(batch["text"], padding="max_length", max_length=max_seq_length, truncation=True)
        encoded["labels"] = targets(batch[label_column])
        return encoded

    data = raw.map(preprocess, batched=True, remove_columns=raw["train"].column_names)
    args = TrainingArguments(
        output_dir=str(Path(folder) / "output"),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=64,
        learning_rate=learning_rate,
        seed=seed,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=data["train"], data_collator=default_data_collator,
        processing_class=tokenizer,
    )  # fmt: skip
    figures = dict(trainer.train().metrics)
    output = trainer.predict(data["test"])
    figures.update(
        {f"test_{k}": v for k, v in _shape_metrics(problem_type, output.predictions, output.label_ids).items()}
    )
    return figures


def textbook_timm_loop_for_shape(
    *,
    model_dir: str,
    train_file: str,
    test_file: str,
    label_column: str,
    problem_type: str,
    image_size: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    folder: str,
) -> dict[str, Any]:
    """The PyTorch-tutorial loop for a multi-label or regression table of images: timm's pretrained model with a new
    head (``num_classes`` outputs), its transforms, a ``Dataset`` over the table, AdamW at a constant rate,
    ``BCEWithLogitsLoss`` on multi-hot targets or ``MSELoss`` on the raw targets; scored on the test table."""
    import csv as csv_module
    import json as json_module

    import timm
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config
    from torch.utils.data import DataLoader, Dataset

    torch.manual_seed(seed)

    def read(path: str) -> list[dict[str, str]]:
        with open(path, newline="") as f:
            return list(csv_module.DictReader(f))

    train_rows, test_rows = read(train_file), read(test_file)
    multi = problem_type == "multi_label_classification"
    names = sorted({t for r in train_rows for t in json_module.loads(r[label_column])}) if multi else [label_column]

    def target(row: dict[str, str]) -> torch.Tensor:
        if multi:
            return torch.tensor([1.0 if n in json_module.loads(row[label_column]) else 0.0 for n in names])
        return torch.tensor([float(row[label_column])])

    model = timm.create_model(f"local-dir:{model_dir}", pretrained=True, num_classes=len(names))
    config = resolve_data_config({"input_size": (3, image_size, image_size)}, model=model)

    class Table(Dataset):
        def __init__(self, rows: list[dict[str, str]], base: str, transform: Any):
            self.rows, self.base, self.transform = rows, Path(base).parent, transform

        def __len__(self) -> int:
            return len(self.rows)

        def __getitem__(self, i: int) -> tuple[Any, Any]:
            image = Image.open(self.base / self.rows[i]["image"]).convert("RGB")
            return self.transform(image), target(self.rows[i])

    train_loader = DataLoader(
        Table(train_rows, train_file, create_transform(**config, is_training=True)),
        batch_size=batch_size,
        shuffle=True,
    )
    test_loader = DataLoader(Table(test_rows, test_file, create_transform(**config)), batch_size=batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    criterion = torch.nn.BCEWithLogitsLoss() if multi else torch.nn.MSELoss()
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for images, targets in train_loader:
            optimizer.zero_grad()
            criterion(model(images), targets).backward()
            optimizer.step()
    train_runtime = time.perf_counter() - start
    model.eval()
    outputs, truth = [], []
    with torch.no_grad():
        for images, targets in test_loader:
            outputs.append(model(images).numpy())
            truth.append(targets.numpy())
    scores = _shape_metrics(problem_type, np.concatenate(outputs), np.concatenate(truth))
    return {
        "train_runtime": train_runtime,
        "train_samples_per_second": epochs * len(train_rows) / train_runtime,
        **{f"test_{k}": v for k, v in scores.items()},
    }
