"""Triton Inference Server scale-out: model repository export and a client backend.

Where one box is not enough, the same ONNX / TensorRT engines are served by NVIDIA Triton. The
repository layout Triton expects (one folder per model, numeric version folders)::

    <repo>/<name>_onnx/config.pbtxt          platform "onnxruntime_onnx"
    <repo>/<name>_onnx/1/model.onnx
    <repo>/<name>_trt/config.pbtxt           platform "tensorrt_plan" (only with a plan)
    <repo>/<name>_trt/1/model.plan

``config.pbtxt`` is protobuf text format (``ModelConfig``): name, platform, max_batch_size, input/
output (name, data_type, dims without the batch axis when max_batch_size > 0), dynamic_batching and
instance_group. A TensorRT plan only runs on the GPU model and TensorRT version it was built with, so
build it on (a copy of) the serving machine; the ONNX variant runs anywhere Triton's ONNX Runtime
backend does.

:class:`TritonBackend` implements :class:`engines.api.Backend` over ``tritonclient`` (imported
lazily; ``pip install tritonclient[http]``).
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engines.api import ModelInfo, TensorSpec, read_model_info, validate_feeds
from engines.errors import BackendUnavailableError, EngineError, ModelFileError

log = logging.getLogger(__name__)

Platform = Literal["onnxruntime_onnx", "tensorrt_plan"]
InstanceKind = Literal["KIND_GPU", "KIND_CPU", "KIND_AUTO"]

PLATFORM_FILE: dict[str, str] = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
PLATFORM_SUFFIX: dict[str, str] = {"onnxruntime_onnx": "_onnx", "tensorrt_plan": "_trt"}

# numpy dtype name -> (config.pbtxt data_type, tritonclient wire datatype)
DTYPES: dict[str, tuple[str, str]] = {
    "float32": ("TYPE_FP32", "FP32"),
    "float16": ("TYPE_FP16", "FP16"),
    "float64": ("TYPE_FP64", "FP64"),
    "int64": ("TYPE_INT64", "INT64"),
    "int32": ("TYPE_INT32", "INT32"),
    "int8": ("TYPE_INT8", "INT8"),
    "uint8": ("TYPE_UINT8", "UINT8"),
    "bool": ("TYPE_BOOL", "BOOL"),
}
CONFIG_TYPES = frozenset(t for t, _ in DTYPES.values())


@dataclass(frozen=True)
class TritonTensor:
    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class TritonModelConfig:
    """The subset of Triton's ``ModelConfig`` we write."""

    name: str
    platform: Platform
    max_batch_size: int
    inputs: tuple[TritonTensor, ...]
    outputs: tuple[TritonTensor, ...]
    instance_count: int = 1
    instance_kind: InstanceKind = "KIND_GPU"
    dynamic_batching: bool = True
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 2000


def _batched(info: ModelInfo) -> bool:
    """True when every input and output has a dynamic axis 0 (Triton then owns the batch axis)."""
    specs = [*info.inputs, *info.outputs]
    return bool(specs) and all(s.shape and 0 in s.dynamic_axes for s in specs)


def _tensor(spec: TensorSpec, drop_batch: bool) -> TritonTensor:
    if spec.dtype not in DTYPES:
        raise ModelFileError(
            f"{spec.name}: dtype {spec.dtype} has no Triton type", reason="unsupported_dtype"
        )
    shape = spec.shape[1:] if drop_batch else spec.shape
    dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)
    return TritonTensor(spec.name, DTYPES[spec.dtype][0], dims)


def config_for(
    info: ModelInfo,
    platform: Platform,
    *,
    max_batch_size: int = 8,
    instance_count: int = 1,
    instance_kind: InstanceKind = "KIND_GPU",
    dynamic_batching: bool = True,
    max_queue_delay_us: int = 2000,
) -> TritonModelConfig:
    """Triton config for a model; a dynamic batch axis becomes Triton batching (dims without it)."""
    if platform not in PLATFORM_FILE:
        raise EngineError(f"unknown Triton platform {platform!r}", reason="bad_triton_platform")
    batched = _batched(info)
    mbs = max_batch_size if batched else 0
    preferred = tuple(b for b in (2, 4, 8, 16) if b <= mbs) if batched and dynamic_batching else ()
    return TritonModelConfig(
        name=info.name + PLATFORM_SUFFIX[platform],
        platform=platform,
        max_batch_size=mbs,
        inputs=tuple(_tensor(s, batched) for s in info.inputs),
        outputs=tuple(_tensor(s, batched) for s in info.outputs),
        instance_count=instance_count,
        instance_kind=instance_kind,
        dynamic_batching=dynamic_batching and batched,
        preferred_batch_sizes=preferred,
        max_queue_delay_us=max_queue_delay_us,
    )


