"""``--on_bad_example fail|skip`` and ``--max_bad_fraction``: examples that cannot be read (a truncated image, a file
broken after the checks, an empty text, a text the tokenizer fails on) stop the run with one line naming them, or
are skipped, counted per split and listed, until too many of a split are bad.

The planted images are JPEGs cut short inside their pixel data: Pillow's header check (``Image.verify``) passes them,
and only decoding fails, as with a file truncated by a copy or a download.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import trainer_flags, write_image_folder, write_text_csv
from datasets import Dataset, DatasetDict
from PIL import Image
from transformers import TrainerCallback

import warmstart
from warmstart import WarmstartError
from warmstart.config import parse_config
from warmstart.data.bad_examples import BAD_EXAMPLES_FILE, REGISTRY_DIR, BadExample, BadExamples
from warmstart.data.leakage import ROW_COLUMN
from warmstart.data.text import tokenize_splits
from warmstart.errors import own_message, run_cli

pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture()
def offline(monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets.disable_progress_bars()  # progress, not errors: kept out of the stderr checked
    yield
    datasets.enable_progress_bars()


def truncated_jpeg(path: Path, seed: int = 0) -> Path:
    """A JPEG of noise cut at 70 % of its bytes: its header is whole (``verify`` passes), its pixels are not."""
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    path.write_bytes(data[: int(len(data) * 0.7)])
    with Image.open(path) as image:
        image.verify()  # the header check passes it
    with pytest.raises(OSError), Image.open(path) as image:
        image.load()  # decoding does not
    return path


def image_folders(root: Path, per_class: int = 40) -> dict[str, Path]:
    return {
        "train": write_image_folder(root / "train", per_class, 0),
        "validation": write_image_folder(root / "validation", 4, 1),
    }


def image_argv(folders: dict[str, Path], output_dir: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        "test_resnet",
        "--random_init",
        "--train_dir",
        str(folders["train"]),
        "--validation_dir",
        str(folders["validation"]),
        "--image_size",
        "32",
        *trainer_flags(output_dir, "--disable_tqdm", "true"),
        *extra,
    ]


def run_image(argv: list[str], callbacks=()) -> dict:
    return warmstart.run(parse_config(argv, "image_classification"), callbacks=list(callbacks))


def cli_image(argv: list[str], capsys) -> tuple[int, str]:
    from warmstart.tasks import run as run_task

    with pytest.raises(SystemExit) as stopped:
        run_cli(lambda a: run_task(parse_config(a, "image_classification")), argv)
    return stopped.value.code, capsys.readouterr().err.strip()


# ---------------------------------------------------------------------------------------------- before training


def test_a_truncated_image_stops_the_run_before_training_with_one_line_naming_it(tmp_path, capsys):
    folders = image_folders(tmp_path)
    bad = truncated_jpeg(folders["train"] / "green" / "cut.jpg")
    out = tmp_path / "out"
    code, err = cli_image(image_argv(folders, out), capsys)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: image "), err
    assert str(bad) in err and "(train row " in err and "cannot be read" in err and "--on_bad_example skip" in err
    assert not (out / "model.safetensors").exists()


def test_skip_drops_the_truncated_images_counts_and_lists_them(tmp_path):
    folders = image_folders(tmp_path)  # 3 classes x 40 = 120 train images
    planted = {truncated_jpeg(folders["train"] / "red" / "cut.jpg", 1)}
    out = tmp_path / "out"
    results = run_image(image_argv(folders, out, "--on_bad_example", "skip"))
    assert results["train_samples"] == 120  # 121 files, the cut one left out
    listed = json.loads((out / BAD_EXAMPLES_FILE).read_text())
    assert {e["file"] for e in listed["examples"]} == {str(p) for p in planted}
    assert [e["when"] for e in listed["examples"]] == ["before training"]
    assert listed["splits"] == {"train": {"bad": 1, "of": 121}}
    recorded = yaml.safe_load((out / "warmstart_config.yaml").read_text())["bad_examples"]
    assert recorded["on_bad_example"] == "skip" and recorded["splits"]["train"]["bad"] == 1
    assert (out / "model.safetensors").exists()


def test_skip_stops_once_more_than_the_fraction_of_a_split_is_bad(tmp_path, capsys):
    folders = image_folders(tmp_path)
    for i in range(3):  # 3 of 123 = 2.4 %, over 1 %; allowed at 5 %
        truncated_jpeg(folders["train"] / "blue" / f"cut{i}.jpg", i)
    code, err = cli_image(image_argv(folders, tmp_path / "out", "--on_bad_example", "skip"), capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "3 of 123 train examples (2.4%)" in err and "--max_bad_fraction 0.01" in err and "cut0.jpg" in err
    results = run_image(
        image_argv(folders, tmp_path / "out5", "--on_bad_example", "skip", "--max_bad_fraction", "0.05")
    )
    assert results["train_samples"] == 120


# ----------------------------------------------------------------------------------------------- during training


class BreakFiles(TrainerCallback):
    """Truncates image files after the first optimizer step: files broken after the checks (a disk, a sync)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            for path in self.paths:
                data = path.read_bytes()
                path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_trains_past_images_that_break_mid_run_and_records_them(tmp_path, workers):
    folders = image_folders(tmp_path)
    broken = [folders["train"] / "green" / "3.png", folders["train"] / "red" / "7.png"]
    out = tmp_path / "out"
    argv = image_argv(
        folders,
        out,
        "--on_bad_example",
        "skip",
        "--max_bad_fraction",
        "0.05",
        "--max_steps",
        "-1",
        "--num_train_epochs",
        "2",
        "--dataloader_num_workers",
        str(workers),
    )
    results = run_image(argv, [BreakFiles(broken)])
    assert results["epoch"] == 2  # trained to the end
    listed = json.loads((out / BAD_EXAMPLES_FILE).read_text())
    # met in the second epoch at the latest, by whichever DataLoader worker loaded them: each listed once
    assert sorted(e["file"] for e in listed["examples"]) == sorted(map(str, broken))
    assert {e["when"] for e in listed["examples"]} == {"during training"}
    rows = {Path(e["file"]).name: e["row"] for e in listed["examples"]}
    files = sorted(p for p in folders["train"].rglob("*.png"))  # the folder reader's order: class, then name
    assert rows == {p.name: files.index(p) + 1 for p in broken}
    assert not (out / REGISTRY_DIR).exists()  # the per-process records are merged and removed


