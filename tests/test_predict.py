"""Batch prediction (recipes/predict.py, warmstart.prediction): the probabilities it writes are the softmax of the
logits of the saved model on inputs preprocessed independently here (the recipe's own eval transform, the tokenizer
at the recorded length), for image folders, tables with images or text, and dataset splits; the output is written
safely; bad input is one line."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import datasets
import numpy as np
import pytest
import timm
import torch
from conftest import (
    _sentences,
    _write_bert,
    torchrun_command,
    trainer_flags,
    write_image_folder,
    write_text_csv,
)
from PIL import Image
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from warmstart import run_cli
from warmstart.data import image_transforms
from warmstart.errors import WarmstartError
from warmstart.prediction import (
    load_predictor,
    parse_dataset_spec,
    predict,
    read_prediction_input,
    write_predictions,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
sys.path.insert(0, str(RECIPES))
import image_classification  # noqa: E402
import predict as predict_recipe  # noqa: E402
import text_classification  # noqa: E402

LABELS = ["blue", "green", "red"]
MAX_LENGTH = 6  # shorter than the sentences (5 words + [CLS] + [SEP]): truncation matters


@pytest.fixture(autouse=True)
def _no_progress_bars():
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    yield
    datasets.enable_progress_bars()
    transformers.utils.logging.enable_progress_bar()


@pytest.fixture(scope="module")
def image_model(tmp_path_factory) -> Path:
    """A warmstart output of the image recipe: test_resnet (random init) at 32 px, two steps."""
    root = tmp_path_factory.mktemp("image_model")
    train = write_image_folder(root / "train", 4, 0)
    out = root / "out"
    image_classification.main(
        [
            "--model_name_or_path",
            "test_resnet",
            "--random_init",
            "--train_dir",
            str(train),
            "--validation_dir",
            str(write_image_folder(root / "validation", 1, 1)),
            "--image_size",
            "32",
            *trainer_flags(out, "--max_steps", "2", "--disable_tqdm", "true"),
        ]
    )
    return out


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    """A warmstart output of the text recipe on a tiny BERT, trained with --max_seq_length 6."""
    root = tmp_path_factory.mktemp("text_model")
    out = root / "out"
    text_classification.main(
        [
            "--model_name_or_path",
            str(_write_bert(root / "bert")),
            "--train_file",
            str(write_text_csv(root / "train.csv", _sentences(24, 0))),
            "--validation_file",
            str(write_text_csv(root / "validation.csv", _sentences(8, 1))),
            "--max_seq_length",
            str(MAX_LENGTH),
            *trainer_flags(out, "--max_steps", "2", "--disable_tqdm", "true"),
        ]
    )
    return out


def noise_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """Random pixels: any difference in resizing, cropping or interpolation changes what the model sees (a plain
    colour would hide it)."""
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def write_noise_folder(root: Path, per_class: int, seed: int) -> Path:
    """One sub-folder per label of random-pixel images of varied sizes."""
    for c, label in enumerate(LABELS):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            key = seed * 1000 + c * 100 + i
            noise_image(26 + 7 * i, 22 + 5 * c, key).save(root / label / f"{i}.png")
    return root


def run_cli_error(argv: list[str], capfd) -> str:
    """Runs the recipe through ``run_cli``, expecting bad input: its one stderr line."""
    capfd.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_cli(predict_recipe.main, ["--disable_tqdm", "true", *argv])
    assert exited.value.code == 2
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def png_with_bad_pixels(width: int = 24, height: int = 24) -> bytes:
    """A PNG whose chunks are valid (it opens) but whose pixel data is garbage (it does not decode)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"\x78\x9c" + bytes(range(7, 250)))


def run_predict(model: Path, source, output: Path, *extra: str) -> dict:
    argv = ["--model_name_or_path", str(model), "--input", str(source), "--output", str(output)]
    return predict_recipe.main([*argv, "--disable_tqdm", "true", *extra])


def read_output(path: Path, labels=LABELS) -> tuple[list[str], list[str], torch.Tensor]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    assert rows[0] == ["id", "predicted_label", *(f"prob_{label}" for label in labels)]
    probs = torch.tensor([[float(v) for v in row[2:]] for row in rows[1:]])
    return [row[0] for row in rows[1:]], [row[1] for row in rows[1:]], probs