def render_config(cfg: TritonModelConfig) -> str:
    """``config.pbtxt`` text for ``cfg``."""

    def tensors(key: str, items: tuple[TritonTensor, ...]) -> list[str]:
        out = [f"{key} ["]
        for i, t in enumerate(items):
            dims = ", ".join(str(d) for d in t.dims)
            sep = "," if i < len(items) - 1 else ""
            out += [
                "  {",
                f'    name: "{t.name}"',
                f"    data_type: {t.data_type}",
                f"    dims: [ {dims} ]",
                "  }" + sep,
            ]
        out.append("]")
        return out

    lines = [f'name: "{cfg.name}"', f'platform: "{cfg.platform}"', f"max_batch_size: {cfg.max_batch_size}"]
    lines += tensors("input", cfg.inputs)
    lines += tensors("output", cfg.outputs)
    lines += [
        "instance_group [",
        "  {",
        f"    count: {cfg.instance_count}",
        f"    kind: {cfg.instance_kind}",
        "  }",
        "]",
    ]
    if cfg.dynamic_batching:
        lines.append("dynamic_batching {")
        if cfg.preferred_batch_sizes:
            lines.append(
                f"  preferred_batch_size: [ {', '.join(str(b) for b in cfg.preferred_batch_sizes)} ]"
            )
        lines.append(f"  max_queue_delay_microseconds: {cfg.max_queue_delay_us}")
        lines.append("}")
    lines.append("version_policy: { latest: { num_versions: 1 } }")
    return "\n".join(lines) + "\n"


