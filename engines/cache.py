"""TensorRT engine cache: keys, staleness, atomic writes.

An engine (``.plan``) is only valid for the exact GPU model/compute capability and TensorRT version
it was built with, for the exact ONNX bytes, optimisation profile and precision. :class:`EngineKey`
holds all of them; its digest names the file. A lookup returns:

* ``hit``: an engine with this exact key exists and its bytes match the recorded sha256;
* ``stale``: engines for the same model exist but under another key (new box, driver/GPU swap,
  TensorRT upgrade, re-exported ONNX, other profile or precision); ``reasons`` names what changed;
* ``miss``: nothing for this model yet (first start).

:func:`ensure_engine` rebuilds on ``stale``/``miss`` automatically, writes the plan and its sidecar
atomically (temp file in the same folder, fsync, ``os.replace``; the sidecar is written last and is
the commit marker), and removes the superseded engines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engines.api import ModelInfo
from engines.config import EngineConfig
from engines.errors import EngineBuildError, EngineError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
Precision = Literal["fp32", "fp16"]
CacheState = Literal["hit", "miss", "stale"]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class GpuIdentity:
    """The GPU an engine is built for."""

    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


@dataclass(frozen=True)
class InputProfile:
    """Optimisation-profile shapes of one input (min <= opt <= max, per axis)."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine's validity depends on."""

    model: str
    gpu_name: str
    compute_capability: tuple[int, int]
    trt_version: str
    onnx_sha256: str
    profile: tuple[InputProfile, ...]
    precision: Precision

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "model": self.model,
            "gpu_name": self.gpu_name,
            "compute_capability": list(self.compute_capability),
            "trt_version": self.trt_version,
            "onnx_sha256": self.onnx_sha256,
            "profile": [
                {"name": p.name, "min": list(p.min), "opt": list(p.opt), "max": list(p.max)}
                for p in self.profile
            ],
            "precision": self.precision,
        }

    @property
    def digest(self) -> str:
        """Short stable hash of the whole key; the engine file name."""
        canon = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:20]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EngineKey:
        return cls(
            model=str(d["model"]),
            gpu_name=str(d["gpu_name"]),
            compute_capability=(int(d["compute_capability"][0]), int(d["compute_capability"][1])),
            trt_version=str(d["trt_version"]),
            onnx_sha256=str(d["onnx_sha256"]),
            profile=tuple(
                InputProfile(str(p["name"]), tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
                for p in d["profile"]
            ),
            precision="fp16" if d["precision"] == "fp16" else "fp32",
        )


@dataclass(frozen=True)
class CacheLookup:
    """Result of :func:`lookup`."""

    state: CacheState
    key: EngineKey
    plan_path: Path
    reasons: tuple[str, ...] = ()
    stale_paths: tuple[Path, ...] = ()


@dataclass(frozen=True)
class EngineResult:
    """What :func:`ensure_engine` did: the plan to load, whether it was built, and why."""

    plan_path: Path
    key: EngineKey
    built: bool
    reason: str
    build_seconds: float = 0.0


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def make_profile(info: ModelInfo, config: EngineConfig) -> tuple[InputProfile, ...]:
    """Optimisation profile: a dynamic axis 0 is the batch (1, opt_batch, max_batch); everything else fixed.

    Raises :class:`EngineBuildError` for dynamic non-batch axes: TensorRT needs their ranges, and our
    models have fixed input geometry, so that is an export bug.
    """
    out = []
    for spec in info.inputs:
        dims: list[tuple[int, int, int]] = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int) and d >= 0:
                dims.append((d, d, d))
            elif axis == 0:
                dims.append((1, config.opt_batch, config.max_batch))
            else:
                raise EngineBuildError(
                    f"{info.name}: input {spec.name!r} axis {axis} is dynamic ({d!r}); only the batch axis "
                    "may be dynamic for a TensorRT engine",
                    reason="dynamic_non_batch_axis",
                )
        out.append(
            InputProfile(
                spec.name,
                tuple(a for a, _, _ in dims),
                tuple(b for _, b, _ in dims),
                tuple(c for _, _, c in dims),
            )
        )
    return tuple(out)


def make_key(
    model: str,
    gpu: GpuIdentity,
    trt_version: str,
    onnx_sha256: str,
    profile: tuple[InputProfile, ...],
    precision: Precision,
) -> EngineKey:
    return EngineKey(
        model=model,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        trt_version=trt_version,
        onnx_sha256=onnx_sha256,
        profile=profile,
        precision=precision,
    )


def _model_dir(cache_dir: Path, model: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model) or "model"
    return cache_dir / safe


def plan_path_for(cache_dir: Path, key: EngineKey) -> Path:
    return _model_dir(cache_dir, key.model) / f"{key.digest}.plan"


