"""The one inference interface every backend implements.

A :class:`Backend` runs one model: ``run({input_name: array}) -> {output_name: array}`` with names,
shapes and dtypes described by its :class:`ModelInfo`. :class:`BackendChoice` says which backend was
picked and why; callers log it and write ``choice.to_json()`` as the ``engine`` entry of every
result.json.

The model's identity (name, version, training seed, input geometry) travels inside the ONNX file as
``metadata_props`` under the ``xr3d.*`` keys below (written by ``export.onnx_export``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from engines.errors import ModelFileError, ModelInputError

log = logging.getLogger(__name__)

META_NAME = "xr3d.model_name"
META_VERSION = "xr3d.model_version"
META_SEED = "xr3d.training_seed"
META_GEOMETRY = "xr3d.input_geometry"

Dim = int | str | None
"""A tensor dimension: a fixed size, a symbolic name (``"batch"``) or unknown (``None``)."""

# ONNX Runtime's type strings -> numpy dtype names.
_ORT_TYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype (numpy name, e.g. ``"float32"``) of one model input or output."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    @property
    def dynamic_axes(self) -> tuple[int, ...]:
        """Axes whose size is not fixed."""
        return tuple(i for i, d in enumerate(self.shape) if not isinstance(d, int) or d < 0)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ModelInfo:
    """What a model is and what it takes: identity from ONNX metadata, I/O from the graph."""

    name: str
    version: str
    training_seed: int | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @property
    def meta(self) -> dict[str, str]:
        return dict(self.metadata)

    @property
    def input_geometry(self) -> dict[str, Any]:
        """The ``xr3d.input_geometry`` metadata (pixel spacing, size, ...) as a dict; empty if absent."""
        raw = self.meta.get(META_GEOMETRY)
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return {"raw": raw}
        return value if isinstance(value, dict) else {"value": value}

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "training_seed": self.training_seed,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "metadata": self.meta,
        }


@dataclass(frozen=True)
class BackendChoice:
    """The backend that runs a model, why it was chosen, and the versions involved."""

    backend: str
    reason: str
    versions: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``engine`` entry of result.json: ``{backend, reason, versions}``."""
        return {"backend": self.backend, "reason": self.reason, "versions": dict(self.versions)}


@runtime_checkable
class Backend(Protocol):
    """One model, loaded and ready to run on one backend."""

    @property
    def name(self) -> str:
        """Backend name: ``tensorrt``, ``ort-cuda``, ``ort-cpu`` or ``triton``."""
        ...

    @property
    def info(self) -> ModelInfo: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; ``feeds`` maps every input name to an array, the result maps every output name."""
        ...

    def close(self) -> None:
        """Release sessions, device memory and contexts; the backend is unusable afterwards."""
        ...


def parse_seed(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        log.warning("training seed metadata %r is not an integer; ignored", raw)
        return None


def model_info_from_parts(
    path: Path,
    metadata: Mapping[str, str],
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
) -> ModelInfo:
    """Assemble a :class:`ModelInfo`; the name falls back to the file stem when metadata lacks it."""
    return ModelInfo(
        name=metadata.get(META_NAME) or path.stem,
        version=metadata.get(META_VERSION, "unversioned"),
        training_seed=parse_seed(metadata.get(META_SEED)),
        inputs=inputs,
        outputs=outputs,
        metadata=tuple(sorted(metadata.items())),
    )


def spec_from_ort(arg: Any) -> TensorSpec:
    """A :class:`TensorSpec` from an ``onnxruntime.NodeArg``."""
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        raise ModelFileError(
            f"tensor {arg.name!r} has unsupported type {arg.type}", reason="unsupported_dtype"
        )
    shape: tuple[Dim, ...] = tuple(d if isinstance(d, int | str) else None for d in arg.shape)
    return TensorSpec(name=arg.name, shape=shape, dtype=dtype)


def read_model_info(path: Path) -> ModelInfo:
    """Read a model's :class:`ModelInfo` from its ONNX file with ONNX Runtime (no ``onnx`` package needed)."""
    import onnxruntime as ort

    if not path.is_file():
        raise ModelFileError(f"{path}: no such ONNX file", reason="file_not_found")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise ModelFileError(f"{path}: not a model ONNX Runtime can load: {exc}", reason="bad_onnx") from exc
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    return model_info_from_parts(
        path,
        meta,
        tuple(spec_from_ort(a) for a in sess.get_inputs()),
        tuple(spec_from_ort(a) for a in sess.get_outputs()),
    )


def validate_feeds(info: ModelInfo, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Check ``feeds`` against the model's inputs and return C-contiguous arrays.

    Raises :class:`ModelInputError` naming the input for: a missing or unknown name, a non-array, a
    wrong dtype (no silent casts: a float64 film fed to a float32 model is a caller bug), a wrong
    rank, a fixed dimension of the wrong size, or inconsistent batch sizes.
    """
    expected = set(info.input_names)
    missing = sorted(expected - set(feeds))
    unknown = sorted(set(feeds) - expected)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown input(s) {', '.join(unknown)}")
        raise ModelInputError(
            f"{info.name}: {'; '.join(parts)}; the model takes {', '.join(info.input_names)}",
            reason="bad_input_names",
        )
    out: dict[str, np.ndarray] = {}
    batch: tuple[str, int] | None = None
    for spec in info.inputs:
        arr = feeds[spec.name]
        if not isinstance(arr, np.ndarray):
            raise ModelInputError(
                f"{info.name}: input {spec.name!r} must be a numpy array, got {type(arr).__name__}",
                reason="bad_input_type",
            )
        if arr.dtype != np.dtype(spec.dtype):
            raise ModelInputError(
                f"{info.name}: input {spec.name!r} must be {spec.dtype}, got {arr.dtype}",
                reason="bad_input_dtype",
            )
        if arr.ndim != len(spec.shape):
            raise ModelInputError(
                f"{info.name}: input {spec.name!r} must have rank {len(spec.shape)} "
                f"(shape {_fmt_shape(spec.shape)}), got shape {arr.shape}",
                reason="bad_input_rank",
            )
        for axis, (want, got) in enumerate(zip(spec.shape, arr.shape, strict=True)):
            if isinstance(want, int) and want >= 0 and want != got:
                raise ModelInputError(
                    f"{info.name}: input {spec.name!r} axis {axis} must be {want} "
                    f"(shape {_fmt_shape(spec.shape)}), got shape {arr.shape}",
                    reason="bad_input_shape",
                )
        if spec.shape and not (isinstance(spec.shape[0], int) and spec.shape[0] >= 0):
            if batch is not None and batch[1] != arr.shape[0]:
                raise ModelInputError(
                    f"{info.name}: batch size differs between inputs {batch[0]!r} ({batch[1]}) "
                    f"and {spec.name!r} ({arr.shape[0]})",
                    reason="bad_input_batch",
                )
            batch = (spec.name, arr.shape[0])
        out[spec.name] = np.ascontiguousarray(arr)
    return out


def _fmt_shape(shape: tuple[Dim, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
