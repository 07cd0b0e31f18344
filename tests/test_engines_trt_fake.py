"""The TensorRT build/run plumbing exercised against a FAKE GPU boundary.

This machine has no NVIDIA GPU, so ``tensorrt`` and ``pycuda.driver`` are replaced here by small
in-process fakes that implement just the documented API surface our code calls (Builder, OnnxParser,
builder config, optimisation profile, timing cache, IProgressMonitor, Runtime, engine and execution
context with name-based I/O; device allocations, async copies and streams). The fake "engine" runs
the ONNX with ONNX Runtime on the CPU, and fake device memory is host bytes, so a wrong address, a
missing copy or a mis-bound tensor shows up as wrong numbers. Everything above that boundary (plan
choice, cache keys and files, progress, selection, validation, the backend) is the real code. These
tests say nothing about real TensorRT behaviour: that is what the ``gpu``-marked tests are for.
"""

from __future__ import annotations

import itertools
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engines.config import EngineConfig
from engines.errors import EngineBuildError
from engines.ort_backend import OrtBackend
from tests.reference_onnx import export_reference

PLAN_MAGIC = b"FAKEPLAN1\n"


def _fake_tensorrt(version: str, log: dict[str, Any]) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version  # type: ignore[attr-defined]

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 5

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class BuilderFlag:
        FP16 = "FP16"

    class TensorIOMode:
        INPUT = "INPUT"
        OUTPUT = "OUTPUT"

    class IProgressMonitor:
        def __init__(self) -> None:
            log["monitor_init"] = True

    class _Err:
        def __init__(self, msg: str) -> None:
            self.msg = msg

        def desc(self) -> str:
            return self.msg

        def node(self) -> int:
            return 0

        def node_operator(self) -> str:
            return "Bogus"

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.onnx: bytes | None = None

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network
            self.errors: list[_Err] = []

        def parse(self, data: bytes) -> bool:
            try:
                onnx.checker.check_model(onnx.load_from_string(data))
            except Exception as exc:
                self.errors.append(_Err(f"cannot parse: {type(exc).__name__}"))
                return False
            self.network.onnx = data
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> _Err:
            return self.errors[i]

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[Any, Any, Any]] = {}

        def set_shape(self, name: str, mn: Any, opt: Any, mx: Any) -> None:
            self.shapes[name] = (tuple(mn), tuple(opt), tuple(mx))

    class TimingCache:
        def __init__(self, blob: bytes) -> None:
            self.blob = bytes(blob)

        def serialize(self) -> bytes:
            return self.blob + b"+"

    class BuilderConfig:
        def __init__(self) -> None:
            self.pools: dict[str, int] = {}
            self.flags: set[str] = set()
            self.profiles: list[Profile] = []
            self.timing: TimingCache | None = None
            self.progress_monitor: Any = None

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            self.pools[pool] = size

        def set_flag(self, flag: str) -> None:
            self.flags.add(flag)

        def add_optimization_profile(self, p: Profile) -> int:
            self.profiles.append(p)
            return len(self.profiles) - 1

        def create_timing_cache(self, blob: bytes) -> TimingCache:
            return TimingCache(blob)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.timing = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            assert self.timing is not None
            return self.timing

    class Builder:
        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes:
            mon = config.progress_monitor
            mon.phase_start("Building engine", None, 2)
            for step in range(2):
                assert mon.step_complete("Building engine", step) is True
            mon.phase_finish("Building engine")
            log["builds"] = log.get("builds", 0) + 1
            log["last_build"] = {
                "flags": network.flags,
                "builder_flags": set(config.flags),
                "workspace": config.pools.get("WORKSPACE"),
                "profiles": [p.shapes for p in config.profiles],
                "timing_blob": config.timing.blob if config.timing else None,
            }
            assert network.onnx is not None
            return PLAN_MAGIC + network.onnx

    class Engine:
        def __init__(self, onnx_bytes: bytes) -> None:
            self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            self.inputs = [a.name for a in self.session.get_inputs()]
            self.outputs = [a.name for a in self.session.get_outputs()]

        @property
        def num_io_tensors(self) -> int:
            return len(self.inputs) + len(self.outputs)

        def get_tensor_name(self, i: int) -> str:
            return [*self.inputs, *self.outputs][i]

        def get_tensor_mode(self, name: str) -> str:
            return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> str:
            return "FLOAT"

        def create_execution_context(self) -> Context:
            return Context(self)

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            feeds = {n: np.zeros(self.shapes[n], np.float32) for n in self.engine.inputs}
            idx = self.engine.outputs.index(name)
            return tuple(self.engine.session.run(None, feeds)[idx].shape)

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            mem = log["device_memory"]
            feeds = {}
            for n in self.engine.inputs:
                shape = self.shapes[n]
                nbytes = int(np.prod(shape)) * 4
                feeds[n] = mem[self.addresses[n]].buf[:nbytes].view(np.float32).reshape(shape).copy()
            for n, out in zip(self.engine.outputs, self.engine.session.run(None, feeds), strict=True):
                raw = np.ascontiguousarray(out, np.float32).view(np.uint8).ravel()
                mem[self.addresses[n]].buf[: raw.size] = raw
            return True

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            if not data.startswith(PLAN_MAGIC):
                return None
            return Engine(data[len(PLAN_MAGIC) :])

    for obj in (
        Logger,
        NetworkDefinitionCreationFlag,
        MemoryPoolType,
        BuilderFlag,
        TensorIOMode,
        IProgressMonitor,
        OnnxParser,
        Builder,
        Runtime,
    ):
        setattr(trt, obj.__name__, obj)
    trt.nptype = lambda dt: np.float32  # type: ignore[attr-defined]
    return trt


