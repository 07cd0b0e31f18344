"""Engine cache keys, staleness and atomic writes.

The only fake here is the engine *builder* passed to ensure_engine: serialising a real TensorRT
engine needs an NVIDIA GPU, which this machine does not have (the GPU tests in test_engines_trt.py
cover the real builder). Keys, lookups, file writes and pruning are the real code on real files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engines.api import ModelInfo, TensorSpec
from engines.cache import (
    EngineKey,
    GpuIdentity,
    InputProfile,
    atomic_write,
    ensure_engine,
    lookup,
    make_key,
    make_profile,
    plan_path_for,
)
from engines.config import EngineConfig
from engines.errors import EngineBuildError

GPU = GpuIdentity("NVIDIA RTX A2000", (8, 6))
PROFILE = (InputProfile("film", (1, 1, 64, 64), (1, 1, 64, 64), (4, 1, 64, 64)),)


def _key(**changes: object) -> EngineKey:
    base = make_key("ref-landmark2d", GPU, "10.8.0", "a" * 64, PROFILE, "fp32")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"gpu_name": "NVIDIA L4"}, "GPU NVIDIA RTX A2000 -> NVIDIA L4"),
        ({"compute_capability": (8, 9)}, "compute capability 8.6 -> 8.9"),
        ({"trt_version": "10.9.0"}, "TensorRT 10.8.0 -> 10.9.0"),
        ({"onnx_sha256": "b" * 64}, "ONNX sha256"),
        ({"profile": (InputProfile("film", (1, 1, 64, 64), (2, 1, 64, 64), (8, 1, 64, 64)),)}, "profile"),
        ({"precision": "fp16"}, "precision fp32 -> fp16"),
    ],
)
def test_every_component_changes_the_key_and_is_reported_stale(
    change: dict[str, object], needle: str, tmp_path: Path
) -> None:
    old, new = _key(), _key(**change)
    assert old.digest != new.digest
    assert plan_path_for(tmp_path, old) != plan_path_for(tmp_path, new)
    ensure_engine(tmp_path, old, lambda k: b"engine-old")
    found = lookup(tmp_path, new)
    assert found.state == "stale"
    assert any(needle in r for r in found.reasons), found.reasons


def test_key_is_stable_and_round_trips() -> None:
    k = _key()
    assert k.digest == _key().digest
    assert EngineKey.from_json(k.to_json()) == k


def test_miss_build_hit_then_rebuild_after_upgrade(tmp_path: Path) -> None:
    builds: list[str] = []

    def build(k: EngineKey) -> bytes:
        builds.append(k.trt_version)
        return f"plan for {k.trt_version}".encode()

    messages: list[str] = []
    k1 = _key()
    assert lookup(tmp_path, k1).state == "miss"
    r1 = ensure_engine(tmp_path, k1, build, messages.append)
    assert r1.built and r1.plan_path.read_bytes() == b"plan for 10.8.0"
    assert "first start" in messages[0] or "no engine built" in messages[0]
    r2 = ensure_engine(tmp_path, k1, build, messages.append)
    assert not r2.built and r2.plan_path == r1.plan_path and builds == ["10.8.0"]

    k2 = _key(trt_version="10.9.0")  # TensorRT upgraded on the box
    r3 = ensure_engine(tmp_path, k2, build, messages.append)
    assert r3.built and builds == ["10.8.0", "10.9.0"]
    assert "TensorRT 10.8.0 -> 10.9.0" in r3.reason
    assert not r1.plan_path.exists(), "stale engine must be removed"
    assert sorted(p.suffix for p in r3.plan_path.parent.iterdir()) == [".json", ".plan"]


def test_corrupted_plan_is_rebuilt(tmp_path: Path) -> None:
    k = _key()
    r = ensure_engine(tmp_path, k, lambda _: b"good engine")
    r.plan_path.write_bytes(b"truncat")
    found = lookup(tmp_path, k)
    assert found.state == "stale" and "corrupt" in found.reasons[0]
    r2 = ensure_engine(tmp_path, k, lambda _: b"good engine")
    assert r2.built and r2.plan_path.read_bytes() == b"good engine"


def test_failed_build_leaves_no_engine(tmp_path: Path) -> None:
    def boom(_: EngineKey) -> bytes:
        raise RuntimeError("out of memory")

    with pytest.raises(EngineBuildError, match="out of memory"):
        ensure_engine(tmp_path, _key(), boom)
    assert lookup(tmp_path, _key()).state == "miss"


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "x.plan"
    atomic_write(p, b"1" * 1000)
    atomic_write(p, b"2")
    assert p.read_bytes() == b"2"
    assert [q.name for q in p.parent.iterdir()] == ["x.plan"]


def test_profile_from_model_info() -> None:
    info = ModelInfo(
        "m",
        "1",
        1,
        (TensorSpec("film", ("batch", 1, 64, 64), "float32"),),
        (TensorSpec("y", ("batch", 8), "float32"),),
    )
    (p,) = make_profile(info, EngineConfig(max_batch=8, opt_batch=2))
    assert (p.min, p.opt, p.max) == ((1, 1, 64, 64), (2, 1, 64, 64), (8, 1, 64, 64))
    bad = dataclasses.replace(info, inputs=(TensorSpec("film", ("batch", 1, "h", 64), "float32"),))
    with pytest.raises(EngineBuildError) as err:
        make_profile(bad, EngineConfig())
    assert err.value.reason == "dynamic_non_batch_axis"
