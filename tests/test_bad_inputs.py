"""Bad input is refused the same way everywhere: exit status 2, one ``error: ...`` line on stderr that names the
problem, no traceback, and the output directory left exactly as it was.

Each case runs a recipe's ``main`` through :func:`warmstart.run_cli` in this process; the cases marked ``subprocess``
also run as ``python recipes/<recipe>.py ...`` to prove what a shell sees. Runs that get as far as loading a model
use the tiny BERT of ``conftest`` or timm's ``test_resnet`` with random weights at 32 pixels.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import trainer_flags, write_image_folder, write_text_csv
from transformers import TrainingArguments

import warmstart.precision
from warmstart import DataArguments, ModelArguments, WarmstartError, run_cli
from warmstart.config import PolicyArguments, parse_args

REPO = Path(__file__).resolve().parents[1]
IMAGE_MODEL = ["--model_name_or_path", "test_resnet", "--random_init", "--image_size", "32"]
# Progress bars are progress, not errors, and whether they show depends on the datasets cache: keep them out of the
# stderr that is checked. Everything else a run prints to stderr counts.
QUIET = {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def _load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECIPES = {
    "text": _load_recipe("text_classification"),
    "image": _load_recipe("image_classification"),
    "mlm": _load_recipe("pretrain_mlm"),
    "ae": _load_recipe("pretrain_autoencoder"),
    "compare": _load_recipe("compare_strategies"),
    "predict": _load_recipe("predict"),
    "chain": _load_recipe("chain"),
}
SCRIPTS = {
    "text": "recipes/text_classification.py",
    "image": "recipes/image_classification.py",
    "mlm": "recipes/pretrain_mlm.py",
    "ae": "recipes/pretrain_autoencoder.py",
    "compare": "recipes/compare_strategies.py",
    "predict": "recipes/predict.py",
    "chain": "recipes/chain.py",
}


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch):
    import datasets
    import transformers

    for name, value in QUIET.items():
        monkeypatch.setenv(name, value)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    yield
    datasets.enable_progress_bars()
    transformers.utils.logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------------------- helpers


def snapshot(path: Path) -> dict[str, tuple[int, int, str]] | None:
    """Every file under ``path``: relative name -> (size, mtime_ns, sha256); ``None`` when ``path`` does not exist."""
    if not path.exists():
        return None
    if path.is_file():
        return {".": _fingerprint(path)}
    return {str(f.relative_to(path)): _fingerprint(f) for f in sorted(path.rglob("*")) if f.is_file()}


def _fingerprint(file: Path) -> tuple[int, int, str]:
    stat = file.stat()
    return stat.st_size, stat.st_mtime_ns, hashlib.sha256(file.read_bytes()).hexdigest()


def assert_one_error_line(stderr: str, expect: tuple[str, ...]) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{stderr}"
    line = lines[0]
    assert line.startswith("error: "), line
    for part in expect:
        assert part in line, f"{part!r} not in {line!r}"
    return line


def run_in_process(recipe: str, argv: list[str], capfd) -> tuple[int, str]:
    """Runs ``run_cli(main, argv)``: its exit status and stderr. The log handlers of transformers and datasets write
    to the stderr of the moment they were imported, which capfd does not see here: the script runs check those."""
    capfd.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_cli(RECIPES[recipe].main, argv)
    return exited.value.code, capfd.readouterr().err


def run_script(recipe: str, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **QUIET}
    return subprocess.run(
        [sys.executable, SCRIPTS[recipe], *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


# ------------------------------------------------------------------------------------------------------- data makers


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_bad_pixels(width: int = 24, height: int = 24) -> bytes:
    """A PNG whose chunks and CRCs are all valid but whose compressed pixel data is garbage: ``verify()`` passes,
    decoding fails."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"\x78\x9c" + bytes(range(7, 250)))
        + png_chunk(b"IEND", b"")
    )