def test_fail_names_an_image_that_breaks_mid_run_even_from_a_dataloader_worker(tmp_path):
    folders = image_folders(tmp_path)
    broken = folders["train"] / "blue" / "5.png"
    argv = image_argv(folders, tmp_path / "out", "--max_steps", "-1", "--num_train_epochs", "2")
    argv += ["--dataloader_num_workers", "1"]
    with pytest.raises(WarmstartError) as raised:
        run_image(argv, [BreakFiles([broken])])
    message = own_message(raised.value)  # what run_cli prints: the worker's own line, not its traceback
    assert message.startswith(f"image {broken} (train row ") and "cannot be read during training" in message
    assert "\n" not in message


# ----------------------------------------------------------------------------------------------------------- text


def test_an_empty_text_is_refused_or_skipped(tmp_path):
    rows = [(f"a fine film number {i}" if i != 5 else "   ", "pos" if i % 2 else "neg") for i in range(40)]
    files = {
        "train": write_text_csv(tmp_path / "train.csv", rows),
        "validation": write_text_csv(tmp_path / "validation.csv", rows[:8] + [("a plain film", "neg")]),
    }
    argv = ["--model_name_or_path", "unused", "--train_file", str(files["train"])]
    argv += ["--validation_file", str(files["validation"]), "--output_dir", str(tmp_path / "o")]
    from warmstart.data import load_checked_splits

    config = parse_config(argv, "text_classification")
    with pytest.raises(WarmstartError, match=r"no text in column 'text' \(rows 6, counting from 1\)"):
        load_checked_splits(config.data, 0)  # data rows, the header not counted
    skipping = parse_config([*argv, "--on_bad_example", "skip", "--max_bad_fraction", "0.2"], "text_classification")
    bad = BadExamples.for_run(skipping.data, None)
    splits, _, _ = load_checked_splits(skipping.data, 0, bad_examples=bad)
    assert len(splits["train"]) == 39 and len(splits["validation"]) == 8
    assert sorted(bad.found) == [("train", 6), ("validation", 6)]  # data rows, counting from 1