def expected_image_probs(model_dir: Path, images: list[Image.Image]) -> torch.Tensor:
    """The saved model on the images under the eval transform the recipe built (not the one saved with it)."""
    _, _, eval_transform = image_transforms(timm.create_model("test_resnet"), 32)
    model = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()
    pixels = torch.stack([eval_transform(image.convert("RGB")) for image in images])
    with torch.no_grad():
        return torch.softmax(model(pixels).float(), dim=-1)


def expected_text_probs(model_dir: Path, texts: list[str]) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokens = tokenizer(texts, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
    assert tokens["input_ids"].shape[1] == MAX_LENGTH  # the texts were truncated
    with torch.no_grad():
        return torch.softmax(model(**tokens).logits.float(), dim=-1)


def assert_probs(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(actual.sum(-1), torch.ones(len(actual)), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------------ images


def test_image_folder_predictions_are_the_model_probabilities_with_accuracy(image_model, tmp_path):
    folder = write_noise_folder(tmp_path / "val", 3, 5)
    out = tmp_path / "predictions.csv"
    results = run_predict(image_model, folder, out, "--batch_size", "4")
    ids, predicted, probs = read_output(out)
    assert ids == sorted(f"{c}/{i}.png" for c in LABELS for i in range(3))
    assert_probs(probs, expected_image_probs(image_model, [Image.open(folder / i) for i in ids]))
    assert predicted == [LABELS[i] for i in probs.argmax(-1).tolist()]
    # the class sub-folders are the true labels
    truth = torch.tensor([LABELS.index(i.split("/")[0]) for i in ids])
    assert results["accuracy"] == pytest.approx((probs.argmax(-1) == truth).float().mean().item())
    assert results["rows"] == 9 and results["labels"] == LABELS


def test_image_folder_walks_sub_folders_and_skips_other_files(image_model, tmp_path):
    folder = tmp_path / "photos"
    (folder / "a" / "b").mkdir(parents=True)
    noise_image(40, 30, 1).save(folder / "top.jpg")
    noise_image(5, 9, 2, "L").save(folder / "a" / "b" / "deep.png")  # grey and small: converted and upsized
    noise_image(33, 33, 3, "RGBA").save(folder / "a" / "x.bmp")
    (folder / "notes.txt").write_text("not an image")
    (folder / "._top.jpg").write_bytes(b"macOS resource fork")  # hidden files are skipped, as in training
    (folder / "__MACOSX").mkdir()
    (folder / "__MACOSX" / "x.png").write_bytes(b"macOS resource fork")
    out = tmp_path / "predictions.tsv"
    results = run_predict(image_model, folder, out, "--num_workers", "2")
    ids, _, probs = read_output(out)
    assert ids == ["a/b/deep.png", "a/x.bmp", "top.jpg"]
    assert_probs(probs, expected_image_probs(image_model, [Image.open(folder / i) for i in ids]))
    assert "accuracy" not in results  # the folders are not class names


def test_image_table_with_an_image_feature_and_an_id_column(image_model, tmp_path):
    images = [noise_image(28 + 3 * i, 24, 10 + i) for i in range(5)]
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append({"bytes": buffer.getvalue(), "path": None})  # the images live in the parquet file
    table = datasets.Dataset.from_dict(
        {"name": [f"img-{i}" for i in range(5)], "picture": encoded, "label": ["red", "red", "blue", "green", "red"]},
        features=datasets.Features(
            name=datasets.Value("string"), picture=datasets.Image(), label=datasets.Value("string")
        ),
    )
    table.to_parquet(tmp_path / "input.parquet")
    out = tmp_path / "predictions.csv"
    results = run_predict(image_model, tmp_path / "input.parquet", out, "--id_column", "name", "--batch_size", "2")
    ids, _, probs = read_output(out)
    assert ids == [f"img-{i}" for i in range(5)]
    assert_probs(probs, expected_image_probs(image_model, images))
    truth = torch.tensor([LABELS.index(label) for label in list(table["label"])])
    assert results["accuracy"] == pytest.approx((probs.argmax(-1) == truth).float().mean().item())


def test_image_paths_in_a_csv_are_read_relative_to_it(image_model, tmp_path):
    (tmp_path / "pics").mkdir()
    images = [noise_image(30, 36 + i, 20 + i) for i in range(3)]
    for i, image in enumerate(images):
        image.save(tmp_path / "pics" / f"{i}.png")
    with (tmp_path / "input.csv").open("w") as f:
        f.write("image,label\n" + "".join(f"pics/{i}.png,{i}\n" for i in range(3)))  # labels as ids
    out = tmp_path / "predictions.csv"
    results = run_predict(image_model, tmp_path / "input.csv", out)
    ids, _, probs = read_output(out)
    assert ids == ["0", "1", "2"]
    assert_probs(probs, expected_image_probs(image_model, images))
    assert results["accuracy"] == pytest.approx((probs.argmax(-1) == torch.arange(3)).float().mean().item())


# ------------------------------------------------------------------------------------------------------- text


def test_text_csv_predictions_are_the_model_probabilities_at_the_recorded_length(text_model, tmp_path):
    rows = _sentences(11, 7)
    rows[3] = ("good", "pos")  # a short one: batches are padded per batch
    source = write_text_csv(tmp_path / "input.csv", rows)
    out = tmp_path / "predictions.csv"
    results = run_predict(text_model, source, out, "--batch_size", "3")
    ids, predicted, probs = read_output(out, ["neg", "pos"])
    assert ids == [str(i) for i in range(11)]
    assert_probs(probs, expected_text_probs(text_model, [text for text, _ in rows]))
    assert predicted == [["neg", "pos"][i] for i in probs.argmax(-1).tolist()]
    truth = torch.tensor([["neg", "pos"].index(label) for _, label in rows])
    assert results["accuracy"] == pytest.approx((probs.argmax(-1) == truth).float().mean().item())


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl", ".parquet"])
def test_text_tables_in_other_formats_with_another_column_name(text_model, tmp_path, suffix):
    rows = _sentences(5, 3)
    table = datasets.Dataset.from_dict({"key": list("abcde"), "review": [t for t, _ in rows]})
    source = tmp_path / f"input{suffix}"
    if suffix == ".tsv":
        table.to_csv(source, sep="\t", index=False)
    elif suffix == ".jsonl":
        table.to_json(source)
    else:
        table.to_parquet(source)
    out = tmp_path / "predictions.csv"
    results = run_predict(text_model, source, out, "--text_column_names", "review", "--id_column", "key")
    ids, _, probs = read_output(out, ["neg", "pos"])
    assert ids == list("abcde")
    assert_probs(probs, expected_text_probs(text_model, list(table["review"])))
    assert "accuracy" not in results


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("imdb:test", ("imdb", None, "test")),
        ("glue:sst2:validation", ("glue", "sst2", "validation")),
        ("stanfordnlp/imdb:plain_text:test[:100]", ("stanfordnlp/imdb", "plain_text", "test[:100]")),
        ("imdb:test[10:20]", ("imdb", None, "test[10:20]")),
    ],
)
def test_dataset_split_names_are_parsed(spec, parsed):
    assert parse_dataset_spec(spec) == parsed


def test_a_dataset_split_is_loaded_by_name_config_and_split(text_model, tmp_path, monkeypatch):
    # no hub dataset can be cached offline here: a local dataset folder goes through the same datasets.load_dataset
    folder = tmp_path / "reviews"
    folder.mkdir()
    write_text_csv(folder / "train.csv", _sentences(4, 0))
    test_rows = _sentences(6, 9)
    write_text_csv(folder / "test.csv", test_rows)
    out = tmp_path / "predictions.csv"
    results = run_predict(text_model, f"{folder}:test", out)
    ids, _, probs = read_output(out, ["neg", "pos"])
    assert ids == [str(i) for i in range(6)]
    assert_probs(probs, expected_text_probs(text_model, [t for t, _ in test_rows]))
    assert "accuracy" in results

    calls = []
    table = datasets.Dataset.from_dict({"text": ["the movie was good"], "label": [1]})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or table)
    run_predict(text_model, "stanfordnlp/imdb:plain_text:test", tmp_path / "hub.csv")
    assert calls == [(("stanfordnlp/imdb", "plain_text"), {"split": "test"})]