@dataclass
class Env:
    """The paths one case works with, and helpers that make bad data next to the good."""

    tmp: Path
    bert: Path
    timm_dir: Path
    train_csv: Path
    validation_csv: Path
    train_dir: Path
    validation_dir: Path
    out: Path
    fixture: Callable[[str], Path]  # a session fixture by name, made only by the cases that need it

    def text(self, *extra: str, model: str | Path | None = None, train=None, validation=None) -> list[str]:
        argv = ["--model_name_or_path", str(model or self.bert)]
        argv += ["--train_file", str(train or self.train_csv)]
        if validation != "":
            argv += ["--validation_file", str(validation or self.validation_csv)]
        return [*argv, *trainer_flags(self.out), *extra]

    def image(self, *extra: str, model: list[str] | None = None, train=None, validation=None, table=None) -> list[str]:
        argv = [*(model or IMAGE_MODEL)]
        argv += ["--train_file", str(table)] if table else ["--train_dir", str(train or self.train_dir)]
        if validation != "":
            argv += ["--validation_dir", str(validation or self.validation_dir)]
        return [*argv, *trainer_flags(self.out), *extra]

    def mlm(self, *extra: str, model: str | Path | None = None, train: Path | None = None) -> list[str]:
        data = ["--train_file", str(train or self.corpus())]
        return [
            "--model_name_or_path",
            str(model or self.bert),
            *data,
            "--max_seq_length",
            "24",
            *self.pretrain(extra),
        ]

    def ae(self, *extra: str, model: list[str] | None = None, data: list[str] | None = None) -> list[str]:
        data = data or ["--train_dir", str(self.train_dir)]  # class folders are allowed, their names unused
        return [*(model or IMAGE_MODEL), *data, *self.pretrain(extra)]

    def pretrain(self, extra: tuple[str, ...]) -> list[str]:
        return trainer_flags(self.out, "--max_steps", "1", "--disable_tqdm", "true", *extra)

    def compare(self, *extra: str) -> list[str]:
        flags = [a for a in trainer_flags(self.out, "--max_steps", "1") if a not in ("--learning_rate", "1e-3")]
        return [*self.text()[:6], *flags, *extra]

    def predict(self, *extra: str, model: str | Path | None = None, source: str | Path | None = None) -> list[str]:
        model = model or self.fixture("image_classifier")
        argv = ["--model_name_or_path", str(model), "--input", str(source or self.validation_dir)]
        return [*argv, "--output", str(self.out / "predictions.csv"), "--disable_tqdm", "true", *extra]

    def chain(self, links: object) -> list[str]:
        path = self.write("chain.yaml", links if isinstance(links, str) else yaml.safe_dump(links))
        return [str(path), "--output_dir", str(self.out)]

    def corpus(self) -> Path:
        words = " ".join(["the movie was really good and very nice"] * 3)
        return self.write("corpus.txt", "\n".join(f"{words} {i}" for i in range(30)) + "\n")

    def under_a_file(self) -> str:
        """An output dir that cannot be made, whoever runs the test (root ignores permission bits)."""
        return str(self.out / "notes.txt" / "run")

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def csv(self, name: str, rows: list[tuple], header=("text", "label")) -> Path:
        return write_text_csv(self.tmp / name, rows, header)

    def image_folder(self, name: str, per_class: int = 4, seed: int = 2) -> Path:
        return write_image_folder(self.tmp / name, per_class, seed)

    def bad_image(self, content: bytes, name: str = "bad.png") -> Path:
        """A copy of the train folder with one bad file among the red images."""
        folder = self.image_folder("train_bad")
        (folder / "red" / name).write_bytes(content)
        return folder

    def truncated_png(self) -> bytes:
        good = (self.train_dir / "red" / "0.png").read_bytes()
        return good[: len(good) // 2]


@pytest.fixture(scope="session")
def timm_dir(tmp_path_factory) -> Path:
    """timm's ``save_for_hf`` layout (config.json with ``architecture``, model.safetensors) of ``test_resnet``."""
    import timm
    from timm.models import save_for_hf

    path = tmp_path_factory.mktemp("timm_test_resnet")
    save_for_hf(timm.create_model("test_resnet", pretrained=False, num_classes=3), str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def image_classifier(tmp_path_factory) -> Path:
    """A warmstart output of the image recipe (test_resnet, one step at 32 pixels), for the predict recipe."""
    root = tmp_path_factory.mktemp("image_classifier")
    argv = [*IMAGE_MODEL, "--train_dir", str(write_image_folder(root / "train", 2, 0))]
    RECIPES["image"].main([*argv, *trainer_flags(root / "out", "--max_steps", "1", "--disable_tqdm", "true")])
    return root / "out"


@pytest.fixture(scope="session")
def text_classifier(tmp_path_factory, tiny_bert) -> Path:
    """A warmstart output of the text recipe (the tiny BERT, one step), for the predict recipe."""
    root = tmp_path_factory.mktemp("text_classifier")
    train = write_text_csv(root / "train.csv", [("good movie", "pos"), ("bad movie", "neg")] * 6)
    argv = ["--model_name_or_path", str(tiny_bert), "--train_file", str(train)]
    RECIPES["text"].main([*argv, *trainer_flags(root / "out", "--max_steps", "1", "--disable_tqdm", "true")])
    return root / "out"


@pytest.fixture()
def env(tmp_path, tiny_bert, timm_dir, text_files, image_dirs, request) -> Env:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("a file the user keeps here\n")
    return Env(
        tmp_path,
        tiny_bert,
        timm_dir,
        text_files["train"],
        text_files["validation"],
        image_dirs["train"],
        image_dirs["validation"],
        out,
        request.getfixturevalue,
    )


def _yaml(env: Env, body: str, name: str = "config.yaml") -> Path:
    return env.write(name, body)


def _empty_model_dir(env: Env) -> Path:
    (env.tmp / "empty_model").mkdir()
    return env.tmp / "empty_model"


def _non_json_config_dir(env: Env) -> Path:
    env.write("broken_model/config.json", "architecture: resnet18\nthis is not json {")
    return env.tmp / "broken_model"


# ------------------------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    id: str
    recipe: str
    argv: Callable[[Env], list[str]]
    expect: tuple[str, ...]
    subprocess: bool = False  # also run as a script
    setup: Callable[[Env, pytest.MonkeyPatch], None] | None = None


def _no_native_bf16(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (warmstart.precision.hardware, warmstart.precision.choice, warmstart.precision.devices):
        monkeypatch.setattr(module, "cpu_flags", lambda cpuinfo=None: {"avx2", "fma", "sse4_2"})


def _accelerate_fp16(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")


def _accelerate_bf16(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")


def _online_without_network(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE unset, and every hub dataset's download fails as it does without a network."""
    import datasets
    from huggingface_hub import constants

    def no_network(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets, "load_dataset", no_network)


def _hub_dataset_instead_of_files(e: Env) -> list[str]:
    """The text recipe's arguments with a hub dataset id that no cache holds in place of the files."""
    files = ("--train_file", str(e.train_csv), "--validation_file", str(e.validation_csv))
    return [a for a in e.text() if a not in files] + ["--dataset_name", "no/such_set"]


POS, NEG = ("good movie", "pos"), ("bad movie", "neg")

CASES = [
    # ---- columns
    Case(
        "text-label-column-misspelled",
        "text",
        lambda e: e.text("--label_column_name", "sentiment"),
        ("'sentiment'", "(columns: text, label)", "--label_column_name"),
        subprocess=True,
    ),
    Case(
        "text-text-column-misspelled",
        "text",
        lambda e: e.text("--text_column_names", "txt"),
        ("'txt'", "(columns: text, label)", "--text_column_names"),
    ),
    Case(
        "text-pair-second-column-missing",
        "text",
        lambda e: e.text("--text_column_names", "text,hypothesis"),
        ("'hypothesis'", "(columns: text, label)"),
    ),
    Case(
        "text-column-cannot-be-guessed",
        "text",
        lambda e: e.text(train=e.csv("t.csv", [POS, NEG] * 4, ("body", "label")), validation=""),
        ("cannot tell the text column", "(columns: body, label)", "--text_column_names"),
    ),
    Case(
        "text-label-used-as-text",
        "text",
        lambda e: e.text("--text_column_names", "label"),
        ("'label' is both the label column and a text column",),
    ),
    Case(
        "text-three-text-columns",
        "text",
        lambda e: e.text("--text_column_names", "text,label,x"),
        ("one column or a pair, got 3",),
    ),
    Case(
        "text-label-column-only-in-train",
        "text",
        lambda e: e.text(validation=e.csv("v.csv", [POS, NEG], ("text", "sentiment"))),
        ("'label'", "validation split", "(columns: text, sentiment)"),
    ),
    Case(
        "image-image-column-misspelled",
        "image",
        lambda e: e.image("--image_column_name", "picture"),
        ("'picture'", "(columns: image, label)", "--image_column_name"),
    ),
    Case(
        "image-label-column-misspelled",
        "image",
        lambda e: e.image("--label_column_name", "class"),
        ("'class'", "(columns: image, label)", "--label_column_name"),
    ),
    Case(
        "image-folder-without-class-folders",
        "image",
        lambda e: e.image(train=_flat_images(e), validation=""),
        ("--train_dir", "holds images but no class folders", "<dir>/<class>/<image>"),
    ),
    # ---- labels
    Case(
        "text-validation-label-unseen-in-train",
        "text",
        lambda e: e.text(validation=e.csv("v.csv", [POS, NEG, ("so so movie", "neutral")])),
        ("'neutral'", "validation split", "never in train"),
    ),
    Case(
        "text-integer-label-unseen-in-train",
        "text",
        lambda e: e.text(
            train=e.csv("t.csv", [("good", 0), ("bad", 1)] * 4), validation=e.csv("v.csv", [("good", 0), ("bad", 7)])
        ),
        ("label '7'", "never in train"),
    ),
    Case(
        "text-train-label-missing",
        "text",
        lambda e: e.text(train=e.csv("t.csv", [POS, NEG, ("fine movie", "")] * 3)),
        ("no 'label' value",),
    ),
    Case(
        "image-validation-class-unseen-in-train",
        "image",
        lambda e: e.image(validation=_with_extra_class(e)),
        ("'yellow'", "never in train"),
    ),
    # ---- empty splits
    Case("text-train-only-header", "text", lambda e: e.text(train=e.csv("t.csv", [])), ("train split is empty",)),
    Case(
        "text-validation-only-header",
        "text",
        lambda e: e.text(validation=e.csv("v.csv", [])),
        ("validation split is empty",),
    ),
    Case(
        "text-train-file-zero-bytes",
        "text",
        lambda e: e.text(train=e.write("t.csv", b"")),
        ("t.csv has no rows", "train split is empty"),
    ),
    Case(
        "text-train-jsonl-empty",
        "text",
        lambda e: e.text(train=e.write("t.jsonl", b"\n"), validation=""),
        ("t.jsonl has no rows", "train split is empty"),
    ),
    Case(
        "text-train-jsonl-malformed",
        "text",
        lambda e: e.text(train=e.write("t.jsonl", '{"text": "good", "label": "pos"}\nnot json\n'), validation=""),
        ("cannot read --train_file", "t.jsonl", "as json", "JSON parse error"),
        subprocess=True,  # datasets logs the parse error to stderr before raising it: that log must not show
    ),
    Case(
        "text-train-csv-not-utf8",
        "text",
        lambda e: e.text(train=e.write("t.csv", b"text,label\n\xff\xfe bad,pos\n")),
        ("--train_file", "t.csv", "is not UTF-8 text", "--encoding"),
    ),
    Case(
        "text-max-train-samples-0",
        "text",
        lambda e: e.text("--max_train_samples", "0"),
        ("--max_train_samples must be a positive integer, got 0",),
    ),
    Case(
        "text-max-eval-samples-negative",
        "text",
        lambda e: e.text("--max_eval_samples", "-3"),
        ("--max_eval_samples must be a positive integer, got -3",),
    ),
    Case(
        "image-train-folder-without-images", "image", lambda e: e.image(train=_empty_class_folders(e)), ("train_dir",)
    ),
    # ---- data layouts (test_data_layouts.py runs the layouts that train)
    Case(
        "image-loose-images-beside-class-folders",
        "image",
        lambda e: e.image(train=_loose_image(e)),
        ("--train_dir", "1 image(s) outside any class folder", "stray.png", "class's sub-folder"),
        subprocess=True,
    ),
    Case(
        "image-table-path-missing",
        "image",
        lambda e: e.image(model=IMAGE_MODEL, train="", validation="", table=_image_table(e, "imgs/nowhere.png")),
        ("image imgs/nowhere.png", "data row 4 of the train split", "tried", "tables/imgs/nowhere.png"),
    ),
    Case(
        "image-table-path-is-a-url",
        "image",
        lambda e: e.image(train="", validation="", table=_image_table(e, "https://example.com/cat.png")),
        ("data row 4", "by URL", "https://example.com/cat.png", "local files only"),
    ),
    Case(
        "text-unknown-encoding",
        "text",
        lambda e: e.text("--encoding", "klingon-8"),
        ("--encoding 'klingon-8'", "not an encoding"),
        subprocess=True,
    ),
    Case(
        "text-empty-text-cells",
        "text",
        lambda e: e.text(train=e.csv("t.csv", [POS, NEG, ("", "pos"), POS, ("   ", "neg"), NEG])),
        ("2 data row(s) of the train split have no text in column 'text'", "rows 3, 5", "fill or drop"),
        subprocess=True,
    ),
    Case(
        "text-validation-label-missing",
        "text",
        lambda e: e.text(validation=e.csv("v.csv", [POS, ("bad movie", ""), NEG])),
        ("1 data row(s) of the validation split have no 'label' value", "rows 2"),
    ),
    Case(
        "text-fractional-labels-as-classes",
        "text",
        lambda e: e.text(
            "--problem_type", "single_label_classification", train=e.csv("t.csv", [("good", 0.5), ("bad", 1.5)] * 4)
        ),
        ("'label' holds fractional numbers", "0.5", "names or whole numbers", "--problem_type regression"),
    ),
    Case(  # fractional numbers in train are a regression's targets: a validation of class names is not
        "text-regression-validation-of-names",
        "text",
        lambda e: e.text(train=e.csv("t.csv", [("good", 0.5), ("bad", 1.5)] * 4)),
        ("of the validation split holds 'pos', not a number", "regression targets are numbers"),
    ),
    Case(
        "text-list-labels-as-one-class",
        "text",
        lambda e: e.text(
            "--problem_type",
            "single_label_classification",
            train=e.write("t.jsonl", '{"text": "good", "label": ["a", "b"]}\n' * 4),
            validation="",
        ),
        ("'label' holds lists of labels", "--problem_type multi_label_classification"),
    ),
    Case(
        "text-label-column-near-miss",
        "text",
        lambda e: e.text("--label_column_name", "Label "),
        ("'Label '", "nearest: 'label'", "--label_column_name"),
    ),
    # ---- leakage (test_leakage.py checks what is found)
    Case(
        "text-validation-leaks-into-train-refused",
        "text",
        lambda e: e.text(
            "--on_leakage",
            "refuse",
            train=e.csv("t.csv", [POS, NEG, ("fine plot", "pos"), ("dull plot", "neg")] * 2),
            validation=e.csv("v.csv", [("awful movie", "neg"), ("Fine  plot!", "pos"), ("nice plot", "pos")]),
        ),
        (
            "1 validation example(s) (0 exact, 1 near) are duplicates of train examples",
            "validation row 2 ('Fine plot!') = train row 3 ('fine plot')",
            "--on_leakage drop / warn",
        ),
        subprocess=True,
    ),
    Case(
        "text-on-leakage-unknown",
        "text",
        lambda e: e.text("--on_leakage", "ignore"),
        ("--on_leakage 'ignore' is not one of warn, drop, refuse",),
    ),
    Case(
        "image-on-bad-example-unknown",
        "image",
        lambda e: e.image("--on_bad_example", "drop"),
        ("--on_bad_example 'drop' is not one of fail, skip",),
    ),
    Case(
        "text-max-bad-fraction-above-one",
        "text",
        lambda e: e.text("--on_bad_example", "skip", "--max_bad_fraction", "5"),
        ("--max_bad_fraction is a share of a split in [0, 1]", "got 5.0"),
    ),
    Case(
        "image-skip-more-bad-than-allowed",
        "image",
        lambda e: e.image("--on_bad_example", "skip", train=e.bad_image(b"not an image at all\n" * 20)),
        ("1 of 13 train examples (7.7%) cannot be used", "--max_bad_fraction 0.01", "bad.png"),
    ),
    # ---- weight averaging (test_averaging.py checks the averages)
    Case(
        "text-ema-decay-one",
        "text",
        lambda e: e.text("--ema_decay", "1"),
        ("--ema_decay", "in (0, 1), got 1"),
        subprocess=True,
    ),
    Case("text-ema-decay-zero", "text", lambda e: e.text("--ema_decay", "0"), ("--ema_decay", "got 0")),
    Case(
        "text-average-with-another-architecture",
        "text",
        lambda e: e.text("--average_with", str(_one_layer_copy(e)), model=e.fixture("text_classifier")),
        ("--average_with", "another architecture than", "bert.encoder.layer.1", "a soup averages runs of one"),
        subprocess=True,
    ),
    Case(
        "text-average-with-other-labels",
        "text",
        lambda e: e.text(
            "--average_with",
            str(e.fixture("text_classifier")),
            "--label_column_name",
            "tone",
            train=e.csv("tone.csv", [("good movie", "warm"), ("bad movie", "cold")] * 4, ("text", "tone")),
            validation="",
            model=e.fixture("text_classifier"),
        ),
        ("--average_with", "has no trained head for this run's labels"),
    ),
    Case(
        "text-evaluate-only-without-a-head",
        "text",
        lambda e: e.text("--evaluate_only"),
        ("--evaluate_only", "has no trained head for these labels", "drop --evaluate_only"),
    ),
    Case("mlm-average-with", "mlm", lambda e: e.mlm("--average_with", "x"), ("--average_with averages classifiers",)),
    Case("compare-soup-unknown", "compare", lambda e: e.compare("--soup", "uniform"), ("--soup must be one of",)),
    Case(
        "predict-empty-text-cells",
        "predict",
        lambda e: e.predict(model=e.fixture("text_classifier"), source=e.csv("in.csv", [POS, ("", "neg")])),
        ("1 data row(s) of --input", "in.csv have no text in column 'text'", "rows 2"),
    ),
    Case(
        "predict-unknown-encoding",
        "predict",
        lambda e: e.predict("--encoding", "klingon-8"),
        ("--encoding 'klingon-8'", "not an encoding"),
    ),
    # ---- images
    Case(
        "image-garbage-bytes-png",
        "image",
        lambda e: e.image(train=e.bad_image(b"not an image at all\n" * 20)),
        ("bad.png", "cannot be read", "remove or replace"),
        subprocess=True,
    ),
    Case("image-zero-byte-png", "image", lambda e: e.image(train=e.bad_image(b"")), ("bad.png", "cannot be read")),
    Case(
        "image-truncated-png",
        "image",
        lambda e: e.image(train=e.bad_image(e.truncated_png())),
        ("bad.png", "cannot be read"),
    ),
    # passes the header check, fails when decoded: by the data checks, which decode every image before training
    Case(
        "image-png-with-corrupt-pixel-data",
        "image",
        lambda e: e.image("--disable_tqdm", "true", train=e.bad_image(png_with_bad_pixels())),
        ("bad.png", "cannot be read"),
    ),
    # ---- models
    Case("text-unknown-model-name", "text", lambda e: e.text(model="no-such-model-xyz"), ("'no-such-model-xyz'",)),
    Case(
        "image-unknown-model-name",
        "image",
        lambda e: e.image(model=["--model_name_or_path", "no_such_net_xyz", "--random_init"]),
        ("unknown model 'no_such_net_xyz'",),
    ),
    Case(
        "text-empty-model-dir",
        "text",
        lambda e: e.text(model=_empty_model_dir(e)),
        ("empty_model", "not a model (no config.json)"),
    ),
    Case(
        "image-empty-model-dir",
        "image",
        lambda e: e.image(model=["--model_name_or_path", str(_empty_model_dir(e))]),
        ("empty_model", "not a model (no config.json)"),
    ),
    Case(
        "text-config-json-not-json",
        "text",
        lambda e: e.text(model=_non_json_config_dir(e)),
        ("broken_model", "config.json", "JSON"),
    ),
    Case(
        "image-config-json-not-json",
        "image",
        lambda e: e.image(model=["--model_name_or_path", str(_non_json_config_dir(e))]),
        ("broken_model", "config.json", "JSON"),
    ),
    Case(
        "image-recipe-given-text-model",
        "image",
        lambda e: e.image(model=["--model_name_or_path", str(e.bert)]),
        ("'bert'", "not a timm image model", "text_classification.py"),
    ),
    Case(
        "text-recipe-given-timm-model",
        "text",
        lambda e: e.text(model=e.timm_dir),
        ("timm image model", "image_classification.py"),
    ),
    Case(
        "text-model-dir-without-weights",
        "text",
        lambda e: e.text(model=_model_copy(e, e.bert, "model.safetensors")),
        ("cannot load the model", "no_weights"),
    ),
    Case(
        "image-model-dir-without-weights",
        "image",
        lambda e: e.image(model=["--model_name_or_path", str(_model_copy(e, e.timm_dir, "model.safetensors"))]),
        ("no_weights", "no model.safetensors"),
    ),
    Case(
        "text-model-dir-truncated-weights",
        "text",
        lambda e: e.text(model=_model_copy(e, e.bert, truncate=True)),
        ("cannot load the model", "truncated"),
    ),
    Case(
        "image-model-dir-truncated-weights",
        "image",
        lambda e: e.image(model=["--model_name_or_path", str(_model_copy(e, e.timm_dir, truncate=True))]),
        ("cannot load the model", "truncated"),
    ),
    Case(
        "image-model-dir-unknown-architecture",
        "image",
        lambda e: e.image(model=["--model_name_or_path", str(_unknown_architecture(e))]),
        ("no_such_arch",),
    ),
    Case(
        "text-model-dir-without-tokenizer",
        "text",
        lambda e: e.text(model=_model_copy(e, e.bert, "tokenizer.json", "tokenizer_config.json", "vocab.txt")),
        ("tokenizer",),
    ),
    Case(
        "text-max-seq-length-too-long",
        "text",
        lambda e: e.text("--max_seq_length", "1000"),
        ("--max_seq_length 1000", "(64)"),
    ),
    # ---- freezing
    Case(
        "text-unfreeze-top-k-too-large",
        "text",
        lambda e: e.text("--freeze_strategy", "top_k", "--unfreeze_top_k", "5"),
        ("--unfreeze_top_k 5", "2 blocks"),
        subprocess=True,
    ),
    Case(
        "image-unfreeze-top-k-too-large",
        "image",
        lambda e: e.image("--freeze_strategy", "top_k", "--unfreeze_top_k", "50"),
        ("--unfreeze_top_k 50", "blocks"),
    ),
    Case(
        "text-unfreeze-top-k-0",
        "text",
        lambda e: e.text("--freeze_strategy", "top_k", "--unfreeze_top_k", "0"),
        ("--unfreeze_top_k must be at least 1, got 0",),
    ),
    Case(
        "text-top-k-without-k",
        "text",
        lambda e: e.text("--freeze_strategy", "top_k"),
        ("top_k needs --unfreeze_top_k",),
    ),
    Case(
        "image-unknown-freeze-strategy",
        "image",
        lambda e: e.image("--freeze_strategy", "bottom_k"),
        ("--freeze_strategy", "'bottom_k'", "top_k"),
    ),
    Case(
        "text-unknown-freeze-strategy",
        "text",
        lambda e: e.text("--freeze_strategy", "partial"),
        ("--freeze_strategy", "'partial'", "head_only"),
    ),
    # ---- precision
    Case("text-fp16-without-gpu", "text", lambda e: e.text("--fp16"), ("fp16", "needs a CUDA GPU"), subprocess=True),
    Case("image-fp16-without-gpu", "image", lambda e: e.image("--fp16", "true"), ("fp16", "needs a CUDA GPU")),
    Case(
        "text-fp16-from-accelerate-config",
        "text",
        lambda e: e.text(),
        ("fp16", "accelerate config"),
        setup=_accelerate_fp16,
    ),
    Case(
        "text-bf16-on-cpu-without-native-bf16",
        "text",
        lambda e: e.text("--bf16"),
        ("bf16", "without native bf16", "drop --bf16"),
        setup=_no_native_bf16,
    ),
    Case(
        "image-bf16-on-cpu-without-native-bf16",
        "image",
        lambda e: e.image("--bf16", "true"),
        ("bf16", "without native bf16"),
        setup=_no_native_bf16,
    ),
    Case(
        "text-precision-bf16-on-cpu-without-native-bf16",
        "text",
        lambda e: e.text("--precision", "bf16"),
        ("bf16", "without native bf16", "drop --precision bf16"),
        setup=_no_native_bf16,
    ),
    Case(
        "image-precision-fp16-without-gpu",
        "image",
        lambda e: e.image("--precision", "fp16"),
        ("fp16", "needs a CUDA GPU", "drop --precision fp16"),
    ),
    Case(
        "text-precision-fp32-with-bf16",
        "text",
        lambda e: e.text("--precision", "fp32", "--bf16"),
        ("--precision fp32 contradicts --bf16", "give one of them"),
        subprocess=True,
    ),
    Case(
        "text-precision-fp32-with-accelerate-bf16",
        "text",
        lambda e: e.text("--precision", "fp32"),
        ("--precision fp32 contradicts the accelerate config's mixed_precision: bf16",),
        setup=_accelerate_bf16,
    ),
    Case(
        "image-precision-unknown",
        "image",
        lambda e: e.image("--precision", "fp8"),
        ("--precision", "'fp8'", "auto"),
    ),
    # ---- arguments and files
    Case(
        "text-config-yaml-unknown-key",
        "text",
        lambda e: [str(_yaml(e, "learning_rat: 0.001\nseed: 1\n")), *e.text()],
        ("'learning_rat'", "config.yaml"),
    ),
    Case(
        "text-config-yaml-not-a-mapping",
        "text",
        lambda e: [str(_yaml(e, "- a\n- b\n")), *e.text()],
        ("must hold a mapping",),
    ),
    Case(
        "text-config-yaml-malformed",
        "text",
        lambda e: [str(_yaml(e, "seed: [1, 2\n")), *e.text()],
        ("cannot read the config file",),
    ),
    Case(
        "text-config-file-missing",
        "text",
        lambda e: [str(e.tmp / "nowhere.yaml"), *e.text()],
        ("cannot read the config file", "nowhere.yaml"),
    ),
    Case("text-unknown-argument", "text", lambda e: e.text("--no_such_flag", "1"), ("--no_such_flag",)),
    Case("text-bad-number", "text", lambda e: e.text("--num_train_epochs", "three"), ("'three'",)),
    Case("text-missing-model-argument", "text", lambda e: e.text()[2:], ("--model_name_or_path is required",)),
    Case(
        "text-train-file-missing",
        "text",
        lambda e: e.text(train=e.tmp / "nope.csv"),
        ("--train_file", "nope.csv", "does not exist"),
    ),
    Case(
        "text-validation-file-is-a-directory",
        "text",
        lambda e: e.text(validation=e.tmp),
        ("--validation_file", "is a directory"),
    ),
    Case(
        "text-unsupported-extension",
        "text",
        lambda e: e.text(train=e.write("train.txt", "text,label\n")),
        (".txt", "use .csv"),
    ),
    Case(
        "text-mixed-formats",
        "text",
        lambda e: e.text(validation=e.write("v.jsonl", json.dumps({"text": "good", "label": "pos"}) + "\n")),
        ("mix formats",),
    ),
    Case(
        "text-validation-file-without-train-file",
        "text",
        lambda e: [a for a in e.text() if a not in ("--train_file", str(e.train_csv))],
        ("need --train_file",),
    ),
    Case(
        "text-train-val-split-1.5", "text", lambda e: e.text("--train_val_split", "1.5"), ("--train_val_split", "1.5")
    ),
    Case(
        "image-train-dir-missing",
        "image",
        lambda e: e.image(train=e.tmp / "no_dir"),
        ("--train_dir", "no_dir", "not a directory"),
    ),
    Case(
        "image-train-file-and-train-dir",
        "image",
        lambda e: e.image("--train_file", str(e.train_csv)),
        ("one data source",),
    ),
    Case("image-size-0", "image", lambda e: e.image("--image_size", "0"), ("--image_size", "got 0")),
    Case("image-hflip-2", "image", lambda e: e.image("--hflip", "2"), ("--hflip", "got 2")),
    # ---- fine-tuning strategies and regularisation
    Case("text-layer-lr-decay-0", "text", lambda e: e.text("--layer_lr_decay", "0"), ("--layer_lr_decay", "(0, 1]")),
    Case(
        "image-layer-lr-decay-above-1",
        "image",
        lambda e: e.image("--layer_lr_decay", "1.2"),
        ("--layer_lr_decay", "got 1.2"),
    ),
    Case(
        "text-head-lr-multiplier-0",
        "text",
        lambda e: e.text("--head_lr_multiplier", "0"),
        ("--head_lr_multiplier", "> 0"),
    ),
    Case(
        "text-gradual-unfreeze-every-0",
        "text",
        lambda e: e.text("--freeze_strategy", "gradual", "--unfreeze_every", "0"),
        ("--unfreeze_every", "at least 1"),
    ),
    Case(
        "text-gradual-without-unfreeze-every",
        "text",
        lambda e: e.text("--freeze_strategy", "gradual"),
        ("needs --unfreeze_every",),
    ),
    Case(
        "text-lp-ft-probe-not-below-epochs",
        "text",
        lambda e: e.text(
            "--freeze_strategy", "lp_ft", "--probe_epochs", "3", "--num_train_epochs", "3", "--max_steps", "-1"
        ),
        ("--probe_epochs 3", "--num_train_epochs 3"),
    ),
    Case(
        "text-lora-unmatched-targets",
        "text",
        lambda e: e.text("--freeze_strategy", "lora", "--lora_target_modules", "no_such_proj"),
        ("no_such_proj", "query"),
    ),
    Case(
        "image-lora-unmatched-targets",
        "image",
        lambda e: e.image("--freeze_strategy", "lora", "--lora_target_modules", "nothing_here"),
        ("nothing_here",),
    ),
    Case("text-mixup", "text", lambda e: e.text("--mixup_alpha", "0.2"), ("--mixup_alpha", "images only")),
    Case(
        "text-auto-augment", "text", lambda e: e.text("--auto_augment", "rand-m9"), ("--auto_augment", "images only")
    ),
    Case("image-bad-auto-augment", "image", lambda e: e.image("--auto_augment", "bogus-policy"), ("bogus-policy",)),
    Case("text-label-smoothing-1", "text", lambda e: e.text("--label_smoothing", "1"), ("--label_smoothing",)),
    Case(
        "image-crop-scale-reversed",
        "image",
        lambda e: e.image("--random_crop_scale", "0.9", "0.5"),
        ("--random_crop_scale", "got 0.9 0.5"),
    ),
    Case(
        "text-batch-size-0",
        "text",
        lambda e: e.text("--per_device_train_batch_size", "0"),
        ("--per_device_train_batch_size must be at least 1, got 0",),
    ),
    Case(
        "image-eval-batch-size-0",
        "image",
        lambda e: e.image("--per_device_eval_batch_size", "0"),
        ("--per_device_eval_batch_size must be at least 1, got 0",),
    ),
    Case(
        "text-gradient-accumulation-0",
        "text",
        lambda e: e.text("--gradient_accumulation_steps", "0"),
        ("--gradient_accumulation_steps must be at least 1, got 0",),
    ),
    Case(
        "text-negative-learning-rate",
        "text",
        lambda e: e.text("--learning_rate", "-1"),
        ("--learning_rate must not be negative",),
    ),
    Case(
        "text-zero-epochs-and-no-max-steps",
        "text",
        lambda e: e.text("--max_steps", "-1", "--num_train_epochs", "0"),
        ("--num_train_epochs 0", "trains nothing"),
    ),
    Case(
        "text-resume-from-missing-checkpoint",
        "text",
        lambda e: e.text("--resume_from_checkpoint", str(e.tmp / "checkpoint-9")),
        ("--resume_from_checkpoint", "checkpoint-9", "not a Trainer checkpoint"),
    ),
    Case(
        "text-output-dir-is-a-file",
        "text",
        lambda e: [*e.text(), "--output_dir", str(e.out / "notes.txt")],
        ("is a file",),
    ),
    Case(
        "text-dataset-not-cached",
        "text",
        _hub_dataset_instead_of_files,
        ("cannot load dataset 'no/such_set'", "offline (HF_HUB_OFFLINE=1) and not in the Hugging Face cache"),
    ),
    Case(
        "text-dataset-download-fails",
        "text",
        _hub_dataset_instead_of_files,
        ("cannot load dataset 'no/such_set'", "could not be downloaded from the Hub (ConnectionError)", "network"),
        setup=_online_without_network,
    ),
    # ---- masked-LM pretraining
    Case(
        "mlm-model-without-masked-lm-head",
        "mlm",
        lambda e: e.mlm(model=_gpt2_dir(e)),
        ("'gpt2' model", "no masked-language-model head"),
        subprocess=True,
    ),
    Case(
        "mlm-tokenizer-without-mask-token",
        "mlm",
        lambda e: e.mlm(model=_no_mask_token_dir(e)),
        ("no mask token",),
    ),
    Case(
        "mlm-image-model",
        "mlm",
        lambda e: e.mlm(model=e.timm_dir),
        ("timm image model", "pretrain_autoencoder.py"),
    ),
    Case(
        "mlm-truncated-safetensors",
        "mlm",
        lambda e: e.mlm(model=_model_copy(e, e.bert, truncate=True)),
        ("cannot load the model", "truncated"),
    ),
    Case(
        "mlm-data-without-text-column",
        "mlm",
        lambda e: e.mlm(train=e.write("numbers.csv", "a,b\n" + "".join(f"{i},{2 * i}\n" for i in range(20)))),
        ("no text column to pretrain on", "--text_column_name"),
    ),
    Case(
        "mlm-text-column-misspelled",
        "mlm",
        lambda e: e.mlm("--text_column_name", "body", train=e.train_csv),
        ("'body'", "--text_column_name"),
    ),
    Case(
        "mlm-probability-0",
        "mlm",
        lambda e: e.mlm("--mlm_probability", "0"),
        ("--mlm_probability must be between 0 and 1, got 0",),
    ),
    Case(
        "mlm-probability-1",
        "mlm",
        lambda e: e.mlm("--mlm_probability", "1"),
        ("--mlm_probability must be between 0 and 1, got 1",),
    ),
    Case(
        "mlm-max-seq-length-0",
        "mlm",
        lambda e: e.mlm("--max_seq_length", "0"),
        ("--max_seq_length must be a positive integer, got 0",),
    ),
    Case(
        "mlm-max-seq-length-too-long",
        "mlm",
        lambda e: e.mlm("--max_seq_length", "1000"),
        ("--max_seq_length 1000", "(64)"),
    ),
    Case("mlm-empty-txt", "mlm", lambda e: e.mlm(train=e.write("empty.txt", b"")), ("empty.txt", "no rows")),
    Case(
        "mlm-txt-of-blank-lines",
        "mlm",
        lambda e: e.mlm(train=e.write("blank.txt", "\n  \n\n")),
        ("train split is empty",),
    ),
    Case(
        "mlm-train-val-split-2",
        "mlm",
        lambda e: e.mlm("--train_val_split", "2"),
        ("--train_val_split", "got 2"),
    ),
    Case(
        "mlm-folder-without-txt-files",
        "mlm",
        lambda e: (
            [a for a in e.mlm() if a not in ("--train_file", str(e.tmp / "corpus.txt"))]
            + ["--train_dir", str(e.train_dir)]
        ),
        ("--train_dir", "holds no .txt files"),
    ),
    Case(
        "mlm-train-file-and-train-dir",
        "mlm",
        lambda e: e.mlm("--train_dir", str(e.tmp)),
        ("give one data source",),
    ),
    Case(
        "mlm-pad-to-multiple-of-0",
        "mlm",
        lambda e: e.mlm("--pad_to_multiple_of", "0"),
        ("--pad_to_multiple_of must be a positive integer, got 0",),
    ),
    Case(
        "mlm-config-yaml-unknown-key",
        "mlm",
        lambda e: [str(_yaml(e, "mask_probability: 0.2\n")), *e.mlm()],
        ("'mask_probability'", "config.yaml"),
    ),
    Case(
        "mlm-reset-head",
        "mlm",
        lambda e: e.mlm("--reset_head"),
        ("--reset_head is for the fine-tuning recipes",),
    ),
    Case(
        "mlm-output-dir-under-a-file",
        "mlm",
        lambda e: [*e.mlm(), "--output_dir", e.under_a_file()],
        ("notes.txt",),
    ),
    # ---- autoencoder pretraining
    Case(
        "ae-mask-ratio-1",
        "ae",
        lambda e: e.ae("--mask_ratio", "1"),
        ("--mask_ratio must be in [0, 1), got 1",),
    ),
    Case(
        "ae-mask-ratio-negative",
        "ae",
        lambda e: e.ae("--mask_ratio", "-0.1"),
        ("--mask_ratio must be in [0, 1), got -0.1",),
    ),
    Case(
        "ae-mask-patch-size-does-not-divide-the-image",
        "ae",
        lambda e: e.ae("--mask_ratio", "0.5", "--mask_patch_size", "5"),
        ("--mask_patch_size 5", "32"),
    ),
    Case(
        "ae-mask-patch-size-0",
        "ae",
        lambda e: e.ae("--mask_ratio", "0.5", "--mask_patch_size", "0"),
        ("--mask_patch_size must be a positive integer, got 0",),
    ),
    Case(
        "ae-decoder-channels-0",
        "ae",
        lambda e: e.ae("--decoder_channels", "0"),
        ("--decoder_channels must be a positive integer, got 0",),
    ),
    Case(
        "ae-backbone-without-spatial-features",
        "ae",
        lambda e: e.ae(model=["--model_name_or_path", "pit_ti_224", "--random_init", "--image_size", "32"]),
        ("pit_ti_224 gives no spatial feature map",),
    ),
    Case(
        "ae-text-model",
        "ae",
        lambda e: e.ae(model=["--model_name_or_path", str(e.bert)]),
        ("not a timm image model", "pretrain_mlm.py"),
    ),
    Case(
        "ae-truncated-safetensors",
        "ae",
        lambda e: e.ae(model=["--model_name_or_path", str(_model_copy(e, e.timm_dir, truncate=True))]),
        ("cannot load the model", "truncated"),
    ),
    Case(
        "ae-data-without-image-column",
        "ae",
        lambda e: e.ae(data=["--train_file", str(e.train_csv)]),
        ("no image column for pretraining",),
    ),
    Case(
        "ae-corrupt-image",
        "ae",
        lambda e: e.ae(data=["--train_dir", str(e.bad_image(b"not an image at all\n" * 20))]),
        ("bad.png", "cannot be read"),
    ),
    Case(
        "ae-image-size-negative",
        "ae",
        lambda e: e.ae("--image_size", "-32"),
        ("--image_size", "got -32"),
    ),
    Case(
        "ae-validation-dir-without-train-dir",
        "ae",
        lambda e: e.ae(data=["--validation_dir", str(e.validation_dir)]),
        ("--validation_dir needs --train_dir",),
    ),
    Case(
        "ae-config-yaml-unknown-key",
        "ae",
        lambda e: [str(_yaml(e, "mask_ratio: 0.5\nmask_size: 4\n")), *e.ae()],
        ("'mask_size'", "config.yaml"),
    ),
    Case(
        "ae-output-dir-under-a-file",
        "ae",
        lambda e: [*e.ae(), "--output_dir", e.under_a_file()],
        ("notes.txt",),
    ),
    # ---- strategy comparison
    Case(
        "compare-unknown-strategy",
        "compare",
        lambda e: e.compare("--strategies", "head_only", "everything"),
        ("unknown strategy 'everything'", "head_only"),
    ),
    Case("compare-top-k-0", "compare", lambda e: e.compare("--strategies", "top_k:0"), ("top_k:0", "positive")),
    Case(
        "compare-number-on-another-strategy",
        "compare",
        lambda e: e.compare("--strategies", "full:2"),
        ("full:2", "only top_k takes a number"),
    ),
    Case(
        "compare-metric-no-run-reports",
        "compare",
        lambda e: e.compare("--metric_for_best_model", "bleu"),
        ("--metric_for_best_model bleu", "no run reports it"),
    ),
    Case(
        "compare-freeze-strategy-given",
        "compare",
        lambda e: e.compare("--freeze_strategy", "full"),
        ("--freeze_strategy is chosen per run",),
    ),
    Case(
        "compare-learning-rate-0",
        "compare",
        lambda e: e.compare("--learning_rates", "0"),
        ("--learning_rates must be positive, got 0",),
    ),
    Case(
        "compare-learning-rate-not-a-number",
        "compare",
        lambda e: e.compare("--learning_rates", "fast"),
        ("--learning_rates", "'fast'"),
    ),
    Case(
        "compare-same-run-twice",
        "compare",
        lambda e: e.compare("--strategies", "full", "full"),
        ("name the same run twice",),
    ),
    Case(
        "compare-push-to-hub",
        "compare",
        lambda e: e.compare("--push_to_hub", "true"),
        ("--push_to_hub does not apply to a comparison",),
    ),
    Case(
        "compare-resume-from-one-checkpoint",
        "compare",
        lambda e: e.compare("--resume_from_checkpoint", str(e.tmp / "checkpoint-9")),
        ("--resume_from_checkpoint", "give auto"),
    ),
    Case(
        "compare-gradual-without-unfreeze-every",
        "compare",
        lambda e: e.compare("--strategies", "gradual"),
        ("--strategies gradual needs --unfreeze_every",),
    ),
    Case(
        "compare-bad-recipe-argument",
        "compare",
        lambda e: e.compare("--strategies", "head_only", "--label_column_name", "sentiment"),
        ("'sentiment'", "--label_column_name"),
    ),
    # ---- predict
    Case(
        "predict-model-dir-without-config",
        "predict",
        lambda e: e.predict(model=_empty_model_dir(e)),
        ("empty_model", "not a model directory (no config.json)"),
        subprocess=True,
    ),
    Case(
        "predict-bare-encoder",
        "predict",
        lambda e: e.predict(model=e.bert, source=e.validation_csv),
        ("BertModel", "not an image classifier or a sequence classifier"),
    ),
    Case(
        "predict-text-model-given-image-folder",
        "predict",
        lambda e: e.predict(model=e.fixture("text_classifier")),
        ("is a folder but the model is a text classifier",),
    ),
    Case(
        "predict-input-missing",
        "predict",
        lambda e: e.predict(source=e.tmp / "nowhere.csv"),
        ("--input", "nowhere.csv", "does not exist"),
    ),
    Case(
        "predict-input-without-text-column",
        "predict",
        lambda e: e.predict(model=e.fixture("text_classifier"), source=e.csv("t.csv", [POS, NEG], ("body", "label"))),
        ("'text'", "(columns: body, label)"),
    ),
    Case(
        "predict-image-model-given-a-text-table",
        "predict",
        lambda e: e.predict(source=e.validation_csv),
        ("image",),
    ),
    Case(
        "predict-id-column-missing",
        "predict",
        lambda e: e.predict("--id_column", "review_id", model=e.fixture("text_classifier"), source=e.validation_csv),
        ("'review_id'", "--id_column"),
    ),
    Case(
        "predict-folder-without-images",
        "predict",
        lambda e: e.predict(source=_empty_class_folders(e)),
        ("holds no image files",),
    ),
    Case("predict-batch-size-0", "predict", lambda e: e.predict("--batch_size", "0"), ("--batch_size", "got 0")),
    Case(
        "predict-existing-output-without-overwrite",
        "predict",
        lambda e: e.predict() if e.write("out/predictions.csv", "id,predicted_label\n") else [],
        ("predictions.csv already exists", "--overwrite"),
    ),
    Case(
        "predict-output-under-a-file",
        "predict",
        lambda e: [*e.predict(), "--output", e.under_a_file()],
        ("cannot be written",),
    ),
    Case(
        "predict-unknown-device",
        "predict",
        lambda e: e.predict("--device", "tpu"),
        ("--device", "'tpu'"),
    ),
    # ---- chains
    Case(
        "chain-link-refers-to-a-later-link",
        "chain",
        lambda e: e.chain({"links": [_link("a", model="{b}"), _link("b")]}),
        ("{b}", "not an earlier link"),
    ),
    Case(
        "chain-unknown-recipe",
        "chain",
        lambda e: e.chain({"links": [{"name": "a", "recipe": "finetune"}]}),
        ("unknown recipe 'finetune'", "image_classification"),
    ),
    Case(
        "chain-unknown-recipe-after-a-good-link",
        "chain",
        lambda e: e.chain({"links": [_mlm_link(e), {"name": "b", "recipe": "finetune", "args": {"x": "{a}"}}]}),
        ("unknown recipe 'finetune'",),
    ),
    Case(
        "chain-malformed-yaml",
        "chain",
        lambda e: e.chain("links: [{name: a, recipe: pretrain_mlm\n"),
        ("cannot read the chain file",),
    ),
    Case(
        "chain-file-not-a-mapping",
        "chain",
        lambda e: e.chain("- name: a\n  recipe: pretrain_mlm\n"),
        ("needs a list of links",),
    ),
    Case(
        "chain-file-missing",
        "chain",
        lambda e: [str(e.tmp / "nowhere.yaml"), "--output_dir", str(e.out)],
        ("cannot read the chain file", "nowhere.yaml"),
    ),
    Case(
        "chain-seeds-not-integers",
        "chain",
        lambda e: e.chain({"links": [{**_link("a"), "seeds": ["zero"]}]}),
        ("`seeds` of link 'a' must be a list of integers",),
    ),
    Case(
        "chain-only-unknown-link",
        "chain",
        lambda e: [*e.chain({"links": [_link("a")]}), "--only", "z"],
        ("--only z: no link of that name",),
    ),
    Case("chain-unknown-option", "chain", lambda e: [*e.chain({"links": [_link("a")]}), "--onyl", "a"], ("--onyl",)),
    # ---- cross-cutting: output dirs that cannot be made, conflicting flags
    Case(
        "text-head-lr-multiplier-inf",
        "text",
        lambda e: e.text("--head_lr_multiplier", "inf"),
        ("--head_lr_multiplier must be a finite number, got inf",),
    ),
    Case(
        "image-learning-rate-nan",
        "image",
        lambda e: e.image("--learning_rate", "nan"),
        ("--learning_rate must be a finite number, got nan",),
    ),
    Case(
        "text-output-dir-under-a-file",
        "text",
        lambda e: [*e.text(), "--output_dir", e.under_a_file()],
        ("notes.txt",),
    ),
    Case(
        "image-output-dir-under-a-file",
        "image",
        lambda e: [*e.image(), "--output_dir", e.under_a_file()],
        ("notes.txt",),
    ),
    Case(
        "image-config-yaml-unknown-key",
        "image",
        lambda e: [str(_yaml(e, "hflip: 0.5\nrandom_crop: 0.8\n")), *e.image()],
        ("'random_crop'", "config.yaml"),
    ),
    # ---- label shapes: multi-label and regression
    Case(
        "text-multi-label-unseen-label",
        "text",
        lambda e: e.text(
            "--label_column_name",
            "tags",
            train=e.csv("ml_train.csv", [("good movie", '["plot"]'), ("bad movie", '["cast"]')] * 4, ("text", "tags")),
            validation=e.csv("ml_val.csv", [("good movie", '["music"]')], ("text", "tags")),
        ),
        ("label 'music'", "validation split", "never in train"),
    ),
    Case(
        "text-multi-label-no-label-anywhere",
        "text",
        lambda e: e.text(
            "--label_column_name",
            "tags",
            train=e.csv("empty_train.csv", [("good movie", "[]"), ("bad movie", "[]")] * 4, ("text", "tags")),
            validation="",
        ),
        ("no label in any train row",),
    ),
    Case(
        "text-regression-nan-target",
        "text",
        lambda e: e.text(
            "--problem_type",
            "regression",
            train=e.csv("nan_train.csv", [("good movie", "4.5"), ("bad movie", "nan")] * 4),
            validation="",
        ),
        ("have no 'label' value", "fill or drop"),
    ),
    Case(
        "text-regression-infinite-target",
        "text",
        lambda e: e.text(
            train=e.csv("inf_train.csv", [("good movie", "4.5"), ("bad movie", "inf")] * 4), validation=""
        ),
        ("must be finite numbers",),
    ),
    Case(
        "text-regression-on-string-labels",
        "text",
        lambda e: e.text("--problem_type", "regression"),
        ("--problem_type regression", "not a number"),
    ),
    Case(
        "text-threshold-outside-0-1",
        "text",
        lambda e: e.text("--threshold", "1.5"),
        ("--threshold is a probability in (0, 1)", "1.5"),
        subprocess=True,
    ),
    Case(
        "text-threshold-on-single-label",
        "text",
        lambda e: e.text("--threshold", "0.3"),
        ("--threshold", "single-label classification"),
    ),
    Case(
        "text-metric-the-shape-does-not-report",
        "text",
        lambda e: e.text("--metric_for_best_model", "rmse"),
        ("--metric_for_best_model rmse", "single-label classification run does not report it"),
    ),
    Case(
        "text-regression-metric-accuracy",
        "text",
        lambda e: e.text("--problem_type", "regression", "--metric_for_best_model", "accuracy"),
        ("--metric_for_best_model accuracy", "regression run does not report it"),
    ),
    Case(
        "text-extra-metric-cannot-load",
        "text",
        lambda e: e.text("--extra_metrics", "no_such_metric_anywhere"),
        ("cannot load --extra_metrics no_such_metric_anywhere", "offline (HF_HUB_OFFLINE=1)"),
    ),
    Case(
        "text-extra-metric-missing-script",
        "text",
        lambda e: e.text("--extra_metrics", str(e.tmp / "missing_metric.py")),
        ("missing_metric.py: no such metric script",),
    ),
    Case(
        "text-class-weights-on-regression",
        "text",
        lambda e: e.text(
            "--class_weights",
            "auto",
            train=e.csv("score_train.csv", [("good movie", "4.5"), ("bad movie", "1.25")] * 4),
            validation="",
        ),
        ("--class_weights auto", "a regression head"),
    ),
    Case(
        "image-mixup-on-regression",
        "image",
        lambda e: e.image("--mixup_alpha", "0.2", "--problem_type", "regression"),
        ("--mixup_alpha", "a regression head"),
    ),
    Case(
        "text-probe-solver-on-multi-label",
        "text",
        lambda e: e.text(
            "--label_column_name",
            "tags",
            "--freeze_strategy",
            "head_only",
            "--probe_solver",
            "lbfgs",
            train=e.csv(
                "probe_train.csv", [("good movie", '["plot"]'), ("bad movie", '["cast"]')] * 4, ("text", "tags")
            ),
            validation="",
        ),
        ("--probe_solver lbfgs", "multi_label_classification"),
    ),
]


def _one_layer_copy(env: Env) -> Path:
    """The text classifier fixture with one encoder layer: the same labels, another architecture."""
    target = env.tmp / "one_layer"
    shutil.copytree(env.fixture("text_classifier"), target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    return target


def _model_copy(env: Env, source: Path, *drop: str, truncate: bool = False) -> Path:
    """A copy of a model directory without some files, or with its weights cut in half."""
    target = env.tmp / ("truncated" if truncate else "no_weights" if "model.safetensors" in drop else "no_tokenizer")
    shutil.copytree(source, target)
    for name in drop:
        (target / name).unlink(missing_ok=True)
    if truncate:
        weights = target / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return target


def _gpt2_dir(env: Env) -> Path:
    """A causal LM (no masked-LM head in transformers) with a tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    path = env.tmp / "gpt2"
    config = GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(env.bert).save_pretrained(path)
    return path


def _no_mask_token_dir(env: Env) -> Path:
    from transformers import AutoTokenizer, BertTokenizer

    path = _model_copy(env, env.bert, "tokenizer.json", "tokenizer_config.json", "vocab.txt")
    BertTokenizer(vocab=AutoTokenizer.from_pretrained(env.bert).get_vocab(), mask_token=None).save_pretrained(path)
    return path


def _link(name: str, **args) -> dict:
    args = {"model_name_or_path": args.pop("model", "bert"), **args}
    return {"name": name, "recipe": "pretrain_mlm", "args": args}


def _mlm_link(env: Env) -> dict:
    """A link that would run (and write its output) if the chain started before checking the later links."""
    settings = {"max_steps": 1, "max_seq_length": 24, "report_to": "none", "use_cpu": True, "save_strategy": "no"}
    return _link("a", model=str(env.bert), train_file=str(env.corpus()), **settings)


def _unknown_architecture(env: Env) -> Path:
    target = _model_copy(env, env.timm_dir)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "architecture": "no_such_arch"}))
    return target


def _loose_image(env: Env) -> Path:
    folder = env.image_folder("train_loose", per_class=2)
    shutil.copy(folder / "red" / "0.png", folder / "stray.png")
    return folder


def _image_table(env: Env, bad_path: str) -> Path:
    """``tables/train.csv``: three images by absolute path, then one bad path."""
    rows = [f"{(env.train_dir / c / '0.png').resolve()},{c}" for c in ("red", "green", "blue")]
    return env.write("tables/train.csv", "\n".join(["image,label", *rows, f"{bad_path},red"]) + "\n")


def _flat_images(env: Env) -> Path:
    folder = env.image_folder("flat_src")
    flat = env.tmp / "flat"
    flat.mkdir()
    for i, file in enumerate(sorted(folder.rglob("*.png"))):
        shutil.copy(file, flat / f"{i}.png")
    return flat


def _with_extra_class(env: Env) -> Path:
    folder = env.image_folder("validation_extra", per_class=2)
    (folder / "yellow").mkdir()
    shutil.copy(folder / "red" / "0.png", folder / "yellow" / "0.png")
    return folder


def _empty_class_folders(env: Env) -> Path:
    for name in ("red", "green"):
        (env.tmp / "empty_train" / name).mkdir(parents=True)
    return env.tmp / "empty_train"


def _case_id(case) -> str:
    return (case.values[0] if hasattr(case, "values") else case).id


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_input_is_refused_in_process(case: Case, env: Env, monkeypatch, capfd):
    if case.setup:
        case.setup(env, monkeypatch)
    argv = case.argv(env)
    before = snapshot(env.out)
    code, stderr = run_in_process(case.recipe, argv, capfd)
    assert code == 2
    assert_one_error_line(stderr, case.expect)
    assert snapshot(env.out) == before


SUBPROCESS_CASES = [c for c in CASES if isinstance(c, Case) and c.subprocess]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=lambda case: case.id)
def test_bad_input_is_refused_by_the_script(case: Case, env: Env):
    argv = case.argv(env)
    before = snapshot(env.out)
    done = run_script(case.recipe, argv)
    assert done.returncode == 2, done.stderr
    assert_one_error_line(done.stderr, case.expect)
    assert snapshot(env.out) == before


def test_error_mid_training_starts_its_own_line(env: Env, capfd):
    """Files that break after the first step (every image checked before training decoded): the Trainer's progress
    bar is open and its line has no newline yet when the error is printed."""
    from transformers import TrainerCallback

    from warmstart.config import parse_config
    from warmstart.tasks import run as run_task

    train = env.image_folder("train_breaking")

    class BreakFiles(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            for path in train.rglob("*.png"):
                path.write_bytes(png_with_bad_pixels())

    argv = env.image(train=train)
    before = snapshot(env.out)
    capfd.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_cli(lambda a: run_task(parse_config(a, "image_classification"), callbacks=[BreakFiles()]), argv)
    stderr = capfd.readouterr().err
    assert exited.value.code == 2
    assert snapshot(env.out) == before
    assert "Traceback" not in stderr, stderr
    assert "%|" in stderr  # the bar did show
    terminal_lines = [line for line in stderr.split("\n") if line.strip()]
    assert terminal_lines[-1].startswith("error: image "), stderr
    assert "cannot be read during training" in terminal_lines[-1]
    assert sum("error:" in line for line in terminal_lines) == 1


# ----------------------------------------------------------------------------------------- an output dir with a model


def test_output_dir_with_another_model_is_refused_until_overwrite(env: Env, capfd):
    text = RECIPES["text"].main
    first = env.text("--seed", "0")
    run_cli(text, first)
    model_files = snapshot(env.out)
    assert {"model.safetensors", "config.json", "warmstart_config.yaml", "notes.txt"} <= set(model_files)

    for other in (
        env.text("--seed", "1"),
        env.text("--learning_rate", "5e-4"),
        env.text("--freeze_strategy", "head_only"),
        env.text(model=env.timm_dir),
    ):
        code, stderr = run_in_process("text", other, capfd)
        assert code == 2
        assert_one_error_line(stderr, (str(env.out), "already holds a different model", "--overwrite_output_dir"))
        assert snapshot(env.out) == model_files  # byte-identical, not even rewritten

    run_cli(text, [*env.text("--seed", "1"), "--overwrite_output_dir"])
    assert "seed: 1" in (env.out / "warmstart_config.yaml").read_text()
    assert snapshot(env.out)["model.safetensors"] != model_files["model.safetensors"]


@pytest.mark.parametrize("recipe", ["text", "image"])
def test_output_dir_with_a_foreign_model_is_refused(recipe: str, env: Env, capfd):
    foreign = env.bert if recipe == "text" else env.timm_dir
    shutil.copytree(foreign, env.out, dirs_exist_ok=True)  # a model warmstart did not make: no warmstart_config.yaml
    before = snapshot(env.out)
    argv = env.text() if recipe == "text" else env.image()
    code, stderr = run_in_process(recipe, argv, capfd)
    assert code == 2
    assert_one_error_line(stderr, ("already holds a different model",))
    assert snapshot(env.out) == before


def test_output_dir_refusal_from_the_script(env: Env):
    shutil.copytree(env.bert, env.out, dirs_exist_ok=True)
    before = snapshot(env.out)
    done = run_script("text", env.text())
    assert done.returncode == 2, done.stderr
    assert_one_error_line(done.stderr, ("already holds a different model",))
    assert snapshot(env.out) == before


def test_parse_failures_create_no_output_dir(env: Env, capfd):
    missing = env.tmp / "never_made"
    code, stderr = run_in_process("text", [*env.text("--fp16"), "--output_dir", str(missing)], capfd)
    assert code == 2
    assert_one_error_line(stderr, ("fp16",))
    assert not missing.exists()


def test_data_failures_create_no_output_dir(env: Env, capfd):
    missing = env.tmp / "never_made"
    code, stderr = run_in_process(
        "text", [*env.text("--label_column_name", "nope"), "--output_dir", str(missing)], capfd
    )
    assert code == 2
    assert_one_error_line(stderr, ("'nope'",))
    assert not missing.exists()


# ------------------------------------------------------------------------------------------------------- precision


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_bf16_on_a_cpu_with_native_bf16_is_accepted(flag: str, env: Env, monkeypatch):
    for module in (warmstart.precision.hardware, warmstart.precision.choice, warmstart.precision.devices):
        monkeypatch.setattr(module, "cpu_flags", lambda cpuinfo=None: {"avx2", flag})
    *_, training_args = parse_args(
        (ModelArguments, DataArguments, PolicyArguments, TrainingArguments), [*env.text("--bf16")]
    )
    assert training_args.bf16 and not training_args.fp16
    assert training_args.use_cpu


def test_bf16_on_a_cpu_without_native_bf16_fails_at_parse_time(env: Env, monkeypatch):
    for module in (warmstart.precision.hardware, warmstart.precision.choice, warmstart.precision.devices):
        monkeypatch.setattr(module, "cpu_flags", lambda cpuinfo=None: {"avx2"})
    with pytest.raises(WarmstartError, match="without native bf16"):
        parse_args((ModelArguments, DataArguments, PolicyArguments, TrainingArguments), env.text("--bf16"))


def test_an_accelerate_cpu_config_counts_as_cpu_even_with_a_gpu(monkeypatch):
    from warmstart.precision import training_on_cpu

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    assert not training_on_cpu(False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")  # what `accelerate launch` sets for `use_cpu: true`
    assert training_on_cpu(False)
