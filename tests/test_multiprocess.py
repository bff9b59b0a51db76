"""Multi-process runs (torchrun, accelerate launch with a multi-process config; gloo on the CPU) against one process.

Two processes of batch B see the same global batches as one process of batch 2B (Accelerate hands process r the
r-th of each pair of batches of the same seeded permutation), so where nothing differs per process the runs must
agree to float summation order: measured, train loss within 4e-8 and eval loss equal. That holds when every global
batch is full (the training set a multiple of the global batch: accelerate pads a short last batch with repeated
examples) and no layer normalises per process (BatchNorm in training: see
warmstart.training.batchnorm.warn_of_per_process_batchnorm).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    _sentences,
    _write_bert,
    free_port,
    text_data_flags,
    torchrun_command,
    write_image_folder,
    write_text_csv,
)
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
# losses of the two runs: the same arithmetic summed in another order (measured: 3e-8 relative)
TOLERANCE = 1e-5


def _flags(out: Path, batch: int, steps: int, lr: str) -> list[str]:
    return [
        "--output_dir",
        str(out),
        "--max_steps",
        str(steps),
        "--learning_rate",
        lr,
        "--warmup_steps",
        "0",
        "--per_device_train_batch_size",
        str(batch),
        "--precision",
        "fp32",
        "--channels_last",  # not timed: a timing could pick another layout in the 2-process run than in the 1
        "false",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--dataloader_num_workers",
        "0",
        "--seed",
        "0",
        "--disable_tqdm",
        "true",
    ]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def torchrun(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 recipes/<script> args``, as a user would run it."""
    command = torchrun_command(REPO / "recipes" / script, *args)
    return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _single(script: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "recipes" / script), *args]
    return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)


def _text_case(tmp_path: Path) -> tuple[str, list[str], int, str, int]:
    bert = _write_bert(tmp_path / "bert", dropout=0.0)  # dropout masks are drawn per process
    train = write_text_csv(tmp_path / "train.csv", _sentences(64, 0))
    validation = write_text_csv(tmp_path / "validation.csv", _sentences(33, 1))  # odd: uneven evaluation shards
    data = ["--model_name_or_path", str(bert), "--train_file", str(train), "--validation_file", str(validation)]
    # the length-grouped sampler draws from the global generator, which the processes do not share
    return "text_classification.py", [*data, "--group_by_length", "false"], 8, "3e-3", 60


def _image_case(tmp_path: Path) -> tuple[str, list[str], int, str, int]:
    train, validation = write_image_folder(tmp_path / "train", 8, 0), write_image_folder(tmp_path / "val", 5, 1)
    data = ["--model_name_or_path", "test_resnet", "--random_init", "--train_dir", str(train)]
    # head_only: the backbone's features are cached, each process computing half of them
    return "image_classification.py", [*data, "--validation_dir", str(validation), "--image_size", "32"], 6, "3e-2", 40