# ----------------------------------------------------------------------------------------------------- output


def test_existing_output_is_refused_then_replaced_with_overwrite(image_model, tmp_path, capfd):
    folder = write_image_folder(tmp_path / "val", 1, 2)
    out = tmp_path / "predictions.csv"
    out.write_text("old\n")
    argv = ["--model_name_or_path", str(image_model), "--input", str(folder), "--output", str(out)]
    assert "already exists: choose another file or pass --overwrite true" in run_cli_error(argv, capfd)
    assert out.read_text() == "old\n"
    run_cli(predict_recipe.main, [*argv, "--overwrite", "true", "--disable_tqdm", "true"])
    assert read_output(out)[0] == ["blue/0.png", "green/0.png", "red/0.png"]
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["predictions.csv"]


def test_a_crash_while_writing_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    class Unprintable:
        def __str__(self):
            raise RuntimeError("disk full, say")

    out = tmp_path / "predictions.csv"
    out.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk full"):
        write_predictions(out, ["a", Unprintable()], ["x", "y"], torch.full((2, 2), 0.5), overwrite=True)
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]


# ------------------------------------------------------------------------------------------------- bad input


def _no_config(tmp_path: Path) -> Path:
    (tmp_path / "weights_only").mkdir()
    (tmp_path / "weights_only" / "model.safetensors").write_bytes(b"")
    return tmp_path / "weights_only"


