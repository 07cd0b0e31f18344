"""TensorRT op-support check on graphs built here with onnx.helper (no GPU needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.errors import ModelFileError
from engines.opcheck import check_model, check_onnx_file


def _model(
    nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any] = (), opset: int = 17
) -> Any:  # type: ignore[assignment]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _vi(name: str, shape: list[int]) -> Any:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _gridsample(rank: int, **attrs: Any) -> Any:
    x = _vi("x", [1, 2, *([8] * (rank - 2))])
    g = _vi("grid", [1, *([4] * (rank - 2)), rank - 2])
    y = _vi("y", [1, 2, *([4] * (rank - 2))])
    return _model(
        [helper.make_node("GridSample", ["x", "grid"], ["y"], name="gs", **attrs)], [x, g], [y], opset=20
    )


def test_2d_gridsample_supported_in_every_mode() -> None:
    for mode in ("linear", "nearest", "cubic"):
        for padding in ("zeros", "border", "reflection"):
            for align in (0, 1):
                rep = check_model(_gridsample(4, mode=mode, padding_mode=padding, align_corners=align))
                assert rep.ok, rep.summary()


def test_volumetric_gridsample_is_flagged() -> None:
    rep = check_model(_gridsample(5))
    assert not rep.ok
    (issue,) = rep.errors
    assert issue.op_type == "GridSample" and issue.node == "gs"
    assert "4D" in issue.problem and "rank 5" in issue.problem


def test_gridsample_bad_padding_mode_flagged() -> None:
    rep = check_model(_gridsample(4, padding_mode="wrap"))
    assert any("padding_mode" in i.problem for i in rep.errors)


def _resize(**attrs: Any) -> Any:
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs", **attrs)
    return _model([node], [_vi("x", [1, 1, 4, 4])], [_vi("y", [1, 1, 8, 8])], [scales])


@pytest.mark.parametrize(
    ("attrs", "needle"),
    [
        ({"mode": "cubic"}, "mode 'cubic'"),
        ({"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"}, "tf_crop_and_resize"),
        ({"mode": "nearest", "nearest_mode": "bogus"}, "nearest_mode"),
    ],
)
def test_resize_restrictions(attrs: dict[str, Any], needle: str) -> None:
    rep = check_model(_resize(**attrs))
    assert any(needle in i.problem for i in rep.errors), rep.summary()


def test_resize_linear_align_corners_ok() -> None:
    assert check_model(_resize(mode="linear", coordinate_transformation_mode="align_corners")).ok


def _conv(kernel_rank: int) -> Any:
    w = numpy_helper.from_array(np.zeros((2, 1, *([3] * kernel_rank)), np.float32), "w")
    x = _vi("x", [1, 1, *([8] * kernel_rank)])
    y = _vi("y", [1, 2, *([6] * kernel_rank)])
    return _model([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], [x], [y], [w])


def test_conv_ranks() -> None:
    assert check_model(_conv(2)).ok
    assert check_model(_conv(3)).ok
    rep = check_model(_conv(4))
    assert any("4D Conv" in i.problem for i in rep.errors)


def test_pooling_restrictions() -> None:
    x, y = _vi("x", [1, 1, 8, 8]), _vi("y", [1, 1, 3, 3])
    dil = helper.make_node("MaxPool", ["x"], ["y"], name="p", kernel_shape=[2, 2], dilations=[2, 2])
    assert any("dilations" in i.problem for i in check_model(_model([dil], [x], [y])).errors)
    x1, y1 = _vi("x", [1, 1, 8]), _vi("y", [1, 1, 4])
    p1 = helper.make_node("AveragePool", ["x"], ["y"], name="p1", kernel_shape=[2], strides=[2])
    assert any("1D pooling" in i.problem for i in check_model(_model([p1], [x1], [y1])).errors)
    idx = helper.make_tensor_value_info("i", TensorProto.INT64, [1, 1, 4, 4])
    p2 = helper.make_node("MaxPool", ["x"], ["y", "i"], name="p2", kernel_shape=[2, 2], strides=[2, 2])
    rep = check_model(_model([p2], [x], [_vi("y", [1, 1, 4, 4]), idx]))
    assert any("Indices" in i.problem for i in rep.errors)


def test_unsupported_and_unknown_ops_and_custom_domains() -> None:
    x = _vi("x", [4])
    uniq = helper.make_node("Unique", ["x"], ["y"], name="u")
    rep = check_model(_model([uniq], [x], [_vi("y", [None])]))  # type: ignore[list-item]
    assert [i.op_type for i in rep.errors] == ["Unique"]
    custom = helper.make_node("MyOp", ["x"], ["y"], name="m", domain="com.example")
    m = _model([custom], [x], [_vi("y", [4])])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    assert "plugin" in check_model(m).errors[0].problem


def test_opset_out_of_range() -> None:
    m = _resize(mode="linear")
    m.opset_import[0].version = 8
    rep = check_model(m)
    assert any(i.op_type == "opset" for i in rep.errors)


def test_report_json_and_file_entry(tmp_path: Path) -> None:
    p = tmp_path / "gs5.onnx"
    onnx.save(_gridsample(5), str(p))
    rep = check_onnx_file(p)
    doc = rep.to_json()
    assert doc["ok"] is False and doc["op_counts"] == {"GridSample": 1}
    assert "onnx-tensorrt" in doc["source"]
    with pytest.raises(ModelFileError):
        check_onnx_file(tmp_path / "missing.onnx")
