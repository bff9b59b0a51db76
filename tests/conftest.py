"""Fixtures: tiny models built in code and small data made here; nothing is downloaded."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

POSITIVE = ["good", "great", "fine", "happy", "love", "nice", "superb", "best"]
NEGATIVE = ["bad", "awful", "poor", "sad", "hate", "ugly", "worst", "dull"]
FILLER = ["the", "movie", "was", "really", "a", "plot", "and", "it", "very", "so"]
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def _write_bert(path: Path, num_labels: int | None = None, dropout: float | None = None, seed: int = 0) -> Path:
    """A tiny BERT whose weights depend on ``seed`` only, not on what ran before it in the session."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]
    # transformers 5 takes the vocabulary itself (a vocab_file keyword is ignored and every word becomes [UNK])
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    if dropout is not None:  # e.g. 0: dropout masks are drawn per process, which no multi-process launch can match
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    if num_labels:
        config.num_labels = num_labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # a bare encoder, as a pretrained checkpoint would be
        model = BertForSequenceClassification(config) if num_labels else BertModel(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _seeded_global_generators():
    """Every test starts from the same global random state, whatever ran before it: a model built in a test (or a
    fixture) gets the same initial weights in a full run as alone (a test that passed alone failed in CI from a
    different initialisation)."""
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT encoder (hidden size 32) with a tokenizer, saved in hub format."""
    return _write_bert(tmp_path_factory.mktemp("tiny_bert"))


def _sentences(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_text_csv(path: Path, rows: list[tuple[str, str]], header=("text", "label")) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture()
def text_files(tmp_path) -> dict[str, Path]:
    """Sentiment-like train / validation CSVs: the label is told by one word."""
    return {
        "train": write_text_csv(tmp_path / "train.csv", _sentences(48, 0)),
        "validation": write_text_csv(tmp_path / "validation.csv", _sentences(16, 1)),
    }


def write_image_folder(root: Path, per_class: int, seed: int, size: int = 24) -> Path:
    from PIL import Image

    rng = random.Random(seed)
    for name, rgb in COLORS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            jitter = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in rgb)
            Image.new("RGB", (size + rng.randint(0, 8), size), jitter).save(root / name / f"{i}.png")
    return root


@pytest.fixture()
def image_dirs(tmp_path) -> dict[str, Path]:
    """Image folders (red / green / blue squares), train and validation."""
    return {
        "train": write_image_folder(tmp_path / "train", 8, 0),
        "validation": write_image_folder(tmp_path / "validation", 3, 1),
    }


def text_data_flags(tiny_bert: Path, text_files: dict[str, Path]) -> list[str]:
    """The text recipe's model and data arguments for the tiny BERT and the sentiment CSVs."""
    return [
        "--model_name_or_path",
        str(tiny_bert),
        "--train_file",
        str(text_files["train"]),
        "--validation_file",
        str(text_files["validation"]),
    ]


def image_data_flags(image_dirs: dict[str, Path], model: str = "test_resnet") -> list[str]:
    """The image recipe's model (random init) and data arguments for the colour folders, at 32 pixels."""
    return [
        "--model_name_or_path",
        model,
        "--random_init",
        "--train_dir",
        str(image_dirs["train"]),
        "--validation_dir",
        str(image_dirs["validation"]),
        "--image_size",
        "32",
    ]


def tiny_text_argv(root: Path, train_rows: int, validation_rows: int, steps: int, *extra: str) -> list[str]:
    """The text recipe's arguments for a run of ``steps`` steps of a tiny BERT (written to ``root/bert``) on
    generated sentiment sentences (``root/train.csv``, ``root/validation.csv``), into ``root/out``."""
    return [
        "--model_name_or_path",
        str(_write_bert(root / "bert")),
        "--train_file",
        str(write_text_csv(root / "train.csv", _sentences(train_rows, 0))),
        "--validation_file",
        str(write_text_csv(root / "validation.csv", _sentences(validation_rows, 1))),
        *trainer_flags(root / "out", "--max_steps", str(steps), "--disable_tqdm", "true"),
        *extra,
    ]


def trainer_flags(output_dir: Path, *extra: str) -> list[str]:
    """Training arguments for a run of a few steps on the CPU."""
    return [
        "--output_dir",
        str(output_dir),
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "8",
        "--learning_rate",
        "1e-3",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--use_cpu",
        "true",
        "--dataloader_num_workers",
        "0",
        "--seed",
        "0",
        *extra,
    ]


class ListDataset:
    """A list of ready examples (dicts of tensors) as a map-style dataset."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def train_steps(model, items, output_dir, steps: int = 2, **overrides):
    """A few Trainer steps on the CPU over ``items``; returns the Trainer."""
    from transformers import Trainer, TrainingArguments

    settings = dict(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=0.05,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model, args=TrainingArguments(**{**settings, **overrides}), train_dataset=ListDataset(items)
    )
    trainer.train()
    return trainer


def tiny_bert_classifier(num_labels: int = 3, layers: int = 2):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=32,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config)


def tiny_text_config(model_type: str):
    import transformers

    config_class = transformers.CONFIG_MAPPING[model_type]
    kwargs = dict(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=3,
    )
    if model_type == "distilbert":
        kwargs = dict(
            vocab_size=60, dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64, num_labels=3
        )
    if model_type == "electra":
        kwargs.update(embedding_size=16)
    if model_type == "modernbert":
        kwargs.update(
            global_attn_every_n_layers=1,
            local_attention=16,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            cls_token_id=1,
            sep_token_id=2,
        )
    if model_type == "deberta-v2":
        kwargs.update(relative_attention=True, position_buckets=16, norm_rel_ebd="layer_norm", pos_att_type=["p2c"])
    return config_class(**kwargs)


def without_zero_init_scales(model):
    """Sets every BatchNorm scale to 1, as in a pretrained backbone: timm zero-initialises each residual branch's
    last BatchNorm, which in a random model cuts the gradient of every layer before it in the branch."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.weight.fill_(1.0)
    return model


def free_port() -> int:
    """A TCP port free on this machine now, for a process group's rendezvous."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_command(script: str | Path, *args: str, processes: int = 2) -> list[str]:
    """``torchrun --nproc_per_node <processes> --master_port <a free port> script args``, with this interpreter."""
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    return [*command, "--master_port", str(free_port()), str(script), *args]


def kill_at_checkpoint(command: list[str], output_dir: Path, step: int, env: dict[str, str]) -> int:
    """Starts ``command`` (a recipe writing into ``output_dir``), SIGKILLs it once ``checkpoint-<step>`` is complete
    (its ``trainer_state.json``, saved last, is there) and returns its exit status (``-SIGKILL``, unless it finished
    first)."""
    import signal
    import subprocess
    import time

    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if (output_dir / f"checkpoint-{step}" / "trainer_state.json").is_file():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait(timeout=60)
    return process.returncode