def _no_classes(tmp_path: Path) -> Path:
    model = _write_bert(tmp_path / "no_classes", num_labels=2)
    config = json.loads((model / "config.json").read_text())
    config.update(id2label={}, label2id={})  # num_labels 0
    (model / "config.json").write_text(json.dumps(config))
    return model


def _headless_image_encoder(tmp_path: Path) -> Path:
    from warmstart.autoencoder import save_image_encoder

    encoder = timm.create_model("test_resnet")
    save_image_encoder(encoder, tmp_path / "encoder", image_transforms(encoder, 32)[0])
    return tmp_path / "encoder"


BAD_MODELS = {
    "no_config": (_no_config, "not a model directory (no config.json)"),
    "bare_encoder": (lambda t: _write_bert(t / "bare"), "holds a BertModel model, not an image classifier or a seq"),
    "no_classes": (_no_classes, "holds a classifier with no classes (num_labels 0)"),
    "headless_image": (_headless_image_encoder, "holds a timm model without a classifier (0 classes)"),
    "missing": (lambda t: t / "nowhere", "neither a model directory nor a hub model id"),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_a_model_dir_that_is_not_a_classifier_is_one_line(tmp_path, capfd, case):
    make, message = BAD_MODELS[case]
    folder = write_image_folder(tmp_path / "val", 1, 2)
    argv = ["--model_name_or_path", str(make(tmp_path)), "--input", str(folder), "--output", str(tmp_path / "p.csv")]
    assert message in run_cli_error(argv, capfd)
    assert not (tmp_path / "p.csv").exists()


def test_a_model_whose_saved_input_size_it_cannot_take_is_refused(tmp_path, capfd):
    from warmstart.export import save_image_model
    from warmstart.models import wrap_timm_model

    # a ViT built for 32 px (no dynamic size), whose saved preprocessing was changed to 48 px afterwards
    model = wrap_timm_model(timm.create_model("test_vit", img_size=32, dynamic_img_size=False), LABELS)
    save_image_model(model, tmp_path / "vit", image_transforms(model, 32)[0])
    assert load_predictor(tmp_path / "vit").data_config["input_size"] == (3, 32, 32)
    config = json.loads((tmp_path / "vit" / "config.json").read_text())
    config["pretrained_cfg"]["input_size"] = [3, 48, 48]
    (tmp_path / "vit" / "config.json").write_text(json.dumps(config))
    folder = write_image_folder(tmp_path / "val", 1, 2)
    argv = ["--model_name_or_path", str(tmp_path / "vit"), "--input", str(folder), "--output", str(tmp_path / "p.csv")]
    line = run_cli_error(argv, capfd)
    assert "cannot take the 3x48x48 input its saved preprocessing makes" in line and "(32)" in line


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[str, list[str]]]:
    garbage = write_image_folder(tmp_path / "garbage", 1, 0)
    (garbage / "green" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bad_pixels = write_image_folder(tmp_path / "bad_pixels", 1, 0)
    (bad_pixels / "red" / "7.png").write_bytes(png_with_bad_pixels())  # opens, does not decode
    (tmp_path / "empty_dir" / "sub").mkdir(parents=True)
    (tmp_path / "empty_dir" / "sub" / "notes.txt").write_text("no images here")
    (tmp_path / "header_only.csv").write_text("text,label\n")
    datasets.Dataset.from_dict({"path": ["a.png"], "label": [0]}).to_parquet(tmp_path / "no_image.parquet")
    write_text_csv(tmp_path / "no_text.csv", [("a", "pos")], header=("body", "label"))
    write_text_csv(tmp_path / "texts.csv", [("good", "pos")])
    return {
        "missing_input": ("image", [str(tmp_path / "nowhere.csv")]),
        "missing_dataset": ("text", ["no_such_dataset_here:test"]),
        "garbage_image": ("image", [str(garbage)]),
        "undecodable_pixels": ("image", [str(bad_pixels)]),
        "undecodable_in_a_worker": ("image", [str(bad_pixels), "--num_workers", "2", "--batch_size", "2"]),
        "empty_folder": ("image", [str(tmp_path / "empty_dir")]),
        "empty_table": ("text", [str(tmp_path / "header_only.csv")]),
        "no_image_column": ("image", [str(tmp_path / "no_image.parquet")]),
        "given_image_column": ("image", [str(tmp_path / "no_image.parquet"), "--image_column_name", "photo"]),
        "no_text_column": ("text", [str(tmp_path / "no_text.csv")]),
        "no_id_column": ("text", [str(tmp_path / "texts.csv"), "--id_column", "key"]),
        "pair_for_single": ("text", [str(tmp_path / "texts.csv"), "--text_column_names", "text,label"]),
        "folder_for_text": ("text", [str(garbage)]),
        "batch_size": ("text", [str(tmp_path / "texts.csv"), "--batch_size", "0"]),
    }


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_input", "nowhere.csv does not exist"),
        ("missing_dataset", "cannot load split 'test' of dataset 'no_such_dataset_here'"),
        ("garbage_image", "green/9.png cannot be read"),
        ("undecodable_pixels", "red/7.png cannot be read"),
        ("undecodable_in_a_worker", "red/7.png cannot be read"),
        ("empty_folder", "holds no image files"),
        ("empty_table", "has no rows"),
        ("no_image_column", "no image column for prediction (columns: path (Value('string')), label"),
        ("given_image_column", "has no column 'photo' (columns: path, label)"),
        ("no_text_column", "has no column 'text' (columns: body, label): set --text_column_names"),
        ("no_id_column", "has no column 'key' (columns: text, label): set --id_column"),
        ("pair_for_single", "trained on 1 text column(s) (text), --text_column_names gives 2"),
        ("folder_for_text", "is a folder but the model is a text classifier"),
        ("batch_size", "--batch_size must be a positive integer, got 0"),
    ],
)
def test_bad_input_is_one_line(image_model, text_model, tmp_path, capfd, case, message):
    modality, source = _bad_inputs(tmp_path)[case]
    model = image_model if modality == "image" else text_model
    out = tmp_path / "p.csv"
    assert message in run_cli_error(
        ["--model_name_or_path", str(model), "--output", str(out), "--input", *source], capfd
    )
    assert not out.exists() and not list(tmp_path.glob(".p.csv*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only refusals need a machine without CUDA")
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--precision", "fp16"], "fp16 mixed precision needs a CUDA GPU"),
        (["--device", "cuda"], "--device cuda was asked for but no CUDA GPU is available"),
        (["--device", "tpu"], "invalid choice"),
    ],
)
def test_devices_and_precisions_the_machine_lacks_are_one_line(image_model, tmp_path, capfd, flags, message):
    folder = write_image_folder(tmp_path / "val", 1, 2)
    argv = ["--model_name_or_path", str(image_model), "--input", str(folder), "--output", str(tmp_path / "p.csv")]
    assert message in run_cli_error([*argv, *flags], capfd)


