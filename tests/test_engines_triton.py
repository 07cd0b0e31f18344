"""Triton model repository: layout and config.pbtxt validity (parsed back); no server here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from engines.api import ModelInfo, TensorSpec, read_model_info
from engines.errors import BackendUnavailableError
from engines.triton import (
    RepositoryEntry,
    TritonBackend,
    config_for,
    parse_pbtxt,
    render_config,
    validate_config,
    write_model_repository,
)
from export.onnx_export import export_onnx
from export.reference_models import build_reference


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tri")
    out = {}
    for name in ("landmark2d", "volume3d"):
        ref = build_reference(name)
        out[name] = folder / f"{ref.name}.onnx"
        export_onnx(
            ref.module,
            ref.example,
            out[name],
            input_names=ref.input_names,
            output_names=ref.output_names,
            metadata=ref.metadata,
            name=ref.name,
        )
    return out


def test_repository_layout_and_round_trip(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    plan = tmp_path / "landmark.plan"
    plan.write_bytes(b"serialized engine built on the serving GPU")
    repo = tmp_path / "repo"
    folders = write_model_repository(
        repo,
        [RepositoryEntry(onnx_files["landmark2d"], plan), RepositoryEntry(onnx_files["volume3d"])],
        max_batch_size=4,
        instance_count=2,
    )
    assert sorted(f.name for f in folders) == [
        "ref-landmark2d_onnx",
        "ref-landmark2d_trt",
        "ref-volume3d_onnx",
    ]
    assert (repo / "ref-landmark2d_onnx" / "1" / "model.onnx").read_bytes() == onnx_files[
        "landmark2d"
    ].read_bytes()
    assert (repo / "ref-landmark2d_trt" / "1" / "model.plan").read_bytes() == plan.read_bytes()

    info = read_model_info(onnx_files["landmark2d"])
    cfg = parse_pbtxt((repo / "ref-landmark2d_onnx" / "config.pbtxt").read_text())
    assert validate_config(cfg, info) == []
    assert cfg["name"] == "ref-landmark2d_onnx" and cfg["platform"] == "onnxruntime_onnx"
    assert cfg["max_batch_size"] == 4
    assert cfg["input"] == [{"name": "film", "data_type": "TYPE_FP32", "dims": [1, 64, 64]}]
    assert cfg["output"][0]["dims"] == [8, 16, 16]  # batch axis owned by Triton
    assert cfg["instance_group"] == [{"count": 2, "kind": "KIND_GPU"}]
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [2, 4]
    trt = parse_pbtxt((repo / "ref-landmark2d_trt" / "config.pbtxt").read_text())
    assert trt["platform"] == "tensorrt_plan" and validate_config(trt, info) == []
    vol = parse_pbtxt((repo / "ref-volume3d_onnx" / "config.pbtxt").read_text())
    assert vol["input"][0]["dims"] == [1, 16, 16, 16]


def test_fixed_batch_model_gets_max_batch_zero_and_full_dims() -> None:
    info = ModelInfo(
        "m", "1", None, (TensorSpec("x", (1, 3, 8), "float32"),), (TensorSpec("y", (1, 2), "float16"),)
    )
    cfg = config_for(info, "onnxruntime_onnx")
    assert cfg.max_batch_size == 0 and not cfg.dynamic_batching
    parsed = parse_pbtxt(render_config(cfg))
    assert parsed["input"][0]["dims"] == [1, 3, 8] and parsed["output"][0]["data_type"] == "TYPE_FP16"
    assert "dynamic_batching" not in parsed
    assert validate_config(parsed, info) == []


def test_validate_config_catches_errors() -> None:
    bad = parse_pbtxt(
        'name: "x" platform: "pytorch_libtorch" max_batch_size: -1 '
        'input [ { name: "a" data_type: TYPE_FLOAT dims: [ 0 ] } ] '
        "instance_group [ { count: 0 kind: KIND_GPU } ]"
    )
    problems = " | ".join(validate_config(bad))
    for needle in ("platform", "max_batch_size", "data_type", "dims", "no output", "count"):
        assert needle in problems, problems


def test_triton_client_absent_is_reported() -> None:
    if importlib.util.find_spec("tritonclient") is not None:
        pytest.skip("tritonclient installed; absence path not testable")
    info = ModelInfo("m", "1", None, (), ())
    with pytest.raises(BackendUnavailableError) as err:
        TritonBackend("localhost:8000", "m_onnx", info)
    assert err.value.reason == "no_tritonclient"
