"""``xr3d export tensorrt``: build (or reuse) TensorRT engines for ONNX files, without torch.

Only argparse glue lives in ``export/export_cli.py``; this module does the work so a runtime-only
install (no torch) can prepare engines on the clinic box. When TensorRT or the GPU is missing it
says exactly which and how to fix it, before touching any file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engines.cache import Progress
from engines.config import EngineConfig
from engines.errors import BackendUnavailableError, EngineError, ModelFileError

log = logging.getLogger(__name__)

Status = Literal["built", "cached", "failed"]


@dataclass(frozen=True)
class BuildOutcome:
    onnx: Path
    status: Status
    detail: str
    plan: Path | None = None
    seconds: float = 0.0


def find_onnx(paths: Sequence[Path], all_dir: Path | None) -> list[Path]:
    """Explicit files, or every ``*.onnx`` (not ``*.fp16.onnx``) in ``all_dir``."""
    files = list(paths)
    if all_dir is not None:
        if not all_dir.is_dir():
            raise ModelFileError(f"{all_dir}: no such folder of ONNX models", reason="file_not_found")
        files += sorted(p for p in all_dir.glob("*.onnx") if not p.name.endswith(".fp16.onnx"))
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise ModelFileError(f"no such ONNX file(s): {', '.join(missing)}", reason="file_not_found")
    if not files:
        raise ModelFileError("no ONNX files to build (give --onnx FILE or --all DIR)", reason="no_models")
    return files


def require_tensorrt(config: EngineConfig) -> str:
    """Raise :class:`BackendUnavailableError` naming every missing piece; return a one-line summary."""
    from engines.select import probe_machine

    probe = probe_machine(config)
    if probe.has_tensorrt and probe.gpu is not None:
        return f"TensorRT {probe.trt_version} on {probe.gpu.name} (sm {probe.gpu.sm})"
    missing = []
    if probe.gpu is None:
        missing.append(f"no usable NVIDIA GPU: {probe.gpu_error}")
    if probe.trt_version is None:
        missing.append(f"TensorRT missing: {probe.trt_error}")
    raise BackendUnavailableError(
        "cannot build TensorRT engines on this machine: "
        + "; ".join(missing)
        + ". Engines are built on the clinic box (NVIDIA driver + `pip install .[gpu]`); "
        "the ONNX files run here on ONNX Runtime.",
        reason="no_gpu_tensorrt",
    )


def build_engines(files: Sequence[Path], config: EngineConfig, progress: Progress) -> list[BuildOutcome]:
    """Build or reuse an engine per file; one failure does not stop the others."""
    from engines.trt_build import ensure_trt_engine

    progress(require_tensorrt(config))
    out = []
    for i, f in enumerate(files, 1):
        progress(f"[{i}/{len(files)}] {f.name}")
        try:
            res = ensure_trt_engine(f, config, progress)
        except EngineError as exc:
            out.append(BuildOutcome(f, "failed", str(exc)))
            continue
        out.append(
            BuildOutcome(f, "built" if res.built else "cached", res.reason, res.plan_path, res.build_seconds)
        )
    return out
