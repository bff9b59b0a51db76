"""Security: weights only as safetensors, no unsafe unpickling, no model code run without --trust_remote_code, a hub
token that never reaches a printed line, a log or a file, and no local path published with a pushed model."""

from __future__ import annotations

import ast
import contextlib
import logging
import secrets
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    _sentences,
    _write_bert,
    image_data_flags,
    text_data_flags,
    trainer_flags,
    write_image_folder,
    write_text_csv,
)

from warmstart import run_cli
from warmstart.export import public_config
from warmstart.run_folder import CONFIG_NAME

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import image_classification  # noqa: E402
import pretrain_autoencoder  # noqa: E402
import pretrain_mlm  # noqa: E402
import text_classification  # noqa: E402

# What a pickle-based save looks like: none of these may hold a model's weights.
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"}
# The Trainer's own resume state in a checkpoint (not weights): optimizer moments, scheduler, RNG, scaler, arguments.
TRAINER_STATE_FILES = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt", "training_args.bin"}


def _corpus(path: Path) -> Path:
    words = "the movie was really good and the plot was very nice but a bit dull".split()
    path.write_text("\n".join(" ".join(words[i % 5 : i % 5 + 6]) for i in range(40)) + "\n")
    return path


def _unlabeled_images(folder: Path, n: int = 16) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (32, 32), (10 * i % 255, 80, 160)).save(folder / f"{i}.png")
    return folder


def _recipe_run(name: str, tmp_path: Path, tiny_bert: Path, text_files, image_dirs, out: Path, *extra: str):
    """Runs one recipe on the fixtures (a few CPU steps), with ``extra`` training flags."""
    if name.startswith("image"):
        strategy = ["--freeze_strategy", name.split(":")[1]]
        return image_classification.main([*image_data_flags(image_dirs), *strategy, *trainer_flags(out, *extra)])
    if name.startswith("text"):
        strategy = ["--freeze_strategy", name.split(":")[1]]
        if strategy[1] == "lora":
            strategy += ["--save_adapter", "true"]
        return text_classification.main(
            [*text_data_flags(tiny_bert, text_files), *strategy, *trainer_flags(out, *extra)]
        )
    if name == "pretrain_mlm":
        data = ["--train_file", str(_corpus(tmp_path / "corpus.txt")), "--max_seq_length", "16"]
        return pretrain_mlm.main(["--model_name_or_path", str(tiny_bert), *data, *trainer_flags(out, *extra)])
    data = ["--train_dir", str(_unlabeled_images(tmp_path / "unlabeled")), "--image_size", "32"]
    return pretrain_autoencoder.main(
        ["--model_name_or_path", "test_resnet", "--random_init", *data, *trainer_flags(out, *extra)]
    )


# ---------------------------------------------------------------- 1. weights only as safetensors


@pytest.mark.parametrize(
    "recipe", ["image:full", "image:head_only", "text:full", "text:lora", "pretrain_mlm", "pretrain_autoencoder"]
)
def test_every_recipe_saves_weights_only_as_safetensors(recipe, tmp_path, tiny_bert, text_files, image_dirs):
    """The model (and a LoRA adapter) is safetensors everywhere, checkpoints included. A Trainer checkpoint also
    holds its resume state (optimizer moments, scheduler, RNG, the arguments): not weights, and nothing else."""
    out = tmp_path / "out"
    # channels_last on, not left to a timing: strided CNN weights are what safetensors' save_file refuses
    layout = ["--channels_last", "true"] if "image" in recipe or "autoencoder" in recipe else []
    _recipe_run(
        recipe,
        tmp_path,
        tiny_bert,
        text_files,
        image_dirs,
        out,
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        *layout,
        *(["--probe_solver", "trainer"] if recipe == "image:head_only" else []),  # Trainer checkpoints
    )
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert checkpoints, "a checkpoint should have been written"
    files = [p for p in out.rglob("*") if p.is_file()]
    in_checkpoint = [p for p in files if p.relative_to(out).parts[0].startswith("checkpoint-")]
    final = [p for p in files if p not in in_checkpoint]
    assert (out / "model.safetensors").is_file() or (out / "model.safetensors.index.json").is_file()
    assert not [p for p in final if p.suffix in PICKLE_SUFFIXES], "pickle files next to the final model"
    if recipe == "text:lora":
        assert (out / "adapter" / "adapter_model.safetensors").is_file()
    for checkpoint in checkpoints:
        names = {p.name for p in checkpoint.iterdir() if p.is_file()}
        assert any(n.endswith(".safetensors") for n in names), f"{checkpoint.name}: no safetensors weights"
        assert {n for n in names if Path(n).suffix in PICKLE_SUFFIXES} <= TRAINER_STATE_FILES, checkpoint.name
        # the optimizer's state is tensors and numbers: it loads without unpickling arbitrary objects
        if (checkpoint / "optimizer.pt").is_file():
            state = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
            assert set(state) == {"state", "param_groups"}


