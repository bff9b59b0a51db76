"""Precision and device settings: the decision table at parsing (CPU flags, GPU support, explicit overrides,
conflicts), what parse_args records, the automatic choices timed on the model (injected timers and broadcast), the
timing leaving the model and the random state as they were, the device settings with injected device facts, and bf16
autocast training a tiny model as accurately as fp32."""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import ListDataset, tiny_bert_classifier, torchrun_command
from torch import nn
from transformers import Trainer, TrainingArguments, set_seed

import warmstart.precision
from warmstart import DataArguments, ModelArguments, PerformanceArguments, WarmstartError
from warmstart.config import parse_args, parse_config, to_plain
from warmstart.export import check_output_dir, write_resolved_config
from warmstart.precision import (
    PENDING,
    DeviceFacts,
    PrecisionChoice,
    apply_device_settings,
    choose_precision,
    cpu_has_native_bf16,
    is_cnn,
    time_memory_formats,
)
from warmstart.step_timing import StepSetup, example_inputs, time_training_steps
from warmstart.tasks.classification import apply_devices, start_classification

AVX2 = {"fpu", "avx2", "fma", "avx512f"}
AVX512_BF16 = AVX2 | {"avx512_bf16"}
AMX = AVX2 | {"amx_bf16", "amx_tile"}


@pytest.fixture(autouse=True)
def _no_accelerate_precision(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)


# ------------------------------------------------------------------------------------------------- decision table


@dataclass(frozen=True)
class Decision:
    id: str
    asked: str
    expect: str
    evidence: tuple[str, ...]
    on_cpu: bool = True
    flags: frozenset[str] = frozenset(AVX512_BF16)
    gpu_bf16: bool = False
    fp16: bool = False
    bf16: bool = False
    env: dict[str, str] = field(default_factory=dict)


DECISIONS = [
    Decision("cpu-auto-avx2-only", "auto", "fp32", ("native bf16 flags: none", "not measured"), flags=frozenset(AVX2)),
    Decision("cpu-auto-avx512-bf16", "auto", PENDING, ("native bf16 flags: avx512_bf16", "to be timed on the model")),
    Decision("cpu-auto-amx", "auto", PENDING, ("amx_bf16", "to be timed"), flags=frozenset(AMX)),
    Decision("gpu-auto-with-bf16", "auto", PENDING, ("GPU (native bf16)", "to be timed"), on_cpu=False, gpu_bf16=True),
    Decision("gpu-auto-without-bf16", "auto", "fp32", ("no native bf16", "not measured"), on_cpu=False),
    Decision("cpu-explicit-fp32", "fp32", "fp32", ("asked: --precision fp32", "avx512_bf16")),
    Decision("cpu-explicit-bf16", "bf16", "bf16", ("asked: --precision bf16",)),
    Decision("cpu-bf16-flag", "auto", "bf16", ("asked: --bf16",), bf16=True),
    Decision("cpu-bf16-flag-and-precision-agree", "bf16", "bf16", ("asked: --precision bf16",), bf16=True),
    Decision(
        "cpu-accelerate-bf16",
        "auto",
        "bf16",
        ("the accelerate config's mixed_precision: bf16",),
        env={"ACCELERATE_MIXED_PRECISION": "bf16"},
    ),
    Decision(
        "cpu-accelerate-no",
        "auto",
        "fp32",
        ("not measured",),
        flags=frozenset(AVX2),
        env={"ACCELERATE_MIXED_PRECISION": "no"},
    ),
    Decision("gpu-explicit-fp16", "fp16", "fp16", ("--precision fp16", "GPU"), on_cpu=False, gpu_bf16=True),
    Decision("gpu-fp16-flag", "auto", "fp16", ("asked: --fp16",), on_cpu=False, gpu_bf16=True, fp16=True),
    Decision("gpu-explicit-fp32", "fp32", "fp32", ("--precision fp32",), on_cpu=False, gpu_bf16=True),
]


@pytest.mark.parametrize("case", DECISIONS, ids=lambda c: c.id)
def test_precision_decision(case: Decision, monkeypatch):
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    choice = choose_precision(
        case.asked,
        fp16=case.fp16,
        bf16=case.bf16,
        on_cpu=case.on_cpu,
        flags=set(case.flags),
        gpu_bf16=case.gpu_bf16,
    )
    assert choice.precision == case.expect
    assert choice.pending is (case.expect == PENDING)
    assert choice.on_cpu == case.on_cpu
    assert "\n" not in choice.evidence
    for part in case.evidence:
        assert part in choice.evidence, f"{part!r} not in {choice.evidence!r}"