_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([^\s{}\[\]:,"#]+))')


def parse_pbtxt(text: str) -> dict[str, Any]:
    """Parse protobuf text format into dicts; a field seen twice (or written ``[...]``) becomes a list."""
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise ValueError(f"config.pbtxt: cannot read at offset {pos}: {text[pos : pos + 20]!r}")
        pos = m.end()
        if m.group(1) is None and m.group(0).strip():
            tokens.append(m.group(0).strip())
    idx = 0

    def scalar(tok: str) -> Any:
        if tok.startswith('"'):
            return bytes(tok[1:-1], "utf-8").decode("unicode_escape")
        if re.fullmatch(r"-?\d+", tok):
            return int(tok)
        if re.fullmatch(r"-?\d*\.\d+(e-?\d+)?", tok):
            return float(tok)
        if tok in ("true", "false"):
            return tok == "true"
        return tok  # enum identifier

    def value() -> Any:
        nonlocal idx
        tok = tokens[idx]
        if tok == "{":
            idx += 1
            return message("}")
        if tok == "[":
            idx += 1
            items = []
            while tokens[idx] != "]":
                items.append(value())
                if tokens[idx] == ",":
                    idx += 1
            idx += 1
            return items
        idx += 1
        return scalar(tok)

    def message(end: str | None) -> dict[str, Any]:
        nonlocal idx
        out: dict[str, Any] = {}
        while idx < len(tokens) and tokens[idx] != end:
            key = tokens[idx]
            idx += 1
            if tokens[idx] == ":":
                idx += 1
            val = value()
            if key in out:
                prev = out[key]
                out[key] = (
                    [*prev, *val]
                    if isinstance(prev, list) and isinstance(val, list)
                    else ([*prev, val] if isinstance(prev, list) else [prev, val])
                )
            else:
                out[key] = val
            if idx < len(tokens) and tokens[idx] in (",", ";"):
                idx += 1
        if end is not None:
            idx += 1
        return out

    return message(None)


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


def validate_config(parsed: Mapping[str, Any], info: ModelInfo | None = None) -> list[str]:
    """Problems in a parsed ``config.pbtxt`` (empty list: valid for what we use)."""
    problems: list[str] = []
    if not isinstance(parsed.get("name"), str) or not parsed["name"]:
        problems.append("name missing")
    if parsed.get("platform") not in PLATFORM_FILE:
        problems.append(f"platform {parsed.get('platform')!r} not one of {', '.join(PLATFORM_FILE)}")
    mbs = parsed.get("max_batch_size", 0)
    if not isinstance(mbs, int) or mbs < 0:
        problems.append(f"max_batch_size {mbs!r} must be an integer >= 0")
    for key in ("input", "output"):
        items = _as_list(parsed.get(key, []))
        if not items:
            problems.append(f"no {key} tensors")
        for t in items:
            if not isinstance(t, dict) or not t.get("name"):
                problems.append(f"{key} entry without a name: {t!r}")
                continue
            if t.get("data_type") not in CONFIG_TYPES:
                problems.append(f"{key} {t['name']}: data_type {t.get('data_type')!r} invalid")
            dims = _as_list(t.get("dims", []))
            if not dims or any(not isinstance(d, int) or (d < 1 and d != -1) for d in dims):
                problems.append(f"{key} {t['name']}: dims {dims!r} must be positive or -1")
        if info is not None:
            want = info.input_names if key == "input" else info.output_names
            got = tuple(t.get("name") for t in items if isinstance(t, dict))
            if set(got) != set(want):
                problems.append(f"{key} names {got} differ from the model's {want}")
    for g in _as_list(parsed.get("instance_group", [])):
        if not isinstance(g, dict) or g.get("kind") not in ("KIND_GPU", "KIND_CPU", "KIND_AUTO"):
            problems.append(f"instance_group {g!r}: kind must be KIND_GPU/KIND_CPU/KIND_AUTO")
        elif not isinstance(g.get("count", 1), int) or g.get("count", 1) < 1:
            problems.append(f"instance_group count {g.get('count')!r} must be >= 1")
    return problems


@dataclass(frozen=True)
class RepositoryEntry:
    """One model to publish: its ONNX, and optionally a TensorRT plan built for the serving GPU."""

    onnx_path: Path
    plan_path: Path | None = None


def write_model_repository(
    repo: Path,
    entries: Sequence[RepositoryEntry],
    *,
    max_batch_size: int = 8,
    instance_count: int = 1,
    onnx_kind: InstanceKind = "KIND_GPU",
) -> list[Path]:
    """Write a Triton model repository; returns the model folders written (existing ones replaced)."""
    written: list[Path] = []
    for entry in entries:
        info = read_model_info(entry.onnx_path)
        variants: list[tuple[Platform, Path, InstanceKind]] = [
            ("onnxruntime_onnx", entry.onnx_path, onnx_kind)
        ]
        if entry.plan_path is not None:
            if not entry.plan_path.is_file():
                raise ModelFileError(f"{entry.plan_path}: no such TensorRT plan", reason="file_not_found")
            variants.append(("tensorrt_plan", entry.plan_path, "KIND_GPU"))
        for platform, src, kind in variants:
            cfg = config_for(
                info,
                platform,
                max_batch_size=max_batch_size,
                instance_count=instance_count,
                instance_kind=kind,
            )
            folder = repo / cfg.name
            if folder.exists():
                shutil.rmtree(folder)
            (folder / "1").mkdir(parents=True)
            shutil.copyfile(src, folder / "1" / PLATFORM_FILE[platform])
            text = render_config(cfg)
            problems = validate_config(parse_pbtxt(text), info)
            if problems:  # a bug in render_config; never ship a config Triton would reject
                raise EngineError(
                    f"generated config for {cfg.name} invalid: {problems}", reason="bad_triton_config"
                )
            (folder / "config.pbtxt").write_text(text)
            written.append(folder)
            log.info("triton model %s (%s) -> %s", cfg.name, platform, folder)
    return written


class TritonBackend:
    """A model served by Triton, implementing :class:`engines.api.Backend` (HTTP client)."""

    def __init__(self, url: str, model_name: str, info: ModelInfo, *, timeout_s: float = 60.0) -> None:
        try:
            import tritonclient.http as httpclient
        except ImportError as exc:
            raise BackendUnavailableError(
                f"tritonclient is not installed ({exc}); `pip install tritonclient[http]`",
                reason="no_tritonclient",
            ) from exc
        self._http = httpclient
        self._client = httpclient.InferenceServerClient(
            url=url, connection_timeout=timeout_s, network_timeout=timeout_s
        )
        try:
            ready = self._client.is_model_ready(model_name)
        except Exception as exc:  # connection refused, DNS...: tritonclient raises its own types
            raise BackendUnavailableError(
                f"Triton at {url} unreachable: {exc}", reason="triton_unreachable"
            ) from exc
        if not ready:
            raise BackendUnavailableError(
                f"Triton at {url} has no ready model {model_name!r}", reason="triton_no_model"
            )
        self._model = model_name
        self._info = info
        self._closed = False

    @property
    def name(self) -> str:
        return "triton"

    @property
    def info(self) -> ModelInfo:
        return self._info

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._closed:
            raise EngineError(f"triton backend for {self._info.name} is closed", reason="backend_closed")
        checked = validate_feeds(self._info, feeds)
        inputs = []
        for spec in self._info.inputs:
            arr = checked[spec.name]
            inp = self._http.InferInput(spec.name, list(arr.shape), DTYPES[spec.dtype][1])
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        outputs = [self._http.InferRequestedOutput(n) for n in self._info.output_names]
        result = self._client.infer(self._model, inputs, outputs=outputs)
        return {n: np.asarray(result.as_numpy(n)) for n in self._info.output_names}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()
