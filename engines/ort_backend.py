"""ONNX Runtime backend: CUDA execution provider when present, else CPU."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engines.api import ModelInfo, model_info_from_parts, spec_from_ort, validate_feeds
from engines.config import EngineConfig
from engines.errors import BackendUnavailableError, EngineError, ModelFileError

log = logging.getLogger(__name__)

OrtDevice = Literal["cuda", "cpu"]

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"

_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def ort_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


def available_providers() -> tuple[str, ...]:
    import onnxruntime as ort

    return tuple(ort.get_available_providers())


def session_options(config: EngineConfig) -> Any:
    """``onnxruntime.SessionOptions`` for ``config`` (threads, graph optimisation, quiet logging)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = config.cpu_threads
    opts.inter_op_num_threads = config.inter_op_threads
    opts.execution_mode = (
        ort.ExecutionMode.ORT_SEQUENTIAL if config.inter_op_threads == 1 else ort.ExecutionMode.ORT_PARALLEL
    )
    opts.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, _OPT_LEVELS[config.graph_optimization]
    )
    opts.log_severity_level = 3
    return opts


class OrtBackend:
    """A model in an ONNX Runtime session, implementing :class:`engines.api.Backend`."""

    def __init__(self, onnx_path: Path, config: EngineConfig, device: OrtDevice = "cpu") -> None:
        import onnxruntime as ort

        if not onnx_path.is_file():
            raise ModelFileError(f"{onnx_path}: no such ONNX file", reason="file_not_found")
        providers: list[Any]
        if device == "cuda":
            if CUDA_PROVIDER not in available_providers():
                raise BackendUnavailableError(
                    f"ONNX Runtime {ort_version()} has no {CUDA_PROVIDER} (providers: "
                    f"{', '.join(available_providers())}); install onnxruntime-gpu on a machine with CUDA",
                    reason="no_ort_cuda",
                )
            providers = [(CUDA_PROVIDER, {"device_id": config.device_id}), CPU_PROVIDER]
        else:
            providers = [CPU_PROVIDER]
        try:
            self._session = ort.InferenceSession(
                str(onnx_path), sess_options=session_options(config), providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelFileError(
                f"{onnx_path}: ONNX Runtime cannot load this model: {exc}", reason="bad_onnx"
            ) from exc
        if device == "cuda" and CUDA_PROVIDER not in self._session.get_providers():
            raise BackendUnavailableError(
                f"ONNX Runtime could not start {CUDA_PROVIDER} for {onnx_path.name} (CUDA/cuDNN libraries?)",
                reason="no_ort_cuda",
            )
        self._name = f"ort-{device}"
        self._path = onnx_path
        meta = dict(self._session.get_modelmeta().custom_metadata_map)
        self._info = model_info_from_parts(
            onnx_path,
            meta,
            tuple(spec_from_ort(a) for a in self._session.get_inputs()),
            tuple(spec_from_ort(a) for a in self._session.get_outputs()),
        )
        self._closed = False
        log.debug("%s session for %s (providers %s)", self._name, onnx_path, self._session.get_providers())

    @property
    def name(self) -> str:
        return self._name

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(self._session.get_providers())

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._closed:
            raise EngineError(
                f"{self._name} backend for {self._info.name} is closed", reason="backend_closed"
            )
        checked = validate_feeds(self._info, feeds)
        names = list(self._info.output_names)
        outputs = self._session.run(names, checked)
        return {n: np.asarray(v) for n, v in zip(names, outputs, strict=True)}

    def close(self) -> None:
        self._closed = True
        self.__dict__.pop("_session", None)

    def __enter__(self) -> OrtBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