def _sidecar(plan: Path) -> Path:
    return plan.with_suffix(".json")


def key_differences(old: EngineKey, new: EngineKey) -> tuple[str, ...]:
    """Human-readable list of what changed between two keys."""
    diffs = []
    if old.gpu_name != new.gpu_name:
        diffs.append(f"GPU {old.gpu_name} -> {new.gpu_name}")
    if old.compute_capability != new.compute_capability:
        diffs.append(
            f"compute capability {old.compute_capability[0]}.{old.compute_capability[1]} -> "
            f"{new.compute_capability[0]}.{new.compute_capability[1]}"
        )
    if old.trt_version != new.trt_version:
        diffs.append(f"TensorRT {old.trt_version} -> {new.trt_version}")
    if old.onnx_sha256 != new.onnx_sha256:
        diffs.append(f"ONNX sha256 {old.onnx_sha256[:12]} -> {new.onnx_sha256[:12]}")
    if old.profile != new.profile:
        diffs.append("optimisation profile changed")
    if old.precision != new.precision:
        diffs.append(f"precision {old.precision} -> {new.precision}")
    return tuple(diffs)


def _read_sidecar(path: Path) -> tuple[EngineKey, dict[str, Any]] | None:
    try:
        data = json.loads(path.read_text())
        return EngineKey.from_json(data["key"]), data
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        log.warning("ignoring unreadable engine cache record %s: %s", path, exc)
        return None


def lookup(cache_dir: Path, key: EngineKey) -> CacheLookup:
    """Find the engine for ``key``; see the module docstring for hit/stale/miss."""
    plan = plan_path_for(cache_dir, key)
    folder = plan.parent
    others: list[tuple[float, EngineKey, Path]] = []
    if folder.is_dir():
        for side in folder.glob("*.json"):
            rec = _read_sidecar(side)
            if rec is None:
                continue
            k, data = rec
            p = side.with_suffix(".plan")
            if k == key:
                if p.is_file() and sha256_file(p) == data.get("plan_sha256"):
                    return CacheLookup("hit", key, plan)
                others.append((side.stat().st_mtime, k, p))
                log.warning(
                    "engine %s does not match its record (partial write or corruption); rebuilding", p
                )
                return CacheLookup("stale", key, plan, ("cached engine corrupt or incomplete",), (p,))
            others.append((side.stat().st_mtime, k, p))
    if not others:
        return CacheLookup("miss", key, plan, ("no engine built on this machine yet",))
    others.sort(key=lambda t: t[0], reverse=True)
    reasons = key_differences(others[0][1], key) or ("cache record differs",)
    return CacheLookup("stale", key, plan, reasons, tuple(p for _, _, p in others))


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def store(cache_dir: Path, key: EngineKey, plan_bytes: bytes, extra: dict[str, Any] | None = None) -> Path:
    """Write the engine and then its sidecar record (the commit marker)."""
    plan = plan_path_for(cache_dir, key)
    atomic_write(plan, plan_bytes)
    record = {
        "key": key.to_json(),
        "plan_sha256": hashlib.sha256(plan_bytes).hexdigest(),
        "plan_bytes": len(plan_bytes),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    atomic_write(_sidecar(plan), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return plan


def remove_engines(paths: tuple[Path, ...]) -> None:
    for p in paths:
        for f in (_sidecar(p), p):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()


BuildFn = Callable[[EngineKey], bytes]


def ensure_engine(
    cache_dir: Path, key: EngineKey, build: BuildFn, progress: Progress | None = None
) -> EngineResult:
    """Return the cached engine for ``key``, building (and replacing stale engines) when needed.

    ``build`` turns the key into serialized engine bytes (``engines.trt_build`` on a GPU box).
    """
    say = progress or log.info
    found = lookup(cache_dir, key)
    if found.state == "hit":
        log.debug("engine cache hit %s", found.plan_path)
        return EngineResult(found.plan_path, key, built=False, reason="cached engine matches")
    why = "; ".join(found.reasons)
    say(f"{key.model}: building TensorRT engine ({found.state}: {why}); this takes a while on first start")
    t0 = time.perf_counter()
    try:
        data = build(key)
    except EngineError:
        raise
    except Exception as exc:  # TensorRT raises plain RuntimeError/TypeError from its bindings
        raise EngineBuildError(f"{key.model}: engine build failed: {exc}") from exc
    seconds = time.perf_counter() - t0
    plan = store(cache_dir, key, data, {"build_seconds": round(seconds, 3)})
    remove_engines(tuple(p for p in found.stale_paths if p != plan))
    say(f"{key.model}: engine ready in {seconds:.1f} s -> {plan}")
    return EngineResult(plan, key, built=True, reason=f"{found.state}: {why}", build_seconds=seconds)
