"""Real torch modules -> real ONNX -> real ONNX Runtime sessions: parity, metadata, I/O validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from appliance.errors import InputError
from engines.api import Backend, read_model_info
from engines.config import EngineConfig
from engines.errors import ModelFileError, ModelInputError
from engines.ort_backend import OrtBackend
from export.onnx_export import ExportResult, export_onnx, ort_parity
from export.reference_models import REFERENCE_NAMES, ReferenceModel, build_reference


def _export(ref: ReferenceModel, folder: Path, **kw: object) -> ExportResult:
    return export_onnx(
        ref.module,
        ref.example,
        folder / f"{ref.name}.onnx",
        input_names=ref.input_names,
        output_names=ref.output_names,
        metadata=ref.metadata,
        name=ref.name,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[ReferenceModel, ExportResult]]:
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for name in REFERENCE_NAMES:
        ref = build_reference(name, batch=2)
        out[name] = (ref, _export(ref, folder, fp16=True))
    return out


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_ort_matches_pytorch(name: str, exported: dict[str, tuple[ReferenceModel, ExportResult]]) -> None:
    ref, res = exported[name]
    parity = ort_parity(ref.module, ref.example, res.path)
    assert parity.worst < 1e-3, parity
    assert parity.ok


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_dynamic_batch_parity_at_other_batch(
    name: str, exported: dict[str, tuple[ReferenceModel, ExportResult]]
) -> None:
    ref, res = exported[name]
    x = torch.rand(3, *ref.example[0].shape[1:], generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = ref.module(x).numpy()
    with OrtBackend(res.path, EngineConfig(cpu_threads=1)) as be:
        got = be.run({ref.input_names[0]: x.numpy()})[ref.output_names[0]]
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) < 1e-3


def test_landmark_model_really_uses_gridsample_and_3d_ops(
    exported: dict[str, tuple[ReferenceModel, ExportResult]],
) -> None:
    ops2d = dict(exported["landmark2d"][1].opcheck.op_counts)
    ops3d = dict(exported["volume3d"][1].opcheck.op_counts)
    assert ops2d.get("GridSample") == 1 and "MatMul" in ops2d
    assert {"Conv", "MaxPool", "ConvTranspose"} <= set(ops3d)
    for _, res in exported.values():
        assert res.opcheck.ok, res.opcheck.summary()
        assert res.opset == 17


def test_metadata_round_trip(exported: dict[str, tuple[ReferenceModel, ExportResult]]) -> None:
    ref, res = exported["landmark2d"]
    info = read_model_info(res.path)
    assert info.name == "ref-landmark2d"
    assert info.version == "0.0.0-reference"
    assert info.training_seed == 1234
    assert info.input_geometry == ref.metadata["input_geometry"]
    assert info.input_names == ("film",) and info.output_names == ("heatmaps",)
    assert info.inputs[0].shape[0] == "batch" and info.inputs[0].shape[1:] == (1, 64, 64)
    assert info.inputs[0].dtype == "float32"
    props = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    assert json.loads(props["xr3d.input_geometry"]) == ref.metadata["input_geometry"]


def test_fp16_onnx_keeps_fp32_io_and_is_close(
    exported: dict[str, tuple[ReferenceModel, ExportResult]],
) -> None:
    for ref, res in exported.values():
        assert res.fp16_path is not None and res.fp16_path.name.endswith(".fp16.onnx")
        m = onnx.load(str(res.fp16_path))
        assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in m.graph.input)
        assert all(i.data_type != onnx.TensorProto.FLOAT for i in m.graph.initializer)
        x = ref.example[0].numpy()
        with OrtBackend(res.path, EngineConfig()) as a, OrtBackend(res.fp16_path, EngineConfig()) as b:
            want = a.run({ref.input_names[0]: x})[ref.output_names[0]]
            got = b.run({ref.input_names[0]: x})[ref.output_names[0]]
        assert got.dtype == np.float32
        assert np.max(np.abs(got - want)) < 1e-2 * max(1.0, float(np.abs(want).max()))


def test_backend_protocol_and_input_validation(
    exported: dict[str, tuple[ReferenceModel, ExportResult]],
) -> None:
    _, res = exported["volume3d"]
    be = OrtBackend(res.path, EngineConfig(cpu_threads=1, graph_optimization="basic"))
    assert isinstance(be, Backend)
    assert be.name == "ort-cpu"
    good = np.zeros((1, 1, 16, 16, 16), np.float32)
    cases = [
        ({}, "bad_input_names"),
        ({"volume": good, "extra": good}, "bad_input_names"),
        ({"volume": good.astype(np.float64)}, "bad_input_dtype"),
        ({"volume": good[0]}, "bad_input_rank"),
        ({"volume": np.zeros((1, 1, 16, 16, 8), np.float32)}, "bad_input_shape"),
        ({"volume": [1, 2]}, "bad_input_type"),
    ]
    for feeds, reason in cases:
        with pytest.raises(ModelInputError) as err:
            be.run(feeds)  # type: ignore[arg-type]
        assert err.value.reason == reason, (feeds.keys(), err.value)
    assert be.run({"volume": good})["occupancy"].shape == (1, 1, 16, 16, 16)
    be.close()
    with pytest.raises(Exception, match="closed"):
        be.run({"volume": good})


def test_missing_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError) as err:
        OrtBackend(tmp_path / "nope.onnx", EngineConfig())
    assert err.value.reason == "file_not_found"
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelFileError) as err:
        read_model_info(junk)
    assert err.value.reason == "bad_onnx"


def test_export_requires_identity_metadata(tmp_path: Path) -> None:
    ref = build_reference("volume3d")
    with pytest.raises(InputError) as err:
        export_onnx(
            ref.module,
            ref.example,
            tmp_path / "m.onnx",
            input_names=ref.input_names,
            output_names=ref.output_names,
            metadata={"version": "1"},
        )
    assert err.value.reason == "bad_export_metadata"
