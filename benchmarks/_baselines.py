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