def test_bf16_on_the_cpu_runs_where_the_cpu_has_it_and_is_refused_elsewhere(image_model, tmp_path, capfd):
    from warmstart.precision import cpu_has_native_bf16

    folder = write_noise_folder(tmp_path / "val", 1, 6)
    argv = ["--model_name_or_path", str(image_model), "--input", str(folder), "--device", "cpu"]
    if not cpu_has_native_bf16():
        assert "bf16 was asked for on a CPU without native bf16" in run_cli_error(
            [*argv, "--output", str(tmp_path / "p.csv"), "--precision", "bf16"], capfd
        )
        return
    run_predict(image_model, folder, tmp_path / "fp32.csv", "--device", "cpu")
    run_predict(image_model, folder, tmp_path / "bf16.csv", "--device", "cpu", "--precision", "bf16")
    fp32, bf16 = read_output(tmp_path / "fp32.csv")[2], read_output(tmp_path / "bf16.csv")[2]
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=3e-2)
    assert not torch.equal(bf16, fp32)  # the autocast took effect


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_gpu_predictions_match_the_cpu(image_model, text_model, tmp_path, precision):
    folder = write_noise_folder(tmp_path / "val", 2, 4)
    texts = write_text_csv(tmp_path / "input.csv", _sentences(9, 2))
    tolerance = 1e-4 if precision == "fp32" else 3e-2
    for model, source, labels in ((image_model, folder, LABELS), (text_model, texts, ["neg", "pos"])):
        run_predict(model, source, tmp_path / "cpu.csv", "--device", "cpu", "--overwrite", "true")
        run_predict(
            model, source, tmp_path / "gpu.csv", "--device", "cuda", "--precision", precision, "--overwrite", "true"
        )
        cpu_ids, _, cpu = read_output(tmp_path / "cpu.csv", labels)
        gpu_ids, _, gpu = read_output(tmp_path / "gpu.csv", labels)
        assert cpu_ids == gpu_ids
        torch.testing.assert_close(gpu, cpu, rtol=0, atol=tolerance)


