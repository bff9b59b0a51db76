"""Running an ONNX export with ONNX Runtime: finding a model directory's export, refusing one that is stale (its
weights changed after it was exported), and the session that takes the batches :mod:`warmstart.prediction` makes."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from warmstart.errors import WarmstartError

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
REPORT_NAME = "export_report.json"
# precision -> the graph's file name in the export directory
MODEL_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
ONNX_EXTRA = 'pip install "warmstart[onnx]"'
# the weight files an export is made from, whose digests it records
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def require_onnx_runtime(what: str = "--backend onnx") -> Any:
    """``onnxruntime``, imported; one line naming the extra to install where it is missing."""
    try:
        import onnxruntime
    except ImportError:
        raise WarmstartError(f"{what} needs ONNX Runtime, which is not installed: {ONNX_EXTRA}") from None
    return onnxruntime


def weights_digest(model_dir: str | Path) -> dict[str, str]:
    """The sha256 of each weight file of a model directory (``*.safetensors``, ``pytorch_model*.bin``), by name: what
    an export records so that a later change of the weights makes it stale."""
    files = sorted({p for pattern in _WEIGHT_PATTERNS for p in Path(model_dir).glob(pattern) if p.is_file()})
    digests = {}
    for path in files:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        digests[path.name] = digest.hexdigest()
    return digests


def export_command(model_dir: Path, precision: str = "fp32", overwrite: bool = False) -> str:
    """The command that makes (or remakes) a model directory's export."""
    flags = " --quantize int8" if precision == "int8" else ""
    return f"python recipes/export.py --model_name_or_path {model_dir} --format onnx{flags}" + (
        " --overwrite" if overwrite else ""
    )


def read_export(model_dir: Path, precision: str = "fp32") -> tuple[dict[str, Any], Path]:
    """A model directory's export report and the path of its graph in ``precision``, checked to be there and made
    from the weights the directory holds now.

    Raises:
        WarmstartError: no export (saying how to make one), no graph in that precision, or a stale export.
    """
    folder = model_dir / ONNX_DIR
    report_path = folder / REPORT_NAME
    if not report_path.is_file():
        raise WarmstartError(
            f"{model_dir} has no ONNX export ({folder}/{MODEL_FILES[precision]}): make one with "
            f"{export_command(model_dir, precision)}"
        )
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError) as err:
        raise WarmstartError(
            f"{report_path} cannot be read ({type(err).__name__}): re-export with "
            f"{export_command(model_dir, precision, overwrite=True)}"
        ) from None
    path = folder / MODEL_FILES[precision]
    if MODEL_FILES[precision] not in (report.get("files") or {}) or not path.is_file():
        raise WarmstartError(
            f"the ONNX export in {folder} has no {precision} graph ({MODEL_FILES[precision]}): re-export with "
            f"{export_command(model_dir, precision, overwrite=True)}"
        )
    recorded, current = report.get("weights") or {}, weights_digest(model_dir)
    if recorded != current:
        changed = sorted(name for name in {*recorded, *current} if recorded.get(name) != current.get(name))
        raise WarmstartError(
            f"the ONNX export in {folder} is stale: {', '.join(changed) or 'the weights'} changed after it was "
            f"exported ({report.get('exported_at', 'at an unknown time')}): re-export with "
            f"{export_command(model_dir, precision, overwrite=True)}"
        )
    return report, path


def onnx_device(device: torch.device, precision: str, onnxruntime: Any, asked: str = "cuda") -> torch.device:
    """Where ONNX Runtime runs the graph: CUDA where asked and the installed ONNX Runtime has its CUDA provider; the
    CPU otherwise, and for int8 graphs, whose kernels are the CPU's. ``auto`` (``asked``) that resolved to CUDA falls
    back to the CPU where ONNX Runtime cannot use it.

    Raises:
        WarmstartError: ``--device cuda`` with an ONNX Runtime that has no CUDA provider, or with an int8 graph.
    """
    if device.type != "cuda":
        return device
    cuda_provider = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if asked == "auto" and (precision == "int8" or not cuda_provider):
        logger.info(
            "ONNX Runtime runs on the CPU: %s", "int8 graphs run there" if precision == "int8" else "no CUDA provider"
        )
        return torch.device("cpu")
    if precision == "int8":
        raise WarmstartError(
            "int8 ONNX graphs run on the CPU (ONNX Runtime's int8 kernels for them are the CPU's): use --device cpu, "
            "or --precision fp32 on the GPU"
        )
    if not cuda_provider:
        raise WarmstartError(
            "the installed ONNX Runtime has no CUDA provider: pip install onnxruntime-gpu (in place of onnxruntime), "
            "or use --device cpu"
        )
    return device


class OnnxSession:
    """An ONNX Runtime session over an exported classifier: takes the tensors a warmstart batch holds and returns the
    graph's logits as a float32 CPU tensor.

    Attributes:
        path: the graph's file.
        input_names: the graph's inputs (``pixel_values``; or ``input_ids``, ``attention_mask``...), fed by name.
        providers: the execution providers the session uses, in order.
    """

    def __init__(self, path: Path, device: torch.device, onnxruntime: Any, threads: int | None = None):
        options = onnxruntime.SessionOptions()
        # as many threads as torch would use: torchrun's OMP_NUM_THREADS shares the cores between processes
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3
        if device.type == "cuda":
            providers: list[Any] = [
                ("CUDAExecutionProvider", {"device_id": device.index or 0}),
                "CPUExecutionProvider",
            ]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for a graph it cannot run
            reason = " ".join(str(err).split())[:200]
            raise WarmstartError(f"ONNX Runtime cannot run {path} ({reason}): re-export it") from None
        self.path = path
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.providers = self.session.get_providers()

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [name for name in self.input_names if name not in batch]
        if missing:
            raise WarmstartError(
                f"the ONNX graph {self.path} takes {', '.join(missing)}, which the preprocessing does not make: "
                "re-export the model"
            )
        feeds = {name: batch[name].detach().cpu().numpy() for name in self.input_names}
        return torch.from_numpy(self.session.run(None, feeds)[0])
