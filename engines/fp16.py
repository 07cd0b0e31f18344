"""Strongly-typed fp16 ONNX for TensorRT >= 11.

TensorRT 11 removed the weak-typing builder flags (``BuilderFlag.FP16``); precision has to be in the
graph. :func:`convert_to_fp16` rewrites an fp32 graph so every float tensor inside it is fp16 while
the graph inputs and outputs stay fp32 (Cast nodes at the edges), which keeps the runtime interface
(`ModelInfo`, feeds, results) identical for both precisions. NVIDIA's recommended tool is ModelOpt
AutoCast (mixed precision with accuracy-driven fp32 islands); this converter is the dependency-free
all-fp16 variant for our conv nets, and its output is checked (``onnx.checker`` + strict shape
inference) before it is written. Needs the ``onnx`` package (export side).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from engines.errors import ModelFileError

log = logging.getLogger(__name__)

# (op_type, input index) that must stay float32 whatever the data precision.
_KEEP_FP32_INPUTS: frozenset[tuple[str, int]] = frozenset({("Resize", 1), ("Resize", 2)})
_SUFFIX = "__fp16"


def convert_to_fp16(model: Any) -> Any:
    """Return a copy of ``model`` (``onnx.ModelProto``) with fp16 internals and fp32 graph I/O."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for node in g.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ModelFileError(
                f"fp16 conversion does not handle control-flow subgraphs ({node.op_type} {node.name!r})",
                reason="fp16_unsupported_graph",
            )
    keep32: set[str] = set()
    for node in g.node:
        for idx, name in enumerate(node.input):
            if (node.op_type, idx) in _KEEP_FP32_INPUTS and name:
                keep32.add(name)

    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep32:
            arr = numpy_helper.to_array(init).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    for node in g.node:
        if (node.op_type == "Constant" and node.output[0] not in keep32) or node.op_type == "ConstantOfShape":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    a.t.CopyFrom(
                        numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name)
                    )
        elif node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT and node.output[0] not in keep32:
                    a.i = TensorProto.FLOAT16

    new_nodes = []
    float_inputs = [i for i in g.input if i.type.tensor_type.elem_type == TensorProto.FLOAT]
    for vi in float_inputs:
        casted = vi.name + _SUFFIX
        for node in g.node:
            for k, name in enumerate(node.input):
                if name == vi.name and (node.op_type, k) not in _KEEP_FP32_INPUTS:
                    node.input[k] = casted
        new_nodes.append(
            helper.make_node("Cast", [vi.name], [casted], to=TensorProto.FLOAT16, name=f"{casted}_cast")
        )
    tail = []
    for vo in g.output:
        if vo.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = vo.name + _SUFFIX
        for node in g.node:
            for k, name in enumerate(node.output):
                if name == vo.name:
                    node.output[k] = inner
            for k, name in enumerate(node.input):
                if name == vo.name:
                    node.input[k] = inner
        tail.append(
            helper.make_node("Cast", [inner], [vo.name], to=TensorProto.FLOAT, name=f"{vo.name}_cast")
        )
    nodes = [*new_nodes, *g.node, *tail]
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    onnx.checker.check_model(m)
    try:
        return onnx.shape_inference.infer_shapes(m, strict_mode=True)
    except Exception as exc:  # onnx raises InferenceError; report it as a model problem
        raise ModelFileError(
            f"fp16 graph fails strict type/shape inference: {exc}", reason="fp16_invalid"
        ) from exc


def convert_file(src: Path, dst: Path) -> Path:
    """Convert ``src`` (fp32 ONNX) into ``dst`` (fp16 internals, fp32 I/O, same metadata)."""
    import onnx

    model = onnx.load(str(src))
    out = convert_to_fp16(model)
    meta = {p.key: p.value for p in out.metadata_props}
    meta["xr3d.precision"] = "fp16"
    del out.metadata_props[:]
    for k, v in sorted(meta.items()):
        out.metadata_props.add(key=k, value=v)
    onnx.save(out, str(dst))
    log.info("fp16 ONNX written: %s", dst)
    return dst
