"""Both recipes end to end in-process on small generated data, with the output loaded back by timm and
transformers (identical logits), config files with command-line overrides, and warmstart outputs reused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from conftest import trainer_flags, write_image_folder
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, AutoModelForSequenceClassification
from transformers import pipeline as hf_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import image_classification  # noqa: E402
import text_classification  # noqa: E402

HF_LAYOUT = ("all_results.json", "train_results.json", "eval_results.json", "trainer_state.json")


def run_text(tiny_bert, text_files, out, *extra):
    return text_classification.main(
        [
            "--model_name_or_path",
            str(tiny_bert),
            "--train_file",
            str(text_files["train"]),
            "--validation_file",
            str(text_files["validation"]),
            *trainer_flags(out),
            *extra,
        ]
    )


def run_image(image_dirs, out, *extra, model="test_resnet"):
    model_flags = ["--model_name_or_path", model] + (["--random_init"] if "/" not in model else [])
    return image_classification.main(
        [
            *model_flags,
            "--train_dir",
            str(image_dirs["train"]),
            "--validation_dir",
            str(image_dirs["validation"]),
            "--image_size",
            "32",
            *trainer_flags(out),
            *extra,
        ]
    )


def assert_common_outputs(out: Path, strategy: str):
    for name in (*HF_LAYOUT, "config.json", "model.safetensors", "README.md", "warmstart_config.yaml"):
        assert (out / name).is_file(), name
    results = json.loads((out / "all_results.json").read_text())
    for key in ("eval_accuracy", "eval_f1_macro", "eval_roc_auc", "trainable_params", "total_params"):
        assert key in results, key
    assert 0.0 <= results["eval_accuracy"] <= 1.0
    assert results["freeze_policy"]["strategy"] == strategy
    config = yaml.safe_load((out / "warmstart_config.yaml").read_text())
    assert config["freeze"]["freeze_strategy"] == strategy
    assert config["freeze_report"]["trainable_params"] == results["trainable_params"]
    card = (out / "README.md").read_text()
    assert strategy in card and f"{results['trainable_params']:,}" in card and "eval_accuracy" in card
    assert not list(out.glob("pytorch_model.bin")) and not list(out.rglob("training_args.bin"))
    return results


@pytest.mark.parametrize(
    ("strategy", "extra"), [("head_only", []), ("top_k", ["--unfreeze_top_k", "1"]), ("full", [])]
)
def test_image_recipe_output_loads_in_timm_and_transformers_with_same_logits(image_dirs, tmp_path, strategy, extra):
    out = tmp_path / "out"
    results = run_image(image_dirs, out, "--freeze_strategy", strategy, *extra)
    saved = assert_common_outputs(out, strategy)
    assert saved["eval_accuracy"] == pytest.approx(results["eval_accuracy"])

    hf_model = AutoModelForImageClassification.from_pretrained(out).eval()
    timm_model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert hf_model.config.id2label == {0: "blue", 1: "green", 2: "red"}
    assert timm_model.pretrained_cfg["label_names"] == ["blue", "green", "red"]
    # both loaders preprocess as in training: the saved data config is the one the recipe used
    config = timm.data.resolve_data_config({}, model=timm_model)
    assert config["input_size"] == (3, 32, 32)
    image = Image.open(next((image_dirs["validation"] / "red").iterdir())).convert("RGB")
    pixels = timm.data.create_transform(**config)(image).unsqueeze(0)
    processed = AutoImageProcessor.from_pretrained(out)(image, return_tensors="pt")["pixel_values"]
    assert processed.shape == pixels.shape
    with torch.no_grad():
        hf_logits = hf_model(pixel_values=pixels).logits
        timm_logits = timm_model(pixels)
    torch.testing.assert_close(hf_logits, timm_logits, rtol=1e-5, atol=1e-6)
    classify = hf_pipeline("image-classification", model=str(out))
    assert {p["label"] for p in classify(image)} <= {"blue", "green", "red"}


def test_image_recipe_on_a_vit_with_its_fixed_input_size(image_dirs, tmp_path):
    out = tmp_path / "vit"
    run_image(image_dirs, out, "--freeze_strategy", "top_k", "--unfreeze_top_k", "2", model="test_vit")
    timm_model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    hf_model = AutoModelForImageClassification.from_pretrained(out).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(hf_model(pixel_values=pixels).logits, timm_model(pixels), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("strategy", "extra"), [("head_only", []), ("top_k", ["--unfreeze_top_k", "1"]), ("full", [])]
)
def test_text_recipe_output_loads_in_transformers_and_pipeline(tiny_bert, text_files, tmp_path, strategy, extra):
    out = tmp_path / "out"
    run_text(tiny_bert, text_files, out, "--freeze_strategy", strategy, *extra)
    assert_common_outputs(out, strategy)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.id2label == {0: "neg", 1: "pos"}
    classify = hf_pipeline("text-classification", model=str(out))
    prediction = classify("the movie was really good")[0]
    assert prediction["label"] in {"neg", "pos"} and 0.0 < prediction["score"] <= 1.0
    tokens = classify.tokenizer("the plot was awful", return_tensors="pt")
    with torch.no_grad():
        logits = model(**tokens).logits
    assert torch.allclose(torch.softmax(logits, -1).max(), torch.tensor(classify("the plot was awful")[0]["score"]))


def test_text_recipe_learns_the_task(tiny_bert, text_files, tmp_path):
    results = run_text(tiny_bert, text_files, tmp_path / "out", "--max_steps", "80", "--learning_rate", "3e-3")
    assert results["eval_accuracy"] >= 0.8, results  # chance is 0.5


def test_text_batches_are_padded_per_batch_not_to_max_length(tiny_bert, text_files, tmp_path):
    from datasets import load_dataset

    from warmstart import load_text_model
    from warmstart.data import tokenize_splits

    splits = load_dataset("csv", data_files={"train": str(text_files["train"])})
    splits = splits.rename_column("label", "labels").class_encode_column("labels")
    _, tokenizer = load_text_model(str(tiny_bert), ["neg", "pos"])
    tokenized = tokenize_splits(splits, tokenizer, ["text"], max_seq_length=64)
    lengths = {len(ids) for ids in tokenized["train"]["input_ids"]}
    assert max(lengths) < 64  # not padded to max_seq_length at tokenization


def test_config_file_with_command_line_overrides(tiny_bert, text_files, tmp_path):
    config = tmp_path / "run.yaml"
    out = tmp_path / "out"
    config.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(tiny_bert),
                "train_file": str(text_files["train"]),
                "validation_file": str(text_files["validation"]),
                "freeze_strategy": "head_only",
                "learning_rate": 0.5,
                "output_dir": str(out),
                "max_steps": 2,
                "use_cpu": True,
                "save_strategy": "no",
                "report_to": ["none"],
            }
        )
    )
    text_classification.main(
        [str(config), "--learning_rate", "0.001", "--freeze_strategy", "top_k", "--unfreeze_top_k", "1"]
    )
    resolved = yaml.safe_load((out / "warmstart_config.yaml").read_text())
    assert resolved["training"]["learning_rate"] == 0.001  # the command line wins
    assert resolved["freeze"]["freeze_strategy"] == "top_k" and resolved["freeze"]["unfreeze_top_k"] == 1
    assert resolved["training"]["max_steps"] == 2  # the file's value where the command line is silent
    assert resolved["labels"] == ["neg", "pos"]


def test_a_warmstart_output_is_a_starting_point_again(image_dirs, tmp_path):
    first = tmp_path / "first"
    run_image(image_dirs, first, "--freeze_strategy", "full")
    first_weights = timm.create_model(f"local-dir:{first}", pretrained=True).state_dict()

    # same labels: the trained head is kept; the whole network starts where the first run ended
    from warmstart import load_image_model

    model = load_image_model(str(first), ["blue", "green", "red"])
    for name, value in model.timm_model.state_dict().items():
        assert torch.equal(value, first_weights[name]), name
    # other labels: a new head sized to them, the backbone still from the first run
    model = load_image_model(str(first), ["a", "b", "c", "d"])
    assert model.timm_model.fc.out_features == 4 and model.config.id2label[3] == "d"
    assert torch.equal(model.timm_model.layer1[0].conv1.weight, first_weights["layer1.0.conv1.weight"])

    second = tmp_path / "second"
    more = write_image_folder(tmp_path / "more", 4, 2)
    (more / "yellow").mkdir()
    Image.new("RGB", (24, 24), (230, 230, 20)).save(more / "yellow" / "0.png")
    Image.new("RGB", (24, 24), (230, 220, 30)).save(more / "yellow" / "1.png")
    results = image_classification.main(
        [
            "--model_name_or_path",
            str(first),
            "--train_dir",
            str(more),
            "--image_size",
            "32",
            "--train_val_split",
            "0.3",
            *trainer_flags(second),
        ]
    )
    assert AutoModelForImageClassification.from_pretrained(second).config.num_labels == 4
    # 14 images: a last training batch of one is avoided without dropping the (single, short) validation batch
    assert results["eval_samples"] == 5 and "eval_accuracy" in results and results["train_samples"] == 8


def test_text_model_keeps_its_head_only_for_the_same_labels(tiny_bert, text_files, tmp_path):
    from warmstart import load_text_model

    out = tmp_path / "out"
    run_text(tiny_bert, text_files, out, "--max_steps", "5")
    trained = AutoModelForSequenceClassification.from_pretrained(out)
    same, _ = load_text_model(str(out), ["neg", "pos"])
    assert torch.equal(same.classifier.weight, trained.classifier.weight)
    other, _ = load_text_model(str(out), ["x", "y"])
    assert not torch.equal(other.classifier.weight, trained.classifier.weight)
    assert torch.equal(other.bert.pooler.dense.weight, trained.bert.pooler.dense.weight)


def test_hub_ids_load_from_the_local_cache(tmp_path, monkeypatch):
    """A hub id resolves through the Hugging Face cache only; nothing is fetched."""
    from huggingface_hub import constants

    from warmstart import load_image_model

    source = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    snapshot = tmp_path / "hub" / "models--someone--tiny-resnet" / "snapshots" / ("0" * 40)
    timm.models.save_for_hf(source, str(snapshot), safe_serialization=True)
    (tmp_path / "hub" / "models--someone--tiny-resnet" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-resnet" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    model = load_image_model("someone/tiny-resnet", ["a", "b"])
    assert model.timm_model.fc.out_features == 2
    assert torch.equal(model.timm_model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_metrics_are_sklearn_values():
    from sklearn.metrics import f1_score, roc_auc_score

    from warmstart import classification_metrics

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 3))
    labels = rng.integers(0, 3, size=40)
    metrics = classification_metrics(logits, labels)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert metrics["accuracy"] == pytest.approx((logits.argmax(1) == labels).mean())
    assert metrics["f1_macro"] == pytest.approx(f1_score(labels, logits.argmax(1), average="macro"))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    binary = classification_metrics(logits[:, :2], labels % 2)
    assert binary["roc_auc"] == pytest.approx(roc_auc_score(labels % 2, logits[:, 1] - logits[:, 0]))
    # a validation set missing a class still gets a defined ROC-AUC over the classes it has
    assert "roc_auc" in classification_metrics(logits, np.where(labels == 2, 0, labels))


def test_push_to_hub_uploads_the_model_and_never_writes_the_token(tiny_bert, text_files, tmp_path, monkeypatch, capfd):
    import huggingface_hub

    calls = {}

    class Repo:
        repo_id = "someone/tiny-sentiment"

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (self.token, repo_id, kwargs)
        return Repo()

    def create_commit(self, repo_id, operations, **kwargs):
        calls["upload"] = (self.token, {"repo_id": repo_id, **kwargs}, sorted(op.path_in_repo for op in operations))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    secret = "hf_SeCrEt0123456789abcdefTOKEN"
    out = tmp_path / "out"
    run_text(
        tiny_bert,
        text_files,
        out,
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "someone/tiny-sentiment",
        "--hub_token",
        secret,
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
    )
    assert calls["create"][0] == secret and calls["create"][1] == "someone/tiny-sentiment"
    token, kwargs, files = calls["upload"]
    assert token == secret and kwargs["repo_id"] == "someone/tiny-sentiment"
    assert {"model.safetensors", "config.json", "README.md"} <= set(files)
    assert not any(p.startswith("checkpoint-") for p in files)  # checkpoints stay here
    assert list(out.glob("checkpoint-*")), "the run should have written a checkpoint to scan"
    printed = capfd.readouterr()
    assert secret not in printed.out and secret not in printed.err
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert "text_files" not in (out / "README.md").read_text()
    card = (out / "README.md").read_text()
    assert str(tmp_path) not in card and str(tiny_bert) not in card  # no local paths in a card that goes public


def test_quickstart_runs_both_strategies_on_real_weights_and_digits(tmp_path):
    import quickstart

    summary = quickstart.main(["--output_dir", str(tmp_path), "--epochs", "0.03"])
    assert list(summary) == ["head_only", "full"]
    assert summary["head_only"]["trainable_params"] == 1280 * 10 + 10
    assert summary["full"]["trainable_params"] > 3_000_000
    for row in summary.values():
        out = Path(row["output_dir"])
        assert AutoModelForImageClassification.from_pretrained(out).config.num_labels == 10
        assert 0.0 <= row["eval_accuracy"] <= 1.0
    assert json.loads((tmp_path / "quickstart_results.json").read_text()) == summary


def test_image_paths_in_a_csv_with_mapped_columns(image_dirs, tmp_path):
    rows = [(str(p), p.parent.name) for p in sorted(image_dirs["train"].rglob("*.png"))]
    table = tmp_path / "images.csv"
    with table.open("w") as f:
        f.write("file,category\n" + "".join(f"{path},{label}\n" for path, label in rows))
    out = tmp_path / "out"
    image_classification.main(
        [
            "--model_name_or_path",
            "test_resnet",
            "--random_init",
            "--train_file",
            str(table),
            "--image_size",
            "32",
            "--image_column_name",
            "file",
            "--label_column_name",
            "category",
            "--train_val_split",
            "0.25",
            *trainer_flags(out),
        ]
    )
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_samples"] == 6 and results["train_samples"] == 18  # a stratified 25 % of 24
    assert AutoModelForImageClassification.from_pretrained(out).config.label2id == {"blue": 0, "green": 1, "red": 2}


def test_dataset_name_reads_a_local_dataset_with_its_splits(tiny_bert, text_files, tmp_path):
    import datasets

    folder = tmp_path / "my_dataset"
    for split, path in text_files.items():
        data = datasets.load_dataset("csv", data_files=str(path))["train"]
        data = data.rename_columns({"text": "sentence", "label": "polarity"})
        (folder / "data").mkdir(parents=True, exist_ok=True)
        data.to_parquet(folder / "data" / f"{'dev' if split == 'validation' else split}-00000.parquet")
    out = tmp_path / "out"
    text_classification.main(
        [
            "--model_name_or_path",
            str(tiny_bert),
            "--dataset_name",
            str(folder),
            "--label_column_name",
            "polarity",
            *trainer_flags(out),
        ]
    )
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_samples"] == 48 and results["eval_samples"] == 16  # "dev" is taken as validation
    resolved = yaml.safe_load((out / "warmstart_config.yaml").read_text())
    assert resolved["text_columns"] == ["sentence"]


def _logits_without_peft(out: Path, kind: str, inputs_file: Path) -> torch.Tensor:
    """Loads a saved model in a fresh interpreter where peft cannot be imported, and returns its logits."""
    import subprocess

    loader = (
        "AutoModelForImageClassification.from_pretrained(out).eval()(pixel_values=inputs).logits"
        if kind == "image"
        else "AutoModelForSequenceClassification.from_pretrained(out).eval()(**inputs).logits"
    )
    script = (
        "import sys, torch; sys.modules['peft'] = None\n"
        "from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification\n"
        f"out, inputs = {str(out)!r}, torch.load({str(inputs_file)!r})\n"
        f"with torch.no_grad(): torch.save({loader}, {str(inputs_file)!r} + '.logits')\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    return torch.load(str(inputs_file) + ".logits")


def test_lora_text_run_exports_a_merged_model_and_the_adapter(tiny_bert, text_files, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "out"
    run_text(tiny_bert, text_files, out, "--freeze_strategy", "lora", "--lora_r", "4", "--save_adapter", "true")
    results = assert_common_outputs(out, "lora")
    assert results["trainable_params"] < results["total_params"] / 2
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = hf_pipeline("text-classification", model=str(out)).tokenizer
    inputs = dict(tokenizer("the plot was awful", return_tensors="pt"))
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.testing.assert_close(_logits_without_peft(out, "text", tmp_path / "inputs.pt"), expected)


def test_gradual_image_run_with_regularisation_and_early_stopping(image_dirs, tmp_path):
    out = tmp_path / "out"
    flags = [f for f in trainer_flags(out) if f not in ("--save_strategy", "no", "--max_steps", "3")]
    results = image_classification.main(
        [
            "--model_name_or_path",
            "test_resnet",
            "--random_init",
            "--train_dir",
            str(image_dirs["train"]),
            "--validation_dir",
            str(image_dirs["validation"]),
            "--image_size",
            "32",
            *flags,
            "--num_train_epochs",
            "4",
            "--freeze_strategy",
            "gradual",
            "--unfreeze_every",
            "1",
            "--layer_lr_decay",
            "0.7",
            "--head_lr_multiplier",
            "5",
            "--mixup_alpha",
            "0.2",
            "--cutmix_alpha",
            "1.0",
            "--label_smoothing",
            "0.1",
            "--class_weights",
            "auto",
            "--early_stopping_patience",
            "10",
            "--auto_augment",
            "rand-m9-mstd0.5",
            "--random_erasing",
            "0.25",
        ]
    )
    assert 0.0 <= results["eval_accuracy"] <= 1.0
    config = yaml.safe_load((out / "warmstart_config.yaml").read_text())
    assert [row["stage"] for row in config["schedule"]] == [0, 1, 2, 3]
    assert config["training_adjusted"]["load_best_model_at_end"] is True
    lrs = {g["name"]: g["lr"] for g in config["param_groups"]}
    assert lrs["head"] == pytest.approx(5e-3) and lrs["blocks.3"] == pytest.approx(1e-3)
    assert lrs["blocks.2"] == pytest.approx(0.7e-3) and lrs["stem/no_decay"] == pytest.approx(0.7**4 * 1e-3)
    saved = AutoModelForImageClassification.from_pretrained(out)
    assert saved.config.problem_type == "single_label_classification"  # mixed soft labels did not flip it
    card = (out / "README.md").read_text()
    assert "gradual (one more block every 1 epochs)" in card and "layer LR decay 0.7" in card


def _mixed_length_split(tiny_bert, n=96):
    import random

    from datasets import ClassLabel, Dataset, DatasetDict

    from warmstart import load_text_model
    from warmstart.data import tokenize_splits

    rng = random.Random(0)
    words = ["good", "bad", "the", "movie", "was", "really", "plot", "and"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.choice([3, 4, 40, 50]))) for _ in range(n)]
    data = Dataset.from_dict({"text": texts, "labels": [i % 2 for i in range(n)]})
    splits = DatasetDict(train=data, validation=data).cast_column("labels", ClassLabel(names=["neg", "pos"]))
    _, tokenizer = load_text_model(str(tiny_bert), ["neg", "pos"])
    return tokenize_splits(splits, tokenizer, ["text"], max_seq_length=64), tokenizer


def test_lengths_are_computed_once_and_evaluation_is_sorted(tiny_bert):
    splits, _ = _mixed_length_split(tiny_bert)
    for split in ("train", "validation"):
        data = splits[split]
        assert data["length"] == [len(ids) for ids in data["input_ids"]]
    assert splits["validation"]["length"] == sorted(splits["validation"]["length"], reverse=True)
    assert splits["train"]["length"] != sorted(splits["train"]["length"], reverse=True)  # train keeps its order


def _padding_per_epoch(splits, tokenizer, model_dir, tmp_path, strategy, multiple=None):
    from transformers import Trainer, TrainingArguments

    from warmstart import load_text_model
    from warmstart.data import TextCollator

    model, _ = load_text_model(str(model_dir), ["neg", "pos"])
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        use_cpu=True,
        report_to="none",
        remove_unused_columns=False,
        train_sampling_strategy=strategy,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        data_collator=TextCollator(tokenizer, multiple),
        processing_class=tokenizer,
    )
    padded = real = 0
    for batch in trainer.get_train_dataloader():
        assert "length" not in batch
        assert multiple is None or batch["input_ids"].shape[1] % multiple == 0
        padded += batch["input_ids"].numel()
        real += int(batch["attention_mask"].sum())
    return padded, real


def test_length_grouped_batches_pad_far_less_than_random_ones(tiny_bert, tmp_path):
    splits, tokenizer = _mixed_length_split(tiny_bert)
    grouped, real = _padding_per_epoch(splits, tokenizer, tiny_bert, tmp_path / "g", "group_by_length")
    shuffled, same_real = _padding_per_epoch(splits, tokenizer, tiny_bert, tmp_path / "r", "random")
    assert real == same_real == sum(splits["train"]["length"])  # the same data either way
    assert grouped < 0.75 * shuffled, (grouped, shuffled)
    padded_to_8, _ = _padding_per_epoch(splits, tokenizer, tiny_bert, tmp_path / "m", "group_by_length", multiple=8)
    assert padded_to_8 >= grouped


def test_text_recipe_groups_by_length_by_default(tiny_bert, text_files, tmp_path):
    run_text(tiny_bert, text_files, tmp_path / "a")
    config = yaml.safe_load((tmp_path / "a" / "warmstart_config.yaml").read_text())
    assert config["training_adjusted"]["train_sampling_strategy"] == "group_by_length"
    run_text(tiny_bert, text_files, tmp_path / "b", "--group_by_length", "false")
    config = yaml.safe_load((tmp_path / "b" / "warmstart_config.yaml").read_text())
    assert "train_sampling_strategy" not in config.get("training_adjusted", {})
