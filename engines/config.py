"""One frozen settings object for the inference engines.

:class:`EngineConfig` is validated on construction; a bad value raises
:class:`engines.errors.EngineConfigError` with a specific ``reason`` code naming the field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from engines.errors import EngineConfigError

BackendPreference = Literal["auto", "tensorrt", "ort-cuda", "ort-cpu"]
GraphOptLevel = Literal["disable", "basic", "extended", "all"]

BACKEND_PREFERENCES: tuple[str, ...] = get_args(BackendPreference)
GRAPH_OPT_LEVELS: tuple[str, ...] = get_args(GraphOptLevel)

MIB = 1 << 20
GIB = 1 << 30


def default_cache_dir() -> Path:
    """Where built engines live unless configured: ``$XR3D_ENGINE_CACHE`` or ``~/.cache/xr3d/engines``."""
    env = os.environ.get("XR3D_ENGINE_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "xr3d" / "engines"


@dataclass(frozen=True)
class EngineConfig:
    """How models are run.

    Attributes:
        backend: ``auto`` picks TensorRT > ORT-CUDA > ORT-CPU; any other value forces that backend
            (and fails, with the reason, if it cannot run here).
        cpu_threads: ONNX Runtime intra-op threads; 0 lets ONNX Runtime use every core.
        inter_op_threads: ONNX Runtime inter-op threads (parallel branches); 1 is right for our models.
        graph_optimization: ONNX Runtime graph optimisation level.
        cache_dir: folder of built TensorRT engines (see :mod:`engines.cache`).
        workspace_bytes: TensorRT builder workspace memory-pool limit.
        fp16: build TensorRT engines in FP16 (builder flag on TRT 10, strongly-typed fp16 ONNX on TRT 11).
        timing_cache: TensorRT timing cache file; ``None`` means ``cache_dir / "timing.cache"``.
        max_batch: largest batch of the TensorRT optimisation profile for a dynamic batch axis.
        opt_batch: batch size TensorRT tunes kernels for (1 <= opt_batch <= max_batch).
        device_id: CUDA device ordinal.
    """

    backend: BackendPreference = "auto"
    cpu_threads: int = 0
    inter_op_threads: int = 1
    graph_optimization: GraphOptLevel = "all"
    cache_dir: Path = field(default_factory=default_cache_dir)
    workspace_bytes: int = 2 * GIB
    fp16: bool = False
    timing_cache: Path | None = None
    max_batch: int = 4
    opt_batch: int = 1
    device_id: int = 0

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_PREFERENCES:
            raise EngineConfigError(
                f"backend must be one of {', '.join(BACKEND_PREFERENCES)}, got {self.backend!r}",
                reason="bad_backend",
            )
        if self.graph_optimization not in GRAPH_OPT_LEVELS:
            raise EngineConfigError(
                f"graph_optimization must be one of {', '.join(GRAPH_OPT_LEVELS)}, "
                f"got {self.graph_optimization!r}",
                reason="bad_graph_optimization",
            )
        _check_int("cpu_threads", self.cpu_threads, minimum=0, maximum=1024)
        _check_int("inter_op_threads", self.inter_op_threads, minimum=1, maximum=1024)
        _check_int("workspace_bytes", self.workspace_bytes, minimum=16 * MIB, maximum=1 << 40)
        _check_int("max_batch", self.max_batch, minimum=1, maximum=4096)
        _check_int("opt_batch", self.opt_batch, minimum=1, maximum=self.max_batch)
        _check_int("device_id", self.device_id, minimum=0, maximum=64)
        if not isinstance(self.fp16, bool):
            raise EngineConfigError(f"fp16 must be true or false, got {self.fp16!r}", reason="bad_fp16")
        if not isinstance(self.cache_dir, Path):
            raise EngineConfigError(
                f"cache_dir must be a pathlib.Path, got {type(self.cache_dir).__name__}",
                reason="bad_cache_dir",
            )
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise EngineConfigError(
                f"cache_dir {self.cache_dir} exists and is not a folder", reason="bad_cache_dir"
            )
        if self.timing_cache is not None:
            if not isinstance(self.timing_cache, Path):
                raise EngineConfigError(
                    f"timing_cache must be a pathlib.Path or None, got {type(self.timing_cache).__name__}",
                    reason="bad_timing_cache",
                )
            if self.timing_cache.is_dir():
                raise EngineConfigError(
                    f"timing_cache {self.timing_cache} is a folder, expected a file path",
                    reason="bad_timing_cache",
                )

    @property
    def timing_cache_path(self) -> Path:
        """The timing cache file actually used."""
        return self.timing_cache if self.timing_cache is not None else self.cache_dir / "timing.cache"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> EngineConfig:
        """Build from a settings mapping (e.g. a parsed TOML/JSON section); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise EngineConfigError(
                f"unknown engine setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
                reason="unknown_setting",
            )
        kwargs: dict[str, Any] = dict(values)
        for key in ("cache_dir", "timing_cache"):
            if isinstance(kwargs.get(key), str):
                kwargs[key] = Path(kwargs[key])
        return cls(**kwargs)


def _check_int(name: str, value: object, *, minimum: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EngineConfigError(f"{name} must be an integer, got {value!r}", reason=f"bad_{name}")
    if not minimum <= value <= maximum:
        raise EngineConfigError(
            f"{name} must be in [{minimum}, {maximum}], got {value}", reason=f"bad_{name}"
        )