@pytest.mark.parametrize("case", [_text_case, _image_case], ids=["text_full", "image_head_only_on_cached_features"])
def test_two_processes_match_one_process_with_the_same_global_batch(case, tmp_path):
    script, data, batch, lr, steps = case(tmp_path)
    # head_only: the Trainer's probe (what is compared is the Trainer's steps in 2 processes against 1)
    probe = ["--freeze_strategy", "head_only", "--probe_solver", "trainer"]
    strategy = ["--freeze_strategy", "full"] if script.startswith("text") else probe
    one = _single(script, *data, *strategy, *_flags(tmp_path / "one", 2 * batch, steps, lr))
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(script, *data, *strategy, *_flags(tmp_path / "two", batch, steps, lr))
    assert two.returncode == 0, two.stderr[-3000:]

    single, double = (json.loads((tmp_path / d / "all_results.json").read_text()) for d in ("one", "two"))
    assert single["eval_accuracy"] >= 0.75  # it learned: agreement on an untrained model would say little
    for key in ("train_loss", "eval_loss"):
        assert double[key] == pytest.approx(single[key], rel=TOLERANCE), key
    for key in ("eval_accuracy", "eval_f1_macro", "epoch", "train_samples", "eval_samples"):
        assert double[key] == single[key], key
    weights = [load_file(tmp_path / d / "model.safetensors") for d in ("one", "two")]
    for name, value in weights[0].items():
        if name.endswith("attention.self.key.bias"):
            # softmax ignores a constant added to every key, so this bias's true gradient is 0 and what it gets is
            # rounding noise, which Adam scales up to full-size steps: it differs between any two summation orders
            continue
        torch.testing.assert_close(weights[1][name], value, rtol=1e-4, atol=1e-5, msg=name)

    config = yaml.safe_load((tmp_path / "two" / "warmstart_config.yaml").read_text())
    assert len(config["lineage"]["runs"]) == 1  # written once, by the main process
    if script.startswith("image"):
        cache = config["feature_cache"]
        assert cache["used"] is True
        # the main process computed its half of each split's features, and trained on all of them
        assert cache["splits"]["train"] == {
            "examples": 24, "feature_shape": [96], "on_disk": False, "computed_by_this_process": 12
        }  # fmt: skip
        assert cache["splits"]["validation"]["computed_by_this_process"] == 8  # of 15


def test_two_processes_solve_the_probe_once_as_one_process_does(tmp_path):
    """The solved probe under torchrun: each process computes half the features, the main process solves the head
    on the whole table and every process takes its weights; the model scores as one process's (the features differ in
    their last bits, computed in other batches)."""
    script, data, batch, lr, steps = _image_case(tmp_path)
    runs = {
        "one": _single(script, *data, "--freeze_strategy", "head_only", *_flags(tmp_path / "one", 2 * batch, 1, lr)),
        "two": torchrun(script, *data, "--freeze_strategy", "head_only", *_flags(tmp_path / "two", batch, 1, lr)),
    }
    for done in runs.values():
        assert done.returncode == 0, done.stderr[-3000:]
    configs = {d: yaml.safe_load((tmp_path / d / "warmstart_config.yaml").read_text()) for d in runs}
    assert configs["two"]["probe"]["solver"] == "lbfgs"
    assert configs["two"]["probe"]["c"] == configs["one"]["probe"]["c"]
    assert configs["two"]["feature_cache"]["splits"]["train"]["computed_by_this_process"] == 12
    # on these separable colours C is large and the optimum flat: equally good heads, not equal weights
    results = [json.loads((tmp_path / d / "all_results.json").read_text()) for d in runs]
    assert results[0]["eval_accuracy"] == results[1]["eval_accuracy"] == 1.0
    assert results[1]["eval_loss"] == pytest.approx(results[0]["eval_loss"], abs=1e-3)


