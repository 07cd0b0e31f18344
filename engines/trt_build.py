"""Build TensorRT engines from ONNX with the TensorRT 10/11 Python API.

``tensorrt`` and ``pycuda`` are imported lazily, so this module imports on CPU-only machines; every
entry point that needs them raises :class:`BackendUnavailableError` saying precisely what is missing.

Build recipe (TensorRT Python API):

* ``trt.Builder(logger)``; ``builder.create_network(flags)``: flags 0 on TRT 10 (explicit batch is
  the only mode), ``STRONGLY_TYPED`` when building an fp16 ONNX (required in spirit on TRT 11, where
  every network is strongly typed and the weak-typing flag ``BuilderFlag.FP16`` was removed);
* ``trt.OnnxParser(network, logger).parse(bytes)``; on failure every ``parser.get_error(i)`` is
  reported (node, operator, description);
* ``config.set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)``;
* one optimisation profile (``builder.create_optimization_profile()``, ``set_shape(name, min, opt,
  max)``) with the dynamic batch range;
* a persisted timing cache (``config.create_timing_cache(bytes)`` / ``set_timing_cache``; written back
  after the build with ``get_timing_cache().serialize()``, atomically);
* FP16: TRT 10 sets ``BuilderFlag.FP16`` on the fp32 ONNX; TRT >= 11 builds a strongly-typed network
  from the fp16 ONNX (``<model>.fp16.onnx`` written at export time, see :mod:`engines.fp16`);
* ``config.progress_monitor``: a ``trt.IProgressMonitor`` that reports build phases;
* ``builder.build_serialized_network(network, config)``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from engines.api import ModelInfo, read_model_info
from engines.cache import (
    EngineKey,
    EngineResult,
    GpuIdentity,
    InputProfile,
    Precision,
    Progress,
    atomic_write,
    ensure_engine,
    make_key,
    make_profile,
    sha256_file,
)
from engines.config import EngineConfig
from engines.errors import BackendUnavailableError, EngineBuildError, ModelFileError

log = logging.getLogger(__name__)

FP16_SUFFIX = ".fp16.onnx"


def import_tensorrt() -> ModuleType:
    """``import tensorrt`` or a :class:`BackendUnavailableError` naming the fix."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"TensorRT is not installed ({exc}); on a machine with an NVIDIA GPU run `pip install .[gpu]`",
            reason="no_tensorrt",
        ) from exc
    return tensorrt


def import_pycuda() -> ModuleType:
    """``import pycuda.driver`` (initialised) or a :class:`BackendUnavailableError`."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise BackendUnavailableError(
            f"pycuda is not installed ({exc}); `pip install .[gpu]` on a machine with an NVIDIA GPU",
            reason="no_pycuda",
        ) from exc
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:  # pycuda.driver.Error: no driver, no device
        raise BackendUnavailableError(f"CUDA driver not usable: {exc}", reason="no_cuda_driver") from exc
    if count < 1:
        raise BackendUnavailableError("no CUDA device found", reason="no_gpu")
    return cuda


def nvidia_driver_version() -> str | None:
    """The loaded NVIDIA kernel driver version (Linux ``/proc/driver/nvidia/version``), or None."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts):
            return word
    return "unknown"


def trt_version() -> str:
    return str(import_tensorrt().__version__)


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError as exc:
        raise EngineBuildError(f"cannot read TensorRT major version from {version!r}") from exc


def gpu_identity(device_id: int = 0) -> GpuIdentity:
    """Name and compute capability of CUDA device ``device_id`` (via pycuda)."""
    cuda = import_pycuda()
    if device_id >= cuda.Device.count():
        raise BackendUnavailableError(
            f"CUDA device {device_id} requested, {cuda.Device.count()} present", reason="no_gpu"
        )
    dev = cuda.Device(device_id)
    major, minor = dev.compute_capability()
    return GpuIdentity(name=str(dev.name()), compute_capability=(int(major), int(minor)))


@dataclass(frozen=True)
class BuildPlan:
    """What to build: the ONNX actually parsed, its model info, precision and how FP16 is obtained."""

    onnx_path: Path
    info: ModelInfo
    precision: Precision
    strongly_typed: bool
    use_fp16_flag: bool


