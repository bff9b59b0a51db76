"""The accelerate configs in accelerate_configs/: accelerate reads each as meant, every key is explained, and the
recipes run (or refuse cleanly) under them through ``accelerate launch``."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import ComputeEnvironment, DeepSpeedPlugin, DistributedType
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
from conftest import trainer_flags
from safetensors.torch import load_file
from transformers import TrainingArguments

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "accelerate_configs"
TEXT_RECIPE = "recipes/text_classification.py"
LAUNCH_TIMEOUT_S = 180

# What accelerate must read from each file. A misspelled key, or an unquoted NO / no (YAML's false), changes these.
EXPECTED = {
    "cpu.yaml": {"distributed_type": DistributedType.NO, "mixed_precision": "no", "num_processes": 1,
                 "num_machines": 1, "use_cpu": True, "gpu_ids": None},
    "single_gpu.yaml": {"distributed_type": DistributedType.NO, "mixed_precision": "no", "num_processes": 1,
                        "num_machines": 1, "use_cpu": False, "gpu_ids": "0"},
    "multi_gpu.yaml": {"distributed_type": DistributedType.MULTI_GPU, "mixed_precision": "no", "num_processes": 2,
                       "num_machines": 1, "use_cpu": False, "gpu_ids": "all"},
    "multi_cpu.yaml": {"distributed_type": DistributedType.MULTI_GPU, "mixed_precision": "no", "num_processes": 2,
                       "num_machines": 1, "use_cpu": False, "gpu_ids": "all"},
    "bf16.yaml": {"distributed_type": DistributedType.NO, "mixed_precision": "bf16", "num_processes": 1,
                  "num_machines": 1, "use_cpu": False, "gpu_ids": "0"},
    "fp16.yaml": {"distributed_type": DistributedType.NO, "mixed_precision": "fp16", "num_processes": 1,
                  "num_machines": 1, "use_cpu": False, "gpu_ids": "0"},
    "fsdp.yaml": {"distributed_type": DistributedType.FSDP, "mixed_precision": "bf16", "num_processes": 2,
                  "num_machines": 1, "use_cpu": False, "gpu_ids": "all",
                  "fsdp_config": {"fsdp_version": 1, "fsdp_use_orig_params": True,
                                  "fsdp_sharding_strategy": "FULL_SHARD", "fsdp_auto_wrap_policy": "SIZE_BASED_WRAP",
                                  "fsdp_min_num_params": 5_000_000, "fsdp_backward_prefetch": "BACKWARD_PRE",
                                  "fsdp_offload_params": False, "fsdp_state_dict_type": "FULL_STATE_DICT",
                                  "fsdp_cpu_ram_efficient_loading": False, "fsdp_sync_module_states": True}},
    "deepspeed_zero2.yaml": {"distributed_type": DistributedType.DEEPSPEED, "mixed_precision": "bf16",
                             "num_processes": 2, "num_machines": 1, "use_cpu": False, "gpu_ids": "all",
                             "deepspeed_config": {"zero_stage": 2, "offload_optimizer_device": "none",
                                                  "offload_param_device": "none",
                                                  "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}},
    "multi_node.yaml": {"distributed_type": DistributedType.MULTI_GPU, "mixed_precision": "no", "num_processes": 16,
                        "num_machines": 2, "machine_rank": 0, "use_cpu": False, "gpu_ids": "all",
                        "main_process_ip": "REPLACE_WITH_IP_OF_MACHINE_0", "main_process_port": 29500,
                        "rdzv_backend": "static", "same_network": True},
}  # fmt: skip

# What accelerate launch puts in the environment of the training processes for the plugin configs: the Trainer's
# Accelerator builds its FullyShardedDataParallelPlugin / DeepSpeedPlugin from exactly these variables.
LAUNCH_ENV = {
    "fsdp.yaml": {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_USE_ORIG_PARAMS": "true",
                  "FSDP_SHARDING_STRATEGY": "FULL_SHARD", "FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP",
                  "FSDP_MIN_NUM_PARAMS": "5000000", "FSDP_BACKWARD_PREFETCH": "BACKWARD_PRE",
                  "FSDP_OFFLOAD_PARAMS": "false", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
                  "FSDP_CPU_RAM_EFFICIENT_LOADING": "false", "FSDP_SYNC_MODULE_STATES": "true",
                  "ACCELERATE_MIXED_PRECISION": "bf16"},
    "deepspeed_zero2.yaml": {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
                             "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none",
                             "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none",
                             "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "auto", "ACCELERATE_GRADIENT_CLIPPING": "auto",
                             "ACCELERATE_MIXED_PRECISION": "bf16"},
    "multi_node.yaml": {"ACCELERATE_MIXED_PRECISION": "no"},
}  # fmt: skip

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None

KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w-]*)\s*:")

# Prints what accelerate launch handed the script; imports nothing heavy, so it runs anywhere.
PROBE = """
import json, os, sys
keys = ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_CPU", "CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "RANK", "GROUP_RANK",
        "MASTER_ADDR")