def test_a_hub_id_in_the_local_cache_is_read_from_its_snapshot(image_model, tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = tmp_path / "hub" / "models--someone--tiny-resnet" / "snapshots" / "abc123"
    shutil.copytree(image_model, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    from_hub = load_predictor("someone/tiny-resnet", device="cpu")
    assert from_hub.model_dir == snapshot and from_hub.labels == LABELS
    data = read_prediction_input(write_noise_folder(tmp_path / "val", 1, 3), from_hub)
    local = load_predictor(image_model, device="cpu")
    torch.testing.assert_close(
        predict(from_hub, data, progress=False), predict(local, data, progress=False), rtol=0, atol=0
    )
    with pytest.raises(WarmstartError, match=r"offline \(HF_HUB_OFFLINE=1\) and not in the Hugging Face cache"):
        load_predictor("someone/not-cached")


def test_the_saved_data_config_is_used_not_the_architecture_default(image_model):
    # transformers' TimmWrapper rebuilds the timm model with the architecture's pretrained_cfg (160 px for
    # test_resnet): its data config is not the one the run saved
    predictor = load_predictor(image_model, device="cpu")
    assert predictor.modality == "image" and predictor.labels == LABELS
    assert predictor.data_config["input_size"] == (3, 32, 32)
    assert timm.create_model("test_resnet").pretrained_cfg["input_size"] != (3, 32, 32)


# ------------------------------------------------------------------------------------------- several processes


def test_a_subset_of_rows_is_predicted_as_in_the_whole_input(image_model, text_model, tmp_path):
    texts = write_text_csv(tmp_path / "input.csv", _sentences(7, 4))
    folder = write_noise_folder(tmp_path / "val", 2, 8)
    for model, source in ((text_model, texts), (image_model, folder)):
        predictor = load_predictor(model, device="cpu")
        data = read_prediction_input(source, predictor)
        whole = predict(predictor, data, 3, progress=False)
        for rows in ([5, 0, 3], range(1, 6, 2), []):
            part = predict(predictor, data, 2, progress=False, rows=rows)
            torch.testing.assert_close(part, whole[list(rows)], rtol=0, atol=1e-6)


def run_two_processes(script: Path, argv: list[str], timeout: int = 150) -> subprocess.CompletedProcess:
    """``script`` under ``torchrun`` with 2 CPU processes (a gloo group)."""
    command = [
        *torchrun_command(str(script)),
        *argv,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


# runs the recipe as its __main__ does, and keeps what main returned in each process
RECORDING_RUN = """
import json, os, sys
sys.path.insert(0, {recipes!r})
import predict
from warmstart import run_cli

def record(argv):
    results = predict.main(argv)
    with open(os.path.join({folder!r}, "results-" + os.environ["RANK"] + ".json"), "w") as f:
        json.dump(results, f)

run_cli(record)
"""


def per_process_counts(stdout: str, rows: int) -> dict[int, int]:
    """What each process logged it predicted."""
    found = re.findall(rf"process (\d) of 2 predicted (\d+) of the {rows} rows", stdout)
    return {int(rank): int(count) for rank, count in found}


@pytest.mark.parametrize("modality", ["text", "image"])
def test_two_processes_predict_their_shares_and_write_the_single_process_file(
    modality, image_model, text_model, tmp_path
):
    if modality == "text":
        rows = _sentences(13, 11)
        rows[4] = ("good", "pos")  # a short one: each process pads its own batches
        model, source, labels = text_model, write_text_csv(tmp_path / "input.csv", rows), ["neg", "pos"]
    else:
        model, source, labels = image_model, write_noise_folder(tmp_path / "val", 3, 12), LABELS
    count = 13 if modality == "text" else 9  # odd: the processes get 7 and 6, 5 and 4
    alone = run_predict(model, source, tmp_path / "alone.csv", "--batch_size", "2")
    out = tmp_path / "out" / "predictions.csv"
    argv = ["--model_name_or_path", str(model), "--input", str(source), "--output", str(out), "--batch_size", "2"]
    if modality == "text":  # the recipe itself, with its progress bar
        done = run_two_processes(RECIPES / "predict.py", argv)
    else:  # the recipe's main as its __main__ runs it, keeping each process's results
        script = tmp_path / "recording_run.py"
        script.write_text(RECORDING_RUN.format(recipes=str(RECIPES), folder=str(tmp_path)))
        done = run_two_processes(script, [*argv, "--disable_tqdm", "true"])
    assert done.returncode == 0, done.stderr[-3000:]

    ids, predicted, probs = read_output(out, labels)
    alone_ids, alone_predicted, alone_probs = read_output(tmp_path / "alone.csv", labels)
    assert ids == alone_ids and len(set(ids)) == count  # every input once, in input order
    assert_probs(probs, alone_probs)
    assert predicted == alone_predicted
    # each process predicted every other row, from its rank on
    assert per_process_counts(done.stdout, count) == {0: (count + 1) // 2, 1: count // 2}
    # the main process alone wrote (one file, no temporary left) and printed
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions.csv"]
    summary = [line for line in done.stdout.splitlines() if "predictions written to" in line]
    assert summary == [
        f"{count} predictions written to {out}; accuracy {alone['accuracy']:.4f} against the input's labels"
    ]
    if modality == "text":  # the main process's bar alone, over its share
        assert (
            f"{(count + 1) // 2}/{(count + 1) // 2}" in done.stderr and f"{count // 2}/{count // 2}" not in done.stderr
        )
    else:  # the same results in both processes, but for the rows each predicted
        results = [json.loads((tmp_path / f"results-{rank}.json").read_text()) for rank in (0, 1)]
        assert [r.pop("rows_predicted_here") for r in results] == [(count + 1) // 2, count // 2]
        del alone["rows_predicted_here"]
        assert results[0] == results[1] == {**alone, "output": str(out)}


@pytest.mark.parametrize("case", ["existing_output", "unreadable_image_in_one_share"])
def test_two_processes_stop_together_on_bad_input_with_one_line(case, image_model, tmp_path):
    folder = write_image_folder(tmp_path / "val", 1, 2)  # blue/0.png, green/0.png, red/0.png: rows 0, 1, 2
    out = tmp_path / "predictions.csv"
    if case == "existing_output":
        out.write_text("old\n")
        message = "already exists: choose another file or pass --overwrite true"
    else:
        (folder / "green" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # row 1: the second process's
        message = "green/0.png cannot be read"
    argv = ["--model_name_or_path", str(image_model), "--input", str(folder), "--output", str(out)]
    done = run_two_processes(RECIPES / "predict.py", [*argv, "--disable_tqdm", "true"], timeout=120)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr[-3000:]
    if case == "existing_output":  # decided before any model loaded
        assert out.read_text() == "old\n" and "loaded the image classifier" not in done.stdout
    else:
        assert not out.exists() and per_process_counts(done.stdout, 3) == {}


@pytest.mark.parametrize(("rank", "stopped"), [("0", WarmstartError), ("1", SystemExit)])
def test_a_gpu_run_with_more_processes_than_gpus_stops_every_process_reported_by_the_main_one(
    monkeypatch, rank, stopped
):
    from warmstart import prediction

    for name, value in {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": rank, "LOCAL_RANK": rank}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(stopped) as raised:  # before a process group (and its CUDA device) is set up
        prediction.start_prediction_processes("auto")
    if stopped is SystemExit:  # silent, with run_cli's status for bad input
        assert raised.value.code == 2
    else:
        assert "2 processes were launched on this machine but it has 1 CUDA GPU(s)" in str(raised.value)
    assert not torch.distributed.is_initialized()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert prediction.resolve_device("auto") == torch.device("cuda", int(rank))  # the GPU of its local rank
