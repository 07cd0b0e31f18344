"""EngineConfig validation: every bad value raises EngineConfigError with a specific reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.config import EngineConfig
from engines.errors import EngineConfigError


def test_defaults_are_valid(tmp_path: Path) -> None:
    cfg = EngineConfig(cache_dir=tmp_path)
    assert cfg.backend == "auto"
    assert cfg.timing_cache_path == tmp_path / "timing.cache"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"backend": "cuda"}, "bad_backend"),
        ({"graph_optimization": "max"}, "bad_graph_optimization"),
        ({"cpu_threads": -1}, "bad_cpu_threads"),
        ({"cpu_threads": 2.5}, "bad_cpu_threads"),
        ({"cpu_threads": True}, "bad_cpu_threads"),
        ({"inter_op_threads": 0}, "bad_inter_op_threads"),
        ({"workspace_bytes": 1024}, "bad_workspace_bytes"),
        ({"max_batch": 0}, "bad_max_batch"),
        ({"max_batch": 2, "opt_batch": 3}, "bad_opt_batch"),
        ({"device_id": -1}, "bad_device_id"),
        ({"fp16": "yes"}, "bad_fp16"),
        ({"cache_dir": "/tmp/x"}, "bad_cache_dir"),
    ],
)
def test_invalid_values(kwargs: dict[str, object], reason: str, tmp_path: Path) -> None:
    values = {"cache_dir": tmp_path, **kwargs}
    with pytest.raises(EngineConfigError) as err:
        EngineConfig(**values)  # type: ignore[arg-type]
    assert err.value.reason == reason
    assert str(err.value).startswith(f"[{reason}]")


def test_cache_dir_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(EngineConfigError, match="not a folder"):
        EngineConfig(cache_dir=f)


def test_timing_cache_that_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(EngineConfigError) as err:
        EngineConfig(cache_dir=tmp_path, timing_cache=tmp_path)
    assert err.value.reason == "bad_timing_cache"


def test_from_mapping(tmp_path: Path) -> None:
    cfg = EngineConfig.from_mapping({"backend": "ort-cpu", "cpu_threads": 2, "cache_dir": str(tmp_path)})
    assert cfg.cache_dir == tmp_path and cfg.cpu_threads == 2
    with pytest.raises(EngineConfigError) as err:
        EngineConfig.from_mapping({"threads": 2})
    assert err.value.reason == "unknown_setting"


def test_frozen(tmp_path: Path) -> None:
    cfg = EngineConfig(cache_dir=tmp_path)
    with pytest.raises(AttributeError):
        cfg.fp16 = True  # type: ignore[misc]