env = {k: os.environ.get(k) for k in keys}
env.update({k: v for k, v in os.environ.items() if k.startswith(("ACCELERATE_", "FSDP_"))})
# one write of the whole line: two processes printing at once must not splice their lines (print writes the end
# separately, and a line of one process once ended up inside the other's)
sys.stdout.write("PROBE " + json.dumps(env) + "\\n")
sys.stdout.flush()
"""


def _launch_command(config: str, script: str, *args: str, quiet: bool = False, launch_args=()) -> list[str]:
    """``accelerate launch --config_file accelerate_configs/<config> [launch_args] script args``.

    ``python -m accelerate.commands.launch`` is the ``accelerate launch`` command of this interpreter's accelerate
    (the ``accelerate`` script on PATH could belong to another environment).
    """
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"accelerate_configs/{config}"]
    command += ["--quiet"] if quiet else []
    return [*command, *launch_args, script, *args]


def _launch_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}  # no outer launch
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _launch(config: str, script: str, *args: str, quiet: bool = False, launch_args=()) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file accelerate_configs/<config> script args``, as a user would run it."""
    return subprocess.run(
        _launch_command(config, script, *args, quiet=quiet, launch_args=launch_args),
        cwd=REPO_ROOT,
        env=_launch_env(),
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )


def _probe_envs(stdout: str) -> list[dict]:
    return [json.loads(line[len("PROBE ") :]) for line in stdout.splitlines() if line.startswith("PROBE ")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepared_launch(name: str, *launch_args: str):
    """What ``accelerate launch --config_file <name>`` would start, without starting it: the parsed arguments
    (torchrun's nnodes / node_rank / rdzv_endpoint among them) and the environment for the training processes.

    The same calls as accelerate 1.15's ``launch_command`` up to the launcher (``_validate_launch_command`` is
    private), so a config is checked where its launch needs what this machine lacks: DeepSpeed installed, or a
    second machine to meet at the rendezvous.
    """
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(CONFIG_DIR / name), *launch_args, "train.py"])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    if defaults.distributed_type == DistributedType.DEEPSPEED:
        fields = [*defaults.deepspeed_config, *(["mixed_precision"] if mixed_precision_from_config else [])]
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return args, env


def _gpus_for(config: str) -> int:
    """GPUs to train on: the config's process count, or all there are (at least one) on a smaller machine."""
    return min(EXPECTED[config]["num_processes"], torch.cuda.device_count())


def _text_args(tiny_bert: Path, text_files: dict[str, Path]) -> list[str]:
    return [
        "--model_name_or_path", str(tiny_bert), "--train_file", str(text_files["train"]),
        "--validation_file", str(text_files["validation"]),
    ]  # fmt: skip


def _gpu_flags(output_dir: Path) -> list[str]:
    """``trainer_flags`` without its ``--use_cpu true``, so that a GPU config trains on the GPU."""
    flags = trainer_flags(output_dir)
    i = flags.index("--use_cpu")
    return flags[:i] + flags[i + 2 :]


def _assert_trained(result: subprocess.CompletedProcess, output_dir: Path) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output_dir / "model.safetensors").is_file()
    metrics = json.loads((output_dir / "all_results.json").read_text())
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0