# ---------------------------------------------------------------- 2. no unsafe unpickling in the code


def _python_sources() -> list[Path]:
    return sorted([*(ROOT / "src" / "warmstart").rglob("*.py"), *(ROOT / "recipes").rglob("*.py")])


def _call_name(node: ast.Call) -> str:
    parts = []
    func = node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword(node: ast.Call, name: str):
    for keyword in node.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else keyword.value
    return None


def _unsafe(source: str, where: str) -> tuple[list[str], int]:
    """The rule breaks in one file's source, and how many ``torch.load`` calls it has."""
    problems, torch_loads = [], 0
    for node in ast.walk(ast.parse(source)):
        at = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(m.split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib", "shelve") for m in modules):
                problems.append(f"{at}: imports {modules}")
            by_name = {"load", "save"} & {a.name for a in node.names}
            if isinstance(node, ast.ImportFrom) and node.module == "torch" and by_name:
                problems.append(f"{at}: imports torch.load / torch.save by name")
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        if name == "torch.load":
            torch_loads += 1
            if _keyword(node, "weights_only") is not True:
                problems.append(f"{at}: torch.load without weights_only=True")
        elif name in ("torch.save", "pickle.load", "pickle.loads", "pickle.dump", "pickle.dumps"):
            problems.append(f"{at}: {name}")
        elif name.endswith(("np.load", "numpy.load")) and _keyword(node, "allow_pickle") not in (None, False):
            problems.append(f"{at}: np.load with allow_pickle")
        elif name.endswith("save_pretrained") and _keyword(node, "safe_serialization") is False:
            problems.append(f"{at}: save_pretrained(safe_serialization=False)")
        elif _keyword(node, "trust_remote_code") is True:
            problems.append(f"{at}: trust_remote_code=True hard-coded")
    return problems, torch_loads


def test_the_code_never_unpickles_and_never_writes_pickled_weights():
    sources = _python_sources()
    assert len(sources) > 20 and any(p.name == "mlm.py" for p in sources)
    problems, torch_loads = [], 0
    for path in sources:
        found, loads = _unsafe(path.read_text(), str(path.relative_to(ROOT)))
        problems += found
        torch_loads += loads
    assert torch_loads >= 1, "the scan should see the torch.load calls that exist"
    assert not problems, "\n".join(problems)


def test_the_source_scan_reports_every_unsafe_call():
    """The scan on code that breaks each rule (a scan that sees nothing would pass above)."""
    bad = """
import pickle
from torch import load
torch.load(f)
torch.load(f, weights_only=False)
torch.load(f, weights_only=True)
torch.save(model.state_dict(), "model.pt")
np.load(f, allow_pickle=True)
model.save_pretrained(d, safe_serialization=False)
AutoModel.from_pretrained(d, trust_remote_code=True)
AutoModel.from_pretrained(d, trust_remote_code=args.trust_remote_code)
"""
    problems, loads = _unsafe(bad, "bad.py")
    assert loads == 3
    assert [p.split(": ", 1)[0] for p in problems] == [f"bad.py:{line}" for line in (2, 3, 4, 5, 7, 8, 9, 10)]


# ---------------------------------------------------------------- 3. no model code without --trust_remote_code

CUSTOM_CODE = """
from pathlib import Path
Path({marker!r}).write_text("imported")
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification


class CustomConfig(BertConfig):
    model_type = "warmstart-custom"


class CustomForSequenceClassification(BertForSequenceClassification):
    config_class = CustomConfig


class CustomForMaskedLM(BertForMaskedLM):
    config_class = CustomConfig
"""


def _model_with_custom_code(tmp_path: Path, model_type: str) -> tuple[Path, Path]:
    """A tiny BERT directory whose config points, through ``auto_map``, at a module that writes a marker file
    when it is imported. ``model_type``: ``warmstart-custom`` (unknown to transformers: only the custom code can
    load it) or ``bert`` (transformers has its own code, and must use it)."""
    import json

    folder = _write_bert(tmp_path / f"custom_{model_type.replace('-', '_')}_{secrets.token_hex(4)}")
    marker = tmp_path / "custom_code_was_imported"
    (folder / "custom_code.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type=model_type,
        auto_map={
            "AutoConfig": "custom_code.CustomConfig",
            "AutoModelForSequenceClassification": "custom_code.CustomForSequenceClassification",
            "AutoModelForMaskedLM": "custom_code.CustomForMaskedLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def _run_with_model(recipe: str, model: Path, tmp_path: Path, text_files, *extra: str) -> None:
    out = tmp_path / "out"
    if recipe == "text":
        run_cli(text_classification.main, [*text_data_flags(model, text_files), *trainer_flags(out, *extra)])
    else:
        data = ["--train_file", str(_corpus(tmp_path / "corpus.txt")), "--max_seq_length", "16"]
        run_cli(pretrain_mlm.main, ["--model_name_or_path", str(model), *data, *trainer_flags(out, *extra)])


@pytest.mark.parametrize("recipe", ["text", "pretrain_mlm"])
def test_custom_model_code_is_refused_without_trust_remote_code(recipe, tmp_path, text_files, capfd):
    model, marker = _model_with_custom_code(tmp_path, "warmstart-custom")
    with pytest.raises(SystemExit) as exit_info:
        _run_with_model(recipe, model, tmp_path, text_files)
    assert exit_info.value.code == 2
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "--trust_remote_code" in lines[0], lines[0]  # the one line says how to opt in
    assert not marker.exists(), "the model's own code ran without --trust_remote_code"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("recipe", ["text", "pretrain_mlm"])
def test_custom_code_beside_a_known_architecture_is_not_imported(recipe, tmp_path, text_files):
    """A BERT config that also maps to custom code: transformers' own BERT is used, the module is never imported."""
    model, marker = _model_with_custom_code(tmp_path, "bert")
    _run_with_model(recipe, model, tmp_path, text_files)
    assert not marker.exists(), "the model's own code ran without --trust_remote_code"
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_trust_remote_code_flag_does_run_the_custom_code(tmp_path, text_files, monkeypatch):
    """The control for the two tests above: with the flag, the same directory's code is imported (the marker
    shows it), so the marker's absence there means something."""
    import transformers.dynamic_module_utils as dynamic

    modules = tmp_path / "hf_modules"
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(modules))  # not the user's cache
    monkeypatch.setattr(sys, "path", list(sys.path))
    model, marker = _model_with_custom_code(tmp_path, "warmstart-custom")
    with contextlib.suppress(SystemExit):  # whether the custom model trains is not the point: its code was let in
        _run_with_model("text", model, tmp_path, text_files, "--max_steps", "1", "--trust_remote_code", "true")
    assert marker.exists()


# ---------------------------------------------------------------- 4. the hub token never leaks


@pytest.fixture()
def hub(monkeypatch):
    """``HfApi`` with nothing sent: records the token it was made with and every file an upload would send, by its
    path in the repo (whether pushed as a folder, one file, or one commit)."""
    import huggingface_hub
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.utils import filter_repo_objects

    record = {"tokens": [], "files": {}}

    class Repo:
        repo_id = "someone/secure-model"

    def create_repo(self, repo_id, **kwargs):
        record["tokens"].append(self.token)
        return Repo()

    def upload_folder(self, *, folder_path, path_in_repo=None, allow_patterns=None, ignore_patterns=None, **kwargs):
        root = Path(folder_path)
        names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        for name in filter_repo_objects(names, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            record["files"][f"{path_in_repo or ''}{name}".lstrip("/")] = (root / name).read_bytes()

    def _content(source) -> bytes:
        if isinstance(source, bytes):
            return source
        if isinstance(source, (str, Path)):
            return Path(source).read_bytes()
        return source.read()

    def upload_file(self, *, path_or_fileobj, path_in_repo, **kwargs):
        record["files"][path_in_repo] = _content(path_or_fileobj)

    def create_commit(self, repo_id, operations, **kwargs):
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                record["files"][op.path_in_repo] = _content(op.path_or_fileobj)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", upload_file)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    return record


@pytest.fixture()
def every_log_record():
    """Every record logged while the test runs, from the libraries that train (their loggers do not propagate)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    loggers = [logging.getLogger(name) for name in ("", "warmstart", "transformers", "datasets", "huggingface_hub")]
    for logger in loggers:
        logger.addHandler(handler)
    yield records
    for logger in loggers:
        logger.removeHandler(handler)


def _files_holding(folder: Path, secret: bytes) -> list[str]:
    return [str(p.relative_to(folder)) for p in sorted(folder.rglob("*")) if p.is_file() and secret in p.read_bytes()]


@pytest.mark.parametrize("how", ["flag", "environment"])
@pytest.mark.parametrize("recipe", ["text:full", "image:full"])
def test_the_hub_token_is_never_printed_logged_or_written(
    recipe, how, tmp_path, tiny_bert, text_files, image_dirs, hub, every_log_record, capfd, monkeypatch
):
    secret = f"hf_{secrets.token_hex(16)}"  # unique per test: a hit can only be this run's leak
    monkeypatch.delenv("HF_TOKEN", raising=False)
    flags = ["--push_to_hub", "true", "--hub_model_id", "someone/secure-model"]
    if how == "flag":
        flags += ["--hub_token", secret]
    else:
        monkeypatch.setenv("HF_TOKEN", secret)
    out = tmp_path / "out"
    flags += ["--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1", "--log_level", "info"]
    _recipe_run(recipe, tmp_path, tiny_bert, text_files, image_dirs, out, *flags)

    # from the environment, the TrainingArguments take HF_TOKEN as their hub_token (or HfApi reads it itself: None)
    assert hub["tokens"] == [secret] if how == "flag" else hub["tokens"] in ([secret], [None])
    assert "README.md" in hub["files"] and "model.safetensors" in hub["files"]
    assert len(list(out.glob("checkpoint-*"))) >= 2, "checkpoints (with training_args.bin) should exist to scan"
    printed = capfd.readouterr()
    assert secret not in printed.out and secret not in printed.err
    assert every_log_record, "the run should have logged something"
    for record in every_log_record:
        assert secret not in record.getMessage(), record.name
    assert _files_holding(out, secret.encode()) == []
    assert [name for name, content in hub["files"].items() if secret.encode() in content] == []
    config = yaml.safe_load((out / CONFIG_NAME).read_text())
    assert config["training"].get("hub_token") in (("<redacted>",) if how == "flag" else ("<redacted>", None))
    # the checkpoints' pickled training arguments hold no token either (the scan above reads them as bytes too)
    arguments = torch.load(sorted(out.glob("checkpoint-*"))[-1] / "training_args.bin", weights_only=False)
    assert arguments.hub_token is None and arguments.push_to_hub is False


# ---------------------------------------------------------------- 5. no local path published with a model


def test_a_pushed_model_publishes_no_local_path(tmp_path, tiny_bert, hub):
    """The card and the config that go to the Hub name the data files, never where they are on this machine."""
    private = tmp_path / "secret_client_data"
    private.mkdir()
    files = {
        "train": write_text_csv(private / "train.csv", _sentences(48, 0)),
        "validation": write_text_csv(private / "validation.csv", _sentences(16, 1)),
    }
    out = tmp_path / "acme_models" / "sentiment"
    text_classification.main(
        [*text_data_flags(tiny_bert, files), *trainer_flags(out, "--push_to_hub", "true", "--hub_model_id", "a/b")]
    )
    assert {"README.md", CONFIG_NAME, "model.safetensors"} <= set(hub["files"])
    local = [str(tmp_path), str(tmp_path.resolve()), "secret_client_data", "acme_models", str(tiny_bert)]
    for name, content in hub["files"].items():
        if name.endswith((".md", ".yaml", ".json", ".txt")):
            text = content.decode()
            assert not [p for p in local if p in text], f"{name} publishes a local path"
    card = hub["files"]["README.md"].decode()
    assert "train.csv" in card  # the file names stay: they say what the data was
    published = yaml.safe_load(hub["files"][CONFIG_NAME])
    assert published["data"]["train_file"] == "train.csv"
    assert published["model"]["model_name_or_path"] == tiny_bert.name
    # here, the config keeps the paths: a rerun of the same command is recognised, and the run can be reproduced
    kept = yaml.safe_load((out / CONFIG_NAME).read_text())
    assert kept["data"]["train_file"] == str(files["train"])


@pytest.mark.parametrize(
    ("value", "public"),
    [
        ("/home/alice/clients/acme/train.csv", "train.csv"),
        ("/home/alice/clients/acme/images/", "images"),
        ("~/clients/acme/train.csv", "train.csv"),
        ("bert-base-uncased", "bert-base-uncased"),  # a hub id or timm name is not a local path
        ("google/vit-base-patch16-224", "google/vit-base-patch16-224"),
        ("hf-hub:timm/resnet18.a1_in1k", "hf-hub:timm/resnet18.a1_in1k"),
        ("<redacted>", "<redacted>"),
        ("linear", "linear"),
    ],
)
def test_public_config_names_local_paths_by_their_last_part(value, public):
    config = {"data": {"train_file": value, "files": [value]}, "training": {"seed": 3, "fp16": False, "x": None}}
    assert public_config(config) == {
        "data": {"train_file": public, "files": [public]},
        "training": {"seed": 3, "fp16": False, "x": None},
    }


def test_public_config_names_relative_local_paths_and_leaves_the_original(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clients" / "acme").mkdir(parents=True)
    (tmp_path / "clients" / "acme" / "train.csv").write_text("text,label\n")
    config = {"data": {"train_file": "clients/acme/train.csv", "dataset_name": "imdb"}}
    assert public_config(config) == {"data": {"train_file": "train.csv", "dataset_name": "imdb"}}
    assert config["data"]["train_file"] == "clients/acme/train.csv"


def test_a_local_image_folder_is_not_published(tmp_path, hub):
    private = tmp_path / "secret_client_data"
    dirs = {
        "train": write_image_folder(private / "train", 8, 0),
        "validation": write_image_folder(private / "validation", 3, 1),
    }
    out = tmp_path / "out"
    image_classification.main(
        [*image_data_flags(dirs), *trainer_flags(out, "--push_to_hub", "true", "--hub_model_id", "a/b")]
    )
    for name in ("README.md", CONFIG_NAME):
        assert name in hub["files"]
        assert (
            "secret_client_data" not in hub["files"][name].decode()
            and str(tmp_path) not in hub["files"][name].decode()
        )