def test_a_strategy_comparison_runs_under_two_processes(tmp_path):
    """compare_strategies under torchrun: every run trains in both processes (half the examples each), the frozen
    runs share features computed in halves, and the main process alone writes rows, table, plot and the best."""
    train, validation = write_image_folder(tmp_path / "train", 8, 0), write_image_folder(tmp_path / "val", 3, 1)
    out = tmp_path / "cmp"
    done = torchrun(
        "compare_strategies.py",
        *("--model_name_or_path", "test_resnet", "--random_init", "--image_size", "32"),
        *("--train_dir", str(train), "--validation_dir", str(validation)),
        *("--strategies", "head_only", "lp_ft", "full", "--probe_epochs", "1", "--num_train_epochs", "2"),
        *_flags(out, 6, -1, "1e-2"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("strategy comparison (image): best by eval_accuracy") == 1  # printed once
    assert done.stdout.count("head_only-lbfgs: training ...") == 1
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    # lp_ft and full train the same parameters from the same weights: their greedy soup is tried once, in both
    # processes, and is a row when the average is at least as good as the better of them
    assert done.stdout.count("soup-lp_ft+full: greedy soup of 2 runs") == 1
    souped = "soup-lp_ft+full: 2 runs" in done.stdout
    assert [r["run"] for r in rows] == [
        "head_only-lbfgs",
        "lp_ft-lr0.01",
        "full-lr0.01",
        *["soup-lp_ft+full"] * souped,
    ]
    assert (out / "runs" / "soup-lp_ft+full" / "model.safetensors").is_file() == souped
    rows = rows[:3]
    for row in rows:
        run = out / "runs" / row["run"]
        results = json.loads((run / "all_results.json").read_text())
        steps = json.loads((run / "trainer_state.json").read_text())["global_step"]
        if row["run"] == "head_only-lbfgs":  # solved on the gathered features: no training step
            assert results["probe_c"] > 0 and steps == 0
        else:  # 2 epochs of 24 images in global batches of 12: 4 steps, so both processes trained
            assert results["epoch"] == pytest.approx(2.0) and steps == 4
        assert len(yaml.safe_load((run / "warmstart_config.yaml").read_text())["lineage"]["runs"]) == 1
    cache = yaml.safe_load((out / "runs" / "lp_ft-lr0.01" / "warmstart_config.yaml").read_text())["feature_cache"]
    assert cache["splits"]["train"]["shared"] is True  # the head_only run's features (computed in halves)
    assert (out / "comparison.png").is_file() and (out / "model.safetensors").is_file()


def test_a_chain_runs_under_two_processes(tmp_path):
    """chain.py under torchrun: the data link is written by the main process, each training link trains in both
    processes from the previous link's output, and every output is written once."""
    spec = yaml.safe_load((REPO / "recipes" / "configs" / "digits_chain.yaml").read_text())
    spec["links"] = [link for link in spec["links"] if link["name"] in ("data", "pretrain", "full")]
    for link in spec["links"]:
        if link["recipe"] != "digits_data":
            link["args"].update(max_steps=2, per_device_train_batch_size=8)
            link["seeds"] = [0] if link.get("seeds") else None
    spec["links"] = [{k: v for k, v in link.items() if v is not None} for link in spec["links"]]
    chain = tmp_path / "chain.yaml"
    chain.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    done = torchrun("chain.py", str(chain), "--output_dir", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "chain_results.json").read_text())
    assert [row["link"] for row in rows] == ["data", "pretrain", "full"]
    config = yaml.safe_load((out / "full-seed0" / "warmstart_config.yaml").read_text())
    assert [run["name"] for run in config["lineage"]["runs"]] == ["pretrain", "full-seed0"]
    assert config["model"]["model_name_or_path"] == str(out / "pretrain")
    state = json.loads((out / "full-seed0" / "trainer_state.json").read_text())
    # 2 steps of 2 processes x 8 images
    assert state["global_step"] == 2 and state["train_batch_size"] == 8
    assert done.stdout.count(f"chain {chain} -> {out}") == 1


def test_accelerate_launch_with_the_multi_cpu_config_trains_in_two_processes(tiny_bert, text_files, tmp_path):
    """``accelerate launch --config_file accelerate_configs/multi_cpu.yaml``: two processes over gloo, with no
    flag to say it is the CPU."""
    out = tmp_path / "out"
    config_file = "accelerate_configs/multi_cpu.yaml"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file]
    command += ["--main_process_port", str(free_port()), str(REPO / "recipes" / "text_classification.py")]
    command += [*text_data_flags(tiny_bert, text_files), *_flags(out, 4, 3, "1e-3"), "--freeze_strategy", "head_only"]
    command += ["--probe_solver", "trainer"]  # Trainer steps, to count them
    done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    # 3 steps of 2 processes x 4 examples out of 48: half an epoch (one process would have done a quarter)
    assert results["epoch"] == pytest.approx(0.5)
    config = yaml.safe_load((out / "warmstart_config.yaml").read_text())
    assert config["feature_cache"]["splits"]["train"]["computed_by_this_process"] == 24
    assert len(config["lineage"]["runs"]) == 1