def plan_build(onnx_path: Path, config: EngineConfig, version: str) -> BuildPlan:
    """Decide which ONNX to parse and how, from the TensorRT major version (pure apart from file checks).

    * fp32: the ONNX as exported, weakly typed network (TRT 10) / default typing (TRT 11).
    * fp16 on TRT 10: same ONNX, ``BuilderFlag.FP16``.
    * fp16 on TRT >= 11: the strongly-typed ``<stem>.fp16.onnx`` next to it (export writes it).
    """
    info = read_model_info(onnx_path)
    if not config.fp16:
        return BuildPlan(onnx_path, info, "fp32", strongly_typed=False, use_fp16_flag=False)
    if trt_major(version) < 11:
        return BuildPlan(onnx_path, info, "fp16", strongly_typed=False, use_fp16_flag=True)
    fp16_path = fp16_sibling(onnx_path)
    if not fp16_path.is_file():
        raise ModelFileError(
            f"TensorRT {version} builds FP16 only from a strongly-typed fp16 ONNX; {fp16_path} is missing; "
            f"write it with `xr3d export onnx --fp16` (or engines.fp16.convert_to_fp16), or set fp16 off",
            reason="no_fp16_onnx",
        )
    return BuildPlan(fp16_path, info, "fp16", strongly_typed=True, use_fp16_flag=False)


def fp16_sibling(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name.removesuffix(".onnx") + FP16_SUFFIX)


def _progress_monitor(trt: Any, say: Progress) -> Any:
    """A ``trt.IProgressMonitor`` reporting phase starts/ends (steps at most every 2 s)."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._last = 0.0
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._steps[phase_name] = num_steps
            indent = "  " if parent_phase else ""
            say(f"{indent}[build] {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            now = time.monotonic()
            if now - self._last > 2.0:
                self._last = now
                say(f"[build]   {phase_name}: {step + 1}/{self._steps.get(phase_name, '?')}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            log.debug("[build] %s done", phase_name)

    return _Monitor()


def parser_errors(parser: Any) -> list[str]:
    """Every error the ``OnnxParser`` recorded, as 'node N (op): description'."""
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node()
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        where = f"node {node}" + (f" ({op})" if op else "") if node >= 0 else "graph"
        out.append(f"{where}: {err.desc()}")
    return out


def build_serialized(
    plan: BuildPlan,
    profile: tuple[InputProfile, ...],
    config: EngineConfig,
    progress: Progress | None = None,
) -> bytes:
    """Parse ``plan.onnx_path`` and build a serialized engine; updates the persisted timing cache."""
    trt = import_tensorrt()
    say = progress or log.info
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if plan.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(plan.onnx_path.read_bytes()):
        errors = parser_errors(parser)
        raise EngineBuildError(
            f"TensorRT {trt.__version__} ONNX parser rejected {plan.onnx_path.name}: " + "; ".join(errors),
            reason="onnx_parse_failed",
        )
    bconf = builder.create_builder_config()
    bconf.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_bytes)
    if plan.use_fp16_flag:
        bconf.set_flag(trt.BuilderFlag.FP16)
    opt = builder.create_optimization_profile()
    for p in profile:
        opt.set_shape(p.name, p.min, p.opt, p.max)
    bconf.add_optimization_profile(opt)
    cache_path = config.timing_cache_path
    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    timing = bconf.create_timing_cache(blob)
    if not bconf.set_timing_cache(timing, ignore_mismatch=False):
        log.warning("timing cache %s rejected (other GPU/TensorRT?); starting a fresh one", cache_path)
        bconf.set_timing_cache(bconf.create_timing_cache(b""), ignore_mismatch=False)
    bconf.progress_monitor = _progress_monitor(trt, say)
    serialized = builder.build_serialized_network(network, bconf)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT {trt.__version__} could not build {plan.onnx_path.name} (see the TensorRT log above)"
        )
    atomic_write(cache_path, bytes(memoryview(bconf.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


def build_key(plan: BuildPlan, config: EngineConfig, gpu: GpuIdentity, version: str) -> EngineKey:
    return make_key(
        plan.info.name,
        gpu,
        version,
        sha256_file(plan.onnx_path),
        make_profile(plan.info, config),
        plan.precision,
    )


def ensure_trt_engine(
    onnx_path: Path, config: EngineConfig, progress: Progress | None = None
) -> EngineResult:
    """The cached engine for ``onnx_path`` on this GPU/TensorRT, built (with progress) when missing/stale."""
    version = trt_version()
    gpu = gpu_identity(config.device_id)
    plan = plan_build(onnx_path, config, version)
    key = build_key(plan, config, gpu, version)
    return ensure_engine(
        config.cache_dir, key, lambda k: build_serialized(plan, k.profile, config, progress), progress
    )