class FailsOn:
    """A tokenizer that fails on texts holding a marker, as a real one fails on input it cannot encode."""

    def __init__(self, tokenizer, marker: str) -> None:
        self.tokenizer, self.marker = tokenizer, marker

    def __call__(self, *texts, **kwargs):
        flat = [t for column in texts for t in ([column] if isinstance(column, str) else column)]
        if any(self.marker in t for t in flat):
            raise ValueError(f"cannot encode {self.marker!r}")
        return self.tokenizer(*texts, **kwargs)


@pytest.fixture()
def tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


def _text_splits() -> DatasetDict:
    texts = [f"the film {i} was good" for i in range(30)]
    texts[11] = texts[23] = "the film was \x00broken\x00"
    train = Dataset.from_dict({"text": texts, "labels": [i % 2 for i in range(30)], ROW_COLUMN: list(range(30))})
    # shuffled, as after a validation split: the rows named are the rows as read, not the positions
    return DatasetDict({"train": train.shuffle(seed=3)})


def test_a_text_the_tokenizer_fails_on_is_named_or_skipped(tokenizer):
    failing = FailsOn(tokenizer, "\x00broken")
    with pytest.raises(WarmstartError) as raised:
        tokenize_splits(_text_splits(), failing, ["text"], 32)
    first = next(row for row in _text_splits()["train"][ROW_COLUMN] if row in (11, 23))  # first in the shuffled order
    message = str(raised.value)
    assert message.startswith(f"train row {first + 1}, column 'text' cannot be used (cannot encode")
    assert "--on_bad_example skip" in message

    bad = BadExamples(policy="skip", max_fraction=0.1)
    splits = tokenize_splits(_text_splits(), failing, ["text"], 32, bad)
    assert len(splits["train"]) == 28
    assert sorted(bad.found) == [("train", 12), ("train", 24)]
    assert all(e.column == "text" and "cannot encode" in e.error for e in bad.found.values())
    assert sorted(splits["train"]["labels"]).count(1) == 13  # rows 11 and 23 (from 0) were the two of label 1 left out

    with pytest.raises(WarmstartError, match=r"2 of 30 train examples \(6.7%\)"):
        tokenize_splits(_text_splits(), failing, ["text"], 32, BadExamples(policy="skip", max_fraction=0.05))


# ------------------------------------------------------------------------------------------------------- pieces


def test_records_of_every_process_are_merged_once_and_stale_ones_cleared(tmp_path):
    one = BadExamples(policy="skip", max_fraction=0.5, registry=tmp_path / REGISTRY_DIR, sizes={"train": 10})
    other = BadExamples(policy="skip", max_fraction=0.5, registry=tmp_path / REGISTRY_DIR, sizes={"train": 10})
    one.meet(BadExample("train", 3, "truncated", file="a.png", when="during training"))
    other.meet(BadExample("train", 3, "truncated", file="a.png", when="during training"))  # the same, elsewhere
    other.meet(BadExample("train", 8, "truncated", file="b.png", when="during training"))
    assert one.count("train") == 2 and sorted(one.merged()) == [("train", 3), ("train", 8)]
    with pytest.raises(WarmstartError, match=r"6 of 10 train examples \(60.0%\)"):
        for row in (1, 2, 4, 5):
            one.meet(BadExample("train", row, "truncated", when="during training"))
    assert one.write(tmp_path) == 6
    # a record file of a process that is gone (a previous run's) is removed; this process's stays
    (tmp_path / REGISTRY_DIR / f"{__import__('socket').gethostname()}-999999999.jsonl").write_text("{}\n")
    one.clear_stale()
    assert len(list((tmp_path / REGISTRY_DIR).glob("*.jsonl"))) == 1
    one.close()
    assert not (tmp_path / REGISTRY_DIR).exists()


def test_a_worker_error_is_reported_by_its_own_line():
    line = "image a.jpg (train row 3) cannot be read (truncated): remove or replace the file"

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise WarmstartError(line)

    with pytest.raises(WarmstartError) as raised:
        list(torch.utils.data.DataLoader(Broken(), num_workers=1))
    assert "Traceback" in str(raised.value)  # what torch re-raises
    assert (
        own_message(raised.value) == "image a.jpg (train row 3) cannot be read (truncated): remove or replace the file"
    )