def _fake_pycuda(log: dict[str, Any]) -> tuple[types.ModuleType, types.ModuleType]:
    drv = types.ModuleType("pycuda.driver")
    mem: dict[int, Any] = {}
    log["device_memory"] = mem
    addresses: Iterator[int] = itertools.count(0x7F0000000000, 0x100000)

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            self.buf = np.zeros(nbytes, np.uint8)
            self.address = next(addresses)
            mem[self.address] = self

        def __int__(self) -> int:
            return self.address

        def free(self) -> None:
            mem.pop(self.address, None)

    class Context:
        depth = 0

        def push(self) -> None:
            Context.depth += 1

        def pop(self) -> None:
            Context.depth -= 1

        def detach(self) -> None:
            log["detached"] = True

    class Device:
        def __init__(self, i: int) -> None:
            self.i = i

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return "Fake RTX 4000"

        def compute_capability(self) -> tuple[int, int]:
            return (8, 9)

        def retain_primary_context(self) -> Context:
            return Context()

    class Stream:
        handle = 1

        def synchronize(self) -> None:
            pass

    def memcpy_htod_async(dev: DeviceAllocation, host: np.ndarray, stream: Stream) -> None:
        raw = np.ascontiguousarray(host).view(np.uint8).ravel()
        dev.buf[: raw.size] = raw

    def memcpy_dtoh_async(host: np.ndarray, dev: DeviceAllocation, stream: Stream) -> None:
        flat = host.view(np.uint8).reshape(-1)
        flat[:] = dev.buf[: flat.size]

    drv.init = lambda: None  # type: ignore[attr-defined]
    drv.Device = Device  # type: ignore[attr-defined]
    drv.Stream = Stream  # type: ignore[attr-defined]
    drv.mem_alloc = DeviceAllocation  # type: ignore[attr-defined]
    drv.memcpy_htod_async = memcpy_htod_async  # type: ignore[attr-defined]
    drv.memcpy_dtoh_async = memcpy_dtoh_async  # type: ignore[attr-defined]
    drv.Context = Context  # type: ignore[attr-defined]
    pkg = types.ModuleType("pycuda")
    pkg.driver = drv  # type: ignore[attr-defined]
    return pkg, drv


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Install fake tensorrt + pycuda; ``log['set_version'](v)`` switches the TensorRT version."""
    log: dict[str, Any] = {}
    pkg, drv = _fake_pycuda(log)
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)

    def set_version(v: str) -> None:
        monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(v, log))

    set_version("10.8.0.43")
    log["set_version"] = set_version
    yield log


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_reference(tmp_path_factory.mktemp("fake"), "landmark2d", fp16=True)


def test_fake_gpu_auto_selects_builds_caches_and_matches_ort(
    fake_gpu: dict[str, Any], onnx_file: Path, tmp_path: Path
) -> None:
    from engines.select import open_backend

    cfg = EngineConfig(cache_dir=tmp_path, max_batch=4, opt_batch=2, workspace_bytes=1 << 30)
    msgs: list[str] = []
    backend, choice = open_backend(onnx_file, cfg, progress=msgs.append)
    assert choice.backend == backend.name == "tensorrt"
    assert "Fake RTX 4000" in choice.reason and dict(choice.versions)["tensorrt"] == "10.8.0.43"
    build = fake_gpu["last_build"]
    assert build["profiles"] == [{"film": ((1, 1, 64, 64), (2, 1, 64, 64), (4, 1, 64, 64))}]
    assert build["workspace"] == 1 << 30 and build["flags"] == 0 and build["builder_flags"] == set()
    assert any("[build] Building engine (2 steps)" in m for m in msgs)
    assert any("first start" in m for m in msgs) and any("engine ready" in m for m in msgs)
    assert cfg.timing_cache_path.read_bytes() == b"+"  # written back after the build
    ref = OrtBackend(onnx_file, cfg)
    try:
        for batch in (1, 3):
            x = np.random.default_rng(batch).random((batch, 1, 64, 64), dtype=np.float32)
            got, want = backend.run({"film": x})["heatmaps"], ref.run({"film": x})["heatmaps"]
            assert got.shape == want.shape == (batch, 8, 16, 16)
            np.testing.assert_allclose(got, want, atol=1e-5)
    finally:
        backend.close()
        ref.close()
    assert fake_gpu["detached"] and not fake_gpu["device_memory"], "device buffers must be freed"

    backend2, _ = open_backend(onnx_file, cfg, progress=msgs.append)
    backend2.close()
    assert fake_gpu["builds"] == 1, "second start must load the cached engine"

    fake_gpu["set_version"]("10.9.0.1")  # TensorRT upgraded
    msgs.clear()
    backend3, _ = open_backend(onnx_file, cfg, progress=msgs.append)
    backend3.close()
    assert fake_gpu["builds"] == 2
    assert any("TensorRT 10.8.0.43 -> 10.9.0.1" in m for m in msgs)
    assert fake_gpu["last_build"]["timing_blob"] == b"+"  # the persisted timing cache was reused
    assert len(list((tmp_path / "ref-landmark2d").glob("*.plan"))) == 1


def test_fake_gpu_fp16_flag_on_trt10_strongly_typed_on_trt11(
    fake_gpu: dict[str, Any], onnx_file: Path, tmp_path: Path
) -> None:
    from engines.trt_build import ensure_trt_engine

    cfg = EngineConfig(cache_dir=tmp_path, fp16=True)
    r10 = ensure_trt_engine(onnx_file, cfg)
    assert fake_gpu["last_build"]["builder_flags"] == {"FP16"} and fake_gpu["last_build"]["flags"] == 0
    assert r10.key.precision == "fp16"
    fake_gpu["set_version"]("11.0.0.9")
    r11 = ensure_trt_engine(onnx_file, cfg)
    assert fake_gpu["last_build"]["builder_flags"] == set()
    assert fake_gpu["last_build"]["flags"] == 1 << 5  # STRONGLY_TYPED
    plan = r11.plan_path.read_bytes()[len(PLAN_MAGIC) :]
    assert plan == onnx_file.with_name("ref-landmark2d.fp16.onnx").read_bytes()
    assert r11.key.onnx_sha256 != r10.key.onnx_sha256


def test_fake_gpu_parser_errors_are_reported(
    fake_gpu: dict[str, Any], onnx_file: Path, tmp_path: Path
) -> None:
    from engines.api import read_model_info
    from engines.trt_build import BuildPlan, build_serialized

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    plan = BuildPlan(junk, read_model_info(onnx_file), "fp32", strongly_typed=False, use_fp16_flag=False)
    with pytest.raises(EngineBuildError) as err:
        build_serialized(plan, (), EngineConfig(cache_dir=tmp_path))
    assert err.value.reason == "onnx_parse_failed"
    assert "node 0 (Bogus): cannot parse" in str(err.value)


def test_fake_gpu_corrupt_engine_is_rebuilt(
    fake_gpu: dict[str, Any], onnx_file: Path, tmp_path: Path
) -> None:
    from engines.select import open_backend

    cfg = EngineConfig(cache_dir=tmp_path)
    backend, _ = open_backend(onnx_file, cfg)
    backend.close()
    for plan in (tmp_path / "ref-landmark2d").glob("*.plan"):
        plan.write_bytes(b"other TensorRT")  # the cache notices the hash mismatch and rebuilds
    backend, choice = open_backend(onnx_file, cfg)
    backend.close()
    assert choice.backend == "tensorrt" and fake_gpu["builds"] == 2


def test_fake_gpu_engine_that_cannot_load_falls_back_in_auto_and_fails_when_forced(
    fake_gpu: dict[str, Any], onnx_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engines.errors import ModelFileError
    from engines.select import open_backend

    monkeypatch.setattr(sys.modules["tensorrt"].Runtime, "deserialize_cuda_engine", lambda self, data: None)
    backend, choice = open_backend(onnx_file, EngineConfig(cache_dir=tmp_path))
    try:
        assert backend.name == choice.backend == "ort-cpu"
        assert "TensorRT failed" in choice.reason and "bad_engine" in choice.reason
    finally:
        backend.close()
    with pytest.raises(ModelFileError) as err:
        open_backend(onnx_file, EngineConfig(cache_dir=tmp_path, backend="tensorrt"))
    assert err.value.reason == "bad_engine"