def test_several_processes_leave_the_choice_pending_like_one(monkeypatch):
    """Ranks no longer go by the flags alone: every one waits for the main process's timing."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert choose_precision("auto", on_cpu=True, flags=set(AVX512_BF16)).pending


@dataclass(frozen=True)
class Refusal:
    id: str
    asked: str
    expect: tuple[str, ...]
    on_cpu: bool = True
    flags: frozenset[str] = frozenset(AVX512_BF16)
    fp16: bool = False
    bf16: bool = False
    env: dict[str, str] = field(default_factory=dict)


REFUSALS = [
    Refusal("fp32-against-bf16-flag", "fp32", ("--precision fp32 contradicts --bf16", "give one of them"), bf16=True),
    Refusal("bf16-against-fp16-flag", "bf16", ("--precision bf16 contradicts --fp16",), on_cpu=False, fp16=True),
    Refusal(
        "fp32-against-accelerate-bf16",
        "fp32",
        ("--precision fp32 contradicts the accelerate config's mixed_precision: bf16",),
        env={"ACCELERATE_MIXED_PRECISION": "bf16"},
    ),
    Refusal("fp16-on-cpu", "fp16", ("fp16 mixed precision needs a CUDA GPU", "drop --precision fp16")),
    Refusal("fp16-flag-on-cpu", "auto", ("needs a CUDA GPU", "drop --fp16"), fp16=True),
    Refusal(
        "bf16-on-avx2-cpu",
        "bf16",
        ("without native bf16", "drop --precision bf16"),
        flags=frozenset(AVX2),
    ),
    Refusal("bf16-flag-on-avx2-cpu", "auto", ("without native bf16", "drop --bf16"), flags=frozenset(AVX2), bf16=True),
    Refusal(
        "accelerate-bf16-on-avx2-cpu",
        "auto",
        ("without native bf16", "accelerate config's mixed_precision: bf16"),
        flags=frozenset(AVX2),
        env={"ACCELERATE_MIXED_PRECISION": "bf16"},
    ),
]


@pytest.mark.parametrize("case", REFUSALS, ids=lambda c: c.id)
def test_impossible_or_contradictory_precision_is_refused_in_one_line(case: Refusal, monkeypatch):
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(WarmstartError) as refused:
        choose_precision(
            case.asked,
            fp16=case.fp16,
            bf16=case.bf16,
            on_cpu=case.on_cpu,
            flags=set(case.flags),
            gpu_bf16=True,
        )
    message = str(refused.value)
    assert "\n" not in message
    for part in case.expect:
        assert part in message, f"{part!r} not in {message!r}"


# --------------------------------------------------------------------------------------------------- parse_args


def _argv(tmp_path: Path, *extra: str) -> list[str]:
    base = ["--model_name_or_path", "some-model", "--train_file", "train.csv", "--output_dir", str(tmp_path / "out")]
    return [*base, "--report_to", "none", *extra]


SECTIONS = (ModelArguments, DataArguments, PerformanceArguments, TrainingArguments)


def _parse(tmp_path: Path, *extra: str, flags=AVX512_BF16):
    chooser = functools.partial(choose_precision, on_cpu=True, flags=set(flags))
    return parse_args(SECTIONS, _argv(tmp_path, *extra), precision_choice=chooser)


@pytest.mark.parametrize(
    ("extra", "flags", "resolved"),
    [
        ((), AVX512_BF16, PENDING),
        ((), AVX2, "fp32"),
        (("--precision", "fp32"), AVX512_BF16, "fp32"),
        (("--precision", "bf16"), AMX, "bf16"),
        (("--bf16",), AVX512_BF16, "bf16"),
    ],
    ids=["auto-native-pending", "auto-avx2", "fp32", "bf16", "bf16-flag"],
)
def test_parse_args_sets_training_precision_and_records_it(tmp_path, extra, flags, resolved):
    *_, perf, training = _parse(tmp_path, *extra, flags=flags)
    bf16 = resolved == "bf16"  # a pending choice trains in fp32 until the model is timed
    assert training.bf16 is bf16 and not training.fp16
    assert training.mixed_precision == ("bf16" if bf16 else "no")
    assert training.use_cpu is bf16  # TrainingArguments refuses CPU bf16 unless told it is on the CPU
    assert perf.resolved_precision == resolved
    plain = to_plain(perf)
    assert plain["resolved_precision"] == perf.resolved_precision
    assert plain["precision_evidence"] == perf.precision_evidence and perf.precision_evidence


def test_parse_args_refuses_a_contradiction_before_building_training_arguments(tmp_path):
    with pytest.raises(WarmstartError, match="--precision fp32 contradicts --bf16"):
        _parse(tmp_path, "--precision", "fp32", "--bf16")


@pytest.mark.parametrize("name", ["resolved_precision", "precision_evidence"])
def test_the_recorded_outcome_cannot_be_set_from_the_command_line(tmp_path, name):
    with pytest.raises(WarmstartError, match=f"unrecognized arguments: --{name}"):
        _parse(tmp_path, f"--{name}", "bf16")


def test_torch_compile_passes_through(tmp_path):
    *_, training = _parse(tmp_path, "--torch_compile", "--torch_compile_mode", "reduce-overhead")
    assert training.torch_compile and training.torch_compile_mode == "reduce-overhead"
    *_, training = _parse(tmp_path)
    assert not training.torch_compile


def test_the_run_config_records_the_choice_and_a_rerun_ignores_the_evidence(tmp_path, tiny_bert, monkeypatch):
    for module in (warmstart.precision.hardware, warmstart.precision.choice, warmstart.precision.devices):
        monkeypatch.setattr(module, "cpu_flags", lambda cpuinfo=None: set(AVX2))
    argv = ["--model_name_or_path", str(tiny_bert), "--train_file", "train.csv", "--output_dir", str(tmp_path)]
    run = start_classification(parse_config([*argv, "--report_to", "none", "--use_cpu", "true"]).copy())
    performance = run.config["performance"]
    assert performance["resolved_precision"] == "fp32"
    assert "native bf16 flags: none" in performance["precision_evidence"]

    (tmp_path / "model.safetensors").write_bytes(b"")  # the directory now holds this run's model
    write_resolved_config(tmp_path, run.config)
    measured_again = {**run.config, "performance": {**performance, "precision_evidence": "measured again"}}
    check_output_dir(tmp_path, measured_again, overwrite=False)
    other_precision = {**run.config, "performance": {**performance, "resolved_precision": "bf16"}}
    with pytest.raises(WarmstartError, match="already holds a different model"):
        check_output_dir(tmp_path, other_precision, overwrite=False)


# ------------------------------------------------------------------------------------------------ device settings


@pytest.fixture()
def cuda_tf32_restored():
    matmul, conv = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    yield
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = matmul, conv


def _training_args(tmp_path: Path, *, gpu: bool, **kwargs) -> TrainingArguments:
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kwargs)
    if gpu:
        args.dataloader_pin_memory = kwargs.get("dataloader_pin_memory", True)  # what use_cpu turned off
    return args


def _performance(channels_last: str = "auto", precision: str = "fp32") -> PerformanceArguments:
    perf = PerformanceArguments(channels_last=channels_last)
    perf.resolved_precision, perf.precision_evidence = precision, "given by the test"
    return perf


def _resnet() -> nn.Module:
    return timm.create_model("test_resnet", pretrained=False, num_classes=3)


def _is_channels_last(model: nn.Module) -> bool:
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1]
    return all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in weights)


def no_timing(*args, **kwargs):
    raise AssertionError("the memory formats were timed where the decision did not need it")


GPU = DeviceFacts(device="cuda", cpus=16, local_processes=2, tf32=True)
CPU = DeviceFacts(device="cpu", cpus=2)


def test_gpu_cnn_gets_tf32_channels_last_workers_and_pinned_memory(tmp_path, cuda_tf32_restored):
    model, args = _resnet(), _training_args(tmp_path, gpu=True)
    lines = apply_device_settings(
        model, args, _performance(precision="bf16"), "image", facts=GPU, time_formats=no_timing
    )
    assert lines[0] == "precision: bf16 (given by the test)"
    assert args.tf32 is True and torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert _is_channels_last(model)
    assert args.dataloader_num_workers == 7  # 16 CPUs for 2 processes, one each kept for the training loop
    assert args.dataloader_pin_memory
    text = "\n".join(lines)
    for part in ("TF32 matmuls: on", "channels_last: on (a CNN on a GPU)", "7 workers", "pinned memory on"):
        assert part in text


def test_gpu_settings_leave_what_the_user_gave(tmp_path, cuda_tf32_restored):
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    model = _resnet()
    args = _training_args(tmp_path, gpu=True, tf32=None, dataloader_num_workers=3, dataloader_pin_memory=False)
    args.tf32 = False  # as --tf32 false leaves it; building with it would need a GPU
    lines = apply_device_settings(model, args, _performance("false"), "image", facts=GPU, time_formats=no_timing)
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert not _is_channels_last(model)
    assert args.dataloader_num_workers == 3 and not args.dataloader_pin_memory
    assert "pinned memory off (as given)" in lines[-1]


@pytest.mark.parametrize(("cpus", "processes", "workers"), [(16, 1, 8), (16, 2, 7), (4, 4, 0), (2, 1, 1), (1, 1, 0)])
def test_gpu_image_loader_workers_fit_the_machine(tmp_path, cuda_tf32_restored, cpus, processes, workers):
    args = _training_args(tmp_path, gpu=True)
    facts = DeviceFacts(device="cuda", cpus=cpus, local_processes=processes, tf32=False)
    apply_device_settings(_resnet(), args, _performance(), "image", facts=facts, time_formats=no_timing)
    assert args.dataloader_num_workers == workers
    assert args.tf32 is None  # no TF32 on this GPU


def test_gpu_text_and_vit_are_not_converted_and_text_gets_no_workers(tmp_path, cuda_tf32_restored):
    bert, args = tiny_bert_classifier(), _training_args(tmp_path, gpu=True)
    lines = apply_device_settings(bert, args, _performance(), "text", facts=GPU, time_formats=no_timing)
    assert args.dataloader_num_workers == 0
    assert not any(line.startswith("channels_last") for line in lines)

    vit = timm.create_model("test_vit", pretrained=False, num_classes=3)
    lines = apply_device_settings(vit, _training_args(tmp_path, gpu=True), _performance(), "image", facts=GPU)
    assert "channels_last: off (not a CNN)" in lines
    assert vit.patch_embed.proj.weight.is_contiguous()


@pytest.mark.parametrize(("contiguous", "channels_last", "converted"), [(0.02, 0.01, True), (0.02, 0.019, False)])
def test_cpu_channels_last_follows_the_timing(tmp_path, contiguous, channels_last, converted):
    seen = {}

    def timed(model, shape, *, bf16):
        seen.update(shape=shape, bf16=bf16)
        return {"contiguous": contiguous, "channels_last": channels_last}

    model, args = _resnet(), _training_args(tmp_path, gpu=False, per_device_train_batch_size=64)
    lines = apply_device_settings(
        model, args, _performance(precision="bf16"), "image", input_size=(3, 64, 64), facts=CPU, time_formats=timed
    )
    assert seen == {"shape": (32, 3, 64, 64), "bf16": True}  # a CPU times at most MAX_TIMED_CPU_BATCH samples
    assert _is_channels_last(model) is converted
    assert ("channels_last: on" if converted else "channels_last: off") in "\n".join(lines)
    assert args.dataloader_num_workers == 0 and args.tf32 is None


@pytest.mark.parametrize(("wanted", "converted"), [("true", True), ("false", False)])
def test_cpu_channels_last_as_given_is_not_timed(tmp_path, wanted, converted):
    model = _resnet()
    apply_device_settings(
        model, _training_args(tmp_path, gpu=False), _performance(wanted), "image", facts=CPU, time_formats=no_timing
    )
    assert _is_channels_last(model) is converted


def test_channels_last_true_on_a_model_without_convolutions_says_so(tmp_path):
    lines = apply_device_settings(
        tiny_bert_classifier(), _training_args(tmp_path, gpu=False), _performance("true"), "text", facts=CPU
    )
    assert "the model has no Conv2d layer" in "\n".join(lines)


def test_timing_memory_formats_leaves_the_model_as_it_was():
    model = _resnet().train()
    model.layer1.eval()  # a frozen block stays in eval mode
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    seconds = time_memory_formats(model, (2, 3, 32, 32), repeats=1)
    assert set(seconds) == {"contiguous", "channels_last"} and all(s > 0 for s in seconds.values())
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # BatchNorm statistics too
    assert all(p.is_contiguous() for p in model.parameters())


@pytest.mark.parametrize(
    ("build", "cnn"),
    [
        (lambda: timm.create_model("test_resnet", pretrained=False), True),
        (lambda: timm.create_model("test_efficientnet", pretrained=False), True),
        (lambda: timm.create_model("test_convnext", pretrained=False), True),
        (lambda: timm.create_model("test_vit", pretrained=False), False),
        (lambda: timm.create_model("test_coatnet", pretrained=False), False),
        (lambda: timm.create_model("test_maxvit", pretrained=False), False),
        (tiny_bert_classifier, False),
        (lambda: nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.Flatten(), nn.Linear(8, 2)), False),
        (lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)), True),
    ],
    ids=["resnet", "efficientnet", "convnext", "vit", "coatnet", "maxvit", "bert", "patch-stem-only", "two-convs"],
)
def test_what_counts_as_a_cnn(build, cnn):
    assert is_cnn(build()) is cnn


# ---------------------------------------------------------------------------------- choices timed on the model

CPU_BF16 = DeviceFacts(device="cpu", cpus=2, native_bf16_flags=("avx512_bf16",))


@dataclass
class FakeTimer:
    """Stands in for a timed training step: records what it was given, returns the given step times."""

    seconds: dict[str, float] = field(default_factory=lambda: {"fp32": 0.4, "bf16": 0.2})
    calls: list[dict] = field(default_factory=list)
    fails: Exception | None = None

    def __call__(self, model, inputs, *, device):
        self.calls.append({"model": model, "inputs": inputs, "channels_last": _is_channels_last(model)})
        if self.fails:
            raise self.fails
        return self.seconds


def _pending() -> PerformanceArguments:
    perf = PerformanceArguments(channels_last="false")
    perf.resolved_precision, perf.precision_evidence = PENDING, "auto on the CPU: to be timed on the model"
    return perf


def _shape(inputs) -> tuple[int, ...]:
    return tuple((inputs if isinstance(inputs, torch.Tensor) else inputs["input_ids"]).shape)


@pytest.mark.parametrize(
    ("fp32", "bf16", "expect", "parts"),
    [
        (0.412, 0.780, "fp32", ("fp32 412 ms, bf16 780 ms", "(0.53x < 1.25x), so fp32")),
        (0.412, 0.206, "bf16", ("fp32 412 ms, bf16 206 ms", "(2.00x >= 1.25x), so bf16")),
        (0.412, 0.35, "fp32", ("bf16 350 ms", "(1.18x < 1.25x), so fp32")),  # within the timing's noise
        (0.0412, 0.0206, "bf16", ("fp32 41.2 ms, bf16 20.6 ms",)),
    ],
    ids=["bf16-slower", "bf16-faster", "bf16-marginal", "short-steps"],
)
def test_auto_precision_follows_the_timed_training_step(tmp_path, fp32, bf16, expect, parts):
    timer, model, perf = FakeTimer({"fp32": fp32, "bf16": bf16}), _resnet(), _pending()
    args = _training_args(tmp_path, gpu=False, per_device_train_batch_size=32)
    args.use_cpu = False  # as parsing leaves it for a pending choice
    lines = apply_device_settings(
        model, args, perf, "image", input_size=(3, 64, 64), facts=CPU_BF16, time_steps=timer, broadcast=lambda v: v
    )
    assert [_shape(call["inputs"]) for call in timer.calls] == [(32, 3, 64, 64)]
    assert timer.calls[0]["model"] is model  # the model itself: the timer works on copies
    assert args.bf16 is (expect == "bf16") and not args.fp16
    assert args.mixed_precision == ("bf16" if expect == "bf16" else "no")  # what the Trainer's Accelerator reads
    assert args.use_cpu is (expect == "bf16")
    assert perf.resolved_precision == expect
    evidence = perf.precision_evidence
    assert lines[0] == f"precision: {expect} ({evidence})" and "\n" not in evidence
    assert evidence.startswith("auto on the CPU (native bf16 flags: avx512_bf16): training step of 32x3x64x64: ")
    assert "; measured in " in evidence and evidence.endswith(" s")
    for part in parts:
        assert part in evidence, f"{part!r} not in {evidence!r}"


def test_text_is_timed_at_its_length_within_the_model_limit_and_a_cpu_batch_is_capped(tmp_path):
    timer = FakeTimer()
    args = _training_args(tmp_path, gpu=False, per_device_train_batch_size=64)
    bert = tiny_bert_classifier()  # 32 positions
    apply_device_settings(bert, args, _pending(), "text", facts=CPU_BF16, time_steps=timer, broadcast=lambda v: v)
    apply_device_settings(
        bert, args, _pending(), "text", sequence_length=16, facts=CPU_BF16, time_steps=timer, broadcast=lambda v: v
    )
    assert [_shape(call["inputs"]) for call in timer.calls] == [(32, 32), (32, 16)]
    inputs = timer.calls[1]["inputs"]
    assert set(inputs) == {"input_ids", "attention_mask"} and int(inputs["input_ids"].max()) < 40  # the vocabulary
    perf = _pending()
    apply_device_settings(bert, args, perf, "text", facts=CPU_BF16, time_steps=timer, broadcast=lambda v: v)
    assert "training step of 32x32 tokens: " in perf.precision_evidence


def test_auto_precision_on_a_gpu_times_tf32_against_bf16_in_the_training_layout(tmp_path, cuda_tf32_restored):
    timer, model, perf = FakeTimer({"fp32": 0.041, "bf16": 0.0223}), _resnet(), _pending()
    perf.channels_last = "auto"
    args = _training_args(tmp_path, gpu=True, per_device_train_batch_size=64)
    lines = apply_device_settings(
        model, args, perf, "image", input_size=(3, 224, 224), facts=GPU, time_steps=timer, broadcast=lambda v: v
    )
    assert _shape(timer.calls[0]["inputs"]) == (64, 3, 224, 224)  # the whole batch: a GPU step is short
    assert timer.calls[0]["channels_last"]  # timed in the layout it will train in
    assert args.bf16 and args.mixed_precision == "bf16"
    assert perf.precision_evidence.startswith("auto on the GPU (native bf16): training step of 64x3x224x224: ")
    assert "fp32 (TF32) 41.0 ms, bf16 22.3 ms (1.84x >= 1.25x), so bf16" in perf.precision_evidence
    assert lines[0].startswith("precision: bf16 (") and "TF32 matmuls: on" in lines[1]


def test_a_failed_timing_leaves_fp32_and_says_why(tmp_path):
    timer, perf = FakeTimer(fails=RuntimeError("out of\nmemory")), _pending()
    args = _training_args(tmp_path, gpu=False)
    apply_device_settings(_resnet(), args, perf, "image", facts=CPU_BF16, time_steps=timer, broadcast=lambda v: v)
    assert perf.resolved_precision == "fp32" and not args.bf16 and args.mixed_precision == "no"
    assert "timing a training step failed (RuntimeError: out of memory), so fp32" in perf.precision_evidence


@pytest.mark.parametrize("flags", [AVX2, AVX512_BF16], ids=["avx2", "native-but-asked-fp32"])
def test_nothing_is_timed_where_the_flags_or_the_user_decided(tmp_path, flags):
    extra = () if flags is AVX2 else ("--precision", "fp32")
    *_, perf, training = _parse(tmp_path, *extra, "--channels_last", "false", flags=flags)
    timer = FakeTimer()
    lines = apply_device_settings(
        _resnet(), training, perf, "image", facts=CPU, time_formats=no_timing, time_steps=timer
    )
    assert timer.calls == []
    assert perf.resolved_precision == "fp32" and not training.bf16
    assert lines[0] == f"precision: fp32 ({perf.precision_evidence})"
    assert ("not measured" if flags is AVX2 else "asked: --precision fp32") in lines[0]


def test_the_main_process_times_and_shares_its_choice(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    timer, shared = FakeTimer(), []

    def broadcast(value):
        shared.append(value)
        return value

    perf = _pending()
    apply_device_settings(
        _resnet(),
        _training_args(tmp_path, gpu=False),
        perf,
        "image",
        facts=CPU_BF16,
        time_steps=timer,
        broadcast=broadcast,
    )
    assert len(timer.calls) == 1
    assert shared == [PrecisionChoice("bf16", perf.precision_evidence, True)]


def test_another_process_takes_the_main_process_choices_without_timing(tmp_path, monkeypatch):
    """Rank 1 times nothing: precision and layout both come from rank 0, so every process trains alike."""
    monkeypatch.setenv("RANK", "1")
    timer, given = FakeTimer(), []
    from_main = iter([PrecisionChoice("bf16", "timed on rank 0", True), {"contiguous": 0.02, "channels_last": 0.01}])

    def broadcast(value):
        given.append(value)
        return next(from_main)

    model, perf, args = _resnet(), _pending(), _training_args(tmp_path, gpu=False)
    perf.channels_last = "auto"
    lines = apply_device_settings(
        model, args, perf, "image", facts=CPU_BF16, time_steps=timer, time_formats=no_timing, broadcast=broadcast
    )
    assert timer.calls == [] and given == [None, None]
    assert args.bf16 and perf.resolved_precision == "bf16" and perf.precision_evidence == "timed on rank 0"
    assert lines[0] == "precision: bf16 (timed on rank 0)"
    assert _is_channels_last(model) and "channels_last: on" in "\n".join(lines)


def test_the_trainer_runs_the_precision_set_after_its_arguments_were_built(tmp_path):
    """TrainingArguments derives mixed_precision when it is built; the Accelerator reads that, not bf16."""
    args = _training_args(tmp_path, gpu=False)
    args.use_cpu = False
    apply_device_settings(
        TinyClassifier(), args, _pending(), "text", facts=CPU_BF16, time_steps=FakeTimer(), broadcast=lambda v: v
    )
    trainer = Trainer(model=TinyClassifier(), args=args, train_dataset=_separable(8, 0))
    assert trainer.accelerator.mixed_precision == "bf16" and trainer.accelerator.native_amp


def _model_state(model: nn.Module) -> dict:
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modes": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "contiguous": {name: p.is_contiguous() for name, p in model.named_parameters()},
    }


def _tiny_cnn() -> nn.Module:
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    model.layer1.eval()  # a frozen block, in eval mode with its BatchNorm statistics fixed
    model.conv1[0].weight.requires_grad_(False)
    return model


def _tiny_bert() -> nn.Module:
    model = tiny_bert_classifier().train()  # dropout 0.1: every step draws from torch's generator
    model.bert.embeddings.requires_grad_(False)
    return model


@pytest.mark.parametrize(
    ("build", "modality", "shape", "setups"),
    [
        (
            _tiny_cnn,
            "image",
            (2, 3, 32, 32),
            {
                "fp32": StepSetup(),
                "bf16": StepSetup(autocast=torch.bfloat16),
                "channels_last": StepSetup(channels_last=True),
            },
        ),
        (_tiny_bert, "text", (2, 16), {"fp32": StepSetup(), "bf16": StepSetup(autocast=torch.bfloat16)}),
    ],
    ids=["cnn", "bert"],
)
def test_timing_training_steps_leaves_the_model_and_the_random_state_as_they_were(build, modality, shape, setups):
    torch.manual_seed(0)
    model = build()
    before, rng = _model_state(model), torch.get_rng_state()
    seconds = time_training_steps(model, example_inputs(model, modality, shape), setups, repeats=1)
    assert set(seconds) == set(setups) and all(0 < s < float("inf") for s in seconds.values())
    after = _model_state(model)
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["contiguous"] == before["contiguous"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for name, tensor in before["tensors"].items():  # weights and buffers (BatchNorm statistics) bit for bit
        assert torch.equal(after["tensors"][name], tensor), name
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())


def test_a_recipe_records_the_timed_precision_and_a_rerun_is_still_recognised(tmp_path, tiny_bert, monkeypatch):
    for module in (warmstart.precision.hardware, warmstart.precision.choice, warmstart.precision.devices):
        monkeypatch.setattr(module, "cpu_flags", lambda cpuinfo=None: set(AVX512_BF16))
    monkeypatch.setattr(warmstart.precision.devices, "time_training_steps", lambda *a, **k: {"fp32": 0.3, "bf16": 0.1})
    argv = ["--model_name_or_path", str(tiny_bert), "--train_file", "train.csv", "--output_dir", str(tmp_path)]
    argv += ["--report_to", "none", "--use_cpu", "true", "--max_seq_length", "24"]
    args = parse_config(argv, "text_classification").copy()
    run = start_classification(args)
    assert run.plan.decisions["precision"] == "no" and args.performance.resolved_precision == PENDING
    apply_devices(args, run, tiny_bert_classifier())
    config = {**run.config, **run.plan.record()}
    assert config["precision"] == "bf16" and args.training.bf16  # planned: the Trainer is built with it
    assert config["plan"]["bf16"] == {"value": True, "reason": "the timed precision: bf16"}
    assert config["device_settings"][0].startswith(
        "precision: bf16 (auto on the CPU (native bf16 flags: avx512_bf16): training step of 8x24 tokens: fp32 300 ms"
    )
    assert config["performance"]["resolved_precision"] == PENDING  # as parsed: what a rerun compares

    (tmp_path / "model.safetensors").write_bytes(b"")
    write_resolved_config(tmp_path, config)
    start_classification(parse_config(argv, "text_classification").copy())  # the same command again: recognised


# ------------------------------------------------------------------------------------------ bf16 matches fp32


class TinyClassifier(nn.Module):
    """A 3-layer MLP: its matmuls are what autocast runs in bf16."""

    def __init__(self, features: int = 16, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 2)
        )

    def forward(self, x, labels=None):
        logits = self.net(x).float()
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def _separable(n: int, seed: int) -> ListDataset:
    """Two classes split by a fixed random hyperplane in 16 dimensions; points near it keep accuracy below 100%."""
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))
    direction = torch.randn(16, generator=torch.Generator().manual_seed(123))
    return ListDataset([{"x": a, "labels": b} for a, b in zip(x, (x @ direction > 0).long())])


def _train(tmp_path: Path, bf16: bool) -> tuple[float, nn.Module, set[torch.dtype]]:
    set_seed(0)
    model = TinyClassifier()
    dtypes: set[torch.dtype] = set()
    model.net[0].register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
    args = TrainingArguments(
        output_dir=str(tmp_path / ("bf16" if bf16 else "fp32")),
        use_cpu=True,
        bf16=bf16,
        num_train_epochs=2,
        per_device_train_batch_size=32,
        learning_rate=1e-2,
        seed=0,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_separable(512, 0))
    trainer.train()
    predicted = trainer.predict(_separable(512, 1))
    return float((predicted.predictions.argmax(-1) == predicted.label_ids).mean()), model, dtypes


# Seed-to-seed spread of fp32 alone on this task was 1.4 points (0.959-0.973 over seeds 0-3); bf16 and fp32 with the
# same seed differed by at most 0.2 points. 2 points is about 10 of the 512 validation examples.
ACCURACY_NOISE = 0.02


def test_bf16_autocast_trains_as_accurately_as_fp32(tmp_path):
    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (amx_bf16 / avx512_bf16): bf16 would run 100x+ slower here")
    fp32_accuracy, fp32_model, fp32_dtypes = _train(tmp_path, bf16=False)
    bf16_accuracy, bf16_model, bf16_dtypes = _train(tmp_path, bf16=True)
    assert fp32_dtypes == {torch.float32} and torch.bfloat16 in bf16_dtypes  # autocast really ran in bf16
    assert any(not torch.equal(a, b) for a, b in zip(fp32_model.parameters(), bf16_model.parameters()))
    assert fp32_accuracy >= 0.93 and bf16_accuracy >= 0.93
    assert abs(fp32_accuracy - bf16_accuracy) <= ACCURACY_NOISE


# ------------------------------------------------------------------------------------------- several processes

_TWO_RANKS = """
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist

from warmstart import PerformanceArguments
from warmstart.precision import PENDING, DeviceFacts, apply_device_settings

dist.init_process_group("gloo")
me = dist.get_rank()
args = SimpleNamespace(
    per_device_train_batch_size=2, device=torch.device("cpu"), tf32=None, torch_compile=False,
    dataloader_num_workers=0, bf16=False, mixed_precision="no", use_cpu=False,
)
perf = PerformanceArguments(channels_last="false")
perf.resolved_precision, perf.precision_evidence = PENDING, "to be timed"
timed = []

def timer(model, inputs, *, device):  # each rank alone would choose differently
    timed.append(me)
    return {"fp32": 0.4, "bf16": 0.2} if me == 0 else {"fp32": 0.2, "bf16": 0.4}

model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
facts = DeviceFacts("cpu", 2, native_bf16_flags=("avx512_bf16",))
apply_device_settings(model, args, perf, "image", input_size=(3, 2, 2), facts=facts, time_steps=timer)
print(f"rank {me}: {perf.resolved_precision} bf16={args.bf16} timed={timed}", flush=True)
dist.destroy_process_group()
"""


def test_two_processes_train_in_the_precision_the_main_process_timed(tmp_path):
    script = tmp_path / "two_ranks.py"
    script.write_text(_TWO_RANKS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    done = subprocess.run(
        torchrun_command(script), env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rank 0: bf16 bf16=True timed=[0]" in done.stdout
    assert "rank 1: bf16 bf16=True timed=[]" in done.stdout
