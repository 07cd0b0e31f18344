"""Backend selection with the real probes of this CPU-only machine, plus the ordering rules."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from engines.api import BackendChoice
from engines.cache import GpuIdentity
from engines.config import EngineConfig
from engines.errors import BackendUnavailableError
from engines.ort_backend import OrtBackend
from engines.select import MachineProbe, choose_backend, open_backend, probe_machine
from tests.reference_onnx import export_reference


def _has_gpu_stack() -> bool:
    p = probe_machine(EngineConfig())
    return p.has_tensorrt or p.has_ort_cuda


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_reference(tmp_path_factory.mktemp("sel"), "volume3d")


def test_this_cpu_box_picks_ort_cpu_and_says_why(tmp_path: Path) -> None:
    if _has_gpu_stack():
        pytest.skip("this machine has a GPU stack; the CPU-only expectation does not apply")
    cfg = EngineConfig(cache_dir=tmp_path)
    probe = probe_machine(cfg)
    assert probe.gpu is None and probe.trt_version is None and not probe.has_ort_cuda
    choice = choose_backend(cfg, probe)
    assert choice.backend == "ort-cpu"
    assert "no NVIDIA GPU" in choice.reason and "no TensorRT" in choice.reason
    assert "CUDAExecutionProvider" in choice.reason
    doc = choice.to_json()
    assert set(doc) == {"backend", "reason", "versions"} and "onnxruntime" in doc["versions"]
    json.dumps(doc)  # goes into result.json as "engine"


def test_forcing_gpu_backends_here_fails_with_reason(tmp_path: Path) -> None:
    if _has_gpu_stack():
        pytest.skip("this machine has a GPU stack")
    probe = probe_machine(EngineConfig(cache_dir=tmp_path))
    with pytest.raises(BackendUnavailableError, match="no TensorRT"):
        choose_backend(EngineConfig(backend="tensorrt", cache_dir=tmp_path), probe)
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        choose_backend(EngineConfig(backend="ort-cuda", cache_dir=tmp_path), probe)
    forced = choose_backend(EngineConfig(backend="ort-cpu", cpu_threads=1, cache_dir=tmp_path), probe)
    assert (
        forced.backend == "ort-cpu" and "forced by config" in forced.reason and "1 intra-op" in forced.reason
    )


def test_priority_order_tensorrt_then_ort_cuda_then_cpu() -> None:
    # Probe *records* (data, not fakes of a running GPU) for machines we do not have, to pin the order.
    cpu = MachineProbe("1.32.0", ("CPUExecutionProvider",), gpu_error="none", trt_error="none")
    cuda = dataclasses.replace(cpu, ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    full = dataclasses.replace(
        cuda, trt_version="10.8.0", gpu=GpuIdentity("NVIDIA L4", (8, 9)), trt_error=None
    )
    auto = EngineConfig()
    assert choose_backend(auto, full).backend == "tensorrt"
    assert "NVIDIA L4" in choose_backend(auto, full).reason
    assert choose_backend(auto, cuda).backend == "ort-cuda"
    assert choose_backend(auto, cpu).backend == "ort-cpu"
    assert choose_backend(EngineConfig(backend="ort-cpu"), full).backend == "ort-cpu"
    assert choose_backend(EngineConfig(backend="ort-cuda"), full).backend == "ort-cuda"
    trt_no_gpu = dataclasses.replace(full, gpu=None, gpu_error="no CUDA device found")
    assert choose_backend(auto, trt_no_gpu).backend == "ort-cuda"


def test_open_backend_runs_and_records_choice(onnx_file: Path, tmp_path: Path) -> None:
    if _has_gpu_stack():
        pytest.skip("this machine has a GPU stack")
    backend, choice = open_backend(onnx_file, EngineConfig(cache_dir=tmp_path, cpu_threads=1))
    try:
        assert isinstance(backend, OrtBackend) and backend.name == choice.backend == "ort-cpu"
        assert isinstance(choice, BackendChoice)
        import numpy as np

        out = backend.run({"volume": np.zeros((1, 1, 16, 16, 16), np.float32)})
        assert out["occupancy"].shape == (1, 1, 16, 16, 16)
    finally:
        backend.close()
