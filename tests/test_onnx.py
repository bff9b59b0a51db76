"""ONNX export and serving (warmstart.serving, recipes/export.py, predict.py --backend onnx): tiny BERT, a timm CNN
and a timm ViT, each trained a few steps by its recipe, exported in fp32 and int8, run with ONNX Runtime on inputs the
export never saw and compared with PyTorch; predictions through --backend onnx against --backend torch; the card's
listing; and every refusal as one line with nothing written."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import timm
import torch
from conftest import _sentences, _write_bert, tiny_text_argv, trainer_flags, write_image_folder, write_text_csv
from safetensors.torch import load_file, save_file

from warmstart import run_cli, validate_model_card
from warmstart.errors import WarmstartError
from warmstart.prediction import input_batches, load_predictor, read_prediction_input
from warmstart.serving import MODEL_FILES, export_onnx, quantization_plan
from warmstart.serving import export as export_module

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
sys.path.insert(0, str(RECIPES))
import export as export_recipe  # noqa: E402
import image_classification  # noqa: E402
import predict as predict_recipe  # noqa: E402
import text_classification  # noqa: E402

# fp32: the graph reproduces PyTorch's logits to within this (absolute, logits of these models are below 10)
FP32_ATOL = 1e-4
# int8 (tiny models trained a few steps, so small margins): logits within this share of their range
INT8_RELATIVE = 0.15


def _train_image(root: Path, model: str) -> Path:
    image_classification.main(
        [
            "--model_name_or_path",
            model,
            "--random_init",
            "--train_dir",
            str(write_image_folder(root / "train", 12, 0)),
            "--validation_dir",
            str(write_image_folder(root / "validation", 4, 1)),
            "--image_size",
            "32",
            *trainer_flags(root / "out", "--max_steps", "8", "--disable_tqdm", "true"),
        ]
    )
    return root / "out"


def _train_text(root: Path, *extra: str) -> Path:
    text_classification.main(tiny_text_argv(root, 48, 16, 8, *extra))
    return root / "out"


MODELS = {
    "bert": lambda root: _train_text(root),
    "cnn": lambda root: _train_image(root, "test_efficientnet"),
    "vit": lambda root: _train_image(root, "test_vit"),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """Each model trained, then exported in fp32 and int8 by the recipe (the int8 floor lowered: a model of 8 steps
    has margins too small for the default's agreement)."""
    models = {}
    for name, train in MODELS.items():
        model = train(tmp_path_factory.mktemp(name))
        export_recipe.main(
            [
                "--model_name_or_path",
                str(model),
                "--quantize",
                "int8",
                "--min_int8_agreement",
                "0.5",
                "--check_rows",
                "64",
            ]
        )
        models[name] = model
    return models


def _fresh_input(name: str, root: Path) -> Path:
    """Inputs the export was neither traced nor checked on: new images, new sentences (other lengths)."""
    if name == "bert":
        rows = [(" ".join(["good"] * (i + 1)), "pos") for i in range(7)] + _sentences(9, 7)
        return write_text_csv(root / "fresh.csv", rows)
    return write_image_folder(root / "fresh", 3, 9, size=40)


def _logits(predictor, data, rows=None) -> np.ndarray:
    return np.concatenate(
        [predictor.logits(batch).float().numpy() for _, batch in input_batches(predictor, data, 5, rows=rows)]
    )


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("name", list(MODELS))
def test_the_export_reproduces_pytorch_on_new_inputs(exported, tmp_path, name, precision):
    model = exported[name]
    torch_side = load_predictor(model, device="cpu")
    onnx_side = load_predictor(model, device="cpu", backend="onnx", precision=precision)
    assert onnx_side.backend == "onnx" and onnx_side.labels == torch_side.labels
    assert onnx_side.model.path == model / "onnx" / MODEL_FILES[precision]
    data = read_prediction_input(_fresh_input(name, tmp_path), torch_side)
    # batches of 5 and of 1, texts of several lengths: the dynamic axes
    for rows in (None, [0]):
        expected, got = _logits(torch_side, data, rows), _logits(onnx_side, data, rows)
        assert got.shape == expected.shape
        if precision == "fp32":
            np.testing.assert_allclose(got, expected, atol=FP32_ATOL, rtol=0)
        else:
            spread = float(expected.max() - expected.min())
            assert np.abs(got - expected).max() <= INT8_RELATIVE * spread
            assert not np.allclose(got, expected, atol=1e-6)  # it is a quantized graph, not the fp32 one


@pytest.mark.parametrize("name", list(MODELS))
def test_the_report_records_the_checks_preprocessing_and_weights(exported, name):
    model = exported[name]
    report = json.loads((model / "onnx" / "export_report.json").read_text())
    assert report["opset"] == 18 and report["output"] == "logits"
    assert set(report["files"]) == {"model.onnx", "model.int8.onnx"}
    fp32, int8 = report["files"]["model.onnx"], report["files"]["model.int8.onnx"]
    assert fp32["max_abs_logit_diff"] <= fp32["tolerance"] and fp32["label_agreement"] == 1.0
    assert int8["label_agreement"] >= 0.5 and "validation" in int8["checked_on"]
    weights = model / "model.safetensors"
    assert report["weights"] == {"model.safetensors": hashlib.sha256(weights.read_bytes()).hexdigest()}
    if name == "bert":
        assert report["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
        assert report["dynamic_axes"]["input_ids"] == ["batch", "sequence"]
        assert (model / "onnx" / "tokenizer_config.json").is_file()
        assert int8["quantization"].startswith("dynamic")
    else:
        assert report["inputs"] == ["pixel_values"] and report["data_config"]["input_size"] == [3, 32, 32]
        assert int8["quantization"].startswith("static" if name == "cnn" else "dynamic")
        if name == "cnn":
            assert "train" in int8["calibrated_on"]
    # int8 weights per output channel (a scale per channel), as the module says: per tensor lost accuracy
    graph = onnx.load(str(model / "onnx" / "model.int8.onnx")).graph
    scales = [i for i in graph.initializer if i.name.endswith("_scale") and "weight" in i.name.lower()]
    assert scales and all(len(scale.dims) == 1 and scale.dims[0] > 1 for scale in scales)
    session = onnxruntime.InferenceSession(str(model / "onnx" / "model.onnx"))
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert shapes == (
        {n: ["batch", "sequence"] for n in report["inputs"]}
        if name == "bert"
        else {"pixel_values": ["batch", 3, 32, 32]}
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_the_card_lists_the_export_and_stays_valid(exported, name):
    card = (exported[name] / "README.md").read_text()
    listing = card.split("## Exported files")[1].split("## How to load")[0]
    assert "`onnx/model.onnx`: ONNX graph, fp32, opset 18" in listing
    assert "`onnx/model.int8.onnx`: ONNX graph, int8" in listing and "`onnx/export_report.json`" in listing
    assert "max logit difference" in listing
    validate_model_card(exported[name])


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("name", list(MODELS))
def test_predict_with_the_onnx_backend_writes_the_labels_of_the_torch_backend(exported, tmp_path, name, precision):
    source = _fresh_input(name, tmp_path)
    outputs = {}
    for backend in ("torch", "onnx"):
        outputs[backend] = tmp_path / f"{backend}.csv"
        predict_recipe.main(
            [
                "--model_name_or_path",
                str(exported[name]),
                "--input",
                str(source),
                "--output",
                str(outputs[backend]),
                "--backend",
                backend,
                "--precision",
                precision if backend == "onnx" else "fp32",
                "--device",
                "cpu",
                "--disable_tqdm",
                "true",
            ]
        )
    torch_rows, onnx_rows = (outputs[b].read_text().splitlines() for b in ("torch", "onnx"))
    assert torch_rows[0] == onnx_rows[0] and len(torch_rows) == len(onnx_rows) > 5
    ids_labels = [[row.split(",")[:2] for row in rows[1:]] for rows in (torch_rows, onnx_rows)]
    if precision == "fp32":
        assert ids_labels[0] == ids_labels[1]
        probabilities = [
            np.array([[float(v) for v in row.split(",")[2:]] for row in rows[1:]]) for rows in (torch_rows, onnx_rows)
        ]
        np.testing.assert_allclose(probabilities[1], probabilities[0], atol=1e-4)
    else:
        assert [i for i, _ in ids_labels[0]] == [i for i, _ in ids_labels[1]]


def test_a_multi_label_text_model_exports_and_predicts_its_label_sets(tmp_path):
    rows = [(text, json.dumps(["pos", "short"] if label == "pos" else ["neg"])) for text, label in _sentences(40, 3)]
    model = tmp_path / "out"
    text_classification.main(
        [
            "--model_name_or_path",
            str(_write_bert(tmp_path / "bert")),
            "--train_file",
            str(write_text_csv(tmp_path / "train.csv", rows[:32])),
            "--validation_file",
            str(write_text_csv(tmp_path / "validation.csv", rows[32:])),
            *trainer_flags(model, "--max_steps", "4", "--disable_tqdm", "true"),
        ]
    )
    report = export_onnx(model, check_rows=8)
    assert report["problem_type"] == "multi_label_classification"
    assert report["files"]["model.onnx"]["label_agreement"] == 1.0
    torch_side, onnx_side = load_predictor(model, device="cpu"), load_predictor(model, device="cpu", backend="onnx")
    assert onnx_side.thresholds == torch_side.thresholds
    data = read_prediction_input(tmp_path / "validation.csv", torch_side)
    np.testing.assert_allclose(_logits(onnx_side, data), _logits(torch_side, data), atol=FP32_ATOL)


def test_a_hybrid_of_convolutions_and_attention_is_not_quantized():
    hybrid = timm.create_model("test_coatnet", num_classes=3)
    with pytest.raises(WarmstartError, match=r"--quantize int8 does not support test_coatnet: it mixes attention"):
        quantization_plan(hybrid, "image", "test_coatnet")
    assert quantization_plan(timm.create_model("test_resnet"), "image", "test_resnet").method == "static"
    assert quantization_plan(timm.create_model("test_vit"), "image", "test_vit").method == "dynamic"


# --- refusals: one line, non-zero exit, nothing written -------------------------------------------------------------


def _one_line_error(main, argv: list[str], capfd) -> str:
    """Runs a recipe's ``main`` through ``run_cli``, expecting bad input: its one stderr line."""
    capfd.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_cli(main, argv)
    assert exited.value.code == 2
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _export_error(argv: list[str], capfd) -> str:
    return _one_line_error(export_recipe.main, argv, capfd)


def _predict_error(argv: list[str], capfd) -> str:
    return _one_line_error(predict_recipe.main, ["--disable_tqdm", "true", "--device", "cpu", *argv], capfd)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def copyable(exported) -> Path:
    return exported["cnn"]


def _copy(model: Path, where: Path, with_export: bool = True) -> Path:
    shutil.copytree(model, where, ignore=None if with_export else shutil.ignore_patterns("onnx"))
    return where


def test_export_refusals_are_one_line_and_write_nothing(copyable, tmp_path, capfd):
    bare = _copy(copyable, tmp_path / "bare", with_export=False)
    before = _snapshot(bare)
    cases = {
        "no config": (["--model_name_or_path", str(tmp_path / "nowhere")], "is not a warmstart model (no directory"),
        "opset 17": (
            ["--model_name_or_path", str(bare), "--opset", "17"],
            "--opset 17 is not supported: torch's ONNX",
        ),
        "opset 99": (["--model_name_or_path", str(bare), "--opset", "99"], "--opset 99 is not supported"),
        "bad agreement": (
            ["--model_name_or_path", str(bare), "--quantize", "int8", "--min_int8_agreement", "1.5"],
            "--min_int8_agreement must be in (0, 1]",
        ),
    }
    for flags, message in cases.values():
        assert message in _export_error(flags, capfd)
    assert _snapshot(bare) == before
    (bare / "warmstart_config.yaml").unlink()
    line = _export_error(["--model_name_or_path", str(bare)], capfd)
    assert "is not a warmstart model (no warmstart_config.yaml)" in line and "--sample_input" in line
    assert not (bare / "onnx").exists()


def test_an_existing_export_is_kept_without_overwrite_and_replaced_with_it(copyable, tmp_path, capfd):
    model = _copy(copyable, tmp_path / "model")
    before = _snapshot(model)
    line = _export_error(["--model_name_or_path", str(model)], capfd)
    assert "already holds an ONNX export: pass --overwrite to replace it" in line
    assert _snapshot(model) == before
    export_recipe.main(["--model_name_or_path", str(model), "--overwrite", "--check_rows", "8"])
    assert not (model / "onnx" / "model.int8.onnx").exists()  # the new export is fp32 only
    assert sorted(p.name for p in model.iterdir() if p.name.startswith(".")) == []  # no staging folder left
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    line = _export_error(["--model_name_or_path", str(model), "--output_dir", str(other), "--overwrite"], capfd)
    assert "holds files that are not a warmstart export" in line and (other / "notes.txt").read_text() == "mine"


def test_a_check_that_fails_refuses_the_export_and_writes_nothing(copyable, tmp_path, capfd, monkeypatch):
    model = _copy(copyable, tmp_path / "model", with_export=False)
    before = _snapshot(model)
    monkeypatch.setattr(export_module, "FP32_RELATIVE_TOLERANCE", 0.0)
    line = _export_error(["--model_name_or_path", str(model), "--check_rows", "8"], capfd)
    assert "the fp32 ONNX graph differs from PyTorch by" in line and "not written" in line
    assert _snapshot(model) == before and not any(p.name.startswith(".onnx") for p in model.parent.iterdir())


def test_predict_refusals_for_the_onnx_backend(copyable, tmp_path, capfd, monkeypatch):
    source = write_image_folder(tmp_path / "images", 1, 5)
    output = ["--input", str(source), "--output", str(tmp_path / "p.csv")]
    bare = _copy(copyable, tmp_path / "bare", with_export=False)
    line = _predict_error(["--model_name_or_path", str(bare), "--backend", "onnx", *output], capfd)
    assert f"has no ONNX export ({bare}/onnx/model.onnx): make one with python recipes/export.py" in line
    line = _predict_error(["--model_name_or_path", str(copyable), "--precision", "int8", *output], capfd)
    assert "--precision int8 is the quantized ONNX export: give --backend onnx" in line
    line = _predict_error(
        ["--model_name_or_path", str(copyable), "--backend", "onnx", "--precision", "bf16", *output], capfd
    )
    assert "--backend onnx runs the export's fp32 or int8 graph, not 'bf16'" in line

    stale = _copy(copyable, tmp_path / "stale")
    weights = load_file(stale / "model.safetensors")
    first = next(iter(weights))
    weights[first] = weights[first] + 1.0
    save_file(weights, stale / "model.safetensors", metadata={"format": "pt"})
    line = _predict_error(["--model_name_or_path", str(stale), "--backend", "onnx", *output], capfd)
    assert "export in" in line and "is stale: model.safetensors changed after it was exported" in line
    assert "--overwrite" in line and not (tmp_path / "p.csv").exists()

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    line = _predict_error(["--model_name_or_path", str(copyable), "--backend", "onnx", *output], capfd)
    assert line == 'error: --backend onnx needs ONNX Runtime, which is not installed: pip install "warmstart[onnx]"'
    line = _export_error(["--model_name_or_path", str(bare)], capfd)
    assert 'ONNX export needs ONNX Runtime, which is not installed: pip install "warmstart[onnx]"' in line


def test_int8_on_a_gpu_and_cuda_without_its_provider_are_refused_and_auto_falls_back(copyable, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(WarmstartError, match="int8 ONNX graphs run on the CPU"):
        load_predictor(copyable, device="cuda", backend="onnx", precision="int8")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(WarmstartError, match="has no CUDA provider: pip install onnxruntime-gpu"):
        load_predictor(copyable, device="cuda", backend="onnx")
    # auto means the GPU where it can be used: ONNX Runtime without its CUDA provider, or int8, runs on the CPU
    for precision in ("fp32", "int8"):
        assert load_predictor(copyable, device="auto", backend="onnx", precision=precision).device.type == "cpu"