def test_every_config_has_expectations():
    assert sorted(p.name for p in CONFIG_DIR.glob("*.y*ml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_reads_config_as_meant(name):
    config = load_config_from_file(str(CONFIG_DIR / name))  # what accelerate launch / accelerate env call

    assert isinstance(config, ClusterConfig)
    assert config.compute_environment == ComputeEnvironment.LOCAL_MACHINE
    for key, value in EXPECTED[name].items():
        assert getattr(config, key) == value, f"{name}: {key}"
    if config.distributed_type == DistributedType.NO:
        assert config.num_processes == 1
    else:
        assert config.num_processes >= 2


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_key_is_commented(name):
    lines = (CONFIG_DIR / name).read_text().splitlines()
    seen, uncommented = set(), []
    for i, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if not match or line.lstrip().startswith("#"):
            continue
        if not match["indent"]:
            seen.add(match["key"])
        # a comment on the line itself, or on the line just above
        if "#" not in line.split(":", 1)[1] and not (i and lines[i - 1].lstrip().startswith("#")):
            uncommented.append(match["key"])

    assert not uncommented, f"{name}: keys without a comment: {uncommented}"
    assert seen == set(yaml.safe_load("\n".join(lines))), f"{name}: keys the scan missed"


# cpu.yaml and fp16.yaml are launched with the recipe below; these would otherwise need a GPU to be launched at all.
# deepspeed_zero2.yaml and multi_node.yaml are launched in their own tests below.
@pytest.mark.parametrize("name", ["single_gpu.yaml", "bf16.yaml", "multi_gpu.yaml", "fsdp.yaml"])
def test_accelerate_launch_accepts_gpu_config(name, tmp_path):
    """accelerate launch itself accepts the config and hands the script what it says (no GPU needed: the probe
    never touches CUDA)."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)

    result = _launch(name, str(probe))

    assert result.returncode == 0, result.stderr[-3000:]
    seen = _probe_envs(result.stdout)
    expected = EXPECTED[name]
    assert len(seen) == expected["num_processes"]
    assert {env["ACCELERATE_MIXED_PRECISION"] for env in seen} == {expected["mixed_precision"]}
    if expected["num_processes"] > 1:
        assert {env["WORLD_SIZE"] for env in seen} == {str(expected["num_processes"])}
    if expected["use_cpu"]:
        assert seen[0]["ACCELERATE_USE_CPU"] == "True"
    if expected["gpu_ids"] not in (None, "all"):
        assert seen[0]["CUDA_VISIBLE_DEVICES"] == expected["gpu_ids"]
    for key, value in LAUNCH_ENV.get(name, {}).items():
        assert {env.get(key) for env in seen} == {value}, key


def test_cpu_config_trains_text_recipe(tiny_bert, text_files, tmp_path):
    out = tmp_path / "out"

    result = _launch("cpu.yaml", TEXT_RECIPE, *_text_args(tiny_bert, text_files), *trainer_flags(out))

    _assert_trained(result, out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused only where no GPU is in use")
def test_fp16_config_without_gpu_fails_in_one_line(tiny_bert, text_files, tmp_path):
    out = tmp_path / "out"
    # --quiet: without it accelerate launch re-raises the script's failure as its own CalledProcessError traceback
    result = _launch("fp16.yaml", TEXT_RECIPE, *_text_args(tiny_bert, text_files), *_gpu_flags(out), quiet=True)

    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "fp16" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (out / "model.safetensors").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["single_gpu.yaml", "fp16.yaml"])
def test_gpu_config_trains_text_recipe(name, tiny_bert, text_files, tmp_path):
    out = tmp_path / "out"

    result = _launch(name, TEXT_RECIPE, *_text_args(tiny_bert, text_files), *_gpu_flags(out))

    _assert_trained(result, out)


@pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()), reason="needs a CUDA GPU with bf16"
)
def test_bf16_config_trains_text_recipe(tiny_bert, text_files, tmp_path):
    out = tmp_path / "out"

    result = _launch("bf16.yaml", TEXT_RECIPE, *_text_args(tiny_bert, text_files), *_gpu_flags(out))

    _assert_trained(result, out)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_multi_gpu_config_trains_text_recipe(tiny_bert, text_files, tmp_path):
    out = tmp_path / "out"

    result = _launch("multi_gpu.yaml", TEXT_RECIPE, *_text_args(tiny_bert, text_files), *_gpu_flags(out))

    _assert_trained(result, out)


@pytest.mark.parametrize("name", sorted(LAUNCH_ENV))
def test_launch_prepares_config_as_meant(name):
    """What accelerate launch would hand torchrun and the training processes, built by accelerate's own launch code:
    runs here although DeepSpeed is missing and a multi-node launch would wait for its second machine."""
    port = _free_port()  # the file's port may be taken on this machine; multi-node launches refuse a taken one

    args, env = _prepared_launch(name, "--main_process_port", str(port))

    expected, config = EXPECTED[name], load_config_from_file(str(CONFIG_DIR / name))
    for key, value in LAUNCH_ENV[name].items():
        assert env.get(key) == value, key
    assert args.nproc_per_node == str(expected["num_processes"] // expected["num_machines"])
    if expected["num_machines"] > 1:
        assert (args.nnodes, args.node_rank) == (str(expected["num_machines"]), expected["machine_rank"])
        # same_network decides between MASTER_ADDR/PORT and rdzv_endpoint; both meet at the main machine
        meeting = f"{args.master_addr}:{args.master_port}" if args.same_network else args.rdzv_endpoint
        assert meeting == f"{config.main_process_ip}:{port}"
        assert args.rdzv_backend == expected["rdzv_backend"]


def test_multi_node_config_second_machine_changes_only_machine_rank(tmp_path):
    """Both "machines" (two launchers on this one) start from multi_node.yaml, the second with --machine_rank 1 as
    its comments say; they meet at the rendezvous and get ranks 0 and 1 of one job. Only the placeholders (address,
    port) and the process count (no GPUs here: one probe process per machine) are overridden."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    common = ["--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()), "--num_processes", "2"]
    launchers = [
        subprocess.Popen(
            _launch_command("multi_node.yaml", str(probe), launch_args=[*common, "--machine_rank", str(rank)]),
            cwd=REPO_ROOT,
            env=_launch_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for launcher in launchers:
            outputs.append(launcher.communicate(timeout=LAUNCH_TIMEOUT_S))
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait()

    for launcher, (_, stderr) in zip(launchers, outputs):
        assert launcher.returncode == 0, stderr[-3000:]
    seen = [_probe_envs(stdout) for stdout, _ in outputs]
    assert [[env["GROUP_RANK"] for env in machine] for machine in seen] == [["0"], ["1"]]
    every = [env for machine in seen for env in machine]
    assert sorted(env["RANK"] for env in every) == ["0", "1"]
    assert {(env["WORLD_SIZE"], env["MASTER_ADDR"]) for env in every} == {("2", "127.0.0.1")}


def _deepspeed_config(monkeypatch) -> dict:
    """The DeepSpeed config that the training processes' Accelerator builds (DeepSpeedPlugin) from the environment
    accelerate launch prepares for deepspeed_zero2.yaml."""
    _, env = _prepared_launch("deepspeed_zero2.yaml", "--main_process_port", str(_free_port()))
    for key in ("ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
                "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
                "ACCELERATE_GRADIENT_CLIPPING"):  # fmt: skip
        monkeypatch.setenv(key, env[key])
    return DeepSpeedPlugin().deepspeed_config


def test_deepspeed_config_builds_zero2_with_auto_values(monkeypatch):
    ds_config = _deepspeed_config(monkeypatch)

    assert ds_config["zero_optimization"]["stage"] == 2
    assert ds_config["zero_optimization"]["offload_optimizer"]["device"] == "none"
    assert ds_config["zero_optimization"]["offload_param"]["device"] == "none"
    # left to the Trainer, like the batch sizes accelerate always leaves to it
    assert ds_config["gradient_accumulation_steps"] == ds_config["gradient_clipping"] == "auto"


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="needs deepspeed (transformers' DeepSpeed config checks its version)")
def test_deepspeed_auto_values_follow_trainer_arguments(tmp_path, monkeypatch):
    """The recipe's --gradient_accumulation_steps / --max_grad_norm fill the "auto" values instead of clashing."""
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    args = TrainingArguments(
        output_dir=str(tmp_path), gradient_accumulation_steps=4, max_grad_norm=0.5, per_device_train_batch_size=8,
        use_cpu=True, report_to="none",
    )  # fmt: skip
    ds_config = _deepspeed_config(monkeypatch)

    filled = HfTrainerDeepSpeedConfig(ds_config)
    filled.trainer_config_process(args)
    assert not filled.mismatches
    assert (filled.config["gradient_accumulation_steps"], filled.config["gradient_clipping"]) == (4, 0.5)
    # the reason for "auto": a fixed number that differs from the recipe's flag is a mismatch the Trainer refuses
    fixed = HfTrainerDeepSpeedConfig({**ds_config, "gradient_accumulation_steps": 1})
    fixed.trainer_config_process(args)
    assert fixed.mismatches


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (sync_module_states asks for one)")
def test_fsdp_config_builds_the_plugin_freezing_needs(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import ShardingStrategy, StateDictType
    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

    _, env = _prepared_launch("fsdp.yaml", "--main_process_port", str(_free_port()))
    for key, value in env.items():
        if key.startswith("FSDP_"):
            monkeypatch.setenv(key, value)

    plugin = FullyShardedDataParallelPlugin()  # what the training processes' Accelerator builds

    assert plugin.fsdp_version == 1
    assert plugin.use_orig_params is True
    assert plugin.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    assert plugin.auto_wrap_policy is size_based_auto_wrap_policy
    assert plugin.min_num_params == 5_000_000
    assert (plugin.cpu_ram_efficient_loading, plugin.sync_module_states) == (False, True)


@pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()), reason="needs a CUDA GPU with bf16"
)
def test_fsdp_config_trains_with_frozen_layers(tiny_bert, text_files, tmp_path):
    """A policy that freezes part of the model trains under FSDP (frozen and trainable parameters in one FSDP unit:
    use_orig_params), leaves the frozen weights as they were and saves a full, unsharded model."""
    out = tmp_path / "out"
    launch_args = ["--num_processes", str(_gpus_for("fsdp.yaml"))]  # 2 as configured, or 1 on a one-GPU machine
    freeze = ["--freeze_strategy", "top_k", "--unfreeze_top_k", "1"]
    args = [*_text_args(tiny_bert, text_files), *_gpu_flags(out), *freeze]

    result = _launch("fsdp.yaml", TEXT_RECIPE, *args, launch_args=launch_args)

    _assert_trained(result, out)
    before = load_file(str(tiny_bert / "model.safetensors"))
    after = {name.removeprefix("bert."): tensor for name, tensor in load_file(str(out / "model.safetensors")).items()}
    assert {name: t.shape for name, t in before.items()} == {name: after[name].shape for name in before}
    for name in (n for n in before if n.startswith(("embeddings.", "encoder.layer.0."))):
        assert torch.equal(after[name], before[name]), f"{name} is frozen but changed"
    top = [n for n in before if n.startswith("encoder.layer.1.")]
    assert any(not torch.equal(after[n], before[n]) for n in top), "the unfrozen top layer did not train"


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="needs deepspeed (pip install deepspeed)")
@pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()), reason="needs a CUDA GPU with bf16"
)
def test_deepspeed_config_trains_text_recipe(tiny_bert, text_files, tmp_path):
    out = tmp_path / "out"
    launch_args = ["--num_processes", str(_gpus_for("deepspeed_zero2.yaml"))]

    result = _launch(
        "deepspeed_zero2.yaml", TEXT_RECIPE, *_text_args(tiny_bert, text_files), *_gpu_flags(out),
        "--freeze_strategy", "top_k", "--unfreeze_top_k", "1", "--gradient_accumulation_steps", "2",
        launch_args=launch_args,
    )  # fmt: skip

    _assert_trained(result, out)
