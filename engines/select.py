"""Backend auto-selection: TensorRT > ORT-CUDA > ORT-CPU, overridable by config.

:func:`probe_machine` looks at this machine for real (imports tensorrt/pycuda if present, asks the
CUDA driver for a GPU, asks ONNX Runtime for its providers). :func:`choose_backend` is a pure
function of config + probe and returns a :class:`BackendChoice` whose ``reason`` is written for
humans: callers log it and store ``choice.to_json()`` as ``engine`` in every result.json.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass, replace
from pathlib import Path

from engines.api import Backend, BackendChoice
from engines.cache import GpuIdentity, Progress
from engines.config import EngineConfig
from engines.errors import BackendUnavailableError, EngineError
from engines.ort_backend import CUDA_PROVIDER, OrtBackend, available_providers, ort_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MachineProbe:
    """What this machine offers; ``*_error`` says why something is missing."""

    ort_version: str
    ort_providers: tuple[str, ...]
    trt_version: str | None = None
    trt_error: str | None = None
    gpu: GpuIdentity | None = None
    gpu_error: str | None = None

    @property
    def has_tensorrt(self) -> bool:
        return self.trt_version is not None and self.gpu is not None

    @property
    def has_ort_cuda(self) -> bool:
        return CUDA_PROVIDER in self.ort_providers

    def versions(self) -> tuple[tuple[str, str], ...]:
        v = [("onnxruntime", self.ort_version), ("python", platform.python_version())]
        if self.trt_version:
            v.append(("tensorrt", self.trt_version))
        if self.gpu:
            v.append(("gpu", f"{self.gpu.name} (sm {self.gpu.sm})"))
        return tuple(sorted(v))


def probe_machine(config: EngineConfig) -> MachineProbe:
    """Probe TensorRT, the GPU and ONNX Runtime on this machine (no exceptions: absences are recorded)."""
    from engines.trt_build import gpu_identity, nvidia_driver_version, trt_version

    probe = MachineProbe(ort_version=ort_version(), ort_providers=available_providers())
    try:
        probe = replace(probe, trt_version=trt_version())
    except BackendUnavailableError as exc:
        probe = replace(probe, trt_error=str(exc))
    try:
        probe = replace(probe, gpu=gpu_identity(config.device_id))
    except BackendUnavailableError as exc:
        driver = nvidia_driver_version()
        drv = f"NVIDIA driver {driver} loaded" if driver else "no NVIDIA driver loaded"
        probe = replace(probe, gpu_error=f"{exc}; {drv}")
    log.debug("machine probe: %s", probe)
    return probe


def _no_trt_why(probe: MachineProbe) -> str:
    parts = []
    if probe.gpu is None:
        parts.append(f"no NVIDIA GPU ({probe.gpu_error})")
    if probe.trt_version is None:
        parts.append(f"no TensorRT ({probe.trt_error})")
    return ", ".join(parts) or "TensorRT unavailable"


def _no_cuda_why(probe: MachineProbe) -> str:
    providers = ", ".join(probe.ort_providers)
    return f"ONNX Runtime {probe.ort_version} has no {CUDA_PROVIDER} (providers: {providers})"


def choose_backend(config: EngineConfig, probe: MachineProbe) -> BackendChoice:
    """Pick the backend for ``config.backend`` on the probed machine, with the reason.

    Raises :class:`BackendUnavailableError` when a forced backend cannot run here.
    """
    versions = probe.versions()
    if config.backend == "tensorrt":
        if not probe.has_tensorrt or probe.gpu is None:
            raise BackendUnavailableError(f"backend=tensorrt forced by config but {_no_trt_why(probe)}")
        return BackendChoice(
            "tensorrt", f"forced by config (backend=tensorrt); GPU {probe.gpu.name}", versions
        )
    if config.backend == "ort-cuda":
        if not probe.has_ort_cuda:
            raise BackendUnavailableError(f"backend=ort-cuda forced by config but {_no_cuda_why(probe)}")
        return BackendChoice("ort-cuda", "forced by config (backend=ort-cuda)", versions)
    if config.backend == "ort-cpu":
        return BackendChoice("ort-cpu", f"forced by config (backend=ort-cpu); {_threads(config)}", versions)
    if probe.has_tensorrt:
        assert probe.gpu is not None
        return BackendChoice(
            "tensorrt",
            f"auto: TensorRT {probe.trt_version} with {probe.gpu.name} (sm {probe.gpu.sm}), the fastest here",
            versions,
        )
    if probe.has_ort_cuda:
        return BackendChoice(
            "ort-cuda", f"auto: {_no_trt_why(probe)}; ONNX Runtime has {CUDA_PROVIDER}", versions
        )
    return BackendChoice(
        "ort-cpu",
        f"auto: {_no_trt_why(probe)}; {_no_cuda_why(probe)}; running on CPU, {_threads(config)}",
        versions,
    )


def _threads(config: EngineConfig) -> str:
    return f"{config.cpu_threads or 'all'} intra-op threads"


def open_backend(
    onnx_path: Path,
    config: EngineConfig,
    probe: MachineProbe | None = None,
    progress: Progress | None = None,
) -> tuple[Backend, BackendChoice]:
    """Open ``onnx_path`` on the chosen backend; log and return the choice.

    With ``backend=auto``, a TensorRT engine that cannot be built/loaded falls back to the next
    backend and the reason says so; a forced backend fails instead.
    """
    probe = probe or probe_machine(config)
    choice = choose_backend(config, probe)
    backend: Backend
    if choice.backend == "tensorrt":
        try:
            backend = _open_tensorrt(onnx_path, config, progress)
        except EngineError as exc:
            if config.backend != "auto":
                raise
            fallback = "ort-cuda" if probe.has_ort_cuda else "ort-cpu"
            log.warning("TensorRT failed for %s (%s); falling back to %s", onnx_path.name, exc, fallback)
            choice = BackendChoice(
                fallback, f"auto: TensorRT failed for this model ({exc}); fell back", choice.versions
            )
            backend = OrtBackend(onnx_path, config, device="cuda" if fallback == "ort-cuda" else "cpu")
    elif choice.backend == "ort-cuda":
        backend = OrtBackend(onnx_path, config, device="cuda")
    else:
        backend = OrtBackend(onnx_path, config, device="cpu")
    log.info("%s: backend %s (%s)", onnx_path.name, choice.backend, choice.reason)
    return backend, choice


def _open_tensorrt(onnx_path: Path, config: EngineConfig, progress: Progress | None) -> Backend:
    from engines.api import read_model_info
    from engines.trt_build import ensure_trt_engine
    from engines.trt_runtime import TrtBackend

    result = ensure_trt_engine(onnx_path, config, progress)
    return TrtBackend(result.plan_path, read_model_info(onnx_path), config)
