"""TensorRT path: what runs without a GPU here, and GPU tests (marked ``gpu``) that skip visibly."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.config import EngineConfig
from engines.errors import BackendUnavailableError, ModelFileError
from engines.ort_backend import OrtBackend
from engines.select import probe_machine
from engines.trt_build import fp16_sibling, plan_build, trt_major
from tests.reference_onnx import export_reference


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_reference(tmp_path_factory.mktemp("trt"), "landmark2d", fp16=True)


def test_engines_import_without_tensorrt_or_torch() -> None:
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] in ('torch', 'tensorrt', 'pycuda'):\n"
        "        raise ImportError('blocked ' + name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "import engines.api, engines.config, engines.ort_backend, engines.trt_build, engines.trt_runtime\n"
        "import engines.cache, engines.select, engines.opcheck, engines.triton, engines.bench\n"
        "import engines.trt_export\n"
        "import engines.fp16\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_fp16_strategy_follows_tensorrt_major_version(onnx_file: Path, tmp_path: Path) -> None:
    fp32 = plan_build(onnx_file, EngineConfig(cache_dir=tmp_path), "10.8.0")
    assert (fp32.precision, fp32.use_fp16_flag, fp32.strongly_typed) == ("fp32", False, False)
    trt10 = plan_build(onnx_file, EngineConfig(cache_dir=tmp_path, fp16=True), "10.8.0")
    assert trt10.use_fp16_flag and not trt10.strongly_typed and trt10.onnx_path == onnx_file
    trt11 = plan_build(onnx_file, EngineConfig(cache_dir=tmp_path, fp16=True), "11.1.0")
    assert trt11.strongly_typed and not trt11.use_fp16_flag
    assert trt11.onnx_path == fp16_sibling(onnx_file) and trt11.onnx_path.is_file()
    assert trt_major("11.1.0.3") == 11


def test_trt11_fp16_without_fp16_onnx_says_how_to_make_it(tmp_path: Path, onnx_file: Path) -> None:
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(onnx_file.read_bytes())
    with pytest.raises(ModelFileError) as err:
        plan_build(lonely, EngineConfig(cache_dir=tmp_path, fp16=True), "11.0.0")
    assert err.value.reason == "no_fp16_onnx" and "--fp16" in str(err.value)


def test_export_tensorrt_cli_says_why_it_cannot_build_here(onnx_file: Path, tmp_path: Path) -> None:
    if probe_machine(EngineConfig()).has_tensorrt:
        pytest.skip("TensorRT and a GPU are present here")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance.cli.main",
            "export",
            "tensorrt",
            "--onnx",
            str(onnx_file),
            "--cache-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "[no_gpu_tensorrt]" in out.stderr and "pip install .[gpu]" in out.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written when no engine can be built"


# --- GPU tests: real TensorRT builds and runs. They skip here (no NVIDIA GPU) with the reason. ---


def _require_gpu() -> None:
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("no NVIDIA GPU / TensorRT: the tensorrt package is not installed (pip install .[gpu])")
    try:
        probe = probe_machine(EngineConfig())
    except BackendUnavailableError as exc:  # pragma: no cover - probe records, never raises
        pytest.skip(f"no NVIDIA GPU / TensorRT: {exc}")
    if not probe.has_tensorrt:
        pytest.skip(f"no NVIDIA GPU / TensorRT: {probe.gpu_error or probe.trt_error}")


@pytest.mark.gpu
def test_gpu_build_cache_and_parity_with_ort(onnx_file: Path, tmp_path: Path) -> None:
    _require_gpu()
    from engines.api import read_model_info
    from engines.trt_build import ensure_trt_engine
    from engines.trt_runtime import TrtBackend

    cfg = EngineConfig(cache_dir=tmp_path, max_batch=4)
    msgs: list[str] = []
    first = ensure_trt_engine(onnx_file, cfg, msgs.append)
    assert first.built and first.plan_path.is_file() and cfg.timing_cache_path.is_file()
    assert any("[build]" in m for m in msgs), "build progress must be shown"
    again = ensure_trt_engine(onnx_file, cfg, msgs.append)
    assert not again.built and again.plan_path == first.plan_path
    trt = TrtBackend(first.plan_path, read_model_info(onnx_file), cfg)
    ort = OrtBackend(onnx_file, cfg)
    try:
        for batch in (1, 3):
            x = np.random.default_rng(batch).random((batch, 1, 64, 64), dtype=np.float32)
            got, want = trt.run({"film": x})["heatmaps"], ort.run({"film": x})["heatmaps"]
            assert got.shape == want.shape
            assert np.max(np.abs(got - want)) < 1e-3
    finally:
        trt.close()
        ort.close()


@pytest.mark.gpu
def test_gpu_fp16_engine_close_to_fp32(onnx_file: Path, tmp_path: Path) -> None:
    _require_gpu()
    from engines.api import read_model_info
    from engines.trt_build import ensure_trt_engine
    from engines.trt_runtime import TrtBackend

    cfg = EngineConfig(cache_dir=tmp_path, fp16=True)
    res = ensure_trt_engine(onnx_file, cfg)
    assert res.key.precision == "fp16"
    x = np.random.default_rng(0).random((1, 1, 64, 64), dtype=np.float32)
    trt = TrtBackend(res.plan_path, read_model_info(onnx_file), cfg)
    ort = OrtBackend(onnx_file, cfg)
    try:
        got, want = trt.run({"film": x})["heatmaps"], ort.run({"film": x})["heatmaps"]
        assert np.max(np.abs(got - want)) < 2e-2 * max(1.0, float(np.abs(want).max()))
    finally:
        trt.close()
        ort.close()


@pytest.mark.gpu
def test_gpu_auto_selection_picks_tensorrt(onnx_file: Path, tmp_path: Path) -> None:
    _require_gpu()
    from engines.select import open_backend

    backend, choice = open_backend(onnx_file, EngineConfig(cache_dir=tmp_path))
    try:
        assert choice.backend == backend.name == "tensorrt"
    finally:
        backend.close()
