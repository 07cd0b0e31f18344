"""TensorRT runtime backend: deserialize an engine and run it with name-based I/O.

Uses the TensorRT 10/11 tensor API (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) with device buffers and a stream
from pycuda. Device buffers are allocated on first use and grown, never shrunk, so steady-state runs
allocate nothing. ``tensorrt``/``pycuda`` are imported lazily (see :mod:`engines.trt_build`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engines.api import ModelInfo, validate_feeds
from engines.config import EngineConfig
from engines.errors import EngineError, ModelFileError, ModelInputError
from engines.trt_build import import_pycuda, import_tensorrt

log = logging.getLogger(__name__)


class TrtBackend:
    """A TensorRT engine implementing :class:`engines.api.Backend`."""

    def __init__(self, plan_path: Path, info: ModelInfo, config: EngineConfig) -> None:
        trt = import_tensorrt()
        cuda = import_pycuda()
        self._trt = trt
        self._cuda = cuda
        self._info = info
        self._closed = False
        self._cuda_ctx = cuda.Device(config.device_id).retain_primary_context()
        self._cuda_ctx.push()
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
            if engine is None:
                raise ModelFileError(
                    f"{plan_path}: TensorRT {trt.__version__} cannot deserialize this engine "
                    "(built by another TensorRT version or GPU?); delete it to rebuild",
                    reason="bad_engine",
                )
            self._engine = engine
            self._context = engine.create_execution_context()
            self._stream = cuda.Stream()
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            self._inputs = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
            self._outputs = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
            self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
            self._buffers: dict[str, tuple[Any, int]] = {}
        finally:
            self._cuda_ctx.pop()
        if set(self._inputs) != set(info.input_names) or set(self._outputs) != set(info.output_names):
            raise ModelFileError(
                f"engine I/O {self._inputs}->{self._outputs} does not match the ONNX "
                f"{info.input_names}->{info.output_names}",
                reason="engine_io_mismatch",
            )
        log.debug("TensorRT engine %s: inputs %s outputs %s", plan_path, self._inputs, self._outputs)

    @property
    def name(self) -> str:
        return "tensorrt"

    @property
    def info(self) -> ModelInfo:
        return self._info

    def _device(self, name: str, nbytes: int) -> Any:
        buf = self._buffers.get(name)
        if buf is None or buf[1] < nbytes:
            if buf is not None:
                buf[0].free()
            buf = (self._cuda.mem_alloc(max(nbytes, 1)), nbytes)
            self._buffers[name] = buf
        return buf[0]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._closed:
            raise EngineError(f"tensorrt backend for {self._info.name} is closed", reason="backend_closed")
        checked = validate_feeds(self._info, feeds)
        cuda = self._cuda
        self._cuda_ctx.push()
        try:
            for name in self._inputs:
                arr = checked[name]
                if arr.dtype != self._dtypes[name]:
                    raise ModelInputError(
                        f"{self._info.name}: engine input {name!r} is {self._dtypes[name]}, got {arr.dtype}",
                        reason="bad_input_dtype",
                    )
                if not self._context.set_input_shape(name, arr.shape):
                    raise ModelInputError(
                        f"{self._info.name}: shape {arr.shape} of {name!r} is outside the engine's "
                        "optimisation profile (batch range set by max_batch)",
                        reason="bad_input_shape",
                    )
                dev = self._device(name, arr.nbytes)
                cuda.memcpy_htod_async(dev, arr, self._stream)
                self._context.set_tensor_address(name, int(dev))
            hosts: dict[str, np.ndarray] = {}
            for name in self._outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                host = np.empty(shape, dtype=self._dtypes[name])
                dev = self._device(name, host.nbytes)
                self._context.set_tensor_address(name, int(dev))
                hosts[name] = host
            if not self._context.execute_async_v3(stream_handle=self._stream.handle):
                raise EngineError(
                    f"{self._info.name}: TensorRT execute_async_v3 failed", reason="trt_execute_failed"
                )
            for name, host in hosts.items():
                cuda.memcpy_dtoh_async(host, self._buffers[name][0], self._stream)
            self._stream.synchronize()
        finally:
            self._cuda_ctx.pop()
        return {n: hosts[n] for n in self._info.output_names}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cuda_ctx.push()
        try:
            for buf, _ in self._buffers.values():
                buf.free()
            self._buffers.clear()
            del self._context
            del self._engine
        finally:
            self._cuda_ctx.pop()
            self._cuda_ctx.detach()
